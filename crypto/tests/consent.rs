//! Consent challenge encoding and FIDO2 assertion verification (Ed25519 and ES256).

use hexa_crypto::consent::*;
use hexa_crypto::keys::SigningKey;
use p256::ecdsa::signature::Signer as _;
use sha2::{Digest, Sha256};

const RP: &str = "hexa.local";
const APPLIANCE: &str = "appliance-01";

fn challenge() -> ConsentChallenge {
    ConsentChallenge {
        version: 1,
        patient: "Patient/123".into(),
        grantee_organization: Some("Organization/hospital-b".into()),
        grantee_practitioner: None,
        purpose: "TREAT".into(),
        scope: vec!["Observation".into(), "Condition".into()],
        period_start: 1_700_000_000,
        period_end: 1_731_536_000,
        data_period_start: None,
        data_period_end: Some(1_700_000_000),
        decision: Decision::Permit,
        appliance_id: APPLIANCE.into(),
        nonce: [0xab; 32],
        issued_at: 1_700_000_000,
    }
}

fn params(last: u32, now: u64) -> VerifyParams<'static> {
    VerifyParams {
        rp_id: RP,
        expected_appliance_id: APPLIANCE,
        last_sign_count: last,
        now,
        ttl_secs: 120,
        require_user_verified: false,
    }
}

fn auth_data(flags: u8, count: u32) -> Vec<u8> {
    let mut ad = Sha256::digest(RP.as_bytes()).to_vec();
    ad.push(flags);
    ad.extend_from_slice(&count.to_be_bytes());
    ad
}

fn signed_input(ad: &[u8], ch: &ConsentChallenge) -> Vec<u8> {
    let mut m = ad.to_vec();
    m.extend_from_slice(&ch.client_data_hash());
    m
}

fn ed_evidence(
    key: &SigningKey,
    ch: &ConsentChallenge,
    flags: u8,
    count: u32,
) -> AssertionEvidence {
    let ad = auth_data(flags, count);
    AssertionEvidence {
        signature: key.sign(&signed_input(&ad, ch)).to_vec(),
        authenticator_data: ad,
        credential_id: b"cred-ed".to_vec(),
    }
}

fn es_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap()
}

fn es_evidence(
    key: &p256::ecdsa::SigningKey,
    ch: &ConsentChallenge,
    flags: u8,
    count: u32,
) -> (AssertionEvidence, p256::ecdsa::Signature) {
    let ad = auth_data(flags, count);
    let sig: p256::ecdsa::Signature = key.sign(&signed_input(&ad, ch));
    (
        AssertionEvidence {
            signature: sig.to_der().as_bytes().to_vec(),
            authenticator_data: ad,
            credential_id: b"cred-es".to_vec(),
        },
        sig,
    )
}

#[test]
fn encoding_is_stable_and_roundtrips() {
    let ch = challenge();
    let b = ch.to_bytes();
    let expected_json = concat!(
        r#"{"appliance_id":"appliance-01","data_period_end":1700000000,"decision":"permit","#,
        r#""grantee_organization":"Organization/hospital-b","issued_at":1700000000,"#,
        r#""nonce":"q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s","patient":"Patient/123","#,
        r#""period_end":1731536000,"period_start":1700000000,"purpose":"TREAT","#,
        r#""scope":["Observation","Condition"],"v":1}"#
    );
    let mut expected = b"hexa-consent-v1\0".to_vec();
    expected.extend_from_slice(expected_json.as_bytes());
    assert_eq!(b, expected);
    assert_eq!(ConsentChallenge::from_bytes(&b).unwrap(), ch);
    assert_eq!(ch.client_data_hash().to_vec(), Sha256::digest(&b).to_vec());
    // Non-canonical, untagged, unknown-field and duplicate-field inputs are refused.
    let spaced = [
        b"hexa-consent-v1\0".as_slice(),
        expected_json.replace(",", ", ").as_bytes(),
    ]
    .concat();
    assert!(ConsentChallenge::from_bytes(&spaced).is_err());
    assert!(ConsentChallenge::from_bytes(expected_json.as_bytes()).is_err());
    let extra = [
        b"hexa-consent-v1\0".as_slice(),
        expected_json
            .replace("\"v\":1", "\"v\":1,\"w\":2")
            .as_bytes(),
    ]
    .concat();
    assert!(ConsentChallenge::from_bytes(&extra).is_err());
    let v2 = [
        b"hexa-consent-v1\0".as_slice(),
        expected_json.replace("\"v\":1", "\"v\":2").as_bytes(),
    ]
    .concat();
    assert!(ConsentChallenge::from_bytes(&v2).is_err());
}

#[test]
fn cose_keys_roundtrip() {
    let ed = CoseKey::Ed25519(SigningKey::from_seed(&[5; 32]).public());
    assert_eq!(ed.alg(), -8);
    assert_eq!(CoseKey::from_cbor(&ed.to_cbor()).unwrap(), ed);
    let es = CoseKey::Es256(*es_key().verifying_key());
    assert_eq!(es.alg(), -7);
    let cbor = es.to_cbor();
    // CTAP2 canonical map header: map(5), 1: 2 (EC2), 3: -7.
    assert_eq!(&cbor[..5], &[0xa5, 0x01, 0x02, 0x03, 0x26]);
    assert_eq!(CoseKey::from_cbor(&cbor).unwrap(), es);
    assert!(CoseKey::from_cbor(&cbor[..cbor.len() - 1]).is_err());
    let mut trailing = cbor.clone();
    trailing.push(0);
    assert!(CoseKey::from_cbor(&trailing).is_err());
    // A small-order Ed25519 point is refused as a credential key.
    let mut weak = ed.to_cbor();
    let n = weak.len();
    weak[n - 32..].copy_from_slice(&[0u8; 32]);
    weak[n - 32] = 1; // the identity point encoding 0x01 00..00
    assert!(CoseKey::from_cbor(&weak).is_err());
}

#[test]
fn ed25519_assertion_verifies_and_checks() {
    let card = SigningKey::from_seed(&[7; 32]);
    let key = CoseKey::Ed25519(card.public());
    let ch = challenge();
    let now = ch.issued_at + 10;
    let ev = ed_evidence(&card, &ch, FLAG_UP | FLAG_UV, 5);
    let ok = verify_assertion(&ch, &key, &ev, &params(4, now)).unwrap();
    assert_eq!(ok.sign_count, 5);
    assert!(ok.user_verified);
    assert_eq!(ok.credential_id, b"cred-ed");

    // Counter: equal or lower is refused; both zero is accepted.
    assert!(matches!(
        verify_assertion(&ch, &key, &ev, &params(5, now)),
        Err(ConsentError::CounterNotIncreased { last: 5, got: 5 })
    ));
    let ev0 = ed_evidence(&card, &ch, FLAG_UP, 0);
    assert!(verify_assertion(&ch, &key, &ev0, &params(0, now)).is_ok());
    assert!(verify_assertion(&ch, &key, &ev0, &params(3, now)).is_err());

    // UP missing; UV required but missing.
    let no_up = ed_evidence(&card, &ch, FLAG_UV, 6);
    assert_eq!(
        verify_assertion(&ch, &key, &no_up, &params(0, now)),
        Err(ConsentError::UserNotPresent)
    );
    let no_uv = ed_evidence(&card, &ch, FLAG_UP, 6);
    let mut p = params(0, now);
    p.require_user_verified = true;
    assert_eq!(
        verify_assertion(&ch, &key, &no_uv, &p),
        Err(ConsentError::UserNotVerified)
    );

    // Time window: expired, future within skew accepted, beyond skew refused.
    assert!(matches!(
        verify_assertion(&ch, &key, &ev, &params(0, ch.issued_at + 121)),
        Err(ConsentError::Expired { .. })
    ));
    assert!(verify_assertion(&ch, &key, &ev, &params(0, ch.issued_at - 30)).is_ok());
    assert!(matches!(
        verify_assertion(&ch, &key, &ev, &params(0, ch.issued_at - 31)),
        Err(ConsentError::NotYetValid { .. })
    ));

    // Wrong appliance; wrong RP.
    let mut p = params(0, now);
    p.expected_appliance_id = "appliance-02";
    assert!(matches!(
        verify_assertion(&ch, &key, &ev, &p),
        Err(ConsentError::ApplianceMismatch { .. })
    ));
    let mut p = params(0, now);
    p.rp_id = "evil.example";
    assert_eq!(
        verify_assertion(&ch, &key, &ev, &p),
        Err(ConsentError::RpIdMismatch)
    );
}

#[test]
fn tampering_is_rejected() {
    let card = SigningKey::from_seed(&[7; 32]);
    let key = CoseKey::Ed25519(card.public());
    let ch = challenge();
    let now = ch.issued_at;
    let ev = ed_evidence(&card, &ch, FLAG_UP, 9);
    // Any other challenge (e.g. a different scope or decision) does not match the signature.
    let mut other = ch.clone();
    other.decision = Decision::Deny;
    assert_eq!(
        verify_assertion(&other, &key, &ev, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
    let mut other = ch.clone();
    other.nonce[0] ^= 1;
    assert_eq!(
        verify_assertion(&other, &key, &ev, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
    // A flipped bit in the signature or in the counter bytes of authenticatorData.
    for i in [0usize, 31, 63] {
        let mut bad = ev.clone();
        bad.signature[i] ^= 0x04;
        assert_eq!(
            verify_assertion(&ch, &key, &bad, &params(0, now)),
            Err(ConsentError::BadSignature)
        );
    }
    let mut bad = ev.clone();
    bad.authenticator_data[36] ^= 0x01;
    assert_eq!(
        verify_assertion(&ch, &key, &bad, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
    // Non-canonical S (S + L) is refused by verify_strict.
    let mut s_plus_l = ev.clone();
    add_l(&mut s_plus_l.signature[32..]);
    assert_eq!(
        verify_assertion(&ch, &key, &s_plus_l, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
    // Malformed authenticatorData.
    let mut short = ev.clone();
    short.authenticator_data.truncate(36);
    assert!(matches!(
        verify_assertion(&ch, &key, &short, &params(0, now)),
        Err(ConsentError::AuthenticatorData(_))
    ));
}

/// Adds the group order L to a little-endian scalar in place.
fn add_l(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = s[i] as u16 + L[i] as u16 + carry;
        s[i] = v as u8;
        carry = v >> 8;
    }
}

#[test]
fn es256_assertion_verifies_including_high_s() {
    let sk = es_key();
    let key = CoseKey::Es256(*sk.verifying_key());
    let ch = challenge();
    let now = ch.issued_at + 1;
    let (ev, sig) = es_evidence(&sk, &ch, FLAG_UP | FLAG_UV, 100);
    let ok = verify_assertion(&ch, &key, &ev, &params(99, now)).unwrap();
    assert_eq!(ok.sign_count, 100);
    // High-S form of the same signature (n - s) is accepted after normalisation.
    let (r, s) = sig.split_scalars();
    let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
    assert_ne!(high, sig);
    let mut ev_high = ev.clone();
    ev_high.signature = high.to_der().as_bytes().to_vec();
    assert!(verify_assertion(&ch, &key, &ev_high, &params(99, now)).is_ok());
    // Tampered DER, raw (non-DER) signature, and a different key are refused.
    let mut bad = ev.clone();
    let n = bad.signature.len();
    bad.signature[n - 1] ^= 0x01;
    assert_eq!(
        verify_assertion(&ch, &key, &bad, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
    let mut raw = ev.clone();
    raw.signature = sig.to_bytes().to_vec();
    assert_eq!(
        verify_assertion(&ch, &key, &raw, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
    let other = CoseKey::Es256(
        *p256::ecdsa::SigningKey::from_slice(&[0x43; 32])
            .unwrap()
            .verifying_key(),
    );
    assert_eq!(
        verify_assertion(&ch, &other, &ev, &params(0, now)),
        Err(ConsentError::BadSignature)
    );
}

#[test]
fn invalid_challenges_refused() {
    let card = SigningKey::from_seed(&[7; 32]);
    let key = CoseKey::Ed25519(card.public());
    let mut ch = challenge();
    ch.period_start = ch.period_end + 1;
    let ev = ed_evidence(&card, &ch, FLAG_UP, 1);
    assert!(matches!(
        verify_assertion(&ch, &key, &ev, &params(0, ch.issued_at)),
        Err(ConsentError::Invalid(_))
    ));
    let mut ch = challenge();
    ch.period_end = u64::MAX;
    assert!(ch.validate().is_err());
}
