//! Crate-internal store tests that need raw database access: sealed values are bound to
//! their database, key and version; without the master key they do not open.

use std::sync::Arc;

use hexa_crypto::keyfile::ApplianceSecrets;
use hexa_crypto::keys::SigningKey;
use hexa_crypto::seal::{Aad, MasterKey};
use serde_json::json;

use super::engine::Engine;
use super::{AccessContext, Component, Store, StoreConfig, StoreError, format, versions_db_name};

fn engine(dir: &std::path::Path) -> Engine {
    let secrets = ApplianceSecrets {
        node_key: SigningKey::from_seed(&[3; 32]),
        master_key: MasterKey::from_bytes([4; 32]),
    };
    let store = Store::open(StoreConfig::new(dir, "node", "fac"), secrets).unwrap();
    Engine::start(Arc::new(store)).unwrap()
}

#[test]
fn sealed_value_moved_to_another_key_or_version_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let ctx = AccessContext::system("fac");
    let a = e
        .create(
            &ctx,
            json!({"resourceType": "Patient", "gender": "male"}),
            None,
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    let b = e
        .create(
            &ctx,
            json!({"resourceType": "Patient", "gender": "female"}),
            None,
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    let s = &e.store;
    let dbs = s.dbs(Component::Patient);
    let ka = format::version_key("Patient", &a.record.id, 1);
    let kb = format::version_key("Patient", &b.record.id, 1);
    // Copy A's sealed value over B's key: B no longer opens, with a typed error.
    {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let va = dbs.versions.get(&wtxn, &ka).unwrap().unwrap().to_vec();
        dbs.versions.put(&mut wtxn, &kb, &va).unwrap();
        // And as version 2 of A (a replayed value under a newer version).
        let k2 = format::version_key("Patient", &a.record.id, 2);
        dbs.versions.put(&mut wtxn, &k2, &va).unwrap();
        wtxn.commit().unwrap();
    }
    assert!(matches!(
        s.read("Patient", &b.record.id),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        s.vread("Patient", &a.record.id, 2),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(
        s.read("Patient", &a.record.id).unwrap().resource["gender"],
        "male"
    );

    // Without the master key, a stored value does not open (another key) and is not plaintext.
    let rtxn = s.env.read_txn().unwrap();
    let sealed = dbs.versions.get(&rtxn, &ka).unwrap().unwrap().to_vec();
    drop(rtxn);
    let db = versions_db_name(Component::Patient);
    let aad = Aad {
        database: &db,
        key: &ka,
        version: 1,
    };
    assert!(
        MasterKey::from_bytes([5; 32])
            .sealing_key(&db)
            .open(&sealed, &aad)
            .is_err()
    );
    assert!(
        MasterKey::from_bytes([4; 32])
            .sealing_key("shr.versions")
            .open(&sealed, &aad)
            .is_err()
    );
    let plain = MasterKey::from_bytes([4; 32])
        .sealing_key(&db)
        .open(&sealed, &aad)
        .unwrap();
    assert!(String::from_utf8_lossy(&sealed).find("male").is_none());
    let env = format::Envelope::from_bytes(&plain).unwrap();
    assert_eq!(env.id, a.record.id);

    // A tampered Provenance and audit entry are detected the same way.
    {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let mut v = s
            .audit_log
            .get(&wtxn, &0u64.to_be_bytes())
            .unwrap()
            .unwrap()
            .to_vec();
        let last = v.len() - 1;
        v[last] ^= 1;
        s.audit_log.put(&mut wtxn, &0u64.to_be_bytes(), &v).unwrap();
        wtxn.commit().unwrap();
    }
    assert!(matches!(s.audit_entry(0), Err(StoreError::Corrupt { .. })));
}

/// Read transactions use no thread-local storage (MDB_NOTLS): no thread's exit writes a
/// reader slot into the lock file after the environment was closed, and one thread may
/// hold two read transactions (with TLS the second is `MDB_BAD_RSLOT`).
#[test]
fn read_transactions_do_not_use_thread_local_storage() {
    const MDB_NOTLS: u32 = 0x20_0000;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    assert_ne!(e.store.env.get_flags().unwrap() & MDB_NOTLS, 0);
    let a = e.store.env.read_txn().unwrap();
    let b = e.store.env.read_txn().unwrap();
    drop((a, b));
}

/// Resource and audit ids are RFC 9562 UUIDv7 text: the unix-millisecond time first, so
/// ids sort by creation and the id-keyed trees append.
#[test]
fn new_ids_are_time_ordered_uuid_v7() {
    let before = super::time::now_millis();
    let ids: Vec<String> = (0..64).map(|_| super::new_id().unwrap()).collect();
    let after = super::time::now_millis();
    for id in &ids {
        assert_eq!(id.len(), 36, "{id}");
        for (i, c) in id.char_indices() {
            if matches!(i, 8 | 13 | 18 | 23) {
                assert_eq!(c, '-', "{id}");
            } else {
                assert!(c.is_ascii_digit() || ('a'..='f').contains(&c), "{id}");
            }
        }
        assert_eq!(&id[14..15], "7", "version 7: {id}");
        assert!("89ab".contains(&id[19..20]), "RFC 9562 variant: {id}");
        let millis = u64::from_str_radix(&id[..8], 16).unwrap() << 16
            | u64::from_str_radix(&id[9..13], 16).unwrap();
        assert!((before..=after).contains(&millis), "{id}");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "64 distinct ids");
    // The first 48 bits are the time, so ids of later milliseconds sort after.
    assert!(ids.first().unwrap()[..13] <= ids.last().unwrap()[..13]);
}
