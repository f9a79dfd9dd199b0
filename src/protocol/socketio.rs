//! The Socket.IO wire format: Engine.IO v4 packets (what a transport carries) and the Socket.IO v5
//! packets inside their `message` packets. Text only; no I/O. The specs are the
//! `socketio/engine.io-protocol` and `socketio/socket.io-protocol` repositories.
//!
//! An Engine.IO packet is one type digit and its data: `0` open, `1` close, `2` ping, `3` pong,
//! `4` message, `5` upgrade, `6` noop; on HTTP long-polling several travel in one body separated by
//! `\x1e`, and a binary one is `b` + base64. A Socket.IO packet (the data of a `4`) is a type digit,
//! for binary types an attachment count and `-`, an optional `/namespace,`, an optional ack id, and
//! a JSON payload: `2["send",{…}]`, `21["send",{…}]` (ack id 1), `31[{…}]`, `0{"token":…}`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// The separator of packets in one HTTP long-polling body.
pub const RECORD_SEPARATOR: char = '\x1e';

/// An Engine.IO packet from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Open,
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
    /// A binary message (`b` + base64 on polling, or a binary WebSocket frame): never read.
    Binary,
}

impl<'a> EnginePacket<'a> {
    pub fn parse(text: &'a str) -> Option<EnginePacket<'a>> {
        let mut chars = text.chars();
        let kind = chars.next()?;
        let data = chars.as_str();
        Some(match kind {
            '0' => EnginePacket::Open,
            '1' => EnginePacket::Close,
            '2' => EnginePacket::Ping(data),
            '3' => EnginePacket::Pong(data),
            '4' => EnginePacket::Message(data),
            '5' => EnginePacket::Upgrade,
            '6' => EnginePacket::Noop,
            'b' => EnginePacket::Binary,
            _ => return None,
        })
    }
}

/// The packets of one long-polling request body.
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(RECORD_SEPARATOR)
}

/// What the server answers an Engine.IO handshake with.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: usize,
}

impl Handshake<'_> {
    /// The `open` packet.
    pub fn packet(&self) -> String {
        format!("0{}", serde_json::to_string(self).unwrap_or_default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A Socket.IO packet from the client, its payload not yet read.
#[derive(Debug, PartialEq, Eq)]
pub struct SocketPacket<'a> {
    pub kind: SocketKind,
    /// `/` unless the packet names another namespace.
    pub namespace: &'a str,
    pub ack: Option<u64>,
    /// For a binary packet, how many binary attachments follow it.
    pub attachments: u64,
    /// The JSON payload, possibly empty.
    pub payload: &'a str,
}

/// Ack ids are JavaScript numbers counted up from 0 by the client: anything longer is not one.
const MAX_ACK_DIGITS: usize = 15;

impl<'a> SocketPacket<'a> {
    pub fn parse(text: &'a str) -> Result<SocketPacket<'a>, &'static str> {
        let bytes = text.as_bytes();
        let kind = match bytes.first() {
            Some(b'0') => SocketKind::Connect,
            Some(b'1') => SocketKind::Disconnect,
            Some(b'2') => SocketKind::Event,
            Some(b'3') => SocketKind::Ack,
            Some(b'4') => SocketKind::ConnectError,
            Some(b'5') => SocketKind::BinaryEvent,
            Some(b'6') => SocketKind::BinaryAck,
            _ => return Err("unknown packet type"),
        };
        let mut rest = &text[1..];
        let mut attachments = 0;
        if matches!(kind, SocketKind::BinaryEvent | SocketKind::BinaryAck) {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 || digits > MAX_ACK_DIGITS || rest.as_bytes().get(digits) != Some(&b'-') {
                return Err("malformed attachment count");
            }
            attachments = rest[..digits].parse().map_err(|_| "malformed attachment count")?;
            rest = &rest[digits + 1..];
        }
        let mut namespace = "/";
        if rest.starts_with('/') {
            match rest.find(',') {
                Some(end) => {
                    namespace = &rest[..end];
                    rest = &rest[end + 1..];
                }
                None => {
                    namespace = rest;
                    rest = "";
                }
            }
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack = if digits == 0 {
            None
        } else if digits > MAX_ACK_DIGITS {
            return Err("ack id too long");
        } else {
            let id = rest[..digits].parse().map_err(|_| "malformed ack id")?;
            rest = &rest[digits..];
            Some(id)
        };
        Ok(SocketPacket { kind, namespace, ack, attachments, payload: rest })
    }
}

/// The arguments of an EVENT: its name, and its first argument as the event's `data`. Chorus's
/// events take one argument; any others are ignored.
pub fn event_arguments(payload: &str) -> Result<(String, Option<Value>), &'static str> {
    // An array: a name, then any number of arguments (read lazily: only the first is built).
    match serde_json::from_str::<Vec<&RawValue>>(payload) {
        Ok(items) if items.is_empty() => Err("an event needs a name"),
        Ok(items) => {
            let name: String = serde_json::from_str(items[0].get()).map_err(|_| "the event name must be a string")?;
            let data = match items.get(1) {
                Some(raw) => Some(serde_json::from_str(raw.get()).map_err(|_| "malformed event data")?),
                None => None,
            };
            Ok((name, data))
        }
        Err(_) => Err("an event's payload must be a JSON array"),
    }
}

/// The auth payload of a CONNECT: `{"token": "…"}`, if there is one.
pub fn connect_token(payload: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Auth {
        token: Option<String>,
    }
    if payload.is_empty() {
        return None;
    }
    serde_json::from_str::<Auth>(payload).ok().and_then(|auth| auth.token)
}

/// The Engine.IO packets the server writes, Socket.IO packets included (with their `4` prefix).
pub mod out {
    use serde_json::Value;

    pub const CLOSE: &str = "1";
    pub const PING: &str = "2";
    pub const PONG_PROBE: &str = "3probe";
    pub const NOOP: &str = "6";
    pub const DISCONNECT: &str = "41";

    pub fn pong(data: &str) -> String {
        format!("3{data}")
    }

    pub fn connected(sid: &str) -> String {
        format!("40{}", serde_json::json!({ "sid": sid }))
    }

    /// CONNECT_ERROR: the client's `connect_error` with `err.message` and `err.data`.
    pub fn connect_error(namespace: &str, message: &str, code: Option<&str>) -> String {
        let body = match code {
            Some(code) => serde_json::json!({ "message": message, "data": { "code": code } }),
            None => serde_json::json!({ "message": message }),
        };
        if namespace == "/" {
            format!("44{body}")
        } else {
            format!("44{namespace},{body}")
        }
    }

    /// An EVENT with one argument; `data` is JSON text.
    pub fn event(name: &str, data: &str) -> String {
        let name = Value::from(name);
        format!("42[{name},{data}]")
    }

    /// An ACK with one argument; `data` is JSON text.
    pub fn ack(id: u64, data: &str) -> String {
        format!("43{id}[{data}]")
    }
}

/// The EVENT packet for a server event already serialized as an `/api/v1/ws` frame
/// (`{"event":…,"data":…}`): the fan-out serializes an event once, and a Socket.IO recipient gets it
/// reframed (once per event, not per socket: see `hub::Queued`), without parsing `data` into values.
pub fn event_from_frame(frame: &str) -> String {
    #[derive(Deserialize)]
    struct Frame<'a> {
        #[serde(borrow)]
        event: &'a str,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    match serde_json::from_str::<Frame>(frame) {
        Ok(Frame { event, data }) => out::event(event, data.map_or("{}", RawValue::get)),
        Err(_) => out::event("error", r#"{"code":"internal","message":"an event could not be reframed"}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn engine_packets_parse() {
        assert_eq!(EnginePacket::parse("2probe"), Some(EnginePacket::Ping("probe")));
        assert_eq!(EnginePacket::parse("3"), Some(EnginePacket::Pong("")));
        assert_eq!(EnginePacket::parse("42[\"a\"]"), Some(EnginePacket::Message("2[\"a\"]")));
        assert_eq!(EnginePacket::parse("5"), Some(EnginePacket::Upgrade));
        assert_eq!(EnginePacket::parse("bAAEC"), Some(EnginePacket::Binary));
        assert_eq!(EnginePacket::parse(""), None);
        assert_eq!(EnginePacket::parse("9"), None);
        assert_eq!(split_payload("2\x1e42[\"x\"]\x1e3").collect::<Vec<_>>(), ["2", "42[\"x\"]", "3"]);
    }

    #[test]
    fn socket_packets_parse_as_the_spec_writes_them() {
        let p = SocketPacket::parse(r#"0{"token":"t"}"#).expect("connect");
        assert_eq!((p.kind, p.namespace, p.ack, p.payload), (SocketKind::Connect, "/", None, r#"{"token":"t"}"#));
        let p = SocketPacket::parse("0/admin,").expect("connect to a namespace");
        assert_eq!((p.kind, p.namespace, p.payload), (SocketKind::Connect, "/admin", ""));
        let p = SocketPacket::parse(r#"212["send",{"a":1}]"#).expect("event with ack");
        assert_eq!((p.kind, p.ack, p.payload), (SocketKind::Event, Some(12), r#"["send",{"a":1}]"#));
        let p = SocketPacket::parse(r#"2/chat,7["x"]"#).expect("namespaced event with ack");
        assert_eq!((p.namespace, p.ack, p.payload), ("/chat", Some(7), r#"["x"]"#));
        let p = SocketPacket::parse(r#"51-["up",{"_placeholder":true,"num":0}]"#).expect("binary event");
        assert_eq!((p.kind, p.attachments), (SocketKind::BinaryEvent, 1));
        assert_eq!(SocketPacket::parse("1").expect("disconnect").kind, SocketKind::Disconnect);
        assert!(SocketPacket::parse("").is_err());
        assert!(SocketPacket::parse("9").is_err());
        assert!(SocketPacket::parse("5x-[]").is_err());
        assert!(SocketPacket::parse("21234567890123456[\"x\"]").is_err());
    }

    #[test]
    fn event_arguments_take_the_name_and_the_first_argument() {
        assert_eq!(event_arguments(r#"["send",{"a":1}]"#), Ok(("send".to_owned(), Some(json!({"a":1})))));
        assert_eq!(event_arguments(r#"["ping"]"#), Ok(("ping".to_owned(), None)));
        assert_eq!(event_arguments(r#"["x",1,2,3]"#), Ok(("x".to_owned(), Some(json!(1)))));
        assert!(event_arguments("[]").is_err());
        assert!(event_arguments("[1]").is_err());
        assert!(event_arguments("{}").is_err());
        assert!(event_arguments("").is_err());
    }

    #[test]
    fn connect_tokens_are_read_from_the_auth_payload() {
        assert_eq!(connect_token(r#"{"token":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(connect_token(r#"{"token":1}"#), None);
        assert_eq!(connect_token(""), None);
        assert_eq!(connect_token("{}"), None);
    }

    #[test]
    fn a_ws_frame_is_reframed_as_the_same_event() {
        let frame = json!({"event": "message", "data": {"seq": 3, "content": "hé \"q\""}}).to_string();
        let packet = event_from_frame(&frame);
        let args: Value = serde_json::from_str(packet.strip_prefix("42").expect("an EVENT")).expect("JSON");
        assert_eq!(args, json!(["message", {"seq": 3, "content": "hé \"q\""}]));
        assert_eq!(event_from_frame(r#"{"event":"pong","data":{}}"#), r#"42["pong",{}]"#);
        assert!(event_from_frame("garbage").starts_with(r#"42["error""#));
    }

    #[test]
    fn server_packets_are_what_the_client_reads() {
        assert_eq!(out::connected("s1"), r#"40{"sid":"s1"}"#);
        assert_eq!(
            out::connect_error("/", "no token", Some("auth.unauthenticated")),
            r#"44{"data":{"code":"auth.unauthenticated"},"message":"no token"}"#
        );
        assert_eq!(out::connect_error("/x", "Invalid namespace", None), r#"44/x,{"message":"Invalid namespace"}"#);
        assert_eq!(out::ack(4, r#"{"ok":true}"#), r#"434[{"ok":true}]"#);
        let handshake = Handshake {
            sid: "n.1",
            upgrades: &["websocket"],
            ping_interval: 25000,
            ping_timeout: 20000,
            max_payload: 65536,
        };
        assert_eq!(
            handshake.packet(),
            r#"0{"sid":"n.1","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":65536}"#
        );
    }

    proptest! {
        #[test]
        fn any_packet_text_parses_or_is_refused_without_panicking(text in ".{0,40}") {
            if let Some(EnginePacket::Message(data)) = EnginePacket::parse(&text) {
                if let Ok(packet) = SocketPacket::parse(data) {
                    let _ = event_arguments(packet.payload);
                    let _ = connect_token(packet.payload);
                }
            }
            let _ = SocketPacket::parse(&text);
            let _ = event_from_frame(&text);
        }
    }
}
