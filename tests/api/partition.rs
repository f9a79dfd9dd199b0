//! What `loadtest --scenario chaos` found (docs/RESILIENCE.md): a node cut off from Redis by a
//! network partition while the other nodes keep theirs (a proxy in the test stops forwarding
//! without closing anything, as a network that drops packets does), and PostgreSQL ending a
//! session under a send.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

use crate::clients::*;
use crate::helpers::*;

/// Forwards 127.0.0.1:port to Redis until cut; while cut, holds every byte and every new
/// connection without an answer; healed, lets them through again.
struct Blackhole {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Blackhole {
    async fn start(upstream: u16) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (cut, _) = watch::channel(false);
        let gate = cut.subscribe();
        actix_web::rt::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.clone();
                actix_web::rt::spawn(async move {
                    if gate.clone().wait_for(|cut| !*cut).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, gate.clone()) => {}
                        _ = pump(server_read, client_write, gate) => {}
                    }
                });
            }
        });
        Blackhole { port, cut }
    }

    fn set(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|cut| !*cut).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = gate.changed() => continue,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn readiness(node: &TestApp) -> u16 {
    match node.client.get(node.url("/readyz")).send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

async fn until_ready_is(node: &TestApp, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while readiness(node).await != want {
        assert!(Instant::now() < deadline, "/readyz never answered {want} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn a_node_cut_off_from_redis_notices_and_what_it_stored_reaches_the_others_once_healed() {
    let redis_port: u16 =
        redis_url().rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("port");
    let blackhole = Blackhole::start(redis_port).await;
    let database = fresh_database().await;
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    let whole = {
        let prefix = prefix.clone();
        spawn_app_on(&database, |s| {
            s.redis_prefix = prefix;
            s.node_id = Some("whole".into());
            s.degraded_poll_ms = 200;
        })
        .await
    };
    let cut_off = spawn_app_on(&database, |s| {
        s.redis_url = format!("redis://127.0.0.1:{}/", blackhole.port);
        s.redis_prefix = prefix.clone();
        s.node_id = Some("cut-off".into());
        s.degraded_poll_ms = 200;
        s.db_pool_timeout_ms = 2000;
    })
    .await;
    let alice = whole.user("alice").await;
    let bob = whole.user("bob").await;
    let room = whole.room(&alice, "private").await;
    whole.add(&alice, room, &[&bob]).await;
    let mut a = WsClient::connect(&whole, &alice.token).await;
    let mut b = WsClient::connect(&cut_off, &bob.token).await;
    whole.send(&alice, room, "before").await;
    assert_eq!(b.messages(room, 1).await, vec![1]);
    assert_eq!(a.messages(room, 1).await, vec![1]);

    blackhole.set(true);
    // The subscriber only reads: without a heartbeat it never learnt its Redis was gone, and the
    // node stayed ready while its users heard nothing from the other nodes for the whole partition.
    until_ready_is(&cut_off, 503, Duration::from_secs(10)).await;
    let sent = whole.send(&alice, room, "during, from the whole node").await;
    assert_eq!(sent.status.as_u16(), 201);
    assert_eq!(b.messages(room, 1).await, vec![2], "the cut-off node polls PostgreSQL");
    assert_eq!(a.messages(room, 1).await, vec![2]);

    // Stored, delivered on its own node; the whole node does not poll (its bus is up).
    let started = Instant::now();
    let sent = cut_off.send(&bob, room, "during, from the cut-off node").await;
    assert_eq!(sent.status.as_u16(), 201, "{:?}", sent.body);
    assert!(started.elapsed() < Duration::from_secs(5), "a send on the cut-off node took {:?}", started.elapsed());
    let started = Instant::now();
    for i in 0..3 {
        let sent = cut_off.send(&bob, room, &format!("more #{i}")).await;
        assert_eq!(sent.status.as_u16(), 201);
    }
    // Before: each send waited out the connect timeout in turn, twice (rate limit, then publish).
    assert!(started.elapsed() < Duration::from_secs(3), "three more sends took {:?}", started.elapsed());
    assert_eq!(b.messages(room, 4).await, vec![3, 4, 5, 6]);

    blackhole.set(false);
    until_ready_is(&cut_off, 200, Duration::from_secs(15)).await;
    // Nothing else is said in the room: what the cut-off node stored still reaches alice, because
    // it publishes the room's newest message again once it can.
    assert_eq!(a.messages(room, 4).await, vec![3, 4, 5, 6], "what the cut-off node stored arrives after the heal");
    assert!(a.quiet(Duration::from_millis(500), |v| v["event"] != "message").await.is_none(), "no duplicates");
    let sent = whole.send(&alice, room, "after").await;
    assert_eq!(sent.status.as_u16(), 201);
    assert_eq!(b.messages(room, 1).await, vec![7], "live over the bus again");
    assert_eq!(a.messages(room, 1).await, vec![7]);
    let reply = b.request("sync", json!({"rooms": [{"room_id": room, "after_seq": 0}]})).await;
    assert_eq!(reply["result"]["rooms"][0]["last_seq"], 7);
}

#[derive(diesel::QueryableByName)]
struct Pid {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pid: i32,
}

/// PostgreSQL ending a session under a query in flight (a restart, a failover, an operator) is a
/// `503 unavailable` the client retries, not a `500 internal` (found by loadtest --scenario chaos,
/// restarting PostgreSQL under load).
#[actix_web::test]
async fn a_send_whose_database_session_is_terminated_is_unavailable_not_internal() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let node = spawn_app().await;
    let alice = node.user("alice").await;
    let room = node.room(&alice, "private").await;
    // Hold the room's row, so the send waits inside its transaction.
    let mut locker = AsyncPgConnection::establish(&node.database_url).await.expect("connect");
    diesel::sql_query("BEGIN").execute(&mut locker).await.expect("begin");
    diesel::sql_query(format!("SELECT 1 FROM rooms WHERE id = '{room}' FOR UPDATE"))
        .execute(&mut locker)
        .await
        .expect("lock");
    let sending = {
        let (client, url, token) =
            (node.client.clone(), node.url(&format!("/api/v1/rooms/{room}/messages")), alice.token.clone());
        actix_web::rt::spawn(async move {
            let mut response =
                client.post(url).bearer_auth(token).send_json(&json!({"content": "cut short"})).await.expect("send");
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (response.status().as_u16(), body)
        })
    };
    // End every session that waits on the row (the batch's, then the sender's own retry alone)
    // until the send answers.
    let mut admin = AsyncPgConnection::establish(&node.database_url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut terminated = 0;
    while !sending.is_finished() {
        assert!(Instant::now() < deadline, "the send did not answer");
        let waiting: Vec<Pid> = diesel::sql_query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .load(&mut admin)
        .await
        .expect("pg_stat_activity");
        for backend in &waiting {
            diesel::sql_query(format!("SELECT pg_terminate_backend({})", backend.pid))
                .execute(&mut admin)
                .await
                .expect("terminate");
            terminated += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(terminated > 0, "the send never waited on the room's row");
    let (status, body) = sending.await.expect("the send finished");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    diesel::sql_query("ROLLBACK").execute(&mut locker).await.expect("rollback");
    let retried = node.send(&alice, room, "retried").await;
    assert_eq!(retried.status.as_u16(), 201, "{:?}", retried.body);
}
