//! Queries on `users`.

use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::models::{NewUser, UserRow};
use super::schema::users;
use super::DbConn;

pub async fn insert(conn: &mut DbConn, new: &NewUser<'_>) -> Result<UserRow, Error> {
    diesel::insert_into(users::table).values(new).returning(UserRow::as_returning()).get_result(conn).await
}

pub async fn by_username_key(conn: &mut DbConn, key: &str) -> Result<Option<UserRow>, Error> {
    users::table.filter(users::username_key.eq(key)).select(UserRow::as_select()).first(conn).await.optional()
}

pub async fn by_id(conn: &mut DbConn, id: Uuid) -> Result<Option<UserRow>, Error> {
    users::table.find(id).select(UserRow::as_select()).first(conn).await.optional()
}

/// Ids among `ids` that belong to no user.
pub async fn missing_ids(conn: &mut DbConn, ids: &[Uuid]) -> Result<Vec<Uuid>, Error> {
    let found: Vec<Uuid> = users::table.filter(users::id.eq_any(ids)).select(users::id).load(conn).await?;
    Ok(ids.iter().copied().filter(|id| !found.contains(id)).collect())
}

/// Users whose lower-cased name starts with `prefix`, after `after` (keyset pagination), by name.
pub async fn search(conn: &mut DbConn, prefix: &str, after: Option<&str>, limit: i64) -> Result<Vec<UserRow>, Error> {
    // The key column has the C collation, so `LIKE 'prefix%'` is an index range scan. Usernames
    // cannot contain LIKE metacharacters except '_', which is escaped here.
    let pattern = format!("{}%", prefix.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%"));
    let mut query = users::table
        .filter(users::username_key.like(pattern))
        .select(UserRow::as_select())
        .order(users::username_key.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(users::username_key.gt(after.to_owned()));
    }
    query.load(conn).await
}

/// Sets `last_seen_at` to now and returns it.
pub async fn touch_last_seen(conn: &mut DbConn, id: Uuid) -> Result<Option<chrono::DateTime<chrono::Utc>>, Error> {
    diesel::update(users::table.find(id))
        .set(users::last_seen_at.eq(diesel::dsl::now))
        .returning(users::last_seen_at)
        .get_result(conn)
        .await
        .optional()
        .map(Option::flatten)
}

/// The users among `ids` that exist (in no particular order); one query however many ids.
pub async fn by_ids(conn: &mut DbConn, ids: &[Uuid]) -> Result<Vec<UserRow>, Error> {
    users::table.filter(users::id.eq_any(ids)).select(UserRow::as_select()).load(conn).await
}
