//! Counters and latency histograms shared by every connection task, the once-a-second progress
//! line, and the final report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microsecond histograms up to 60 s with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub send_errors: AtomicU64,
    pub delivered: AtomicU64,
    pub recovered: AtomicU64,
    pub drops: AtomicU64,
    pub duplicates: AtomicU64,
    /// Arrived after a higher seq (the Socket.IO peer reorders under racing senders; Chorus must not).
    pub reordered: AtomicU64,
    pub connected: AtomicU64,
    pub connect_failures: AtomicU64,
    pub disconnects: AtomicU64,
    pub reconnects: AtomicU64,
    pub protocol_errors: AtomicU64,
}

pub struct Stats {
    pub counters: Counters,
    /// Publish → receipt, every delivery of the run (µs).
    pub latency: Mutex<Histogram<u64>>,
    /// Publish → receipt, the current progress window (µs).
    pub window: Mutex<Histogram<u64>>,
    /// Send → acknowledgement (µs).
    pub ack_latency: Mutex<Histogram<u64>>,
    /// TCP connect + upgrade + first server frame (µs).
    pub connect_time: Mutex<Histogram<u64>>,
    pub timeline: Mutex<Vec<Second>>,
    pub started: Instant,
}

/// One line of the latency-over-time series.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub connections: u64,
}

impl Stats {
    pub fn new() -> Self {
        Stats {
            counters: Counters::default(),
            latency: Mutex::new(histogram()),
            window: Mutex::new(histogram()),
            ack_latency: Mutex::new(histogram()),
            connect_time: Mutex::new(histogram()),
            timeline: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    pub fn record_delivery(&self, latency_us: u64) {
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        let v = latency_us.clamp(1, 60_000_000);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(v);
        }
        if let Ok(mut h) = self.window.lock() {
            let _ = h.record(v);
        }
    }

    pub fn record(&self, which: &Mutex<Histogram<u64>>, micros: u64) {
        if let Ok(mut h) = which.lock() {
            let _ = h.record(micros.clamp(1, 60_000_000));
        }
    }

    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Quantiles of a histogram in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn quantiles(h: &Histogram<u64>) -> Quantiles {
    let ms = |us: u64| us as f64 / 1000.0;
    Quantiles {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.5)),
        p90_ms: ms(h.value_at_quantile(0.9)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// Prints one progress line per second and appends it to the timeline, until `stop` resolves.
pub async fn progress(stats: &Stats, label: &str, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    let (mut last_sent, mut last_delivered, mut last_at) = (0u64, 0u64, Instant::now());
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let c = &stats.counters;
        let (sent, delivered) = (stats.get(&c.sent), stats.get(&c.delivered));
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        last_at = Instant::now();
        let q = match stats.window.lock() {
            Ok(mut w) => {
                let q = quantiles(&w);
                w.reset();
                q
            }
            Err(_) => Quantiles::default(),
        };
        let second = Second {
            t: stats.started.elapsed().as_secs_f64(),
            sent_per_s: (sent - last_sent) as f64 / dt,
            delivered_per_s: (delivered - last_delivered) as f64 / dt,
            p50_ms: q.p50_ms,
            p99_ms: q.p99_ms,
            max_ms: q.max_ms,
            connections: stats.get(&c.connected),
        };
        (last_sent, last_delivered) = (sent, delivered);
        eprintln!(
            "[{label} {:>5.0}s] conns {:>6}  sent/s {:>8.0}  delivered/s {:>9.0}  p50 {:>7.2} ms  p99 {:>8.2} ms  drops {}  errors {}",
            second.t,
            second.connections,
            second.sent_per_s,
            second.delivered_per_s,
            second.p50_ms,
            second.p99_ms,
            stats.get(&c.drops),
            stats.get(&c.send_errors) + stats.get(&c.connect_failures) + stats.get(&c.protocol_errors),
        );
        if let Ok(mut t) = stats.timeline.lock() {
            t.push(second);
        }
    }
}
