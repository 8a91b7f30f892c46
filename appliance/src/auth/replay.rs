//! The `jti` replay cache: each (client, jti) is accepted once while its assertion lives.
//!
//! Entries expire with their assertion's `exp` (at most five minutes). The cache holds at
//! most `capacity` live entries, and at most `per_client` for any one client so that one
//! client cannot lock out the others; when a limit is reached it refuses new assertions
//! ([`AuthError::Busy`], [`AuthError::RateLimited`]) rather than forgetting one, which could
//! allow a replay. Only assertions whose signature verified reach the cache.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::AuthError;

/// Seen assertion ids with their expiry.
#[derive(Debug)]
pub(crate) struct ReplayCache {
    capacity: usize,
    per_client: usize,
    seen: HashSet<(String, String)>,
    live_per_client: HashMap<String, usize>,
    by_exp: BTreeSet<(u64, String, String)>,
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` live entries, `per_client` per client.
    pub(crate) fn new(capacity: usize, per_client: usize) -> Self {
        Self {
            capacity,
            per_client,
            seen: HashSet::new(),
            live_per_client: HashMap::new(),
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
        let live = self.live_per_client.entry(key.0.clone()).or_insert(0);
        if *live >= self.per_client {
            return Err(AuthError::RateLimited);
        }
        *live += 1;
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
                if let Some(n) = self.live_per_client.get_mut(&c) {
                    *n -= 1;
                    if *n == 0 {
                        self.live_per_client.remove(&c);
                    }
                }
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
        let mut c = ReplayCache::new(2, 2);
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

    #[test]
    fn one_client_cannot_fill_the_cache() {
        let mut c = ReplayCache::new(10, 2);
        c.check_and_insert("a", "1", 100, 0).unwrap();
        c.check_and_insert("a", "2", 150, 0).unwrap();
        assert_eq!(
            c.check_and_insert("a", "3", 100, 0),
            Err(AuthError::RateLimited)
        );
        c.check_and_insert("b", "1", 300, 0).unwrap();
        // Once "a"'s first assertion expires, it may present another.
        c.check_and_insert("a", "3", 200, 100).unwrap();
        assert_eq!(
            c.check_and_insert("a", "4", 200, 100),
            Err(AuthError::RateLimited)
        );
        assert_eq!(c.len(), 3);
    }
}
