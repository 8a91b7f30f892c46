//! PN532 frame codec: normal and extended information frames with their LCS/DCS
//! checksums, ACK/NACK frames and the application-level error frame (user manual §6.2.1).
//!
//! The decoder is incremental: given the bytes received so far it either returns a complete
//! frame and how many bytes it used, or says how many bytes it needs in total. It never
//! allocates more than [`MAX_FRAME_DATA`] bytes, whatever the length field claims.

use thiserror::Error;

/// Frame identifier of frames sent by the host to the PN532.
pub const TFI_HOST: u8 = 0xD4;
/// Frame identifier of frames sent by the PN532 to the host.
pub const TFI_PN532: u8 = 0xD5;
/// Largest LEN (TFI + data) an extended information frame may carry.
pub const MAX_FRAME_DATA: usize = 265;
/// Largest encoded frame on the wire: preamble, start code, FF FF LENM LENL LCS, data,
/// DCS, postamble.
pub const MAX_WIRE_FRAME: usize = 1 + 2 + 5 + MAX_FRAME_DATA + 1 + 1;
/// ACK frame as sent on the wire.
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
/// NACK frame as sent on the wire (asks the other side to resend its last frame).
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
/// Application-level error frame (syntax error reported by the PN532).
pub const ERROR_FRAME: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];
/// Most 0x00 bytes accepted before the start code (HSU wake-up sequences carry a long run).
const MAX_PREAMBLE: usize = 32;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Acknowledgement of the last information frame.
    Ack,
    /// Negative acknowledgement: resend the last frame.
    Nack,
    /// Application-level error frame (the PN532 could not parse the command).
    Error,
    /// Normal or extended information frame.
    Info {
        /// Frame identifier (0xD4 host→PN532, 0xD5 PN532→host).
        tfi: u8,
        /// Packet data after the TFI (command or response code first).
        data: Vec<u8>,
    },
}

/// Result of feeding bytes to [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame and the number of input bytes it used.
    Complete(Frame, usize),
    /// More bytes are needed: the total number of bytes needed so far (a lower bound).
    Incomplete(usize),
}

/// Malformed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes do not start with a preamble and the 0x00 0xFF start code.
    #[error("no PN532 start code (00 FF) at the beginning of the frame")]
    BadStartCode,
    /// The length checksum does not match.
    #[error("PN532 frame length checksum (LCS) mismatch")]
    LengthChecksum,
    /// The data checksum does not match.
    #[error("PN532 frame data checksum (DCS) mismatch")]
    DataChecksum,
    /// A zero length, or one beyond [`MAX_FRAME_DATA`].
    #[error("PN532 frame length {0} is out of range")]
    BadLength(usize),
    /// The data to encode do not fit in an extended frame.
    #[error("{0} bytes do not fit in a PN532 frame")]
    TooLong(usize),
}

/// Encodes an information frame with `tfi` and `data`; uses the extended format when
/// TFI + data exceed 255 bytes.
pub fn encode(tfi: u8, data: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = data.len() + 1;
    if len > MAX_FRAME_DATA {
        return Err(FrameError::TooLong(data.len()));
    }
    let mut out = Vec::with_capacity(len + 10);
    out.extend_from_slice(&[0x00, 0x00, 0xFF]);
    if len > 255 {
        let (m, l) = ((len >> 8) as u8, len as u8);
        out.extend_from_slice(&[0xFF, 0xFF, m, l, 0u8.wrapping_sub(m.wrapping_add(l))]);
    } else {
        out.extend_from_slice(&[len as u8, 0u8.wrapping_sub(len as u8)]);
    }
    out.push(tfi);
    out.extend_from_slice(data);
    let sum = data.iter().fold(tfi, |a, b| a.wrapping_add(*b));
    out.push(0u8.wrapping_sub(sum));
    out.push(0x00);
    Ok(out)
}

/// Decodes the frame at the start of `buf` (see [`Decoded`]).
pub fn decode(buf: &[u8]) -> Result<Decoded, FrameError> {
    let mut i = 0;
    while i < buf.len() && buf[i] == 0x00 {
        i += 1;
        if i > MAX_PREAMBLE {
            return Err(FrameError::BadStartCode);
        }
    }
    if i == buf.len() {
        return Ok(Decoded::Incomplete(i + 1 + (i == 0) as usize));
    }
    if i == 0 || buf[i] != 0xFF {
        return Err(FrameError::BadStartCode);
    }
    i += 1;
    if buf.len() < i + 2 {
        return Ok(Decoded::Incomplete(i + 2));
    }
    let (a, b) = (buf[i], buf[i + 1]);
    match (a, b) {
        (0x00, 0xFF) => return complete_short(buf, i + 3, Frame::Ack),
        (0xFF, 0x00) => return complete_short(buf, i + 3, Frame::Nack),
        _ => {}
    }
    let (len, header_end) = if a == 0xFF && b == 0xFF {
        if buf.len() < i + 5 {
            return Ok(Decoded::Incomplete(i + 5));
        }
        let (m, l, lcs) = (buf[i + 2], buf[i + 3], buf[i + 4]);
        if m.wrapping_add(l).wrapping_add(lcs) != 0 {
            return Err(FrameError::LengthChecksum);
        }
        (((m as usize) << 8) | l as usize, i + 5)
    } else {
        if a.wrapping_add(b) != 0 {
            return Err(FrameError::LengthChecksum);
        }
        (a as usize, i + 2)
    };
    if len == 0 || len > MAX_FRAME_DATA {
        return Err(FrameError::BadLength(len));
    }
    let total = header_end + len + 2;
    if buf.len() < total {
        return Ok(Decoded::Incomplete(total));
    }
    let body = &buf[header_end..header_end + len];
    let dcs = buf[header_end + len];
    let sum = body.iter().fold(dcs, |a, b| a.wrapping_add(*b));
    if sum != 0 {
        return Err(FrameError::DataChecksum);
    }
    if len == 1 && body[0] == 0x7F {
        return Ok(Decoded::Complete(Frame::Error, total));
    }
    Ok(Decoded::Complete(
        Frame::Info {
            tfi: body[0],
            data: body[1..].to_vec(),
        },
        total,
    ))
}

fn complete_short(buf: &[u8], total: usize, frame: Frame) -> Result<Decoded, FrameError> {
    if buf.len() < total {
        Ok(Decoded::Incomplete(total))
    } else {
        Ok(Decoded::Complete(frame, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_firmware_version_like_the_manual() {
        assert_eq!(
            encode(TFI_HOST, &[0x02]).unwrap(),
            vec![0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
        );
    }

    #[test]
    fn round_trips_normal_and_extended() {
        for n in [0usize, 1, 200, 254, 255, 264] {
            let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let wire = encode(TFI_PN532, &data).unwrap();
            assert!(wire.len() <= MAX_WIRE_FRAME);
            assert_eq!(wire[3] == 0xFF && wire[4] == 0xFF, n >= 255);
            match decode(&wire).unwrap() {
                Decoded::Complete(Frame::Info { tfi, data: d }, used) => {
                    assert_eq!((tfi, d, used), (TFI_PN532, data, wire.len()));
                }
                other => panic!("unexpected {other:?}"),
            }
            for cut in 0..wire.len() {
                assert!(matches!(decode(&wire[..cut]), Ok(Decoded::Incomplete(n)) if n > cut));
            }
        }
        assert_eq!(encode(TFI_HOST, &[0; 265]), Err(FrameError::TooLong(265)));
    }

    #[test]
    fn decodes_ack_nack_error_and_rejects_bad_checksums() {
        assert_eq!(decode(&ACK).unwrap(), Decoded::Complete(Frame::Ack, 6));
        assert_eq!(decode(&NACK).unwrap(), Decoded::Complete(Frame::Nack, 6));
        assert_eq!(
            decode(&ERROR_FRAME).unwrap(),
            Decoded::Complete(Frame::Error, 8)
        );
        let mut wire = encode(TFI_PN532, &[0x03, 0x32, 0x01, 0x06, 0x07]).unwrap();
        let dcs = wire.len() - 2;
        wire[dcs] ^= 1;
        assert_eq!(decode(&wire), Err(FrameError::DataChecksum));
        wire[4] ^= 1;
        assert_eq!(decode(&wire), Err(FrameError::LengthChecksum));
        assert_eq!(decode(&[0x55, 0x00]), Err(FrameError::BadStartCode));
    }
}
