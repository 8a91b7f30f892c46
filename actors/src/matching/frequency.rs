//! Name frequencies counted over a registry, for [`score_with`](super::score_with).
//!
//! The store keeps the same counts (one counter per phonetic key, plus the number of
//! patients) next to its blocking index and updates them in the write transaction.

use std::collections::HashMap;

use super::demographics::Demographics;
use super::score::NameFrequencies;

/// Below this many records frequencies are too noisy to use; the fixed weights apply.
pub const MIN_RECORDS_FOR_FREQUENCIES: u64 = 1_000;

/// Count of records per name phonetic key.
#[derive(Debug, Clone, Default)]
pub struct NameCounts {
    counts: HashMap<String, u32>,
    records: u64,
}

impl NameCounts {
    /// No records yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The distinct phonetic keys of `d`'s name words (given and family together, since
    /// names are often recorded the other way round).
    pub fn keys(d: &Demographics) -> Vec<&str> {
        let mut keys: Vec<&str> = Vec::new();
        for w in d.family.iter().chain(&d.given) {
            if !w.key.is_empty() && !keys.contains(&w.key.as_str()) {
                keys.push(&w.key);
            }
        }
        keys
    }

    /// Count a record.
    pub fn add(&mut self, d: &Demographics) {
        for k in Self::keys(d) {
            *self.counts.entry(k.to_string()).or_default() += 1;
        }
        self.records += 1;
    }

    /// Uncount a record previously added (on update or delete).
    pub fn remove(&mut self, d: &Demographics) {
        for k in Self::keys(d) {
            if let Some(c) = self.counts.get_mut(k) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.counts.remove(k);
                }
            }
        }
        self.records = self.records.saturating_sub(1);
    }

    /// Records counted.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records having a name word with phonetic key `key`.
    pub fn count(&self, key: &str) -> u32 {
        self.counts.get(key).copied().unwrap_or(0)
    }
}

impl NameFrequencies for NameCounts {
    fn frequency(&self, key: &str) -> Option<f64> {
        if self.records < MIN_RECORDS_FOR_FREQUENCIES {
            return None;
        }
        // A key nobody has is as rare as one record: never divide by zero.
        Some(f64::from(self.count(key).max(1)) / self.records as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::score::{score, score_with};

    #[test]
    fn counts_and_frequencies() {
        let mut c = NameCounts::new();
        let common = Demographics::builder()
            .given("Jean")
            .family("Habimana")
            .build();
        let rare = Demographics::builder()
            .given("Wellars")
            .family("Nzabonimpa")
            .build();
        for _ in 0..990 {
            c.add(&common);
        }
        assert_eq!(c.frequency("ABMN"), None, "too few records");
        for _ in 0..10 {
            c.add(&rare);
        }
        assert_eq!(c.records(), 1000);
        assert_eq!(c.count("ABMN"), 990);
        assert!((c.frequency("ABMN").unwrap() - 0.99).abs() < 1e-9);
        assert!((c.frequency("NOBODY").unwrap() - 0.001).abs() < 1e-9);
        // Agreement on a rare name weighs more than on a common one.
        let s_common = score_with(&common, &common.clone(), &c);
        let s_rare = score_with(&rare, &rare.clone(), &c);
        assert!(
            s_rare.fields.names > s_common.fields.names + 6.0,
            "{s_rare:?} {s_common:?}"
        );
        // Without counts, the fixed table.
        assert_eq!(score(&common, &common.clone()).fields.names, 13.0);
        c.remove(&rare);
        assert_eq!(c.count("NZBNMP"), 9);
        assert_eq!(c.records(), 999);
    }
}
