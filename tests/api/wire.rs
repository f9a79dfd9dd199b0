//! The WebSocket protocol on the wire against hostile or plain clients (`src/ws/wire.rs`,
//! `src/ws/session.rs`): the close handshake, the rate limit on malformed frames, and the frame
//! cap applied on a frame's header. Some tests write frames byte by byte over a raw TCP socket, to
//! see what the server does before a frame is complete.

use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason};
use actix_web::web::Bytes;
use awc::ws::{Frame, Message};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clients::{spawn_cluster, WsClient, WAIT};
use crate::helpers::*;

/// The close frame that answers `sent`, read past anything else the server writes first.
async fn close_answer(client: &mut WsClient, sent: Option<CloseReason>) -> Option<Option<CloseReason>> {
    client.send_message(Message::Close(sent)).await;
    loop {
        match client.next_frame(WAIT).await? {
            Frame::Close(reason) => return Some(reason),
            _ => continue,
        }
    }
}

#[actix_web::test]
async fn a_client_close_is_answered_with_its_own_code() {
    let nodes = spawn_cluster(1, |_| {}).await;
    let alice = nodes[0].user("alice").await;

    for code in [1000u16, 1001, 4321] {
        let mut a = WsClient::connect(&nodes[0], &alice.token).await;
        let sent = CloseReason { code: CloseCode::from(code), description: Some("bye".into()) };
        let answer = close_answer(&mut a, Some(sent)).await.expect("the close is answered with a close frame");
        assert_eq!(answer.map(|r| u16::from(r.code)), Some(code), "close {code} echoed");
    }

    // A close without a status code is answered with one without a status code.
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    let answer = close_answer(&mut a, None).await.expect("the close is answered with a close frame");
    assert!(answer.is_none(), "an empty close is answered with an empty close: {answer:?}");

    // 1005 says "no status code" and may never be sent (RFC 6455 §7.4.1): a protocol error.
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    let sent = CloseReason { code: CloseCode::from(1005), description: None };
    let answer = close_answer(&mut a, Some(sent)).await.expect("a close frame");
    assert_eq!(answer.map(|r| u16::from(r.code)), Some(1002));

    // The node still counts a client's close as one (the socket is gone from the gauge).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = nodes[0].client.get(nodes[0].url("/metrics")).send().await.expect("metrics").body().await;
        let text = String::from_utf8_lossy(&metrics.expect("a body")).into_owned();
        let client_closes = text
            .lines()
            .find(|l| l.starts_with("chorus_ws_disconnects_total{") && l.contains("reason=\"client\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if client_closes == Some(4.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "client closes counted: {client_closes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_flood_of_garbage_frames_is_rate_limited() {
    let nodes = spawn_cluster(1, |s| {
        s.ws_rate_burst = 10;
        s.ws_rate_per_s = 1;
    })
    .await;
    let alice = nodes[0].user("alice").await;
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    for i in 0..100 {
        if i % 10 == 9 {
            a.send_message(Message::Binary(Bytes::from_static(b"\x00garbage"))).await;
        } else {
            a.send_raw(format!("not json {i}")).await;
        }
    }
    let mut codes = Vec::new();
    while codes.len() < 100 {
        let event = a.expect("an error for each garbage frame", |v| v["event"] == "error").await;
        codes.push(event["data"]["code"].as_str().unwrap_or_default().to_owned());
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    let refused = codes.iter().filter(|c| *c == "validation").count();
    assert_eq!(limited + refused, 100, "{codes:?}");
    // A burst of 10, plus at most a few tokens earned while the flood is read.
    assert!((10..=20).contains(&refused), "{refused} garbage frames let through: {codes:?}");
    assert!(codes[..10].iter().all(|c| c == "validation"), "the burst is used first: {codes:?}");

    // A readable envelope with a `ref` still gets its one reply, refused.
    let reply = a.request("ping", json!({})).await;
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    assert!(a.closed.is_none());
}

/// A WebSocket client on a bare TCP socket: it writes frames as bytes, so it can stop in the
/// middle of one.
struct RawSocket {
    stream: TcpStream,
    /// Read but not yet taken as a frame.
    buf: Vec<u8>,
}

impl RawSocket {
    async fn connect(app: &TestApp, token: &str) -> RawSocket {
        let host = app.address.trim_start_matches("http://").to_owned();
        let stream = TcpStream::connect(&host).await.expect("tcp connects");
        RawSocket::upgrade(app, stream, token).await
    }

    /// Upgrades `stream`, a connection to `app`, and reads `ready`.
    async fn upgrade(app: &TestApp, mut stream: TcpStream, token: &str) -> RawSocket {
        let host = app.address.trim_start_matches("http://").to_owned();
        let request = format!(
            "GET /api/v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("upgrade request sent");
        let mut socket = RawSocket { stream, buf: Vec::new() };
        let head = socket.response_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "upgraded: {head}");
        let (opcode, ready) = socket.frame().await.expect("ready arrives");
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&ready).contains("\"ready\""));
        socket
    }

    /// The response's head, read and taken off the buffer (what follows it stays).
    async fn response_head(&mut self) -> String {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(self.fill().await > 0, "connection closed during the upgrade");
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        head
    }

    /// Reads more bytes; 0 at the end of the stream (or on a reset, or after `WAIT`).
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            _ => 0,
        }
    }

    /// The next whole server frame (opcode, payload); None if the stream ends first.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (header, length) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => (4, usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]))),
                    127 if self.buf.len() >= 10 => {
                        (10, u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    short => (2, usize::from(short)),
                };
                if header != usize::MAX && self.buf.len() >= header + length {
                    let opcode = self.buf[0] & 0x0F;
                    let payload = self.buf[header..header + length].to_vec();
                    self.buf.drain(..header + length);
                    return Some((opcode, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The close frame's status code, skipping other frames.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.frame().await?;
            if opcode == 8 {
                return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
    }
}

/// The header of a masked client frame declaring `length` bytes of payload.
fn client_header(fin: bool, opcode: u8, length: u64) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    if length < 126 {
        out.push(0x80 | length as u8);
    } else if length <= u64::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(length as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&length.to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as it is
    out
}

/// A 200 KiB text frame is refused on its header: the socket closes with 1009 before any of the
/// payload is sent, so the node never buffers it (before, frames up to 1 MiB were read whole and
/// answered with an `error`).
#[actix_web::test]
async fn a_frame_over_the_cap_is_closed_with_1009_on_its_header() {
    let nodes = spawn_cluster(1, |_| {}).await;
    let alice = nodes[0].user("alice").await;

    let mut socket = RawSocket::connect(&nodes[0], &alice.token).await;
    socket.stream.write_all(&client_header(true, 1, 200 * 1024)).await.expect("header sent");
    assert_eq!(socket.close_code().await, Some(1009), "closed on the header alone");
    // And the connection is over: no waiting for the 200 KiB that were never sent.
    assert!(socket.frame().await.is_none(), "the connection ends after the close frame");

    // A fragmented message is capped while it is put together: 40 KiB, then a fragment declaring
    // 30 KiB more (70 KiB > 64 KiB) is refused on its header too.
    let mut socket = RawSocket::connect(&nodes[0], &alice.token).await;
    let mut first = client_header(false, 1, 40 * 1024);
    first.extend(std::iter::repeat_n(b' ', 40 * 1024));
    socket.stream.write_all(&first).await.expect("first fragment sent");
    socket.stream.write_all(&client_header(true, 0, 30 * 1024)).await.expect("header sent");
    assert_eq!(socket.close_code().await, Some(1009), "a fragmented message over the cap");

    // A frame at the cap still passes (and is refused as JSON, with the socket left open).
    let mut a = WsClient::connect(&nodes[0], &alice.token).await;
    a.send_raw(" ".repeat(64 * 1024)).await;
    let err = a.expect("error", |v| v["event"] == "error").await;
    assert_eq!(err["data"]["code"], "validation");
    let reply = a.request("ping", json!({})).await;
    assert_eq!(reply["ok"], true);
}

/// Writes `request` on a new connection and reads until the server closes it.
async fn exchange(app: &TestApp, request: &str) -> String {
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).await.expect("tcp connects");
    stream.write_all(request.replace("{host}", &host).as_bytes()).await.expect("request sent");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection after answering")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Upgrade requests are taken off actix-http's dispatcher (`src/ws/connection.rs`): they still go
/// through the app's routes and error bodies, what a client sends right behind its request is not
/// lost, and a request that is not upgraded is answered whole and its connection closed.
#[actix_web::test]
async fn upgrade_requests_keep_early_frames_and_unupgraded_ones_are_answered_and_closed() {
    let nodes = spawn_cluster(1, |_| {}).await;
    let alice = nodes[0].user("alice").await;
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n";

    // A ping in the same write as the request, before the 101: answered once the socket is up.
    let host = nodes[0].address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&host).await.expect("tcp connects");
    let mut request =
        format!("GET /api/v1/ws HTTP/1.1\r\nHost: {host}\r\n{upgrade}Authorization: Bearer {}\r\n\r\n", alice.token)
            .into_bytes();
    request.extend(client_header(true, 9, 5));
    request.extend_from_slice(b"early");
    stream.write_all(&request).await.expect("request and ping sent");
    let mut socket = RawSocket { stream, buf: Vec::new() };
    let head = socket.response_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "upgraded: {head}");
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "no body framing after a 101: {head}");
    let mut seen = Vec::new();
    let pong = loop {
        let (opcode, payload) = socket.frame().await.expect("frames until the pong");
        if opcode == 10 {
            break payload;
        }
        seen.push(opcode);
        assert!(seen.len() < 5, "no pong among {seen:?}");
    };
    assert_eq!(pong, b"early", "the early ping's payload comes back");

    // A bad token: the app's 401 with its JSON body, then the connection is closed.
    let answer = exchange(
        &nodes[0],
        &format!("GET /api/v1/ws HTTP/1.1\r\nHost: {{host}}\r\n{upgrade}Authorization: Bearer nope\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    assert!(answer.contains("\"code\""), "the usual error body: {answer}");

    // Upgrade headers on a plain route: the route's answer, then the connection is closed.
    let answer = exchange(&nodes[0], &format!("GET /healthz HTTP/1.1\r\nHost: {{host}}\r\n{upgrade}\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");

    // And on no route at all: the app's 404.
    let answer = exchange(&nodes[0], &format!("GET /nowhere HTTP/1.1\r\nHost: {{host}}\r\n{upgrade}\r\n")).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

/// A client that stops reading cannot hold its connection: once its session is over (here its
/// heartbeats went unanswered) and the close frame cannot be written behind a full socket, the node
/// resets the connection after 4 heartbeats without progress, instead of keeping the descriptor and
/// the socket's buffers for as long as the client stays connected.
#[actix_web::test]
async fn a_client_that_stops_reading_is_reset_once_writes_stall() {
    let nodes = spawn_cluster(1, |s| {
        s.ws_heartbeat_s = 2;
        s.max_message_bytes = 60_000;
        s.send_rate_per_s = 1000;
        s.send_burst = 1000;
    })
    .await;
    let alice = nodes[0].user("alice").await;
    let bob = nodes[0].user("bob").await;
    let room = nodes[0].room(&alice, "private").await;
    nodes[0].add(&alice, room, &[&bob]).await;
    // Bob's receive window is small, and he reads nothing after `ready`.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer set");
    let host = nodes[0].address.trim_start_matches("http://");
    let stream = socket.connect(host.parse().expect("address")).await.expect("tcp connects");
    let connected = tokio::time::Instant::now();
    let mut bob_socket = RawSocket::upgrade(&nodes[0], stream, &bob.token).await;
    // 4.8 MB: more than the node's send buffer takes while the window stays shut (autotuned to
    // about 1.3 MB on loopback at the handshake), sent well before the session gives up on him.
    let big = "z".repeat(60_000);
    for _ in 0..8 {
        let sent = futures_util::future::join_all((0..10).map(|_| nodes[0].send(&alice, room, &big))).await;
        assert!(sent.iter().all(|r| r.status.as_u16() == 201), "sent");
    }
    assert!(connected.elapsed() < Duration::from_secs(4), "the flood took too long to be a test of this");
    // The session ends after 2.5 heartbeats of silence (by 6 s); its close frame then waits for room
    // that never comes, and 4 heartbeats (8 s) later the node resets the connection.
    tokio::time::sleep_until(connected + Duration::from_secs(18)).await;
    // Reading now finds what the client's buffer held, then the reset: never the close frame, which
    // the node would have sent (after everything else) had it kept waiting.
    assert_eq!(bob_socket.close_code().await, None, "the node kept the connection until the client read");
}
