//! Row structs (what a query returns) and insert forms (what an insert takes), one pair per table.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use uuid::Uuid;

use super::schema::{messages, refresh_families, refresh_tokens, room_members, rooms, users};
use crate::protocol::{self, Role};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: Uuid,
    pub username: String,
    pub username_key: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub username: &'a str,
    pub username_key: &'a str,
    pub password_hash: &'a str,
}

impl UserRow {
    pub fn into_user(self, online: bool) -> protocol::User {
        protocol::User {
            id: self.id,
            username: self.username,
            created_at: self.created_at,
            online,
            last_seen_at: self.last_seen_at,
        }
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = refresh_families)]
pub struct NewRefreshFamily {
    pub id: Uuid,
    pub user_id: Uuid,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = refresh_tokens)]
pub struct NewRefreshToken<'a> {
    pub token_hash: &'a [u8],
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = rooms)]
pub struct NewRoom<'a> {
    pub id: Uuid,
    pub kind: &'a str,
    pub name: Option<&'a str>,
    pub visibility: &'a str,
    pub password_hash: Option<&'a str>,
    pub direct_key: Option<&'a str>,
}

/// The parts of a room that permission checks and updates need.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rooms)]
pub struct RoomRow {
    pub kind: String,
    pub visibility: String,
    pub password_hash: Option<String>,
    pub last_seq: i64,
    pub cleared_seq: i64,
}

impl RoomRow {
    pub fn is_public(&self) -> bool {
        self.visibility == "public"
    }
    pub fn is_direct(&self) -> bool {
        self.kind == "direct"
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = room_members)]
pub struct NewMember<'a> {
    pub room_id: Uuid,
    pub user_id: Uuid,
    pub role: &'a str,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = room_members)]
pub struct MemberRow {
    pub role: String,
    pub joined_at: DateTime<Utc>,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

impl MemberRow {
    pub fn role(&self) -> Role {
        Role::parse(&self.role)
    }
}

/// A room as clients see it, with counts and (for a member) the caller's cursors.
#[derive(Debug, Clone, QueryableByName)]
pub struct RoomView {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub name: Option<String>,
    #[diesel(sql_type = Text)]
    pub visibility: String,
    #[diesel(sql_type = Bool)]
    pub protected: bool,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pub owner_id: Option<Uuid>,
    #[diesel(sql_type = BigInt)]
    pub member_count: i64,
    #[diesel(sql_type = BigInt)]
    pub last_seq: i64,
    #[diesel(sql_type = BigInt)]
    pub cleared_seq: i64,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Text>)]
    pub my_role: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub delivered_seq: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub read_seq: Option<i64>,
}

impl From<RoomView> for protocol::Room {
    fn from(v: RoomView) -> Self {
        let unread_count = v.read_seq.map(|read| (v.last_seq - read.max(v.cleared_seq)).max(0));
        protocol::Room {
            id: v.id,
            kind: v.kind,
            name: v.name,
            visibility: v.visibility,
            protected: v.protected,
            owner_id: v.owner_id,
            member_count: v.member_count,
            last_seq: v.last_seq,
            created_at: v.created_at,
            updated_at: v.updated_at,
            my_role: v.my_role.as_deref().map(Role::parse),
            delivered_seq: v.delivered_seq,
            read_seq: v.read_seq,
            unread_count,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: Uuid,
    pub room_id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    pub content: String,
    pub client_msg_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<MessageRow> for protocol::Message {
    fn from(m: MessageRow) -> Self {
        protocol::Message {
            id: m.id,
            room_id: m.room_id,
            seq: m.seq,
            sender_id: m.sender_id,
            content: m.content,
            client_msg_id: m.client_msg_id,
            created_at: m.created_at,
            edited_at: m.edited_at,
            deleted: m.deleted_at.is_some(),
        }
    }
}
