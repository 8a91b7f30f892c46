//! Deferred audit indexing: AuditEvent searches are exact whether the events are filed in
//! the index, still in the unindexed tail, or rebuilt from the log after a restart.

mod common;

use common::*;
use hexa_actors::store::StoreConfig;
use hexa_actors::store::engine::Engine;
use hexa_actors::store::search::SearchQuery;
use serde_json::json;

/// Sorted ids of the AuditEvents matching `pairs`, and the total.
fn audit_ids(e: &Engine, pairs: &[(&str, &str)]) -> (usize, Vec<String>) {
    let mut q = SearchQuery::from_pairs("AuditEvent", pairs).unwrap();
    q.count = 1000;
    let page = e.store.search(&q).unwrap();
    let mut ids: Vec<String> = page.items.into_iter().map(|r| r.id).collect();
    ids.sort();
    (page.total, ids)
}

/// The searches compared across index states.
const QUERIES: &[&[(&str, &str)]] = &[
    &[("patient", "pa")],
    &[("patient", "Patient/pb")],
    &[("entity", "Patient/pa")],
    &[("entity", "pb")],
    &[("agent", "Practitioner/dr-a")],
    &[("agent", "Practitioner/dr-b"), ("patient", "pb")],
    &[("action", "R")],
    &[("action", "C"), ("patient", "pa")],
    &[("date", "ge2020-01-01"), ("entity", "Patient/pb")],
    &[("outcome", "4")],
];

fn snapshot(e: &Engine) -> Vec<(usize, Vec<String>)> {
    QUERIES.iter().map(|q| audit_ids(e, q)).collect()
}

/// A held tail: idle filing off, lag above what the test writes.
fn held(dir: &std::path::Path) -> StoreConfig {
    let mut c = config(dir);
    c.audit_index_idle_run = 0;
    c.audit_index_lag = 1_000_000;
    c
}

/// Writes two patients and reads them under two practitioners; returns the expected
/// number of AuditEvents per patient ((pa, pb)).
fn activity(e: &Engine) -> (usize, usize) {
    let c = ctx();
    let mut c2 = ctx();
    c2.practitioner = Some("dr-b".into());
    for (id, nid) in [("pa", "1"), ("pb", "2")] {
        let mut p = patient("Uwimana", "Aline", "1990-01-01", nid);
        p["id"] = json!(id);
        e.update(&c, "Patient", id, p, None, None)
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    for _ in 0..3 {
        e.read(&c, "Patient", "pa")
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    for _ in 0..2 {
        e.read(&c2, "Patient", "pb")
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    // A failed read (not found) is audited with outcome 4.
    assert!(
        e.read(&c2, "Patient", "nobody")
            .unwrap()
            .wait_blocking()
            .is_err()
    );
    (4, 3)
}

#[test]
fn audit_search_is_exact_over_the_unindexed_tail_and_after_filing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_with(held(dir.path()), 1);
    let (na, nb) = activity(&e);
    let size = e.store.audit_size().unwrap();
    // Nothing was filed: every event is in the tail.
    assert_eq!(e.store.audit_unindexed().unwrap(), size);
    let tail = snapshot(&e);
    assert_eq!(tail[0].0, na);
    assert_eq!(tail[1].0, nb);
    assert_eq!(tail[2], tail[0]);
    assert_eq!(tail[5].0, 2, "dr-b read pb twice: {tail:?}");
    assert_eq!(tail[9].0, 1);
    // `_id` combined with a clause, over the tail.
    let one = &tail[0].1[0];
    assert_eq!(
        audit_ids(&e, &[("_id", one), ("patient", "pa")]).1,
        vec![one.clone()]
    );
    assert!(
        audit_ids(&e, &[("_id", one), ("patient", "pb")])
            .1
            .is_empty()
    );
    close(e);

    // Restart with the tail still held: the writer rebuilds its keys from the log.
    let e = open_with(held(dir.path()), 1);
    assert_eq!(e.store.audit_unindexed().unwrap(), size);
    assert_eq!(snapshot(&e), tail);
    close(e);

    // Restart with lag 0: the next group commit files the whole tail.
    let mut cfg = held(dir.path());
    cfg.audit_index_lag = 0;
    let e = open_with(cfg, 1);
    e.read(&ctx(), "Patient", "pa")
        .unwrap()
        .wait_blocking()
        .unwrap();
    // Only the read just made is left (it joins the tail after its own commit).
    assert_eq!(e.store.audit_unindexed().unwrap(), 1);
    let after = snapshot(&e);
    assert_eq!(after[0].0, na + 1);
    for (i, (b, a)) in tail.iter().zip(&after).enumerate() {
        if i != 0 && i != 2 && i != 4 && i != 6 {
            assert_eq!(a, b, "query {:?}", QUERIES[i]);
        }
    }
    close(e);
}

#[test]
fn idle_writer_files_the_tail_and_results_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_with(held(dir.path()), 1);
    activity(&e);
    let tail = snapshot(&e);
    assert!(e.store.audit_unindexed().unwrap() > 0);
    close(e);
    // The idle writer files the tail (here from one entry on) whenever nothing is queued.
    let mut cfg = config(dir.path());
    cfg.audit_index_idle_run = 1;
    let e = open_with(cfg, 1);
    let mut filed = false;
    for _ in 0..1000 {
        if e.store.audit_unindexed().unwrap() == 0 {
            filed = true;
            break;
        }
        // Each checkpoint round trip lets the idle writer run a filing commit first.
        let _ = e.checkpoint().unwrap().blocking_recv();
    }
    assert!(filed, "the idle writer never filed the tail");
    assert_eq!(snapshot(&e), tail);
    close(e);
}

#[test]
fn sustained_load_beyond_the_lag_files_inside_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.audit_index_lag = 100;
    let e = open_with(cfg, 1);
    let c = ctx();
    let mut p = patient("Uwimana", "Aline", "1990-01-01", "9");
    p["id"] = json!("pa");
    e.update(&c, "Patient", "pa", p, None, None)
        .unwrap()
        .wait_blocking()
        .unwrap();
    for _ in 0..400 {
        e.read(&c, "Patient", "pa")
            .unwrap()
            .wait_blocking()
            .unwrap();
    }
    let size = e.store.audit_size().unwrap();
    let tail = e.store.audit_unindexed().unwrap();
    assert!(tail <= 100 + 1, "tail {tail} beyond the lag");
    assert!(tail < size);
    assert_eq!(audit_ids(&e, &[("patient", "pa")]).0, 401);
    assert_eq!(audit_ids(&e, &[("patient", "pa"), ("action", "R")]).0, 400);
    close(e);
}

#[test]
fn a_format_1_store_is_read_as_fully_filed_and_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = held(dir.path());
    cfg.audit_index_lag = 0;
    let e = open_with(cfg, 1);
    activity(&e);
    // This read's group commit files everything logged before it; it stays in the tail.
    e.read(&ctx(), "Patient", "pb")
        .unwrap()
        .wait_blocking()
        .unwrap();
    assert_eq!(e.store.audit_unindexed().unwrap(), 1);
    let size = e.store.audit_size().unwrap();
    let before = snapshot(&e);
    close(e);
    // Format 1 filed every entry inline and had no watermark.
    edit_meta(dir.path(), |w, meta| {
        meta.delete(w, b"audit-indexed").unwrap();
        meta.put(w, b"format", &1u32.to_be_bytes()).unwrap();
    });
    let e = open_with(held(dir.path()), 1);
    // No watermark: every entry counts as filed, none is scanned (so the last read, which
    // format 1 would have filed inline, is missing from pb's results here, and only there).
    assert_eq!(e.store.audit_unindexed().unwrap(), 0);
    assert_eq!(e.store.audit_size().unwrap(), size);
    let after = snapshot(&e);
    assert_eq!(after[0], before[0]);
    assert_eq!(after[9], before[9]);
    assert_eq!(after[1].0, before[1].0 - 1);
    close(e);
    // The open marked the directory as the current format.
    edit_meta(dir.path(), |w, meta| {
        let v = meta.get(w, b"format").unwrap().unwrap().to_vec();
        assert_eq!(v, hexa_actors::store::format::FORMAT_VERSION.to_be_bytes());
    });
}

/// Format 4 filed Patient postings in the commit that made them and journaled only the
/// shared health record's. Opening such a directory marks it 5 (and 6, see
/// `store_format_upgrade.rs`); what it holds stays
/// searchable and matchable, and new Patients go through the journal.
#[test]
fn a_format_4_store_is_upgraded_to_5() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx();
    let matched = |e: &Engine, nid: &str| -> Vec<String> {
        let q = json!({"resourceType": "Patient",
                       "identifier": [{"system": "urn:rw:nid", "value": nid}]});
        let found = e.store.match_patients(&q, 0.9, 10).unwrap();
        found.into_iter().map(|m| m.record.id).collect()
    };
    // As format 4 left it: the Patient's postings in `patient.index`, the Observation's in
    // the journal.
    let mut cfg = config(dir.path());
    cfg.index_journal_lag = 0;
    let e = open_with(cfg, 1);
    let old = created_id(&e, &c, patient("Ingabire", "Aline", "1990-01-01", "41"));
    close(e);
    let mut cfg = config(dir.path());
    cfg.index_journal_lag = 1_000_000;
    let e = open_with(cfg, 1);
    let obs = created_id(&e, &c, observation(&old, "8867-4", "2024-05-05"));
    close(e);
    edit_meta(dir.path(), |w, meta| {
        meta.put(w, b"format", &4u32.to_be_bytes()).unwrap();
    });
    let mut cfg = config(dir.path());
    cfg.index_journal_lag = 1_000_000;
    let e = open_with(cfg, 1);
    assert_eq!(
        ids(&e, "Patient", &[("family", "Ingabire")]),
        std::slice::from_ref(&old)
    );
    assert_eq!(matched(&e, "41"), std::slice::from_ref(&old));
    let subject = format!("Patient/{old}");
    assert_eq!(ids(&e, "Observation", &[("subject", &subject)]), [obs]);
    let new = created_id(&e, &c, patient("Ingabire", "Grace", "1992-02-02", "42"));
    let mut both = vec![old, new.clone()];
    both.sort();
    assert_eq!(ids(&e, "Patient", &[("family", "Ingabire")]), both);
    assert_eq!(matched(&e, "42"), [new]);
    close(e);
    edit_meta(dir.path(), |w, meta| {
        let v = meta.get(w, b"format").unwrap().unwrap().to_vec();
        assert_eq!(v, hexa_actors::store::format::FORMAT_VERSION.to_be_bytes());
    });
}

#[test]
fn an_idle_writer_leaves_a_tail_shorter_than_the_idle_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.audit_index_idle_run = 1000;
    let e = open_with(cfg, 1);
    activity(&e);
    // A checkpoint round trip gives the writer idle moments; nothing is filed, as fewer
    // events than one run wait (no run of a handful of entries, no extra commit per read).
    let _ = e.checkpoint().unwrap().blocking_recv();
    let size = e.store.audit_size().unwrap();
    assert_eq!(e.store.audit_unindexed().unwrap(), size);
    let idle_commits = e
        .writer
        .stats()
        .index_commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(idle_commits, 0);
    close(e);
}
