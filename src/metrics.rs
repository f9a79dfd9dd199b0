//! Prometheus metrics, declared once: in `metrics!` below, each metric's doc comment is its HELP
//! text and its field name is its name (under the registry's `chorus_` prefix), as crates.io does.
//! Names follow Prometheus conventions (base units, `_total` for counters, few label values); the
//! node is labelled by the scrape target, not by a label of its own.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s: fan-out is sub-millisecond when healthy, seconds when not.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How each kind of metric is made from its name, help text and label names.
trait Build: Collector + Clone + Sized + 'static {
    fn build(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self>;
}

impl Build for IntGauge {
    fn build(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        IntGauge::new(name, help)
    }
}

impl Build for IntCounter {
    fn build(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        IntCounter::new(name, help)
    }
}

impl Build for IntCounterVec {
    fn build(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        IntCounterVec::new(Opts::new(name, help), labels)
    }
}

impl Build for Histogram {
    fn build(name: &str, help: &str, _: &[&str]) -> prometheus::Result<Self> {
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
    }
}

impl Build for HistogramVec {
    fn build(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
    }
}

/// The doc comment's lines, as one HELP line.
fn help(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

macro_rules! metrics {
    ($($(#[doc = $doc:literal])+ $name:ident: $kind:ident $([$($label:literal),+])?,)*) => {
        pub struct Metrics {
            registry: Registry,
            $($(#[doc = $doc])+ pub $name: $kind,)*
        }

        impl Metrics {
            pub fn new() -> prometheus::Result<Self> {
                let registry = Registry::new_custom(Some("chorus".into()), None)?;
                Ok(Metrics {
                    $($name: {
                        let metric = <$kind as Build>::build(
                            stringify!($name),
                            &help(&[$($doc),+]),
                            &[$($($label),+)?],
                        )?;
                        registry.register(Box::new(metric.clone()))?;
                        metric
                    },)*
                    registry,
                })
            }
        }
    };
}

metrics! {
    /// Real-time sessions (WebSocket and Socket.IO) open on this node.
    ws_connections: IntGauge,
    /// Real-time sessions (WebSocket and Socket.IO) opened.
    ws_connects_total: IntCounter,
    /// Engine.IO sessions open on this node (Socket.IO clients, whether connected to `/` yet or not).
    socketio_engines: IntGauge,
    /// Real-time sessions closed, by reason (client, token_expired, token_revoked, too_many_sessions, slow_consumer, heartbeat_timeout, draining, error).
    ws_disconnects_total: IntCounterVec["reason"],
    /// Client frames received, by outcome (ok, invalid, rate_limited).
    ws_frames_total: IntCounterVec["outcome"],
    /// Messages submitted by clients (REST or WebSocket).
    messages_received_total: IntCounter,
    /// Messages newly committed to PostgreSQL.
    messages_persisted_total: IntCounter,
    /// Group commit: batches of sends written to PostgreSQL (one statement and one transaction each).
    db_send_batches_total: IntCounter,
    /// Group commit: messages in those batches (divided by the batches: the mean batch size).
    db_send_batched_messages_total: IntCounter,
    /// Group commit: messages waiting for a writer to take them into a batch.
    db_send_queued: IntGauge,
    /// Frames queued to local sockets by the fan-out.
    fanout_frames_total: IntCounter,
    /// Events shed under backpressure (typing, presence) instead of being queued.
    fanout_shed_total: IntCounter,
    /// Seconds from a message's commit (on any node) to its frame being queued to a local socket.
    fanout_latency_seconds: Histogram,
    /// Seconds from a bus publish to its arrival at this node's subscriber.
    bus_transit_seconds: Histogram,
    /// Redis PUBLISH failures (the message is stored; delivery falls back to PostgreSQL catch-up).
    redis_publish_errors_total: IntCounter,
    /// Pub/sub connection failures: a lost connection, a failed reconnect, a failed SUBSCRIBE/UNSUBSCRIBE.
    redis_subscribe_errors_total: IntCounter,
    /// Times this node's pub/sub connection was (re)established.
    redis_reconnects_total: IntCounter,
    /// 1 while this node's pub/sub connection is up.
    redis_connected: IntGauge,
    /// Redis channels this node is subscribed to.
    subscribed_channels: IntGauge,
    /// Sessions closed because their outbound queue overflowed.
    slow_consumer_closes_total: IntCounter,
    /// Messages delivered from PostgreSQL to fill a gap (out-of-order arrival, bus outage, late subscription).
    gap_filled_messages_total: IntCounter,
    /// PostgreSQL polls made while the bus was down (degraded mode).
    degraded_polls_total: IntCounter,
    /// Presence lease renewals sent to Redis.
    presence_heartbeats_total: IntCounter,
    /// PostgreSQL pool: connections open.
    db_pool_connections: IntGauge,
    /// PostgreSQL pool: connections checked out.
    db_pool_in_use_connections: IntGauge,
    /// PostgreSQL pool: requests waiting for a connection.
    db_pool_waiting_requests: IntGauge,
    /// Seconds a request waited for a pooled PostgreSQL connection.
    db_pool_wait_seconds: Histogram,
    /// History pages going back, by where they were read (replica, primary: the replica lacked the seq or the membership, or failed).
    db_replica_reads_total: IntCounterVec["source"],
    /// PostgreSQL query duration in seconds, by query (insert_message, insert_message_batch, read_messages, read_messages_replica, unreceived).
    db_query_duration_seconds: HistogramVec["query"],
    /// Requests refused by a per-user cost limit, by budget (send, room_create, direct_open, room_password).
    limited_total: IntCounterVec["budget"],
    /// HTTP requests, by route template, method (`OTHER` for any method outside the standard ones) and status.
    http_requests_total: IntCounterVec["route", "method", "status"],
    /// HTTP request duration in seconds, by route template.
    http_request_duration_seconds: HistogramVec["route"],
}

impl Metrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_metric_is_exported_under_its_field_name_with_its_doc_as_help() {
        let metrics = Metrics::new().expect("metrics register");
        metrics.db_pool_connections.set(3);
        metrics.ws_disconnects_total.with_label_values(&["client"]).inc();
        let text = metrics.render();
        assert!(text.contains("# HELP chorus_db_pool_connections PostgreSQL pool: connections open."), "{text}");
        assert!(text.contains("chorus_db_pool_connections 3"));
        assert!(text.contains(r#"chorus_ws_disconnects_total{reason="client"} 1"#));
    }
}
