//! ISO/IEC 7816-4 APDUs: command encoding with short or extended Lc/Le, response parsing
//! with a size cap, response chaining (61xx + GET RESPONSE, 6Cxx re-send), command
//! chaining (CLA bit 0x10) and status words mapped to typed errors.

use thiserror::Error;

/// Largest response (data + SW) accepted from one exchange.
pub const MAX_RESPONSE: usize = 65_536 + 2;
/// Cap on a response reassembled through GET RESPONSE chaining.
pub const MAX_CHAINED_RESPONSE: usize = 16 * 1024;
/// Largest data field of a short APDU (and of one command-chaining block).
pub const SHORT_MAX_DATA: usize = 255;
/// GET RESPONSE rounds allowed before giving up.
const MAX_GET_RESPONSE_ROUNDS: usize = 128;

/// Something that carries one command APDU to a card and returns its response APDU.
pub trait ApduTransport {
    /// Transport error.
    type Error: core::fmt::Debug;
    /// Sends `apdu` and returns the card's raw response (data followed by SW1 SW2).
    fn transceive(&mut self, apdu: &[u8]) -> Result<Vec<u8>, Self::Error>;
}

impl<T: ApduTransport + ?Sized> ApduTransport for &mut T {
    type Error = T::Error;
    fn transceive(&mut self, apdu: &[u8]) -> Result<Vec<u8>, Self::Error> {
        (**self).transceive(apdu)
    }
}

/// Encoding of Lc/Le.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthMode {
    /// One-byte Lc and Le; data longer than 255 bytes is sent with command chaining.
    Short,
    /// Three-byte Lc / two- or three-byte Le (ISO 7816-4 extended length).
    Extended,
}

/// A command APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (Lc is derived from its length).
    pub data: Vec<u8>,
    /// Expected response length; `Some(256)` (short) or `Some(65536)` (extended) means
    /// "as much as available" and encodes as zeros.
    pub le: Option<usize>,
}

/// APDU errors; `E` is the transport error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The transport failed.
    #[error("transport error: {0:?}")]
    Transport(E),
    /// The card answered with a non-success status word.
    #[error("card status {sw:#06x}: {desc}", desc = sw_description(*sw))]
    Status {
        /// SW1 SW2.
        sw: u16,
    },
    /// The response is shorter than a status word, or longer than the cap.
    #[error("malformed response APDU: {0}")]
    Malformed(&'static str),
    /// The command does not fit the chosen length encoding.
    #[error("command does not fit: {0}")]
    TooLong(&'static str),
}

/// Human meaning of a status word.
pub fn sw_description(sw: u16) -> &'static str {
    match sw {
        0x9000 => "success",
        0x6700 => "wrong length",
        0x6881 => "logical channel not supported",
        0x6882 => "secure messaging not supported",
        0x6883 => "last command of the chain expected",
        0x6884 => "command chaining not supported",
        0x6982 => "security status not satisfied",
        0x6983 => "authentication method blocked",
        0x6985 => "conditions of use not satisfied",
        0x6986 => "command not allowed",
        0x6A80 => "incorrect data",
        0x6A81 => "function not supported",
        0x6A82 => "application or file not found",
        0x6A86 => "incorrect P1 P2",
        0x6B00 => "wrong parameters",
        0x6D00 => "instruction not supported",
        0x6E00 => "class not supported",
        0x6F00 => "no precise diagnosis",
        s if s & 0xFF00 == 0x6100 => "more data available",
        s if s & 0xFF00 == 0x6C00 => "wrong Le",
        s if s & 0xFF00 == 0x6400 || s & 0xFF00 == 0x6500 => "execution error",
        _ => "unknown status",
    }
}

/// A response APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// SW1 SW2.
    pub sw: u16,
}

impl Response {
    /// Splits a raw response into data and status word, enforcing [`MAX_RESPONSE`].
    pub fn parse(raw: &[u8]) -> Result<Response, &'static str> {
        if raw.len() < 2 {
            return Err("shorter than a status word");
        }
        if raw.len() > MAX_RESPONSE {
            return Err("longer than the response cap");
        }
        let (data, sw) = raw.split_at(raw.len() - 2);
        Ok(Response {
            data: data.to_vec(),
            sw: u16::from_be_bytes([sw[0], sw[1]]),
        })
    }
}

impl Command {
    /// A command without data.
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Command {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            le: None,
        }
    }

    /// Sets the data field.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Sets Le.
    pub fn with_le(mut self, le: usize) -> Self {
        self.le = Some(le);
        self
    }

    /// Encodes the command as one APDU.
    pub fn encode(&self, mode: LengthMode) -> Result<Vec<u8>, &'static str> {
        let mut out = vec![self.cla, self.ins, self.p1, self.p2];
        let n = self.data.len();
        match mode {
            LengthMode::Short => {
                if n > SHORT_MAX_DATA {
                    return Err("data longer than 255 bytes in a short APDU");
                }
                if n > 0 {
                    out.push(n as u8);
                    out.extend_from_slice(&self.data);
                }
                if let Some(le) = self.le {
                    match le {
                        1..=255 => out.push(le as u8),
                        256 => out.push(0),
                        _ => return Err("Le out of range for a short APDU"),
                    }
                }
            }
            LengthMode::Extended => {
                if n > 65_535 {
                    return Err("data longer than 65535 bytes");
                }
                if n > 0 {
                    out.push(0);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                    out.extend_from_slice(&self.data);
                }
                if let Some(le) = self.le {
                    let le = match le {
                        1..=65_535 => le as u16,
                        65_536 => 0,
                        _ => return Err("Le out of range for an extended APDU"),
                    };
                    if n == 0 {
                        out.push(0);
                    }
                    out.extend_from_slice(&le.to_be_bytes());
                }
            }
        }
        Ok(out)
    }
}

/// Sends `cmd`, chaining commands when the data exceed a short APDU, and following
/// 61xx / 6Cxx response chaining; returns the data of a 9000 answer.
pub fn transmit<T: ApduTransport>(
    t: &mut T,
    cmd: &Command,
    mode: LengthMode,
) -> Result<Vec<u8>, Error<T::Error>> {
    let mut resp = match mode {
        LengthMode::Extended => exchange(t, cmd, mode)?,
        LengthMode::Short if cmd.data.len() <= SHORT_MAX_DATA => exchange(t, cmd, mode)?,
        LengthMode::Short => {
            let blocks: Vec<&[u8]> = cmd.data.chunks(SHORT_MAX_DATA).collect();
            let last = blocks.len() - 1;
            let mut resp = None;
            for (i, block) in blocks.into_iter().enumerate() {
                let part = Command {
                    cla: if i < last { cmd.cla | 0x10 } else { cmd.cla },
                    data: block.to_vec(),
                    le: if i < last { None } else { cmd.le },
                    ..cmd.clone()
                };
                let r = exchange(t, &part, mode)?;
                if i < last && r.sw != 0x9000 {
                    return Err(Error::Status { sw: r.sw });
                }
                resp = Some(r);
            }
            resp.ok_or(Error::TooLong("empty chain"))?
        }
    };
    let mut data = std::mem::take(&mut resp.data);
    let mut rounds = 0;
    loop {
        match resp.sw {
            0x9000 => return Ok(data),
            sw if sw & 0xFF00 == 0x6100 => {
                rounds += 1;
                if rounds > MAX_GET_RESPONSE_ROUNDS {
                    return Err(Error::Malformed("endless GET RESPONSE chain"));
                }
                let le = match sw & 0xFF {
                    0 => 256,
                    n => n as usize,
                };
                let get = Command::new(cmd.cla & !0x10, 0xC0, 0, 0).with_le(le);
                resp = exchange(t, &get, LengthMode::Short)?;
                if data.len() + resp.data.len() > MAX_CHAINED_RESPONSE {
                    return Err(Error::Malformed("chained response exceeds the cap"));
                }
                data.extend_from_slice(&resp.data);
            }
            sw if sw & 0xFF00 == 0x6C00 && rounds == 0 => {
                rounds += 1;
                let mut again = cmd.clone();
                again.le = Some(match sw & 0xFF {
                    0 => 256,
                    n => n as usize,
                });
                resp = exchange(t, &again, mode)?;
                data = std::mem::take(&mut resp.data);
            }
            sw => return Err(Error::Status { sw }),
        }
    }
}

fn exchange<T: ApduTransport>(
    t: &mut T,
    cmd: &Command,
    mode: LengthMode,
) -> Result<Response, Error<T::Error>> {
    let apdu = cmd.encode(mode).map_err(Error::TooLong)?;
    let raw = t.transceive(&apdu).map_err(Error::Transport)?;
    Response::parse(&raw).map_err(Error::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Scripted card: asserts each command APDU and answers the scripted response.
    struct Script(VecDeque<(Vec<u8>, Vec<u8>)>);
    impl ApduTransport for Script {
        type Error = ();
        fn transceive(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ()> {
            let (expect, answer) = self.0.pop_front().expect("unexpected APDU");
            assert_eq!(apdu, &expect[..]);
            Ok(answer)
        }
    }
    impl Script {
        fn done(&self) {
            assert!(self.0.is_empty(), "script not finished");
        }
    }

    #[test]
    fn encodes_the_four_cases_short_and_extended() {
        let c = Command::new(0, 0xA4, 4, 0);
        assert_eq!(c.encode(LengthMode::Short).unwrap(), vec![0, 0xA4, 4, 0]);
        let c2 = c.clone().with_le(256);
        assert_eq!(
            c2.encode(LengthMode::Short).unwrap(),
            vec![0, 0xA4, 4, 0, 0]
        );
        assert_eq!(
            c2.encode(LengthMode::Extended).unwrap(),
            vec![0, 0xA4, 4, 0, 0, 1, 0]
        );
        let c3 = c.clone().with_data(vec![1, 2]);
        assert_eq!(
            c3.encode(LengthMode::Short).unwrap(),
            vec![0, 0xA4, 4, 0, 2, 1, 2]
        );
        assert_eq!(
            c3.clone()
                .with_le(65_536)
                .encode(LengthMode::Extended)
                .unwrap(),
            vec![0, 0xA4, 4, 0, 0, 0, 2, 1, 2, 0, 0]
        );
        assert!(
            c.clone()
                .with_data(vec![0; 256])
                .encode(LengthMode::Short)
                .is_err()
        );
    }

    #[test]
    fn follows_response_chaining_and_chains_commands() {
        let mut s = Script(VecDeque::from(vec![
            (vec![0x80, 0x10, 0, 0, 1, 4, 0], vec![1, 2, 0x61, 0x02]),
            (vec![0x80, 0xC0, 0, 0, 2], vec![3, 4, 0x90, 0x00]),
        ]));
        let cmd = Command::new(0x80, 0x10, 0, 0)
            .with_data(vec![4])
            .with_le(256);
        assert_eq!(
            transmit(&mut s, &cmd, LengthMode::Short).unwrap(),
            vec![1, 2, 3, 4]
        );
        s.done();

        let data: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let mut first = vec![0x90, 0x10, 0, 0, 255];
        first.extend_from_slice(&data[..255]);
        let mut second = vec![0x80, 0x10, 0, 0, 45];
        second.extend_from_slice(&data[255..]);
        second.push(0);
        let mut s = Script(VecDeque::from(vec![
            (first, vec![0x90, 0x00]),
            (second, vec![9, 0x90, 0x00]),
        ]));
        let cmd = Command::new(0x80, 0x10, 0, 0).with_data(data).with_le(256);
        assert_eq!(transmit(&mut s, &cmd, LengthMode::Short).unwrap(), vec![9]);
        s.done();
    }

    #[test]
    fn maps_status_words_and_resends_on_6cxx() {
        let mut s = Script(VecDeque::from(vec![(
            vec![0, 0xA4, 4, 0],
            vec![0x6A, 0x82],
        )]));
        let err = transmit(&mut s, &Command::new(0, 0xA4, 4, 0), LengthMode::Short).unwrap_err();
        assert!(matches!(err, Error::Status { sw: 0x6A82 }));
        assert!(err.to_string().contains("not found"));
        let mut s = Script(VecDeque::from(vec![
            (vec![0, 0xB0, 0, 0, 0], vec![0x6C, 0x03]),
            (vec![0, 0xB0, 0, 0, 3], vec![1, 2, 3, 0x90, 0]),
        ]));
        let got = transmit(
            &mut s,
            &Command::new(0, 0xB0, 0, 0).with_le(256),
            LengthMode::Short,
        );
        assert_eq!(got.unwrap(), vec![1, 2, 3]);
        s.done();
        let mut s = Script(VecDeque::from(vec![(vec![0, 1, 0, 0], vec![0x90])]));
        assert!(matches!(
            transmit(&mut s, &Command::new(0, 1, 0, 0), LengthMode::Short),
            Err(Error::Malformed(_))
        ));
    }
}
