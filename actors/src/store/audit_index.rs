//! Deferred search indexing of the audit log.
//!
//! Every disclosure (read, search, `$match`) and every write appends an AuditEvent. The
//! sealed event, its Merkle subtrees and its id are committed in the transaction that
//! records the disclosure, as before: that is what makes the audit trail durable before
//! any data leaves. Its *search index* terms (patient, agent, entity, date, ...) are not:
//! they are blind hashes that land on random B-tree pages, and filing them inline cost
//! more writer time than everything else of an audited read.
//!
//! Instead the writer files them later, from the log, in its own transactions:
//! - `meta["audit-indexed"]` (u64 BE) is the *watermark*: every log entry below it has its
//!   terms in `audit.index`; the entries from it to the log size are the *tail*. The
//!   watermark moves in the same transaction as the terms it covers, so a reader's
//!   snapshot always sees an index and a watermark that agree. A store without the key
//!   (format 1, which indexed inline) is fully indexed.
//! - The writer keeps the tail's index keys in memory ([`AuditIndexer`]; rebuilt from the
//!   log at start), files up to [`IDLE_CHUNK`] of them whenever its queue is empty and at
//!   least `StoreConfig::audit_index_idle_run` (default [`IDLE_CHUNK`]) wait, and, when the
//!   tail grows beyond `StoreConfig::audit_index_lag` (sustained load), files the excess
//!   inside the next group commits. So under light load a few hundred events may stay
//!   unfiled for a long time: AuditEvent searches scan them (milliseconds).
//! - AuditEvent searches read the index below the watermark and *scan* the tail (open and
//!   post-filter each entry with the same extraction code), so their results are complete
//!   and exact at every moment; the tail scan is bounded by the lag.
//!
//! **Runs.** A filing commit writes one *run*: the keys of log entries `start..end` as
//! `0xFF || start:u64 BE || blind:32 || entry:u64 BE`, sorted and put with `MDB_APPEND`
//! (every run starts after the previous one, and `0xFF` sorts after the `AuditEvent\0...`
//! postings format 1 wrote). So filing writes new, full pages at the right edge of the
//! B-tree instead of dirtying one random page per unique term (the entity and patient of
//! almost every event are unique), and postings carry the log index (no id lookup). A
//! term lookup reads its postings in every run (two cursor seeks per run); runs hold at
//! least [`FORCED_MIN`] entries under load, so a million events make a few hundred to a
//! few thousand runs. Merging old runs into bigger ones is not done yet.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Bound;

use heed::{RoTxn, RwTxn};
use hexa_crypto::jcs::Canon;
use serde_json::Value;

use super::error::{StoreError, StoreResult};
use super::route::Component;
use super::writer::{Staged, StagedOp};
use super::{Store, params, slot};

/// `meta` key of the watermark.
pub(crate) const META_AUDIT_INDEXED: &[u8] = b"audit-indexed";

/// Most tail entries filed by one idle-time indexing commit (bounds how long a request that
/// arrives meanwhile waits for the writer).
pub const IDLE_CHUNK: usize = 1024;

/// Fewest tail entries filed inside a group commit once the tail exceeds the lag (the
/// smallest run under sustained load).
pub const FORCED_MIN: u64 = 1024;

/// First byte of every run key.
const RUN_TAG: u8 = 0xFF;
/// Length of a run key: tag, run start, blind term, entry index.
const RUN_KEY_LEN: usize = 1 + 8 + 32 + 8;

/// The writer's deferred audit indexer: the watermark and the index keys of the tail.
#[derive(Debug, Default)]
pub(crate) struct AuditIndexer {
    /// Every log entry below this index is filed in `audit.index`.
    pub indexed: u64,
    /// Blinded terms of the entries `indexed..`, in log order (contiguous).
    pending: VecDeque<(u64, Vec<[u8; 32]>)>,
}

impl AuditIndexer {
    /// Loads the watermark and rebuilds the tail's keys from the log (`size` = log size).
    pub fn load(store: &Store, txn: &RoTxn, size: u64) -> StoreResult<Self> {
        let indexed = store.audit_indexed_in(txn, size)?;
        let mut pending = VecDeque::new();
        for i in indexed..size {
            let entry = store.audit_entry_in(txn, i)?;
            let event: Value = serde_json::from_slice(&entry.bytes)
                .map_err(|e| StoreError::Audit(format!("logged AuditEvent is not JSON: {e}")))?;
            pending.push_back((i, event_terms(store, &event)));
        }
        Ok(AuditIndexer { indexed, pending })
    }

    /// Entries of the tail whose keys are held (the tail as of the last commit).
    pub fn tail(&self) -> usize {
        self.pending.len()
    }

    /// How many tail entries a group commit whose log will hold `size` entries files: none
    /// while the tail is within `lag`, else the excess (at least [`FORCED_MIN`]).
    pub fn forced(&self, size: u64, lag: u64) -> usize {
        let tail = size.saturating_sub(self.indexed);
        if tail <= lag {
            return 0;
        }
        ((tail - lag).max(FORCED_MIN) as usize).min(self.pending.len())
    }

    /// Stages the run of the oldest `n` tail entries and the moved watermark (to be
    /// committed with `wtxn`); [`AuditIndexer::filed`] completes it after the commit.
    pub fn stage(
        &self,
        store: &Store,
        wtxn: &mut RwTxn,
        staged: &mut Staged<'_>,
        n: usize,
    ) -> StoreResult<()> {
        use std::borrow::Cow::{Borrowed, Owned};
        if n > 0 {
            let c = Component::Audit;
            let db = store.dbs(c).index;
            let start = self.indexed;
            // The stage sorts by key; every key of this run is above every stored key.
            for (entry, terms) in self.pending.iter().take(n) {
                for t in terms {
                    staged.push(
                        slot::index(c),
                        db,
                        Owned(run_key(start, t, *entry).to_vec()),
                        StagedOp::Append(Borrowed(&[])),
                    );
                }
            }
        }
        self.persist(store, wtxn, self.indexed + n as u64)
    }

    /// Writes the watermark `at` into `meta` (every group commit does, so a store written by
    /// this code always has the key).
    pub fn persist(&self, store: &Store, wtxn: &mut RwTxn, at: u64) -> StoreResult<()> {
        store
            .meta
            .put(wtxn, META_AUDIT_INDEXED, &at.to_be_bytes())?;
        Ok(())
    }

    /// After a commit: the oldest `n` tail entries were filed, and `fresh` (the batch's
    /// appended entries) joined the tail.
    pub fn filed(&mut self, n: usize, fresh: Vec<(u64, Vec<[u8; 32]>)>) {
        self.pending.drain(..n.min(self.pending.len()));
        self.indexed += n as u64;
        self.pending.extend(fresh);
    }
}

/// `0xFF || start || blind || entry`: one posting of run `start`.
fn run_key(start: u64, blind: &[u8; 32], entry: u64) -> [u8; RUN_KEY_LEN] {
    let mut k = [0u8; RUN_KEY_LEN];
    k[0] = RUN_TAG;
    k[1..9].copy_from_slice(&start.to_be_bytes());
    k[9..41].copy_from_slice(blind);
    k[41..].copy_from_slice(&entry.to_be_bytes());
    k
}

/// The distinct blinded search terms of an AuditEvent (field `AuditEvent.<param>`).
pub(crate) fn event_terms(store: &Store, event: &Value) -> Vec<[u8; 32]> {
    let terms: BTreeSet<[u8; 32]> = params::all_terms("AuditEvent", event)
        .into_iter()
        .map(|(field, term)| store.blind(Component::Audit, &field, &term))
        .collect();
    terms.into_iter().collect()
}

/// [`event_terms`] of an AuditEvent composed as a [`Canon`] tree. The AuditEvent search
/// parameters read only `recorded`, `action`, `outcome`, `agent.who` and `entity.what`
/// (`params::AUDIT_EVENT`; `patient` is covered by `agent` and `entity`), so the terms are
/// read straight from those members, through the same helpers `params::all_terms` uses.
/// A member of a shape the composer does not produce falls back to the generic path; a test
/// keeps both equal to the terms of the whole event.
pub(crate) fn canon_event_terms(store: &Store, event: &Canon<'_>) -> Vec<[u8; 32]> {
    match direct_event_terms(event) {
        Some(pairs) => {
            let mut terms: Vec<[u8; 32]> = pairs
                .iter()
                .map(|(field, term)| store.blind(Component::Audit, field, term))
                .collect();
            terms.sort_unstable();
            terms.dedup();
            terms
        }
        None => generic_event_terms(store, event),
    }
}

/// The (field, term) pairs of [`canon_event_terms`], or `None` for a shape it leaves to
/// [`generic_event_terms`].
fn direct_event_terms(event: &Canon<'_>) -> Option<Vec<(&'static str, String)>> {
    fn text<'c>(c: &'c Canon<'_>) -> Option<&'c str> {
        match c {
            Canon::Str(s) => Some(s),
            Canon::String(s) => Some(s),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(16);
    let mut terms = Vec::with_capacity(8);
    if let Some(recorded) = event.get("recorded")
        && let Some((lo, hi)) = params::date_str_range(text(recorded)?)
    {
        params::date_terms(&lo, &hi, &mut terms);
        out.extend(terms.drain(..).map(|t| ("AuditEvent.date", t)));
    }
    for (member, field) in [
        ("action", "AuditEvent.action"),
        ("outcome", "AuditEvent.outcome"),
    ] {
        if let Some(v) = event.get(member) {
            let code = text(v)?;
            if !code.is_empty() {
                out.push((field, params::cat(&["c:", code])));
            }
        }
    }
    for (list, member, field) in [
        ("agent", "who", "AuditEvent.agent"),
        ("entity", "what", "AuditEvent.entity"),
    ] {
        let items = match event.get(list) {
            None => continue,
            Some(Canon::Array(items)) => items,
            Some(_) => return None,
        };
        for item in items {
            let raw = match item.get(member) {
                None => continue,
                Some(Canon::Object(m)) => match m.iter().find(|(k, _)| *k == "reference") {
                    None => continue,
                    Some((_, r)) => text(r)?,
                },
                Some(other) => text(other)?,
            };
            if let Some(r) = params::normalize_reference(raw) {
                // `agent` and `entity` are not restricted to one target type.
                params::reference_terms(&r, true, &mut terms);
                out.extend(terms.drain(..).map(|t| (field, t)));
            }
        }
    }
    Some(out)
}

/// [`canon_event_terms`] through a `Value` of the five members and `params::all_terms`.
pub(crate) fn generic_event_terms(store: &Store, event: &Canon<'_>) -> Vec<[u8; 32]> {
    let mut mini = serde_json::Map::new();
    for name in ["resourceType", "recorded", "action", "outcome"] {
        if let Some(v) = event.get(name) {
            mini.insert(name.into(), v.to_value());
        }
    }
    for (list, member) in [("agent", "who"), ("entity", "what")] {
        if let Some(Canon::Array(items)) = event.get(list) {
            let picked = items
                .iter()
                .map(|item| {
                    let mut m = serde_json::Map::new();
                    if let Some(v) = item.get(member) {
                        m.insert(member.into(), v.to_value());
                    }
                    Value::Object(m)
                })
                .collect();
            mini.insert(list.into(), Value::Array(picked));
        }
    }
    event_terms(store, &Value::Object(mini))
}

impl Store {
    /// The audit index watermark within `txn` (`size`, the log size, when the store predates
    /// deferred indexing and so indexed every entry inline).
    pub(crate) fn audit_indexed_in(&self, txn: &RoTxn, size: u64) -> StoreResult<u64> {
        match self.meta.get(txn, META_AUDIT_INDEXED)? {
            None => Ok(size),
            Some(b) => {
                let at = <[u8; 8]>::try_from(b)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        database: "meta".into(),
                        key: "audit-indexed".into(),
                        reason: "watermark is not 8 bytes".into(),
                    })?;
                Ok(at.min(size))
            }
        }
    }

    /// Adds the log indexes filed under `blind` in every run.
    pub(crate) fn audit_run_postings(
        &self,
        txn: &RoTxn,
        blind: &[u8; 32],
        out: &mut BTreeSet<u64>,
    ) -> StoreResult<()> {
        let db = self.dbs(Component::Audit).index;
        let corrupt = |k: &[u8]| StoreError::Corrupt {
            database: "audit.index".into(),
            key: super::format::printable_key(k),
            reason: "bad run key".into(),
        };
        // The first run at or after `from`.
        let mut from = [RUN_TAG, 0, 0, 0, 0, 0, 0, 0, 0];
        loop {
            let start = {
                let range = (Bound::Included(&from[..]), Bound::Unbounded);
                let Some(first) = db.range(txn, &range)?.next() else {
                    break;
                };
                let (k, _) = first?;
                if k.len() != RUN_KEY_LEN || k[0] != RUN_TAG {
                    return Err(corrupt(k));
                }
                u64::from_be_bytes(k[1..9].try_into().map_err(|_| corrupt(k))?)
            };
            let mut prefix = [0u8; 41];
            prefix[0] = RUN_TAG;
            prefix[1..9].copy_from_slice(&start.to_be_bytes());
            prefix[9..].copy_from_slice(blind);
            for item in db.prefix_iter(txn, &prefix)? {
                let (k, _) = item?;
                let entry = k
                    .get(41..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .ok_or_else(|| corrupt(k))?;
                out.insert(u64::from_be_bytes(entry));
            }
            let Some(next) = start.checked_add(1) else {
                break;
            };
            from[1..].copy_from_slice(&next.to_be_bytes());
        }
        Ok(())
    }

    /// Number of audit log entries not yet filed in the search index (for metrics and tests).
    pub fn audit_unindexed(&self) -> StoreResult<u64> {
        self.with_read(|txn| {
            let size = self.frontier_in(txn)?.size();
            Ok(size - self.audit_indexed_in(txn, size)?)
        })
    }
}
