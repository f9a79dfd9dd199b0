//! What dies: Redis (killed and restarted), a node (SIGKILL), a node asked to leave (SIGTERM).

use std::time::Duration;

use chorus::startup::Application;
use serde_json::json;
use uuid::Uuid;

use crate::clients::*;
use crate::helpers::*;

async fn status_of(url: &str) -> Option<u16> {
    awc::Client::new().get(url).send().await.ok().map(|r| r.status().as_u16())
}

async fn wait_for_status(url: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while status_of(url).await != Some(want) {
        assert!(tokio::time::Instant::now() < deadline, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(node: &TestApp, name: &str) -> f64 {
    let body = node.client.get(node.url("/metrics")).send().await.expect("metrics").body().await.expect("body");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn chat_survives_a_redis_outage_without_losing_a_message() {
    let mut redis = RedisProcess::start(free_port()).await;
    let database = fresh_database().await;
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    let mut nodes = Vec::new();
    for i in 0..2 {
        let (url, prefix) = (redis.url(), prefix.clone());
        nodes.push(
            spawn_app_on(&database, |s| {
                s.redis_url = url;
                s.redis_prefix = prefix;
                s.node_id = Some(format!("node-{i}"));
                s.degraded_poll_ms = 200;
                s.db_pool_timeout_ms = 2000;
            })
            .await,
        );
    }
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let carol = nodes[1].user("carol").await;
    let room = nodes[0].room(&alice, "private").await;
    nodes[0].add(&alice, room, &[&bob, &carol]).await;
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    let mut b = WsClient::connect(&nodes[1], &bob.token).await;
    let mut c = WsClient::connect(&nodes[1], &carol.token).await;
    nodes[0].send(&alice, room, "before").await;
    assert_eq!(b.messages(room, 1).await, vec![1]);
    assert_eq!(c.messages(room, 1).await, vec![1]);

    redis.kill();
    wait_for_status(&nodes[0].url("/readyz"), 503).await;
    wait_for_status(&nodes[1].url("/readyz"), 503).await;
    // Sends still succeed (stored), and reach the other node by PostgreSQL polling.
    for i in 2..=6 {
        let sent = nodes[0].send(&alice, room, &format!("during #{i}")).await;
        assert_eq!(sent.status.as_u16(), 201, "{:?}", sent.body);
    }
    assert_eq!(b.messages(room, 5).await, vec![2, 3, 4, 5, 6], "degraded mode delivers across nodes");
    assert_eq!(a.messages(room, 6).await, vec![1, 2, 3, 4, 5, 6], "and on the sender's own node");
    // Carol drops off mid-outage and comes back after it.
    assert_eq!(c.messages(room, 2).await, vec![2, 3]);
    drop(c);
    for i in 7..=9 {
        nodes[1].send(&bob, room, &format!("during #{i}")).await;
    }
    assert_eq!(b.messages(room, 3).await, vec![7, 8, 9]);

    let _redis = RedisProcess::start(redis.port).await;
    wait_for_status(&nodes[0].url("/readyz"), 200).await;
    wait_for_status(&nodes[1].url("/readyz"), 200).await;
    nodes[0].send(&alice, room, "after").await;
    assert_eq!(b.messages(room, 1).await, vec![10], "live over the bus again");
    assert!(b.quiet(Duration::from_millis(500), |v| v["event"] != "message").await.is_none(), "no duplicates");
    let mut c = WsClient::connect(&nodes[1], &carol.token).await;
    let reply = c.request("sync", json!({"rooms": [{"room_id": room, "after_seq": 3}]})).await;
    assert_eq!(reply["result"]["rooms"][0]["last_seq"], 10);
    assert_eq!(c.messages(room, 7).await, (4..=10).collect::<Vec<_>>(), "the reconnecting client lost nothing");
    assert!(metric(&nodes[0], "chorus_redis_publish_errors_total").await >= 5.0);
    assert!(metric(&nodes[0], "chorus_redis_subscribe_errors_total").await >= 1.0, "the lost connection is counted");
    assert!(metric(&nodes[0], "chorus_redis_reconnects_total").await >= 2.0, "connected, then reconnected");
    assert!(metric(&nodes[1], "chorus_degraded_polls_total").await >= 1.0);
    assert!(metric(&nodes[1], "chorus_gap_filled_messages_total").await >= 5.0, "degraded delivery is gap filling");
}

#[actix_web::test]
async fn a_killed_node_s_users_go_offline_within_the_presence_ttl() {
    let database = fresh_database().await;
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    let doomed = spawn_process(&database, &redis_url(), &prefix, "doomed", &[("CHORUS_PRESENCE_TTL_S", "2")]).await;
    let survivor = {
        let prefix = prefix.clone();
        spawn_app_on(&database, |s| {
            s.redis_prefix = prefix;
            s.presence_ttl_s = 2;
            s.node_id = Some("survivor".into());
        })
        .await
    };
    let alice = survivor.user("alice").await;
    let bob = survivor.user("bob").await;
    let room = survivor.room(&alice, "private").await;
    survivor.add(&alice, room, &[&bob]).await;
    let mut b = WsClient::connect(&survivor, &bob.token).await;
    let _a = WsClient::connect_to(&doomed.address, &alice.token).await;
    let online = b.expect("online", |v| v["event"] == "presence" && v["data"]["user_id"] == json!(alice.id)).await;
    assert_eq!(online["data"]["online"], true);

    signal(&doomed.child, "KILL");
    let offline = b.expect("offline", |v| v["event"] == "presence" && v["data"]["user_id"] == json!(alice.id)).await;
    assert_eq!(offline["data"]["online"], false);
    let user = survivor.get(&format!("/api/v1/users/{}", alice.id), &bob.token).await;
    assert_eq!(user.body["online"], false);
    assert!(user.body["last_seen_at"].is_string());
}

#[actix_web::test]
async fn sigterm_closes_sockets_with_1012_and_exits_within_the_grace_period() {
    let database = fresh_database().await;
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    let mut node =
        spawn_process(&database, &redis_url(), &prefix, "leaving", &[("CHORUS_SHUTDOWN_GRACE_S", "5")]).await;
    let helper = spawn_app_on(&database, |s| s.redis_prefix = prefix.clone()).await;
    let alice = helper.user("alice").await;
    let mut a = WsClient::connect_to(&node.address, &alice.token).await;
    let started = std::time::Instant::now();
    signal(&node.child, "TERM");
    assert_eq!(a.until_closed(Duration::from_secs(5)).await, Some(1012));
    let status = loop {
        if let Some(status) = node.child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(6), "exited within the grace period");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status:?}");
}

#[actix_web::test]
async fn a_draining_node_fails_readiness_at_once_and_refuses_new_sockets() {
    let database = fresh_database().await;
    let settings = test_settings(&database);
    let app = Application::build(settings).await.expect("node starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (state, handle) = (app.state.clone(), app.handle());
    actix_web::rt::spawn(app.run_until_stopped());
    wait_for_status(&format!("{address}/readyz"), 200).await;
    // Hold the drain open with a socket that does not close by itself for a moment.
    let register = awc::Client::new()
        .post(format!("{address}/api/v1/auth/register"))
        .send_json(&json!({"username": "drainer", "password": "long enough pw"}))
        .await
        .expect("register");
    assert_eq!(register.status().as_u16(), 201);
    let mut login = awc::Client::new()
        .post(format!("{address}/api/v1/auth/login"))
        .send_json(&json!({"username": "drainer", "password": "long enough pw"}))
        .await
        .expect("login");
    let body: serde_json::Value = login.json().await.expect("json");
    let token = body["access_token"].as_str().unwrap_or_default().to_owned();
    let mut socket = WsClient::connect_to(&address, &token).await;
    state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(status_of(&format!("{address}/readyz")).await, Some(503));
    let refused = awc::Client::new()
        .ws(format!("{}/api/v1/ws", address.replace("http", "ws")))
        .bearer_auth(&token)
        .connect()
        .await;
    assert!(refused.is_err(), "no new sockets while draining");
    let drain = Application::drain(&state, &handle);
    let (closed, ()) = futures_util::join!(socket.until_closed(Duration::from_secs(5)), drain);
    assert_eq!(closed, Some(1012));
}
