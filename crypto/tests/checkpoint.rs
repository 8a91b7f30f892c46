//! C2SP signed-note vectors (Go `golang.org/x/mod/sumdb/note` example key "PeterNeumann" and the
//! c2sp.org/signed-note example verifier key), checkpoint round-trips and tamper tests.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hexa_crypto::checkpoint::*;
use hexa_crypto::keys::SigningKey;
use hexa_crypto::merkle::{Frontier, leaf_hash};

const GO_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                       then you don't know what your problem is.\n";
const GO_SIG: &str =
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";
/// The verifier key of the example in c2sp.org/signed-note.
const C2SP_EXAMPLE_VKEY: &str =
    "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";

fn go_signing_key() -> SigningKey {
    // "PRIVATE+KEY+<name>+<hash>+base64(0x01 || seed)"; the base64 part itself contains '+'.
    let b64 = GO_SKEY.splitn(5, '+').nth(4).unwrap();
    let raw = STANDARD.decode(b64).unwrap();
    assert_eq!(raw[0], ALG_ED25519);
    SigningKey::from_seed(&raw[1..].try_into().unwrap())
}

fn go_note() -> String {
    format!("{GO_TEXT}\n\u{2014} PeterNeumann {GO_SIG}\n")
}

#[test]
fn go_vector_sign_matches_byte_for_byte() {
    let key = go_signing_key();
    let v = NoteVerifier::new("PeterNeumann", key.public());
    assert_eq!(v.vkey(), GO_VKEY);
    assert_eq!(v.key_hash, 0xc74f20a3);
    assert_eq!(sign_note(GO_TEXT, "PeterNeumann", &key), go_note());
}

#[test]
fn go_vector_opens() {
    let v = NoteVerifier::from_vkey(GO_VKEY).unwrap();
    let (body, names) = open_note(&go_note(), &[v]).unwrap();
    assert_eq!(body, GO_TEXT);
    assert_eq!(names, vec!["PeterNeumann".to_owned()]);
}

#[test]
fn c2sp_example_vkey_parses_and_roundtrips() {
    let v = NoteVerifier::from_vkey(C2SP_EXAMPLE_VKEY).unwrap();
    assert_eq!(v.name, "example.com/foo");
    assert_eq!(v.key_hash, 0x530d903a);
    assert_eq!(v.vkey(), C2SP_EXAMPLE_VKEY);
}

#[test]
fn bad_vkeys_rejected() {
    // Wrong hash, wrong algorithm byte, truncated key, extra field, bad name.
    assert!(
        NoteVerifier::from_vkey(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err()
    );
    assert!(
        NoteVerifier::from_vkey(
            "PeterNeumann+c74f20a3+AhpZ2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err()
    );
    assert!(
        NoteVerifier::from_vkey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy")
            .is_err()
    );
    assert!(
        NoteVerifier::from_vkey(
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err()
    );
    assert!(NoteVerifier::from_vkey("PeterNeumann+c74f20a3").is_err());
}

#[test]
fn tampered_notes_rejected() {
    let v = NoteVerifier::from_vkey(GO_VKEY).unwrap();
    let note = go_note();
    // A flipped bit in the text.
    let bad_text = note.replacen("cryptography", "cryptographY", 1);
    assert!(matches!(
        open_note(&bad_text, std::slice::from_ref(&v)),
        Err(NoteError::BadSignature(_))
    ));
    // A flipped bit in the signature bytes (after the 4-byte key hash).
    let mut blob = STANDARD.decode(GO_SIG).unwrap();
    blob[10] ^= 0x01;
    let bad_sig = format!(
        "{GO_TEXT}\n\u{2014} PeterNeumann {}\n",
        STANDARD.encode(&blob)
    );
    assert!(matches!(
        open_note(&bad_sig, std::slice::from_ref(&v)),
        Err(NoteError::BadSignature(_))
    ));
    // A flipped bit in the key hash makes the signature unknown: no known signature remains.
    let mut blob = STANDARD.decode(GO_SIG).unwrap();
    blob[0] ^= 0x01;
    let bad_hash = format!(
        "{GO_TEXT}\n\u{2014} PeterNeumann {}\n",
        STANDARD.encode(&blob)
    );
    assert_eq!(
        open_note(&bad_hash, std::slice::from_ref(&v)),
        Err(NoteError::NoKnownSignature)
    );
    // Unknown signers are ignored as long as a known one verifies.
    let other = SigningKey::from_seed(&[9u8; 32]);
    let cosigned = add_cosignature(&note, "witness.example", &other).unwrap();
    let (_, names) = open_note(&cosigned, std::slice::from_ref(&v)).unwrap();
    assert_eq!(names, vec!["PeterNeumann".to_owned()]);
    // With both verifiers, both names verify.
    let w = NoteVerifier::new("witness.example", other.public());
    let (_, names) = open_note(&cosigned, &[v.clone(), w.clone()]).unwrap();
    assert_eq!(names.len(), 2);
    assert_eq!(open_note(&note, &[w]), Err(NoteError::NoKnownSignature));
    assert!(matches!(
        add_cosignature(&cosigned, "witness.example", &other),
        Err(NoteError::AlreadySigned(_))
    ));
    // Structural damage.
    assert!(open_note(GO_TEXT, std::slice::from_ref(&v)).is_err());
    assert!(open_note(&note.replace('\u{2014}', "-"), std::slice::from_ref(&v)).is_err());
    assert!(open_note(note.trim_end(), std::slice::from_ref(&v)).is_err());
}

#[test]
fn checkpoint_roundtrip_sign_open_and_tamper() {
    let mut f = Frontier::new();
    for i in 0..10u8 {
        f.append(leaf_hash(&[i]));
    }
    let cp = Checkpoint {
        origin: "hexa.example/appliance/log".into(),
        size: f.size(),
        root: f.root(),
        extensions: vec!["facility hospital-a".into()],
    };
    let body = cp.body();
    assert!(body.starts_with("hexa.example/appliance/log\n10\n"));
    assert_eq!(Checkpoint::parse_body(&body).unwrap(), cp);
    let key = SigningKey::from_seed(&[3u8; 32]);
    let note = try_sign_note(&body, &cp.origin, &key).unwrap();
    let v = NoteVerifier::new(&cp.origin, key.public());
    let (opened, _) = open_note(&note, std::slice::from_ref(&v)).unwrap();
    assert_eq!(Checkpoint::parse_body(&opened).unwrap(), cp);
    // Every single-bit flip in the body is rejected (or makes the note unparsable).
    for i in 0..body.len() {
        for bit in 0..8 {
            let mut bytes = note.clone().into_bytes();
            bytes[i] ^= 1 << bit;
            let Ok(tampered) = String::from_utf8(bytes) else {
                continue;
            };
            assert!(
                open_note(&tampered, std::slice::from_ref(&v)).is_err(),
                "byte {i} bit {bit}"
            );
        }
    }
}

#[test]
fn checkpoint_parse_rejects_malformed() {
    let root = STANDARD.encode([0u8; 32]);
    assert!(Checkpoint::parse_body(&format!("o\n1\n{root}\n")).is_ok());
    for bad in [
        format!("o\n1\n{root}"),
        format!("\n1\n{root}\n"),
        format!("o\n01\n{root}\n"),
        format!("o\n-1\n{root}\n"),
        format!("o\n1\n{}\n", STANDARD.encode([0u8; 31])),
        format!("o\n1\n{root}\n\n"),
        "o\n1\n".to_owned(),
    ] {
        assert!(Checkpoint::parse_body(&bad).is_err(), "{bad:?}");
    }
    assert!(try_sign_note("no newline", "n", &SigningKey::from_seed(&[1; 32])).is_err());
    assert!(try_sign_note("a\n", "bad name", &SigningKey::from_seed(&[1; 32])).is_err());
}
