//! The floor under #3's write goal: the work the brief requires of one durable Observation
//! create, done with nothing else around it.
//!
//! No actors, no access policy, no generic search-parameter extraction, no transaction
//! bookkeeping: two preparation threads and one group-commit writer thread, with the
//! appliance's own primitives (`hexa-crypto`'s RFC 8785 canonicalisation, detached Ed25519
//! JWS, XChaCha20-Poly1305 sealing, HMAC blind indexes, Merkle frontier; `hexa-actors`'s
//! key layout and UUIDv7 ids) on a real LMDB environment with the default (durable) sync.
//!
//! Per create, what the brief asks for and nothing more:
//! - the version: `id` and `meta` set, canonicalised, signed, sealed under an AAD naming its
//!   database, key and version, and put with its current-version pointer (after checking
//!   the resource does not exist yet: optimistic concurrency);
//! - five blind index postings: `subject`/`patient`, `code` as `system|code` and as `code`,
//!   `date`, `status` (the clinical parameters of the issue that an Observation has);
//! - its Provenance (target, recorded, agent, the signature), sealed, keyed by the version
//!   and by its own id;
//! - the AuditEvent of the write, sealed under its log index, appended to the Merkle log
//!   (leaf and completed subtrees), findable by id, and four blind postings for the search
//!   parameters the issue names for AuditEvent (patient, date, agent, entity).
//!
//! The plain case files every posting as a B-tree entry. The `_store_layout` case files
//! them as the store does: the resource's in the B-tree, the AuditEvent's in runs (the
//! store appends those after the commit, unmerged; here they go to the `_tiered` case's
//! audit tiers, in the commit).
//! The `_runs` case stores the same postings differently: each commit appends its nine
//! postings per create, sorted, as one value keyed by the commit's sequence number (a
//! sorted run, as an LSM tree's level 0 would hold it). Nothing merges those runs and no
//! search could use them as they are, so that case is a ceiling for a run-structured index,
//! not a design: it shows what the same writes cost when their postings are written
//! sequentially instead of into random B-tree leaves. The `_tiered` case is that ceiling
//! made searchable: runs stored as blocks of fixed-width postings and merged eight at a
//! time into the next level, in the commit that fills a level ([`Tiers`]), so its figure
//! includes what the merges write; each run also gets a Bloom filter of its terms. When a
//! case ends, the writer looks up the `subject` postings of the 1 000 patients (common
//! terms) and the AuditEvent `entity` postings of 1 000 creates (rare terms, one posting
//! each) through its layout, checks that nothing is missing or repeated, and prints the
//! time per term.
//!
//! A write is acknowledged only after the LMDB commit that holds all of it. The real store
//! (`benches/benches/store.rs`) does more per write (policy check, every search parameter
//! of the resource, richer AuditEvents and Provenances, the frontier persisted, a fallible
//! per-member protocol); this bench says what is left if all of that were free.
//!
//! ```sh
//! cargo bench -p hexa-benches --bench floor -- --warm-up-time 1 --measurement-time 4
//! ```

use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, PutFlags, WithoutTls};
use hexa_actors::store::format;
use hexa_benches::{ProcUsage, observation};
use hexa_crypto::jcs::{self, Canon};
use hexa_crypto::keys::SigningKey;
use hexa_crypto::merkle::{self, Frontier, Hash};
use hexa_crypto::seal::{Aad, BlindIndexKey, MasterKey, SealKey};
use serde_json::json;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Creates per Criterion iteration.
const BURST: u64 = 2048;
/// Preparation threads (the store runs two per registry).
const PREP_THREADS: usize = 2;
/// Largest group commit.
const MAX_BATCH: usize = 1024;

type Db = Database<'static, Bytes, Bytes>;

struct Keys {
    node: SigningKey,
    seal_versions: SealKey,
    seal_provenance: SealKey,
    seal_log: SealKey,
    blind: BlindIndexKey,
    blind_audit: BlindIndexKey,
}

struct Dbs {
    current: Db,
    versions: Db,
    index: Db,
    provenance: Db,
    provids: Db,
    tree: Db,
    log: Db,
    ids: Db,
    audit_index: Db,
}

/// Where the postings go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Postings {
    /// One B-tree entry per posting, the AuditEvent's too.
    BTree,
    /// The store's layout: the resource's postings as B-tree entries, the AuditEvent's in
    /// runs (as `audit_index` files them after the commit; here in it, and merged).
    StoreLayout,
    /// One sorted run per commit, appended (a ceiling; see the module comment).
    Runs,
    /// Size-tiered runs, merged [`FANOUT`] at a time (see [`Tiers`]).
    Tiered,
}

/// Runs merged when a level holds this many.
const FANOUT: usize = 8;
/// Largest block (one LMDB value) of a run, in bytes.
const BLOCK: usize = 32 * 1024;

/// A size-tiered log-structured posting index in one LMDB database, the layout a
/// run-structured index of the store could use. A run is a sorted array of fixed-width
/// postings, stored as blocks of at most [`BLOCK`] bytes under `seq:u64 BE || first
/// posting of the block`; `seq` only grows, so every block is an `MDB_APPEND` and lands
/// on fresh pages. Each commit adds one run at level 0; when a level holds [`FANOUT`] runs
/// they are merged into one run of the next level in the same commit and their blocks
/// are deleted (their pages go back to LMDB's free list). A term lookup reads the
/// postings of the term in every run.
struct Tiers {
    db: Db,
    width: usize,
    /// Offset of the 32-byte blind term in a posting (and in a lookup prefix).
    term_at: usize,
    /// A Bloom filter of each run's terms (10 bits per posting, 7 probes), kept in memory
    /// here; a real index would store it beside its run.
    filters: std::collections::HashMap<u64, Vec<u64>>,
    /// Run sequence numbers per level, oldest first.
    levels: Vec<Vec<u64>>,
    next_seq: u64,
    /// Postings rewritten by merges (for the bench's report).
    merged: u64,
}

impl Tiers {
    fn new(db: Db, width: usize, term_at: usize) -> Self {
        Tiers {
            db,
            width,
            term_at,
            filters: Default::default(),
            levels: Vec::new(),
            next_seq: 0,
            merged: 0,
        }
    }

    /// Writes `postings` (sorted, concatenated, `width` bytes each) as a new run.
    fn write_run(&mut self, wtxn: &mut heed::RwTxn, postings: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let per_block = (BLOCK / self.width).max(1) * self.width;
        let mut key = Vec::with_capacity(8 + self.width);
        for block in postings.chunks(per_block) {
            key.clear();
            key.extend_from_slice(&seq.to_be_bytes());
            key.extend_from_slice(&block[..self.width]);
            self.db
                .put_with_flags(wtxn, PutFlags::APPEND, &key, block)
                .expect("append block");
        }
        let n = postings.len() / self.width;
        let bits = (n * 10).next_power_of_two().max(64);
        let mut filter = vec![0u64; bits / 64];
        for p in postings.chunks_exact(self.width) {
            for bit in Self::probes(&p[self.term_at..self.term_at + 32], bits) {
                filter[bit / 64] |= 1 << (bit % 64);
            }
        }
        self.filters.insert(seq, filter);
        seq
    }

    /// The filter bits of a blind term (double hashing over its first 16 bytes, which are
    /// HMAC output and so already uniform).
    fn probes(blind: &[u8], bits: usize) -> impl Iterator<Item = usize> {
        let h1 = u64::from_le_bytes(blind[..8].try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(blind[8..16].try_into().unwrap_or_default()) | 1;
        (0..7u64).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) as usize) & (bits - 1))
    }

    /// False when run `seq` certainly holds no posting of the term of `prefix`.
    fn may_hold(&self, seq: u64, prefix: &[u8]) -> bool {
        let Some(filter) = self.filters.get(&seq) else {
            return true;
        };
        let bits = filter.len() * 64;
        Self::probes(&prefix[self.term_at..self.term_at + 32], bits)
            .all(|bit| filter[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Adds one commit's sorted postings as a level-0 run, then merges full levels.
    fn add(&mut self, wtxn: &mut heed::RwTxn, postings: &[u8]) {
        if postings.is_empty() {
            return;
        }
        let seq = self.write_run(wtxn, postings);
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(seq);
        let mut level = 0;
        while level < self.levels.len() && self.levels[level].len() >= FANOUT {
            let runs = std::mem::take(&mut self.levels[level]);
            let mut all: Vec<u8> = Vec::new();
            for &r in &runs {
                let prefix = r.to_be_bytes();
                for item in self.db.prefix_iter(wtxn, &prefix).expect("run") {
                    let (_, block) = item.expect("block");
                    all.extend_from_slice(block);
                }
            }
            let mut items: Vec<&[u8]> = all.chunks_exact(self.width).collect();
            items.sort_unstable();
            let merged: Vec<u8> = items.concat();
            self.merged += (merged.len() / self.width) as u64;
            for &r in &runs {
                self.filters.remove(&r);
                let (lo, hi) = (r.to_be_bytes(), (r + 1).to_be_bytes());
                self.db
                    .delete_range(wtxn, &(Included(&lo[..]), Excluded(&hi[..])))
                    .expect("delete run");
            }
            let seq = self.write_run(wtxn, &merged);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(seq);
            level += 1;
        }
    }

    /// Number of postings of the term `prefix` (a posting's leading bytes), over every run.
    /// With `filtered`, runs whose filter rules the term out are skipped.
    fn count(&self, txn: &heed::RoTxn<WithoutTls>, prefix: &[u8], filtered: bool) -> usize {
        let mut n = 0;
        let mut key = Vec::with_capacity(8 + prefix.len());
        for &seq in self.levels.iter().flatten() {
            if filtered && !self.may_hold(seq, prefix) {
                continue;
            }
            key.clear();
            key.extend_from_slice(&seq.to_be_bytes());
            key.extend_from_slice(prefix);
            // The block holding the first posting >= prefix starts at or before it.
            let start = match self.db.get_lower_than_or_equal_to(txn, &key).expect("seek") {
                Some((k, _)) if k[..8] == seq.to_be_bytes() => k.to_vec(),
                _ => seq.to_be_bytes().to_vec(),
            };
            'blocks: for item in self
                .db
                .range(txn, &(Included(&start[..]), Unbounded))
                .expect("range")
            {
                let (k, block) = item.expect("block");
                if k[..8] != seq.to_be_bytes() {
                    break;
                }
                let items: Vec<&[u8]> = block.chunks_exact(self.width).collect();
                let from = items.partition_point(|p| &p[..prefix.len()] < prefix);
                for p in &items[from..] {
                    if !p.starts_with(prefix) {
                        break 'blocks;
                    }
                    n += 1;
                }
            }
        }
        n
    }
}

/// One prepared create: only bytes for the writer.
struct Prepared {
    current_key: Vec<u8>,
    version_key: Vec<u8>,
    sealed: Vec<u8>,
    postings: Vec<Vec<u8>>,
    prov_id: String,
    prov_sealed: Vec<u8>,
    audit_id: String,
    audit_bytes: Vec<u8>,
    audit_leaf: Hash,
    audit_terms: Vec<[u8; 32]>,
}

fn now_instant() -> String {
    // A fixed-width UTC instant, as `meta.lastUpdated` and `recorded` carry.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!("2026-12-04T12:00:{:02}.{:03}Z", (ms / 1000) % 60, ms % 1000)
}

/// `{type}/{id}/{version BE}`: the floor keeps format 5's version key (a first version
/// under a time-ordered id appends, as a format-6 stamp key does).
fn version_key(ty: &str, id: &str, version: u64) -> Vec<u8> {
    let mut k = format::current_key(ty, id);
    k.push(b'/');
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn prepare(k: &Keys, i: u64) -> Prepared {
    let id = hexa_actors::store::new_id().expect("id");
    let now = now_instant();
    let mut resource = observation(i);
    let obj = resource.as_object_mut().expect("object");
    obj.insert("id".into(), json!(id));
    obj.insert(
        "meta".into(),
        json!({"versionId": "1", "lastUpdated": now, "source": "#fac"}),
    );
    let canonical = jcs::canonicalize(&resource).expect("jcs");
    let jws = hexa_crypto::jws::sign_detached(&k.node, &canonical);
    let version_key = version_key("Observation", &id, 1);
    let mut envelope = Vec::with_capacity(canonical.len() + jws.len() + 16);
    envelope.push(2);
    envelope.extend_from_slice(&(canonical.len() as u32).to_be_bytes());
    envelope.extend_from_slice(&canonical);
    envelope.extend_from_slice(jws.as_bytes());
    let sealed = k
        .seal_versions
        .seal(
            &envelope,
            &Aad {
                database: "shr.versions",
                key: &version_key,
                version: 1,
            },
        )
        .expect("seal");
    let subject = format!("Patient/p{}", i % 1000);
    let postings = [
        ("Observation.subject", subject.as_str()),
        ("Observation.code", "http://loinc.org|8867-4"),
        ("Observation.code", "8867-4"),
        ("Observation.date", "2024-05-05"),
        ("Observation.status", "final"),
    ]
    .iter()
    .map(|(field, term)| {
        format::index_key("Observation", &k.blind.index(field, term.as_bytes()), &id)
    })
    .collect();
    let target = format!("Observation/{id}/_history/1");
    let prov_id = hexa_actors::store::new_id().expect("id");
    let prov = Canon::Object(vec![
        ("resourceType", Canon::Str("Provenance")),
        ("id", Canon::Str(&prov_id)),
        (
            "target",
            Canon::Array(vec![Canon::Object(vec![(
                "reference",
                Canon::Str(&target),
            )])]),
        ),
        ("recorded", Canon::Str(&now)),
        (
            "agent",
            Canon::Array(vec![Canon::Object(vec![(
                "who",
                Canon::Object(vec![("reference", Canon::Str("Device/node"))]),
            )])]),
        ),
        (
            "signature",
            Canon::Array(vec![Canon::Object(vec![
                ("when", Canon::Str(&now)),
                ("sigFormat", Canon::Str("application/jose")),
                ("data", Canon::Str(&jws)),
            ])]),
        ),
    ])
    .to_bytes();
    let prov_sealed = k
        .seal_provenance
        .seal(
            &prov,
            &Aad {
                database: "audit.provenance",
                key: &version_key,
                version: 1,
            },
        )
        .expect("seal");
    let audit_id = hexa_actors::store::new_id().expect("id");
    let audit = Canon::Object(vec![
        ("resourceType", Canon::Str("AuditEvent")),
        ("id", Canon::Str(&audit_id)),
        (
            "type",
            Canon::Object(vec![
                (
                    "system",
                    Canon::Str("http://terminology.hl7.org/CodeSystem/audit-event-type"),
                ),
                ("code", Canon::Str("rest")),
            ]),
        ),
        (
            "subtype",
            Canon::Array(vec![Canon::Object(vec![("code", Canon::Str("create"))])]),
        ),
        ("action", Canon::Str("C")),
        ("recorded", Canon::Str(&now)),
        ("outcome", Canon::Str("0")),
        (
            "agent",
            Canon::Array(vec![Canon::Object(vec![
                (
                    "who",
                    Canon::Object(vec![("reference", Canon::Str("Practitioner/dr"))]),
                ),
                ("requestor", Canon::Bool(true)),
            ])]),
        ),
        (
            "source",
            Canon::Object(vec![(
                "observer",
                Canon::Object(vec![("reference", Canon::Str("Device/node"))]),
            )]),
        ),
        (
            "entity",
            Canon::Array(vec![
                Canon::Object(vec![(
                    "what",
                    Canon::Object(vec![("reference", Canon::Str(&target))]),
                )]),
                Canon::Object(vec![(
                    "what",
                    Canon::Object(vec![("reference", Canon::Str(&subject))]),
                )]),
            ]),
        ),
    ])
    .to_bytes();
    let audit_terms = vec![
        k.blind_audit
            .index("AuditEvent.patient", subject.as_bytes()),
        k.blind_audit.index("AuditEvent.date", b"2026-12-04"),
        k.blind_audit.index("AuditEvent.agent", b"Practitioner/dr"),
        k.blind_audit.index("AuditEvent.entity", target.as_bytes()),
    ];
    Prepared {
        current_key: format::current_key("Observation", &id),
        version_key,
        sealed,
        postings,
        prov_id,
        prov_sealed,
        audit_leaf: merkle::leaf_hash(&audit),
        audit_bytes: audit,
        audit_id,
        audit_terms,
    }
}

/// Puts `items` into `db` in key order, as the store's group commit stages them.
fn put_sorted<K, V>(db: &Db, wtxn: &mut heed::RwTxn, mut items: Vec<(K, V)>)
where
    K: AsRef<[u8]> + Ord,
    V: AsRef<[u8]> + Ord,
{
    items.sort_unstable();
    for (k, v) in &items {
        db.put(wtxn, k.as_ref(), v.as_ref()).expect("put");
    }
}

/// Writer counters: members, commits, nanoseconds applying and committing.
#[derive(Default)]
struct Stats {
    members: AtomicU64,
    commits: AtomicU64,
    apply: AtomicU64,
    commit: AtomicU64,
}

fn write_batch(
    env: &Env<WithoutTls>,
    dbs: &Dbs,
    keys: &Keys,
    state: &mut WriterState,
    batch: &[Prepared],
    stats: &Stats,
) {
    let WriterState {
        frontier,
        postings,
        tiers,
        entities,
    } = state;
    let t0 = Instant::now();
    let mut wtxn = env.write_txn().expect("write txn");
    // Sorted puts per database, as the store's group commit stages them.
    let mut current: Vec<(&[u8], &[u8])> = Vec::with_capacity(batch.len());
    let mut versions = Vec::with_capacity(batch.len());
    let mut index: Vec<&[u8]> = Vec::with_capacity(batch.len() * 5);
    let mut provenance = Vec::with_capacity(batch.len());
    let mut provids = Vec::with_capacity(batch.len());
    let mut tree: Vec<([u8; 9], Hash)> = Vec::with_capacity(batch.len() * 2);
    let mut log: Vec<([u8; 8], Vec<u8>)> = Vec::with_capacity(batch.len());
    let mut ids: Vec<(&[u8], [u8; 8])> = Vec::with_capacity(batch.len());
    let mut audit_index: Vec<Vec<u8>> = Vec::with_capacity(batch.len() * 4);
    let one: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 1];
    for p in batch {
        if entities.len() < 1000 {
            entities.push(p.audit_terms[3]);
        }
        // Optimistic concurrency: a create must find no current version.
        assert!(
            dbs.current
                .get(&wtxn, &p.current_key)
                .expect("get")
                .is_none()
        );
        current.push((p.current_key.as_slice(), one));
        versions.push((p.version_key.as_slice(), p.sealed.as_slice()));
        index.extend(p.postings.iter().map(Vec::as_slice));
        provenance.push((p.version_key.as_slice(), p.prov_sealed.as_slice()));
        provids.push((p.prov_id.as_bytes(), p.version_key.as_slice()));
        let n = frontier.size();
        for (level, i, h) in frontier.append(p.audit_leaf) {
            let mut k = [0u8; 9];
            k[0] = level as u8;
            k[1..].copy_from_slice(&i.to_be_bytes());
            tree.push((k, h));
        }
        let key = n.to_be_bytes();
        let sealed = keys
            .seal_log
            .seal(
                &p.audit_bytes,
                &Aad {
                    database: "audit.log",
                    key: &key,
                    version: n,
                },
            )
            .expect("seal");
        log.push((key, sealed));
        ids.push((p.audit_id.as_bytes(), key));
        for t in &p.audit_terms {
            let mut k = Vec::with_capacity(40);
            k.extend_from_slice(t);
            k.extend_from_slice(&key);
            audit_index.push(k);
        }
    }
    put_sorted(&dbs.current, &mut wtxn, current);
    put_sorted(&dbs.versions, &mut wtxn, versions);
    index.sort_unstable();
    audit_index.sort_unstable();
    match *postings {
        Postings::BTree => {
            for k in index {
                dbs.index.put(&mut wtxn, k, &[]).expect("put");
            }
            for k in &audit_index {
                dbs.audit_index.put(&mut wtxn, k, &[]).expect("put");
            }
        }
        Postings::Runs => {
            let mut run = Vec::with_capacity(index.len() * 80 + audit_index.len() * 40);
            for k in index {
                run.extend_from_slice(&(k.len() as u16).to_be_bytes());
                run.extend_from_slice(k);
            }
            for k in &audit_index {
                run.extend_from_slice(k);
            }
            let seq = stats.commits.load(Relaxed).to_be_bytes();
            dbs.index
                .put_with_flags(&mut wtxn, PutFlags::APPEND, &seq, &run)
                .expect("append run");
        }
        Postings::Tiered => {
            if let Some((resource, audit)) = tiers.as_mut() {
                resource.add(&mut wtxn, &index.concat());
                audit.add(&mut wtxn, &audit_index.concat());
            }
        }
        Postings::StoreLayout => {
            for k in index {
                dbs.index.put(&mut wtxn, k, &[]).expect("put");
            }
            if let Some((_, audit)) = tiers.as_mut() {
                audit.add(&mut wtxn, &audit_index.concat());
            }
        }
    }
    put_sorted(&dbs.provenance, &mut wtxn, provenance);
    put_sorted(&dbs.provids, &mut wtxn, provids);
    put_sorted(&dbs.tree, &mut wtxn, tree);
    for (k, v) in &log {
        dbs.log
            .put_with_flags(&mut wtxn, PutFlags::APPEND, k, v)
            .expect("append");
    }
    put_sorted(&dbs.ids, &mut wtxn, ids);
    let t1 = Instant::now();
    wtxn.commit().expect("commit");
    stats.members.fetch_add(batch.len() as u64, Relaxed);
    stats.commits.fetch_add(1, Relaxed);
    stats.apply.fetch_add((t1 - t0).as_nanos() as u64, Relaxed);
    stats
        .commit
        .fetch_add(t1.elapsed().as_nanos() as u64, Relaxed);
}

/// The pipeline: `jobs` → preparation threads → writer → `acks` (members per commit).
struct Pipeline {
    jobs: Vec<Sender<u64>>,
    acks: Receiver<usize>,
    stats: std::sync::Arc<Stats>,
    writer: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// Stops the threads; the writer reports its term lookups before it exits.
    fn finish(mut self) {
        self.jobs.clear();
        if let Some(w) = self.writer.take() {
            w.join().expect("the floor's writer failed");
        }
    }
}

/// What the writer thread keeps between commits.
struct WriterState {
    frontier: Frontier,
    postings: Postings,
    /// Resource and AuditEvent postings of the `Tiered` case.
    tiers: Option<(Tiers, Tiers)>,
    /// The AuditEvent `entity` terms of the first 1 000 creates: rare terms (one posting
    /// each), looked up at the end like an identifier search.
    entities: Vec<[u8; 32]>,
}

/// Looks up the `subject` postings of the 1 000 patients the creates refer to (common
/// terms), and the AuditEvent `entity` postings of 1 000 creates (rare terms), through the
/// layout of `state`; prints the time per term.
fn report_lookups(name: &str, env: &Env<WithoutTls>, dbs: &Dbs, keys: &Keys, state: &WriterState) {
    if state.frontier.size() == 0 {
        return; // the case was filtered out
    }
    let rtxn = env.read_txn().expect("read txn");
    let t0 = Instant::now();
    let mut found = 0;
    for i in 0..1000 {
        let term = format!("Patient/p{i}");
        let blind = keys.blind.index("Observation.subject", term.as_bytes());
        let prefix = format::index_prefix("Observation", &blind);
        found += match (&state.postings, &state.tiers) {
            (Postings::BTree | Postings::StoreLayout, _) => {
                dbs.index.prefix_iter(&rtxn, &prefix).expect("iter").count()
            }
            (Postings::Tiered, Some((resource, _))) => resource.count(&rtxn, &prefix, true),
            _ => return,
        };
    }
    let subject_us = t0.elapsed().as_secs_f64() * 1e6 / 1000.0;
    let mut rare = Vec::new();
    for filtered in [false, true] {
        let t0 = Instant::now();
        let found: usize = state
            .entities
            .iter()
            .map(|blind| match (&state.postings, &state.tiers) {
                (Postings::Tiered | Postings::StoreLayout, Some((_, audit))) => {
                    audit.count(&rtxn, blind, filtered)
                }
                _ => dbs
                    .audit_index
                    .prefix_iter(&rtxn, blind)
                    .expect("iter")
                    .count(),
            })
            .sum();
        assert_eq!(found, state.entities.len(), "{name}: entity postings found");
        rare.push(t0.elapsed().as_secs_f64() * 1e6 / state.entities.len().max(1) as f64);
    }
    let runs = state
        .tiers
        .as_ref()
        .map(|(resource, audit)| {
            // The store layout keeps only the AuditEvent postings in tiers.
            let r = if state.postings == Postings::StoreLayout {
                audit
            } else {
                resource
            };
            format!(
                ", {} runs by level {:?}, {} postings rewritten by merges",
                r.levels.iter().map(Vec::len).sum::<usize>(),
                r.levels.iter().map(Vec::len).collect::<Vec<_>>(),
                r.merged
            )
        })
        .unwrap_or_default();
    // Every create filed exactly one `subject` posting: a layout that loses or repeats one
    // is wrong, whatever its speed.
    assert_eq!(
        found as u64,
        state.frontier.size(),
        "{name}: subject postings found"
    );
    let rare = match state.postings {
        Postings::Tiered | Postings::StoreLayout => format!(
            "{:.1} µs per term reading every run, {:.1} µs skipping runs by filter",
            rare[0], rare[1]
        ),
        _ => format!("{:.1} µs per term", rare[1]),
    };
    eprintln!(
        "floor lookups[{name}]: 1000 subject terms, {subject_us:.1} µs per term, {found} postings; \
         {} entity terms (one posting each), {rare}{runs}",
        state.entities.len()
    );
}

#[allow(unsafe_code)]
fn pipeline(name: &'static str, postings: Postings) -> Pipeline {
    let dir = tempfile::tempdir().expect("tempdir");
    // SAFETY: the directory is fresh and private to this bench; only LMDB maps it.
    let env = unsafe {
        EnvOpenOptions::new()
            .read_txn_without_tls()
            .map_size(8 << 30)
            .max_dbs(16)
            .open(dir.path())
            .expect("open env")
    };
    let names = [
        "shr.current",
        "shr.versions",
        "shr.index",
        "audit.provenance",
        "audit.provids",
        "audit.tree",
        "audit.log",
        "audit.ids",
        "audit.index",
    ];
    let wtxn = env.write_txn().expect("txn");
    let [
        current,
        versions,
        index,
        provenance,
        provids,
        tree,
        log,
        ids,
        audit_index,
    ] = env
        .create_databases_and_commit(wtxn, |opener, wtxn| -> heed::Result<_> {
            let mut v = Vec::with_capacity(names.len());
            for n in names {
                v.push(opener.create_database::<Bytes, Bytes>(wtxn, Some(n))?);
            }
            let arr: [Database<'_, Bytes, Bytes>; 9] = v
                .try_into()
                .map_err(|_| heed::Error::Io(std::io::Error::other("database table size")))?;
            Ok(CommitOrAbort::<_, ()>::Commit(arr))
        })
        .expect("create databases")
        .commit()
        .expect("committed");
    let dbs = Dbs {
        current,
        versions,
        index,
        provenance,
        provids,
        tree,
        log,
        ids,
        audit_index,
    };
    let mk = MasterKey::from_bytes([2; 32]);
    let keys = std::sync::Arc::new(Keys {
        node: SigningKey::from_seed(&[1; 32]),
        seal_versions: mk.sealing_key("shr.versions"),
        seal_provenance: mk.sealing_key("audit.provenance"),
        seal_log: mk.sealing_key("audit.log"),
        blind: mk.blind_index_key("shr.index"),
        blind_audit: mk.blind_index_key("audit.index"),
    });
    let stats = std::sync::Arc::new(Stats::default());
    let (to_writer, from_prep) = channel::<Prepared>();
    let (ack_tx, acks) = channel::<usize>();
    let mut jobs = Vec::new();
    for _ in 0..PREP_THREADS {
        let (tx, rx) = channel::<u64>();
        jobs.push(tx);
        let keys = keys.clone();
        let to_writer = to_writer.clone();
        std::thread::spawn(move || {
            while let Ok(i) = rx.recv() {
                if to_writer.send(prepare(&keys, i)).is_err() {
                    break;
                }
            }
        });
    }
    drop(to_writer);
    let wstats = stats.clone();
    let writer = std::thread::spawn(move || {
        // As the store's writer does (`StoreConfig::writer_nice`): the one serial stage
        // must not wait for a CPU behind the preparation threads. `HEXA_BENCH_WRITER_NICE`
        // overrides it (0: the default priority, as the session-6 figures ran).
        let nice =
            hexa_benches::env_writer_nice().unwrap_or(hexa_actors::store::DEFAULT_WRITER_NICE);
        hexa_actors::store::writer::set_thread_nice(nice);
        let mut state = WriterState {
            frontier: Frontier::new(),
            postings,
            tiers: matches!(postings, Postings::Tiered | Postings::StoreLayout).then(|| {
                let width = format::index_key("Observation", &[0; 32], &"0".repeat(36)).len();
                (
                    Tiers::new(dbs.index, width, "Observation".len() + 1),
                    Tiers::new(dbs.audit_index, 40, 0),
                )
            }),
            entities: Vec::with_capacity(1000),
        };
        while let Ok(first) = from_prep.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match from_prep.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            write_batch(&env, &dbs, &keys, &mut state, &batch, &wstats);
            if ack_tx.send(batch.len()).is_err() {
                break;
            }
        }
        report_lookups(name, &env, &dbs, &keys, &state);
    });
    Pipeline {
        jobs,
        acks,
        stats,
        writer: Some(writer),
        _dir: dir,
    }
}

/// Runs `total` creates keeping `in_flight` of them unacknowledged; returns the time.
fn run(p: &Pipeline, next: &mut u64, total: u64, in_flight: u64) -> Duration {
    let t0 = Instant::now();
    let (mut issued, mut acked) = (0u64, 0u64);
    while acked < total {
        while issued < total && issued - acked < in_flight {
            let i = *next;
            *next += 1;
            p.jobs[(i % p.jobs.len() as u64) as usize]
                .send(i)
                .expect("job");
            issued += 1;
        }
        acked += p.acks.recv().expect("ack") as u64;
    }
    t0.elapsed()
}

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_floor");
    for (in_flight, postings, name) in [
        (1u64, Postings::BTree, "observation_1"),
        (512, Postings::BTree, "observation_512"),
        (512, Postings::StoreLayout, "observation_512_store_layout"),
        (512, Postings::Runs, "observation_512_runs"),
        (512, Postings::Tiered, "observation_512_tiered"),
    ] {
        let u0 = ProcUsage::now();
        let p = pipeline(name, postings);
        let mut next = 0u64;
        let total = if in_flight == 1 { 1 } else { BURST };
        g.throughput(Throughput::Elements(total));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run(&p, &mut next, total, in_flight))
                    .sum()
            })
        });
        let s = &p.stats;
        let (m, n) = (s.members.load(Relaxed), s.commits.load(Relaxed).max(1));
        if m == 0 {
            continue; // filtered out
        }
        let (cpu, kib) = ProcUsage::now().per_op_since(&u0, m);
        eprintln!(
            "floor writer[{name}]: {m} members in {n} commits ({:.1}/commit), apply {:.1} µs/member, \
             commit {:.2} ms/commit; process CPU {cpu:.0} µs/member, {kib:.1} KiB written/member",
            m as f64 / n as f64,
            s.apply.load(Relaxed) as f64 / 1e3 / m.max(1) as f64,
            s.commit.load(Relaxed) as f64 / 1e6 / n as f64,
        );
        p.finish();
    }
    g.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
