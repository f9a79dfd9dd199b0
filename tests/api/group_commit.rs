//! Group commit: sends written to PostgreSQL in batches keep every guarantee of a lone send (a
//! gap-free seq per room with several messages of one room in one batch, idempotency without
//! aborting the batch or leaving a gap, the same refusals) and batches that share rooms never
//! deadlock. To make a batch form for certain, a test holds a room's row lock (as a slow
//! transaction would) while the node's one writer waits on it, queues the sends it wants batched,
//! and lets go.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use diesel::sql_types::Uuid as SqlUuid;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::clients::spawn_cluster;
use crate::helpers::*;

async fn connect(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.database_url).await.expect("connect to the test database")
}

/// Polls `check` until it holds (at most 20 s).
async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 20 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let body = app.client.get(app.url("/metrics")).send().await.expect("metrics").body().await.expect("body");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[derive(diesel::QueryableByName)]
struct Seq {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
}

/// Every seq of `room`'s messages, in order.
async fn stored_seqs(conn: &mut AsyncPgConnection, room: Uuid) -> Vec<i64> {
    diesel::sql_query("SELECT seq FROM messages WHERE room_id = $1 ORDER BY seq")
        .bind::<SqlUuid, _>(room)
        .load::<Seq>(conn)
        .await
        .expect("seqs")
        .into_iter()
        .map(|s| s.seq)
        .collect()
}

/// Sends `first` (which must wait on `room`'s row lock, held here), then, once a writer is waiting
/// on that lock, the sends `rest` makes; lets the lock go when all of them are queued. With one
/// writer they are then written as one batch.
async fn behind_a_locked_room<F, R>(
    app: &TestApp,
    room: Uuid,
    first: F,
    rest: impl FnOnce() -> Vec<R>,
) -> (Reply, Vec<Reply>)
where
    F: std::future::Future<Output = Reply>,
    R: std::future::Future<Output = Reply>,
{
    let mut locker = connect(app).await;
    diesel::sql_query("BEGIN").execute(&mut locker).await.expect("begin");
    diesel::sql_query("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE")
        .bind::<SqlUuid, _>(room)
        .execute(&mut locker)
        .await
        .expect("lock the room");
    let then_the_rest = async {
        wait_for("the first send waits on the locked room", || async {
            let mut conn = connect(app).await;
            diesel::sql_query(
                "SELECT 1::bigint AS seq FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .load::<Seq>(&mut conn)
            .await
            .is_ok_and(|rows| !rows.is_empty())
        })
        .await;
        let rest = rest();
        let count = rest.len() as f64;
        let release = async {
            wait_for("the sends queued behind the busy writer", || async {
                metric(app, "chorus_db_send_queued").await >= count
            })
            .await;
            diesel::sql_query("COMMIT").execute(&mut locker).await.expect("release the room");
        };
        futures_util::join!(join_all(rest), release).0
    };
    futures_util::join!(first, then_the_rest)
}

fn outcome_seq(reply: &Reply) -> Option<i64> {
    reply.body["seq"].as_i64()
}

fn one_writer(s: &mut chorus::config::Settings) {
    s.send_writers = Some(1);
    s.send_rate_per_s = 10_000;
    s.send_burst = 10_000;
}

async fn send(app: &TestApp, who: &TestUser, room: Uuid, content: &str, id: Option<&str>) -> Reply {
    app.post(&format!("/api/v1/rooms/{room}/messages"), &who.token, json!({"content": content, "client_msg_id": id}))
        .await
}

#[actix_web::test]
async fn a_batch_numbers_each_rooms_messages_in_order_and_refuses_only_what_a_lone_send_refuses() {
    let app = spawn_app_with(one_writer).await;
    let (alice, bob, carol) = (app.user("alice").await, app.user("bob").await, app.user("carol").await);
    let first = app.room(&alice, "private").await;
    app.add(&alice, first, &[&bob]).await;
    let second = app.room(&bob, "private").await;
    let gone = app.room(&alice, "private").await;
    assert_eq!(app.delete(&format!("/api/v1/rooms/{gone}"), &alice.token).await.status, StatusCode::NO_CONTENT);
    // A message stored before: its client_msg_id comes again in the batch (a retry).
    let before = send(&app, &alice, first, "0", Some("m-0")).await;
    assert_eq!(before.status, StatusCode::CREATED, "{:?}", before.body);
    let batches_before = metric(&app, "chorus_db_send_batches_total").await;

    let (lone, batch) = behind_a_locked_room(&app, first, send(&app, &alice, first, "lone", None), || {
        vec![
            send(&app, &alice, first, "a1", Some("m-1")),
            send(&app, &bob, second, "b1", None),
            send(&app, &carol, first, "not a member", None),
            send(&app, &bob, first, "a2", None),
            send(&app, &alice, first, "retry", Some("m-0")),
            send(&app, &alice, gone, "deleted room", None),
            send(&app, &bob, second, "b2", Some("m-1")), // another sender's ids: stored
            send(&app, &alice, first, "a3", Some("m-3")),
        ]
    })
    .await;
    assert_eq!((lone.status, &lone.body["seq"]), (StatusCode::CREATED, &json!(2)));
    // The lone send, then the eight queued ones in one batch.
    assert_eq!(metric(&app, "chorus_db_send_batches_total").await - batches_before, 2.0);
    let outcome: Vec<(StatusCode, Option<Uuid>, Option<i64>)> = batch
        .iter()
        .map(|r| (r.status, r.body["room_id"].as_str().and_then(|id| id.parse().ok()), r.body["seq"].as_i64()))
        .collect();
    let created = StatusCode::CREATED;
    // Refused ones answer what a lone send answers.
    let outsider = send(&app, &carol, first, "not a member", None).await;
    let deleted = send(&app, &alice, gone, "deleted room", None).await;
    assert!(outsider.status.is_client_error() && deleted.status.is_client_error());
    // The requests reach the node in any order, and a batch numbers them in the order they queued:
    // each room's accepted messages take its next seqs, whichever got which; refused ones take none.
    let mut outcome = outcome;
    for i in [0, 3, 7] {
        assert_eq!((outcome[i].0, outcome[i].1), (created, Some(first)), "{:?}", batch[i].body);
    }
    for i in [1, 6] {
        assert_eq!((outcome[i].0, outcome[i].1), (created, Some(second)), "{:?}", batch[i].body);
    }
    let mut first_seqs: Vec<_> = [0, 3, 7].iter().map(|&i| outcome[i].2).collect();
    first_seqs.sort();
    assert_eq!(first_seqs, vec![Some(3), Some(4), Some(5)]);
    let mut second_seqs: Vec<_> = [1, 6].iter().map(|&i| outcome[i].2).collect();
    second_seqs.sort();
    assert_eq!(second_seqs, vec![Some(1), Some(2)]);
    outcome.retain(|o| o.0 != created);
    assert_eq!(
        outcome,
        vec![
            (outsider.status, None, None),
            (StatusCode::OK, Some(first), Some(1)), // the retry answers the stored message
            (deleted.status, None, None),
        ]
    );
    assert_eq!((batch[2].code(), batch[5].code()), (outsider.code(), deleted.code()));
    assert_eq!(batch[4].id(), before.id());
    let mut conn = connect(&app).await;
    assert_eq!(stored_seqs(&mut conn, first).await, vec![1, 2, 3, 4, 5]);
    assert_eq!(stored_seqs(&mut conn, second).await, vec![1, 2]);

    // The senders' own cursors moved to their last message of each room (they have seen them).
    let cursors = |who: &TestUser, room: Uuid| {
        let app = &app;
        let token = who.token.clone();
        async move {
            let reply = app.post(&format!("/api/v1/rooms/{room}/receipts"), &token, json!({"delivered_seq": 1})).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
            (reply.body["delivered_seq"].as_i64(), reply.body["read_seq"].as_i64())
        }
    };
    let own_last = |i: usize| outcome_seq(&batch[i]);
    let alice_last = own_last(0).max(own_last(7));
    assert_eq!(cursors(&alice, first).await, (alice_last, alice_last));
    assert_eq!(cursors(&bob, first).await, (own_last(3), own_last(3)));
    assert_eq!(cursors(&bob, second).await, (Some(2), Some(2)));
    // The rooms' counters moved with them: the next send continues without a gap.
    assert_eq!(app.send(&alice, first, "after").await.body["seq"], 6);
}

#[actix_web::test]
async fn a_retry_queued_with_its_first_try_is_answered_with_the_one_stored_message() {
    let app = spawn_app_with(one_writer).await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "private").await;
    let (_, batch) = behind_a_locked_room(&app, room, send(&app, &alice, room, "lone", None), || {
        vec![
            send(&app, &alice, room, "hello", Some("same")),
            send(&app, &alice, room, "between", None),
            send(&app, &alice, room, "hello", Some("same")),
            send(&app, &alice, room, "hello", Some("same")),
        ]
    })
    .await;
    let statuses: Vec<StatusCode> = batch.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![StatusCode::CREATED, StatusCode::CREATED, StatusCode::OK, StatusCode::OK]);
    assert_eq!(batch[2].id(), batch[0].id());
    assert_eq!(batch[3].id(), batch[0].id());
    let mut conn = connect(&app).await;
    assert_eq!(stored_seqs(&mut conn, room).await, vec![1, 2, 3], "stored once, no seq burnt");
}

#[actix_web::test]
async fn many_senders_on_two_nodes_sharing_rooms_get_gap_free_seqs_and_no_deadlock() {
    let nodes = spawn_cluster(2, |s| {
        s.send_writers = Some(2);
        s.send_rate_per_s = 10_000;
        s.send_burst = 10_000;
    })
    .await;
    let owner = nodes[0].user("owner").await;
    let mut users = vec![];
    for i in 0..6 {
        users.push(nodes[0].user(&format!("user{i}")).await);
    }
    let mut rooms = vec![];
    for _ in 0..4 {
        let room = nodes[0].room(&owner, "private").await;
        nodes[0].add(&owner, room, &users.iter().collect::<Vec<_>>()).await;
        rooms.push(room);
    }
    // Senders of every room on both nodes at once: batches hold several rooms, in every order.
    let replies = join_all((0..240).map(|i| {
        let node = &nodes[i % 2];
        send(node, &users[i % 6], rooms[(i * 7 / 3) % 4], "x", None)
    }))
    .await;
    // Batches did form (the point of the test): more messages than batches, over both nodes.
    let (mut batches, mut batched) = (0.0, 0.0);
    for node in &nodes {
        batches += metric(node, "chorus_db_send_batches_total").await;
        batched += metric(node, "chorus_db_send_batched_messages_total").await;
    }
    assert!(batched > batches, "{batched} messages in {batches} batches");
    let mut per_room: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        per_room.entry(uuid_of(&reply.body["room_id"])).or_default().push(reply.body["seq"].as_i64().expect("seq"));
    }
    let mut conn = connect(&nodes[0]).await;
    for (room, mut seqs) in per_room {
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "room {room}: every send answered a seq once");
        assert_eq!(stored_seqs(&mut conn, room).await, seqs, "room {room}: what is stored is what was answered");
    }
}
