//! The WebSocket transport of a session: one task per socket, a single `select!` over the client's
//! frames, the heartbeat, the token's expiry and close requests. It reads each text frame as a JSON
//! envelope (`{event, data, ref}`) and hands it to the session core (`crate::session`), which runs
//! it and answers through [`Outgoing`]'s [`Outbox`] (JSON frames). What the hub queues for the
//! socket does not pass through this task: the connection's response body reads it (`wire`).

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::ws::ProtocolError;
use bytestring::ByteString;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::wire::{Inbound, Incoming, Outgoing};
use crate::auth::AuthUser;
use crate::clock::unix_secs;
use crate::error::ApiError;
use crate::hub::{Outbound, WorkerId};
use crate::protocol::ws::{close_code, ErrorEvent, RawFrame, Reply, ServerEvent};
use crate::session::{Outbox, Session};
use crate::state::AppState;

/// Why a socket ended, for the close frame and the metrics.
enum End {
    /// The connection dropped without a close frame: nothing to answer.
    Client,
    /// The client sent a close frame (with this status code, if any), which is answered.
    ClientClose(Option<u16>),
    Code(u16, &'static str),
}

/// The session's writes, as WebSocket JSON frames.
impl Outbox for Outgoing {
    fn event(&self, event: &ServerEvent) -> usize {
        let frame = event.to_frame();
        let len = frame.len();
        self.text(frame.into());
        len
    }

    fn answer(&self, reference: Option<String>, result: Result<Value, &ApiError>) {
        match (reference, result) {
            (Some(r), Ok(value)) => self.text(Reply::ok(r, value).to_frame().into()),
            (Some(r), Err(e)) => self.text(Reply::err(r, e).to_frame().into()),
            (None, Ok(_)) => {}
            (None, Err(e)) => self.text(error_frame(e)),
        }
    }

    fn hold(&self) {
        Outgoing::hold(self);
    }

    fn release(&self) {
        Outgoing::release(self);
    }

    fn delivered(&self) -> impl DerefMut<Target = HashMap<Uuid, i64>> {
        Outgoing::delivered(self)
    }

    fn flushed(&self) -> impl Future<Output = ()> {
        Outgoing::flushed(self)
    }
}

pub async fn run(
    state: Arc<AppState>,
    user: AuthUser,
    worker: WorkerId,
    out: Outgoing,
    mut inbound: Inbound,
    queue: mpsc::Sender<Outbound>,
) {
    let mut session = Session::open(state, user, worker, queue).await;
    // The set-up and command futures are boxed: they are large (every service call they may make
    // is part of their state) and short-lived, and an idle socket should not carry them.
    let end = match Box::pin(session.start(&out)).await {
        Ok(()) => serve(&mut session, &out, &mut inbound).await,
        Err(closing) => End::Code(closing.code, closing.reason),
    };
    // Written after the session's own frames; what the hub queued is abandoned (the client
    // resyncs). A slow consumer gets it once it reads what is already in the pipe.
    let reason = match end {
        End::Client => "client",
        End::ClientClose(code) => {
            out.close_echo(code.map(echoed_close_code));
            "client"
        }
        End::Code(code, reason) => {
            out.close(code, reason);
            reason
        }
    };
    Box::pin(session.close(reason)).await;
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

async fn serve(session: &mut Session, out: &Outgoing, inbound: &mut Inbound) -> End {
    let control = session.control.clone();
    let heartbeat_every = Duration::from_secs(session.state.settings.ws_heartbeat_s);
    let silence_limit = heartbeat_every.mul_f64(2.5);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
    let mut last_heard = Instant::now();
    // One timer for the token's expiry, moved only when `auth` swaps in a fresh token (a timer
    // per loop turn would cost a timer-wheel insert and removal for every frame).
    let expiry_at =
        |expires_at: u64| tokio::time::Instant::now() + Duration::from_secs(expires_at.saturating_sub(unix_secs()));
    let mut armed_for = session.user.expires_at;
    let expiry = tokio::time::sleep_until(expiry_at(armed_for));
    tokio::pin!(expiry);
    loop {
        if session.user.expires_at != armed_for {
            armed_for = session.user.expires_at;
            expiry.as_mut().reset(expiry_at(armed_for));
        }
        // The client's next frame is read only once the replies to the last one are out.
        let flushed = out.is_flushed();
        tokio::select! {
            biased;
            _ = control.notify.notified() => {
                let closing = session.closing();
                return End::Code(closing.code, closing.reason);
            }
            _ = out.gone() => return End::Client,
            _ = &mut expiry => {
                if session.user.expires_at <= unix_secs() {
                    return End::Code(close_code::TOKEN_EXPIRED, "token_expired");
                }
                armed_for = 0; // re-arm for the new expiry on the next turn
            }
            _ = Outgoing::flushed(out), if !flushed => {}
            message = inbound.recv(), if flushed => {
                last_heard = Instant::now();
                match message {
                    Some(Ok(Incoming::Text(text))) => Box::pin(handle_text(session, out, &text)).await,
                    Some(Ok(Incoming::Binary)) => match session.admit() {
                        Ok(()) => {
                            let error = ApiError::field("frame", "binary frames are not supported; send JSON text");
                            session.refuse(out, None, &error);
                        }
                        Err(error) => Outbox::answer(out, None, Err(&error)),
                    },
                    Some(Ok(Incoming::Ping(bytes))) => out.pong(bytes),
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
                out.ping();
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

/// Reads one text frame as a JSON envelope and hands it to the session. Every frame takes a token
/// from the rate budget first, garbage included. No size check here: the frame reader closes the
/// socket (1009) on a frame or message over `CHORUS_MAX_FRAME_BYTES`.
async fn handle_text(session: &mut Session, out: &Outgoing, text: &str) {
    if let Err(error) = session.admit() {
        // Only the envelope is read, to answer a `ref`; `data` is skipped, not built.
        let reference = serde_json::from_str::<RefOnly>(text).ok().and_then(|r| r.reference);
        return Outbox::answer(out, reference, Err(&error));
    }
    match serde_json::from_str::<RawFrame>(text) {
        Ok(raw) => session.handle(out, &raw.event, raw.data, raw.reference).await,
        Err(e) => session.refuse(out, None, &ApiError::field("frame", format!("not a JSON event frame: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ws::{ClientEvent, CLIENT_EVENTS};
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
