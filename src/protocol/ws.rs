//! WebSocket wire types: one JSON text frame per event, `{"event", "data", "ref"?}`.
//! Client → server events are [`ClientEvent`]; server → client events are [`ServerEvent`], plus
//! [`Reply`] for the one answer to a client frame that carried a `ref`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Message, Receipt, Role, Room, User};
use crate::error::{ApiError, ErrorBody};

/// Close codes beyond RFC 6455's.
pub mod close_code {
    /// The access token expired and no fresh one was swapped in with `auth`.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The access token was revoked ("log out everywhere", or a reused refresh token): log in again.
    /// The same code as expiry: either way the client needs a new token before it reconnects.
    pub const TOKEN_REVOKED: u16 = TOKEN_EXPIRED;
    /// The user already holds the most live sessions allowed (`CHORUS_MAX_SOCKETS_PER_USER`): this,
    /// the newest, is refused. Close another session first.
    pub const TOO_MANY_SESSIONS: u16 = 4429;
    /// The client read too slowly: its outbound queue overflowed. Reconnect and `sync`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// No frame (not even a pong) from the client within the heartbeat timeout.
    pub const HEARTBEAT_TIMEOUT: u16 = 4000;
    /// RFC 6455 "service restart": the node is draining; reconnect (to another node).
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Declares the client events once: the enum and the list of their names (an unknown name gets its
/// own error) come from the same lines, so they cannot drift apart.
macro_rules! client_events {
    ($($name:literal => $variant:ident($data:ty),)*) => {
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(tag = "event", content = "data")]
        pub enum ClientEvent {
            $(#[serde(rename = $name)] $variant($data),)*
        }

        /// Every client event name.
        pub const CLIENT_EVENTS: &[&str] = &[$($name),*];
    };
}

client_events! {
    "ping" => Ping(Empty),
    "send" => Send(SendData),
    "edit" => Edit(EditData),
    "delete" => Delete(DeleteData),
    "typing" => Typing(RoomRef),
    "ack" => Ack(AckData),
    "sync" => Sync(SyncData),
    "history" => History(HistoryData),
    "join" => Join(JoinData),
    "leave" => Leave(RoomRef),
    "presence" => Presence(PresenceQuery),
    "auth" => Auth(AuthData),
}

/// The envelope of a client frame, before its `data` is checked against the event.
#[derive(Debug, Deserialize)]
pub struct RawFrame {
    pub event: String,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
}

impl ClientEvent {
    /// Checks `data` against the event's shape; a missing `data` reads as `{}`.
    pub fn parse(event: &str, data: Option<Value>) -> Result<ClientEvent, ApiError> {
        let data = data.unwrap_or_else(|| Value::Object(Default::default()));
        let mut envelope = serde_json::Map::with_capacity(2);
        envelope.insert("event".into(), Value::String(event.to_owned()));
        envelope.insert("data".into(), data);
        serde_path_to_error::deserialize(Value::Object(envelope)).map_err(|e| ApiError::from_serde(e, "data"))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendData {
    pub room_id: Uuid,
    pub content: String,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EditData {
    pub message_id: Uuid,
    pub content: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeleteData {
    pub message_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomRef {
    pub room_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AckData {
    pub room_id: Uuid,
    #[serde(default)]
    pub delivered_seq: Option<i64>,
    #[serde(default)]
    pub read_seq: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncRoom {
    pub room_id: Uuid,
    pub after_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncData {
    pub rooms: Vec<SyncRoom>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryData {
    pub room_id: Uuid,
    #[serde(default)]
    pub before_seq: Option<i64>,
    #[serde(default)]
    pub limit: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JoinData {
    pub room_id: Uuid,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceQuery {
    pub user_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuthData {
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum ServerEvent {
    Ready(Ready),
    Message(Message),
    MessageEdited(Message),
    MessageDeleted(MessageDeleted),
    RoomCleared(RoomCleared),
    Typing(Typing),
    Presence(Presence),
    Receipt(Receipt),
    MemberJoined(MemberJoined),
    MemberLeft(MemberLeft),
    MemberUpdated(MemberUpdated),
    RoomUpdated(Room),
    RoomDeleted(RoomDeleted),
    Pong(Empty),
    Error(ErrorEvent),
}

impl ServerEvent {
    /// The frame text. Serializing plain data cannot fail; the fallback keeps the socket protocol-valid.
    pub fn to_frame(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"event":"error","data":{"code":"internal","message":"serialization failed"}}"#.to_owned()
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadyRoom {
    pub room_id: Uuid,
    pub last_seq: i64,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ready {
    pub user: User,
    pub session_id: Uuid,
    pub node_id: String,
    pub rooms: Vec<ReadyRoom>,
    /// The server pings this often; a client silent for 2.5 times as long is disconnected (4000).
    pub heartbeat_s: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageDeleted {
    pub room_id: Uuid,
    pub message_id: Uuid,
    pub seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomCleared {
    pub room_id: Uuid,
    /// Messages up to and including this seq are gone.
    pub cleared_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Typing {
    pub room_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Presence {
    pub user_id: Uuid,
    pub online: bool,
    pub last_seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberJoined {
    pub room_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberLeft {
    pub room_id: Uuid,
    pub user_id: Uuid,
    /// `left` or `removed`.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberUpdated {
    pub room_id: Uuid,
    pub user_id: Uuid,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoomDeleted {
    pub room_id: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorEvent {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl From<&ApiError> for ErrorEvent {
    fn from(e: &ApiError) -> Self {
        let body: ErrorBody = e.body();
        ErrorEvent {
            code: body.code.to_owned(),
            message: body.message,
            details: body.details.and_then(|d| serde_json::to_value(d).ok()),
        }
    }
}

/// The one answer to a client frame with a `ref`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub event: String,
    #[serde(rename = "ref")]
    pub reference: String,
    pub data: ReplyData,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplyData {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEvent>,
}

impl Reply {
    pub fn ok(reference: String, result: Value) -> Self {
        Reply { event: "reply".into(), reference, data: ReplyData { ok: true, result: Some(result), error: None } }
    }
    pub fn err(reference: String, error: &ApiError) -> Self {
        Reply {
            event: "reply".into(),
            reference,
            data: ReplyData { ok: false, result: None, error: Some(error.into()) },
        }
    }
    pub fn to_frame(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_names_bad_fields() {
        let room = Uuid::now_v7();
        let ev = ClientEvent::parse("send", Some(serde_json::json!({"room_id": room, "content": "hi"}))).ok();
        assert_eq!(ev, Some(ClientEvent::Send(SendData { room_id: room, content: "hi".into(), client_msg_id: None })));
        assert_eq!(ClientEvent::parse("ping", None).ok(), Some(ClientEvent::Ping(Empty {})));
        match ClientEvent::parse("send", Some(serde_json::json!({"room_id": room}))) {
            Err(ApiError::Validation(fields)) => assert_eq!(fields[0].field, "content"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn every_listed_name_is_an_event_and_nothing_else_is() {
        for name in CLIENT_EVENTS {
            // A missing `data` may fail on a field of the event, never on the event's name.
            if let Err(ApiError::Validation(fields)) = ClientEvent::parse(name, None) {
                assert_ne!(fields[0].field, "event", "{name}: {fields:?}");
                assert!(!fields[0].message.contains("unknown variant"), "{name}: {fields:?}");
            }
        }
        assert!(ClientEvent::parse("shout", None).is_err());
    }

    #[test]
    fn server_events_are_tagged() {
        let frame = ServerEvent::RoomDeleted(RoomDeleted { room_id: Uuid::nil() }).to_frame();
        assert_eq!(frame, format!(r#"{{"event":"room_deleted","data":{{"room_id":"{}"}}}}"#, Uuid::nil()));
    }
}
