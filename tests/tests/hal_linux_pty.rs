//! The readers' Linux path against pseudo-terminals: the simulated PN532 (HSU) and the
//! simulated fingerprint module run on the master side of a pty in a thread; the real
//! drivers open the slave tty through linux-embedded-hal's serial binding
//! (`hexa_hal::linux`). A full card enrolment and consent assertion (verified with
//! hexa-crypto, as the appliance does) and a fingerprint enrolment and identification.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::thread::{self, JoinHandle};

use embedded_io::{Read, ReadReady, Write};
use hexa_crypto::consent::{
    AssertionEvidence, ConsentChallenge, CoseKey, Decision, VerifyParams, verify_assertion,
};
use hexa_hal::config::FingerprintConfig;
use hexa_hal::ctap2::{AssertionRequest, MakeCredentialRequest};
use hexa_hal::fingerprint::{self, DEFAULT_ADDRESS};
use hexa_hal::pn532::Timeouts;
use hexa_hal::reader::CardReader;
use hexa_hal::sim::{CardConfig, CardModel, SimFingerprint, SimPn532};

const RP: &str = "hexa.kibuye-district.example";

/// Opens a pty; returns the master, the slave (kept open until the end) and the slave path.
fn pty() -> (OwnedFd, OwnedFd, PathBuf) {
    let p = nix::pty::openpty(None, None).expect("openpty");
    let path = nix::unistd::ttyname(&p.slave).expect("ttyname");
    (p.master, p.slave, path)
}

/// Moves bytes between the pty master and a simulated device until the slave closes.
fn pump<D>(master: OwnedFd, mut dev: D) -> JoinHandle<()>
where
    D: Read + Write + ReadReady + Send + 'static,
{
    thread::spawn(move || {
        let mut f = File::from(master);
        let mut buf = [0u8; 512];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if dev.write_all(&buf[..n]).is_err() {
                continue;
            }
            while dev.read_ready().unwrap_or(false) {
                let Ok(m) = dev.read(&mut buf) else { break };
                if f.write_all(&buf[..m]).is_err() {
                    return;
                }
            }
        }
    })
}

fn challenge() -> ConsentChallenge {
    ConsentChallenge {
        version: 1,
        patient: "Patient/1199".into(),
        grantee_organization: Some("Organization/kibuye".into()),
        grantee_practitioner: None,
        purpose: "TREAT".into(),
        scope: vec!["Observation".into()],
        period_start: 1_790_000_000,
        period_end: 1_790_086_400,
        data_period_start: None,
        data_period_end: None,
        decision: Decision::Permit,
        appliance_id: "appliance-kibuye".into(),
        nonce: [0x42; 32],
        issued_at: 1_790_000_000,
    }
}

#[test]
fn pn532_hsu_consent_assertion_over_a_pty() {
    for model in [CardModel::Ed25519, CardModel::Es256Only] {
        let chip = SimPn532::new();
        let sim = chip.handle();
        let (master, slave, path) = pty();
        let pumping = pump(master, chip);

        let mut reader = hexa_hal::linux::open_pn532_hsu(path.to_str().unwrap(), 115_200)
            .expect("open the slave tty")
            .with_timeouts(Timeouts {
                ack_ms: 2_000,
                response_ms: 5_000,
                poll_interval_us: 200,
            });
        CardReader::init(&mut reader).expect("PN532 init over the pty");
        let card = sim.create_card(&CardConfig { model, pin: None }).unwrap();
        assert!(reader.detect().unwrap().is_none());
        sim.present(card).unwrap();
        let target = reader.detect().unwrap().expect("card present");
        let enrolled = reader
            .enroll(
                &target,
                &MakeCredentialRequest {
                    rp_id: RP.into(),
                    user_id: b"Patient/1199".to_vec(),
                    user_name: "1199".into(),
                    client_data_hash: [9; 32],
                    pin: None,
                },
            )
            .expect("enrol");

        let ch = challenge();
        let assertion = reader
            .assert(
                &target,
                &AssertionRequest {
                    rp_id: RP.into(),
                    client_data_hash: ch.client_data_hash(),
                    allow_credential_ids: vec![enrolled.credential_id.clone()],
                    pin: None,
                },
            )
            .expect("assert");
        let key = CoseKey::from_cbor(&enrolled.cose_key).expect("COSE key");
        let verified = verify_assertion(
            &ch,
            &key,
            &AssertionEvidence {
                authenticator_data: assertion.auth_data.clone(),
                signature: assertion.signature.clone(),
                credential_id: assertion.credential_id.clone(),
            },
            &VerifyParams {
                rp_id: RP,
                expected_appliance_id: "appliance-kibuye",
                last_sign_count: 1,
                now: 1_790_000_010,
                ttl_secs: 120,
                require_user_verified: false,
            },
        )
        .expect("the appliance accepts the assertion");
        assert_eq!(verified.sign_count, assertion.sign_count);
        let stats = sim.stats();
        assert!(
            stats.host_to_device > 100 && stats.device_to_host > 100,
            "{stats:?}"
        );

        drop(reader);
        drop(slave);
        pumping.join().unwrap();
    }
}

#[test]
fn fingerprint_enrol_and_identify_over_a_pty() {
    let module = SimFingerprint::new();
    let h = module.handle();
    let (master, slave, path) = pty();
    let pumping = pump(master, module);

    let cfg = FingerprintConfig {
        device: path.to_str().unwrap().to_owned(),
        baud: 57_600,
        address: DEFAULT_ADDRESS,
        password: 0,
    };
    let mut fp = hexa_hal::linux::open_fingerprint(&cfg)
        .expect("open the slave tty")
        .with_timeouts(fingerprint::Timeouts {
            response_ms: 5_000,
            finger_ms: 5_000,
            poll_interval_us: 200,
            finger_poll_ms: 1,
        });
    fp.verify_password().unwrap();
    let para = fp.read_sys_para().unwrap();
    h.place_finger(31);
    fp.enroll(12).unwrap();
    assert_eq!(fp.template_count().unwrap(), 1);
    h.set_match_score(133);
    let m = fp.identify(para.library_size).unwrap();
    assert_eq!((m.slot, m.score), (12, 133));
    h.place_unknown();
    assert!(matches!(
        fp.identify(para.library_size),
        Err(fingerprint::Error::Module(
            fingerprint::Confirmation::NOT_FOUND
        ))
    ));

    drop(fp);
    drop(slave);
    pumping.join().unwrap();
}
