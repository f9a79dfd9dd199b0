//! Queries on `rooms` and `room_members`. Membership changes lock the room row first (`lock_live`),
//! so they serialize with each other and with senders (who bump `last_seq` on that row).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::models::{MemberRow, NewMember, NewRoom, RoomRow, RoomView};
use super::schema::{room_members, rooms};
use super::DbConn;
use crate::protocol::Role;

const VIEW_SELECT: &str = "
SELECT r.id, r.kind, r.name, r.visibility, (r.password_hash IS NOT NULL) AS protected,
       (SELECT o.user_id FROM room_members o WHERE o.room_id = r.id AND o.role = 'owner') AS owner_id,
       (SELECT count(*) FROM room_members c WHERE c.room_id = r.id) AS member_count,
       r.last_seq, r.cleared_seq, r.created_at, r.updated_at,
       me.role AS my_role, me.delivered_seq, me.read_seq
FROM rooms r";

/// One room as `viewer` sees it (their cursors when a member). Deleted rooms are not found.
pub async fn view(conn: &mut DbConn, room_id: Uuid, viewer: Uuid) -> Result<Option<RoomView>, Error> {
    diesel::sql_query(format!(
        "{VIEW_SELECT} LEFT JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
         WHERE r.id = $2 AND r.deleted_at IS NULL"
    ))
    .bind::<SqlUuid, _>(viewer)
    .bind::<SqlUuid, _>(room_id)
    .get_result(conn)
    .await
    .optional()
}

/// Rooms `user` belongs to, by id (time-ordered), after `after`.
pub async fn list_joined(
    conn: &mut DbConn,
    user: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RoomView>, Error> {
    diesel::sql_query(format!(
        "{VIEW_SELECT} JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
         WHERE r.deleted_at IS NULL AND ($2::uuid IS NULL OR r.id > $2)
         ORDER BY r.id LIMIT $3"
    ))
    .bind::<SqlUuid, _>(user)
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// Public rooms anyone may discover, by id, after `after`.
pub async fn list_public(
    conn: &mut DbConn,
    viewer: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<RoomView>, Error> {
    diesel::sql_query(format!(
        "{VIEW_SELECT} LEFT JOIN room_members me ON me.room_id = r.id AND me.user_id = $1
         WHERE r.visibility = 'public' AND r.deleted_at IS NULL AND ($2::uuid IS NULL OR r.id > $2)
         ORDER BY r.id LIMIT $3"
    ))
    .bind::<SqlUuid, _>(viewer)
    .bind::<Nullable<SqlUuid>, _>(after)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// A live (not deleted) room.
pub async fn find_live(conn: &mut DbConn, id: Uuid) -> Result<Option<RoomRow>, Error> {
    rooms::table.find(id).filter(rooms::deleted_at.is_null()).select(RoomRow::as_select()).first(conn).await.optional()
}

/// A live room, its row locked until the transaction ends.
pub async fn lock_live(conn: &mut DbConn, id: Uuid) -> Result<Option<RoomRow>, Error> {
    rooms::table
        .find(id)
        .filter(rooms::deleted_at.is_null())
        .select(RoomRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn membership(conn: &mut DbConn, room_id: Uuid, user_id: Uuid) -> Result<Option<MemberRow>, Error> {
    room_members::table.find((room_id, user_id)).select(MemberRow::as_select()).first(conn).await.optional()
}

pub async fn insert_room(conn: &mut DbConn, room: &NewRoom<'_>) -> Result<(), Error> {
    diesel::insert_into(rooms::table).values(room).execute(conn).await?;
    Ok(())
}

/// Adds members, skipping those already in; returns the ids actually added.
pub async fn add_members(conn: &mut DbConn, room_id: Uuid, user_ids: &[Uuid], role: Role) -> Result<Vec<Uuid>, Error> {
    let rows: Vec<NewMember> =
        user_ids.iter().map(|&user_id| NewMember { room_id, user_id, role: role.as_str() }).collect();
    diesel::insert_into(room_members::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .returning(room_members::user_id)
        .get_results(conn)
        .await
}

pub async fn remove_member(conn: &mut DbConn, room_id: Uuid, user_id: Uuid) -> Result<bool, Error> {
    let n = diesel::delete(room_members::table.find((room_id, user_id))).execute(conn).await?;
    Ok(n == 1)
}

pub async fn set_role(conn: &mut DbConn, room_id: Uuid, user_id: Uuid, role: Role) -> Result<(), Error> {
    diesel::update(room_members::table.find((room_id, user_id)))
        .set(room_members::role.eq(role.as_str()))
        .execute(conn)
        .await?;
    Ok(())
}

/// Who inherits ownership when the owner leaves: the longest-standing admin, else member.
pub async fn successor(conn: &mut DbConn, room_id: Uuid, leaving: Uuid) -> Result<Option<Uuid>, Error> {
    room_members::table
        .filter(room_members::room_id.eq(room_id))
        .filter(room_members::user_id.ne(leaving))
        .select(room_members::user_id)
        .order((room_members::role.eq("admin").desc(), room_members::joined_at.asc(), room_members::user_id.asc()))
        .first(conn)
        .await
        .optional()
}

/// Field changes of a room; `password: Some(None)` removes protection.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = rooms)]
pub struct RoomChanges {
    pub name: Option<String>,
    pub visibility: Option<String>,
    pub password_hash: Option<Option<String>>,
    pub updated_at: Option<DateTime<Utc>>,
}

pub async fn update(conn: &mut DbConn, room_id: Uuid, changes: &RoomChanges) -> Result<(), Error> {
    diesel::update(rooms::table.find(room_id)).set(changes).execute(conn).await?;
    Ok(())
}

/// Closes a room: it disappears for everyone (404 from then on), memberships go with it.
pub async fn close(conn: &mut DbConn, room_id: Uuid) -> Result<(), Error> {
    diesel::update(rooms::table.find(room_id)).set(rooms::deleted_at.eq(diesel::dsl::now)).execute(conn).await?;
    diesel::delete(room_members::table.filter(room_members::room_id.eq(room_id))).execute(conn).await?;
    Ok(())
}

#[derive(QueryableByName)]
struct RoomIdRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

/// The one direct room for a pair: inserted if missing, found if present. Safe under concurrent calls:
/// the partial unique index on `direct_key` makes a racing insert wait and then do nothing.
pub async fn upsert_direct(conn: &mut DbConn, a: Uuid, b: Uuid) -> Result<(Uuid, bool), Error> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let key = format!("{lo}:{hi}");
    let inserted: Option<RoomIdRow> = diesel::sql_query(
        "INSERT INTO rooms (id, kind, name, visibility, direct_key) VALUES ($1, 'direct', NULL, 'private', $2)
         ON CONFLICT (direct_key) WHERE deleted_at IS NULL DO NOTHING RETURNING id",
    )
    .bind::<SqlUuid, _>(Uuid::now_v7())
    .bind::<Text, _>(&key)
    .get_result(conn)
    .await
    .optional()?;
    if let Some(room) = inserted {
        add_members(conn, room.id, &[a, b], Role::Member).await?;
        return Ok((room.id, true));
    }
    let existing: RoomIdRow = diesel::sql_query("SELECT id FROM rooms WHERE direct_key = $1 AND deleted_at IS NULL")
        .bind::<Text, _>(&key)
        .get_result(conn)
        .await?;
    Ok((existing.id, false))
}

/// A member with the user's name, for the members list.
#[derive(Debug, QueryableByName)]
pub struct MemberView {
    #[diesel(sql_type = SqlUuid)]
    pub user_id: Uuid,
    #[diesel(sql_type = Text)]
    pub username: String,
    #[diesel(sql_type = Text)]
    pub role: String,
    #[diesel(sql_type = Timestamptz)]
    pub joined_at: DateTime<Utc>,
}

/// Members by join time, after the `(joined_at, user_id)` key `after`.
pub async fn list_members(
    conn: &mut DbConn,
    room_id: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<MemberView>, Error> {
    diesel::sql_query(
        "SELECT m.user_id, u.username, m.role, m.joined_at
         FROM room_members m JOIN users u ON u.id = m.user_id
         WHERE m.room_id = $1 AND ($2::timestamptz IS NULL OR (m.joined_at, m.user_id) > ($2, $3))
         ORDER BY m.joined_at, m.user_id LIMIT $4",
    )
    .bind::<SqlUuid, _>(room_id)
    .bind::<Nullable<Timestamptz>, _>(after.map(|a| a.0))
    .bind::<Nullable<SqlUuid>, _>(after.map(|a| a.1))
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

/// `(room, last_seq)` of live rooms among `ids` (degraded-mode polling).
pub async fn last_seqs(conn: &mut DbConn, ids: &[Uuid]) -> Result<Vec<(Uuid, i64)>, Error> {
    rooms::table
        .filter(rooms::id.eq_any(ids))
        .filter(rooms::deleted_at.is_null())
        .select((rooms::id, rooms::last_seq))
        .load(conn)
        .await
}

#[derive(QueryableByName)]
struct RoomIdOnly {
    #[diesel(sql_type = SqlUuid)]
    room_id: Uuid,
}

/// Rooms of `user` with at most `max_members` members: where presence transitions are pushed.
pub async fn room_ids_for_presence(conn: &mut DbConn, user: Uuid, max_members: i64) -> Result<Vec<Uuid>, Error> {
    let rows: Vec<RoomIdOnly> = PresenceRooms { user, max_members }.load(conn).await?;
    Ok(rows.into_iter().map(|r| r.room_id).collect())
}

/// The statement behind [`room_ids_for_presence`], run twice per socket (open and close), prepared
/// once per connection (`db::prepared_statement!`).
struct PresenceRooms {
    user: Uuid,
    max_members: i64,
}

super::prepared_statement!(PresenceRooms, PresenceRoomsStatement);

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for PresenceRooms {
    fn walk_ast<'b>(&'b self, mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>) -> QueryResult<()> {
        out.push_sql("SELECT m.room_id FROM room_members m WHERE m.user_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.user)?;
        out.push_sql(" AND (SELECT count(*) FROM (SELECT 1 FROM room_members c WHERE c.room_id = m.room_id LIMIT ");
        out.push_bind_param::<BigInt, _>(&self.max_members)?;
        out.push_sql(" + 1) AS n) <= ");
        out.push_bind_param::<BigInt, _>(&self.max_members)?;
        Ok(())
    }
}

/// A live room of a user, as a new session starts from it: the room's head and the user's cursors.
#[derive(Debug, Clone, Copy, Queryable)]
pub struct RoomState {
    pub room_id: Uuid,
    pub last_seq: i64,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

/// Every live room of `user` with its head and the user's cursors (the `ready` event).
pub async fn states_of(conn: &mut DbConn, user: Uuid) -> Result<Vec<RoomState>, Error> {
    room_members::table
        .inner_join(rooms::table)
        .filter(room_members::user_id.eq(user))
        .filter(rooms::deleted_at.is_null())
        .select((rooms::id, rooms::last_seq, room_members::delivered_seq, room_members::read_seq))
        .load(conn)
        .await
}

/// One live membership and the room's head.
#[derive(Debug, Clone, Copy, Queryable)]
pub struct Membership {
    pub user_id: Uuid,
    pub room_id: Uuid,
    pub last_seq: i64,
}

/// Every live membership of `users` (reconciling after a bus outage).
pub async fn memberships_of(conn: &mut DbConn, users: &[Uuid]) -> Result<Vec<Membership>, Error> {
    room_members::table
        .inner_join(rooms::table)
        .filter(room_members::user_id.eq_any(users))
        .filter(rooms::deleted_at.is_null())
        .select((room_members::user_id, rooms::id, rooms::last_seq))
        .load(conn)
        .await
}

/// The live rooms `user` belongs to.
pub async fn room_ids_of(conn: &mut DbConn, user: Uuid) -> Result<Vec<Uuid>, Error> {
    room_members::table
        .inner_join(rooms::table)
        .filter(room_members::user_id.eq(user))
        .filter(rooms::deleted_at.is_null())
        .select(rooms::id)
        .load(conn)
        .await
}

/// Those of `users` who already belong to `max` or more live rooms.
pub async fn users_at_room_limit(conn: &mut DbConn, users: &[Uuid], max: i64) -> Result<Vec<Uuid>, Error> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let counts: Vec<(Uuid, i64)> = room_members::table
        .inner_join(rooms::table)
        .filter(room_members::user_id.eq_any(users))
        .filter(rooms::deleted_at.is_null())
        .group_by(room_members::user_id)
        .select((room_members::user_id, diesel::dsl::count_star()))
        .load(conn)
        .await?;
    Ok(counts.into_iter().filter(|(_, n)| *n >= max).map(|(user, _)| user).collect())
}

/// Whether the one direct room of this pair exists (opening it again costs nothing).
pub async fn direct_exists(conn: &mut DbConn, a: Uuid, b: Uuid) -> Result<bool, Error> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let key = format!("{lo}:{hi}");
    diesel::select(diesel::dsl::exists(
        rooms::table.filter(rooms::direct_key.eq(key)).filter(rooms::deleted_at.is_null()),
    ))
    .get_result(conn)
    .await
}
