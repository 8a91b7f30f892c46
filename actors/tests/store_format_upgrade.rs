//! Format 6 keys versions by stamp; a directory that format 5 wrote (by the build before
//! it, `tests/fixtures/format5`) is rewritten on open, and reads back exactly what that
//! build read from it.

mod common;

use common::*;
use hexa_actors::store::format::{self, FORMAT_VERSION};
use serde_json::{Value, json};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format5");

/// A copy of the format-5 directory, and what the build that wrote it read back.
fn fixture() -> (tempfile::TempDir, serde_json::Map<String, Value>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    std::fs::copy(
        format!("{FIXTURE}/store/data.mdb"),
        dir.path().join("store/data.mdb"),
    )
    .unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(format!("{FIXTURE}/manifest.json")).unwrap())
            .unwrap();
    (dir, manifest.as_object().unwrap().clone())
}

/// Each named database's keys.
type Keys = Vec<(String, Vec<Vec<u8>>)>;

/// Every key of the named databases, and `meta.format`, read with raw heed.
fn raw(dir: &std::path::Path, names: [&str; 4]) -> (u32, Keys) {
    let env = raw_env(dir, 1 << 30);
    let all = ["meta", names[0], names[1], names[2], names[3]];
    let dbs = raw_dbs(&env, all);
    let rtxn = env.read_txn().unwrap();
    let open = |n: &str| dbs[all.iter().position(|x| *x == n).unwrap()];
    let format = u32::from_be_bytes(
        open("meta")
            .get(&rtxn, b"format")
            .unwrap()
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let keys = names
        .iter()
        .map(|n| {
            let keys = open(n)
                .iter(&rtxn)
                .unwrap()
                .map(|r| r.unwrap().0.to_vec())
                .collect();
            (n.to_string(), keys)
        })
        .collect();
    drop(rtxn);
    env.prepare_for_closing().wait();
    (format, keys)
}

/// What `manifest` recorded of one resource, as (version, deleted, last_updated,
/// canonical, jws) newest first, and its Provenances as (id, canonical).
#[allow(clippy::type_complexity)]
fn expected(entry: &Value) -> (Vec<(u64, bool, u64, String, String)>, Vec<(String, String)>) {
    let versions = entry["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["deleted"].as_bool().unwrap(),
                v["last_updated"].as_u64().unwrap(),
                v["canonical"].as_str().unwrap().to_string(),
                v["jws"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let provs = entry["provenance"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["canonical"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (versions, provs)
}

/// Checks that every resource of the manifest reads back as the format-5 build read it:
/// its history, each version by number, its current version (or its deletion), and its
/// Provenances (by target and by id); and that the appliance's signature verifies.
fn reads_as_manifest(
    e: &hexa_actors::store::engine::Engine,
    manifest: &serde_json::Map<String, Value>,
) {
    for (reference, entry) in manifest {
        let (ty, id) = reference.split_once('/').unwrap();
        let (versions, provs) = expected(entry);
        let history = e.store.history(ty, id).unwrap();
        let got: Vec<_> = history
            .iter()
            .map(|r| {
                (
                    r.version,
                    r.deleted,
                    r.last_updated,
                    String::from_utf8(r.canonical.clone()).unwrap(),
                    r.jws.clone(),
                )
            })
            .collect();
        assert_eq!(got, versions, "{reference}");
        for r in &history {
            e.store.verify(r).unwrap();
            assert_eq!(e.store.vread(ty, id, r.version).unwrap(), *r, "{reference}");
        }
        match e.store.read(ty, id) {
            Ok(r) => assert_eq!(r, history[0], "{reference}"),
            Err(hexa_actors::store::StoreError::Gone { version, .. }) => {
                assert!(history[0].deleted);
                assert_eq!(version, history[0].version);
            }
            Err(err) => panic!("{reference}: {err}"),
        }
        let got: Vec<_> = e
            .store
            .provenance_for(reference)
            .unwrap()
            .into_iter()
            .map(|p| (p.id, String::from_utf8(p.canonical).unwrap()))
            .collect();
        assert_eq!(got, provs, "{reference}");
        for (pid, canonical) in &provs {
            let p = e.store.read("Provenance", pid).unwrap();
            assert_eq!(String::from_utf8(p.canonical).unwrap(), *canonical);
        }
    }
}

#[test]
fn a_format_5_directory_is_rewritten_and_reads_back_what_format_5_read() {
    let (dir, manifest) = fixture();
    const VERSIONED: [&str; 4] = [
        "patient.versions",
        "shr.versions",
        "facility.versions",
        "audit.provenance",
    ];
    let (found, before) = raw(dir.path(), VERSIONED);
    assert_eq!(found, 5);
    for (name, keys) in &before {
        assert!(
            keys.iter().all(|k| format::parse_stamp_key(k).is_none()),
            "{name} holds format-5 keys only"
        );
    }
    assert!(manifest.len() >= 15);

    // A full map: the rewrite has to grow it.
    fill_map(dir.path());
    let mut cfg = config(dir.path());
    cfg.initial_map_size = 64 << 10;
    let e = open_with(cfg, 1);
    reads_as_manifest(&e, &manifest);

    // What the fixture holds stays searchable.
    let patients: Vec<&str> = manifest
        .keys()
        .filter_map(|k| k.strip_prefix("Patient/"))
        .collect();
    let deleted = |reference: &str| manifest[reference]["versions"][0]["deleted"] == true;
    let mut live: Vec<String> = patients
        .iter()
        .filter(|p| !deleted(&format!("Patient/{p}")))
        .map(|p| p.to_string())
        .collect();
    live.sort();
    // Given names start with "Aline" in the four live Patients (one of them is "Aline1").
    assert_eq!(ids(&e, "Patient", &[("given", "Aline")]), live);
    let mut by_family: Vec<String> = (0..5)
        .flat_map(|i| ids(&e, "Patient", &[("family", &format!("Uwimana{i}"))]))
        .collect();
    by_family.sort();
    assert_eq!(by_family, live);

    // A rewritten resource takes new versions after its old ones.
    let three = patients
        .iter()
        .find(|p| {
            manifest[&format!("Patient/{p}")]["versions"]
                .as_array()
                .unwrap()
                .len()
                == 3
        })
        .unwrap()
        .to_string();
    let mut p = patient("Uwimana0", "Alice", "1990-02-03", "119800");
    p["id"] = json!(three);
    let w = e
        .update(&ctx(), "Patient", &three, p, Some(3), None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(w.record.version, 4);
    let history = e.store.history("Patient", &three).unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[0].resource["name"][0]["given"][0], "Alice");
    assert_eq!(
        e.store
            .provenance_for(&format!("Patient/{three}"))
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        ids(&e, "Patient", &[("given", "Alice")]),
        std::slice::from_ref(&three)
    );
    close(e);

    // Marked as format 6; no key is left the format-5 way.
    let (format_now, dbs) = raw(dir.path(), VERSIONED);
    assert_eq!(format_now, FORMAT_VERSION);
    for (name, keys) in &dbs {
        assert!(!keys.is_empty(), "{name}");
        for k in keys {
            assert!(
                format::parse_stamp_key(k).is_some(),
                "{name}: {}",
                format::printable_key(k)
            );
        }
    }

    // A second open rewrites nothing and reads the same.
    let e = open(dir.path());
    let mut manifest = manifest;
    manifest.remove(&format!("Patient/{three}"));
    reads_as_manifest(&e, &manifest);
    close(e);
}

/// Fills the directory's map (no larger than the pages in use) with a database of
/// scratch values, one per transaction until it is full.
fn fill_map(dir: &std::path::Path) {
    let env = raw_env(dir, 4096);
    let [scratch] = raw_dbs(&env, ["scratch"]);
    let mut filled = 0u32;
    loop {
        let mut wtxn = env.write_txn().unwrap();
        let put = scratch.put(&mut wtxn, &filled.to_be_bytes(), &[7u8; 1500]);
        match put.and_then(|()| wtxn.commit()) {
            Ok(()) => filled += 1,
            Err(heed::Error::Mdb(heed::MdbError::MapFull)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    env.prepare_for_closing().wait();
}

/// Sets `meta.format` and the `upgrading` note with raw heed.
fn mark(dir: &std::path::Path, format: u32, upgrading: bool) {
    edit_meta(dir, |w, meta| {
        meta.put(w, b"format", &format.to_be_bytes()).unwrap();
        if upgrading {
            meta.put(w, b"upgrading", &5u32.to_be_bytes()).unwrap();
        } else {
            meta.delete(w, b"upgrading").unwrap();
        }
    });
}

/// The directory is marked 6 before its rewrite, with a note that the rewrite is under
/// way: an older binary refuses it from the start, and a rewrite interrupted after the
/// mark (here: before its first batch) resumes at the next open.
#[test]
fn an_upgrade_interrupted_after_its_mark_resumes_at_the_next_open() {
    let (dir, manifest) = fixture();
    mark(dir.path(), FORMAT_VERSION, true);
    let e = open(dir.path());
    reads_as_manifest(&e, &manifest);
    close(e);
    let (format_now, dbs) = raw(
        dir.path(),
        [
            "patient.versions",
            "shr.versions",
            "facility.versions",
            "audit.provenance",
        ],
    );
    assert_eq!(format_now, FORMAT_VERSION);
    assert!(
        dbs.iter()
            .all(|(_, keys)| keys.iter().all(|k| format::parse_stamp_key(k).is_some()))
    );

    // Without the note, a directory marked 6 is not rewritten: its format-5 pointers are
    // corruption, reported as such.
    let (dir, manifest) = fixture();
    mark(dir.path(), FORMAT_VERSION, false);
    let e = open(dir.path());
    let (reference, _) = manifest.iter().next().unwrap();
    let (ty, id) = reference.split_once('/').unwrap();
    assert!(matches!(
        e.store.read(ty, id),
        Err(hexa_actors::store::StoreError::Corrupt { .. })
    ));
    close(e);
}
