//! One Engine.IO session: a task that reads the client's packets (from long-polling `POST`s or a
//! WebSocket, whichever is current), runs the heartbeat, and drives at most one Socket.IO session
//! on the namespace `/` through the session core, which answers through the [`Pipe`].
//!
//! How a session ends, as the client sees it: first a `closing` event with the `/api/v1/ws` close
//! code and reason; then, when reconnecting with the same token cannot help (4001 expired or
//! revoked, 4429 too many sessions), a Socket.IO DISCONNECT ("io server disconnect": the client
//! does not reconnect on its own, the app refreshes its token first); otherwise (4008 slow consumer,
//! 4000 heartbeat, 1012 draining, 1011) the transport closes ("transport close": the client
//! reconnects, to another node if this one drains, and `sync`s).

use std::future::pending;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::mpsc;

use super::pipe::Pipe;
use super::Engines;
use crate::clock::unix_secs;
use crate::error::ApiError;
use crate::hub::WorkerId;
use crate::protocol::socketio::{self, out, EnginePacket, SocketKind, SocketPacket};
use crate::protocol::ws::{close_code, ErrorEvent};
use crate::ratelimit::TokenBucket;
use crate::service::accounts;
use crate::session::{Closing, Outbox, Session};
use crate::state::AppState;

/// What reaches the engine from its transports.
#[derive(Debug)]
pub enum FromClient {
    /// One Engine.IO packet as text.
    Packet(ByteString),
    /// A binary packet or frame: never read.
    Binary,
    /// The transport was closed by the client (or broke).
    Closed,
}

/// How long an Engine.IO session may go without a connected Socket.IO session (Socket.IO's own
/// `connectTimeout` is 45 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long the transport gets to take the last packets, and then the close, once the engine ends.
const LAST_WORDS: Duration = Duration::from_secs(5);

struct Engine {
    state: Arc<AppState>,
    pipe: Arc<Pipe>,
    worker: WorkerId,
    session: Option<Session>,
    /// Packets before a Socket.IO session exists (CONNECT attempts) take tokens from here; after,
    /// from the session's own budget.
    unauthenticated: TokenBucket,
    /// Since when the engine has had no Socket.IO session.
    idle_since: Option<Instant>,
    /// Binary attachments announced by a refused binary packet, dropped without another error.
    attachments: u64,
}

pub(super) async fn run(
    state: Arc<AppState>,
    engines: Arc<Engines>,
    sid: Arc<str>,
    pipe: Arc<Pipe>,
    mut inbound: mpsc::Receiver<FromClient>,
    worker: WorkerId,
) {
    let settings = &state.settings;
    let unauthenticated = TokenBucket::new(f64::from(settings.ws_rate_per_s), f64::from(settings.ws_rate_burst));
    let mut engine = Engine {
        state: state.clone(),
        pipe: pipe.clone(),
        worker,
        session: None,
        unauthenticated,
        idle_since: Some(Instant::now()),
        attachments: 0,
    };
    let closing = engine.serve(&mut inbound, &engines).await;
    if let Some(session) = engine.session.take() {
        engines.connected(false);
        pipe.detach_queue();
        Box::pin(session.close(closing.reason)).await;
    }
    // Refuse what the client still sends, and let the transport take the last packets.
    inbound.close();
    pipe.end(closing.code);
    let _ = tokio::time::timeout(LAST_WORDS, pipe.close_sent()).await;
    engines.remove(&sid);
}

impl Engine {
    async fn serve(&mut self, inbound: &mut mpsc::Receiver<FromClient>, engines: &Engines) -> Closing {
        let pipe = self.pipe.clone();
        let every = Duration::from_secs(self.state.settings.ws_heartbeat_s);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        // Since when the last ping has gone unanswered.
        let mut unanswered: Option<Instant> = None;
        // One timer for the token's expiry, moved only when a session starts or `auth` swaps in a
        // fresh token (not a timer per packet).
        let mut armed_for = None;
        let expiry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(expiry);
        loop {
            if self.session.is_none() && self.state.draining.load(std::sync::atomic::Ordering::Relaxed) {
                return Closing { code: close_code::SERVICE_RESTART, reason: "draining" };
            }
            let control = self.session.as_ref().map(|s| s.control.clone());
            let expires_at = self.session.as_ref().map(|s| s.user.expires_at);
            if expires_at != armed_for {
                armed_for = expires_at;
                let left = Duration::from_secs(expires_at.unwrap_or(0).saturating_sub(unix_secs()));
                expiry.as_mut().reset(tokio::time::Instant::now() + left);
            }
            let flushed = pipe.is_flushed();
            tokio::select! {
                biased;
                _ = async { match &control { Some(c) => c.notify.notified().await, None => pending().await } } => {
                    let Some(session) = self.session.as_ref() else { continue };
                    let closing = session.closing();
                    if let Some(closing) = self.server_ends(closing, engines).await {
                        return closing;
                    }
                }
                _ = pipe.gone() => return Closing { code: 1000, reason: "client" },
                _ = &mut expiry, if expires_at.is_some() => {
                    armed_for = None; // re-armed on the next turn, if the session goes on
                    if expires_at.is_some_and(|at| at <= unix_secs()) {
                        let closing = Closing { code: close_code::TOKEN_EXPIRED, reason: "token_expired" };
                        if let Some(closing) = self.server_ends(closing, engines).await {
                            return closing;
                        }
                    }
                }
                _ = pipe.flushed(), if !flushed => {}
                packet = inbound.recv(), if flushed => {
                    let Some(packet) = packet else { return Closing { code: 1000, reason: "client" } };
                    match packet {
                        FromClient::Closed => return Closing { code: 1000, reason: "client" },
                        FromClient::Binary => self.binary(None),
                        FromClient::Packet(text) => match EnginePacket::parse(&text) {
                            Some(EnginePacket::Close) => return Closing { code: 1000, reason: "client" },
                            Some(EnginePacket::Pong(_)) => unanswered = None,
                            Some(EnginePacket::Ping(data)) => pipe.push(out::pong(data)),
                            Some(EnginePacket::Message(data)) => {
                                if let Some(closing) = Box::pin(self.socket_packet(data, engines)).await {
                                    return closing;
                                }
                            }
                            Some(EnginePacket::Binary) => self.binary(None),
                            Some(EnginePacket::Upgrade | EnginePacket::Noop) => {}
                            Some(EnginePacket::Open) | None => {
                                return Closing { code: 1002, reason: "protocol_error" };
                            }
                        },
                    }
                }
                // Without a Socket.IO session nothing else tells the engine of a drain (with one,
                // the hub closes the session through its control).
                _ = self.state.drain_started.notified(), if self.session.is_none() => {}
                _ = heartbeat.tick() => {
                    if unanswered.is_some_and(|at| at.elapsed() >= every.mul_f64(0.9)) {
                        let closing = Closing { code: close_code::HEARTBEAT_TIMEOUT, reason: "heartbeat_timeout" };
                        self.say_closing(closing);
                        return closing;
                    }
                    if self.session.is_none() {
                        let draining = self.state.draining.load(std::sync::atomic::Ordering::Relaxed);
                        if draining || self.idle_since.is_some_and(|at| at.elapsed() >= CONNECT_TIMEOUT) {
                            return Closing { code: 1000, reason: "closed" };
                        }
                    }
                    pipe.push(out::PING);
                    unanswered = Some(Instant::now());
                }
            }
        }
    }

    /// Tells the client why its session ends (the same code and reason as `/api/v1/ws`'s close).
    fn say_closing(&self, closing: Closing) {
        let data = serde_json::json!({ "code": closing.code, "reason": closing.reason });
        self.pipe.push(out::event("closing", &data.to_string()));
    }

    /// The server ends the Socket.IO session: with a DISCONNECT when reconnecting with the same
    /// token cannot help (the engine stays for a new CONNECT), else by closing the transport
    /// (returned: the engine ends).
    async fn server_ends(&mut self, closing: Closing, engines: &Engines) -> Option<Closing> {
        self.say_closing(closing);
        if !matches!(closing.code, close_code::TOKEN_EXPIRED | close_code::TOO_MANY_SESSIONS) {
            return Some(closing);
        }
        self.pipe.push(out::DISCONNECT);
        self.end_session(closing.reason, engines).await;
        None
    }

    async fn end_session(&mut self, reason: &'static str, engines: &Engines) {
        if let Some(session) = self.session.take() {
            engines.connected(false);
            self.pipe.detach_queue();
            self.idle_since = Some(Instant::now());
            Box::pin(session.close(reason)).await;
        }
    }

    /// A binary packet or attachment: refused once per packet (its attachments are dropped quietly).
    fn binary(&mut self, ack: Option<u64>) {
        if ack.is_none() && self.attachments > 0 {
            self.attachments -= 1;
            return;
        }
        let error = ApiError::field("frame", "binary data is not supported; send JSON");
        self.pipe.answer(ack.map(|id| id.to_string()), Err(&error));
    }

    async fn socket_packet(&mut self, data: &str, engines: &Engines) -> Option<Closing> {
        // Every packet takes a token first, garbage included: the session's budget once connected.
        let admitted = match self.session.as_mut() {
            Some(session) => session.admit(),
            None => self.unauthenticated.take().map_err(ApiError::RateLimited),
        };
        let packet = match SocketPacket::parse(data) {
            Ok(packet) => packet,
            Err(problem) => {
                let error = admitted.err().unwrap_or_else(|| ApiError::field("packet", problem));
                self.pipe.answer(None, Err(&error));
                return None;
            }
        };
        if let Err(error) = admitted {
            if packet.kind == SocketKind::Connect {
                self.refuse_connect(&error);
            } else {
                self.pipe.answer(packet.ack.map(|id| id.to_string()), Err(&error));
            }
            return None;
        }
        match packet.kind {
            SocketKind::Connect if packet.namespace != "/" => {
                self.pipe.push(out::connect_error(packet.namespace, "Invalid namespace", None));
            }
            SocketKind::Connect if self.session.is_some() => {
                let error = ApiError::field("namespace", "already connected to /");
                self.refuse_connect(&error);
            }
            SocketKind::Connect => return Box::pin(self.connect(packet.payload, engines)).await,
            SocketKind::Disconnect if packet.namespace == "/" => self.end_session("client", engines).await,
            SocketKind::Event if packet.namespace == "/" => {
                let reference = packet.ack.map(|id| id.to_string());
                // Without a session the namespace is not connected: the packet is ignored, as
                // Socket.IO servers do.
                if let Some(session) = self.session.as_mut() {
                    match socketio::event_arguments(packet.payload) {
                        Ok((event, data)) => Box::pin(session.handle(&*self.pipe, &event, data, reference)).await,
                        Err(problem) => session.refuse(&*self.pipe, reference, &ApiError::field("event", problem)),
                    }
                }
            }
            SocketKind::BinaryEvent | SocketKind::BinaryAck => {
                self.binary(packet.ack);
                self.attachments = self.attachments.saturating_add(packet.attachments);
            }
            // The server never asks for acks; a client cannot send CONNECT_ERROR; other namespaces
            // are not connected.
            SocketKind::Ack | SocketKind::ConnectError | SocketKind::Disconnect | SocketKind::Event => {}
        }
        None
    }

    fn refuse_connect(&self, error: &ApiError) {
        let event = ErrorEvent::from(error);
        self.pipe.push(out::connect_error("/", &event.message, Some(&event.code)));
    }

    /// CONNECT to `/`: the access token from `auth`, then the session core's start (`ready`).
    async fn connect(&mut self, payload: &str, engines: &Engines) -> Option<Closing> {
        let Some(token) = socketio::connect_token(payload) else {
            self.refuse_connect(&ApiError::Unauthenticated);
            return None;
        };
        let user = match accounts::authenticate(&self.state, &token) {
            Ok(user) => user,
            Err(error) => {
                self.refuse_connect(&error);
                return None;
            }
        };
        if self.state.draining.load(std::sync::atomic::Ordering::Relaxed) {
            self.refuse_connect(&ApiError::Unavailable("this node is draining".into()));
            return Some(Closing { code: close_code::SERVICE_RESTART, reason: "draining" });
        }
        let (queue, queued) = mpsc::channel(self.state.settings.ws_queue);
        self.pipe.attach_queue(queued);
        let mut session = Session::open(self.state.clone(), user, self.worker, queue).await;
        engines.connected(true);
        self.idle_since = None;
        self.pipe.push(out::connected(&session.id.to_string()));
        let started = Box::pin(session.start(&*self.pipe)).await;
        self.session = Some(session);
        match started {
            Ok(()) => None,
            Err(closing) => self.server_ends(closing, engines).await,
        }
    }
}
