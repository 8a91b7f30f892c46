//! Patient matching over the store: the client registry's integration of
//! [`crate::matching`].
//!
//! Every Patient version is filed in the blind index under its matching blocking keys
//! (field `Patient.$match`, same index as search, so updates and deletes move the entries).
//! A `$match` query computes the query's blocking keys, collects the ids filed under them
//! (skipping blocks larger than [`crate::matching::index::DEFAULT_MAX_BLOCK`], which carry no
//! identity), opens each candidate and scores it with [`crate::matching::score`].

use std::collections::BTreeSet;

use heed::RoTxn;
use serde_json::Value;

use super::error::StoreResult;
use super::route::Component;
use super::{Record, Store, format};
use crate::matching::index::DEFAULT_MAX_BLOCK;
use crate::matching::{Demographics, MatchScore, blocking_keys, score};

/// Blind-index field of the matching blocking keys.
pub const MATCH_FIELD: &str = "Patient.$match";

/// The `(field, term)` pairs a Patient is filed under for matching.
pub fn match_terms(resource: &Value) -> Vec<(String, String)> {
    blocking_keys(&Demographics::from_patient(resource))
        .into_iter()
        .map(|k| (MATCH_FIELD.to_string(), k))
        .collect()
}

/// A scored match.
#[derive(Debug, Clone, PartialEq)]
pub struct PatientMatch {
    /// The candidate's current version.
    pub record: Record,
    /// Its score against the query.
    pub score: MatchScore,
}

impl Store {
    /// Candidates for `patient` scoring at least `min_score` (or sharing an identifier),
    /// best first, at most `count`.
    pub fn match_patients(
        &self,
        patient: &Value,
        min_score: f64,
        count: usize,
    ) -> StoreResult<Vec<PatientMatch>> {
        self.with_read(|txn| self.match_patients_in(txn, patient, min_score, count))
    }

    pub(crate) fn match_patients_in(
        &self,
        txn: &RoTxn,
        patient: &Value,
        min_score: f64,
        count: usize,
    ) -> StoreResult<Vec<PatientMatch>> {
        let q = Demographics::from_patient(patient);
        let dbs = self.dbs(Component::Patient);
        let mut ids = BTreeSet::new();
        for key in blocking_keys(&q) {
            let blind = self.blind(Component::Patient, MATCH_FIELD, &key);
            let prefix = format::index_prefix("Patient", &blind);
            let mut block = Vec::new();
            for item in dbs.index.prefix_iter(txn, &prefix)? {
                let (k, _) = item?;
                block.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
                if block.len() > DEFAULT_MAX_BLOCK {
                    break;
                }
            }
            // And the block's members still in the index journal, as of this snapshot (the
            // client registry's postings are journaled, see `journal`). While a filing runs
            // a posting may be in both, so those already found (in id order) are skipped.
            if block.len() <= DEFAULT_MAX_BLOCK {
                let filed = block.len();
                self.journal.postings(txn.id() as u64, &prefix, |id| {
                    let id = String::from_utf8_lossy(id).into_owned();
                    if block[..filed].binary_search(&id).is_err() {
                        block.push(id);
                    }
                });
            }
            if block.len() <= DEFAULT_MAX_BLOCK {
                ids.extend(block);
            }
        }
        let mut out = Vec::new();
        for id in ids {
            let Ok(record) = self.read_in(txn, "Patient", &id) else {
                continue;
            };
            let s = score(&q, &Demographics::from_patient(&record.resource));
            if s.identifier_match || s.score >= min_score {
                out.push(PatientMatch { record, score: s });
            }
        }
        out.sort_by(|a, b| {
            b.score
                .score
                .total_cmp(&a.score.score)
                .then_with(|| a.record.id.cmp(&b.record.id))
        });
        out.truncate(count);
        Ok(out)
    }
}
