//! The CPU budget of one durable Observation create: the cryptographic and encoding work
//! the issue and the brief require of every create, measured one primitive at a time on one
//! thread, on the exact bytes the store wrote for a real create.
//!
//! The store creates one `hexa_benches::observation` through its actors in a temporary
//! directory, then reads back what it stored: the record's canonical bytes and JWS, its
//! Provenance and the AuditEvent of the write. Each case then repeats one piece of the work
//! a create must do on those bytes:
//!
//! - `sign_record`: the appliance's detached JWS over the record's RFC 8785 bytes (Ed25519
//!   over `b64url(header).b64url(payload)`, so the payload is base64url-encoded and hashed
//!   twice by SHA-512);
//! - `canonicalize_{record,audit_event}`: RFC 8785 of each document;
//! - `compress_audit_event`: the AuditEvent's LZ4 block against the log's dictionary
//!   (format 3 stores it so);
//! - `seal_{version,provenance,audit_event}`: XChaCha20-Poly1305 of each stored value (the
//!   version's postcard envelope is the canonical bytes plus the JWS and about 60 bytes;
//!   the Provenance is stored as what its version does not hold, `StoredProvenance`, about
//!   70 bytes; the AuditEvent compressed);
//! - `canonicalize_provenance`: RFC 8785 of the whole Provenance. Since format 3 a create
//!   no longer does this (a read composes the Provenance), so it is not in `all_required`;
//! - `blind_terms`: one HMAC-SHA256 blind index per search term of the record (its search
//!   parameters and `_source`) and of its AuditEvent, as the store files them;
//! - `merkle_leaf`: the AuditEvent's leaf hash and its append to a Merkle frontier;
//! - `ids`: the three UUIDv7 ids a create draws (resource, Provenance, AuditEvent);
//! - `all_required`: all of the above in sequence, the whole required CPU of one create;
//! - `store_prepare_create`: what the store's registry thread does for a create (the same
//!   work through the store's own code: policy, JSON, index extraction, the AuditEvent and
//!   Provenance composed), without the writer. Its excess over `all_required` is the
//!   store's preparation overhead.
//!
//! Nothing here touches LMDB: the durable commit's page writes and `fdatasync`s, and
//! everything the store does around the primitives (JSON, actors, policy, B-trees), come on
//! top. When the group ends, the bench prints `all_required` against the creates/s two
//! cores could reach if that were all. `HEXA_BUDGET_DUMP=1` also prints the three stored
//! documents.
//!
//! ```sh
//! cargo bench -p hexa-benches --bench budget -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use hexa_actors::handle::StoreHandle;
use hexa_actors::store::compress::pack_audit;
use hexa_actors::store::format::{FORMAT_VERSION, StoredProvenance};
use hexa_actors::store::{StoreConfig, new_id, params};
use hexa_benches::observation;
use hexa_crypto::jcs;
use hexa_crypto::jws;
use hexa_crypto::merkle::{self, Frontier};
use hexa_crypto::seal::{Aad, SealKey};
use serde_json::Value;

mod common;
use common::{ctx, secrets};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the store wrote for one create.
struct Written {
    record: Value,
    canonical: Vec<u8>,
    jws: String,
    provenance: Value,
    provenance_bytes: Vec<u8>,
    audit_event: Value,
    audit_bytes: Vec<u8>,
    /// (field, term) of every blind index the create files: the record's and its event's.
    terms: Vec<(String, String)>,
}

/// Creates one Observation in a fresh store and reads back what the store wrote; also
/// returns the store, for the preparation case.
fn written() -> (Written, Fixture) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = actix_rt::System::new();
    let cfg = StoreConfig::new(dir.path(), "bench-node", "fac");
    let handle = sys
        .block_on(async { StoreHandle::start(cfg, secrets(), 2) })
        .expect("start store");
    let ctx = ctx();
    let (created, provenance, event) = sys.block_on(async {
        let w = handle
            .create(&ctx, observation(1), None)
            .await
            .expect("create");
        let target = format!("Observation/{}", w.record.id);
        let prov = handle
            .search(&ctx, "Provenance", &[("target".into(), target)])
            .await
            .expect("provenance search");
        let index = *w.audit_indexes.first().expect("the create's AuditEvent");
        let event = handle.audit_entry(&ctx, index).await.expect("audit entry");
        (w.record, prov, event)
    });
    assert_eq!(provenance.total, 1, "one Provenance per version");
    let prov = provenance.items.into_iter().next().expect("provenance");
    let audit_event: Value = serde_json::from_slice(&event.bytes).expect("AuditEvent JSON");
    assert_eq!(audit_event["resourceType"], "AuditEvent");

    let mut terms = params::all_terms("Observation", &created.resource);
    // The store adds the `_source` term of every version (the facility that wrote it).
    terms.push(("Observation._source".into(), "fac".into()));
    let mut audit_terms = params::all_terms("AuditEvent", &audit_event);
    audit_terms.sort();
    audit_terms.dedup();
    terms.extend(audit_terms);
    let w = Written {
        record: created.resource,
        canonical: created.canonical,
        jws: created.jws,
        provenance: prov.resource,
        provenance_bytes: prov.canonical,
        audit_event,
        audit_bytes: event.bytes,
        terms,
    };
    (
        w,
        Fixture {
            _sys: sys,
            handle,
            _dir: dir,
        },
    )
}

/// The store the sample create went to (kept open for `store_prepare_create`).
struct Fixture {
    _sys: actix_rt::SystemRunner,
    handle: StoreHandle,
    _dir: tempfile::TempDir,
}

fn budget(c: &mut Criterion) {
    let (w, store) = written();
    if std::env::var_os("HEXA_BUDGET_DUMP").is_some() {
        println!(
            "{}\n{}\n{}",
            String::from_utf8_lossy(&w.canonical),
            String::from_utf8_lossy(&w.provenance_bytes),
            String::from_utf8_lossy(&w.audit_bytes)
        );
    }
    // The keys the store signs and seals with.
    let keys = secrets();
    let (node, master) = (keys.node_key, keys.master_key);
    let (seal_versions, seal_prov, seal_log) = (
        master.sealing_key("shr.versions"),
        master.sealing_key("audit.provenance"),
        master.sealing_key("audit.log"),
    );
    let blind = master.blind_index_key("shr.index");
    // The postcard envelope: the canonical bytes, the JWS and its other fields.
    let envelope_len = w.canonical.len() + w.jws.len() + 64;
    let envelope = vec![0x5a_u8; envelope_len];
    let key = b"Observation/0190a0b0-0000-7000-8000-000000000000/\0\0\0\0\0\0\0\x01";
    let aad = |database| Aad {
        database,
        key,
        version: 1,
    };
    // What `audit.provenance` holds for the version (format 3), and the AuditEvent as the
    // log seals it.
    let stored_provenance = StoredProvenance {
        format: FORMAT_VERSION,
        id: w.provenance["id"].as_str().expect("id").to_string(),
        custodian: "bench-node".into(),
        author: None,
    }
    .to_bytes()
    .expect("provenance");
    let stored_event = pack_audit(&w.audit_bytes).expect("pack");
    println!(
        "budget: record {} B canonical, envelope ~{} B, Provenance {} B ({} B stored), AuditEvent {} B ({} B stored), {} blind terms",
        w.canonical.len(),
        envelope_len,
        w.provenance_bytes.len(),
        stored_provenance.len(),
        w.audit_bytes.len(),
        stored_event.len(),
        w.terms.len()
    );

    let sign = || black_box(jws::sign_detached(&node, black_box(&w.canonical)));
    let canon_record = || black_box(jcs::canonicalize(black_box(&w.record)).expect("jcs"));
    let canon_prov = || black_box(jcs::canonicalize(black_box(&w.provenance)).expect("jcs"));
    let compress_event = || black_box(pack_audit(black_box(&w.audit_bytes)).expect("pack"));
    let canon_event = || black_box(jcs::canonicalize(black_box(&w.audit_event)).expect("jcs"));
    let seal = |key: &SealKey, value: &[u8], database| {
        black_box(key.seal(black_box(value), &aad(database)).expect("seal"))
    };
    let seal_version = || seal(&seal_versions, &envelope, "shr.versions");
    let seal_provenance = || seal(&seal_prov, &stored_provenance, "audit.provenance");
    let seal_event = || seal(&seal_log, &stored_event, "audit.log");
    let blind_terms = || {
        for (field, term) in &w.terms {
            black_box(blind.index(field, term.as_bytes()));
        }
    };
    let mut frontier = Frontier::default();
    let mut merkle_leaf = move |bytes: &[u8]| {
        let leaf = merkle::leaf_hash(black_box(bytes));
        black_box(frontier.append(leaf));
    };
    let ids = || {
        for _ in 0..3 {
            black_box(new_id().expect("id"));
        }
    };

    let mut g = c.benchmark_group("budget");
    g.bench_function("sign_record", |b| b.iter(sign));
    g.bench_function("canonicalize_record", |b| b.iter(canon_record));
    g.bench_function("canonicalize_provenance", |b| b.iter(canon_prov));
    g.bench_function("canonicalize_audit_event", |b| b.iter(canon_event));
    g.bench_function("compress_audit_event", |b| b.iter(compress_event));
    g.bench_function("seal_version", |b| b.iter(seal_version));
    g.bench_function("seal_provenance", |b| b.iter(seal_provenance));
    g.bench_function("seal_audit_event", |b| b.iter(seal_event));
    g.bench_function("blind_terms", |b| b.iter(blind_terms));
    g.bench_function("merkle_leaf", |b| b.iter(|| merkle_leaf(&w.audit_bytes)));
    g.bench_function("ids", |b| b.iter(ids));
    let mut all = || {
        canon_record();
        sign();
        seal_version();
        seal_provenance();
        canon_event();
        compress_event();
        seal_event();
        merkle_leaf(&w.audit_bytes);
        blind_terms();
        ids();
    };
    g.bench_function("all_required", |b| b.iter(&mut all));
    // What the store's registry thread actually does for a create, on one thread.
    let engine = store.handle.engine();
    let ctx = ctx();
    let mut i = 0u64;
    g.bench_function("store_prepare_create", |b| {
        b.iter_batched(
            || {
                i += 1;
                vec![observation(i)]
            },
            |resources| {
                black_box(
                    engine
                        .prepare_create_unsubmitted(&ctx, resources)
                        .expect("prepare"),
                )
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // A registry thread's batch of creates under load (`registry::LANE_BATCH`), whose
    // signatures share one inversion; the figure is per create.
    g.throughput(criterion::Throughput::Elements(16));
    g.bench_function("store_prepare_create_16", |b| {
        b.iter_batched(
            || {
                (0..16)
                    .map(|_| {
                        i += 1;
                        observation(i)
                    })
                    .collect::<Vec<_>>()
            },
            |resources| {
                black_box(
                    engine
                        .prepare_create_unsubmitted(&ctx, resources)
                        .expect("prepare"),
                )
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    // The same sequence timed directly, for the summary line (not in Criterion's test
    // mode, where `cargo test` runs each case once in a debug build).
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = 2000u32;
    let t = Instant::now();
    for _ in 0..n {
        all();
    }
    let per: Duration = t.elapsed() / n;
    println!(
        "budget: all required work {:.1} µs per create on one thread; two cores doing only this: {:.1} k creates/s",
        per.as_secs_f64() * 1e6,
        2.0 / per.as_secs_f64() / 1e3
    );
}

criterion_group!(benches, budget);
criterion_main!(benches);
