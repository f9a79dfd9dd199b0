//! Messages: send (seq, idempotency, limits), history windows, edit, delete, clear, receipts, unreceived.

use std::collections::HashSet;

use actix_web::http::StatusCode;
use futures_util::future::join_all;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

async fn history(app: &TestApp, who: &TestUser, room: Uuid, query: &str) -> Reply {
    app.get(&format!("/api/v1/rooms/{room}/messages{query}"), &who.token).await
}

fn seqs(reply: &Reply) -> Vec<i64> {
    reply.items().iter().map(|m| m["seq"].as_i64().expect("seq")).collect()
}

async fn send_with_id(app: &TestApp, by: &TestUser, room: Uuid, content: &str, client_msg_id: &str) -> Reply {
    app.post(
        &format!("/api/v1/rooms/{room}/messages"),
        &by.token,
        json!({"content": content, "client_msg_id": client_msg_id}),
    )
    .await
}

async fn receipt(app: &TestApp, who: &TestUser, room: Uuid, body: Value) -> Reply {
    app.post(&format!("/api/v1/rooms/{room}/receipts"), &who.token, body).await
}

/// `(delivered_seq, read_seq)` of a receipt answer.
fn cursors(reply: &Reply) -> (i64, i64) {
    assert_eq!(reply.status, StatusCode::OK, "receipt: {:?}", reply.body);
    (reply.body["delivered_seq"].as_i64().expect("delivered_seq"), reply.body["read_seq"].as_i64().expect("read_seq"))
}

/// A room owned by alice with bob as a member.
async fn pair_room(app: &TestApp, visibility: &str) -> (TestUser, TestUser, Uuid) {
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, visibility).await;
    app.add(&alice, room, &[&bob]).await;
    (alice, bob, room)
}

#[actix_web::test]
async fn send_answers_201_with_consecutive_seqs() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    let mut ids = HashSet::new();
    for (i, (who, text)) in [(&alice, "one"), (&bob, "two"), (&alice, "three")].into_iter().enumerate() {
        let res = app.send(who, room, text).await;
        assert_eq!(res.status, StatusCode::CREATED, "{:?}", res.body);
        assert_eq!(res.body["seq"], json!(i as i64 + 1));
        assert_eq!(uuid_of(&res.body["room_id"]), room);
        assert_eq!(uuid_of(&res.body["sender_id"]), who.id);
        assert_eq!(res.body["content"], json!(text));
        assert_eq!(res.body["client_msg_id"], Value::Null);
        assert_eq!(res.body["edited_at"], Value::Null);
        assert_eq!(res.body["deleted"], json!(false));
        assert!(res.body["created_at"].as_str().is_some());
        assert_eq!(res.id().get_version_num(), 7);
        ids.insert(res.id());
    }
    assert_eq!(ids.len(), 3);
    let room_view = app.get(&format!("/api/v1/rooms/{room}"), &alice.token).await;
    assert_eq!(room_view.body["last_seq"], json!(3));
}

#[actix_web::test]
async fn history_windows_page_backward_and_forward() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "public").await;
    for i in 1..=5 {
        assert_eq!(app.send(&alice, room, &format!("m{i}")).await.status, StatusCode::CREATED);
    }
    let all = history(&app, &bob, room, "").await;
    assert_eq!(all.status, StatusCode::OK, "{:?}", all.body);
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5], "ascending");
    assert_eq!(all.items()[0]["content"], json!("m1"));
    assert_eq!(all.body["has_more"], json!(false));
    assert_eq!(all.body["next_cursor"], Value::Null);

    // Default window: the newest.
    let newest = history(&app, &bob, room, "?limit=2").await;
    assert_eq!(seqs(&newest), vec![4, 5]);
    assert_eq!(newest.body["has_more"], json!(true));
    assert_eq!(newest.body["next_cursor"], json!("4"));
    let older = history(&app, &bob, room, "?before_seq=4&limit=2").await;
    assert_eq!(seqs(&older), vec![2, 3]);
    assert_eq!(older.body["has_more"], json!(true));
    assert_eq!(older.body["next_cursor"], json!("2"));
    let oldest = history(&app, &bob, room, "?before_seq=2&limit=2").await;
    assert_eq!(seqs(&oldest), vec![1]);
    assert_eq!(oldest.body["has_more"], json!(false));
    assert_eq!(oldest.body["next_cursor"], Value::Null);

    // Forward.
    let first = history(&app, &bob, room, "?after_seq=0&limit=2").await;
    assert_eq!(seqs(&first), vec![1, 2]);
    assert_eq!(first.body["has_more"], json!(true));
    assert_eq!(first.body["next_cursor"], json!("2"));
    let next = history(&app, &bob, room, "?after_seq=2&limit=2").await;
    assert_eq!(seqs(&next), vec![3, 4]);
    assert_eq!(next.body["next_cursor"], json!("4"));
    let last = history(&app, &bob, room, "?after_seq=4&limit=2").await;
    assert_eq!(seqs(&last), vec![5]);
    assert_eq!(last.body["has_more"], json!(false));
    assert_eq!(last.body["next_cursor"], Value::Null);
    let beyond = history(&app, &bob, room, "?after_seq=5").await;
    assert!(beyond.items().is_empty());
    assert_eq!(beyond.body["has_more"], json!(false));

    // Following next_cursor backward visits every seq once.
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    for _ in 0..10 {
        let page = history(&app, &bob, room, &query).await;
        let mut s = seqs(&page);
        s.extend(seen);
        seen = s;
        match page.body["next_cursor"].as_str() {
            Some(c) => query = format!("?limit=2&before_seq={c}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
}

#[actix_web::test]
async fn history_rejects_bad_windows() {
    let app = spawn_app().await;
    let (alice, _bob, room) = pair_room(&app, "public").await;
    app.send(&alice, room, "hello").await;
    let res = history(&app, &alice, room, "?before_seq=3&after_seq=1").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.code(), "validation");
    assert!(!res.fields().is_empty());
    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?before_seq=-1", "before_seq"),
        ("?after_seq=-1", "after_seq"),
    ] {
        let res = history(&app, &alice, room, query).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{query}: {:?}", res.body);
        assert_eq!(res.fields(), vec![field.to_owned()], "{query}");
    }
}

#[actix_web::test]
async fn history_is_for_members() {
    let app = spawn_app().await;
    let (alice, _bob, public) = pair_room(&app, "public").await;
    let outsider = app.user("outsider").await;
    let private = app.room(&alice, "private").await;
    let res = history(&app, &outsider, public, "").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = history(&app, &outsider, private, "").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    let res = history(&app, &outsider, Uuid::now_v7(), "").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.code(), "room.not_found");
}

#[actix_web::test]
async fn send_to_a_room_you_are_not_in() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let outsider = app.user("outsider").await;
    let public = app.room(&alice, "public").await;
    let private = app.room(&alice, "private").await;
    let res = app.send(&outsider, public, "let me in").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = app.send(&outsider, private, "let me in").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
    let res = app.send(&outsider, Uuid::now_v7(), "anyone?").await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.code(), "room.not_found");
    // Nothing was stored, and no seq was used up.
    let view = app.get(&format!("/api/v1/rooms/{public}"), &alice.token).await;
    assert_eq!(view.body["last_seq"], json!(0));
    assert_eq!(app.send(&alice, public, "first").await.body["seq"], json!(1));
}

#[actix_web::test]
async fn content_limits() {
    let app = spawn_app().await;
    let (alice, _bob, room) = pair_room(&app, "private").await;
    let exact = "a".repeat(4096);
    let res = app.send(&alice, room, &exact).await;
    assert_eq!(res.status, StatusCode::CREATED, "4096 bytes is allowed: {:?}", res.body["code"]);
    for too_big in ["a".repeat(4097), "é".repeat(2049)] {
        let res = app.send(&alice, room, &too_big).await;
        assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE, "{} bytes: {:?}", too_big.len(), res.body);
        assert_eq!(res.code(), "message.too_large");
    }
    for empty in ["", "   ", "\n\t"] {
        let res = app.send(&alice, room, empty).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{empty:?}: {:?}", res.body);
        assert_eq!(res.code(), "validation");
        assert_eq!(res.fields(), vec!["content".to_owned()]);
    }
    let res = app.post(&format!("/api/v1/rooms/{room}/messages"), &alice.token, json!({})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["content".to_owned()]);
    let res = send_with_id(&app, &alice, room, "hi", &"c".repeat(65)).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["client_msg_id".to_owned()]);
    let res = history(&app, &alice, room, "").await;
    assert_eq!(seqs(&res), vec![1], "only the valid message was stored");
}

#[actix_web::test]
async fn edit_by_the_author_only() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    let sent = app.send(&alice, room, "typo").await;
    let path = format!("/api/v1/rooms/{room}/messages/{}", sent.id());
    let res = app.patch(&path, &alice.token, json!({"content": "fixed"})).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.id(), sent.id());
    assert_eq!(res.body["content"], json!("fixed"));
    assert_eq!(res.body["seq"], json!(1));
    let edited: chrono::DateTime<chrono::Utc> =
        res.body["edited_at"].as_str().expect("edited_at set").parse().expect("time");
    let created: chrono::DateTime<chrono::Utc> =
        res.body["created_at"].as_str().expect("created_at").parse().expect("time");
    assert!(edited >= created);
    let shown = history(&app, &bob, room, "").await;
    assert_eq!(shown.items()[0]["content"], json!("fixed"));
    assert!(shown.items()[0]["edited_at"].is_string());

    let res = app.patch(&path, &bob.token, json!({"content": "not yours"})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res = app
        .patch(&format!("/api/v1/rooms/{room}/messages/{}", Uuid::now_v7()), &alice.token, json!({"content": "x"}))
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "message.not_found");
    // A message is only found in its own room.
    let other = app.room(&alice, "private").await;
    let res = app
        .patch(&format!("/api/v1/rooms/{other}/messages/{}", sent.id()), &alice.token, json!({"content": "x"}))
        .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    assert_eq!(res.code(), "message.not_found");
    let res = app.patch(&path, &alice.token, json!({"content": "  "})).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert_eq!(res.fields(), vec!["content".to_owned()]);
    let res = app.patch(&path, &alice.token, json!({"content": "b".repeat(4097)})).await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.code(), "message.too_large");
    assert_eq!(history(&app, &bob, room, "").await.items()[0]["content"], json!("fixed"));
}

#[actix_web::test]
async fn delete_by_the_author_leaves_a_tombstone() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    app.send(&alice, room, "one").await;
    let doomed = app.send(&alice, room, "two").await;
    app.send(&bob, room, "three").await;
    let path = format!("/api/v1/rooms/{room}/messages/{}", doomed.id());
    let res = app.delete(&path, &alice.token).await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    assert_eq!(res.id(), doomed.id());
    assert_eq!(res.body["deleted"], json!(true));
    assert_eq!(res.body["content"], json!(""));
    assert_eq!(res.body["seq"], json!(2));
    let shown = history(&app, &bob, room, "").await;
    assert_eq!(seqs(&shown), vec![1, 2, 3], "the tombstone keeps its seq");
    let tomb = &shown.items()[1];
    assert_eq!(tomb["deleted"], json!(true));
    assert_eq!(tomb["content"], json!(""));
    assert_eq!(shown.items()[0]["deleted"], json!(false));
    // Gone for edits and repeated deletes.
    assert_eq!(app.patch(&path, &alice.token, json!({"content": "back"})).await.status, StatusCode::NOT_FOUND);
    let again = app.delete(&path, &alice.token).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    assert_eq!(again.code(), "message.not_found");
    assert_eq!(app.send(&alice, room, "four").await.body["seq"], json!(4));
}

#[actix_web::test]
async fn deleting_someone_elses_message_needs_admin() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    let carol = app.user("carol").await;
    app.add(&alice, room, &[&carol]).await;
    let bobs = app.send(&bob, room, "bob's").await;
    let carols = app.send(&carol, room, "carol's").await;
    let res = app.delete(&format!("/api/v1/rooms/{room}/messages/{}", carols.id()), &bob.token).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "a plain member: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    let res =
        app.patch(&format!("/api/v1/rooms/{room}/members/{}", carol.id), &alice.token, json!({"role": "admin"})).await;
    assert_eq!(res.status, StatusCode::OK);
    let res = app.delete(&format!("/api/v1/rooms/{room}/messages/{}", bobs.id()), &carol.token).await;
    assert_eq!(res.status, StatusCode::OK, "an admin: {:?}", res.body);
    assert_eq!(res.body["deleted"], json!(true));
    let res = app.delete(&format!("/api/v1/rooms/{room}/messages/{}", carols.id()), &alice.token).await;
    assert_eq!(res.status, StatusCode::OK, "the owner: {:?}", res.body);
    let shown = history(&app, &bob, room, "").await;
    assert!(shown.items().iter().all(|m| m["deleted"] == json!(true)), "{:?}", shown.body);
}

#[actix_web::test]
async fn clear_history_by_admin_keeps_the_seq_going() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    let carol = app.user("carol").await;
    app.add(&alice, room, &[&carol]).await;
    app.patch(&format!("/api/v1/rooms/{room}/members/{}", carol.id), &alice.token, json!({"role": "admin"})).await;
    let mut first = None;
    for i in 1..=3 {
        let sent = app.send(&bob, room, &format!("old {i}")).await;
        first.get_or_insert(sent.id());
    }
    let path = format!("/api/v1/rooms/{room}/messages");
    let res = app.delete(&path, &bob.token).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "a member cannot clear: {:?}", res.body);
    assert_eq!(res.code(), "room.forbidden");
    assert_eq!(seqs(&history(&app, &bob, room, "").await), vec![1, 2, 3]);

    let res = app.delete(&path, &carol.token).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT, "an admin clears: {:?}", res.body);
    let after = history(&app, &bob, room, "").await;
    assert_eq!(after.status, StatusCode::OK);
    assert!(after.items().is_empty(), "{:?}", after.body);
    assert_eq!(after.body["has_more"], json!(false));
    assert!(history(&app, &bob, room, "?after_seq=0").await.items().is_empty());
    let view = app.get(&format!("/api/v1/rooms/{room}"), &bob.token).await;
    assert_eq!(view.body["last_seq"], json!(3), "the seq is not reset");
    // Cleared messages are gone for edits too.
    let res = app.patch(&format!("{path}/{}", first.expect("sent")), &bob.token, json!({"content": "x"})).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);

    let next = app.send(&bob, room, "new").await;
    assert_eq!(next.status, StatusCode::CREATED);
    assert_eq!(next.body["seq"], json!(4));
    assert_eq!(seqs(&history(&app, &alice, room, "").await), vec![4]);
    assert_eq!(app.delete(&path, &alice.token).await.status, StatusCode::NO_CONTENT, "the owner clears too");
}

#[actix_web::test]
async fn concurrent_senders_get_gap_free_unique_seqs() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let room = app.room(&alice, "private").await;
    let mut senders = vec![alice.clone()];
    for name in ["bob", "carol", "dave"] {
        senders.push(app.user(name).await);
    }
    let refs: Vec<&TestUser> = senders.iter().skip(1).collect();
    app.add(&alice, room, &refs).await;
    let sends = senders.iter().flat_map(|u| (0..25).map(move |i| (u, i))).map(|(u, i)| {
        let app = &app;
        async move { app.send(u, room, &format!("{} #{i}", u.username)).await }
    });
    let replies = join_all(sends).await;
    let mut reply_seqs: Vec<i64> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            r.body["seq"].as_i64().expect("seq")
        })
        .collect();
    reply_seqs.sort_unstable();
    assert_eq!(reply_seqs, (1..=100).collect::<Vec<_>>());
    let stored = history(&app, &alice, room, "?after_seq=0&limit=200").await;
    assert_eq!(seqs(&stored), (1..=100).collect::<Vec<_>>(), "each seq exactly once, ascending");
    let ids: HashSet<Uuid> = stored.items().iter().map(|m| uuid_of(&m["id"])).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(app.get(&format!("/api/v1/rooms/{room}"), &alice.token).await.body["last_seq"], json!(100));
}

#[actix_web::test]
async fn a_repeated_client_msg_id_stores_once() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    let first = send_with_id(&app, &alice, room, "hello", "c-1").await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    assert_eq!(first.body["client_msg_id"], json!("c-1"));
    let retry = send_with_id(&app, &alice, room, "hello", "c-1").await;
    assert_eq!(retry.status, StatusCode::OK, "a retry answers 200: {:?}", retry.body);
    assert_eq!(retry.id(), first.id());
    assert_eq!(retry.body["seq"], json!(1));
    assert_eq!(seqs(&history(&app, &alice, room, "").await), vec![1], "stored once");
    // The id is per sender: bob may use the same one.
    let bobs = send_with_id(&app, &bob, room, "hello", "c-1").await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    assert_eq!(bobs.body["seq"], json!(2), "no seq was burnt by the retry");
    // Reusing it in another room is an error, not a silent answer from the first room.
    let other = app.room(&alice, "private").await;
    let res = send_with_id(&app, &alice, other, "hello", "c-1").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "{:?}", res.body);
    assert_eq!(res.fields(), vec!["client_msg_id".to_owned()]);
    assert!(history(&app, &alice, other, "").await.items().is_empty());
}

#[actix_web::test]
async fn concurrent_sends_with_one_client_msg_id_store_once() {
    let app = spawn_app().await;
    let (alice, _bob, room) = pair_room(&app, "private").await;
    let replies = join_all((0..10).map(|_| send_with_id(&app, &alice, room, "only once", "same-id"))).await;
    for r in &replies {
        assert!(r.status == StatusCode::CREATED || r.status == StatusCode::OK, "{:?}", r.body);
    }
    let ids: HashSet<Uuid> = replies.iter().map(Reply::id).collect();
    assert_eq!(ids.len(), 1, "every answer carries the one stored id");
    assert_eq!(replies.iter().filter(|r| r.status == StatusCode::CREATED).count(), 1);
    assert_eq!(seqs(&history(&app, &alice, room, "").await), vec![1]);
    // The losing inserts left no gap.
    assert_eq!(app.send(&alice, room, "next").await.body["seq"], json!(2));
}

#[actix_web::test]
async fn receipts_move_forward_only_and_clamp() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    for i in 1..=5 {
        app.send(&alice, room, &format!("m{i}")).await;
    }
    let res = receipt(&app, &bob, room, json!({"read_seq": 2})).await;
    assert_eq!(uuid_of(&res.body["room_id"]), room);
    assert_eq!(uuid_of(&res.body["user_id"]), bob.id);
    assert_eq!(cursors(&res), (2, 2), "reading implies delivery");
    assert_eq!(cursors(&receipt(&app, &bob, room, json!({"delivered_seq": 4})).await), (4, 2));
    assert_eq!(cursors(&receipt(&app, &bob, room, json!({"read_seq": 1})).await), (4, 2), "read never moves back");
    assert_eq!(
        cursors(&receipt(&app, &bob, room, json!({"delivered_seq": 3})).await),
        (4, 2),
        "delivered never moves back"
    );
    assert_eq!(cursors(&receipt(&app, &bob, room, json!({"delivered_seq": 1, "read_seq": 3})).await), (4, 3));
    assert_eq!(cursors(&receipt(&app, &bob, room, json!({"read_seq": 100})).await), (5, 5), "clamped to last_seq");
    assert_eq!(cursors(&receipt(&app, &bob, room, json!({"delivered_seq": 100})).await), (5, 5));
    let view = app.get(&format!("/api/v1/rooms/{room}"), &bob.token).await;
    assert_eq!((view.body["delivered_seq"].clone(), view.body["read_seq"].clone()), (json!(5), json!(5)));
}

#[actix_web::test]
async fn receipts_validation_and_access() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "public").await;
    app.send(&alice, room, "hi").await;
    for (body, field) in [
        (json!({"read_seq": -1}), "read_seq"),
        (json!({"delivered_seq": -5}), "delivered_seq"),
        (json!({}), "delivered_seq"),
        (json!({"read_seq": 1.5}), "read_seq"),
        (json!({"read_seq": "1"}), "read_seq"),
    ] {
        let res = receipt(&app, &bob, room, body.clone()).await;
        assert_eq!(res.status, StatusCode::BAD_REQUEST, "{body}: {:?}", res.body);
        assert_eq!(res.code(), "validation");
        assert!(res.fields().contains(&field.to_owned()), "{body}: {:?}", res.fields());
    }
    let res = app.request("POST", &format!("/api/v1/rooms/{room}/receipts"), Some(&bob.token), None).await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST, "no body: {:?}", res.body);
    assert_eq!(res.code(), "validation");
    // Nothing moved.
    assert_eq!(app.get(&format!("/api/v1/rooms/{room}"), &bob.token).await.body["read_seq"], json!(0));
    // JSON Schema's integers include 1.0, and the OpenAPI document says `integer`.
    assert_eq!(cursors(&receipt(&app, &bob, room, json!({"delivered_seq": 1.0})).await), (1, 0));
    let outsider = app.user("outsider").await;
    let res = receipt(&app, &outsider, room, json!({"read_seq": 1})).await;
    assert_eq!(res.status, StatusCode::FORBIDDEN, "{:?}", res.body);
    let private = app.room(&alice, "private").await;
    let res = receipt(&app, &outsider, private, json!({"read_seq": 1})).await;
    assert_eq!(res.status, StatusCode::NOT_FOUND, "{:?}", res.body);
    assert_eq!(res.code(), "room.not_found");
}

#[actix_web::test]
async fn joined_rooms_show_unread_counts() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    for i in 1..=5 {
        app.send(&alice, room, &format!("m{i}")).await;
    }
    let unread = |reply: &Reply| -> (i64, i64, i64) {
        let r = reply.items().into_iter().find(|r| uuid_of(&r["id"]) == room).expect("the room is listed");
        (
            r["last_seq"].as_i64().expect("last_seq"),
            r["read_seq"].as_i64().expect("read_seq"),
            r["unread_count"].as_i64().expect("unread"),
        )
    };
    assert_eq!(unread(&app.get("/api/v1/rooms", &bob.token).await), (5, 0, 5));
    receipt(&app, &bob, room, json!({"read_seq": 3})).await;
    assert_eq!(unread(&app.get("/api/v1/rooms?scope=joined", &bob.token).await), (5, 3, 2));
    assert_eq!(app.get(&format!("/api/v1/rooms/{room}"), &bob.token).await.body["unread_count"], json!(2));
    app.send(&alice, room, "m6").await;
    assert_eq!(unread(&app.get("/api/v1/rooms", &bob.token).await), (6, 3, 3));
}

#[actix_web::test]
async fn unreceived_lists_messages_past_the_delivered_cursor_by_room() {
    let app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let a = app.room(&alice, "private").await;
    let b = app.room(&alice, "private").await;
    let quiet = app.room(&alice, "private").await;
    app.add(&alice, a, &[&bob]).await;
    app.add(&alice, b, &[&bob]).await;
    app.add(&alice, quiet, &[&bob]).await;
    for i in 1..=2 {
        app.send(&alice, a, &format!("a{i}")).await;
    }
    for i in 1..=3 {
        app.send(&alice, b, &format!("b{i}")).await;
    }
    let pending = |reply: &Reply| -> Vec<(Uuid, Vec<i64>)> {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let mut rooms: Vec<(Uuid, Vec<i64>)> = reply.body["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| {
                let seqs = r["messages"]
                    .as_array()
                    .expect("messages")
                    .iter()
                    .map(|m| m["seq"].as_i64().expect("seq"))
                    .collect();
                (uuid_of(&r["room_id"]), seqs)
            })
            .filter(|(_, seqs): &(Uuid, Vec<i64>)| !seqs.is_empty())
            .collect();
        rooms.sort();
        rooms
    };
    let res = app.get("/api/v1/unreceived", &bob.token).await;
    let mut expected = vec![(a, vec![1, 2]), (b, vec![1, 2, 3])];
    expected.sort();
    assert_eq!(pending(&res), expected);
    let room_a = res.body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| uuid_of(&r["room_id"]) == a)
        .expect("room a")
        .clone();
    assert_eq!(room_a["messages"][0]["content"], json!("a1"));
    assert_eq!(uuid_of(&room_a["messages"][0]["room_id"]), a);

    assert_eq!(cursors(&receipt(&app, &bob, a, json!({"delivered_seq": 2})).await), (2, 0));
    assert_eq!(cursors(&receipt(&app, &bob, b, json!({"delivered_seq": 1})).await), (1, 0));
    assert_eq!(pending(&app.get("/api/v1/unreceived", &bob.token).await), vec![(b, vec![2, 3])]);
    receipt(&app, &bob, b, json!({"read_seq": 3})).await;
    assert!(pending(&app.get("/api/v1/unreceived", &bob.token).await).is_empty());
    // A new message shows up again.
    app.send(&alice, a, "a3").await;
    assert_eq!(pending(&app.get("/api/v1/unreceived", &bob.token).await), vec![(a, vec![3])]);
}

#[actix_web::test]
async fn my_own_messages_are_neither_unread_nor_unreceived_for_me() {
    let app = spawn_app().await;
    let (alice, bob, room) = pair_room(&app, "private").await;
    app.send(&alice, room, "mine 1").await;
    app.send(&alice, room, "mine 2").await;
    app.send(&bob, room, "bob's").await;
    let listed = app.get("/api/v1/rooms", &alice.token).await;
    let mine = listed.items().into_iter().find(|r| uuid_of(&r["id"]) == room).expect("listed");
    assert_eq!(mine["last_seq"], json!(3));
    assert_eq!(mine["unread_count"], json!(1), "only bob's message is unread for alice: {mine}");
    let pending = app.get("/api/v1/unreceived", &alice.token).await;
    let seqs: Vec<i64> = pending.body["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .flat_map(|r| r["messages"].as_array().cloned().unwrap_or_default())
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![3], "alice's own messages are not waiting for alice: {:?}", pending.body);
}

/// Runs a PostgreSQL client tool against the test server; panics with its output on failure.
fn pg_tool(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[actix_web::test]
async fn history_going_back_reads_the_replica_only_when_it_has_the_seq_and_the_membership() {
    // The "replica" is a copy of the primary taken at one moment: behind it, as a lagging replica is.
    let replica = fresh_database().await;
    let primary = fresh_database().await;
    let replica_url = replica.clone();
    let app = spawn_app_on(&primary, |s| s.database_replica_url = Some(replica_url)).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let room = app.room(&alice, "public").await;
    for i in 1..=10 {
        assert_eq!(app.send(&alice, room, &format!("m{i}")).await.status, StatusCode::CREATED);
    }
    let dump = pg_tool(
        "pg_dump",
        &["--data-only", "--disable-triggers", "--exclude-table-data=__diesel_schema_migrations", &primary],
    );
    let copy = std::env::temp_dir().join(format!("chorus-replica-{}.sql", Uuid::new_v4().simple()));
    std::fs::write(&copy, dump).expect("write the dump");
    pg_tool("psql", &["-q", "-v", "ON_ERROR_STOP=1", "-f", &copy.display().to_string(), &replica]);
    let _ = std::fs::remove_file(&copy);
    // Marks what only the replica says, to tell which database answered.
    let mark = format!("UPDATE messages SET content = 'from the replica' WHERE room_id = '{room}' AND seq = 3");
    pg_tool("psql", &["-q", "-c", &mark, &replica]);
    for i in 11..=15 {
        app.send(&alice, room, &format!("m{i}")).await;
    }
    let content_of = |reply: &Reply, seq: i64| {
        reply.items().into_iter().find(|m| m["seq"] == json!(seq)).map(|m| m["content"].clone())
    };
    // The client knows seq 15: the replica (at 10) cannot answer, the primary does.
    let page = history(&app, &alice, room, "?before_seq=16&limit=50").await;
    assert_eq!(seqs(&page), (1..=15).collect::<Vec<_>>());
    assert_eq!(content_of(&page, 3), Some(json!("m3")));
    // Below what the replica has: it answers.
    let page = history(&app, &alice, room, "?before_seq=8&limit=50").await;
    assert_eq!(seqs(&page), (1..=7).collect::<Vec<_>>());
    assert_eq!(content_of(&page, 3), Some(json!("from the replica")));
    // Bob joined after the copy: the replica does not know he is a member; the primary does.
    app.join(&bob, room).await;
    let page = history(&app, &bob, room, "?before_seq=5&limit=50").await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    assert_eq!(content_of(&page, 3), Some(json!("m3")));
    // The newest page is always the primary's.
    let page = history(&app, &alice, room, "?limit=50").await;
    assert_eq!(content_of(&page, 3), Some(json!("m3")));
    let metrics = app.raw("GET", "/metrics", &[], None).await.text;
    assert!(metrics.contains(r#"chorus_db_replica_reads_total{source="replica"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"chorus_db_replica_reads_total{source="primary"} 2"#), "{metrics}");
}
