//! Per-key token-bucket rate limits with bounded memory.
//!
//! The FHIR API limits each client (the bearer token's client id) and the token endpoint
//! limits each IP address. A [`RateLimiter`] keeps one bucket per key, refilled at `rate`
//! tokens per second up to `burst`. It tracks at most `max_keys` keys: when full it first
//! forgets the buckets that have refilled completely (they are indistinguishable from a
//! fresh one), and if none has, the least recently seen key. So memory is bounded whatever
//! the number of keys a client can invent; the price of eviction under a flood of keys is
//! that an evicted key starts again with a full bucket (the limit is then approximate,
//! never a refusal of a key merely because the table is full).
//!
//! Time is a parameter ([`RateLimiter::check_at`]) so the arithmetic is tested without
//! sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A refused request: how long until one token is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until the next token (at least 1), for `Retry-After`.
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets keyed by client id or IP address.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter of `rate` requests per second with bursts of `burst`, tracking at most
    /// `max_keys` keys. `rate == 0` disables it (every request passes).
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Self {
        RateLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the limiter is on.
    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes one token for `key` now.
    pub fn check(&self, key: &str) -> Result<(), Limited> {
        self.check_at(key, Instant::now())
    }

    /// Takes one token for `key` at time `now`.
    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), Limited> {
        if !self.enabled() {
            return Ok(());
        }
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= self.max_keys {
            self.evict(&mut map, now);
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / self.rate;
            Err(Limited {
                retry_after_secs: Duration::from_secs_f64(wait).as_secs().max(1),
            })
        }
    }

    /// Makes room for one key: drops every bucket that has refilled, else the stalest.
    fn evict(&self, map: &mut HashMap<String, Bucket>, now: Instant) {
        let before = map.len();
        map.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.rate < self.burst
        });
        if map.len() < before {
            return;
        }
        if let Some(oldest) = map
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }

    /// Number of keys tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills_at_the_rate() {
        let l = RateLimiter::new(10, 3, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_at("a", t0).is_ok());
        }
        let e = l.check_at("a", t0).unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
        // Another key has its own bucket.
        assert!(l.check_at("b", t0).is_ok());
        // 100 ms later one token is back, not two.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at("a", t1).is_ok());
        assert!(l.check_at("a", t1).is_err());
    }

    #[test]
    fn retry_after_reflects_a_slow_rate() {
        let l = RateLimiter::new(1, 1, 10);
        let t0 = Instant::now();
        assert!(l.check_at("ip", t0).is_ok());
        assert_eq!(l.check_at("ip", t0).unwrap_err().retry_after_secs, 1);
        let slow = RateLimiter::new(1, 1, 10);
        assert!(slow.check_at("ip", t0).is_ok());
        // Half a second later, half a token: wait is still reported as a whole second.
        let e = slow
            .check_at("ip", t0 + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(e.retry_after_secs, 1);
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let l = RateLimiter::new(1, 5, 64);
        let t0 = Instant::now();
        for i in 0..10_000 {
            // Every key spends a token, so none is "refilled" and eviction takes the oldest.
            let _ = l.check_at(&format!("k{i}"), t0 + Duration::from_micros(i));
            assert!(l.tracked() <= 64);
        }
        assert_eq!(l.tracked(), 64);
        // k0 was evicted as the oldest, so it starts again with a full bucket (the
        // documented price of a bounded table), never a refusal.
        assert!(l.check_at("k0", t0 + Duration::from_millis(20)).is_ok());
    }

    #[test]
    fn refilled_buckets_are_dropped_first() {
        let l = RateLimiter::new(100, 2, 2);
        let t0 = Instant::now();
        assert!(l.check_at("hot", t0).is_ok());
        assert!(l.check_at("hot", t0).is_ok());
        assert!(l.check_at("idle", t0).is_ok());
        // 1 s later "idle" has refilled; "hot" is re-limited just before the new key.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check_at("hot", t1).is_ok());
        assert!(l.check_at("hot", t1).is_ok());
        assert!(l.check_at("new", t1).is_ok());
        assert!(l.check_at("hot", t1).is_err(), "the limited key was kept");
    }

    #[test]
    fn zero_rate_disables() {
        let l = RateLimiter::new(0, 0, 1);
        for _ in 0..100 {
            assert!(l.check("x").is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }
}
