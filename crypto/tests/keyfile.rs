//! Key file round-trips, wrong passphrase, tampering and version handling.

use hexa_crypto::keyfile::{ApplianceSecrets, KeyFileError};

#[test]
fn plain_roundtrip() {
    let s = ApplianceSecrets::generate().unwrap();
    let b = s.to_file_bytes(None).unwrap();
    let back = ApplianceSecrets::from_file_bytes(&b, None).unwrap();
    assert_eq!(back.node_key.seed(), s.node_key.seed());
    assert_eq!(back.master_key.as_bytes(), s.master_key.as_bytes());
    assert_eq!(
        ApplianceSecrets::from_file_bytes(&b, Some(b"x")).unwrap_err(),
        KeyFileError::NotEncrypted
    );
    let mut bad = b.clone();
    bad[20] ^= 1;
    assert!(matches!(
        ApplianceSecrets::from_file_bytes(&bad, None),
        Err(KeyFileError::Malformed(_))
    ));
}

#[test]
fn passphrase_roundtrip_wrong_and_missing() {
    let s = ApplianceSecrets::generate().unwrap();
    let b = s.to_file_bytes(Some(b"correct horse")).unwrap();
    // Argon2id parameters are stored in the file: m = 19 MiB, t = 2, p = 1.
    assert_eq!(&b[9..13], &(19u32 * 1024).to_be_bytes());
    assert_eq!(&b[13..17], &2u32.to_be_bytes());
    assert_eq!(&b[17..21], &1u32.to_be_bytes());
    let back = ApplianceSecrets::from_file_bytes(&b, Some(b"correct horse")).unwrap();
    assert_eq!(back.node_key.kid(), s.node_key.kid());
    assert_eq!(back.master_key.as_bytes(), s.master_key.as_bytes());
    let wrong = ApplianceSecrets::from_file_bytes(&b, Some(b"battery staple")).unwrap_err();
    assert_eq!(wrong, KeyFileError::WrongPassphrase);
    assert!(wrong.to_string().contains("wrong passphrase"));
    assert_eq!(
        ApplianceSecrets::from_file_bytes(&b, None).unwrap_err(),
        KeyFileError::PassphraseRequired
    );
    // A flipped bit in the authenticated header (salt) is rejected too.
    let mut bad = b.clone();
    bad[25] ^= 0x01;
    assert_eq!(
        ApplianceSecrets::from_file_bytes(&bad, Some(b"correct horse")).unwrap_err(),
        KeyFileError::WrongPassphrase
    );
    // Weakened parameters are refused before any KDF work.
    let mut weak = b.clone();
    weak[9..13].copy_from_slice(&1024u32.to_be_bytes());
    assert!(matches!(
        ApplianceSecrets::from_file_bytes(&weak, Some(b"correct horse")),
        Err(KeyFileError::BadParams { .. })
    ));
    assert_eq!(
        s.to_file_bytes(Some(b"")).unwrap_err(),
        KeyFileError::EmptyPassphrase
    );
}

#[test]
fn version_and_magic() {
    let s = ApplianceSecrets::generate().unwrap();
    let mut b = s.to_file_bytes(None).unwrap();
    b[7] = b'2';
    assert_eq!(
        ApplianceSecrets::from_file_bytes(&b, None).unwrap_err(),
        KeyFileError::UnsupportedVersion('2')
    );
    assert!(matches!(
        ApplianceSecrets::from_file_bytes(b"nonsense", None),
        Err(KeyFileError::Malformed(_))
    ));
    assert!(matches!(
        ApplianceSecrets::from_file_bytes(&[], None),
        Err(KeyFileError::Malformed(_))
    ));
}

#[test]
fn debug_does_not_leak() {
    let s = ApplianceSecrets::generate().unwrap();
    let d = format!("{s:?}");
    assert!(d.contains(&s.node_key.kid()));
    assert!(!d.contains(&format!("{:?}", s.master_key.as_bytes())));
}
