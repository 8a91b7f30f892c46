//! Crash test: a child process (this test binary, re-executed with an environment
//! variable) writes under load and prints every acknowledged write; the parent kills it
//! with SIGKILL after a random number of acknowledgements, 20 times. After each kill the
//! store is reopened and every acknowledged version must be present, open and verify, and
//! the audit log must be consistent with the checkpoints published before the crash, and
//! AuditEvent searches (filed runs below the watermark + the scanned tail) must find exactly
//! the entries a scan of the whole log finds.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use hexa_actors::store::StoreError;
use hexa_actors::store::search::SearchQuery;
use hexa_crypto::checkpoint::{Checkpoint, NoteVerifier, open_note};
use hexa_crypto::merkle;
use serde_json::json;

const CHILD_ENV: &str = "HEXA_STORE_CRASH_CHILD_DIR";
const ROUNDS: usize = 20;

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    u32::from_le_bytes(b)
}

/// Child: write forever from 4 threads, 8 writes in flight each; print `ACK type id version`
/// only after the write's group commit returned.
fn child(dir: &str) -> ! {
    // A small audit lag and idle run, so AuditEvent terms are filed (forced and at idle
    // time) while the child is killed.
    let mut cfg = config(std::path::Path::new(dir));
    cfg.audit_index_lag = 64;
    cfg.audit_index_idle_run = 16;
    // And a small index journal filed in small chunks, so Observation and Patient postings
    // are filed, over several commits, while it is killed.
    cfg.index_journal_lag = 3000;
    cfg.index_filing_chunk = 500;
    let e = open_with(cfg, 1);
    let c = ctx();
    let mut threads = Vec::new();
    for t in 0..4 {
        let (e, c) = (e.clone(), c.clone());
        threads.push(std::thread::spawn(move || {
            let mut mine: Vec<(String, u64)> = Vec::new();
            let mut n = 0u64;
            loop {
                let mut pend = Vec::new();
                for k in 0..8 {
                    n += 1;
                    let p = if k % 4 == 3 && !mine.is_empty() {
                        let i = (n as usize * 7) % mine.len();
                        let (id, v) = mine[i].clone();
                        let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Upd{t}x{n}")}]});
                        e.update(&c, "Patient", &id, body, Some(v), None).unwrap()
                    } else if k % 2 == 0 {
                        e.create(&c, patient(&format!("Crash{t}x{n}"), "Kid", "2001-01-01", &format!("{t}-{n}")), None, None).unwrap()
                    } else {
                        e.create(&c, observation(&format!("p{t}"), "8867-4", "2024-05-05"), None, None).unwrap()
                    };
                    pend.push(p);
                }
                for p in pend {
                    match p.wait_blocking() {
                        Ok(w) => {
                            let r = &w.record;
                            if r.resource_type == "Patient" {
                                if let Some(slot) = mine.iter_mut().find(|(id, _)| *id == r.id) {
                                    slot.1 = r.version;
                                } else {
                                    mine.push((r.id.clone(), r.version));
                                }
                            }
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "ACK {} {} {}", r.resource_type, r.id, r.version).unwrap();
                            out.flush().unwrap();
                        }
                        Err(StoreError::Conflict { .. }) => {}
                        Err(other) => panic!("child write failed: {other}"),
                    }
                }
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(3)
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: HashMap<(String, String), u64> = HashMap::new();
    let mut last_checkpoint: Option<Checkpoint> = None;
    let mut total_acks = 0usize;
    let mut filed_seen = false;
    for round in 0..ROUNDS {
        let kill_after = 1 + (random_u32() % 400) as usize;
        let mut child = Command::new(&exe)
            .args([
                "acknowledged_writes_survive_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        // Patients acknowledged in this round (their search postings are checked below).
        let mut patients_now: Vec<String> = Vec::new();
        let mut record = |line: &str, acked: &mut HashMap<(String, String), u64>| -> bool {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() == 4 && parts[0] == "ACK" {
                let v: u64 = parts[3].parse().unwrap();
                let e = acked
                    .entry((parts[1].to_string(), parts[2].to_string()))
                    .or_insert(0);
                *e = (*e).max(v);
                if parts[1] == "Patient" {
                    patients_now.push(parts[2].to_string());
                }
                true
            } else {
                false
            }
        };
        for line in lines.by_ref() {
            if record(&line.unwrap(), &mut acked) {
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acknowledgements printed before the kill are still in the pipe.
        for line in lines {
            if record(&line.unwrap(), &mut acked) {
                seen += 1;
            }
        }
        assert!(
            seen >= kill_after.min(1),
            "round {round}: child produced no acknowledgements"
        );
        total_acks += seen;

        // Restart: everything acknowledged is there, opens and verifies.
        let e = open(dir.path());
        for ((ty, id), v) in &acked {
            let r = e
                .store
                .vread(ty, id, *v)
                .unwrap_or_else(|err| panic!("round {round}: {ty}/{id} v{v} lost: {err}"));
            e.store.verify(&r).unwrap();
            let cur = e.store.read(ty, id).unwrap();
            assert!(cur.version >= *v);
            e.store.verify(&cur).unwrap();
        }
        // The audit log is intact and consistent with the previous round's checkpoint.
        let size = e.store.audit_size().unwrap();
        assert!(size as usize >= acked.len());
        if let Some(note) = e.store.latest_checkpoint().unwrap() {
            let v = NoteVerifier::new(e.store.origin(), e.store.node_public().clone());
            let cp = Checkpoint::parse_body(&open_note(&note, &[v]).unwrap().0).unwrap();
            assert_eq!(e.store.audit_root(cp.size).unwrap(), cp.root);
            if let Some(prev) = &last_checkpoint {
                let proof = e.store.audit_consistency_proof(prev.size, cp.size).unwrap();
                merkle::verify_consistency(prev.size, cp.size, &prev.root, &cp.root, &proof)
                    .unwrap();
            }
            last_checkpoint = Some(cp);
        }
        let last = e.store.audit_entry(size - 1).unwrap();
        let proof = e.store.audit_inclusion_proof(size - 1, size).unwrap();
        merkle::verify_inclusion(
            &last.leaf,
            size - 1,
            size,
            &proof,
            &e.store.audit_root(size).unwrap(),
        )
        .unwrap();
        // AuditEvent search is exact over filed runs and the unfiled tail.
        filed_seen |= e.store.audit_unindexed().unwrap() < size;
        for action in ["C", "U"] {
            let mut want = 0;
            for i in 0..size {
                let ev: serde_json::Value =
                    serde_json::from_slice(&e.store.audit_entry(i).unwrap().bytes).unwrap();
                want += usize::from(ev["action"] == action);
            }
            let q = SearchQuery::from_pairs("AuditEvent", &[("action", action)]).unwrap();
            let got = e.store.search(&q).unwrap().total;
            assert_eq!(got, want, "round {round}: AuditEvent action={action}");
        }
        // Observation search (shr.index and the replayed index journal) finds every
        // acknowledged Observation under its subject, and only Observations of that subject.
        let mut found: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for t in 0..4 {
            let subject = format!("Patient/p{t}");
            let mut q = SearchQuery::from_pairs("Observation", &[("subject", &subject)]).unwrap();
            q.count = usize::MAX;
            let page = e.store.search(&q).unwrap();
            assert_eq!(page.total, page.items.len());
            for r in &page.items {
                assert_eq!(r.resource["subject"]["reference"], subject.as_str());
            }
            found.insert(subject, page.items.into_iter().map(|r| r.id).collect());
        }
        for (ty, id) in acked.keys().filter(|(ty, _)| ty == "Observation") {
            let r = e.store.read(ty, id).unwrap();
            let subject = r.resource["subject"]["reference"].as_str().unwrap();
            assert!(
                found[subject].contains(id),
                "round {round}: {ty}/{id} not found by subject={subject}"
            );
        }
        // Patient search (patient.index and the replayed index journal, format 5) finds
        // every Patient acknowledged in this round (all of them in the last) under the
        // family name of its current version, and only Patients whose current version has
        // that name (none under a name an update replaced). Child runs reuse names, so a
        // name may have several Patients.
        let patients: Vec<String> = if round + 1 == ROUNDS {
            acked
                .keys()
                .filter(|(ty, _)| ty == "Patient")
                .map(|(_, id)| id.clone())
                .collect()
        } else {
            patients_now
        };
        for id in &patients {
            let ty = "Patient";
            let r = e.store.read(ty, id).unwrap();
            let family = r.resource["name"][0]["family"].as_str().unwrap();
            let q = SearchQuery::from_pairs("Patient", &[("family:exact", family)]).unwrap();
            let page = e.store.search(&q).unwrap();
            assert!(
                page.items.iter().any(|p| p.id == *id),
                "round {round}: {ty}/{id} not found by family={family}"
            );
            for p in &page.items {
                assert_eq!(p.resource["name"][0]["family"], family, "round {round}");
            }
        }
        close(e);
    }
    assert!(total_acks >= ROUNDS);
    assert!(
        filed_seen,
        "no AuditEvent terms were ever filed before a kill"
    );
    eprintln!(
        "crash test: {ROUNDS} SIGKILLs, {total_acks} acknowledged writes, {} resources verified",
        acked.len()
    );
}
