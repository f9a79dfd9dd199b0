//! `/metrics` moves under real traffic.

use std::time::Duration;

use serde_json::json;

use crate::clients::*;
use crate::helpers::*;

/// The value of one series (`name` including labels), 0 when absent.
async fn scrape(node: &TestApp) -> String {
    let body = node.client.get(node.url("/metrics")).send().await.expect("metrics").body().await.expect("body");
    String::from_utf8_lossy(&body).into_owned()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).filter(|rest| rest.starts_with(' ')).and_then(|r| r.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn every_metric_moves_under_traffic() {
    let nodes = spawn_cluster(2, |s| s.presence_ttl_s = 1).await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let room = nodes[0].room(&alice, "private").await;
    nodes[0].add(&alice, room, &[&bob]).await;
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    let mut b = WsClient::connect(&nodes[1], &bob.token).await;
    for i in 0..3 {
        a.request("send", json!({"room_id": room, "content": format!("m{i}")})).await;
    }
    assert_eq!(b.messages(room, 3).await, vec![1, 2, 3]);
    a.send_raw("garbage".into()).await;
    a.expect("error", |v| v["event"] == "error").await;
    drop(b);
    // Presence leases renew every third of the TTL (here 1 s).
    tokio::time::sleep(Duration::from_millis(900)).await;

    let text = scrape(&nodes[0]).await;
    let must_move = [
        "chorus_ws_connections",
        "chorus_ws_connects_total",
        r#"chorus_ws_frames_total{outcome="ok"}"#,
        r#"chorus_ws_frames_total{outcome="invalid"}"#,
        "chorus_messages_received_total",
        "chorus_messages_persisted_total",
        "chorus_fanout_frames_total",
        "chorus_fanout_latency_seconds_count",
        "chorus_bus_transit_seconds_count",
        "chorus_redis_reconnects_total",
        "chorus_redis_connected",
        "chorus_subscribed_channels",
        "chorus_presence_heartbeats_total",
        "chorus_db_pool_connections",
        "chorus_db_pool_wait_seconds_count",
        r#"chorus_db_query_duration_seconds_count{query="insert_message"}"#,
        r#"chorus_http_requests_total{method="POST",route="/api/v1/rooms",status="201"}"#,
        r#"chorus_http_request_duration_seconds_count{route="/api/v1/auth/login"}"#,
    ];
    for series in must_move {
        assert!(value(&text, series) > 0.0, "{series} did not move:\n{text}");
    }
    assert_eq!(value(&text, "chorus_messages_persisted_total"), 3.0);
    // The other node saw bob's session end.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(&nodes[1]).await;
        if value(&text, r#"chorus_ws_disconnects_total{reason="client"}"#) >= 1.0 {
            assert_eq!(value(&text, "chorus_ws_connections"), 0.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "disconnect not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Route templates, never raw ids, label the HTTP series.
    assert!(!text.contains(&room.to_string()), "an id leaked into a label");
}
