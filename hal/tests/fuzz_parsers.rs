//! Property tests: arbitrary bytes from the bus fed to every parser (PN532 frames, target
//! lists, APDU responses, CBOR and CTAP structures, fingerprint packets) and to the drivers
//! through byte-serving buses. Nothing may panic, hang, or allocate beyond the caps.

use std::collections::VecDeque;

use hexa_hal::NoDelay;
use hexa_hal::ctap2::cbor::{self, AuthenticatorData, CoseKey};
use hexa_hal::ctap2::{Ctap2, Info};
use hexa_hal::fingerprint::{self, Fingerprint, Packet};
use hexa_hal::iso7816::{self, ApduTransport, Command, LengthMode, Response};
use hexa_hal::pn532::frame::{self, Decoded, MAX_FRAME_DATA};
use hexa_hal::pn532::{HsuTransport, Pn532, Target, Timeouts};
use hexa_hal::sim::{CardConfig, VirtualCard};
use proptest::prelude::*;

/// A serial port that swallows writes and serves a fixed byte string, then stays silent.
struct Serving(VecDeque<u8>);
impl embedded_io::ErrorType for Serving {
    type Error = std::io::Error;
}
impl embedded_io::Write for Serving {
    fn write(&mut self, b: &[u8]) -> Result<usize, std::io::Error> {
        Ok(b.len())
    }
    fn flush(&mut self) -> Result<(), std::io::Error> {
        Ok(())
    }
}
impl embedded_io::Read for Serving {
    fn read(&mut self, b: &mut [u8]) -> Result<usize, std::io::Error> {
        let n = b.len().min(self.0.len());
        for (d, s) in b.iter_mut().zip(self.0.drain(..n)) {
            *d = s;
        }
        Ok(n)
    }
}
impl embedded_io::ReadReady for Serving {
    fn read_ready(&mut self) -> Result<bool, std::io::Error> {
        Ok(!self.0.is_empty())
    }
}

/// An I2C bus that accepts every write and fills reads from a fixed byte string (then zeros,
/// i.e. "not ready").
struct ServingI2c(VecDeque<u8>);
impl embedded_hal::i2c::ErrorType for ServingI2c {
    type Error = embedded_hal::i2c::ErrorKind;
}
impl embedded_hal::i2c::I2c for ServingI2c {
    fn transaction(
        &mut self,
        _address: u8,
        ops: &mut [embedded_hal::i2c::Operation<'_>],
    ) -> Result<(), Self::Error> {
        for op in ops {
            if let embedded_hal::i2c::Operation::Read(buf) = op {
                for b in buf.iter_mut() {
                    *b = self.0.pop_front().unwrap_or(0);
                }
            }
        }
        Ok(())
    }
}

/// An APDU transport answering scripted arbitrary responses.
struct Answers(VecDeque<Vec<u8>>);
impl ApduTransport for Answers {
    type Error = ();
    fn transceive(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, ()> {
        self.0.pop_front().ok_or(())
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Byte strings that look like PN532 traffic often enough to reach deep paths.
fn framey() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(600),
        (bytes(300), any::<u8>()).prop_map(|(d, t)| {
            let mut w = frame::encode(t, &d[..d.len().min(264)]).unwrap();
            w.extend_from_slice(&d);
            w
        }),
        bytes(40).prop_map(|d| {
            let mut w = frame::ACK.to_vec();
            w.extend_from_slice(&frame::encode(0xD5, &d).unwrap());
            w
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frame_decoder_never_panics(b in framey()) {
        if let Ok(Decoded::Complete(f, used)) = frame::decode(&b) {
            prop_assert!(used <= b.len());
            if let frame::Frame::Info { data, .. } = f {
                prop_assert!(data.len() < MAX_FRAME_DATA);
            }
        }
    }

    #[test]
    fn pn532_over_hsu_survives_arbitrary_answers(b in framey()) {
        let mut p = Pn532::new(HsuTransport::new(Serving(b.into())), NoDelay)
            .with_timeouts(Timeouts { ack_ms: 3, response_ms: 3, poll_interval_us: 1000 });
        let _ = p.in_data_exchange(1, &[0, 0xA4, 4, 0]);
        let _ = p.in_list_passive_target();
    }

    #[test]
    fn pn532_over_i2c_survives_arbitrary_answers(b in framey()) {
        let mut bytes = VecDeque::from(vec![0x01]);
        bytes.extend(b);
        let mut p = Pn532::new(hexa_hal::pn532::I2cTransport::new(ServingI2c(bytes)), NoDelay)
            .with_timeouts(Timeouts { ack_ms: 3, response_ms: 3, poll_interval_us: 1000 });
        let _ = p.in_data_exchange(1, &[0, 0xA4, 4, 0]);
        let _ = p.firmware_version();
    }

    #[test]
    fn target_list_parser_never_panics(b in bytes(64)) {
        let _ = Target::parse_list(&b);
    }

    #[test]
    fn apdu_layer_survives_arbitrary_responses(rs in prop::collection::vec(bytes(300), 0..6)) {
        for r in &rs {
            if let Ok(resp) = Response::parse(r) {
                prop_assert_eq!(resp.data.len() + 2, r.len());
            }
        }
        let mut t = Answers(rs.into());
        let cmd = Command::new(0x80, 0x10, 0, 0).with_data(vec![4]).with_le(256);
        if let Ok(d) = iso7816::transmit(&mut t, &cmd, LengthMode::Short) {
            prop_assert!(d.len() <= iso7816::MAX_CHAINED_RESPONSE);
        }
    }

    #[test]
    fn cbor_and_ctap_parsers_never_panic(b in bytes(400)) {
        if let Ok(v) = cbor::decode(&b) {
            let _ = Info::from_value(&v);
            let _ = CoseKey::from_value(&v);
        }
        let _ = AuthenticatorData::parse(&b);
    }

    #[test]
    fn ctap_client_survives_arbitrary_cards(rs in prop::collection::vec(bytes(200), 0..6)) {
        let mut answers: VecDeque<Vec<u8>> = rs.into_iter().map(|mut r| { r.extend_from_slice(&[0x90, 0x00]); r }).collect();
        answers.push_front(b"FIDO_2_0\x90\x00".to_vec());
        let mut c = Ctap2::new(Answers(answers));
        let _ = c.assert(&hexa_hal::ctap2::AssertionRequest {
            rp_id: "rp".into(), client_data_hash: [0; 32], allow_credential_ids: vec![vec![1]], pin: Some("1".into()),
        });
    }

    #[test]
    fn fingerprint_packets_and_driver_never_panic(b in bytes(400)) {
        if let Ok(Ok((p, used))) = Packet::decode(&b) {
            prop_assert!(used <= b.len());
            prop_assert!(p.payload.len() <= fingerprint::MAX_PAYLOAD);
        }
        let mut f = Fingerprint::new(Serving(b.into()), NoDelay).with_timeouts(fingerprint::Timeouts {
            response_ms: 3, finger_ms: 3, poll_interval_us: 1000, finger_poll_ms: 1,
        });
        let _ = f.read_sys_para();
        let _ = f.search(1, 0, 10);
    }

    #[test]
    fn virtual_card_survives_arbitrary_apdus(apdus in prop::collection::vec(bytes(300), 0..6)) {
        let mut card = VirtualCard::new(&CardConfig { pin: Some("1".into()), ..CardConfig::default() }).unwrap();
        let mut select = vec![0, 0xA4, 4, 0, 8];
        select.extend_from_slice(&hexa_hal::ctap2::FIDO_AID);
        card.process_apdu(&select);
        for a in apdus {
            let mut ctap = vec![0x80, 0x10, 0, 0, a.len().min(255) as u8];
            ctap.extend_from_slice(&a[..a.len().min(255)]);
            prop_assert!(card.process_apdu(&ctap).len() >= 2);
            prop_assert!(card.process_apdu(&a).len() >= 2);
        }
    }
}

#[test]
fn hostile_cbor_is_bounded() {
    // 10 000 nested arrays: refused by the depth cap, no stack overflow.
    let deep = vec![0x81u8; 10_000];
    assert!(cbor::decode(&deep).is_err());
    // A byte string claiming 2^63 bytes: refused without allocating them.
    let huge = [0x5B, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert!(cbor::decode(&huge).is_err());
    // An array claiming 2^32 elements.
    let many = [0x9A, 0xFF, 0xFF, 0xFF, 0xFF, 0x00];
    assert!(cbor::decode(&many).is_err());
    // Oversized messages are refused before parsing.
    assert!(matches!(
        cbor::decode(&vec![0x40; cbor::MAX_CBOR_SIZE + 1]),
        Err(cbor::CborError::TooLarge(_))
    ));
}

#[test]
fn pn532_length_field_cannot_exceed_the_extended_cap() {
    // Extended frame claiming 0x0FFF bytes (valid LCS): refused, nothing allocated.
    let w = [0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x0F, 0xFF, 0xF2];
    assert!(matches!(
        frame::decode(&w),
        Err(frame::FrameError::BadLength(0x0FFF))
    ));
}
