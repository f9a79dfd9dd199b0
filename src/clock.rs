//! Wall-clock time as Unix timestamps: token expiry (seconds), presence leases (ms), bus transit
//! and fan-out latency (µs). One reading of the system clock, three units. A clock set before 1970
//! reads as 0 rather than failing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

pub fn unix_ms() -> i64 {
    since_epoch().as_millis() as i64
}

pub fn unix_us() -> i64 {
    since_epoch().as_micros() as i64
}
