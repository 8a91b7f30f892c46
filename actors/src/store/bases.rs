//! What the next version of a resource needs from the version it replaces, kept for
//! recently written versions.
//!
//! A new version's index keys are its terms' keys minus its base's, and the write policy
//! looks at who wrote the base. Without this cache each update opens its base (an AEAD
//! open), parses its JSON and derives its index terms again (blind hashes, and for a
//! Patient its matching keys); an update over HTTP did that twice, once more for the
//! write-policy check before the body is validated. That was about a tenth of an update's
//! CPU.
//!
//! **Why a hit is the base's own facts.** Entries are keyed by the version's key (its
//! stamp key, unique to the version since format 6) and carry the identity of the sealed
//! value they were derived from: its random 24-byte nonce, its 16-byte tag and its length.
//! A lookup reads the stored sealed value (it does not open it) and uses the entry only if
//! that identity matches. Facts are put when a version is prepared, before its commit, so
//! a version that lost its race (a conflict) may leave an entry behind, under a key no
//! stored version has (up to format 5 it was the winner's key, and the nonce told them
//! apart). A restored or otherwise rewritten store has other sealed values, and misses
//! too. What
//! the identity does not cover is a stored value altered between its nonce and its tag:
//! such a value no longer opens, every read of it fails as corrupt, and an update of it
//! proceeds from the facts of the version this appliance sealed.
//!
//! **Bounds.** Two generations: entries go into the young one; when it holds half of the
//! budget's bytes it becomes the old one and the previous old one is dropped. A lookup
//! looks in both. Memory stays under the budget; a miss costs what every update cost
//! before (the base is opened and its facts derived, then kept).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a new version needs from the version it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseFacts {
    /// `meta.source`: the facility that wrote it.
    pub source: Option<String>,
    /// An enrolment `Device` ([`super::policy::is_enrolment_device`]).
    pub enrolment_device: bool,
    /// The patients it belongs to ([`super::audit::patients_of`]): the AuditEvent of the
    /// version that replaces it names them too, so a record moved to another patient, or
    /// deleted, shows in the first patient's trail.
    pub patients: Vec<String>,
    /// Its blind index terms (none for a deletion), sorted and distinct. A posting's key is
    /// `type 0x00 blind id`, so within one resource this is also the order of its keys.
    pub blinds: Vec<[u8; 32]>,
}

impl BaseFacts {
    /// Bytes an entry of these facts under `key` holds (an estimate that includes the
    /// maps' overhead).
    fn footprint(&self, key: &[u8]) -> usize {
        128 + key.len()
            + self.blinds.len() * 32
            + self.source.as_ref().map_or(0, String::len)
            + self.patients.iter().map(|p| 24 + p.len()).sum::<usize>()
    }
}

/// The identity of a sealed value ([`hexa_crypto::seal::SealKey::seal`]'s output:
/// `nonce(24) ‖ ciphertext ‖ tag(16)`): its nonce, its tag and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SealedId {
    ends: [u8; 40],
    len: usize,
}

impl SealedId {
    /// `None` for a value too short to have been sealed.
    pub fn of(sealed: &[u8]) -> Option<Self> {
        if sealed.len() < 40 {
            return None;
        }
        let mut ends = [0u8; 40];
        ends[..24].copy_from_slice(&sealed[..24]);
        ends[24..].copy_from_slice(&sealed[sealed.len() - 16..]);
        Some(SealedId {
            ends,
            len: sealed.len(),
        })
    }
}

struct Entry {
    sealed: SealedId,
    facts: Arc<BaseFacts>,
    bytes: usize,
}

#[derive(Default)]
struct Generations {
    young: HashMap<Vec<u8>, Entry>,
    young_bytes: usize,
    old: HashMap<Vec<u8>, Entry>,
}

/// Facts of recently prepared versions, by version key ([`super::format::stamp_key`]).
pub(crate) struct BaseCache {
    budget: usize,
    gens: Mutex<Generations>,
}

impl BaseCache {
    /// A cache that holds at most about `budget` bytes; 0 keeps nothing.
    pub fn new(budget: usize) -> Self {
        BaseCache {
            budget,
            gens: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps stay consistent whatever panicked while holding the lock.
        self.gens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The facts of the version stored under `key` as `sealed`, if they were kept.
    pub fn get(&self, key: &[u8], sealed: &SealedId) -> Option<Arc<BaseFacts>> {
        if self.budget == 0 {
            return None;
        }
        let g = self.lock();
        g.young
            .get(key)
            .or_else(|| g.old.get(key))
            .filter(|e| e.sealed == *sealed)
            .map(|e| e.facts.clone())
    }

    /// Keeps the facts of the version sealed as `sealed` under `key`.
    pub fn put(&self, key: Vec<u8>, sealed: SealedId, facts: Arc<BaseFacts>) {
        let bytes = facts.footprint(&key);
        if bytes > self.budget / 2 {
            return;
        }
        let mut g = self.lock();
        // The dropped generation is freed after the lock is released.
        let mut dropped = None;
        if g.young_bytes + bytes > self.budget / 2 {
            let young = std::mem::take(&mut g.young);
            dropped = Some(std::mem::replace(&mut g.old, young));
            g.young_bytes = 0;
        }
        g.young_bytes += bytes;
        let entry = Entry {
            sealed,
            facts,
            bytes,
        };
        if let Some(replaced) = g.young.insert(key, entry) {
            g.young_bytes -= replaced.bytes;
        }
        drop(g);
        drop(dropped);
    }

    /// Entries held (both generations; an entry in both counts twice).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let g = self.lock();
        g.young.len() + g.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(n: usize) -> Arc<BaseFacts> {
        Arc::new(BaseFacts {
            source: Some("Organization/f".into()),
            enrolment_device: false,
            patients: vec!["Patient/p".into()],
            blinds: vec![[7u8; 32]; n],
        })
    }

    fn sealed(nonce: u8, tag: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[..24].fill(nonce);
        v[len - 16..].fill(tag);
        v
    }

    #[test]
    fn a_hit_needs_the_same_sealed_value() {
        let cache = BaseCache::new(1 << 20);
        let v = sealed(1, 2, 100);
        cache.put(b"k".to_vec(), SealedId::of(&v).unwrap(), facts(3));
        assert_eq!(cache.get(b"k", &SealedId::of(&v).unwrap()), Some(facts(3)));
        // Another nonce, another tag, another length, another key: all misses.
        for other in [sealed(9, 2, 100), sealed(1, 9, 100), sealed(1, 2, 101)] {
            assert_eq!(cache.get(b"k", &SealedId::of(&other).unwrap()), None);
        }
        assert_eq!(cache.get(b"j", &SealedId::of(&v).unwrap()), None);
        assert_eq!(SealedId::of(&[0u8; 39]), None);
        // A later put under the same key (a racing version) replaces the entry.
        let w = sealed(3, 4, 100);
        cache.put(b"k".to_vec(), SealedId::of(&w).unwrap(), facts(1));
        assert_eq!(cache.get(b"k", &SealedId::of(&v).unwrap()), None);
        assert_eq!(cache.get(b"k", &SealedId::of(&w).unwrap()), Some(facts(1)));
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let budget = 64 << 10;
        let cache = BaseCache::new(budget);
        let one = facts(4).footprint(b"key-00000");
        let v = sealed(1, 1, 64);
        for i in 0..10_000 {
            cache.put(
                format!("key-{i:05}").into_bytes(),
                SealedId::of(&v).unwrap(),
                facts(4),
            );
        }
        assert!(cache.len() * one <= budget, "{} entries", cache.len());
        // The most recent half of the budget is always there.
        let kept = budget / 2 / one;
        for i in (10_000 - kept)..10_000 {
            let key = format!("key-{i:05}").into_bytes();
            assert!(cache.get(&key, &SealedId::of(&v).unwrap()).is_some(), "{i}");
        }
        assert!(
            cache
                .get(b"key-00000", &SealedId::of(&v).unwrap())
                .is_none()
        );
        let off = BaseCache::new(0);
        off.put(b"k".to_vec(), SealedId::of(&v).unwrap(), facts(1));
        assert!(off.get(b"k", &SealedId::of(&v).unwrap()).is_none());
    }
}
