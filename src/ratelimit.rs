//! Token buckets, kept in this node's memory: one per WebSocket session (its frame rate), and one per
//! client address for the routes that guess passwords or mint accounts (login, register, refresh).
//! The per-address limit is per node: a cluster of N nodes allows up to N times the rate, which is
//! still a wall against brute force and costs no Redis round trip on the login path. Budgets that
//! must hold across the cluster are in `limits`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;

/// `burst` tokens, refilled at `per_s` a second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    per_s: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_s: f64, burst: f64) -> Self {
        TokenBucket { tokens: burst, per_s, burst, at: Instant::now() }
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s).min(self.burst);
        self.at = now;
    }

    /// Takes a token, or says in how many whole seconds (at least 1) one will be free.
    pub fn take(&mut self) -> Result<(), u64> {
        self.refill(Instant::now());
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_s).ceil().max(1.0) as u64)
        }
    }

    /// Whether the bucket has refilled completely by `now` (then forgetting it changes nothing).
    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s >= self.burst
    }
}

/// Buckets per client key.
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, TokenBucket>>,
    per_s: f64,
    burst: f64,
}

/// Beyond this many tracked clients, buckets that have refilled are forgotten.
const MAX_TRACKED: usize = 100_000;

impl RateLimiter {
    pub fn per_minute(per_minute: u32) -> Self {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            per_s: per_minute as f64 / 60.0,
            burst: per_minute.max(1) as f64,
        }
    }

    /// Takes one token for `client`, or says how long until one is free (429 with Retry-After).
    pub fn check(&self, client: &str) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > MAX_TRACKED {
            let now = Instant::now();
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let (per_s, burst) = (self.per_s, self.burst);
        let bucket = buckets.entry(client.to_owned()).or_insert_with(|| TokenBucket::new(per_s, burst));
        bucket.take().map_err(ApiError::RateLimited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_budget_is_told_when_to_retry() {
        let limiter = RateLimiter::per_minute(3);
        for _ in 0..3 {
            assert!(limiter.check("10.0.0.1").is_ok());
        }
        assert!(matches!(limiter.check("10.0.0.1"), Err(ApiError::RateLimited(20))));
        assert!(limiter.check("10.0.0.2").is_ok(), "another client has its own bucket");
    }

    #[test]
    fn a_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut bucket = TokenBucket::new(1000.0, 2.0);
        assert!(bucket.take().is_ok() && bucket.take().is_ok());
        assert_eq!(bucket.take(), Err(1), "empty: retry in at least a second");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(bucket.take().is_ok(), "refilled");
        assert!(bucket.is_full(Instant::now() + std::time::Duration::from_secs(1)));
    }
}
