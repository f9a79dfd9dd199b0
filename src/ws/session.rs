//! One task per socket: a single `select!` over the client's frames, the heartbeat, the token's expiry
//! and close requests. It registers with the hub, sends `ready`, runs until the socket ends, then
//! unregisters and updates presence. What the hub queues for the socket does not pass through this
//! task: the connection's response body reads it (`wire`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::commands;
use super::wire::{Inbound, Incoming, Outgoing};
use crate::auth::tokens::unix_now;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::hub::{Outbound, Recipient, SessionControl, WorkerId};
use crate::presence;
use actix_http::ws::ProtocolError;

use crate::protocol::ws::{
    close_code, ClientEvent, ErrorEvent, RawFrame, Ready, ReadyRoom, Reply, ServerEvent, CLIENT_EVENTS,
};
use crate::startup::AppState;

/// Why a session ended, for the close frame and the metrics.
enum End {
    Client,
    Code(u16, &'static str),
}

/// Per-socket state the command handlers use.
pub struct Connection {
    pub state: Arc<AppState>,
    pub user: AuthUser,
    pub session_id: Uuid,
    /// What this socket writes, and its per-room stream positions.
    pub out: Outgoing,
    /// Per room, when this socket last forwarded `typing` (throttle).
    pub typing_at: HashMap<Uuid, Instant>,
    rate: TokenBucket,
}

/// Simple token bucket for the per-session rate limit.
struct TokenBucket {
    tokens: f64,
    per_s: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(per_s: u32, burst: u32) -> Self {
        TokenBucket { tokens: burst as f64, per_s: per_s as f64, burst: burst as f64, at: Instant::now() }
    }
    /// Takes a token, or tells how many seconds until one is free.
    fn take(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_s).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_s).ceil() as u64)
        }
    }
}

pub async fn run(
    state: Arc<AppState>,
    user: AuthUser,
    worker: WorkerId,
    out: Outgoing,
    mut inbound: Inbound,
    tx: mpsc::Sender<Outbound>,
) {
    let session_id = Uuid::now_v7();
    let control = Arc::new(SessionControl::default());
    Box::pin(state.hub.register(session_id, Recipient { user: user.id, tx, control: control.clone(), worker })).await;
    state.metrics.ws_connections.inc();
    state.metrics.ws_connects_total.inc();

    let mut conn = Connection {
        rate: TokenBucket::new(state.settings.ws_rate_per_s, state.settings.ws_rate_burst),
        state: state.clone(),
        user,
        session_id,
        out,
        typing_at: HashMap::new(),
    };
    // The set-up and command futures are boxed: they are large (every service call they may make
    // is part of their state) and short-lived, and an idle socket should not carry them.
    let end = match Box::pin(send_ready(&mut conn)).await {
        Ok(()) => serve(&mut conn, &mut inbound, &control).await,
        Err(e) => {
            tracing::warn!(error = %e, "could not prepare the session");
            End::Code(1011, "error")
        }
    };

    state.hub.unregister(session_id);
    state.metrics.ws_connections.dec();
    let (code, reason) = match end {
        End::Client => (None, "client"),
        End::Code(code, reason) => (Some(code), reason),
    };
    state.metrics.ws_disconnects_total.with_label_values(&[reason]).inc();
    if let Some(code) = code {
        // Written after the session's own frames; what the hub queued is abandoned (the client
        // resyncs). A slow consumer gets it once it reads what is already in the pipe.
        conn.out.close(code, reason);
    }
    Box::pin(leave_presence(&state, conn.user.id, session_id)).await;
}

async fn leave_presence(state: &AppState, user: Uuid, session_id: Uuid) {
    match presence::session_closed(state, user, session_id).await {
        Ok(true) => presence::announce(state, user, presence::Change::Offline).await,
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "presence: could not remove the session lease"),
    }
}

/// Registers presence, attaches the user's rooms, and sends `ready`.
async fn send_ready(conn: &mut Connection) -> Result<(), ApiError> {
    let state = conn.state.clone();
    let first = match presence::session_opened(&state, conn.user.id, conn.session_id).await {
        Ok(first) => first,
        Err(error) => {
            tracing::warn!(%error, "presence: could not record the session");
            false
        }
    };
    let mut db = state.db_conn().await?;
    let user = crate::db::users::by_id(&mut db, conn.user.id).await?.ok_or(ApiError::Unauthenticated)?;
    let rooms = crate::db::rooms::states_of(&mut db, conn.user.id).await?;
    drop(db);
    let baselines: Vec<(Uuid, i64)> = rooms.iter().map(|(room, last, _, _)| (*room, *last)).collect();
    let effective: HashMap<Uuid, i64> = state.hub.attach(conn.session_id, &baselines).await.into_iter().collect();
    let rooms = rooms
        .into_iter()
        .map(|(room_id, last, delivered_seq, read_seq)| {
            let last_seq = effective.get(&room_id).copied().unwrap_or(last);
            conn.out.delivered().insert(room_id, last_seq);
            ReadyRoom { room_id, last_seq, delivered_seq, read_seq }
        })
        .collect();
    let last_seen_at = user.last_seen_at;
    let ready = ServerEvent::Ready(Ready {
        user: user.into_user(true),
        session_id: conn.session_id,
        node_id: state.settings.node_id().to_owned(),
        rooms,
        heartbeat_s: state.settings.ws_heartbeat_s,
    });
    conn.out.text(ready.to_frame().into());
    // `ready` is first on the wire; the hub's queue (held until now) follows.
    conn.out.release();
    if first {
        let state = state.clone();
        let user = conn.user.id;
        let change = presence::Change::Online { last_seen_at };
        tokio::spawn(async move { presence::announce(&state, user, change).await });
    }
    Ok(())
}

fn closing(control: &SessionControl) -> End {
    match control.close_code() {
        Some(close_code::SLOW_CONSUMER) => End::Code(close_code::SLOW_CONSUMER, "slow_consumer"),
        Some(close_code::SERVICE_RESTART) => End::Code(close_code::SERVICE_RESTART, "draining"),
        Some(code) => End::Code(code, "closed"),
        None => End::Code(1000, "closed"),
    }
}

async fn serve(conn: &mut Connection, inbound: &mut Inbound, control: &SessionControl) -> End {
    let heartbeat_every = Duration::from_secs(conn.state.settings.ws_heartbeat_s);
    let silence_limit = heartbeat_every.mul_f64(2.5);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
    let mut last_heard = Instant::now();
    // One timer for the token's expiry, moved only when `auth` swaps in a fresh token (a timer
    // per loop turn would cost a timer-wheel insert and removal for every frame).
    let expiry_at =
        |expires_at: u64| tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(unix_now()));
    let mut armed_for = conn.user.expires_at;
    let expiry = tokio::time::sleep_until(expiry_at(armed_for));
    tokio::pin!(expiry);
    loop {
        if conn.user.expires_at != armed_for {
            armed_for = conn.user.expires_at;
            expiry.as_mut().reset(expiry_at(armed_for));
        }
        // The client's next frame is read only once the replies to the last one are out.
        let flushed = conn.out.is_flushed();
        tokio::select! {
            biased;
            _ = control.notify.notified() => return closing(control),
            _ = conn.out.gone() => return End::Client,
            _ = &mut expiry => {
                if conn.user.expires_at <= unix_now() {
                    return End::Code(close_code::TOKEN_EXPIRED, "token_expired");
                }
                armed_for = 0; // re-arm for the new expiry on the next turn
            }
            _ = conn.out.flushed(), if !flushed => {}
            message = inbound.recv(), if flushed => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Incoming::Text(text))) => {
                        for frame in Box::pin(handle_text(conn, &text)).await {
                            conn.out.text(frame);
                        }
                        // A `sync` holds the live stream while it decides what the client has.
                        conn.out.release();
                    }
                    Some(Ok(Incoming::Binary)) => {
                        let error = ApiError::field("frame", "binary frames are not supported; send JSON text");
                        conn.out.text(error_frame(&error));
                    }
                    Some(Ok(Incoming::Ping(bytes))) => conn.out.pong(bytes),
                    Some(Ok(Incoming::Pong)) => {}
                    Some(Ok(Incoming::Close)) | None => return End::Client,
                    // A text frame that is not UTF-8: 1007.
                    Some(Err(ProtocolError::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                        return End::Code(1007, "protocol_error");
                    }
                    // The connection dropped without a close frame: the client is gone, nothing to say.
                    Some(Err(ProtocolError::Io(_))) => return End::Client,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "websocket protocol error");
                        let code = if matches!(e, ProtocolError::Overflow) { 1009 } else { 1002 };
                        return End::Code(code, "protocol_error");
                    }
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > silence_limit {
                    return End::Code(close_code::HEARTBEAT_TIMEOUT, "heartbeat_timeout");
                }
                conn.out.ping();
            }
        }
    }
}

fn error_frame(error: &ApiError) -> ByteString {
    ByteString::from(ServerEvent::Error(ErrorEvent::from(error)).to_frame())
}

/// Parses and runs one client frame; returns the frames to send back, in order. Every failure is
/// an `error` event (no `ref`) or a failed `reply` (with `ref`); the socket stays open.
async fn handle_text(conn: &mut Connection, text: &str) -> Vec<ByteString> {
    let metrics = conn.state.metrics.clone();
    if text.len() > conn.state.settings.max_frame_bytes {
        metrics.ws_frames_total.with_label_values(&["invalid"]).inc();
        return vec![error_frame(&ApiError::TooLarge(conn.state.settings.max_frame_bytes))];
    }
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            metrics.ws_frames_total.with_label_values(&["invalid"]).inc();
            return vec![error_frame(&ApiError::field("frame", format!("not a JSON event frame: {e}")))];
        }
    };
    let reference = raw.reference.clone();
    let event_name = raw.event.clone();
    let answer = |frames: &mut Vec<ByteString>, result: Result<serde_json::Value, ApiError>| {
        if let Err(ApiError::Internal(cause) | ApiError::Unavailable(cause)) = &result {
            tracing::error!(error = %cause, debug = ?cause, event = %event_name, "websocket command failed");
        }
        match (&reference, result) {
            (Some(r), Ok(value)) => frames.push(ByteString::from(Reply::ok(r.clone(), value).to_frame())),
            (Some(r), Err(e)) => frames.push(ByteString::from(Reply::err(r.clone(), &e).to_frame())),
            (None, Ok(_)) => {}
            (None, Err(e)) => frames.push(error_frame(&e)),
        }
    };
    let mut frames = Vec::new();
    if let Err(retry_after) = conn.rate.take() {
        metrics.ws_frames_total.with_label_values(&["rate_limited"]).inc();
        answer(&mut frames, Err(ApiError::RateLimited(retry_after.max(1))));
        return frames;
    }
    if !CLIENT_EVENTS.contains(&raw.event.as_str()) {
        metrics.ws_frames_total.with_label_values(&["invalid"]).inc();
        let error = ApiError::field("event", format!("unknown event `{}`", raw.event));
        answer(&mut frames, Err(error));
        return frames;
    }
    let event = match ClientEvent::parse(&raw.event, raw.data) {
        Ok(event) => event,
        Err(e) => {
            metrics.ws_frames_total.with_label_values(&["invalid"]).inc();
            answer(&mut frames, Err(e));
            return frames;
        }
    };
    metrics.ws_frames_total.with_label_values(&["ok"]).inc();
    let result = commands::run(conn, event, &mut frames).await;
    answer(&mut frames, result);
    frames
}
