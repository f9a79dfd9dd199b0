//! `CHORUS_REDIS_MODE=cluster` against a real Redis Cluster: three primaries and three replicas on
//! loopback ports of the test's own (`redis-cli --cluster create`), two Chorus nodes. Rooms on every
//! primary, a slot migrated and a primary killed under traffic, a primary stopped and resumed: every
//! acknowledged message reaches the other node's client once and in order.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chorus::config::RedisMode;
use serde_json::json;
use uuid::Uuid;

use crate::clients::{eventually, free_cluster_port, redis_cli as cli, spawn_cluster, WsClient};
use crate::helpers::*;

const PARTITIONS: u16 = 16;

struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<(u16, Option<Child>)>,
}

impl RedisCluster {
    async fn start() -> RedisCluster {
        RedisCluster::start_with_node_timeout(Duration::from_secs(2)).await
    }

    /// `node_timeout`: how long a primary may be silent before its replica takes over.
    async fn start_with_node_timeout(node_timeout: Duration) -> RedisCluster {
        let node_timeout = node_timeout.as_millis().to_string();
        let dir = std::env::temp_dir().join(format!("chorus-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let binary = std::env::var("CHORUS_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &conf.display().to_string(), "--cluster-node-timeout", &node_timeout])
                .args(["--dir", &dir.display().to_string(), "--save", "", "--appendonly", "no"])
                .args(["--repl-diskless-sync-delay", "0"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts (install it with script/bootstrap)");
            nodes.push((port, Some(child)));
        }
        for (port, child) in &mut nodes {
            let port = *port;
            eventually("redis-server listening", Duration::from_secs(10), || cli(port, &["ping"]).contains("PONG"))
                .await;
            // The answer must come from our own server, not from one that held the port first.
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "redis-server on {port} exited ({exited:?}): port taken?");
        }
        let addresses: Vec<String> = nodes.iter().map(|(port, _)| format!("127.0.0.1:{port}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for (port, _) in &nodes {
            let port = *port;
            eventually("the cluster is ok everywhere", Duration::from_secs(20), || {
                let info = cli(port, &["cluster", "info"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
            })
            .await;
        }
        RedisCluster { dir, nodes }
    }

    fn url(&self) -> String {
        self.nodes.iter().take(3).map(|(port, _)| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    fn live_port(&self) -> u16 {
        self.nodes.iter().find(|(_, child)| child.is_some()).map(|(port, _)| *port).expect("a live node")
    }

    fn slot(&self, key: &str) -> u16 {
        cli(self.live_port(), &["cluster", "keyslot", key]).trim().parse().expect("a slot")
    }

    /// The primary serving `slot`, as the cluster says now.
    fn owner(&self, slot: u16) -> u16 {
        for line in cli(self.live_port(), &["cluster", "nodes"]).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
            for range in &fields[8..] {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>()) {
                    if (start..=end).contains(&slot) {
                        return port;
                    }
                }
            }
        }
        panic!("no primary serves slot {slot}")
    }

    fn primaries(&self) -> HashSet<u16> {
        (0..16384).step_by(512).map(|slot| self.owner(slot)).collect()
    }

    /// Moves `slot` (and its keys) to another primary, as `redis-cli --cluster reshard` does.
    fn migrate(&self, slot: u16, to: u16) {
        let from = self.owner(slot);
        let from_id = cli(from, &["cluster", "myid"]).trim().to_owned();
        let to_id = cli(to, &["cluster", "myid"]).trim().to_owned();
        let slot = slot.to_string();
        cli(to, &["cluster", "setslot", &slot, "importing", &from_id]);
        cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]);
        for key in cli(from, &["cluster", "getkeysinslot", &slot, "1000"]).lines().filter(|k| !k.is_empty()) {
            cli(from, &["migrate", "127.0.0.1", &to.to_string(), key, "0", "5000"]);
        }
        cli(to, &["cluster", "setslot", &slot, "node", &to_id]);
        cli(from, &["cluster", "setslot", &slot, "node", &to_id]);
        for (port, child) in &self.nodes {
            if child.is_some() {
                cli(*port, &["cluster", "setslot", &slot, "node", &to_id]);
            }
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server on `port`.
    fn signal(&self, port: u16, signal: &str) {
        let (_, child) = self.nodes.iter().find(|(p, _)| *p == port).expect("a node of this cluster");
        crate::clients::signal(child.as_ref().expect("a live node"), signal);
    }

    fn kill(&mut self, port: u16) {
        if let Some((_, slot)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn chorus_on(cluster: &RedisCluster) -> Vec<TestApp> {
    let url = cluster.url();
    spawn_cluster(2, |s| {
        s.redis_mode = RedisMode::Cluster;
        s.redis_url = url.clone();
        s.redis_partitions = PARTITIONS;
        s.degraded_poll_ms = 200;
        // Sends go as fast as replies come, in up to ~60 rooms.
        s.ws_rate_per_s = 1000;
        s.ws_rate_burst = 1000;
    })
    .await
}

#[actix_web::test]
async fn cluster_mode_delivers_across_nodes_in_order_for_rooms_on_every_primary() {
    let cluster = RedisCluster::start().await;
    let nodes = chorus_on(&cluster).await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let mut rooms = Vec::new();
    let mut owners = HashSet::new();
    // Rooms until every primary serves one of their channels.
    while owners.len() < 3 {
        assert!(rooms.len() < 64, "rooms on only {} primaries", owners.len());
        let room = nodes[0].room(&alice, "public").await;
        nodes[1].join(&bob, room).await;
        owners.insert(cluster.owner(cluster.slot(&format!(
            "{}{{p:{}}}room:{room}",
            nodes[0].redis_prefix,
            partition(room)
        ))));
        rooms.push(room);
    }
    assert_eq!(owners, cluster.primaries());
    let mut sender = WsClient::connect(&nodes[0], &alice.token).await;
    let mut receiver = WsClient::connect(&nodes[1], &bob.token).await;
    for round in 0..3 {
        for room in &rooms {
            let reply = sender.request("send", json!({"room_id": room, "content": format!("r{round}")})).await;
            assert_eq!(reply["ok"], json!(true), "{reply}");
        }
    }
    for room in &rooms {
        assert_eq!(receiver.messages(*room, 3).await, vec![1, 2, 3], "room {room}");
    }
    // Presence works across slots: Bob sees Alice online.
    let reply = receiver.request("presence", json!({"user_ids": [alice.id]})).await;
    assert_eq!(reply["result"][0]["online"], json!(true), "{reply}");
    // A node that would spread names differently does not start.
    let mut other = test_settings(&nodes[0].database_url);
    other.redis_mode = RedisMode::Cluster;
    other.redis_url = cluster.url();
    other.redis_prefix = nodes[0].redis_prefix.clone();
    other.redis_partitions = PARTITIONS * 2;
    let refused = chorus::startup::Application::build(other).await.err().expect("refused").to_string();
    assert!(refused.contains("CHORUS_REDIS_PARTITIONS is 32, but the nodes of this deployment use 16"), "{refused}");
}

fn partition(id: Uuid) -> u16 {
    (id.as_u128() % u128::from(PARTITIONS)) as u16
}

#[actix_web::test]
async fn cluster_mode_loses_nothing_when_a_slot_moves_and_a_primary_dies_under_traffic() {
    let mut cluster = RedisCluster::start().await;
    let nodes = chorus_on(&cluster).await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let room = nodes[0].room(&alice, "public").await;
    nodes[1].join(&bob, room).await;
    let mut sender = WsClient::connect(&nodes[0], &alice.token).await;
    let mut receiver = WsClient::connect(&nodes[1], &bob.token).await;
    let channel = format!("{}{{p:{}}}room:{room}", nodes[0].redis_prefix, partition(room));
    let slot = cluster.slot(&channel);
    let total = 120;
    let mut acknowledged = Vec::new();
    for i in 0..total {
        if i == 30 {
            // The slot moves to another primary: its subscribers get `sunsubscribe` and nothing else.
            let to = cluster.primaries().into_iter().find(|p| *p != cluster.owner(slot)).expect("another primary");
            cluster.migrate(slot, to);
        }
        if i == 70 {
            // The primary now serving the room dies; its replica takes over.
            let owner = cluster.owner(slot);
            cluster.kill(owner);
        }
        let reply = sender.request("send", json!({"room_id": room, "content": format!("m{i}")})).await;
        assert_eq!(reply["ok"], json!(true), "send {i}: {reply}");
        acknowledged.push(reply["result"]["seq"].as_i64().expect("seq"));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let received = receiver.messages(room, total).await;
    assert_eq!(received, acknowledged, "every acknowledged message, once, in order");
    // The bus is back on the live primaries: both nodes ready, and live delivery goes on.
    for node in &nodes {
        let address = node.address.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ready = node.raw("GET", "/readyz", &[], None).await;
            if ready.status.as_u16() == 200 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{address} not ready again: {}", ready.text);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let reply = sender.request("send", json!({"room_id": room, "content": "after"})).await;
    let seq = reply["result"]["seq"].as_i64().expect("seq");
    assert_eq!(receiver.messages(room, 1).await, vec![seq]);
}

#[actix_web::test]
async fn cluster_mode_presence_goes_offline_after_a_node_is_killed() {
    let cluster = RedisCluster::start().await;
    let database = fresh_database().await;
    let prefix = format!("chorus-test-{}:", Uuid::new_v4().simple());
    let partitions = PARTITIONS.to_string();
    let env = [
        ("CHORUS_PRESENCE_TTL_S", "2"),
        ("CHORUS_REDIS_MODE", "cluster"),
        ("CHORUS_REDIS_PARTITIONS", partitions.as_str()),
    ];
    let doomed = crate::clients::spawn_process(&database, &cluster.url(), &prefix, "doomed", &env).await;
    let survivor = {
        let (prefix, url) = (prefix.clone(), cluster.url());
        spawn_app_on(&database, |s| {
            s.redis_prefix = prefix;
            s.redis_mode = RedisMode::Cluster;
            s.redis_url = url;
            s.redis_partitions = PARTITIONS;
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
    crate::clients::signal(&doomed.child, "KILL");
    let offline = b.expect("offline", |v| v["event"] == "presence" && v["data"]["user_id"] == json!(alice.id)).await;
    assert_eq!(offline["data"]["online"], false);
    let user = survivor.get(&format!("/api/v1/users/{}", alice.id), &bob.token).await;
    assert_eq!(user.body["online"], false);
}

/// `chorus_redis_connected` on `node`'s /metrics: whether its subscriber counts itself connected.
async fn redis_connected(node: &TestApp) -> bool {
    let body = node.client.get(node.url("/metrics")).send().await.expect("metrics").body().await.expect("body");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("chorus_redis_connected ").and_then(|v| v.trim().parse::<f64>().ok()))
        .is_some_and(|v| v == 1.0)
}

async fn until_connected_is(node: &TestApp, want: bool, deadline: tokio::time::Instant, what: &str) {
    while redis_connected(node).await != want {
        assert!(tokio::time::Instant::now() < deadline, "{}: chorus_redis_connected never {want} {what}", node.address);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(client: &mut WsClient, room: Uuid, content: &str) -> i64 {
    // While a primary is silent, a send may wait out the command timeout (2 s here) several times:
    // its limit check, its PUBLISH, the node's connection to Redis.
    let reply =
        client.request_within("send", json!({"room_id": room, "content": content}), Duration::from_secs(30)).await;
    assert_eq!(reply["ok"], json!(true), "send {content}: {reply}");
    reply["result"]["seq"].as_i64().expect("seq")
}

/// A primary that stops answering without closing a connection (SIGSTOP here; a host gone from the
/// network is the same) while the cluster does not replace it. The sharded subscriber only reads,
/// so nothing fails on its own: it has to ask. Both nodes notice within seconds and poll PostgreSQL
/// until they can reconnect (the sender's node may do so early, through the primary's replica);
/// every message arrives once, in order.
#[actix_web::test]
async fn cluster_mode_notices_a_primary_that_stops_answering_and_catches_up_once_it_is_back() {
    // No failover while the primary is stopped: this is about a silent primary, not a new one.
    let cluster = RedisCluster::start_with_node_timeout(Duration::from_secs(120)).await;
    let url = cluster.url();
    let nodes = spawn_cluster(2, |s| {
        s.redis_mode = RedisMode::Cluster;
        s.redis_url = url.clone();
        s.redis_partitions = PARTITIONS;
        s.degraded_poll_ms = 200;
        // This is also the cluster client's response timeout. The sender's PUBLISHes to the stopped
        // primary give up after 2 s. The receiver waits 30 s for any answer, and noticing must not
        // depend on that: before the heartbeat, only the owner check could notice, when it happened
        // to ask the stopped primary, after waiting this long for the answer.
        s.db_pool_timeout_ms = if s.node_id.as_deref() == Some("node-2") { 30_000 } else { 2_000 };
    })
    .await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let room = nodes[0].room(&alice, "public").await;
    nodes[1].join(&bob, room).await;
    let channel = format!("{}{{p:{}}}room:{room}", nodes[0].redis_prefix, partition(room));
    let primary = cluster.owner(cluster.slot(&channel));
    let mut sender = WsClient::connect(&nodes[0], &alice.token).await;
    let mut receiver = WsClient::connect(&nodes[1], &bob.token).await;
    let mut acknowledged = vec![send(&mut sender, room, "before").await];
    assert_eq!(receiver.messages(room, 1).await, acknowledged);
    assert_eq!(sender.messages(room, 1).await, acknowledged);

    cluster.signal(primary, "STOP");
    // A PING every 2 s, 3 s for its answer: 5 s, and some slack for a busy machine.
    let noticed_by = tokio::time::Instant::now() + Duration::from_secs(10);
    for node in &nodes {
        until_connected_is(node, false, noticed_by, "within 10 s of the primary stopping").await;
    }
    for i in 0..3 {
        acknowledged.push(send(&mut sender, room, &format!("during #{i}")).await);
    }
    assert_eq!(receiver.messages(room, 3).await, acknowledged[1..], "polled from PostgreSQL");
    assert_eq!(sender.messages(room, 3).await, acknowledged[1..]);
    // Its connections time out after 30 s, its reconnects after 5: it cannot have reconnected
    // (through the stopped primary's replica, which the client falls back to), so they were polled.
    assert!(!redis_connected(&nodes[1]).await, "the receiver's node is still degraded");

    cluster.signal(primary, "CONT");
    let back_by = tokio::time::Instant::now() + Duration::from_secs(20);
    for node in &nodes {
        until_connected_is(node, true, back_by, "within 20 s of the primary answering again").await;
    }
    for client in [&mut receiver, &mut sender] {
        let again = client.quiet(Duration::from_secs(1), |v| v["event"] != "message").await;
        assert!(again.is_none(), "nothing twice: {again:?}");
    }
    acknowledged.push(send(&mut sender, room, "after").await);
    let last = acknowledged[acknowledged.len() - 1..].to_vec();
    assert_eq!(receiver.messages(room, 1).await, last, "live again");
    assert_eq!(sender.messages(room, 1).await, last);
    let reply = receiver.request("sync", json!({"rooms": [{"room_id": room, "after_seq": 0}]})).await;
    assert_eq!(reply["result"]["rooms"][0]["last_seq"], json!(acknowledged.len()), "{reply}");
}
