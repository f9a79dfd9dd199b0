//! One test per attack of the hardening issue: each failed on the code before the fix.

use std::time::Duration;

use actix_web::http::StatusCode;
use chorus::config::{Environment, Settings};
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::clients::*;
use crate::helpers::*;

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc status")
}

/// Connects a WebSocket and returns its first event, or the close code the node ended it with.
async fn connect_outcome(app: &TestApp, token: &str) -> Result<Value, u16> {
    use awc::ws::Frame;
    use futures_util::StreamExt;
    let url = format!("{}/api/v1/ws", app.address.replace("http://", "ws://"));
    let (_res, mut framed) = awc::Client::new().ws(url).bearer_auth(token).connect().await.expect("upgrade");
    loop {
        match tokio::time::timeout(WAIT, framed.next()).await.expect("a frame in time") {
            Some(Ok(Frame::Text(bytes))) => {
                let value: Value = serde_json::from_slice(&bytes).expect("JSON frame");
                return Ok(value);
            }
            Some(Ok(Frame::Close(reason))) => return Err(reason.map_or(1005, |r| u16::from(r.code))),
            Some(Ok(_)) => continue,
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

// 1. One `sync` frame naming a big room hundreds of times.
#[actix_web::test]
async fn a_sync_naming_one_room_300_times_replays_it_once_in_bounded_memory() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "private").await;
    let big = "m".repeat(4000);
    for _ in 0..30 {
        join_all((0..10).map(|_| app.send(&alice, room, &big))).await;
    }
    // The hostile client talks to a node of its own, so its peak memory is the node's alone.
    let node =
        spawn_process(&app.database_url, &redis_url(), &format!("sec-{}:", Uuid::new_v4().simple()), "n", &[]).await;
    let before = peak_rss_kib(node.child.id());
    let mut ws = WsClient::connect_to(&node.address, &alice.token).await;
    let rooms: Vec<Value> = (0..300).map(|_| json!({"room_id": room, "after_seq": 0})).collect();
    let reply = ws.request("sync", json!({"rooms": rooms})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let listed = reply["result"]["rooms"].as_array().expect("rooms");
    assert_eq!(listed.len(), 1, "the room is answered once");
    assert_eq!(listed[0]["last_seq"], 300);
    assert_eq!(listed[0]["has_more"], false);
    let seqs = ws.messages(room, 300).await;
    assert_eq!(seqs, (1..=300).collect::<Vec<i64>>(), "each message once, in order");
    assert!(ws.quiet(Duration::from_millis(500), |_| false).await.is_none(), "and nothing more");
    let grown_mib = (peak_rss_kib(node.child.id()) - before) / 1024;
    // Replaying the room 300 times took ~680 MiB; once, in chunks, takes a few.
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
}

#[actix_web::test]
async fn a_sync_stops_at_its_total_budget_and_says_where() {
    let app = spawn_app_with(|s| s.sync_max_messages = 50).await;
    let alice = app.user("alice").await;
    let first = app.room(&alice, "private").await;
    let second = app.room(&alice, "private").await;
    for _ in 0..6 {
        join_all((0..10).map(|_| app.send(&alice, first, "hello"))).await;
    }
    app.send(&alice, second, "hi").await;
    let mut ws = WsClient::connect(&app, &alice.token).await;
    let reply = ws
        .request("sync", json!({"rooms": [{"room_id": first, "after_seq": 0}, {"room_id": second, "after_seq": 0}]}))
        .await;
    let rooms = &reply["result"]["rooms"];
    assert_eq!(rooms[0]["last_seq"], 50, "{reply}");
    assert_eq!(rooms[0]["has_more"], true);
    assert_eq!(rooms[1]["last_seq"], 0, "not reached");
    assert_eq!(rooms[1]["has_more"], true);
    assert_eq!(ws.messages(first, 50).await.len(), 50);
    // Syncing again from where it stopped brings the rest.
    let again = ws
        .request("sync", json!({"rooms": [{"room_id": first, "after_seq": 50}, {"room_id": second, "after_seq": 0}]}))
        .await;
    assert_eq!(again["result"]["rooms"][0]["last_seq"], 60, "{again}");
    assert_eq!(again["result"]["rooms"][1]["last_seq"], 1);
    assert_eq!(again["result"]["rooms"][1]["has_more"], false);
}

// 2. Room passwords guessed without limit; argon2 runs without a cap.
#[actix_web::test]
async fn room_password_guesses_are_limited_per_user_and_room() {
    let app = spawn_app_with(|s| s.password_attempts = 5).await;
    let owner = app.user("owner").await;
    let guesser = app.user("guesser").await;
    let name = format!("vault-{}", Uuid::new_v4().simple());
    let room = app
        .post(
            "/api/v1/rooms",
            &owner.token,
            json!({"name": name, "visibility": "public", "password": "hunter2hunter2"}),
        )
        .await
        .id();
    let join_path = format!("/api/v1/rooms/{room}/join");
    let join = |password: &str| app.post(&join_path, &guesser.token, json!({"password": password}));
    for i in 0..5 {
        let res = join(&format!("wrong-{i}-password")).await;
        assert_eq!(res.code(), "room.wrong_password", "guess {i}: {:?}", res.body);
    }
    let refused = join("hunter2hunter2").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", refused.body);
    let retry: u64 =
        refused.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("Retry-After");
    assert!(retry >= 1);
    // The same budget over the WebSocket.
    let mut ws = WsClient::connect(&app, &guesser.token).await;
    let reply = ws.request("join", json!({"room_id": room, "password": "hunter2hunter2"})).await;
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    // Another user is not affected.
    let other = app.user("other").await;
    let res =
        app.post(&format!("/api/v1/rooms/{room}/join"), &other.token, json!({"password": "hunter2hunter2"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
}

#[actix_web::test]
async fn password_hashing_past_the_node_cap_answers_503_not_a_starved_node() {
    let app = spawn_app_with(|s| {
        s.argon2_concurrency = Some(1);
        s.argon2_memory_kib = 8 * 1024;
        s.argon2_iterations = 16;
    })
    .await;
    let user = app.user("hasher").await;
    // How long one login takes here (mostly its hash, at this cost) decides how many at once are
    // sure to queue past the 2 s a request waits for the one slot: about 8 s of hashing.
    let started = std::time::Instant::now();
    assert_eq!(app.login(&user.username, &user.password).await.status, StatusCode::OK);
    let one = started.elapsed().as_secs_f64().max(0.001);
    let burst = ((8.0 / one).ceil() as usize + 2).clamp(6, 300);
    let results = join_all((0..burst).map(|_| app.login(&user.username, "wrong password!"))).await;
    let busy: Vec<&Reply> = results.iter().filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert!(!busy.is_empty(), "{burst} logins at once, {one:.3} s each: none was turned away");
    assert_eq!(busy[0].code(), "unavailable");
    assert_eq!(busy[0].headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(results.iter().all(|r| matches!(r.status.as_u16(), 401 | 503)), "only wrong-password or busy answers");
    // And the node is fine afterwards.
    assert_eq!(app.login(&user.username, &user.password).await.status, StatusCode::OK);
}

// 3. Secrets written in the repository are refused in production mode.
fn production_settings(secret: &str) -> Settings {
    let mut settings = test_settings(&admin_database_url());
    settings.env = Environment::Production;
    settings.jwt_secret = Some(secret.to_owned());
    settings
}

/// Every literal `JWT_SECRET` value in the deployment files and docs (not `${...}` references).
fn secrets_in_repository() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("docker-compose.yml"), root.join("README.md")];
    let mut dirs = vec![root.join("k8s"), root.join("docs"), root.join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "md" || e == "env") {
                files.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines() {
            let Some(at) = line.find("JWT_SECRET") else { continue };
            let rest = line[at + "JWT_SECRET".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) else { continue };
            let value = rest.trim().trim_matches(|c| c == '"' || c == '\'').split_whitespace().next().unwrap_or("");
            let value = value.trim_matches(|c| c == '"' || c == '\'');
            if value.len() >= 8 && !value.starts_with('$') && !value.starts_with('<') {
                found.push((file.display().to_string(), value.to_owned()));
            }
        }
    }
    found
}

#[test]
fn secrets_written_in_the_repository_are_refused_in_production() {
    let found = secrets_in_repository();
    assert!(
        found.iter().any(|(_, s)| s == "dev-cluster-only-jwt-secret-0123456789abcdef"),
        "the scan finds the dev overlay's secret: {found:?}"
    );
    for (file, secret) in &found {
        let error = production_settings(secret).validate().expect_err(&format!("{file}: {secret} is refused"));
        assert!(error.to_string().contains("JWT_SECRET"), "{error}");
    }
    for placeholder in [
        "chorus-dev-secret-do-not-use-in-production!!",
        "change-me-please-32-bytes-minimum-secret",
        "CHANGE-ME-CHANGE-ME-CHANGE-ME-CHANGE-ME",
        "test-secret-that-is-long-enough-0123456789",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "your-secret-goes-here-at-least-32-bytes!",
    ] {
        assert!(production_settings(placeholder).validate().is_err(), "{placeholder} is refused");
    }
    // A random one is fine, and dev mode still takes the built-in one.
    assert!(production_settings("9f1c2e7a4b8d03f6a5e1c9b7d2f4068e3a1b5c7d9e0f2a4b").validate().is_ok());
    let mut dev = production_settings("change-me-please-32-bytes-minimum-secret");
    dev.env = Environment::Dev;
    assert!(dev.validate().is_ok());
}

// 4. Client-chosen HTTP methods as metric labels.
#[actix_web::test]
async fn made_up_http_methods_share_one_metric_label() {
    let app = spawn_app().await;
    for i in 0..50 {
        app.raw(&format!("BOGUS{i}"), "/healthz", &[], None).await;
    }
    let text = app.raw("GET", "/metrics", &[], None).await.text;
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("chorus_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("OTHER"), "{methods:?}");
    assert!(!methods.iter().any(|m| m.starts_with("BOGUS")), "{methods:?}");
    assert!(methods.len() <= 10, "{methods:?}");
}

// 5. The login limit keyed on a header anyone can write.
#[actix_web::test]
async fn forwarded_headers_do_not_pick_the_login_bucket_unless_the_peer_is_trusted() {
    let login = |app: &TestApp, forwarded: String| {
        let body = serde_json::to_vec(&json!({"username": "nobody", "password": "whatever!"})).expect("json");
        let app_address = app.address.clone();
        let client = app.client.clone();
        async move {
            client
                .post(format!("{app_address}/api/v1/auth/login"))
                .insert_header(("content-type", "application/json"))
                .insert_header(("x-forwarded-for", forwarded.clone()))
                .insert_header(("forwarded", format!("for={forwarded}")))
                .send_body(body)
                .await
                .expect("request")
                .status()
        }
    };
    let direct = spawn_app_with(|s| s.auth_rate_per_min = 3).await;
    for i in 0..3 {
        assert_eq!(login(&direct, format!("198.51.100.{i}")).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login(&direct, "198.51.100.99".into()).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a new X-Forwarded-For does not buy a new bucket"
    );
    // Behind a trusted proxy (here: loopback), each forwarded client has its own bucket.
    let proxied = spawn_app_with(|s| {
        s.auth_rate_per_min = 3;
        s.trusted_proxies = " 127.0.0.1/32, ".parse().expect("CIDR list");
    })
    .await;
    for i in 0..6 {
        assert_eq!(login(&proxied, format!("198.51.100.{i}")).await, StatusCode::UNAUTHORIZED, "client {i}");
    }
}

// 7. Unbounded per-user cost.
#[actix_web::test]
async fn rest_and_websocket_sends_share_one_budget_across_nodes() {
    let nodes = spawn_cluster(2, |s| {
        s.send_rate_per_s = 1;
        s.send_burst = 5;
    })
    .await;
    let alice = nodes[0].user("alice").await;
    let room = nodes[0].room(&alice, "private").await;
    for i in 0..3 {
        assert_eq!(nodes[i % 2].send(&alice, room, "rest").await.status, StatusCode::CREATED);
    }
    let mut ws = WsClient::connect(&nodes[1], &alice.token).await;
    for _ in 0..2 {
        let reply = ws.request("send", json!({"room_id": room, "content": "ws"})).await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    let over_ws = ws.request("send", json!({"room_id": room, "content": "ws"})).await;
    assert_eq!(over_ws["error"]["code"], "rate_limited", "{over_ws}");
    let over_rest = nodes[0].send(&alice, room, "rest").await;
    assert_eq!(over_rest.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(over_rest.headers.contains_key("retry-after"));
    // Someone else's budget is untouched.
    let bob = nodes[0].user("bob").await;
    nodes[0].add(&alice, room, &[&bob]).await;
    assert_eq!(nodes[1].send(&bob, room, "mine").await.status, StatusCode::CREATED);
}

#[actix_web::test]
async fn a_burst_within_the_send_budget_is_never_refused_even_all_at_once() {
    // A burst of 30 that refills slowly (1/s). Nodes take send tokens from Redis a few at a time;
    // 25 sends at once must still all fit, and most of 15 more at once must not.
    let app = spawn_app_with(|s| {
        s.send_rate_per_s = 1;
        s.send_burst = 30;
    })
    .await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "private").await;
    let first = join_all((0..25).map(|_| app.send(&alice, room, "burst"))).await;
    let statuses: Vec<u16> = first.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let more = join_all((0..15).map(|_| app.send(&alice, room, "more"))).await;
    let refused = more.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).count();
    assert!(refused >= 5, "{refused} of 15 refused past a burst of 30");
}

#[actix_web::test]
async fn room_and_direct_room_creation_are_limited_per_user() {
    let app = spawn_app_with(|s| {
        s.rooms_created_per_hour = 3;
        s.direct_rooms_per_hour = 2;
    })
    .await;
    let alice = app.user("alice").await;
    for _ in 0..3 {
        app.room(&alice, "private").await;
    }
    let fourth =
        app.post("/api/v1/rooms", &alice.token, json!({"name": "one-too-many", "visibility": "private"})).await;
    assert_eq!(fourth.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", fourth.body);
    let (b, c, d) = (app.user("b").await, app.user("c").await, app.user("d").await);
    for other in [&b, &c] {
        assert_eq!(app.post("/api/v1/direct", &alice.token, json!({"user_id": other.id})).await.status.as_u16(), 201);
    }
    let third = app.post("/api/v1/direct", &alice.token, json!({"user_id": d.id})).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", third.body);
    // Opening an existing direct room again is free.
    assert_eq!(app.post("/api/v1/direct", &alice.token, json!({"user_id": b.id})).await.status, StatusCode::OK);
}

#[actix_web::test]
async fn a_user_can_be_in_only_so_many_rooms() {
    let app = spawn_app_with(|s| s.max_rooms_per_user = 2).await;
    let joiner = app.user("joiner").await;
    let owner2 = app.user("owner2").await;
    let a = app.room(&owner2, "public").await;
    let b = app.room(&owner2, "public").await;
    let over = app.post("/api/v1/rooms", &owner2.token, json!({"name": "third", "visibility": "public"})).await;
    assert_eq!(over.status, StatusCode::CONFLICT, "{:?}", over.body);
    assert_eq!(over.code(), "limit.rooms");
    assert_eq!(app.join(&joiner, a).await.status, StatusCode::OK);
    assert_eq!(app.join(&joiner, b).await.status, StatusCode::OK);
    let third = app.user("third").await;
    let c = app.room(&third, "public").await;
    let refused = app.join(&joiner, c).await;
    assert_eq!(refused.code(), "limit.rooms", "{:?}", refused.body);
    // Others cannot add them past it either.
    let added = app.post(&format!("/api/v1/rooms/{c}/members"), &third.token, json!({"user_ids": [joiner.id]})).await;
    assert_eq!(added.code(), "limit.rooms", "{:?}", added.body);
}

#[actix_web::test]
async fn a_user_holds_only_so_many_sockets_and_the_newest_is_refused_with_4429() {
    let nodes = spawn_cluster(2, |s| s.max_sockets_per_user = 2).await;
    let alice = nodes[0].user("alice").await;
    let first = WsClient::connect(&nodes[0], &alice.token).await;
    let _second = WsClient::connect(&nodes[1], &alice.token).await;
    assert_eq!(connect_outcome(&nodes[0], &alice.token).await.err(), Some(4429), "third socket, cluster-wide");
    drop(first);
    // Once one closes, a new one is welcome again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect_outcome(&nodes[1], &alice.token).await {
            Ok(ready) => {
                assert_eq!(ready["event"], "ready");
                break;
            }
            Err(code) => {
                assert_eq!(code, 4429);
                assert!(tokio::time::Instant::now() < deadline, "the closed socket's lease was not released");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[actix_web::test]
async fn unreceived_stops_at_its_total_cap_across_rooms() {
    let app = spawn_app_with(|s| {
        s.unreceived_limit = 4;
        s.unreceived_max_messages = 10;
    })
    .await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for _ in 0..4 {
        let room = app.room(&alice, "private").await;
        app.add(&alice, room, &[&bob]).await;
        for _ in 0..3 {
            app.send(&alice, room, "hi").await;
        }
    }
    let res = app.get("/api/v1/unreceived", &bob.token).await;
    let rooms = res.body["rooms"].as_array().expect("rooms");
    let total: usize = rooms.iter().map(|r| r["messages"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(total, 10, "{:?}", res.body);
    assert_eq!(res.body["has_more"], true);
    assert_eq!(rooms.last().expect("a room")["has_more"], true, "the room cut short says so");
    // Under the cap, nothing is cut.
    let small = spawn_app_with(|s| s.unreceived_max_messages = 100).await;
    let carol = small.user("carol").await;
    let room = small.room(&carol, "private").await;
    small.send(&carol, room, "own message").await;
    let res = small.get("/api/v1/unreceived", &carol.token).await;
    assert_eq!(res.body["has_more"], false, "{:?}", res.body);
}

/// Transactions committed in the test's database so far. PostgreSQL 15 flushes a backend's
/// statistics when it goes idle, but no more than once a second, and otherwise within 10 s
/// (`PGSTAT_IDLE_INTERVAL`): wait that long, so what came before is all counted, and what comes after
/// is not counted early or late.
async fn committed_transactions(app: &TestApp) -> i64 {
    use diesel::sql_types::BigInt;
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    tokio::time::sleep(Duration::from_millis(11_000)).await;
    let mut conn = AsyncPgConnection::establish(&app.database_url).await.expect("connect");
    let name = app.database_url.rsplit('/').next().expect("database name").to_owned();
    let row: Count = diesel::sql_query(format!(
        "SELECT (xact_commit + xact_rollback)::bigint AS n FROM pg_stat_database WHERE datname = '{name}'"
    ))
    .get_result(&mut conn)
    .await
    .expect("pg_stat_database");
    row.n
}

#[actix_web::test]
async fn presence_for_200_users_is_one_query_not_200() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut ws = WsClient::connect(&app, &alice.token).await;
    let mut ids: Vec<Uuid> = (0..198).map(|_| Uuid::now_v7()).collect();
    ids.insert(50, bob.id);
    ids.insert(0, alice.id);
    // The node's own upkeep (revocation polls, presence renewals) commits on its own: measured over
    // an idle window of the same length first, and taken off.
    let idle_start = committed_transactions(&app).await;
    let before = committed_transactions(&app).await;
    let upkeep = before - idle_start;
    let reply = ws.request("presence", json!({"user_ids": ids})).await;
    let after = committed_transactions(&app).await - upkeep;
    let result = reply["result"].as_array().expect("presence list");
    assert_eq!(result.len(), 2, "unknown ids are left out: {reply}");
    assert_eq!(result[0]["user_id"], json!(alice.id), "in the order asked");
    assert_eq!(result[0]["online"], true);
    assert_eq!(result[1]["user_id"], json!(bob.id));
    assert_eq!(result[1]["online"], false);
    eprintln!("presence frame: {} transactions (upkeep {upkeep} per window)", after - before);
    assert!(after - before < 20, "{} transactions for one presence frame (upkeep {upkeep})", after - before);
}

// 8. Membership races.
#[actix_web::test]
async fn an_edit_racing_a_delete_never_brings_the_content_back() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "private").await;
    for round in 0..40 {
        let id = app.send(&alice, room, "original").await.id();
        let path = format!("/api/v1/rooms/{room}/messages/{id}");
        let edit = app.patch(&path, &alice.token, json!({"content": "edited"}));
        let delete = app.delete(&path, &alice.token);
        let (_, deleted) = futures_util::join!(edit, delete);
        assert_eq!(deleted.status, StatusCode::OK, "round {round}: {:?}", deleted.body);
        let history = app.get(&format!("/api/v1/rooms/{room}/messages?limit=1"), &alice.token).await;
        let message = &history.items()[0];
        assert_eq!(message["deleted"], true, "round {round}");
        assert_eq!(message["content"], "", "round {round}: a deleted message stays empty");
    }
}

#[actix_web::test]
async fn a_join_racing_a_password_change_needs_the_new_password() {
    // Setting a password spends the owner's password budget too: this test sets it twenty times.
    let app = spawn_app_with(|s| s.password_attempts = 1000).await;
    let owner = app.user("owner").await;
    let name = format!("locked-{}", Uuid::new_v4().simple());
    let room = app
        .post("/api/v1/rooms", &owner.token, json!({"name": name, "visibility": "public", "password": "old password"}))
        .await
        .id();
    let mut joined_with_old = 0;
    for round in 0..10 {
        let joiner = app.user("joiner").await;
        let new_password = format!("new password {round}");
        let (join_path, room_path) = (format!("/api/v1/rooms/{room}/join"), format!("/api/v1/rooms/{room}"));
        let join = app.post(&join_path, &joiner.token, json!({"password": "old password"}));
        let change = app.patch(&room_path, &owner.token, json!({"password": new_password}));
        let (joined, changed) = futures_util::join!(join, change);
        assert_eq!(changed.status, StatusCode::OK);
        if joined.status == StatusCode::OK {
            joined_with_old += 1;
        }
        // Either the join committed before the change (fine) or it is refused; it never lands after.
        let members = app.get(&format!("/api/v1/rooms/{room}/members?limit=200"), &owner.token).await;
        let is_member = members.items().iter().any(|m| m["user_id"] == json!(joiner.id));
        assert_eq!(is_member, joined.status == StatusCode::OK, "round {round}: {:?}", joined.body);
        app.patch(&format!("/api/v1/rooms/{room}"), &owner.token, json!({"password": "old password"})).await;
    }
    let _ = joined_with_old;
}

#[actix_web::test]
async fn a_socket_that_joins_while_being_banned_hears_nothing_after_the_ban() {
    let nodes = spawn_cluster(2, |_| {}).await;
    let owner = nodes[0].user("owner").await;
    let room = nodes[0].room(&owner, "public").await;
    for round in 0..10 {
        let mallory = nodes[1].user("mallory").await;
        let mut ws = WsClient::connect(&nodes[1], &mallory.token).await;
        let join = ws.request("join", json!({"room_id": room}));
        let bans_path = format!("/api/v1/rooms/{room}/bans");
        let ban = nodes[0].post(&bans_path, &owner.token, json!({"user_id": mallory.id}));
        let (_, banned) = futures_util::join!(join, ban);
        assert_eq!(banned.status, StatusCode::CREATED, "{:?}", banned.body);
        let secret = format!("after the ban {round}");
        assert_eq!(nodes[0].send(&owner, room, &secret).await.status, StatusCode::CREATED);
        let leaked = ws.quiet(Duration::from_millis(300), |v| v["event"] != "message").await;
        assert!(leaked.is_none(), "round {round}: a banned socket got {leaked:?}");
    }
}

// 9. Bans, and logging out everywhere.
#[actix_web::test]
async fn a_banned_member_is_removed_on_every_node_and_kept_out() {
    let nodes = spawn_cluster(2, |_| {}).await;
    let owner = nodes[0].user("owner").await;
    let admin = nodes[0].user("admin").await;
    let member = nodes[1].user("member").await;
    let room = nodes[0].room(&owner, "public").await;
    for user in [&admin, &member] {
        assert_eq!(nodes[0].join(user, room).await.status, StatusCode::OK);
    }
    let promoted = nodes[0]
        .patch(&format!("/api/v1/rooms/{room}/members/{}", admin.id), &owner.token, json!({"role": "admin"}))
        .await;
    assert_eq!(promoted.status, StatusCode::OK);
    let mut ws = WsClient::connect(&nodes[1], &member.token).await;
    let ban = nodes[0]
        .post(&format!("/api/v1/rooms/{room}/bans"), &admin.token, json!({"user_id": member.id, "reason": "spam"}))
        .await;
    assert_eq!(ban.status, StatusCode::CREATED, "{:?}", ban.body);
    assert_eq!(ban.body["reason"], "spam");
    // Nothing of the room reaches the banned member's socket on the other node after the ban returned.
    nodes[0].send(&owner, room, "after the ban").await;
    let left = ws.expect("member_left", |v| v["event"] == "member_left").await;
    assert_eq!(left["data"]["reason"], "banned");
    assert!(ws.quiet(Duration::from_millis(500), |v| v["event"] != "message").await.is_none());
    // Kept out: joining and being added are refused, on either node.
    assert_eq!(nodes[1].join(&member, room).await.code(), "room.banned");
    let ws_join = ws.request("join", json!({"room_id": room})).await;
    assert_eq!(ws_join["error"]["code"], "room.banned", "{ws_join}");
    let add =
        nodes[0].post(&format!("/api/v1/rooms/{room}/members"), &owner.token, json!({"user_ids": [member.id]})).await;
    assert_eq!(add.code(), "room.banned");
    // An admin cannot ban the owner or another admin; the owner can ban an admin.
    let admin2 = nodes[0].user("admin2").await;
    nodes[0].join(&admin2, room).await;
    nodes[0]
        .patch(&format!("/api/v1/rooms/{room}/members/{}", admin2.id), &owner.token, json!({"role": "admin"}))
        .await;
    for target in [&owner, &admin2] {
        let res =
            nodes[0].post(&format!("/api/v1/rooms/{room}/bans"), &admin.token, json!({"user_id": target.id})).await;
        assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    }
    let res = nodes[0].post(&format!("/api/v1/rooms/{room}/bans"), &owner.token, json!({"user_id": admin2.id})).await;
    assert_eq!(res.status, StatusCode::CREATED);
    // Members cannot see or lift bans; admins can.
    let outsider = nodes[0].user("outsider").await;
    nodes[0].join(&outsider, room).await;
    assert_eq!(
        nodes[0].get(&format!("/api/v1/rooms/{room}/bans"), &outsider.token).await.status,
        StatusCode::FORBIDDEN
    );
    let list = nodes[0].get(&format!("/api/v1/rooms/{room}/bans"), &admin.token).await;
    let banned: Vec<Value> = list.items().iter().map(|b| b["user_id"].clone()).collect();
    assert!(banned.contains(&json!(member.id)) && banned.contains(&json!(admin2.id)), "{:?}", list.body);
    let lifted = nodes[0].delete(&format!("/api/v1/rooms/{room}/bans/{}", member.id), &admin.token).await;
    assert_eq!(lifted.status, StatusCode::NO_CONTENT);
    assert_eq!(nodes[1].join(&member, room).await.status, StatusCode::OK);
    let again = nodes[0].delete(&format!("/api/v1/rooms/{room}/bans/{}", member.id), &admin.token).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn logout_all_closes_every_socket_on_every_node_and_refuses_old_tokens() {
    let nodes = spawn_cluster(2, |_| {}).await;
    let alice = nodes[0].user("alice").await;
    let second_login = nodes[1].login(&alice.username, &alice.password).await;
    let other_refresh = second_login.body["refresh_token"].as_str().expect("refresh").to_owned();
    let bob = nodes[0].user("bob").await;
    let mut a0 = WsClient::connect(&nodes[0], &alice.token).await;
    let mut a1 = WsClient::connect(&nodes[1], &alice.token).await;
    let mut b1 = WsClient::connect(&nodes[1], &bob.token).await;
    let started = std::time::Instant::now();
    let res = nodes[0].request("POST", "/api/v1/auth/logout-all", Some(&alice.token), None).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "{:?}", res.body);
    assert_eq!(a0.until_closed(Duration::from_secs(5)).await, Some(4001));
    assert_eq!(a1.until_closed(Duration::from_secs(5)).await, Some(4001), "the other node's socket too");
    assert!(started.elapsed() < Duration::from_secs(3), "within a couple of seconds: {:?}", started.elapsed());
    // Old access tokens are refused on both nodes, refresh tokens of every family too.
    for node in &nodes {
        let me = node.get("/api/v1/users/me", &alice.token).await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED);
        assert_eq!(me.code(), "auth.token_revoked");
    }
    assert_eq!(nodes[1].refresh(&alice.refresh_token).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(nodes[0].refresh(&other_refresh).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(connect_outcome_status(&nodes[1], &alice.token).await, 401, "an old token cannot open a socket");
    // Bob is untouched; a fresh login works everywhere.
    assert!(b1.quiet(Duration::from_millis(200), |_| true).await.is_none() && b1.closed.is_none());
    let fresh = nodes[1].login(&alice.username, &alice.password).await;
    let token = fresh.body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(nodes[0].get("/api/v1/users/me", &token).await.status, StatusCode::OK);
    let mut again = WsClient::connect(&nodes[1], &token).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(again.quiet(Duration::from_millis(100), |_| true).await.is_none() && again.closed.is_none());
}

/// The HTTP status of a WebSocket upgrade refused before it happens.
async fn connect_outcome_status(app: &TestApp, token: &str) -> u16 {
    let url = format!("{}/api/v1/ws", app.address.replace("http://", "ws://"));
    match awc::Client::new().ws(url).bearer_auth(token).connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(other) => panic!("unexpected upgrade failure: {other}"),
        Ok(_) => 101,
    }
}

#[actix_web::test]
async fn a_reused_refresh_token_logs_the_user_out_everywhere() {
    let nodes = spawn_cluster(2, |_| {}).await;
    let alice = nodes[0].user("alice").await;
    let mut socket = WsClient::connect(&nodes[1], &alice.token).await;
    let rotated = nodes[0].refresh(&alice.refresh_token).await;
    assert_eq!(rotated.status, StatusCode::OK);
    // The spent token shows up again: someone has a copy.
    let reused = nodes[0].refresh(&alice.refresh_token).await;
    assert_eq!(reused.code(), "auth.refresh_reused");
    assert_eq!(socket.until_closed(Duration::from_secs(5)).await, Some(4001));
    let newest = rotated.body["access_token"].as_str().expect("token");
    assert_eq!(nodes[1].get("/api/v1/users/me", newest).await.code(), "auth.token_revoked");
}

// 10. Names that look alike.
#[actix_web::test]
async fn room_names_are_normalized_and_invisible_characters_refused() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let base = format!("General-{}", &Uuid::new_v4().simple().to_string()[..6]);
    let create = |name: String| app.post("/api/v1/rooms", &alice.token, json!({"name": name, "visibility": "public"}));
    assert_eq!(create(base.clone()).await.status, StatusCode::CREATED);
    for sneaky in [
        format!("{base}\u{200b}"),
        format!("\u{202e}{base}"),
        format!("{base}\u{2066}x\u{2069}"),
        format!("{base}\u{feff}"),
        format!("{base}\u{2028}"),
    ] {
        let res = create(sneaky.clone()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{sneaky:?}: {:?}", res.body);
        assert_eq!(res.fields(), vec!["name"]);
    }
    // "Café" spelled with a combining accent is the same name as the precomposed one.
    let suffix = &Uuid::new_v4().simple().to_string()[..6];
    let decomposed = create(format!("Cafe\u{301}-{suffix}")).await;
    assert_eq!(decomposed.status, StatusCode::CREATED);
    assert_eq!(decomposed.body["name"], format!("Caf\u{e9}-{suffix}"), "stored in NFC");
    assert_eq!(create(format!("Caf\u{e9}-{suffix}")).await.status, StatusCode::CONFLICT);
    // Renames follow the same rules.
    let room = decomposed.id();
    let rename = app.patch(&format!("/api/v1/rooms/{room}"), &alice.token, json!({"name": "x\u{200d}y"})).await;
    assert_eq!(rename.status, StatusCode::BAD_REQUEST);
}

/// A TCP proxy in front of Redis whose open connections can be cut (new ones still go through):
/// what a node sees when its Redis connections break while Redis itself is fine.
struct CuttableProxy {
    port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tracked.lock().expect("proxy tasks").push(task);
            }
        });
        CuttableProxy { port, connections, accept }
    }

    /// Drops every open connection (both ends see the socket close).
    fn cut(&self) {
        for task in self.connections.lock().expect("proxy tasks").drain(..) {
            task.abort();
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[actix_web::test]
async fn membership_changes_whose_first_publish_fails_still_reach_the_other_nodes() {
    let redis = redis_url();
    let upstream = redis.trim_start_matches("redis://").trim_end_matches('/').to_owned();
    let proxy = CuttableProxy::start(upstream).await;
    let database = fresh_database().await;
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    // Node 0 reaches Redis through the proxy, node 1 directly.
    let proxied_url = format!("redis://127.0.0.1:{}/", proxy.port);
    let node0 = spawn_app_on(&database, |s| {
        s.redis_url = proxied_url.clone();
        s.redis_prefix = prefix.clone();
    })
    .await;
    let node1 = spawn_app_on(&database, |s| s.redis_prefix = prefix.clone()).await;
    let owner = node0.user("owner").await;
    let bob = node1.user("bob").await;
    let carol = node1.user("carol").await;
    let room = node0.room(&owner, "private").await;
    node0.add(&owner, room, &[&carol]).await;
    let mut bob_ws = WsClient::connect(&node1, &bob.token).await;
    let mut carol_ws = WsClient::connect(&node1, &carol.token).await;
    // Node 0's Redis connections break. An add publishes to the added user's channel first: that
    // is the PUBLISH that meets the dead connection.
    proxy.cut();
    node0.add(&owner, room, &[&bob]).await;
    bob_ws.expect("member_joined", |v| v["event"] == "member_joined").await;
    assert_eq!(node1.send(&owner, room, "welcome").await.status, StatusCode::CREATED);
    bob_ws.messages(room, 1).await;
    // Again for a removal, which publishes to the room first: the room hears it.
    proxy.cut();
    let removed = node0.delete(&format!("/api/v1/rooms/{room}/members/{}", bob.id), &owner.token).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let left = carol_ws.expect("member_left", |v| v["event"] == "member_left").await;
    assert_eq!(left["data"]["user_id"], json!(bob.id));
    bob_ws.expect("member_left", |v| v["event"] == "member_left").await;
    // A message published by the healthy node does not reach the removed member.
    assert_eq!(node1.send(&owner, room, "after the removal").await.status, StatusCode::CREATED);
    let leaked = bob_ws.quiet(Duration::from_millis(700), |v| v["event"] != "message").await;
    assert!(leaked.is_none(), "the removed member got {leaked:?}");
}

/// The upgrade's outcome for these offered subprotocols and this query string: the status, the
/// subprotocol the server selected, and the first frame when it upgraded.
async fn upgrade_with(app: &TestApp, protocols: &[&str], query: &str) -> (u16, Option<String>, Option<Value>) {
    use awc::error::WsClientError;
    use awc::ws::Frame;
    use futures_util::StreamExt;
    let url = format!("{}/api/v1/ws{query}", app.address.replace("http://", "ws://"));
    let mut request = awc::Client::new().ws(url);
    if !protocols.is_empty() {
        request = request.protocols(protocols.iter().copied());
    }
    match request.connect().await {
        Ok((res, mut framed)) => {
            let selected = res.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let first = loop {
                match tokio::time::timeout(WAIT, framed.next()).await.expect("a frame in time") {
                    Some(Ok(Frame::Text(bytes))) => break serde_json::from_slice(&bytes).ok(),
                    Some(Ok(Frame::Ping(_))) => continue,
                    other => panic!("no first frame: {other:?}"),
                }
            };
            (101, selected, first)
        }
        Err(WsClientError::InvalidResponseStatus(status)) => (status.as_u16(), None, None),
        Err(other) => panic!("upgrade failed otherwise: {other:?}"),
    }
}

#[actix_web::test]
async fn the_websocket_token_rides_in_a_subprotocol_and_stays_out_of_the_url() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let offered = format!("chorus.bearer.{}", alice.token);

    // The token beside chorus.v1: upgraded as alice, and the server selects chorus.v1 (a browser
    // fails a connection whose server selects none of what it offered), never echoing the token.
    let (status, selected, ready) = upgrade_with(&app, &["chorus.v1", &offered], "").await;
    assert_eq!(status, 101);
    assert_eq!(selected.as_deref(), Some("chorus.v1"));
    let ready = ready.expect("ready");
    assert_eq!(ready["event"], "ready");
    assert_eq!(ready["data"]["user"]["id"], alice.id.to_string());

    // Without chorus.v1 there is nothing the server could select: refused, saying why.
    let (status, _, _) = upgrade_with(&app, &[&offered], "").await;
    assert_eq!(status, 400);
    // A bad token in the subprotocol is a 401 like anywhere else.
    let (status, _, _) = upgrade_with(&app, &["chorus.v1", "chorus.bearer.not-a-token"], "").await;
    assert_eq!(status, 401);
    // chorus.v1 alone carries no token.
    let (status, _, _) = upgrade_with(&app, &["chorus.v1"], "").await;
    assert_eq!(status, 401);
    // Existing clients keep working: ?token= (and then no subprotocol is selected).
    let (status, selected, ready) = upgrade_with(&app, &[], &format!("?token={}", alice.token)).await;
    assert_eq!((status, selected), (101, None));
    assert_eq!(ready.expect("ready")["event"], "ready");
}

#[actix_web::test]
async fn the_chat_page_is_served_with_a_strict_policy_and_revalidates() {
    let app = spawn_app().await;
    let page = app.raw("GET", "/", &[], None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").expect("a Content-Security-Policy");
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(!page.text.contains("<style"), "inline style in the page");

    // HEAD answers like GET, without the body.
    let head = app.raw("HEAD", "/", &[], None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.text, "");
    assert_eq!(head.header("etag"), page.header("etag"));
    assert_eq!(head.header("content-security-policy"), Some(csp));

    // Unchanged: 304 with no body; a stale tag gets the page.
    let etag = page.header("etag").expect("an ETag");
    let again = app.raw("GET", "/", &[("if-none-match", etag)], None).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.text, "");
    let stale = app.raw("GET", "/", &[("if-none-match", "\"stale\"")], None).await;
    assert_eq!(stale.status, StatusCode::OK);

    // Every script and stylesheet the page loads, and every module those import, is served as
    // what it is, under the same policy.
    let mut pending: Vec<String> = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in page.text.split(attr).skip(1) {
            let path = part.split('"').next().unwrap_or_default();
            if path.starts_with("/web/") {
                pending.push(path.to_owned());
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let file = app.raw("GET", &path, &[], None).await;
        assert_eq!(file.status, StatusCode::OK, "{path}");
        let kind = if path.ends_with(".css") { "text/css; charset=utf-8" } else { "text/javascript; charset=utf-8" };
        assert_eq!(file.header("content-type"), Some(kind), "{path}");
        assert_eq!(file.header("content-security-policy"), Some(csp), "{path}");
        assert!(file.header("etag").is_some(), "{path}");
        for part in file.text.split("from './").skip(1) {
            pending.push(format!("/web/{}", part.split('\'').next().unwrap_or_default()));
        }
    }
    assert!(seen.len() >= 5, "the page loads its stylesheet and modules: {seen:?}");
    assert_eq!(app.raw("GET", "/web/nope.js", &[], None).await.status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn the_chat_page_is_gzipped_for_clients_that_accept_it_and_plain_for_the_rest() {
    use std::io::Read;
    let app = spawn_app().await;
    let get = |accept: Option<&'static str>, path: &'static str| {
        let app = &app;
        async move {
            let mut req = app.client.get(app.url(path));
            if let Some(accept) = accept {
                req = req.insert_header(("Accept-Encoding", accept));
            }
            let mut res = req.send().await.expect("the page");
            let body = res.body().limit(1 << 20).await.expect("body");
            let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            (res.status(), header("content-encoding"), header("vary"), header("etag"), body)
        }
    };
    for path in ["/", "/web/app.js", "/web/app.css"] {
        let (status, encoding, vary, plain_etag, plain) = get(None, path).await;
        assert_eq!((status, encoding, vary.as_deref()), (StatusCode::OK, None, Some("Accept-Encoding")), "{path}");
        let (status, encoding, _, gzip_etag, gzipped) = get(Some("br, gzip;q=0.8, deflate"), path).await;
        assert_eq!((status, encoding.as_deref()), (StatusCode::OK, Some("gzip")), "{path}");
        assert!(gzipped.len() * 2 < plain.len(), "{path}: {} gzipped bytes for {} plain", gzipped.len(), plain.len());
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut unzipped).expect("valid gzip");
        assert_eq!(unzipped, plain, "{path}: the same file");
        // Two representations, two tags; each revalidates as itself.
        assert_ne!(gzip_etag, plain_etag, "{path}");
        let revalidated = app
            .client
            .get(app.url(path))
            .insert_header(("Accept-Encoding", "gzip"))
            .insert_header(("If-None-Match", gzip_etag.clone().expect("an ETag")))
            .send()
            .await
            .expect("revalidation");
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{path}");
        // gzip refused with q=0: plain.
        let (_, encoding, _, _, body) = get(Some("gzip;q=0, identity"), path).await;
        assert_eq!((encoding, body), (None, plain), "{path}");
    }
}
