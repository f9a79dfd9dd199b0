//! Queries on `room_bans`. Callers hold the room's row lock (`rooms::lock_live`) when they ban or
//! check a ban before adding a member, so a ban and a join of the same user serialize.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::schema::{room_bans, users};
use super::DbConn;

/// A ban with the banned user's name, for the bans list.
#[derive(Debug, Queryable)]
pub struct BanView {
    pub user_id: Uuid,
    pub username: String,
    pub banned_by: Option<Uuid>,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Bans `user` from `room`; banning again updates the reason. Returns the ban as stored.
pub async fn ban(conn: &mut DbConn, room: Uuid, user: Uuid, by: Uuid, reason: Option<&str>) -> Result<(), Error> {
    diesel::insert_into(room_bans::table)
        .values((
            room_bans::room_id.eq(room),
            room_bans::user_id.eq(user),
            room_bans::banned_by.eq(by),
            room_bans::reason.eq(reason),
        ))
        .on_conflict((room_bans::room_id, room_bans::user_id))
        .do_update()
        .set((room_bans::banned_by.eq(by), room_bans::reason.eq(reason)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Lifts a ban; false when there was none.
pub async fn unban(conn: &mut DbConn, room: Uuid, user: Uuid) -> Result<bool, Error> {
    Ok(diesel::delete(room_bans::table.find((room, user))).execute(conn).await? == 1)
}

/// Those of `users` banned from `room`.
pub async fn banned_among(conn: &mut DbConn, room: Uuid, users: &[Uuid]) -> Result<Vec<Uuid>, Error> {
    room_bans::table
        .filter(room_bans::room_id.eq(room))
        .filter(room_bans::user_id.eq_any(users))
        .select(room_bans::user_id)
        .load(conn)
        .await
}

/// One ban, with the banned user's name.
pub async fn find(conn: &mut DbConn, room: Uuid, user: Uuid) -> Result<Option<BanView>, Error> {
    room_bans::table
        .inner_join(users::table.on(users::id.eq(room_bans::user_id)))
        .filter(room_bans::room_id.eq(room))
        .filter(room_bans::user_id.eq(user))
        .select((room_bans::user_id, users::username, room_bans::banned_by, room_bans::reason, room_bans::created_at))
        .first(conn)
        .await
        .optional()
}

/// Bans of a room by user id, after `after` (keyset pagination).
pub async fn list(conn: &mut DbConn, room: Uuid, after: Option<Uuid>, limit: i64) -> Result<Vec<BanView>, Error> {
    let mut query = room_bans::table
        .inner_join(users::table.on(users::id.eq(room_bans::user_id)))
        .filter(room_bans::room_id.eq(room))
        .select((room_bans::user_id, users::username, room_bans::banned_by, room_bans::reason, room_bans::created_at))
        .order(room_bans::user_id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(room_bans::user_id.gt(after));
    }
    query.load(conn).await
}
