//! A real WebSocket client for tests (awc), and clusters of real nodes sharing one database and one
//! Redis prefix.

use std::collections::VecDeque;
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use chorus::config::Settings;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;

/// `n` nodes on one fresh database and one Redis key prefix: a cluster.
pub async fn spawn_cluster(n: usize, tweak: impl Fn(&mut Settings)) -> Vec<TestApp> {
    let database_url = fresh_database().await;
    let prefix = format!("chorus-test:{}:", Uuid::new_v4().simple());
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let prefix = prefix.clone();
        nodes.push(
            spawn_app_on(&database_url, |s| {
                s.redis_prefix = prefix;
                s.node_id = Some(format!("node-{}", i + 1));
                tweak(s);
            })
            .await,
        );
    }
    nodes
}

pub struct WsClient {
    framed: Framed<BoxedSocket, Codec>,
    /// Events read while waiting for something else.
    buffered: VecDeque<Value>,
    pub ready: Value,
    /// Close code, once the server closed the socket.
    pub closed: Option<u16>,
    next_ref: u64,
}

pub const WAIT: Duration = Duration::from_secs(10);

impl WsClient {
    pub async fn connect(app: &TestApp, token: &str) -> WsClient {
        Self::connect_to(&app.address, token).await
    }

    pub async fn connect_to(address: &str, token: &str) -> WsClient {
        let url = format!("{}/api/v1/ws", address.replace("http://", "ws://"));
        let (_res, framed) = awc::Client::new()
            .ws(url)
            .bearer_auth(token)
            .max_frame_size(4 * 1024 * 1024)
            .connect()
            .await
            .expect("websocket connects");
        let mut client = WsClient { framed, buffered: VecDeque::new(), ready: Value::Null, closed: None, next_ref: 0 };
        let ready = client.read_raw(WAIT).await.expect("ready arrives");
        assert_eq!(ready["event"], "ready", "first frame is ready: {ready}");
        client.ready = ready["data"].clone();
        client
    }

    /// The next frame from the wire (answers pings), or None on timeout/close.
    async fn read_raw(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next()).await.ok()??;
            match frame.ok()? {
                Frame::Text(bytes) => return serde_json::from_slice(&bytes).ok(),
                Frame::Ping(bytes) => {
                    let _ = self.framed.send(Message::Pong(bytes)).await;
                }
                Frame::Close(reason) => {
                    self.closed = Some(reason.map(|r| u16::from(r.code)).unwrap_or(1005));
                    return None;
                }
                _ => {}
            }
        }
    }

    pub async fn send_raw(&mut self, text: String) {
        self.framed.send(Message::Text(text.into())).await.expect("frame sent");
    }

    /// Sends any WebSocket message (fragments, binary, pings, malformed text).
    pub async fn send_message(&mut self, message: Message) {
        self.framed.send(message).await.expect("frame sent");
    }

    /// The next frame as it came, for control frames the other helpers answer or skip.
    pub async fn next_frame(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.framed.next()).await.ok()??.ok()
    }

    pub async fn emit(&mut self, event: &str, data: Value) {
        self.send_raw(json!({"event": event, "data": data}).to_string()).await;
    }

    /// Sends an event with a fresh `ref` and returns the reply's `data` (other events are buffered).
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        self.request_within(event, data, WAIT).await
    }

    /// `request`, for a reply that may take longer than [`WAIT`].
    pub async fn request_within(&mut self, event: &str, data: Value, wait: Duration) -> Value {
        self.next_ref += 1;
        let reference = format!("r{}", self.next_ref);
        self.send_raw(json!({"event": event, "data": data, "ref": reference}).to_string()).await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame =
                self.read_raw(left).await.unwrap_or_else(|| panic!("no reply to {event} (closed: {:?})", self.closed));
            if frame["event"] == "reply" && frame["ref"] == json!(reference) {
                return frame["data"].clone();
            }
            self.buffered.push_back(frame);
        }
    }

    /// The next event (buffered first), or None within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.buffered.pop_front() {
            return Some(v);
        }
        self.read_raw(wait).await
    }

    /// Waits for an event that matches; others read meanwhile stay buffered, in order.
    pub async fn expect(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.buffered.iter().position(&matches) {
            return self.buffered.remove(pos).expect("position is valid");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_raw(left).await {
                Some(v) if matches(&v) => return v,
                Some(v) => self.buffered.push_back(v),
                None => {
                    panic!("timed out waiting for {what} (closed: {:?}; buffered: {:?})", self.closed, self.buffered)
                }
            }
        }
    }

    /// Collects `message` events of `room` until `count` have arrived; returns their seqs in order.
    pub async fn messages(&mut self, room: Uuid, count: usize) -> Vec<i64> {
        let mut seqs = Vec::with_capacity(count);
        let mut keep = VecDeque::new();
        while let Some(v) = self.buffered.pop_front() {
            if seqs.len() < count && v["event"] == "message" && v["data"]["room_id"] == json!(room) {
                seqs.push(v["data"]["seq"].as_i64().unwrap_or(-1));
            } else {
                keep.push_back(v);
            }
        }
        self.buffered = keep;
        while seqs.len() < count {
            match self.read_raw(WAIT).await {
                Some(v) if v["event"] == "message" && v["data"]["room_id"] == json!(room) => {
                    seqs.push(v["data"]["seq"].as_i64().unwrap_or(-1))
                }
                Some(v) => self.buffered.push_back(v),
                None => panic!("only {} of {count} messages arrived (closed: {:?}): {seqs:?}", seqs.len(), self.closed),
            }
        }
        seqs
    }

    /// Reads until the server closes the socket; returns the close code.
    pub async fn until_closed(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.read_raw(left).await.is_none() && self.closed.is_none() {
                break;
            }
        }
        self.closed
    }

    /// True if nothing arrives for `wait` (other than what is filtered out).
    pub async fn quiet(&mut self, wait: Duration, ignore: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_raw(left).await {
                Some(v) if ignore(&v) => continue,
                other => return other,
            }
        }
    }
}

/// A node running as its own `chorus` process (for SIGKILL/SIGTERM tests).
pub struct NodeProcess {
    pub child: std::process::Child,
    pub address: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port for a child process (a node, a redis-server) that no other test of this run was
/// handed. Ports come from below the kernel's ephemeral range (32768 and up), so the port is not
/// given to an outgoing connection between the check and the child's bind, and never twice in one
/// run, so two tests starting servers at once cannot both be told the same one (a cluster test once
/// found another test's Redis on "its" port).
pub fn free_port() -> u16 {
    reserve_port(20_000..32_000, 0)
}

/// A port whose Redis Cluster bus port (`port + 10000`) is free and unhanded as well; both stay
/// below the ephemeral range.
pub fn free_cluster_port() -> u16 {
    reserve_port(10_000..20_000, 10_000)
}

fn reserve_port(range: std::ops::Range<u16>, bus_offset: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let bindable = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let width = u32::from(range.end - range.start);
    // Start where the process id says, so two test binaries running at once begin apart.
    let start = std::process::id() % width;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for _ in 0..width {
        let port = range.start + ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % width) as u16;
        let ports = [port, port + bus_offset];
        if ports.iter().any(|p| handed_out.contains(p)) || !ports.iter().all(|p| bindable(*p)) {
            continue;
        }
        handed_out.extend(ports);
        return port;
    }
    panic!("no free loopback port in {range:?}")
}

/// Starts `chorus` as a child process on a free port and waits for `/readyz`.
pub async fn spawn_process(
    database_url: &str,
    redis_url: &str,
    prefix: &str,
    node_id: &str,
    env: &[(&str, &str)],
) -> NodeProcess {
    let port = free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"));
    command
        .env("CHORUS_ENV", "dev")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("CHORUS_REDIS_PREFIX", prefix)
        .env("CHORUS_BIND", format!("127.0.0.1:{port}"))
        .env("CHORUS_NODE_ID", node_id)
        .env("CHORUS_WORKERS", "1")
        .env("JWT_SECRET", "test-secret-that-is-long-enough-0123456789")
        .env("CHORUS_ARGON2_MEMORY_KIB", "1024")
        .env("CHORUS_ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().expect("chorus starts");
    let address = format!("http://127.0.0.1:{port}");
    let client = awc::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(res) = client.get(format!("{address}/readyz")).send().await {
            if res.status().is_success() {
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "node process did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    NodeProcess { child, address }
}

/// A private `redis-server` this test owns (and may kill).
pub struct RedisProcess {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl RedisProcess {
    pub async fn start(port: u16) -> RedisProcess {
        let binary = std::env::var("CHORUS_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts (install it with script/bootstrap)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RedisProcess { child: Some(child), port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill").args([format!("-{signal}"), child.id().to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{signal}");
}

/// `redis-cli -p PORT ARGS…`, its standard output (for tests that run their own Redis servers).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `check` holds, failing the test after `wait`.
pub async fn eventually(what: &str, wait: Duration, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {wait:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
