//! The cluster: WebSocket sessions on several nodes, fanned out through Redis.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use uuid::Uuid;

use crate::clients::*;
use crate::helpers::*;

/// Three nodes, three users (one per node), one private room they all share.
async fn three_node_room() -> (Vec<TestApp>, Vec<TestUser>, Uuid) {
    let nodes = spawn_cluster(3, |_| {}).await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let carol = nodes[2].user("carol").await;
    let room = nodes[0].room(&alice, "private").await;
    nodes[0].add(&alice, room, &[&bob, &carol]).await;
    (nodes, vec![alice, bob, carol], room)
}

#[actix_web::test]
async fn a_message_sent_on_one_node_reaches_sessions_on_the_others() {
    let (nodes, users, room) = three_node_room().await;
    let mut a = WsClient::connect(&nodes[0], &users[0].token).await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    let mut c = WsClient::connect(&nodes[2], &users[2].token).await;
    assert_eq!(b.ready["node_id"], "node-2");
    assert!(b.ready["rooms"].as_array().is_some_and(|r| r.iter().any(|x| x["room_id"] == json!(room))));

    let reply = a.request("send", json!({"room_id": room, "content": "hello cluster"})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["seq"], 1);
    for client in [&mut a, &mut b, &mut c] {
        let event = client.expect("message", |v| v["event"] == "message").await;
        assert_eq!(event["data"]["content"], "hello cluster");
        assert_eq!(event["data"]["seq"], 1);
    }
    // REST sends fan out exactly like WebSocket sends.
    let sent = nodes[2].send(&users[2], room, "over rest").await;
    assert_eq!(sent.status.as_u16(), 201);
    assert_eq!(b.messages(room, 1).await, vec![2]);
    assert_eq!(a.messages(room, 1).await, vec![2]);
}

#[actix_web::test]
async fn every_session_sees_seq_order_without_gaps_or_duplicates_when_nodes_race() {
    let (nodes, users, room) = three_node_room().await;
    let mut watchers = Vec::new();
    for (node, user) in nodes.iter().zip(&users) {
        watchers.push(WsClient::connect(node, &user.token).await);
    }
    // Each user sends 30 messages through their own node, all three at once.
    let per_sender = 30;
    let sends = nodes.iter().zip(&users).map(|(node, user)| async move {
        for i in 0..per_sender {
            let r = node.send(user, room, &format!("{} #{i}", user.username)).await;
            assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
        }
    });
    join_all(sends).await;
    let total = per_sender * 3;
    for watcher in &mut watchers {
        let seqs = watcher.messages(room, total).await;
        assert_eq!(seqs, (1..=total as i64).collect::<Vec<_>>(), "in order, no gaps, no duplicates");
        let extra = watcher.quiet(Duration::from_millis(300), |v| v["event"] != "message").await;
        assert!(extra.is_none(), "no duplicate after the last one: {extra:?}");
    }
}

#[actix_web::test]
async fn a_retried_send_over_websocket_stores_and_fans_out_once() {
    let (nodes, users, room) = three_node_room().await;
    let mut a = WsClient::connect(&nodes[0], &users[0].token).await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    let data = json!({"room_id": room, "content": "exactly once", "client_msg_id": "c-1"});
    let first = a.request("send", data.clone()).await;
    let second = a.request("send", data).await;
    assert_eq!(first["ok"], true);
    assert_eq!(first["result"]["id"], second["result"]["id"]);
    assert_eq!(first["result"]["seq"], second["result"]["seq"]);
    assert_eq!(b.messages(room, 1).await, vec![1]);
    assert!(b.quiet(Duration::from_millis(300), |v| v["event"] != "message").await.is_none());
    let history = nodes[1].get(&format!("/api/v1/rooms/{room}/messages"), &users[1].token).await;
    assert_eq!(history.body["items"].as_array().map(Vec::len), Some(1));
}

#[actix_web::test]
async fn a_reconnecting_client_recovers_what_it_missed_with_sync() {
    let (nodes, users, room) = three_node_room().await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    nodes[0].send(&users[0], room, "one").await;
    assert_eq!(b.messages(room, 1).await, vec![1]);
    drop(b);
    for text in ["two", "three", "four"] {
        nodes[0].send(&users[0], room, text).await;
    }
    // Back, on another node.
    let mut b = WsClient::connect(&nodes[2], &users[1].token).await;
    let entry = b.ready["rooms"].as_array().and_then(|r| r.iter().find(|x| x["room_id"] == json!(room)).cloned());
    assert_eq!(entry.map(|e| e["last_seq"].clone()), Some(json!(4)));
    let reply = b.request("sync", json!({"rooms": [{"room_id": room, "after_seq": 1}]})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["result"]["rooms"][0]["last_seq"], 4);
    assert_eq!(b.messages(room, 3).await, vec![2, 3, 4], "replayed in order before the reply");
    nodes[0].send(&users[0], room, "five").await;
    assert_eq!(b.messages(room, 1).await, vec![5], "live again, no duplicates");
}

#[actix_web::test]
async fn acks_move_cursors_and_unreceived_follows_them() {
    let (nodes, users, room) = three_node_room().await;
    for text in ["a", "b", "c"] {
        nodes[0].send(&users[0], room, text).await;
    }
    let unreceived = nodes[1].get("/api/v1/unreceived", &users[1].token).await;
    let rooms = unreceived.body["rooms"].as_array().cloned().unwrap_or_default();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0]["messages"].as_array().map(Vec::len), Some(3));

    let mut alice = WsClient::connect(&nodes[0], &users[0].token).await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    let reply = b.request("ack", json!({"room_id": room, "delivered_seq": 3, "read_seq": 2})).await;
    assert_eq!(reply["result"], json!({"room_id": room, "user_id": users[1].id, "delivered_seq": 3, "read_seq": 2}));
    let receipt = alice.expect("receipt", |v| v["event"] == "receipt").await;
    assert_eq!(receipt["data"]["read_seq"], 2);
    assert_eq!(receipt["data"]["user_id"], json!(users[1].id));
    let unreceived = nodes[2].get("/api/v1/unreceived", &users[1].token).await;
    assert_eq!(unreceived.body["rooms"], json!([]));
}

#[actix_web::test]
async fn membership_changes_take_effect_live_on_every_node() {
    let nodes = spawn_cluster(2, |_| {}).await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[1].user("bob").await;
    let room = nodes[0].room(&alice, "private").await;
    let mut b1 = WsClient::connect(&nodes[1], &bob.token).await;
    let mut b2 = WsClient::connect(&nodes[0], &bob.token).await;
    assert_eq!(b1.ready["rooms"], json!([]));

    nodes[0].add(&alice, room, &[&bob]).await;
    for b in [&mut b1, &mut b2] {
        let joined = b.expect("member_joined", |v| v["event"] == "member_joined").await;
        assert_eq!(joined["data"]["user_id"], json!(bob.id));
    }
    nodes[0].send(&alice, room, "welcome").await;
    assert_eq!(b1.messages(room, 1).await, vec![1]);
    assert_eq!(b2.messages(room, 1).await, vec![1]);

    let removed = nodes[0].delete(&format!("/api/v1/rooms/{room}/members/{}", bob.id), &alice.token).await;
    assert_eq!(removed.status.as_u16(), 204);
    for b in [&mut b1, &mut b2] {
        let left =
            b.expect("member_left", |v| v["event"] == "member_left" && v["data"]["user_id"] == json!(bob.id)).await;
        assert_eq!(left["data"]["reason"], "removed");
    }
    nodes[0].send(&alice, room, "after removal").await;
    assert!(
        b1.quiet(Duration::from_millis(500), |v| v["event"] != "message").await.is_none(),
        "removed: no more messages"
    );
    assert!(b2.quiet(Duration::from_millis(100), |v| v["event"] != "message").await.is_none());
}

#[actix_web::test]
async fn room_events_reach_members_on_other_nodes() {
    let (nodes, users, room) = three_node_room().await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    let sent = nodes[0].send(&users[0], room, "draft").await;
    let message_id = sent.body["id"].as_str().unwrap_or_default().to_owned();
    let mut a = WsClient::connect(&nodes[0], &users[0].token).await;
    let edited = a.request("edit", json!({"message_id": message_id, "content": "final"})).await;
    assert_eq!(edited["ok"], true, "{edited}");
    let event = b.expect("message_edited", |v| v["event"] == "message_edited").await;
    assert_eq!(event["data"]["content"], "final");
    a.request("delete", json!({"message_id": message_id})).await;
    let event = b.expect("message_deleted", |v| v["event"] == "message_deleted").await;
    assert_eq!(event["data"]["seq"], 1);
    nodes[0].patch(&format!("/api/v1/rooms/{room}"), &users[0].token, json!({"name": "renamed"})).await;
    let event = b.expect("room_updated", |v| v["event"] == "room_updated").await;
    assert_eq!(event["data"]["name"], "renamed");
    nodes[0].delete(&format!("/api/v1/rooms/{room}/messages"), &users[0].token).await;
    let event = b.expect("room_cleared", |v| v["event"] == "room_cleared").await;
    assert_eq!(event["data"]["cleared_seq"], 1);
    nodes[0].delete(&format!("/api/v1/rooms/{room}"), &users[0].token).await;
    let event = b.expect("room_deleted", |v| v["event"] == "room_deleted").await;
    assert_eq!(event["data"]["room_id"], json!(room));
}

#[actix_web::test]
async fn typing_reaches_others_once_per_throttle_window_and_never_its_author() {
    let (nodes, users, room) = three_node_room().await;
    let mut a = WsClient::connect(&nodes[0], &users[0].token).await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    let first = a.request("typing", json!({"room_id": room})).await;
    let second = a.request("typing", json!({"room_id": room})).await;
    assert_eq!(first["result"]["forwarded"], true);
    assert_eq!(second["result"]["forwarded"], false, "throttled");
    let typing = b.expect("typing", |v| v["event"] == "typing").await;
    assert_eq!(typing["data"], json!({"room_id": room, "user_id": users[0].id, "username": users[0].username}));
    assert!(b.quiet(Duration::from_millis(300), |v| v["event"] != "typing").await.is_none());
    assert!(a.quiet(Duration::from_millis(100), |v| v["event"] != "typing").await.is_none());
    // Not a member: refused.
    let outsider = nodes[2].user("outsider").await;
    let mut o = WsClient::connect(&nodes[2], &outsider.token).await;
    let refused = o.request("typing", json!({"room_id": room})).await;
    assert_eq!(refused["error"]["code"], "room.not_found");
}

#[actix_web::test]
async fn bad_frames_get_errors_and_the_socket_stays_open() {
    let nodes = spawn_cluster(1, |s| s.ws_rate_burst = 1000).await;
    let alice = nodes[0].user("alice").await;
    let room = nodes[0].room(&alice, "public").await;
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    a.send_raw("not json".into()).await;
    let err = a.expect("error", |v| v["event"] == "error").await;
    assert_eq!(err["data"]["code"], "validation");
    a.emit("teleport", json!({})).await;
    let err = a.expect("error", |v| v["event"] == "error").await;
    assert_eq!(err["data"]["details"][0]["field"], "event");
    assert!(err["data"]["details"][0]["message"].as_str().is_some_and(|m| m.contains("teleport")));
    let reply = a.request("send", json!({"room_id": room})).await;
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "validation");
    assert_eq!(reply["error"]["details"][0]["field"], "content");
    let too_long = a.request("send", json!({"room_id": room, "content": "y".repeat(5000)})).await;
    assert_eq!(too_long["error"]["code"], "message.too_large");
    let pong = a.request("ping", json!({})).await;
    assert_eq!(pong["ok"], true, "still open after all that");
    assert!(a.closed.is_none());
}

/// The socket's own framing (`src/ws/wire.rs`): fragments are put together, binary frames are
/// refused with an error, pings are answered; text that is not UTF-8 closes with 1007. A frame or
/// fragmented message over the cap closes with 1009 (`tests/api/wire.rs`).
#[actix_web::test]
async fn websocket_framing_fragments_pings_and_protocol_errors() {
    use actix_http::ws::Item;
    use actix_web::web::Bytes;
    use awc::ws::{Frame, Message};

    let nodes = spawn_cluster(1, |_| {}).await;
    let alice = nodes[0].user("alice").await;
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    let text = json!({"event": "ping", "data": {}, "ref": "split"}).to_string();
    let (head, rest) = text.split_at(5);
    let (middle, tail) = rest.split_at(7);
    a.send_message(Message::Continuation(Item::FirstText(Bytes::from(head.to_owned())))).await;
    a.send_message(Message::Continuation(Item::Continue(Bytes::from(middle.to_owned())))).await;
    a.send_message(Message::Continuation(Item::Last(Bytes::from(tail.to_owned())))).await;
    let reply = a.expect("the reply to a fragmented frame", |v| v["ref"] == "split").await;
    assert_eq!(reply["data"]["ok"], true);

    a.send_message(Message::Binary(Bytes::from_static(b"\x00\x01"))).await;
    let err = a.expect("error", |v| v["event"] == "error").await;
    assert_eq!(err["data"]["details"][0]["field"], "frame");

    a.send_message(Message::Ping(Bytes::from_static(b"hi"))).await;
    let mut pong = None;
    while let Some(frame) = a.next_frame(WAIT).await {
        if let Frame::Pong(payload) = frame {
            pong = Some(payload);
            break;
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"hi"[..]), "a ping is answered with its payload");

    // awc's text frames only carry UTF-8; fragments carry bytes.
    a.send_message(Message::Continuation(Item::FirstText(Bytes::from_static(&[b'{', 0xff])))).await;
    a.send_message(Message::Continuation(Item::Last(Bytes::from_static(&[0xfe, b'}'])))).await;
    assert_eq!(a.until_closed(WAIT).await, Some(1007), "text that is not UTF-8");
}

#[actix_web::test]
async fn a_session_over_its_rate_is_told_so() {
    let nodes = spawn_cluster(1, |s| {
        s.ws_rate_burst = 5;
        s.ws_rate_per_s = 1;
    })
    .await;
    let alice = nodes[0].user("alice").await;
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let reply = a.request("ping", json!({})).await;
        codes.push(reply["error"]["code"].as_str().unwrap_or("ok").to_owned());
    }
    assert_eq!(codes.iter().filter(|c| *c == "ok").count(), 5, "{codes:?}");
    assert!(codes.iter().skip(5).all(|c| c == "rate_limited"), "{codes:?}");
}

#[actix_web::test]
async fn an_expired_token_closes_the_socket_unless_auth_swapped_in_a_fresh_one() {
    let nodes = spawn_cluster(1, |s| s.access_token_ttl_s = 10).await;
    let alice = nodes[0].user("alice").await;
    let secret = "test-secret-that-is-long-enough-0123456789";
    let mint = |ttl: u64| {
        let now = chorus::unix_secs();
        let claims = chorus::Claims { sub: alice.id, name: alice.username.clone(), iat: now, exp: now + ttl, gen: 0 };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("token")
    };
    let mut short = WsClient::connect(&nodes[0], &mint(2)).await;
    let mut swapped = WsClient::connect(&nodes[0], &mint(2)).await;
    let reply = swapped.request("auth", json!({"token": mint(60)})).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(short.until_closed(Duration::from_secs(8)).await, Some(4001));
    let pong = swapped.request("ping", json!({})).await;
    assert_eq!(pong["ok"], true, "the re-authenticated socket lives on");
}

#[actix_web::test]
async fn presence_follows_the_first_and_last_session_across_nodes() {
    let (nodes, users, _room) = three_node_room().await;
    let mut b = WsClient::connect(&nodes[1], &users[1].token).await;
    let offline = nodes[2].get(&format!("/api/v1/users/{}", users[0].id), &users[2].token).await;
    assert_eq!(offline.body["online"], false);
    let a1 = WsClient::connect(&nodes[0], &users[0].token).await;
    let online =
        b.expect("presence online", |v| v["event"] == "presence" && v["data"]["user_id"] == json!(users[0].id)).await;
    assert_eq!(online["data"]["online"], true);
    let seen = nodes[2].get(&format!("/api/v1/users/{}", users[0].id), &users[2].token).await;
    assert_eq!(seen.body["online"], true);
    // A second session is not a transition; closing it is not either.
    let a2 = WsClient::connect(&nodes[2], &users[0].token).await;
    drop(a2);
    drop(a1);
    let gone =
        b.expect("presence offline", |v| v["event"] == "presence" && v["data"]["user_id"] == json!(users[0].id)).await;
    assert_eq!(gone["data"]["online"], false, "exactly one online, then offline: {gone}");
    assert!(gone["data"]["last_seen_at"].is_string());
}

#[actix_web::test]
async fn a_slow_consumer_is_cut_with_4008_while_a_fast_one_keeps_up() {
    // 128 frames: room for the fast reader to share its runtime with the senders without falling behind.
    let nodes = spawn_cluster(2, |s| s.ws_queue = 128).await;
    let alice = nodes[0].user("alice").await;
    let slow = nodes[1].user("slow").await;
    let fast = nodes[1].user("fast").await;
    let room = nodes[0].room(&alice, "private").await;
    nodes[0].add(&alice, room, &[&slow, &fast]).await;
    let mut slow_ws = WsClient::connect(&nodes[1], &slow.token).await;
    let mut fast_ws = WsClient::connect(&nodes[1], &fast.token).await;
    // The slow client never reads while 3,500 large messages (14 MB) arrive: the kernel buffers fill, its
    // queue overflows, and the node cuts it. The fast one reads everything, in order.
    let big = "z".repeat(4000);
    // More than loopback TCP buffers can absorb (autotuned up to ~10 MB between the two ends).
    let total = 3500;
    let sender = async {
        for _ in 0..total / 10 {
            join_all((0..10).map(|_| nodes[0].send(&alice, room, &big))).await;
        }
    };
    let reader = async {
        let mut seqs = Vec::new();
        while seqs.len() < total {
            match fast_ws.next_event(WAIT).await {
                Some(v) if v["event"] == "message" => seqs.push(v["data"]["seq"].as_i64().unwrap_or(-1)),
                Some(_) => {}
                None => break,
            }
        }
        seqs
    };
    let ((), seqs) = futures_util::join!(sender, reader);
    assert_eq!(seqs.len(), total, "the fast consumer got everything");
    assert!(seqs.windows(2).all(|w| w[0] + 1 == w[1]), "in order");
    assert_eq!(slow_ws.until_closed(Duration::from_secs(40)).await, Some(4008));
    let metrics =
        nodes[1].client.get(nodes[1].url("/metrics")).send().await.expect("metrics").body().await.expect("body");
    let text = String::from_utf8_lossy(&metrics);
    assert!(text.contains("chorus_slow_consumer_closes_total 1"), "counted");
}

#[actix_web::test]
async fn presence_is_pushed_to_small_rooms_only() {
    let nodes = spawn_cluster(1, |s| s.presence_max_room = 2).await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[0].user("bob").await;
    let carol = nodes[0].user("carol").await;
    let big = nodes[0].room(&alice, "private").await;
    nodes[0].add(&alice, big, &[&bob, &carol]).await;
    let mut c = WsClient::connect(&nodes[0], &carol.token).await;
    // Alice shares only the three-member room with Carol: over the limit, no push.
    let a = WsClient::connect(&nodes[0], &alice.token).await;
    assert!(c.quiet(Duration::from_millis(500), |v| v["event"] != "presence").await.is_none());
    // A direct room (two members) is within it.
    let direct = nodes[0].post("/api/v1/direct", &carol.token, json!({"user_id": alice.id})).await;
    assert_eq!(direct.status.as_u16(), 201);
    drop(a);
    let gone = c.expect("presence", |v| v["event"] == "presence").await;
    assert_eq!(gone["data"]["user_id"], json!(alice.id));
    assert_eq!(gone["data"]["online"], false);
    // Asking still works for any room size.
    let asked = c.request("presence", json!({"user_ids": [bob.id]})).await;
    assert_eq!(asked["result"][0]["online"], false);
}
