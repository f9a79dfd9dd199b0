//! Prometheus metrics, declared once. Each field's doc comment is its HELP text; names follow
//! Prometheus conventions (`chorus_` prefix, base units, `_total` for counters, few label values).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 10 s: fan-out is sub-millisecond when healthy, seconds when not.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

pub struct Metrics {
    registry: Registry,
    /// WebSocket sessions open on this node.
    pub ws_connections: IntGauge,
    /// WebSocket sessions opened.
    pub ws_connects_total: IntCounter,
    /// WebSocket sessions closed, by reason (client, token_expired, slow_consumer, heartbeat_timeout, draining, error).
    pub ws_disconnects_total: IntCounterVec,
    /// Client frames received, by outcome (ok, invalid, rate_limited).
    pub ws_frames_total: IntCounterVec,
    /// Messages submitted by clients (REST or WebSocket).
    pub messages_received_total: IntCounter,
    /// Messages newly committed to PostgreSQL.
    pub messages_persisted_total: IntCounter,
    /// Frames queued to local sockets by the fan-out.
    pub fanout_frames_total: IntCounter,
    /// Events shed under backpressure (typing, presence) instead of being queued.
    pub fanout_shed_total: IntCounter,
    /// Seconds from a message's commit (on any node) to its frame being queued to a local socket.
    pub fanout_latency_seconds: Histogram,
    /// Seconds from a bus publish to its arrival at this node's subscriber.
    pub bus_transit_seconds: Histogram,
    /// Redis PUBLISH failures (the message is stored; delivery falls back to PostgreSQL catch-up).
    pub redis_publish_errors_total: IntCounter,
    /// Pub/sub connection failures: a lost connection, a failed reconnect, a failed SUBSCRIBE/UNSUBSCRIBE.
    pub redis_subscribe_errors_total: IntCounter,
    /// Times this node's pub/sub connection was (re)established.
    pub redis_reconnects_total: IntCounter,
    /// 1 while this node's pub/sub connection is up.
    pub redis_connected: IntGauge,
    /// Redis channels this node is subscribed to.
    pub subscribed_channels: IntGauge,
    /// Sessions closed because their outbound queue overflowed.
    pub slow_consumer_closes_total: IntCounter,
    /// Messages delivered from PostgreSQL to fill a gap (out-of-order arrival, bus outage, late subscription).
    pub gap_filled_messages_total: IntCounter,
    /// PostgreSQL polls made while the bus was down (degraded mode).
    pub degraded_polls_total: IntCounter,
    /// Presence lease renewals sent to Redis.
    pub presence_heartbeats_total: IntCounter,
    /// PostgreSQL pool: connections open.
    pub db_pool_size: IntGauge,
    /// PostgreSQL pool: connections checked out.
    pub db_pool_in_use: IntGauge,
    /// PostgreSQL pool: requests waiting for a connection.
    pub db_pool_waiting: IntGauge,
    /// Seconds a request waited for a pooled PostgreSQL connection.
    pub db_pool_wait_seconds: Histogram,
    /// PostgreSQL query duration in seconds, by query (insert_message, read_messages, unreceived).
    pub db_query_duration_seconds: HistogramVec,
    /// Requests refused by a per-user cost limit, by budget (send, room_create, direct_open, room_password).
    pub limited_total: IntCounterVec,
    /// HTTP requests, by route template, method (`OTHER` for any method outside the standard ones) and status.
    pub http_requests_total: IntCounterVec,
    /// HTTP request duration in seconds, by route template.
    pub http_request_duration_seconds: HistogramVec,
}

impl Metrics {
    pub fn new(node_id: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("chorus".into()), None)?;
        let _ = node_id; // the scrape target labels the node; keeping it out of series keeps them few.
        macro_rules! reg {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let latency = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        };
        Ok(Self {
            ws_connections: reg!(IntGauge::new("ws_connections", "WebSocket sessions open on this node.")?),
            ws_connects_total: reg!(IntCounter::new("ws_connects_total", "WebSocket sessions opened.")?),
            ws_disconnects_total: reg!(IntCounterVec::new(
                Opts::new("ws_disconnects_total", "WebSocket sessions closed, by reason."),
                &["reason"]
            )?),
            ws_frames_total: reg!(IntCounterVec::new(
                Opts::new("ws_frames_total", "Client frames received, by outcome."),
                &["outcome"]
            )?),
            messages_received_total: reg!(IntCounter::new(
                "messages_received_total",
                "Messages submitted by clients (REST or WebSocket)."
            )?),
            messages_persisted_total: reg!(IntCounter::new(
                "messages_persisted_total",
                "Messages newly committed to PostgreSQL."
            )?),
            fanout_frames_total: reg!(IntCounter::new(
                "fanout_frames_total",
                "Frames queued to local sockets by the fan-out."
            )?),
            fanout_shed_total: reg!(IntCounter::new(
                "fanout_shed_total",
                "Ephemeral events shed under backpressure instead of being queued."
            )?),
            fanout_latency_seconds: reg!(latency(
                "fanout_latency_seconds",
                "Seconds from a message's commit to its frame being queued to a local socket."
            )?),
            bus_transit_seconds: reg!(latency(
                "bus_transit_seconds",
                "Seconds from a bus publish to its arrival at this node's subscriber."
            )?),
            redis_publish_errors_total: reg!(IntCounter::new("redis_publish_errors_total", "Redis PUBLISH failures.")?),
            redis_subscribe_errors_total: reg!(IntCounter::new(
                "redis_subscribe_errors_total",
                "Pub/sub connection failures: a lost connection, a failed reconnect, a failed SUBSCRIBE/UNSUBSCRIBE."
            )?),
            redis_reconnects_total: reg!(IntCounter::new(
                "redis_reconnects_total",
                "Times this node's pub/sub connection was (re)established."
            )?),
            redis_connected: reg!(IntGauge::new("redis_connected", "1 while this node's pub/sub connection is up.")?),
            subscribed_channels: reg!(IntGauge::new(
                "subscribed_channels",
                "Redis channels this node is subscribed to."
            )?),
            slow_consumer_closes_total: reg!(IntCounter::new(
                "slow_consumer_closes_total",
                "Sessions closed because their outbound queue overflowed."
            )?),
            gap_filled_messages_total: reg!(IntCounter::new(
                "gap_filled_messages_total",
                "Messages delivered from PostgreSQL to fill a gap in the live stream."
            )?),
            degraded_polls_total: reg!(IntCounter::new(
                "degraded_polls_total",
                "PostgreSQL polls made while the bus was down."
            )?),
            presence_heartbeats_total: reg!(IntCounter::new(
                "presence_heartbeats_total",
                "Presence lease renewals sent to Redis."
            )?),
            db_pool_size: reg!(IntGauge::new("db_pool_connections", "PostgreSQL pool: connections open.")?),
            db_pool_in_use: reg!(IntGauge::new(
                "db_pool_in_use_connections",
                "PostgreSQL pool: connections checked out."
            )?),
            db_pool_waiting: reg!(IntGauge::new(
                "db_pool_waiting_requests",
                "PostgreSQL pool: requests waiting for a connection."
            )?),
            db_pool_wait_seconds: reg!(latency(
                "db_pool_wait_seconds",
                "Seconds a request waited for a pooled PostgreSQL connection."
            )?),
            db_query_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "db_query_duration_seconds",
                    "PostgreSQL query duration in seconds, by query (insert_message, read_messages, unreceived)."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["query"]
            )?),
            limited_total: reg!(IntCounterVec::new(
                Opts::new("limited_total", "Requests refused by a per-user cost limit, by budget."),
                &["budget"]
            )?),
            http_requests_total: reg!(IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "HTTP requests, by route template, method (OTHER outside the standard ones) and status."
                ),
                &["route", "method", "status"]
            )?),
            http_request_duration_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "HTTP request duration in seconds, by route template."
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"]
            )?),
            registry,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
