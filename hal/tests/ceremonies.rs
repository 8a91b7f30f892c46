//! Full ceremonies through the real drivers against the simulators: Ed25519 and ES256-only
//! enrolment and assertion (signatures verified here with ed25519-dalek / p256), a card
//! that requires its PIN, fingerprint enrolment and identification, and every injected
//! fault ending in a typed error.

use ed25519_dalek::Verifier as _;
use hexa_hal::NoDelay;
use hexa_hal::ctap2::cbor::{self, CoseKey};
use hexa_hal::ctap2::{self, AssertionRequest, CtapStatus, Enrollment, MakeCredentialRequest};
use hexa_hal::fingerprint::{self, Confirmation, Fingerprint};
use hexa_hal::pn532::{self, HsuTransport, I2cTransport, Pn532, Timeouts, Transport};
use hexa_hal::reader::{CardReader, ReaderError};
use hexa_hal::sim::{CardConfig, CardModel, Fault, SimFingerprint, SimPn532, Trigger};

const RP: &str = "hexa.district-hospital.example";

fn enroll_req(pin: Option<&str>) -> MakeCredentialRequest {
    MakeCredentialRequest {
        rp_id: RP.into(),
        user_id: b"patient-1199".to_vec(),
        user_name: "1199 0000 0000 0001".into(),
        client_data_hash: [7; 32],
        pin: pin.map(str::to_owned),
    }
}

fn assert_req(e: &Enrollment, cdh: [u8; 32], pin: Option<&str>) -> AssertionRequest {
    AssertionRequest {
        rp_id: RP.into(),
        client_data_hash: cdh,
        allow_credential_ids: vec![e.credential_id.clone()],
        pin: pin.map(str::to_owned),
    }
}

/// Verifies `sig` over authData || clientDataHash with the enrolled COSE key.
fn verify(cose: &[u8], auth_data: &[u8], cdh: &[u8; 32], sig: &[u8]) -> bool {
    let key = CoseKey::from_value(&cbor::decode(cose).unwrap()).unwrap();
    let mut msg = auth_data.to_vec();
    msg.extend_from_slice(cdh);
    match key {
        CoseKey::Ed25519 { x } => {
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
            let Ok(sig) = ed25519_dalek::Signature::from_slice(sig) else {
                return false;
            };
            vk.verify(&msg, &sig).is_ok()
        }
        CoseKey::P256 { x, y, .. } => {
            let mut sec1 = vec![4];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
            let Ok(sig) = p256::ecdsa::Signature::from_der(sig) else {
                return false;
            };
            vk.verify(&msg, &sig).is_ok()
        }
    }
}

fn ceremony<T: Transport + Send>(
    reader: &mut Pn532<T, NoDelay>,
    sim: &hexa_hal::sim::SimPn532Handle,
    model: CardModel,
) -> i64
where
    T::BusError: core::fmt::Debug,
{
    CardReader::init(reader).unwrap();
    assert!(reader.detect().unwrap().is_none(), "no card yet");
    let card = sim.create_card(&CardConfig { model, pin: None }).unwrap();
    sim.present(card).unwrap();
    let target = reader.detect().unwrap().expect("card in the field");
    assert!(target.is_iso14443_4());
    assert_eq!(target.uid.len(), 7);
    let e = reader.enroll(&target, &enroll_req(None)).unwrap();
    assert_eq!(e.fmt, "packed");
    let challenge = [0xC0; 32];
    let a = reader
        .assert(&target, &assert_req(&e, challenge, None))
        .unwrap();
    assert_eq!(a.credential_id, e.credential_id);
    assert!(verify(&e.cose_key, &a.auth_data, &challenge, &a.signature));
    assert!(!verify(
        &e.cose_key,
        &a.auth_data,
        &[0xC1; 32],
        &a.signature
    ));
    let b = reader
        .assert(&target, &assert_req(&e, challenge, None))
        .unwrap();
    assert!(b.sign_count > a.sign_count, "signature counter increases");
    assert_eq!(sim.sign_count(card), Some(b.sign_count));
    reader.release(&target).unwrap();
    e.alg
}

#[test]
fn ed25519_card_enrols_and_asserts_over_i2c() {
    let chip = SimPn532::new();
    let sim = chip.handle();
    let mut reader = Pn532::new(I2cTransport::new(chip), NoDelay);
    assert_eq!(
        ceremony(&mut reader, &sim, CardModel::Ed25519),
        cbor::COSE_ALG_EDDSA
    );
}

#[test]
fn ceremony_over_i2c_with_header_probing() {
    let chip = SimPn532::new();
    let sim = chip.handle();
    let mut reader = Pn532::new(I2cTransport::new(chip).probing_header(), NoDelay);
    assert_eq!(
        ceremony(&mut reader, &sim, CardModel::Es256Only),
        cbor::COSE_ALG_ES256
    );
}

#[test]
fn es256_only_card_enrols_and_asserts_over_hsu() {
    let chip = SimPn532::new();
    let sim = chip.handle();
    let mut reader = Pn532::new(HsuTransport::new(chip), NoDelay);
    assert_eq!(
        ceremony(&mut reader, &sim, CardModel::Es256Only),
        cbor::COSE_ALG_ES256
    );
}

#[test]
fn pin_card_needs_its_pin() {
    let chip = SimPn532::new();
    let sim = chip.handle();
    let mut reader = Pn532::new(I2cTransport::new(chip), NoDelay);
    CardReader::init(&mut reader).unwrap();
    let card = sim
        .create_card(&CardConfig {
            model: CardModel::Ed25519,
            pin: Some("4711".into()),
        })
        .unwrap();
    sim.present(card).unwrap();
    let t = reader.detect().unwrap().unwrap();
    let err = reader.enroll(&t, &enroll_req(None)).unwrap_err();
    assert!(
        matches!(err, ReaderError::Card(ctap2::Error::PinRequired)),
        "{err}"
    );
    let err = reader.enroll(&t, &enroll_req(Some("0000"))).unwrap_err();
    assert!(
        matches!(
            err,
            ReaderError::Card(ctap2::Error::Ctap(CtapStatus::PIN_INVALID))
        ),
        "{err}"
    );
    assert!(err.to_string().contains("wrong PIN"));
    let e = reader.enroll(&t, &enroll_req(Some("4711"))).unwrap();
    let parsed = cbor::AuthenticatorData::parse(&e.auth_data).unwrap();
    assert_ne!(parsed.flags & cbor::FLAG_UV, 0, "UV flag set after PIN");
    let cdh = [3; 32];
    assert!(matches!(
        reader.assert(&t, &assert_req(&e, cdh, None)),
        Err(ReaderError::Card(ctap2::Error::PinRequired))
    ));
    let a = reader
        .assert(&t, &assert_req(&e, cdh, Some("4711")))
        .unwrap();
    assert!(verify(&e.cose_key, &a.auth_data, &cdh, &a.signature));
}

#[test]
fn unknown_credential_is_a_typed_ctap_error() {
    let chip = SimPn532::new();
    let sim = chip.handle();
    let mut reader = Pn532::new(I2cTransport::new(chip), NoDelay);
    CardReader::init(&mut reader).unwrap();
    let card = sim.create_card(&CardConfig::default()).unwrap();
    sim.present(card).unwrap();
    let t = reader.detect().unwrap().unwrap();
    let req = AssertionRequest {
        rp_id: RP.into(),
        client_data_hash: [1; 32],
        allow_credential_ids: vec![vec![9; 32]],
        pin: None,
    };
    let err = reader.assert(&t, &req).unwrap_err();
    assert!(matches!(
        err,
        ReaderError::Card(ctap2::Error::Ctap(CtapStatus::NO_CREDENTIALS))
    ));
    assert!(!err.is_reader_fault());
}

fn fresh_reader() -> (
    Pn532<I2cTransport<SimPn532>, NoDelay>,
    hexa_hal::sim::SimPn532Handle,
    pn532::Target,
    Enrollment,
) {
    let chip = SimPn532::new();
    let sim = chip.handle();
    let mut reader = Pn532::new(I2cTransport::new(chip), NoDelay).with_timeouts(Timeouts {
        ack_ms: 5,
        response_ms: 20,
        poll_interval_us: 1000,
    });
    CardReader::init(&mut reader).unwrap();
    let card = sim.create_card(&CardConfig::default()).unwrap();
    sim.present(card).unwrap();
    let t = reader.detect().unwrap().unwrap();
    let e = reader.enroll(&t, &enroll_req(None)).unwrap();
    (reader, sim, t, e)
}

#[test]
fn every_pn532_fault_is_a_typed_error_and_the_reader_recovers() {
    type Check = fn(&ReaderError) -> bool;
    let cases: [(Fault, Check); 7] = [
        (Fault::Lift, |e| e.is_card_gone()),
        (Fault::CorruptChecksum, |e| {
            matches!(
                e,
                ReaderError::Card(ctap2::Error::Apdu(hexa_hal::iso7816::Error::Transport(
                    pn532::Error::Frame(pn532::FrameError::DataChecksum)
                )))
            )
        }),
        (Fault::Truncate, |e| e.is_reader_fault()),
        (Fault::Nack, |e| {
            matches!(
                e,
                ReaderError::Card(ctap2::Error::Apdu(hexa_hal::iso7816::Error::Transport(
                    pn532::Error::Nack
                )))
            )
        }),
        (Fault::BusError, |e| {
            matches!(
                e,
                ReaderError::Card(ctap2::Error::Apdu(hexa_hal::iso7816::Error::Transport(
                    pn532::Error::Bus(_)
                )))
            )
        }),
        (Fault::Silence, |e| {
            matches!(
                e,
                ReaderError::Card(ctap2::Error::Apdu(hexa_hal::iso7816::Error::Transport(
                    pn532::Error::Timeout
                )))
            )
        }),
        (Fault::ErrorFrame, |e| {
            matches!(
                e,
                ReaderError::Card(ctap2::Error::Apdu(hexa_hal::iso7816::Error::Transport(
                    pn532::Error::ErrorFrame
                )))
            )
        }),
    ];
    for (fault, check) in cases {
        let (mut reader, sim, t, e) = fresh_reader();
        sim.inject(fault, Trigger::Command(pn532::CMD_IN_DATA_EXCHANGE));
        let err = reader
            .assert(&t, &assert_req(&e, [5; 32], None))
            .unwrap_err();
        assert!(check(&err), "{fault:?} gave {err:?}");
        // Recovery: re-init, card back on the reader, ceremony succeeds.
        let card = sim.cards()[0];
        sim.present(card).unwrap();
        CardReader::init(&mut reader).unwrap();
        let t = reader.detect().unwrap().unwrap();
        let a = reader.assert(&t, &assert_req(&e, [5; 32], None)).unwrap();
        assert!(
            verify(&e.cose_key, &a.auth_data, &[5; 32], &a.signature),
            "{fault:?}"
        );
    }
}

#[test]
fn hsu_faults_are_typed_errors_too() {
    for fault in [
        Fault::Truncate,
        Fault::Silence,
        Fault::CorruptChecksum,
        Fault::BusError,
        Fault::Nack,
    ] {
        let chip = SimPn532::new();
        let sim = chip.handle();
        let mut reader = Pn532::new(HsuTransport::new(chip), NoDelay).with_timeouts(Timeouts {
            ack_ms: 5,
            response_ms: 20,
            poll_interval_us: 1000,
        });
        CardReader::init(&mut reader).unwrap();
        sim.inject(fault, Trigger::NextCommand);
        let err = reader.firmware_version().unwrap_err();
        let ok = match fault {
            Fault::Truncate | Fault::Silence => matches!(err, pn532::Error::Timeout),
            Fault::CorruptChecksum => matches!(err, pn532::Error::Frame(_)),
            Fault::BusError => matches!(err, pn532::Error::Bus(_)),
            _ => matches!(err, pn532::Error::Nack),
        };
        assert!(ok, "{fault:?} gave {err:?}");
    }
}

fn fp_driver() -> (
    Fingerprint<SimFingerprint, NoDelay>,
    hexa_hal::sim::SimFingerprintHandle,
) {
    let module = SimFingerprint::new();
    let h = module.handle();
    let d = Fingerprint::new(module, NoDelay).with_timeouts(fingerprint::Timeouts {
        response_ms: 20,
        finger_ms: 200,
        poll_interval_us: 1000,
        finger_poll_ms: 10,
    });
    (d, h)
}

#[test]
fn fingerprint_enrols_and_identifies() {
    let (mut fp, h) = fp_driver();
    fp.verify_password().unwrap();
    let para = fp.read_sys_para().unwrap();
    assert_eq!(para.library_size, 200);
    assert_eq!(fp.template_count().unwrap(), 0);
    assert!(matches!(fp.enroll(3), Err(fingerprint::Error::NoFinger)));
    h.place_finger(42);
    fp.enroll(3).unwrap();
    assert_eq!(h.template(3), Some(42));
    assert_eq!(fp.template_count().unwrap(), 1);
    h.set_match_score(87);
    let m = fp.identify(para.library_size).unwrap();
    assert_eq!((m.slot, m.score), (3, 87));
    h.place_unknown();
    assert!(matches!(
        fp.identify(200),
        Err(fingerprint::Error::Module(Confirmation::NOT_FOUND))
    ));
    h.lift_finger();
    assert!(matches!(
        fp.identify(200),
        Err(fingerprint::Error::NoFinger)
    ));
    fp.delete_char(3, 1).unwrap();
    assert_eq!(fp.template_count().unwrap(), 0);
    h.set_password(0xDEAD_BEEF);
    assert!(matches!(
        fp.verify_password(),
        Err(fingerprint::Error::Module(Confirmation::WRONG_PASSWORD))
    ));
}

#[test]
fn fingerprint_faults_are_typed_errors() {
    for fault in [
        Fault::Lift,
        Fault::CorruptChecksum,
        Fault::Truncate,
        Fault::Nack,
        Fault::BusError,
        Fault::Silence,
    ] {
        let (mut fp, h) = fp_driver();
        h.place_finger(7);
        h.inject(fault, Trigger::Command(fingerprint::GEN_IMG));
        let err = fp.gen_img().unwrap_err();
        let ok = match fault {
            Fault::Lift => matches!(err, fingerprint::Error::Module(Confirmation::NO_FINGER)),
            Fault::CorruptChecksum => matches!(
                err,
                fingerprint::Error::Packet(fingerprint::PacketError::Checksum)
            ),
            Fault::Truncate | Fault::Silence => matches!(err, fingerprint::Error::Timeout),
            Fault::Nack => matches!(err, fingerprint::Error::Module(Confirmation(0x01))),
            _ => matches!(err, fingerprint::Error::Bus(_)),
        };
        assert!(ok, "{fault:?} gave {err:?}");
    }
}
