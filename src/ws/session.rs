//! One task per socket: a single `select!` over the client's frames, the heartbeat, the token's expiry
//! and close requests. It registers with the hub, sends `ready`, runs until the socket ends, then
//! unregisters and updates presence. What the hub queues for the socket does not pass through this
//! task: the connection's response body reads it (`wire`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use serde::Deserialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::commands;
use super::wire::{Inbound, Incoming, Outgoing};
use crate::auth::AuthUser;
use crate::clock::unix_secs;
use crate::error::ApiError;
use crate::hub::{Outbound, Recipient, SessionControl, WorkerId};
use crate::presence;
use actix_http::ws::ProtocolError;

use crate::protocol::ws::{
    close_code, ClientEvent, ErrorEvent, RawFrame, Ready, ReadyRoom, Reply, ServerEvent, CLIENT_EVENTS,
};
use crate::service::sessions;
use crate::state::AppState;

/// Why a session ended, for the close frame and the metrics.
enum End {
    /// The connection dropped without a close frame: nothing to answer.
    Client,
    /// The client sent a close frame (with this status code, if any), which is answered.
    ClientClose(Option<u16>),
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
    /// How the hub (or a revocation, or a drain) asks this session to close.
    pub control: Arc<SessionControl>,
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
    let control = Arc::new(SessionControl::new(user.generation));
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
        control: control.clone(),
    };
    // The set-up and command futures are boxed: they are large (every service call they may make
    // is part of their state) and short-lived, and an idle socket should not carry them.
    let end = match Box::pin(send_ready(&mut conn)).await {
        Ok(()) => serve(&mut conn, &mut inbound, &control).await,
        Err(end) => end,
    };

    state.hub.unregister(session_id);
    state.metrics.ws_connections.dec();
    let reason = match end {
        End::Client | End::ClientClose(_) => "client",
        End::Code(_, reason) => reason,
    };
    state.metrics.ws_disconnects_total.with_label_values(&[reason]).inc();
    // Written after the session's own frames; what the hub queued is abandoned (the client
    // resyncs). A slow consumer gets it once it reads what is already in the pipe.
    match end {
        End::Client => {}
        End::ClientClose(code) => conn.out.close_echo(code.map(echoed_close_code)),
        End::Code(code, reason) => conn.out.close(code, reason),
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

/// Registers presence, attaches the user's rooms, and sends `ready`; or says why the session ends.
async fn send_ready(conn: &mut Connection) -> Result<(), End> {
    // A revocation that landed between the upgrade's token check and the hub registration found
    // no session to close: look again now that the session is registered.
    if conn.state.revocations.check(conn.user.id, conn.user.generation).is_err() {
        return Err(End::Code(close_code::TOKEN_REVOKED, "token_revoked"));
    }
    let state = conn.state.clone();
    let before = match presence::session_opened(&state, conn.user.id, conn.session_id).await {
        Ok(before) => before,
        Err(error) => {
            tracing::warn!(%error, "presence: could not record the session");
            // Unknown: not announced as a transition, and not refused (Redis trouble fails open).
            1
        }
    };
    // The newest session past the cap is the one refused: the user's working sessions stay up.
    if before >= u64::from(state.settings.max_sockets_per_user) {
        return Err(End::Code(close_code::TOO_MANY_SESSIONS, "too_many_sessions"));
    }
    Box::pin(prepare(conn, before == 0)).await.map_err(|e| {
        tracing::warn!(error = %e, "could not prepare the session");
        End::Code(1011, "error")
    })
}

async fn prepare(conn: &mut Connection, first: bool) -> Result<(), ApiError> {
    let state = conn.state.clone();
    let start = sessions::start(&state, conn.user.id).await?;
    let baselines: Vec<(Uuid, i64)> = start.rooms.iter().map(|r| (r.room_id, r.last_seq)).collect();
    let effective: HashMap<Uuid, i64> = state.hub.attach(conn.session_id, &baselines).await.into_iter().collect();
    // A removal (or ban) that committed after the read above announced itself before this socket
    // was attached, so the hub could not detach it: re-read the memberships now that it is.
    let still = sessions::member_rooms(&state, conn.user.id).await?;
    for (room, _) in &baselines {
        if !still.contains(room) {
            state.hub.detach(conn.session_id, *room);
        }
    }
    let rooms = start
        .rooms
        .into_iter()
        .filter(|r| still.contains(&r.room_id))
        .map(|r| {
            let last_seq = effective.get(&r.room_id).copied().unwrap_or(r.last_seq);
            conn.out.delivered().insert(r.room_id, last_seq);
            ReadyRoom { room_id: r.room_id, last_seq, delivered_seq: r.delivered_seq, read_seq: r.read_seq }
        })
        .collect();
    let last_seen_at = start.last_seen_at;
    let ready = ServerEvent::Ready(Ready {
        user: start.user,
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

/// The status code that answers a client's close: its own (RFC 6455 §5.5.1), or 1002 for one that no
/// endpoint may send (§7.4). The codec already refuses those as a protocol error; this does not rely
/// on it.
fn echoed_close_code(code: u16) -> u16 {
    if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        code
    } else {
        1002
    }
}

fn closing(control: &SessionControl) -> End {
    match control.close_code() {
        // The session's own expiry timer does not go through the control; only a revocation does.
        Some(close_code::TOKEN_REVOKED) => End::Code(close_code::TOKEN_REVOKED, "token_revoked"),
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
        |expires_at: u64| tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(unix_secs()));
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
                if conn.user.expires_at <= unix_secs() {
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
                        let metrics = &conn.state.metrics;
                        let error = match conn.rate.take() {
                            Ok(()) => {
                                metrics.ws_frames_total.with_label_values(&["invalid"]).inc();
                                ApiError::field("frame", "binary frames are not supported; send JSON text")
                            }
                            Err(retry_after) => {
                                metrics.ws_frames_total.with_label_values(&["rate_limited"]).inc();
                                ApiError::RateLimited(retry_after.max(1))
                            }
                        };
                        conn.out.text(error_frame(&error));
                    }
                    Some(Ok(Incoming::Ping(bytes))) => conn.out.pong(bytes),
                    Some(Ok(Incoming::Pong)) => {}
                    Some(Ok(Incoming::Close(code))) => return End::ClientClose(code),
                    None => return End::Client,
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

/// A client frame's envelope as [`RawFrame`] reads it, without building `data`: enough to answer
/// the `ref` of a frame refused before it is parsed.
#[derive(Deserialize)]
struct RefOnly<'a> {
    /// Read only to require a string `event`, as `RawFrame` does.
    #[serde(borrow, rename = "event")]
    _event: Cow<'a, str>,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
}

fn error_frame(error: &ApiError) -> ByteString {
    ByteString::from(ServerEvent::Error(ErrorEvent::from(error)).to_frame())
}

/// Parses and runs one client frame; returns the frames to send back, in order. Every failure is
/// an `error` event (no `ref`) or a failed `reply` (with `ref`); the socket stays open. Every frame
/// takes a token from the rate limit first, garbage included. No size check here: the frame reader
/// closes the socket (1009) on a frame or message over `CHORUS_MAX_FRAME_BYTES`.
async fn handle_text(conn: &mut Connection, text: &str) -> Vec<ByteString> {
    let metrics = conn.state.metrics.clone();
    if let Err(retry_after) = conn.rate.take() {
        metrics.ws_frames_total.with_label_values(&["rate_limited"]).inc();
        let error = ApiError::RateLimited(retry_after.max(1));
        // Only the envelope is read, to answer a `ref`; `data` is skipped, not built.
        return vec![match serde_json::from_str::<RefOnly>(text) {
            Ok(RefOnly { reference: Some(r), .. }) => ByteString::from(Reply::err(r, &error).to_frame()),
            _ => error_frame(&error),
        }];
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// What `handle_text` does with a frame's text short of running a command: the envelope
    /// (whole, or only its `ref` when rate limited), the event's `data`, and the error frame.
    fn parse_like_handle_text(text: &str) {
        let _ = serde_json::from_str::<RefOnly>(text);
        if let Ok(raw) = serde_json::from_str::<RawFrame>(text) {
            // Unknown events are refused before this in `handle_text`; parsing them must not panic
            // either.
            if let Err(e) = ClientEvent::parse(&raw.event, raw.data) {
                let _ = error_frame(&e);
            }
        }
    }

    const FIELDS: &[&str] = &[
        "room_id",
        "content",
        "client_msg_id",
        "message_id",
        "rooms",
        "after_seq",
        "before_seq",
        "limit",
        "delivered_seq",
        "read_seq",
        "user_ids",
        "token",
        "password",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
            Just(Value::from(Uuid::nil().to_string())),
            Just(Value::from(Uuid::now_v7().to_string())),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![proptest::sample::select(FIELDS).prop_map(str::to_owned), ".{0,8}"];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Envelopes close to valid ones: a real event name (or not), `data` of any shape, a `ref` of
    /// any type; as text, sometimes cut short or with a character spliced in.
    fn frame_text() -> impl Strategy<Value = String> {
        let event = prop_oneof![
            4 => proptest::sample::select(CLIENT_EVENTS).prop_map(Value::from),
            1 => ".{0,10}".prop_map(Value::from),
            1 => json_value(),
        ];
        let reference = prop_oneof![Just(None), Just(Some(json!("r1"))), json_value().prop_map(Some)];
        let envelope = (event, proptest::option::of(json_value()), reference)
            .prop_map(|(event, data, reference)| {
                let mut frame = serde_json::Map::new();
                frame.insert("event".into(), event);
                if let Some(data) = data {
                    frame.insert("data".into(), data);
                }
                if let Some(reference) = reference {
                    frame.insert("ref".into(), reference);
                }
                Value::Object(frame).to_string()
            })
            .boxed();
        let damaged =
            (envelope.clone(), any::<usize>(), any::<char>(), any::<bool>()).prop_map(|(text, at, c, cut)| {
                let mut at = at % (text.len() + 1);
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                if cut {
                    text[..at].to_owned()
                } else {
                    format!("{}{c}{}", &text[..at], &text[at..])
                }
            });
        prop_oneof![1 => any::<String>(), 3 => envelope, 2 => damaged]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_frame_text_parses_or_is_refused_without_panicking(text in frame_text()) {
            parse_like_handle_text(&text);
        }
    }

    #[test]
    fn deeply_nested_data_is_refused_not_a_stack_overflow() {
        let depth = 100_000;
        let text = format!(r#"{{"event":"send","data":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        assert!(serde_json::from_str::<RawFrame>(&text).is_err());
        parse_like_handle_text(&text);
    }

    #[test]
    fn a_rate_limited_frame_still_has_its_ref_read() {
        let text = r#"{"event":"send","data":{"content":"x","nested":[[[[1]]]]},"ref":"r7"}"#;
        let envelope: RefOnly = serde_json::from_str(text).expect("an envelope");
        assert_eq!(envelope.reference.as_deref(), Some("r7"));
        // As for `RawFrame`: `event` must be a string, `ref` a string if present.
        assert!(serde_json::from_str::<RefOnly>(r#"{"event":1,"ref":"r"}"#).is_err());
        assert!(serde_json::from_str::<RefOnly>(r#"{"event":"ping","ref":1}"#).is_err());
        assert!(serde_json::from_str::<RefOnly>(r#"{"event":"p\u0069ng","ref":"r"}"#).is_ok());
    }

    #[test]
    fn a_client_close_is_echoed_unless_its_code_may_not_be_sent() {
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4000, 4999] {
            assert_eq!(echoed_close_code(code), code);
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert_eq!(echoed_close_code(code), 1002);
        }
    }
}
