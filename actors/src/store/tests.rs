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

/// The key in `<component>.versions` of version `version` of `ty/id`.
fn key_of(e: &Engine, ty: &str, id: &str, version: u64) -> Vec<u8> {
    let c = super::component_for(ty).unwrap();
    e.store
        .with_read(|t| {
            let cur = e.store.current_in(t, ty, id)?.unwrap();
            Ok(e.store.stamp_of(t, c, ty, &cur, version)?.unwrap())
        })
        .map(|stamp| format::stamp_key(ty, stamp))
        .unwrap()
}

/// Creates `resource` as `ctx` (with the author's JWS, if any) and waits for its commit.
fn created(
    e: &Engine,
    ctx: &AccessContext,
    resource: serde_json::Value,
    author_jws: Option<String>,
) -> super::engine::WriteResult {
    e.create(ctx, resource, author_jws, None)
        .unwrap()
        .wait_blocking()
        .unwrap()
}

/// Creates a male and a female Patient; returns their ids.
fn two_patients(e: &Engine, ctx: &AccessContext) -> (String, String) {
    let [a, b] = ["male", "female"].map(|gender| {
        created(
            e,
            ctx,
            json!({"resourceType": "Patient", "gender": gender}),
            None,
        )
        .record
        .id
    });
    (a, b)
}

#[test]
fn sealed_value_moved_to_another_key_or_version_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let ctx = AccessContext::system("fac");
    let (a, b) = two_patients(&e, &ctx);
    let s = &e.store;
    let dbs = s.dbs(Component::Patient);
    let ka = key_of(&e, "Patient", &a, 1);
    let kb = key_of(&e, "Patient", &b, 1);
    let (stamp_a, cur_a) = (
        format::parse_stamp_key(&ka).unwrap().1,
        s.with_read(|t| s.current_in(t, "Patient", &a))
            .unwrap()
            .unwrap(),
    );
    let k2 = format::stamp_key("Patient", stamp_a + 1000);
    // Copy A's stored value over B's key: B no longer opens, with a typed error.
    let set_current_a = |cur: format::Current| {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let ck = format::current_key("Patient", &a);
        dbs.current.put(&mut wtxn, &ck, &cur.to_bytes()).unwrap();
        wtxn.commit().unwrap();
    };
    {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let va = dbs.versions.get(&wtxn, &ka).unwrap().unwrap().to_vec();
        dbs.versions.put(&mut wtxn, &kb, &va).unwrap();
        // And as version 2 of A (a replayed value under a newer key), its head saying so.
        let (_, sealed) = format::VersionHead::split(&va).unwrap();
        let head = format::VersionHead {
            version: 2,
            prev: stamp_a,
        };
        dbs.versions
            .put(&mut wtxn, &k2, &head.value(sealed))
            .unwrap();
        wtxn.commit().unwrap();
    }
    assert!(matches!(
        s.read("Patient", &b),
        Err(StoreError::Corrupt { .. })
    ));
    set_current_a(format::Current {
        version: 2,
        stamp: stamp_a + 1000,
        ..cur_a
    });
    for r in [s.vread("Patient", &a, 2), s.read("Patient", &a)] {
        assert!(matches!(r, Err(StoreError::Corrupt { .. })), "{r:?}");
    }
    // The walk to version 1 goes through the replayed head, which names A's version 1.
    assert_eq!(
        s.vread("Patient", &a, 1).unwrap().resource["gender"],
        "male"
    );
    set_current_a(cur_a);
    assert_eq!(s.read("Patient", &a).unwrap().resource["gender"], "male");

    // Without the master key, a stored value does not open (another key) and is not plaintext.
    let rtxn = s.env.read_txn().unwrap();
    let value = dbs.versions.get(&rtxn, &ka).unwrap().unwrap().to_vec();
    drop(rtxn);
    let sealed = format::VersionHead::split(&value).unwrap().1;
    let db = versions_db_name(Component::Patient);
    let aad = Aad {
        database: &db,
        key: &ka,
        version: 1,
    };
    assert!(
        MasterKey::from_bytes([5; 32])
            .sealing_key(&db)
            .open(sealed, &aad)
            .is_err()
    );
    assert!(
        MasterKey::from_bytes([4; 32])
            .sealing_key("shr.versions")
            .open(sealed, &aad)
            .is_err()
    );
    let plain = MasterKey::from_bytes([4; 32])
        .sealing_key(&db)
        .open(sealed, &aad)
        .unwrap();
    assert!(String::from_utf8_lossy(sealed).find("male").is_none());
    let env = format::Envelope::from_bytes(&plain).unwrap();
    assert_eq!(env.id, a);

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

/// From format 3, `audit.provenance` holds only what the Provenance does not share with its
/// version (no second copy of the JWS); a read composes the same Provenance a format-2
/// directory stored as JSON, and such JSON values still read as they are.
#[test]
fn provenance_is_stored_compact_and_format_2_json_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let ctx = AccessContext {
        practitioner: Some("dr".into()),
        ..AccessContext::system("fac")
    };
    let w = created(
        &e,
        &ctx,
        json!({"resourceType": "Patient", "gender": "female"}),
        Some("eyJraWQiOiJ3In0..YXV0aG9y".into()),
    );
    let s = &e.store;
    let key = key_of(&e, "Patient", &w.record.id, 1);
    let aad = Aad {
        database: "audit.provenance",
        key: &key,
        version: 1,
    };
    let rtxn = s.env.read_txn().unwrap();
    let sealed = s
        .audit_provenance
        .get(&rtxn, &key)
        .unwrap()
        .unwrap()
        .to_vec();
    drop(rtxn);
    let plain = s.seal_provenance.open(&sealed, &aad).unwrap();
    let stored = format::StoredProvenance::from_bytes(&plain).unwrap();
    assert_eq!(stored.custodian, "node");
    assert_eq!(stored.author.as_deref(), Some("Practitioner/dr"));
    assert!(plain.len() < 120, "{} bytes", plain.len());

    let composed = s.provenance_for(&w.record.versioned_reference()).unwrap();
    assert_eq!(composed.len(), 1);
    let p = &composed[0];
    assert_eq!(p.id, stored.id);
    assert_eq!(
        p.canonical,
        hexa_crypto::jcs::canonicalize(&p.resource).unwrap()
    );
    let sigs = p.resource["signature"].as_array().unwrap();
    assert_eq!(sigs.len(), 2, "the node's and the author's JWS");
    assert_eq!(p.resource["agent"][0]["who"]["reference"], "Device/node");
    assert_eq!(
        p.resource["agent"][1]["who"]["reference"],
        "Practitioner/dr"
    );
    assert_eq!(p.resource["activity"]["coding"][0]["code"], "CREATE");

    // What a format-2 directory held: the Provenance's JSON, sealed under the same key.
    let json_plain =
        super::audit::provenance_canon("node", &w.record, &stored.id, Some("Practitioner/dr"))
            .to_bytes();
    assert_eq!(json_plain, p.canonical);
    {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let v = s.seal_provenance.seal(&json_plain, &aad).unwrap();
        s.audit_provenance.put(&mut wtxn, &key, &v).unwrap();
        wtxn.commit().unwrap();
    }
    let legacy = s.provenance_for(&w.record.versioned_reference()).unwrap();
    assert_eq!(legacy[0].resource, p.resource);
    assert_eq!(legacy[0].canonical, p.canonical);
    assert_eq!(legacy[0].id, p.id);

    // A compact Provenance whose version is gone is corrupt, not empty.
    {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        s.audit_provenance.put(&mut wtxn, &key, &sealed).unwrap();
        s.dbs(Component::Patient)
            .versions
            .delete(&mut wtxn, &key)
            .unwrap();
        wtxn.commit().unwrap();
    }
    assert!(matches!(
        s.provenance_for(&w.record.versioned_reference()),
        Err(StoreError::Corrupt { .. })
    ));
}

/// Log entries written before format 3 hold the event's JCS bytes uncompressed; they read
/// back as the same bytes with the same Merkle leaf as the compressed entry.
#[test]
fn uncompressed_format_2_audit_entries_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    created(
        &e,
        &AccessContext::system("fac"),
        json!({"resourceType": "Patient", "gender": "male"}),
        None,
    );
    let s = &e.store;
    let entry = s.audit_entry(0).unwrap();
    assert_eq!(entry.bytes.first(), Some(&b'{'));
    let key = 0u64.to_be_bytes();
    let aad = Aad {
        database: "audit.log",
        key: &key,
        version: 0,
    };
    {
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let compressed = s.audit_log.get(&wtxn, &key).unwrap().unwrap().to_vec();
        assert!(compressed.len() * 3 < entry.bytes.len());
        let sealed = s.seal_log.seal(&entry.bytes, &aad).unwrap();
        s.audit_log.put(&mut wtxn, &key, &sealed).unwrap();
        wtxn.commit().unwrap();
    }
    assert_eq!(s.audit_entry(0).unwrap(), entry);
    assert_eq!(s.audit_root(1).unwrap(), entry.leaf);
}

/// Runs random creates, updates that move a resource to another class, and deletions of
/// `ty` (`resource(class)` builds one of class `0..4`), reopening the store every 30 steps,
/// with the index journal's lag set to `lag` and its filing chunk to `chunk`. After every
/// step `found(engine, class)` must list exactly the live resources of that class. Returns
/// the engine, open.
fn journal_model_run(
    lag: usize,
    chunk: usize,
    ty: &str,
    resource: impl Fn(u64) -> serde_json::Value,
    found: impl Fn(&Engine, u64) -> Vec<String>,
) -> (Engine, tempfile::TempDir) {
    use std::collections::BTreeMap;
    let ctx = AccessContext::system("fac");
    let open = |dir: &std::path::Path| {
        let secrets = ApplianceSecrets {
            node_key: SigningKey::from_seed(&[3; 32]),
            master_key: MasterKey::from_bytes([4; 32]),
        };
        let mut cfg = StoreConfig::new(dir, "node", "fac");
        cfg.index_journal_lag = lag;
        cfg.index_filing_chunk = chunk;
        Engine::start(Arc::new(Store::open(cfg, secrets).unwrap())).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut e = open(dir.path());
    // id -> class of its live version.
    let mut model: BTreeMap<String, u64> = BTreeMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ lag as u64;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..90 {
        let ids: Vec<String> = model.keys().cloned().collect();
        match next(6) {
            0..=2 => {
                let s = next(4);
                let w = created(&e, &ctx, resource(s), None);
                model.insert(w.record.id, s);
            }
            3 | 4 if !ids.is_empty() => {
                let (id, s) = (&ids[next(ids.len() as u64) as usize], next(4));
                let mut r = resource(s);
                r["id"] = json!(id);
                e.update(&ctx, ty, id, r, None, None)
                    .unwrap()
                    .wait_blocking()
                    .unwrap();
                model.insert(id.clone(), s);
            }
            5 if !ids.is_empty() => {
                let id = &ids[next(ids.len() as u64) as usize];
                e.delete(&ctx, ty, id).unwrap().wait_blocking().unwrap();
                model.remove(id);
            }
            _ => {}
        }
        if step % 30 == 29 {
            e.close(std::time::Duration::from_secs(10)).unwrap();
            e = open(dir.path());
        }
        for s in 0..4 {
            let mut got = found(&e, s);
            got.sort();
            got.dedup();
            let want: Vec<String> = model
                .iter()
                .filter(|(_, v)| **v == s)
                .map(|(k, _)| k.clone())
                .collect();
            assert_eq!(got, want, "{ty}, lag {lag}, step {step}, class {s}");
        }
    }
    (e, dir)
}

/// The ids a search of `ty` by `param=value` finds (up to 1000), sorted.
fn search_ids(e: &Engine, ty: &str, param: &str, value: &str) -> Vec<String> {
    let mut q = super::search::SearchQuery::from_pairs(ty, &[(param, value)]).unwrap();
    q.count = 1000;
    let page = e.store.search(&q).unwrap();
    let mut ids: Vec<String> = page.items.into_iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

/// Where the postings are after a [`journal_model_run`]: all in the journal (lag far above
/// the test's writes), none (lag 0), or fewer than the lag plus a few writes' (a filing in
/// chunks may be under way).
fn assert_journal_holds(e: &Engine, lag: usize, per_write: usize) {
    let live = e.store.journal.live();
    let journal_records = e
        .store
        .with_read(|t| Ok(e.store.journal_db.len(t)?))
        .unwrap();
    // Each record holds its own commit's changes only (one write per commit here: its
    // removals and additions), never an earlier commit's again.
    e.store
        .with_read(|t| {
            for item in e.store.journal_db.iter(t)? {
                let (txn, record) = item?;
                let ops = super::journal::decode(record).count();
                assert!(ops <= 2 * per_write, "record {txn:?} holds {ops} changes");
            }
            Ok(())
        })
        .unwrap();
    match lag {
        0 => assert_eq!((live, journal_records), (0, 0)),
        l if l < 1000 => assert!(live < l + 3 * per_write, "{live} postings wait"),
        _ => assert!(live > 50 && journal_records > 0, "{live} postings wait"),
    }
}

/// The index journal ([`super::journal`]): searches of the shared health record answer the
/// same whether the postings wait in the journal (lag far above the test's writes), are
/// filed at every commit (lag 0) or move between the two along the way (lag 3), across
/// updates that change the term, deletions and reopening (the journal is replayed).
#[test]
fn searches_see_journaled_and_filed_postings_alike() {
    let obs = |s: u64| {
        json!({"resourceType": "Observation", "status": "final",
               "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/p{s}")}})
    };
    let by_subject =
        |e: &Engine, s: u64| search_ids(e, "Observation", "subject", &format!("Patient/p{s}"));
    for (lag, chunk) in [(1_000_000, 32_768), (0, 32_768), (3, 32_768), (12, 2)] {
        let (e, _dir) = journal_model_run(lag, chunk, "Observation", obs, by_subject);
        assert_journal_holds(&e, lag, 8);
        let _ = e.close(std::time::Duration::from_secs(10));
    }
}

/// The client registry's postings go through the index journal too (format 5): a search by
/// family name and a `$match` on an identifier (its blocking key) answer the same whether
/// the postings wait in the journal, are filed at every commit or move between the two,
/// across updates, deletions and reopening.
#[test]
fn patient_searches_and_matches_see_journaled_and_filed_postings_alike() {
    const FAMILIES: [&str; 4] = ["Uwase", "Mugisha", "Habimana", "Niyonsaba"];
    let patient = |s: u64| {
        json!({"resourceType": "Patient", "gender": "female", "birthDate": "1990-04-02",
               "name": [{"family": FAMILIES[s as usize], "given": ["Aline"]}],
               "identifier": [{"system": "urn:nid", "value": format!("N{s}")}]})
    };
    let found = |e: &Engine, s: u64| {
        let by_family = search_ids(e, "Patient", "family", FAMILIES[s as usize]);
        let query = json!({"resourceType": "Patient",
                           "identifier": [{"system": "urn:nid", "value": format!("N{s}")}]});
        let mut matched: Vec<String> = e
            .store
            .match_patients(&query, 0.9, 1000)
            .unwrap()
            .into_iter()
            .map(|m| m.record.id)
            .collect();
        matched.sort();
        assert_eq!(by_family, matched, "class {s}: search and $match disagree");
        by_family
    };
    for (lag, chunk) in [(1_000_000, 32_768), (0, 32_768), (5, 32_768), (60, 7)] {
        let (e, _dir) = journal_model_run(lag, chunk, "Patient", patient, found);
        assert_journal_holds(&e, lag, 40);
        let _ = e.close(std::time::Duration::from_secs(10));
    }
}

/// A term put and removed over and over (an Observation's status updated back and forth)
/// keeps few postings live, but every removal stays in the journal's view until it is
/// filed: the filing threshold counts them, so the view stays bounded.
#[test]
fn postings_removed_again_count_toward_filing() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = ApplianceSecrets {
        node_key: SigningKey::from_seed(&[3; 32]),
        master_key: MasterKey::from_bytes([4; 32]),
    };
    let mut cfg = StoreConfig::new(dir.path(), "node", "fac");
    cfg.index_journal_lag = 20;
    let e = Engine::start(Arc::new(Store::open(cfg, secrets).unwrap())).unwrap();
    let ctx = AccessContext::system("fac");
    let obs = |status: &str| {
        json!({"resourceType": "Observation", "status": status, "code": {"text": "pulse"},
               "subject": {"reference": "Patient/p1"}})
    };
    let id = created(&e, &ctx, obs("final"), None).record.id;
    for i in 0..60 {
        let mut r = obs(if i % 2 == 0 { "amended" } else { "final" });
        r["id"] = json!(id);
        e.update(&ctx, "Observation", &id, r, None, None)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert!(
            e.store.journal.pending() <= 20,
            "update {i}: {} entries held",
            e.store.journal.pending()
        );
    }
    let q = super::search::SearchQuery::from_pairs("Observation", &[("status", "final")]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 1);
    let q =
        super::search::SearchQuery::from_pairs("Observation", &[("status", "amended")]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 0);
}

/// An update takes the index terms to remove from the facts kept of the version it
/// replaces ([`super::bases`]), and those are the facts of the version stored. A version
/// prepared and never committed (one that lost a race for the same base) leaves its facts
/// behind, under its own stamp key (up to format 5 it was the key the winner was written
/// at; the sealed value's identity kept them from being used); the next update must not
/// use them.
#[test]
fn facts_of_a_version_that_never_committed_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let ctx = AccessContext::system("fac");
    let obs = |status: &str| {
        json!({"resourceType": "Observation", "status": status,
               "code": {"text": "pulse"}, "subject": {"reference": "Patient/p1"}})
    };
    let id = created(&e, &ctx, obs("final"), None).record.id;
    let update = |status: &str| {
        let mut r = obs(status);
        r["id"] = json!(id);
        e.update(&ctx, "Observation", &id, r, None, None)
            .unwrap()
            .wait_blocking()
            .unwrap()
    };
    // The pointer to version 1, which a write that loses the race to version 2 replaces.
    let v1 = e
        .store
        .with_read(|t| e.store.current_in(t, "Observation", &id))
        .unwrap();
    assert_eq!(update("cancelled").record.version, 2);
    let key = key_of(&e, "Observation", &id, 2);
    let stored = |e: &Engine| {
        e.store
            .with_read(|t| {
                let v = e.store.dbs(Component::Shr).versions.get(t, &key)?.unwrap();
                let sealed = format::VersionHead::split(v).unwrap().1;
                Ok(super::bases::SealedId::of(sealed).unwrap())
            })
            .unwrap()
    };
    assert!(
        e.store.bases.get(&key, &stored(&e)).is_some(),
        "the winner's facts are kept"
    );

    // Another version 2 of the same base, prepared and dropped: its facts are kept under
    // its own key, and the winner's stay.
    let mut loser = obs("amended");
    loser["id"] = json!(id);
    let spec = e.spec("Observation", &id, v1, loser, false, None, &ctx);
    let lost = e
        .store
        .with_read(|t| e.store.prepare_version(t, spec))
        .unwrap();
    assert_ne!(lost.write.key, key);
    let lost_id =
        super::bases::SealedId::of(format::VersionHead::split(&lost.write.value).unwrap().1)
            .unwrap();
    assert!(e.store.bases.get(&lost.write.key, &lost_id).is_some());
    assert!(e.store.bases.get(&key, &stored(&e)).is_some());

    assert_eq!(update("final").record.version, 3);
    for (status, want) in [
        ("cancelled", vec![]),
        ("amended", vec![]),
        ("final", vec![id.clone()]),
    ] {
        assert_eq!(
            search_ids(&e, "Observation", "status", status),
            want,
            "{status}"
        );
    }
    let _ = e.close(std::time::Duration::from_secs(10));
}

/// Stamps are issued above every stamp written before a restart, whatever the clock says:
/// the writer records the greatest stamp it commits in `meta`, and a store opened later
/// issues above it (here: a stamp a year ahead of the clock, as a clock set back leaves).
#[test]
fn stamps_after_a_restart_are_above_every_stamp_written() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let ctx = AccessContext::system("fac");
    let patient = || json!({"resourceType": "Patient", "gender": "female"});
    let a = created(&e, &ctx, patient(), None).record.id;
    let stamp = |e: &Engine, id: &str| {
        format::parse_stamp_key(&key_of(e, "Patient", id, 1))
            .unwrap()
            .1
    };
    let recorded = |e: &Engine| {
        e.store
            .with_read(|t| {
                let v = e.store.meta.get(t, super::META_STAMPS)?.unwrap();
                Ok(u64::from_be_bytes(v.try_into().unwrap()))
            })
            .unwrap()
    };
    assert_eq!(recorded(&e), stamp(&e, &a));
    let ahead = (super::time::now_millis() + 365 * 86_400_000) << 16;
    {
        let s = &e.store;
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        s.meta
            .put(&mut wtxn, super::META_STAMPS, &ahead.to_be_bytes())
            .unwrap();
        wtxn.commit().unwrap();
    }
    e.close(std::time::Duration::from_secs(10)).unwrap();
    let e = engine(dir.path());
    let b = created(&e, &ctx, patient(), None).record.id;
    assert_eq!(stamp(&e, &b), ahead + 1);
    assert_eq!(recorded(&e), ahead + 1);
    let _ = e.close(std::time::Duration::from_secs(10));
}

/// A version's head is not sealed; the walk back through a resource's versions checks each
/// step, and what it reaches must be the requested resource and version. A head that names
/// another resource's version, or its own, is corruption, never another record.
#[test]
fn a_head_that_names_another_version_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let ctx = AccessContext::system("fac");
    let (a, b) = two_patients(&e, &ctx);
    let mut r = json!({"resourceType": "Patient", "gender": "other", "id": a});
    e.update(&ctx, "Patient", &a, r.take(), None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    let s = &e.store;
    let dbs = s.dbs(Component::Patient);
    let a2 = key_of(&e, "Patient", &a, 2);
    let original = s
        .with_read(|t| Ok(dbs.versions.get(t, &a2)?.unwrap().to_vec()))
        .unwrap();
    let set_prev = |prev: u64| {
        let (head, sealed) = format::VersionHead::split(&original).unwrap();
        let _g = s.gate.read().unwrap();
        let mut wtxn = s.env.write_txn().unwrap();
        let v = format::VersionHead { prev, ..head }.value(sealed);
        dbs.versions.put(&mut wtxn, &a2, &v).unwrap();
        wtxn.commit().unwrap();
    };
    let stamp_of = |k: &[u8]| format::parse_stamp_key(k).unwrap().1;
    let b1 = stamp_of(&key_of(&e, "Patient", &b, 1));
    let a1 = stamp_of(&key_of(&e, "Patient", &a, 1));
    set_prev(a1);
    assert_eq!(s.history("Patient", &a).unwrap().len(), 2);
    for prev in [b1, stamp_of(&a2), 0] {
        set_prev(prev);
        assert!(
            matches!(s.vread("Patient", &a, 1), Err(StoreError::Corrupt { .. })),
            "prev {prev}"
        );
        assert!(
            matches!(s.history("Patient", &a), Err(StoreError::Corrupt { .. })),
            "prev {prev}"
        );
        assert_eq!(s.read("Patient", &a).unwrap().resource["gender"], "other");
    }
    set_prev(a1);
    assert_eq!(
        s.vread("Patient", &a, 1).unwrap().resource["gender"],
        "male"
    );
    let _ = e.close(std::time::Duration::from_secs(10));
}

/// An upgrade killed between two batches resumes at the next open. Here the upgrade of the
/// format-5 fixture (`tests/fixtures/format5`) stops with an error after its second batch
/// of 4 resources: the client registry's 5 Patients were rewritten and committed, the
/// shared health record's Observations not yet. The next open rewrites the rest, and every
/// version reads back as the build that wrote the fixture read it.
#[test]
fn an_upgrade_stopped_between_batches_resumes_at_the_next_open() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format5");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    std::fs::copy(
        format!("{fixture}/store/data.mdb"),
        dir.path().join("store/data.mdb"),
    )
    .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{fixture}/manifest.json")).unwrap())
            .unwrap();
    let secrets = || ApplianceSecrets {
        node_key: SigningKey::from_seed(&[1; 32]),
        master_key: MasterKey::from_bytes([101; 32]),
    };
    let config = || StoreConfig::new(dir.path(), "hexa-test-node", "fac1");

    *super::upgrade::INTERRUPT.lock().unwrap() = Some((4, 2));
    let stopped = Store::open(config(), secrets());
    *super::upgrade::INTERRUPT.lock().unwrap() = None;
    let err = stopped.unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");

    // What the stop left: the Patients' pointers rewritten, the Observations' not.
    {
        #[allow(unsafe_code)]
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .max_dbs(40)
                .map_size(1 << 30)
                .open(dir.path().join("store"))
                .unwrap()
        };
        let (patients, shr) = {
            let wtxn = env.write_txn().unwrap();
            let dbs = env
                .create_databases_and_commit(wtxn, |o, w| {
                    type B = heed::types::Bytes;
                    let p = o.create_database::<B, B>(w, Some("patient.current"))?;
                    let s = o.create_database::<B, B>(w, Some("shr.current"))?;
                    Ok::<_, heed::Error>(heed::CommitOrAbort::<_, ()>::Commit([p, s]))
                })
                .unwrap()
                .unwrap_commit();
            let rtxn = env.read_txn().unwrap();
            let lengths = |i: usize| -> Vec<usize> {
                dbs[i]
                    .iter(&rtxn)
                    .unwrap()
                    .map(|r| r.unwrap().1.len())
                    .collect()
            };
            (lengths(0), lengths(1))
        };
        assert_eq!(patients, vec![25; 5]);
        assert!(!shr.is_empty() && shr.iter().all(|&l| l == 17), "{shr:?}");
        env.prepare_for_closing().wait();
    }

    let store = Store::open(config(), secrets()).unwrap();
    for (reference, entry) in manifest.as_object().unwrap() {
        let (ty, id) = reference.split_once('/').unwrap();
        let history = store.history(ty, id).unwrap();
        let versions = entry["versions"].as_array().unwrap();
        assert_eq!(history.len(), versions.len(), "{reference}");
        for (r, v) in history.iter().zip(versions) {
            assert_eq!(r.version, v["version"].as_u64().unwrap(), "{reference}");
            assert_eq!(r.canonical, v["canonical"].as_str().unwrap().as_bytes());
            assert_eq!(r.jws, v["jws"].as_str().unwrap());
            store.verify(r).unwrap();
        }
        let provenance: Vec<String> = store
            .provenance_for(reference)
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        let expected: Vec<&str> = entry["provenance"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(provenance, expected, "{reference}");
    }
}
