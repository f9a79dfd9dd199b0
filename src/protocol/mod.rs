//! Wire types: every JSON body the REST API takes or returns, and the source of the OpenAPI schemas.
//! (The load generator and the tests speak the protocol as JSON of their own, as any client would.)

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub created_at: DateTime<Utc>,
    /// True while the user has a live WebSocket session on any node.
    pub online: bool,
    pub last_seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    // Declared lowest to highest so `Ord` ranks them.
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
    /// Parses the value stored in `room_members.role` (a CHECK constraint keeps it to these three).
    pub fn parse(s: &str) -> Role {
        match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            _ => Role::Member,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Room {
    pub id: Uuid,
    /// `group` or `direct` (a 1:1 room).
    pub kind: String,
    /// Null for direct rooms.
    pub name: Option<String>,
    /// `public` or `private`.
    pub visibility: String,
    /// True when joining needs a password.
    pub protected: bool,
    pub owner_id: Option<Uuid>,
    pub member_count: i64,
    /// Highest `seq` in the room.
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The caller's role, when the caller is a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub my_role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_count: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Member {
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
    pub online: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Message {
    pub id: Uuid,
    pub room_id: Uuid,
    /// Per-room sequence number: starts at 1, no gaps.
    pub seq: i64,
    pub sender_id: Uuid,
    /// Empty once deleted.
    pub content: String,
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

// Input rules as JSON Schema keywords (the checks themselves are in `validate`). Patterns are
// ECMA-262: `\uXXXX` escapes, and characters beyond the BMP written as themselves. A room name's
// first and last characters exclude white space (Unicode White_Space); no character may be a
// control, U+2028/U+2029, or Default_Ignorable (zero-width, joiners, bidi marks and overrides,
// variation selectors, fillers, tags). Lengths count characters where `validate` counts bytes
// (passwords, message content, `client_msg_id`), so they are upper bounds for non-ASCII text.

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Credentials {
    /// 3–32 letters, digits, `_`, `.` or `-`; unique regardless of case.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: String,
    /// At least 8 characters, at most 1024 bytes (checked on register only).
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: User,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(&self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomRequest {
    /// 1–64 characters after NFC normalization (the form stored); no leading or trailing space, no
    /// control, zero-width or direction-changing characters. Unique among public rooms.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\xad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}](?:[^\\x00-\\x1f\\x7f-\\x9f\\xad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}]*[^\\x00-\\x20\\x7f-\\xa0\\xad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}])?$"
    )]
    pub name: String,
    pub visibility: Visibility,
    /// Makes joining need this password: at least 8 characters, at most 1024 bytes.
    #[serde(default)]
    #[schema(min_length = 8, max_length = 1024)]
    pub password: Option<String>,
    /// Users to add as members at once (at most 100).
    #[serde(default)]
    #[schema(max_items = 100)]
    pub member_ids: Vec<Uuid>,
}

/// Absent fields stay as they are; `password: null` removes the password.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRoomRequest {
    /// As in `CreateRoomRequest`.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x20\\x7f-\\xa0\\xad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}](?:[^\\x00-\\x1f\\x7f-\\x9f\\xad\\u034f\\u061c\\u115f\\u1160\\u17b4\\u17b5\\u180b-\\u180f\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}]*[^\\x00-\\x20\\x7f-\\xa0\\xad\\u034f\\u061c\\u115f\\u1160\\u1680\\u17b4\\u17b5\\u180b-\\u180f\\u2000-\\u200f\\u2028-\\u202f\\u205f-\\u206f\\u3000\\u3164\\ufe00-\\ufe0f\\ufeff\\uffa0\\ufff0-\\ufff8\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0000}-\u{e0fff}])?$"
    )]
    pub name: Option<String>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
    /// A new password (at least 8 characters, at most 1024 bytes), or `null` to remove it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 8, max_length = 1024)]
    pub password: Option<Option<String>>,
}

/// Tells "field absent" (`None`) from "field is null" (`Some(None)`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(de: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserIdRequest {
    pub user_id: Uuid,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JoinRequest {
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BanRequest {
    pub user_id: Uuid,
    /// Why, for the room's owner and admins (at most 500 characters, no control characters; trimmed).
    #[serde(default)]
    #[schema(
        max_length = 500,
        pattern = "^[\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*[^\\x00-\\x1f\\x7f-\\x9f]*[\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]*$"
    )]
    pub reason: Option<String>,
}

/// A user kept out of a room: they cannot join or be added until the ban is lifted.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ban {
    pub user_id: Uuid,
    pub username: String,
    /// Who banned them (null once that account is gone).
    pub banned_by: Option<Uuid>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddMembersRequest {
    /// 1–100 users.
    #[schema(min_items = 1, max_items = 100)]
    pub user_ids: Vec<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateMemberRequest {
    /// `admin` or `member`; ownership moves with `POST /rooms/{id}/owner`.
    #[schema(value_type = String, pattern = "^(admin|member)$")]
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SendMessageRequest {
    /// Not blank, no NUL, at most `CHORUS_MAX_MESSAGE_BYTES` bytes of UTF-8 (413 beyond).
    #[schema(
        min_length = 1,
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00]*$"
    )]
    pub content: String,
    /// Client-chosen id (1–64 bytes, no control characters) that makes the send idempotent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EditMessageRequest {
    /// As in `SendMessageRequest`.
    #[schema(
        min_length = 1,
        pattern = "^[^\\x00]*[^\\x00\\t-\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\x00]*$"
    )]
    pub content: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReceiptRequest {
    /// At least one of the two is required.
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub delivered_seq: Option<i64>,
    #[serde(default, deserialize_with = "integral")]
    #[schema(minimum = 0)]
    pub read_seq: Option<i64>,
}

/// An integer that may be written `7.0`: JSON does not tell the two apart, and JSON Schema's
/// `integer` (the OpenAPI document's type for these) includes it.
fn integral<'de, D: Deserializer<'de>>(de: D) -> Result<Option<i64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(de)? else { return Ok(None) };
    n.as_i64()
        .or_else(|| {
            n.as_f64().filter(|f| f.fract() == 0.0 && (i64::MIN as f64..i64::MAX as f64).contains(f)).map(|f| f as i64)
        })
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("invalid value: {n}, expected an integer")))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Receipt {
    pub room_id: Uuid,
    pub user_id: Uuid,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnreceivedRoom {
    pub room_id: Uuid,
    pub messages: Vec<Message>,
    /// More than the per-room limit is waiting: fetch the rest with history or `sync`.
    pub has_more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Unreceived {
    pub rooms: Vec<UnreceivedRoom>,
    /// The answer stopped at its total cap (`CHORUS_UNRECEIVED_MAX_MESSAGES`): rooms with
    /// `has_more` have more, and rooms missing from the list may too. Catch up with `sync`, or
    /// move the delivered cursors and ask again.
    pub has_more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    /// Ascending by `seq`.
    pub items: Vec<Message>,
    /// True when more messages lie beyond this window in the direction asked.
    pub has_more: bool,
    /// For a backward window, `before_seq` of the next (older) page; for a forward one, `after_seq`.
    pub next_cursor: Option<String>,
}

pub mod socketio;
pub mod ws;
