//! `CHORUS_REDIS_MODE=sentinel` against real Sentinels: a primary, a replica and three Sentinels on
//! loopback ports of the test's own, two Chorus nodes, and failovers under traffic. Every message
//! acknowledged to the sender reaches the other node's client once and in order, and afterwards
//! the nodes' connections are on the new primary.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chorus::config::RedisMode;
use serde_json::json;
use uuid::Uuid;

use crate::clients::{eventually, free_port, redis_cli as cli, spawn_cluster, WsClient};
use crate::helpers::*;

const MASTER: &str = "chorus-test";

/// A primary, its replica and three Sentinels, owned by the test.
struct Sentinels {
    dir: PathBuf,
    servers: Vec<(u16, Child)>,
    sentinels: Vec<(u16, Child)>,
}

fn redis_server() -> String {
    std::env::var("CHORUS_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl Sentinels {
    async fn start() -> Sentinels {
        let dir = std::env::temp_dir().join(format!("chorus-sentinel-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (primary, replica) = (free_port(), free_port());
        let mut servers = Vec::new();
        for (port, extra) in
            [(primary, vec![]), (replica, vec!["--replicaof".to_owned(), format!("127.0.0.1 {primary}")])]
        {
            let child = Command::new(redis_server())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                // A replica's full sync writes an RDB file into the working directory: keep it there.
                .args(["--repl-diskless-sync-delay", "0", "--dir", &dir.display().to_string()])
                .args(&extra)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts (install it with script/bootstrap)");
            servers.push((port, child));
        }
        eventually("the replica in sync", Duration::from_secs(10), || {
            cli(replica, &["info", "replication"]).contains("master_link_status:up")
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            // A Sentinel rewrites its configuration file: each gets its own.
            let conf = dir.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir.display()
            );
            std::fs::write(&conf, text).expect("sentinel.conf");
            let child = Command::new(redis_server())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            sentinels.push((port, child));
        }
        for (port, _) in &sentinels {
            eventually("the Sentinels know the replica and each other", Duration::from_secs(20), || {
                let master = cli(*port, &["sentinel", "master", MASTER]).replace('\n', " ");
                master.contains("num-slaves 1 ") && master.contains("num-other-sentinels 2 ")
            })
            .await;
        }
        Sentinels { dir, servers, sentinels }
    }

    fn url(&self) -> String {
        self.sentinels.iter().map(|(port, _)| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }

    /// The port the Sentinels name as the primary.
    fn primary(&self) -> u16 {
        let answer = cli(self.sentinels[0].0, &["sentinel", "get-master-addr-by-name", MASTER]);
        answer.lines().nth(1).and_then(|p| p.trim().parse().ok()).expect("a primary")
    }

    fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.servers.iter_mut().find(|(p, _)| *p == port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Chorus's subscriber connections on the server at `port` (one per node).
    fn subscribers_on(&self, port: u16, prefix: &str) -> i64 {
        let channel = format!("{prefix}presence");
        cli(port, &["pubsub", "numsub", &channel]).lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, child) in self.servers.iter_mut().chain(self.sentinels.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two nodes in sentinel mode; Alice on the first sends `total` messages, one every 40 ms, and
/// `fault` runs after the 25th; Bob on the second must get every one, once, in order.
async fn failover_under_traffic(fault: impl FnOnce(&mut Sentinels) -> u16) {
    let mut sentinels = Sentinels::start().await;
    let url = sentinels.url();
    let nodes = spawn_cluster(2, |s| {
        s.redis_mode = RedisMode::Sentinel;
        s.redis_url = url.clone();
        s.redis_sentinel_master = Some(MASTER.into());
        s.degraded_poll_ms = 200;
    })
    .await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let room = nodes[0].room(&alice, "public").await;
    nodes[1].join(&bob, room).await;
    let mut sender = WsClient::connect(&nodes[0], &alice.token).await;
    let mut receiver = WsClient::connect(&nodes[1], &bob.token).await;
    let prefix = nodes[0].redis_prefix.clone();
    let old = sentinels.primary();
    let total = 120;
    let mut acknowledged = Vec::new();
    let mut new_primary = None;
    let mut fault = Some(fault);
    for i in 0..total {
        if i == 25 {
            new_primary = fault.take().map(|fault| fault(&mut sentinels));
        }
        let reply = sender.request("send", json!({"room_id": room, "content": format!("m{i}")})).await;
        assert_eq!(reply["ok"], json!(true), "send {i}: {reply}");
        acknowledged.push(reply["result"]["seq"].as_i64().expect("seq"));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(acknowledged, (1..=total as i64).collect::<Vec<_>>());
    let received = receiver.messages(room, total).await;
    assert_eq!(received, acknowledged, "every acknowledged message, once, in order");
    // The nodes now listen on the new primary, whichever way it came.
    let new = new_primary.filter(|p| *p != 0).unwrap_or_else(|| sentinels.primary());
    assert_ne!(new, old, "the Sentinels promoted another server");
    eventually("both nodes subscribed on the new primary", Duration::from_secs(10), || {
        sentinels.subscribers_on(new, &prefix) == 2
    })
    .await;
    // And live delivery goes on through it.
    let reply = sender.request("send", json!({"room_id": room, "content": "after"})).await;
    let seq = reply["result"]["seq"].as_i64().expect("seq");
    assert_eq!(receiver.messages(room, 1).await, vec![seq]);
}

#[actix_web::test]
async fn sentinel_mode_follows_a_killed_primary_without_losing_a_message() {
    failover_under_traffic(|sentinels| {
        let primary = sentinels.primary();
        sentinels.kill(primary);
        0
    })
    .await;
}

#[actix_web::test]
async fn sentinel_mode_follows_a_planned_failover_although_the_old_primary_still_answers() {
    // After SENTINEL FAILOVER the old primary accepts PUBLISHes for ~10 s more, reaching only its
    // own subscribers: the nodes must move because the Sentinels say so, not because of errors.
    failover_under_traffic(|sentinels| {
        let old = sentinels.primary();
        assert!(cli(sentinels.sentinels[0].0, &["sentinel", "failover", MASTER]).contains("OK"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sentinels.primary() == old {
            assert!(std::time::Instant::now() < deadline, "no failover");
            std::thread::sleep(Duration::from_millis(50));
        }
        sentinels.primary()
    })
    .await;
}

#[actix_web::test]
async fn sentinel_mode_needs_the_primary_name_and_single_mode_one_url() {
    let mut settings = test_settings("postgres://postgres@127.0.0.1/x");
    settings.redis_sentinel_master = None;
    settings.redis_mode = RedisMode::Sentinel;
    settings.redis_url = "redis://127.0.0.1:1,redis://127.0.0.1:2".into();
    let error = settings.clone().validate().expect_err("no master name").to_string();
    assert!(error.contains("CHORUS_REDIS_SENTINEL_MASTER"), "{error}");
    settings.redis_sentinel_master = Some(MASTER.into());
    settings.clone().validate().expect("sentinel settings");
    settings.redis_mode = RedisMode::Single;
    let error = settings.clone().validate().expect_err("two URLs in single mode").to_string();
    assert!(error.contains("CHORUS_REDIS_MODE=sentinel"), "{error}");
}
