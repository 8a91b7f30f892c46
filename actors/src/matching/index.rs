//! An in-memory blocking index: the reference for what the store does over LMDB.
//!
//! [`MemoryIndex`] files each record under its [`blocking_keys`], and answers a query by
//! scoring the union of the blocks the query's keys name. Tests measure matching quality
//! through it and benches measure search latency with it; the client registry does the
//! same with a blind-indexed LMDB table of key → patient ids.

use std::collections::HashMap;

use super::blocking::{blocking_keys, search_keys};
use super::demographics::Demographics;
use super::frequency::NameCounts;
use super::score::{FixedWeights, MatchScore, score_with};

/// Default [`MemoryIndex::max_block`]: blocks larger than this are skipped at query time.
pub const DEFAULT_MAX_BLOCK: usize = 20_000;

/// A scored candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Id returned by [`MemoryIndex::insert`].
    pub id: u32,
    /// Its score against the query.
    pub score: MatchScore,
}

/// Records and their blocks, in memory.
#[derive(Debug, Clone)]
pub struct MemoryIndex {
    records: Vec<Demographics>,
    blocks: HashMap<String, Vec<u32>>,
    counts: NameCounts,
    /// Blocks with more records than this are not searched: a key shared by that many
    /// records (a clinic's phone number entered for every patient) carries no identity.
    pub max_block: usize,
    /// Weigh names by their frequency in this index ([`score_with`] over
    /// [`NameCounts`]) rather than by the fixed table. On by default.
    pub frequency_weights: bool,
    /// Look up [`search_keys`] (name + neighbouring birth years) rather than only the
    /// [`blocking_keys`]. On by default.
    pub widen_years: bool,
}

impl Default for MemoryIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            records: Vec::new(),
            blocks: HashMap::new(),
            counts: NameCounts::new(),
            max_block: DEFAULT_MAX_BLOCK,
            frequency_weights: true,
            widen_years: true,
        }
    }

    /// Add a record and return its id (ids count up from 0; an in-memory index never
    /// holds `u32::MAX` records, past which ids would saturate).
    pub fn insert(&mut self, d: Demographics) -> u32 {
        let id = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        for k in blocking_keys(&d) {
            self.blocks.entry(k).or_default().push(id);
        }
        self.counts.add(&d);
        self.records.push(d);
        id
    }

    /// The record with id `id`.
    pub fn get(&self, id: u32) -> Option<&Demographics> {
        self.records.get(id as usize)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Number of distinct blocking keys, and the size of the largest block.
    pub fn block_stats(&self) -> (usize, usize) {
        (
            self.blocks.len(),
            self.blocks.values().map(Vec::len).max().unwrap_or(0),
        )
    }

    /// Name frequencies over the records, as [`search`](Self::search) weighs names.
    pub fn name_counts(&self) -> &NameCounts {
        &self.counts
    }

    /// Ids of the records filed under one of `query`'s [`search_keys`] (or only its
    /// [`blocking_keys`] when `widen_years` is off), sorted.
    pub fn candidates(&self, query: &Demographics) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        let keys = if self.widen_years {
            search_keys(query)
        } else {
            blocking_keys(query)
        };
        for k in keys {
            if let Some(block) = self.blocks.get(&k)
                && block.len() <= self.max_block
            {
                ids.extend_from_slice(block);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Candidates scoring at least `threshold`, best first.
    pub fn search(&self, query: &Demographics, threshold: f64) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self
            .candidates(query)
            .into_iter()
            .filter_map(|id| {
                let candidate = self.get(id)?;
                let s = if self.frequency_weights {
                    score_with(query, candidate, &self.counts)
                } else {
                    score_with(query, candidate, &FixedWeights)
                };
                s.is_match(threshold).then_some(Candidate { id, score: s })
            })
            .collect();
        out.sort_by(|a, b| {
            b.score
                .score
                .total_cmp(&a.score.score)
                .then(a.id.cmp(&b.id))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::demographics::BirthDate;
    use crate::matching::score::DEFAULT_THRESHOLD;

    #[test]
    fn finds_the_duplicate_only() {
        let mut ix = MemoryIndex::new();
        let d = BirthDate::ymd(1990, 3, 4);
        let alice = ix.insert(
            Demographics::builder()
                .given("Alice")
                .family("Uwase")
                .birth_date(d)
                .build(),
        );
        ix.insert(
            Demographics::builder()
                .given("Claudine")
                .family("Uwase")
                .birth_date(BirthDate::ymd(1990, 9, 9))
                .build(),
        );
        ix.insert(
            Demographics::builder()
                .given("Eric")
                .family("Habimana")
                .birth_date(d)
                .build(),
        );
        let q = Demographics::builder()
            .given("Uwase")
            .family("Alise")
            .birth_date(BirthDate::ymd(1990, 4, 3))
            .build();
        let found = ix.search(&q, DEFAULT_THRESHOLD);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].id, alice);
        assert_eq!(ix.len(), 3);
        assert!(
            ix.candidates(&q).contains(&1),
            "Claudine shares the Uwase+1990 block"
        );
    }

    #[test]
    fn oversized_blocks_are_skipped() {
        let mut ix = MemoryIndex::new();
        ix.max_block = 2;
        for given in ["Alice", "Eric", "Jean"] {
            ix.insert(
                Demographics::builder()
                    .given(given)
                    .family("Kalisa")
                    .phone("0788000000")
                    .build(),
            );
        }
        let q = Demographics::builder()
            .given("Paul")
            .family("Gatete")
            .phone("0788000000")
            .build();
        assert!(ix.candidates(&q).is_empty());
        assert_eq!(ix.block_stats().1, 3);
    }
}
