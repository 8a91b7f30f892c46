//! The `jti` replay cache: each (client, jti) is accepted once while its assertion lives.
//!
//! Entries expire with their assertion's `exp` (at most five minutes), and the cache holds
//! at most `capacity` live entries; when full of unexpired entries it refuses new
//! assertions ([`AuthError::Busy`]) rather than forgetting one, which could allow a replay.

use std::collections::{BTreeSet, HashSet};

use super::AuthError;

/// Seen assertion ids with their expiry.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    capacity: usize,
    seen: HashSet<(String, String)>,
    by_exp: BTreeSet<(u64, String, String)>,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` live entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: HashSet::new(),
            by_exp: BTreeSet::new(),
        }
    }

    /// Records `(client, jti)` valid until `exp`; errors if it was already seen.
    pub(crate) fn check_and_insert(
        &mut self,
        client: &str,
        jti: &str,
        exp: u64,
        now: u64,
    ) -> Result<(), AuthError> {
        self.purge(now);
        let key = (client.to_owned(), jti.to_owned());
        if self.seen.contains(&key) {
            return Err(AuthError::InvalidClient(
                "JWT jti was already used (replayed assertion)".into(),
            ));
        }
        if self.seen.len() >= self.capacity {
            return Err(AuthError::Busy);
        }
        self.by_exp.insert((exp, key.0.clone(), key.1.clone()));
        self.seen.insert(key);
        Ok(())
    }

    /// Drops entries whose assertion has expired (`exp <= now`).
    fn purge(&mut self, now: u64) {
        while let Some(first) = self.by_exp.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, c, j)) = self.by_exp.pop_first() {
                self.seen.remove(&(c, j));
            }
        }
    }

    /// Live entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_then_expires_and_bounded() {
        let mut c = ReplayCache::new(2);
        c.check_and_insert("a", "1", 100, 0).unwrap();
        assert!(matches!(
            c.check_and_insert("a", "1", 100, 50),
            Err(AuthError::InvalidClient(_))
        ));
        c.check_and_insert("b", "1", 200, 50).unwrap(); // same jti, other client
        assert_eq!(c.check_and_insert("c", "1", 200, 50), Err(AuthError::Busy));
        // At 100 the first entry has expired (its assertion would be rejected as expired).
        c.check_and_insert("c", "1", 200, 100).unwrap();
        assert_eq!(c.len(), 2);
    }
}
