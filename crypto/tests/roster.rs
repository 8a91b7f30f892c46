//! Roster signing and verification: validity windows, unknown entries, wrong root, tampering.

use hexa_crypto::keys::SigningKey;
use hexa_crypto::roster::*;
use serde_json::json;

fn fixture() -> (SigningKey, SigningKey, SigningKey, Roster) {
    let root = SigningKey::from_seed(&[1u8; 32]);
    let a = SigningKey::from_seed(&[2u8; 32]);
    let b = SigningKey::from_seed(&[3u8; 32]);
    let r = Roster {
        issuer: "hexa-network-operator".into(),
        serial: 7,
        issued_at: 1_000,
        entries: vec![
            RosterEntry {
                facility_id: "hospital-a".into(),
                facility_name: "Hospital A".into(),
                node_key: a.public(),
                not_before: 1_000,
                not_after: 2_000,
            },
            RosterEntry {
                facility_id: "clinic-b".into(),
                facility_name: "Clinic B".into(),
                node_key: b.public(),
                not_before: 1_500,
                not_after: 3_000,
            },
        ],
    };
    (root, a, b, r)
}

#[test]
fn sign_verify_and_lookups() {
    let (root, a, b, r) = fixture();
    let signed = sign_roster(&r, &root).unwrap();
    // node_key is serialized as a JWK.
    assert_eq!(signed.roster["entries"][0]["node_key"]["kty"], json!("OKP"));
    assert_eq!(
        signed.roster["entries"][0]["node_key"]["kid"],
        json!(a.kid())
    );
    let v = signed.verify(&root.public(), 1_200).unwrap();
    assert_eq!(v.entries().len(), 2);
    assert_eq!(v.roster(), &r);
    assert_eq!(
        v.node_key("hospital-a", &a.kid(), 1_200)
            .unwrap()
            .facility_name,
        "Hospital A"
    );
    assert!(matches!(
        v.node_key("clinic-b", &b.kid(), 1_200),
        Err(RosterError::NotYetValid { .. })
    ));
    assert!(matches!(
        v.node_key("hospital-a", &a.kid(), 2_000),
        Err(RosterError::Expired { .. })
    ));
    // The right key under the wrong facility is unknown.
    assert!(matches!(
        v.node_key("clinic-b", &a.kid(), 1_600),
        Err(RosterError::UnknownEntry { .. })
    ));
    assert!(matches!(
        v.node_key("nowhere", &a.kid(), 1_600),
        Err(RosterError::UnknownEntry { .. })
    ));
    // Survives a JSON round trip as a whole (how the appliance stores it).
    let text = serde_json::to_string(&signed).unwrap();
    let back: SignedRoster = serde_json::from_str(&text).unwrap();
    assert!(back.verify(&root.public(), 1_200).is_ok());
}

#[test]
fn wrong_root_and_tampering_rejected() {
    let (root, a, _, r) = fixture();
    let signed = sign_roster(&r, &root).unwrap();
    let other = SigningKey::from_seed(&[9u8; 32]);
    assert!(matches!(
        signed.verify(&other.public(), 1_200),
        Err(RosterError::Signature(_))
    ));
    // Extend an entry's validity.
    let mut t = signed.clone();
    t.roster["entries"][0]["not_after"] = json!(9_999);
    assert!(matches!(
        t.verify(&root.public(), 1_200),
        Err(RosterError::Signature(_))
    ));
    // Swap in an attacker key.
    let mut t = signed.clone();
    t.roster["entries"][1]["node_key"] = other.public().to_jwk();
    assert!(t.verify(&root.public(), 1_200).is_err());
    // Flip one bit of the signature.
    let mut t = signed.clone();
    let mut sig = t.signature.into_bytes();
    let last = sig.len() - 3;
    sig[last] ^= 0x02;
    t.signature = String::from_utf8(sig).unwrap();
    assert!(t.verify(&root.public(), 1_200).is_err());
    // Member order does not matter (JCS), so a re-serialized roster still verifies.
    let reordered: serde_json::Value =
        serde_json::from_str(&signed.roster.to_string().replace("\"serial\":7,", "")).unwrap();
    let mut reordered = reordered;
    reordered["serial"] = json!(7);
    let t = SignedRoster {
        roster: reordered,
        signature: signed.signature.clone(),
    };
    assert!(t.verify(&root.public(), 1_200).is_ok());
    let _ = a;
}

#[test]
fn inconsistent_or_future_rosters_rejected() {
    let (root, a, _, mut r) = fixture();
    r.issued_at = 10_000;
    let signed = sign_roster(&r, &root).unwrap();
    assert!(matches!(
        signed.verify(&root.public(), 1_200),
        Err(RosterError::IssuedInFuture { .. })
    ));
    assert!(signed.verify(&root.public(), 9_800).is_ok());
    let (_, _, _, mut dup) = fixture();
    dup.entries.push(dup.entries[0].clone());
    assert!(matches!(
        sign_roster(&dup, &root),
        Err(RosterError::Invalid(_))
    ));
    let (_, _, _, mut inv) = fixture();
    inv.entries[0].not_after = inv.entries[0].not_before;
    assert!(matches!(
        sign_roster(&inv, &root),
        Err(RosterError::Invalid(_))
    ));
    let _ = a;
}
