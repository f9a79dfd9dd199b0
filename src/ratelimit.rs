//! Per-client token buckets for the routes that guess passwords or mint accounts (login, register,
//! refresh). Per node: a cluster of N nodes allows up to N times the rate, which is still a wall
//! against brute force and cheap to keep (no Redis round trip on the login path).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::ApiError;

pub struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
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
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > MAX_TRACKED {
            let (per_s, burst) = (self.per_s, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_s < burst);
        }
        let (tokens, at) = buckets.entry(client.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_s).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError::RateLimited(((1.0 - *tokens) / self.per_s).ceil().max(1.0) as u64))
        }
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
}
