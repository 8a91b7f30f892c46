//! Store tests against real LMDB in temp dirs: versioning, history, conflicts, deletes,
//! transactions, restart, map growth, sealing, signatures, backup/restore, format refusal.

mod common;

use common::*;
use hexa_actors::store::engine::TxEntry;
use hexa_actors::store::search::SearchQuery;
use hexa_actors::store::{Store, StoreError};
use serde_json::json;

#[test]
fn versions_history_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let w = e
        .create(
            &c,
            patient("Uwimana", "Aline", "1990-05-17", "1"),
            None,
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(w.created);
    let id = w.record.id.clone();
    assert_eq!(w.record.version, 1);
    assert_eq!(w.record.resource["meta"]["versionId"], "1");
    assert!(
        w.record.resource["meta"]["lastUpdated"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );

    let mut body = w.record.resource.clone();
    body["gender"] = json!("other");
    let w2 = e
        .update(&c, "Patient", &id, body.clone(), Some(1), None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(w2.record.version, 2);
    assert!(!w2.created);

    // Stale If-Match is a conflict and writes nothing.
    let err = e
        .update(&c, "Patient", &id, body.clone(), Some(1), None)
        .unwrap()
        .wait_blocking()
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 1,
                current: 2,
                ..
            }
        ),
        "{err:?}"
    );

    let cur = e.read(&c, "Patient", &id).unwrap().wait_blocking().unwrap();
    assert_eq!(cur.version, 2);
    assert_eq!(cur.resource["gender"], "other");
    let v1 = e
        .vread(&c, "Patient", &id, 1)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(v1.resource["gender"], "female");
    assert!(matches!(
        e.vread(&c, "Patient", &id, 9).unwrap().wait_blocking(),
        Err(StoreError::VersionNotFound { version: 9, .. })
    ));

    // Delete is a version; history keeps everything.
    let d = e
        .delete(&c, "Patient", &id)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(d.record.version, 3);
    assert!(d.record.deleted);
    assert!(matches!(
        e.read(&c, "Patient", &id).unwrap().wait_blocking(),
        Err(StoreError::Gone { version: 3, .. })
    ));
    let again = e
        .delete(&c, "Patient", &id)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(again.record.version, 3);
    let h = e
        .history(&c, "Patient", &id)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(
        h.iter().map(|r| r.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    // Every stored version's signature verifies, over the exact stored bytes.
    for r in &h {
        e.store.verify(r).unwrap();
        assert_eq!(
            hexa_crypto::jcs::canonicalize(&r.resource).unwrap(),
            r.canonical
        );
    }
    // A modified copy does not verify.
    let mut forged = h[1].clone();
    forged.canonical = forged.canonical.replace_bytes("other", "male_");
    assert!(matches!(
        e.store.verify(&forged),
        Err(StoreError::BadSignature(_))
    ));

    // Update of a deleted resource revives it as version 4; update-as-create with client id.
    let w4 = e
        .update(&c, "Patient", &id, body, None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(w4.record.version, 4);
    let wc = e
        .update(
            &c,
            "Patient",
            "client-id-1",
            patient("A", "B", "2000", "2"),
            Some(0),
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert!(wc.created);
    assert_eq!(wc.record.id, "client-id-1");

    // Bad input is a typed error.
    assert!(matches!(
        e.create(&c, json!({"resourceType": "Spaceship"}), None, None)
            .unwrap()
            .wait_blocking(),
        Err(StoreError::UnknownResourceType(_))
    ));
    assert!(matches!(
        e.update(
            &c,
            "Patient",
            "x",
            json!({"resourceType": "Observation"}),
            None,
            None
        )
        .unwrap()
        .wait_blocking(),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        e.create(&c, json!({"resourceType": "AuditEvent"}), None, None)
            .unwrap()
            .wait_blocking(),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        e.read(&c, "Patient", "nope").unwrap().wait_blocking(),
        Err(StoreError::NotFound { .. })
    ));
}

trait ReplaceBytes {
    fn replace_bytes(&self, from: &str, to: &str) -> Vec<u8>;
}
impl ReplaceBytes for Vec<u8> {
    fn replace_bytes(&self, from: &str, to: &str) -> Vec<u8> {
        String::from_utf8(self.clone())
            .unwrap()
            .replace(from, to)
            .into_bytes()
    }
}

#[test]
fn provenance_for_every_version() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let w = e
        .create(
            &c,
            patient("Habimana", "Eric", "1980", "5"),
            Some("hdr..sig".into()),
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
    let id = w.record.id;
    e.update(
        &c,
        "Patient",
        &id,
        patient("Habimana", "Erik", "1980", "5"),
        Some(1),
        None,
    )
    .unwrap()
    .wait_blocking()
    .unwrap();
    let provs = e.store.provenance_for(&format!("Patient/{id}")).unwrap();
    assert_eq!(provs.len(), 2);
    let hist = e.store.history("Patient", &id).unwrap();
    for p in &provs {
        let target = p.resource["target"][0]["reference"].as_str().unwrap();
        let rec = hist
            .iter()
            .find(|r| r.versioned_reference() == target)
            .unwrap();
        let sig = &p.resource["signature"][0];
        assert_eq!(sig["sigFormat"], "application/jose");
        assert_eq!(sig["type"][0]["code"], "1.2.840.10065.1.12.1.1");
        use base64::Engine as _;
        let jws = base64::engine::general_purpose::STANDARD
            .decode(sig["data"].as_str().unwrap())
            .unwrap();
        let jws = String::from_utf8(jws).unwrap();
        hexa_crypto::jws::verify_detached(&jws, &rec.canonical, e.store.node_public()).unwrap();
        // Read by id.
        let again = e
            .read(&c, "Provenance", &p.id)
            .unwrap()
            .wait_blocking()
            .unwrap();
        assert_eq!(again.resource, p.resource);
    }
    // Author signature and agent on version 1.
    let v1 = provs
        .iter()
        .find(|p| {
            p.resource["target"][0]["reference"]
                .as_str()
                .unwrap()
                .ends_with("/1")
        })
        .unwrap();
    assert_eq!(v1.resource["signature"].as_array().unwrap().len(), 2);
    assert_eq!(
        v1.resource["agent"][1]["who"]["reference"],
        "Practitioner/dr-a"
    );
    let q = SearchQuery::from_pairs(
        "Provenance",
        &[("target", &format!("Patient/{id}/_history/2"))],
    )
    .unwrap();
    let page = e.search(&c, &q).unwrap().wait_blocking().unwrap();
    assert_eq!(page.total, 1);
}

#[test]
fn transactions_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let existing = e
        .create(&c, patient("Keza", "Ange", "2001", "7"), None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    let before = e.store.audit_size().unwrap();

    // One stale entry: nothing is written.
    let bad = vec![
        TxEntry::Create {
            resource: patient("New", "One", "2010", "8"),
            full_url: Some("urn:uuid:a".into()),
        },
        TxEntry::Create {
            resource: observation("ignored", "8867-4", "2024-01-01"),
            full_url: None,
        },
        TxEntry::Update {
            resource: {
                let mut r = existing.record.resource.clone();
                r["gender"] = json!("male");
                r
            },
            if_match: Some(5),
        },
    ];
    let err = e.transaction(&c, bad).unwrap().wait_blocking().unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    let q = SearchQuery::from_pairs("Patient", &[("family", "new")]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 0);
    assert_eq!(
        e.store
            .search(&SearchQuery::from_pairs("Observation", &[]).unwrap())
            .unwrap()
            .total,
        0
    );
    assert_eq!(
        e.store
            .read("Patient", &existing.record.id)
            .unwrap()
            .version,
        1
    );
    // The failure itself is audited.
    assert_eq!(e.store.audit_size().unwrap(), before + 1);
    let ev: serde_json::Value =
        serde_json::from_slice(&e.store.audit_entry(before).unwrap().bytes).unwrap();
    assert_eq!(ev["outcome"], "4");

    // A good transaction: references to fullUrls are rewritten, all entries commit.
    let mut obs = observation("x", "8867-4", "2024-01-02");
    obs["subject"] = json!({"reference": "urn:uuid:p"});
    let good = vec![
        TxEntry::Create {
            resource: patient("Mugisha", "Yves", "1995-02-03", "9"),
            full_url: Some("urn:uuid:p".into()),
        },
        TxEntry::Create {
            resource: obs,
            full_url: None,
        },
        TxEntry::Delete {
            resource_type: "Patient".into(),
            id: existing.record.id.clone(),
        },
    ];
    let res = e.transaction(&c, good).unwrap().wait_blocking().unwrap();
    assert_eq!(res.len(), 3);
    let pid = &res[0].record.id;
    assert_eq!(
        res[1].record.resource["subject"]["reference"],
        format!("Patient/{pid}")
    );
    assert!(res[2].record.deleted);
    // The entries are signed in one batch: each signature is its own version's, as
    // returned and as stored.
    for w in &res {
        e.store.verify(&w.record).unwrap();
        let stored = e
            .store
            .vread(&w.record.resource_type, &w.record.id, w.record.version)
            .unwrap();
        assert_eq!(stored.jws, w.record.jws);
        e.store.verify(&stored).unwrap();
    }
    let q = SearchQuery::from_pairs("Observation", &[("patient", pid)]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 1);

    // The same resource twice in one transaction is rejected.
    let dup = vec![
        TxEntry::Update {
            resource: json!({"resourceType": "Patient", "id": "dup"}),
            if_match: None,
        },
        TxEntry::Update {
            resource: json!({"resourceType": "Patient", "id": "dup"}),
            if_match: None,
        },
    ];
    assert!(matches!(
        e.transaction(&c, dup).unwrap().wait_blocking(),
        Err(StoreError::Invalid(_))
    ));
    assert!(e.store.read("Patient", "dup").is_err());
}

#[test]
fn restart_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx();
    let (id, size) = {
        let e = open(dir.path());
        let w = e
            .create(&c, patient("Ineza", "Grace", "1999", "11"), None, None)
            .unwrap()
            .wait_blocking()
            .unwrap();
        e.update(
            &c,
            "Patient",
            &w.record.id,
            patient("Ineza", "Gracie", "1999", "11"),
            Some(1),
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
        let size = e.store.audit_size().unwrap();
        close(e);
        (w.record.id, size)
    };
    let e = open(dir.path());
    let r = e.read(&c, "Patient", &id).unwrap().wait_blocking().unwrap();
    assert_eq!(r.version, 2);
    e.store.verify(&r).unwrap();
    // The log continues where it stopped and stays consistent with the old root.
    let new_size = e.store.audit_size().unwrap();
    assert_eq!(new_size, size + 1);
    let old_root = e.store.audit_root(size).unwrap();
    let new_root = e.store.audit_root(new_size).unwrap();
    let proof = e.store.audit_consistency_proof(size, new_size).unwrap();
    hexa_crypto::merkle::verify_consistency(size, new_size, &old_root, &new_root, &proof).unwrap();
    // Index still answers.
    let q = SearchQuery::from_pairs("Patient", &[("given", "gracie")]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 1);
    // A different master key is refused.
    close(e);
    let err = Store::open(config(dir.path()), secrets(9)).unwrap_err();
    assert!(matches!(err, StoreError::Crypto(_)), "{err:?}");
}

#[test]
fn map_grows_past_a_tiny_initial_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.initial_map_size = 256 << 10; // 256 KiB
    let e = open_with(cfg, 1);
    let start = e.store.map_size();
    let c = ctx();
    let mut pend = Vec::new();
    for i in 0..1500 {
        pend.push(
            e.create(
                &c,
                patient(&format!("Family{i}"), "Given", "1990-01-01", &i.to_string()),
                None,
                None,
            )
            .unwrap(),
        );
    }
    let ids: Vec<String> = pend
        .into_iter()
        .map(|p| p.wait_blocking().unwrap().record.id)
        .collect();
    assert!(
        e.store.map_size() > start * 4,
        "map {} -> {}",
        start,
        e.store.map_size()
    );
    for id in ids.iter().step_by(97) {
        e.store.read("Patient", id).unwrap();
    }
    let q = SearchQuery::from_pairs("Patient", &[("family", "family1499")]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 1);
}

#[test]
fn values_are_sealed_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx();
    {
        let e = open(dir.path());
        e.create(
            &c,
            patient("Nyiramahoro", "Zawadi", "1977-07-07", "NID-SECRET-424242"),
            None,
            None,
        )
        .unwrap()
        .wait_blocking()
        .unwrap();
        let q = SearchQuery::from_pairs("Patient", &[("family", "nyiramahoro")]).unwrap();
        assert_eq!(e.search(&c, &q).unwrap().wait_blocking().unwrap().total, 1);
    }
    let raw = std::fs::read(dir.path().join("store").join("data.mdb")).unwrap();
    for needle in [
        "Nyiramahoro",
        "nyiramahoro",
        "Zawadi",
        "NID-SECRET-424242",
        "1977-07-07",
        "Gasabo",
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "plaintext {needle} found in data.mdb"
        );
    }
}

#[test]
fn backup_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let bak = tempfile::tempdir().unwrap();
    let c = ctx();
    let e = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            e.create(
                &c,
                patient("Backup", &format!("P{i}"), "1990", &i.to_string()),
                None,
                None,
            )
            .unwrap()
            .wait_blocking()
            .unwrap()
            .record
            .id,
        );
    }
    let path = e.store.backup_to(bak.path()).unwrap();
    assert!(path.exists());
    // Writes after the backup are not in it.
    let later = e
        .create(&c, patient("Later", "X", "1990", "x"), None, None)
        .unwrap()
        .wait_blocking()
        .unwrap()
        .record
        .id;
    let size = e.store.audit_size().unwrap();
    close(e);
    let restored = open(bak.path());
    for id in &ids {
        let r = restored.store.read("Patient", id).unwrap();
        restored.store.verify(&r).unwrap();
    }
    assert!(restored.store.read("Patient", &later).is_err());
    assert!(restored.store.audit_size().unwrap() < size);
    let q = SearchQuery::from_pairs("Patient", &[("family", "backup")]).unwrap();
    assert_eq!(restored.store.search(&q).unwrap().total, 50);
}

#[test]
fn newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    close(open(dir.path()));
    // Bump meta.format with raw heed, as a future version of hexa would.
    edit_meta(dir.path(), |w, meta| {
        meta.put(w, b"format", &99u32.to_be_bytes()).unwrap();
    });
    let err = Store::open(config(dir.path()), secrets(1)).unwrap_err();
    assert_eq!(
        err,
        StoreError::UnsupportedFormat {
            found: 99,
            supported: hexa_actors::store::format::FORMAT_VERSION
        }
    );
    assert!(err.to_string().contains("upgrade hexa"));
}

#[test]
fn group_commit_shares_commits_and_isolates_failing_members() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let base = e
        .create(&c, patient("Group", "Base", "1990", "g0"), None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    let commits_before = e.writer.stats().commits.load(Relaxed);
    // Queue many members before waiting for any: they share group commits. A stale
    // update in the middle is rejected alone.
    let mut pend = Vec::new();
    for i in 0..300 {
        pend.push(Ok(e
            .create(
                &c,
                observation("g", &format!("c{i}"), "2024-01-01"),
                None,
                None,
            )
            .unwrap()));
        if i == 150 {
            pend.push(Err(e
                .update(
                    &c,
                    "Patient",
                    &base.record.id,
                    patient("Group", "Stale", "1990", "g0"),
                    Some(1),
                    None,
                )
                .unwrap()));
            pend.push(Err(e
                .update(
                    &c,
                    "Patient",
                    &base.record.id,
                    patient("Group", "Stale2", "1990", "g0"),
                    Some(1),
                    None,
                )
                .unwrap()));
        }
    }
    let mut conflicts = 0;
    let mut ok = 0;
    for p in pend {
        match p {
            Ok(p) => {
                p.wait_blocking().unwrap();
                ok += 1;
            }
            Err(p) => match p.wait_blocking() {
                Ok(w) => assert_eq!(w.record.version, 2),
                Err(StoreError::Conflict {
                    expected: 1,
                    current: 2,
                    ..
                }) => conflicts += 1,
                Err(other) => panic!("unexpected {other}"),
            },
        }
    }
    assert_eq!(ok, 300);
    // Both updates expected version 1: exactly one wins, the other alone is rejected.
    assert_eq!(conflicts, 1);
    let commits = e.writer.stats().commits.load(Relaxed) - commits_before;
    assert!(
        commits < 300,
        "{commits} commits for 302 members: no group commit"
    );
    assert_eq!(e.store.read("Patient", &base.record.id).unwrap().version, 2);
    let q = SearchQuery::from_pairs("Observation", &[("patient", "g")]).unwrap();
    assert_eq!(e.store.search(&q).unwrap().total, 300);
}

#[test]
fn writer_thread_runs_at_its_configured_nice() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // A lower priority than the default: every process may ask for that.
    cfg.writer_nice = 7;
    let e = open_with(cfg, 1);
    let t0 = std::time::Instant::now();
    while e.writer.stats().nice.load(Relaxed) == i32::MIN {
        assert!(
            t0.elapsed().as_secs() < 10,
            "writer never reported its nice value"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(e.writer.stats().nice.load(Relaxed), 7);
    // The kernel agrees: a thread named after the writer (comm is cut at 15 bytes) has nice
    // 7 (field 19 of /proc/<tid>/stat; other tests' writers run at their own values).
    let nices: Vec<i64> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            if comm.trim_end() != "hexa-store-writ" {
                return None;
            }
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect();
    assert!(nices.contains(&7), "writer threads' nice values: {nices:?}");
    close(e);
}

#[test]
fn a_written_record_equals_its_later_read() {
    // The writer builds the returned record's resource without parsing the canonical bytes
    // (`jcs::reparsed_in_place`); it must be exactly what a read parses: member order,
    // integral doubles as integers, unsafe integers as the doubles JCS writes.
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let c = ctx();
    let obs = serde_json::from_str::<serde_json::Value>(
        r#"{"status":"final","resourceType":"Observation",
            "valueQuantity":{"value":100.0,"unit":"/min","comparator":"<"},
            "subject":{"reference":"Patient/p1"},
            "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
            "component":[{"valueInteger":9007199254740993,"code":{"text":"b"}},{"valueQuantity":{"value":-0.0}}]}"#,
    )
    .unwrap();
    let w = e
        .create(&c, obs, None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    let read = e
        .read(&c, "Observation", &w.record.id)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(w.record, read);
    assert_eq!(
        serde_json::to_string(&w.record.resource).unwrap(),
        serde_json::to_string(&read.resource).unwrap()
    );
    assert_eq!(
        w.record.resource["valueQuantity"]["value"].as_u64(),
        Some(100)
    );
    close(e);
}
