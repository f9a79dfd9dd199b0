//! `/socket.io/` at the packet level: what the Engine.IO v4 and Socket.IO v5 specs say a server
//! answers, driven by hand over long-polling and WebSocket, against real nodes. The real client
//! libraries (socket.io-client under Node, python-socketio) run against a cluster behind nginx in
//! `script/test`'s `socketio` phase (tests/socketio/).

use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::clients::{WsClient, WAIT};
use crate::helpers::*;

const NODE_SECRET: &str = "test-secret-that-is-long-enough-0123456789";

/// One Engine.IO session over long-polling, driven packet by packet.
struct Polling<'a> {
    app: &'a TestApp,
    sid: String,
}

impl<'a> Polling<'a> {
    async fn open(app: &'a TestApp) -> (Polling<'a>, Value) {
        let reply = app.raw("GET", "/socket.io/?EIO=4&transport=polling", &[], None).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
        assert_eq!(reply.header("content-type"), Some("text/plain; charset=UTF-8"));
        let handshake: Value =
            serde_json::from_str(reply.text.strip_prefix('0').expect("an open packet")).expect("JSON");
        let sid = handshake["sid"].as_str().expect("sid").to_owned();
        (Polling { app, sid }, handshake)
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    async fn get(&self) -> RawReply {
        self.app.raw("GET", &self.path(), &[], None).await
    }

    async fn post(&self, packets: &[&str]) -> RawReply {
        let body = packets.join("\u{1e}").into_bytes();
        self.app.raw("POST", &self.path(), &[("content-type", "text/plain;charset=UTF-8")], Some(body)).await
    }

    /// Packets from `GET`s until one matches (pings answered, everything kept in order).
    async fn until(&self, seen: &mut Vec<String>, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(at) = seen.iter().position(|p| matches(p)) {
                return seen.remove(at);
            }
            assert!(tokio::time::Instant::now() < deadline, "no {what} packet; got {seen:?}");
            let reply = self.get().await;
            assert_eq!(reply.status.as_u16(), 200, "GET: {}", reply.text);
            for packet in reply.text.split('\u{1e}') {
                if packet == "2" {
                    assert_eq!(self.post(&["3"]).await.status.as_u16(), 200);
                } else {
                    seen.push(packet.to_owned());
                }
            }
        }
    }

    /// CONNECT with a token; returns the Socket.IO sid and the `ready` data.
    async fn connect(&self, token: &str, seen: &mut Vec<String>) -> (String, Value) {
        assert_eq!(self.post(&[&format!("40{}", json!({"token": token}))]).await.status.as_u16(), 200);
        let connected = self.until(seen, "CONNECT", |p| p.starts_with("40")).await;
        let sid =
            serde_json::from_str::<Value>(&connected[2..]).expect("JSON")["sid"].as_str().expect("sid").to_owned();
        let ready = self.until(seen, "ready", |p| p.starts_with(r#"42["ready""#)).await;
        (sid, event_data(&ready))
    }
}

/// The `data` of an EVENT packet `42["name",data]`.
fn event_data(packet: &str) -> Value {
    let args: Value = serde_json::from_str(packet.strip_prefix("42").expect("an EVENT")).expect("JSON");
    args[1].clone()
}

/// The argument of an ACK packet `43<id>[body]`, with its id.
fn ack_of(packet: &str) -> (u64, Value) {
    let rest = packet.strip_prefix("43").expect("an ACK");
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    let args: Value = serde_json::from_str(&rest[digits..]).expect("JSON");
    (rest[..digits].parse().expect("id"), args[0].clone())
}

/// A WebSocket to `/socket.io/`, fresh or upgrading a long-polling session.
struct Socket {
    framed: Framed<BoxedSocket, Codec>,
    closed: Option<u16>,
}

impl Socket {
    async fn open(address: &str, sid: Option<&str>) -> Socket {
        let mut url = format!("{}/socket.io/?EIO=4&transport=websocket", address.replace("http://", "ws://"));
        if let Some(sid) = sid {
            url.push_str(&format!("&sid={sid}"));
        }
        let (_res, framed) = awc::Client::new().ws(url).connect().await.expect("websocket connects");
        Socket { framed, closed: None }
    }

    async fn send(&mut self, text: &str) {
        self.framed.send(Message::Text(text.to_owned().into())).await.expect("frame sent");
    }

    /// The next text frame (pings answered when `pong`), or None on close or timeout.
    async fn next(&mut self, pong: bool) -> Option<String> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.framed.next()).await.ok()??.ok()?;
            match frame {
                Frame::Text(bytes) => {
                    let text = String::from_utf8(bytes.to_vec()).expect("UTF-8");
                    if text == "2" && pong {
                        self.send("3").await;
                        continue;
                    }
                    return Some(text);
                }
                Frame::Close(reason) => {
                    self.closed = Some(reason.map_or(1005, |r| u16::from(r.code)));
                    return None;
                }
                _ => {}
            }
        }
    }

    async fn until(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        loop {
            match self.next(true).await {
                Some(packet) if matches(&packet) => return packet,
                Some(_) => {}
                None => panic!("no {what} packet (closed: {:?})", self.closed),
            }
        }
    }
}

#[actix_web::test]
async fn the_handshake_and_engine_io_errors_are_what_v4_clients_read() {
    let app = spawn_app_with(|s| {
        s.node_id = Some("node.7".into());
        s.ws_heartbeat_s = 9;
    })
    .await;
    let (_, handshake) = Polling::open(&app).await;
    let sid = handshake["sid"].as_str().expect("sid");
    // The node's id, made URL- and nginx-map-safe, leads the session id: the load balancer routes on it.
    assert!(sid.starts_with("node-7.") && sid.len() == "node-7.".len() + 32, "{sid}");
    assert_eq!(handshake["upgrades"], json!(["websocket"]));
    assert_eq!(handshake["pingInterval"], json!(9000));
    assert_eq!(handshake["pingTimeout"], json!(9000));
    assert_eq!(handshake["maxPayload"], json!(65536));
    for (query, code) in [
        ("EIO=3&transport=polling", 5),
        ("transport=polling", 5),
        ("EIO=4&transport=flash", 0),
        ("EIO=4&transport=polling&sid=node-7.00000000000000000000000000000000", 1),
    ] {
        let reply = app.raw("GET", &format!("/socket.io/?{query}"), &[], None).await;
        assert_eq!(reply.status.as_u16(), 400, "{query}");
        assert_eq!(reply.json()["code"], json!(code), "{query}: {}", reply.text);
    }
    let reply = app.raw("POST", "/socket.io/?EIO=4&transport=polling&sid=nope", &[], Some(b"40".to_vec())).await;
    assert_eq!((reply.status.as_u16(), reply.json()["code"].clone()), (400, json!(1)));
}

#[actix_web::test]
async fn connect_is_refused_with_a_code_for_a_missing_bad_or_expired_token_or_another_namespace() {
    let app = spawn_app().await;
    let alice = app.user("sio-refused").await;
    let (engine, _) = Polling::open(&app).await;
    let mut seen = Vec::new();
    let now = chorus::unix_secs();
    let claims = chorus::Claims { sub: alice.id, name: alice.username.clone(), iat: now - 100, exp: now - 50, gen: 0 };
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(NODE_SECRET.as_bytes()),
    )
    .expect("sign");
    for (packet, code) in [
        ("40".to_owned(), "auth.unauthenticated"),
        ("40{}".to_owned(), "auth.unauthenticated"),
        (format!("40{}", json!({"token": "garbage"})), "auth.unauthenticated"),
        (format!("40{}", json!({"token": expired})), "auth.token_expired"),
    ] {
        assert_eq!(engine.post(&[&packet]).await.status.as_u16(), 200);
        let refused = engine.until(&mut seen, "CONNECT_ERROR", |p| p.starts_with("44")).await;
        let body: Value = serde_json::from_str(&refused[2..]).expect("JSON");
        assert_eq!(body["data"]["code"], json!(code), "{packet}: {refused}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{refused}");
    }
    engine.post(&[&format!("40/admin,{}", json!({"token": alice.token}))]).await;
    let refused = engine.until(&mut seen, "namespace CONNECT_ERROR", |p| p.starts_with("44/admin,")).await;
    assert_eq!(refused, r#"44/admin,{"message":"Invalid namespace"}"#);
    // The same engine still connects with a good token.
    let (sid, ready) = engine.connect(&alice.token, &mut seen).await;
    assert_eq!(ready["user"]["id"], json!(alice.id));
    assert_eq!(ready["session_id"], json!(sid));
}

#[actix_web::test]
async fn polled_packets_are_batched_and_every_emit_with_an_ack_id_gets_exactly_one_ack() {
    let app = spawn_app().await;
    let alice = app.user("sio-acks").await;
    let bob = app.user("sio-acks-ws").await;
    let room = app.room(&alice, "public").await;
    app.join(&bob, room).await;
    let mut native = WsClient::connect(&app, &bob.token).await;
    let (engine, _) = Polling::open(&app).await;
    let mut seen = Vec::new();
    engine.connect(&alice.token, &mut seen).await;
    let send = json!(["send", {"room_id": room, "content": "hello \u{1e} there", "client_msg_id": "c-1"}]);
    let reply = engine
        .post(&[
            r#"420["ping"]"#,
            &format!("421{send}"),
            &format!("422{send}"),
            r#"423["nope",{}]"#,
            r#"42["send",{}]"#,
        ])
        .await;
    assert_eq!((reply.status.as_u16(), reply.text.as_str()), (200, "ok"));
    let mut acks = std::collections::BTreeMap::new();
    for id in 0..4 {
        let packet = engine.until(&mut seen, &format!("ack {id}"), |p| p.starts_with(&format!("43{id}["))).await;
        let (got, body) = ack_of(&packet);
        acks.insert(got, body);
    }
    assert_eq!(acks[&0], json!({"ok": true, "result": {}}));
    assert_eq!(acks[&1]["ok"], json!(true));
    assert_eq!(acks[&1]["result"]["seq"], json!(1));
    // The retry with the same client_msg_id is the same message, stored once.
    assert_eq!(acks[&2]["result"], acks[&1]["result"]);
    assert_eq!(acks[&3]["ok"], json!(false));
    assert_eq!(acks[&3]["error"]["code"], json!("validation"));
    // Without an ack id, a failure is an `error` event.
    let error = engine.until(&mut seen, "error event", |p| p.starts_with(r#"42["error""#)).await;
    assert_eq!(event_data(&error)["code"], json!("validation"));
    engine.until(&mut seen, "pong", |p| p == r#"42["pong",{}]"#).await;
    let message = engine.until(&mut seen, "message", |p| p.starts_with(r#"42["message""#)).await;
    // The same `data` as `/api/v1/ws` carries, content separators included.
    let over_ws = native.expect("message", |v| v["event"] == "message").await;
    assert_eq!(event_data(&message), over_ws["data"]);
    assert_eq!(event_data(&message)["content"], json!("hello \u{1e} there"));
    // No second ack and no second message come.
    engine.post(&[r#"429["ping"]"#]).await;
    engine.until(&mut seen, "ack 9", |p| p.starts_with("439[")).await;
    assert!(seen.iter().all(|p| !p.starts_with("43") && !p.starts_with(r#"42["message""#)), "{seen:?}");
}

#[actix_web::test]
async fn binary_attachments_are_refused_once_with_a_clear_error() {
    let app = spawn_app().await;
    let alice = app.user("sio-binary").await;
    let (engine, _) = Polling::open(&app).await;
    let mut seen = Vec::new();
    engine.connect(&alice.token, &mut seen).await;
    engine.post(&[r#"451-5["send",{"_placeholder":true,"num":0}]"#, "bAQID", r#"426["ping"]"#]).await;
    let (_, refused) = ack_of(&engine.until(&mut seen, "ack 5", |p| p.starts_with("435[")).await);
    assert_eq!(refused["ok"], json!(false));
    assert_eq!(refused["error"]["code"], json!("validation"));
    assert!(refused["error"]["details"].to_string().contains("binary"), "{refused}");
    engine.until(&mut seen, "ack 6", |p| p.starts_with("436[")).await;
    // The attachment itself is not refused a second time.
    assert!(!seen.iter().any(|p| p.starts_with(r#"42["error""#)), "{seen:?}");
}

#[actix_web::test]
async fn a_long_polling_session_upgrades_to_a_websocket_by_probe() {
    let app = spawn_app().await;
    let alice = app.user("sio-upgrade").await;
    let room = app.room(&alice, "public").await;
    let (engine, _) = Polling::open(&app).await;
    let mut seen = Vec::new();
    engine.connect(&alice.token, &mut seen).await;
    // A GET waits meanwhile, as a client's does; the probe lets it go with a noop.
    let waiting = engine.get();
    let probe = async {
        let mut socket = Socket::open(&app.address, Some(&engine.sid)).await;
        socket.send("2probe").await;
        assert_eq!(socket.next(false).await.as_deref(), Some("3probe"));
        socket
    };
    let (reply, mut socket) = futures_util::join!(waiting, probe);
    assert_eq!(reply.text, "6");
    socket.send("5").await;
    // From now on the WebSocket carries the session, and long-polling is refused.
    socket.send(&format!("421{}", json!(["send", {"room_id": room, "content": "via ws"}]))).await;
    let (_, sent) = ack_of(&socket.until("ack", |p| p.starts_with("431[")).await);
    assert_eq!(sent["result"]["content"], json!("via ws"));
    let message = socket.until("message", |p| p.starts_with(r#"42["message""#)).await;
    assert_eq!(event_data(&message)["seq"], sent["result"]["seq"]);
    assert_eq!(engine.post(&[r#"42["ping"]"#]).await.status.as_u16(), 400);
    assert_eq!(engine.get().await.status.as_u16(), 400);
    // A second upgrade of the same session is refused.
    let again = awc::Client::new()
        .ws(format!(
            "{}/socket.io/?EIO=4&transport=websocket&sid={}",
            app.address.replace("http://", "ws://"),
            engine.sid
        ))
        .connect()
        .await;
    assert!(again.is_err(), "one WebSocket per session");
}

#[actix_web::test]
async fn overlapping_gets_and_oversized_posts_close_the_session() {
    let app = spawn_app().await;
    let (engine, _) = Polling::open(&app).await;
    let first = engine.get();
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        engine.get().await
    };
    let (first, second) = futures_util::join!(first, second);
    assert_eq!(second.status.as_u16(), 400);
    assert!(first.text.split('\u{1e}').any(|p| p == "1"), "the waiting GET is told the session closed: {}", first.text);
    let (engine, _) = Polling::open(&app).await;
    let big = format!(r#"42["send",{{"content":"{}"}}]"#, "x".repeat(70_000));
    assert_eq!(engine.post(&[&big]).await.status.as_u16(), 413);
    let closed = engine.get().await;
    assert!(closed.status.as_u16() == 400 || closed.text.contains('1'), "{}", closed.text);
}

#[actix_web::test]
async fn a_client_that_stops_polling_is_cut_as_a_slow_consumer_and_told_why() {
    let app = spawn_app_with(|s| s.ws_queue = 8).await;
    let alice = app.user("sio-slow").await;
    let bob = app.user("sio-slow-sender").await;
    let room = app.room(&bob, "public").await;
    app.join(&alice, room).await;
    let (engine, _) = Polling::open(&app).await;
    let mut seen = Vec::new();
    engine.connect(&alice.token, &mut seen).await;
    // Alice does not poll while Bob sends more than her queue holds.
    for i in 0..20 {
        assert_eq!(app.send(&bob, room, &format!("m{i}")).await.status.as_u16(), 201);
    }
    let closing = engine.until(&mut seen, "closing", |p| p.starts_with(r#"42["closing""#)).await;
    assert_eq!(event_data(&closing), json!({"code": 4008, "reason": "slow_consumer"}));
    engine.until(&mut seen, "close", |p| p == "1").await;
}

#[actix_web::test]
async fn a_revoked_token_ends_the_socket_io_session_with_4001_and_the_engine_takes_a_new_one() {
    let app = spawn_app().await;
    let alice = app.user("sio-revoked").await;
    let mut socket = Socket::open(&app.address, None).await;
    let open = socket.next(true).await.expect("open packet");
    let handshake: Value = serde_json::from_str(open.strip_prefix('0').expect("open")).expect("JSON");
    // A WebSocket-only session has nothing to upgrade to.
    assert_eq!(handshake["upgrades"], json!([]));
    socket.send(&format!("40{}", json!({"token": alice.token}))).await;
    socket.until("CONNECT", |p| p.starts_with("40")).await;
    socket.until("ready", |p| p.starts_with(r#"42["ready""#)).await;
    let reply = app.request("POST", "/api/v1/auth/logout-all", Some(&alice.token), None).await;
    assert_eq!(reply.status.as_u16(), 204);
    let closing = socket.until("closing", |p| p.starts_with(r#"42["closing""#)).await;
    assert_eq!(event_data(&closing), json!({"code": 4001, "reason": "token_revoked"}));
    assert_eq!(socket.next(true).await.as_deref(), Some("41"), "a server DISCONNECT: the client does not retry");
    // The engine is still there: the revoked token is refused, a fresh one connects.
    socket.send(&format!("40{}", json!({"token": alice.token}))).await;
    let refused = socket.until("CONNECT_ERROR", |p| p.starts_with("44")).await;
    assert!(refused.contains("auth.token_revoked"), "{refused}");
    let fresh = app.login(&alice.username, &alice.password).await;
    let token = fresh.body["access_token"].as_str().expect("token").to_owned();
    socket.send(&format!("40{}", json!({"token": token}))).await;
    socket.until("CONNECT", |p| p.starts_with("40")).await;
    socket.until("ready", |p| p.starts_with(r#"42["ready""#)).await;
}

#[actix_web::test]
async fn a_client_that_answers_no_ping_is_closed_as_a_heartbeat_timeout() {
    let app = spawn_app_with(|s| s.ws_heartbeat_s = 1).await;
    let alice = app.user("sio-silent").await;
    let mut socket = Socket::open(&app.address, None).await;
    socket.next(false).await.expect("open packet");
    socket.send(&format!("40{}", json!({"token": alice.token}))).await;
    let mut packets = Vec::new();
    while let Some(packet) = socket.next(false).await {
        packets.push(packet);
    }
    assert!(packets.iter().any(|p| p == "2"), "pinged: {packets:?}");
    let closing = packets.iter().find(|p| p.starts_with(r#"42["closing""#)).expect("closing");
    assert_eq!(event_data(closing), json!({"code": 4000, "reason": "heartbeat_timeout"}));
    assert_eq!(socket.closed, Some(4000));
}

#[actix_web::test]
async fn a_draining_node_refuses_handshakes_and_closes_socket_io_sessions_with_1012() {
    let database = fresh_database().await;
    let app = chorus::startup::Application::build(test_settings(&database)).await.expect("node starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (state, handle) = (app.state.clone(), app.handle());
    actix_web::rt::spawn(app.run_until_stopped());
    let client = awc::Client::new();
    let body = json!({"username": "sio-drainer", "password": "long enough pw"});
    client.post(format!("{address}/api/v1/auth/register")).send_json(&body).await.expect("register");
    let mut login = client.post(format!("{address}/api/v1/auth/login")).send_json(&body).await.expect("login");
    let token = login.json::<Value>().await.expect("JSON")["access_token"].as_str().expect("token").to_owned();
    let mut socket = Socket::open(&address, None).await;
    socket.next(true).await.expect("open packet");
    socket.send(&format!("40{}", json!({"token": token}))).await;
    socket.until("ready", |p| p.starts_with(r#"42["ready""#)).await;
    // An engine that has not connected yet, long-polling: told of the drain too.
    let mut handshake = client.get(format!("{address}/socket.io/?EIO=4&transport=polling")).send().await.expect("open");
    let open = String::from_utf8(handshake.body().await.expect("body").to_vec()).expect("UTF-8");
    let unconnected: Value = serde_json::from_str(&open[1..]).expect("JSON");
    let poll_url =
        format!("{address}/socket.io/?EIO=4&transport=polling&sid={}", unconnected["sid"].as_str().expect("sid"));
    let waiting = async {
        let mut reply = client.get(poll_url).send().await.expect("poll");
        String::from_utf8(reply.body().await.expect("body").to_vec()).expect("UTF-8")
    };
    state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
    let refused = client.get(format!("{address}/socket.io/?EIO=4&transport=polling")).send().await.expect("answer");
    assert_eq!(refused.status().as_u16(), 503);
    let drain = chorus::startup::Application::drain(&state, &handle);
    let read = async {
        let closing = socket.until("closing", |p| p.starts_with(r#"42["closing""#)).await;
        while socket.next(true).await.is_some() {}
        closing
    };
    let started = std::time::Instant::now();
    let (closing, polled, ()) = futures_util::join!(read, waiting, drain);
    assert_eq!(event_data(&closing), json!({"code": 1012, "reason": "draining"}));
    assert_eq!(socket.closed, Some(1012));
    assert_eq!(polled, "1", "the waiting poll gets the close");
    assert!(started.elapsed() < Duration::from_secs(2), "the drain did not wait out a heartbeat");
}
