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
//!   log at start), files up to [`IDLE_CHUNK`] of them whenever its queue is empty, and,
//!   when the tail grows beyond `StoreConfig::audit_index_lag` (sustained load), files the
//!   excess inside the next group commits.
//! - AuditEvent searches read the index below the watermark and *scan* the tail (open and
//!   post-filter each entry with the same extraction code), so their results are complete
//!   and exact at every moment; the tail scan is bounded by the lag.

use std::collections::VecDeque;

use heed::{RoTxn, RwTxn};
use serde_json::Value;

use super::error::{StoreError, StoreResult};
use super::route::Component;
use super::writer::{Staged, StagedOp};
use super::{Store, slot};

/// `meta` key of the watermark.
pub(crate) const META_AUDIT_INDEXED: &[u8] = b"audit-indexed";

/// Most tail entries filed by one idle-time indexing commit (bounds how long a request that
/// arrives meanwhile waits for the writer).
pub const IDLE_CHUNK: usize = 1024;

/// Fewest tail entries filed inside a group commit once the tail exceeds the lag.
pub const FORCED_MIN: u64 = 256;

/// The writer's deferred audit indexer: the watermark and the index keys of the tail.
#[derive(Debug, Default)]
pub(crate) struct AuditIndexer {
    /// Every log entry below this index is filed in `audit.index`.
    pub indexed: u64,
    /// Index keys of the entries `indexed..`, in log order (contiguous).
    pending: VecDeque<(u64, Vec<Vec<u8>>)>,
}

impl AuditIndexer {
    /// Loads the watermark and rebuilds the tail's keys from the log (`size` = log size).
    pub fn load(store: &Store, txn: &RoTxn, size: u64) -> StoreResult<Self> {
        let indexed = store.audit_indexed_in(txn, size)?;
        let mut pending = VecDeque::new();
        for i in indexed..size {
            let entry = store.audit_entry_in(txn, i)?;
            pending.push_back((i, event_index_keys(store, &entry.bytes)?));
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

    /// Stages the index puts of the oldest `n` tail entries and the moved watermark (to be
    /// committed with `wtxn`); [`AuditIndexer::filed`] completes it after the commit.
    pub fn stage<'a>(
        &'a self,
        store: &Store,
        wtxn: &mut RwTxn,
        staged: &mut Staged<'a>,
        n: usize,
    ) -> StoreResult<()> {
        use std::borrow::Cow::Borrowed;
        let c = Component::Audit;
        let db = store.dbs(c).index;
        for (_, keys) in self.pending.iter().take(n) {
            for k in keys {
                staged.push(
                    slot::index(c),
                    db,
                    Borrowed(k.as_slice()),
                    StagedOp::Put(Borrowed(&[])),
                );
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
    pub fn filed(&mut self, n: usize, fresh: Vec<(u64, Vec<Vec<u8>>)>) {
        self.pending.drain(..n.min(self.pending.len()));
        self.indexed += n as u64;
        self.pending.extend(fresh);
    }
}

/// The blind index keys of a logged AuditEvent (its JCS bytes).
pub(crate) fn event_index_keys(store: &Store, bytes: &[u8]) -> StoreResult<Vec<Vec<u8>>> {
    let event: Value = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Audit(format!("logged AuditEvent is not JSON: {e}")))?;
    let id = event
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::Audit("logged AuditEvent has no id".into()))?;
    Ok(store
        .index_keys(Component::Audit, "AuditEvent", id, &event)
        .into_iter()
        .collect())
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

    /// Number of audit log entries not yet filed in the search index (for metrics and tests).
    pub fn audit_unindexed(&self) -> StoreResult<u64> {
        self.with_read(|txn| {
            let size = self.frontier_in(txn)?.size();
            Ok(size - self.audit_indexed_in(txn, size)?)
        })
    }
}
