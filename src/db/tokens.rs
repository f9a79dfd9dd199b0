//! Queries on refresh-token families.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::models::{NewRefreshFamily, NewRefreshToken};
use super::schema::{refresh_families, refresh_tokens};
use super::DbConn;

/// A presented refresh token, as found, locked for the rest of the transaction.
#[derive(Debug, Queryable)]
pub struct PresentedToken {
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
    pub family_revoked_at: Option<DateTime<Utc>>,
}

pub async fn new_family(conn: &mut DbConn, user_id: Uuid) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    diesel::insert_into(refresh_families::table).values(&NewRefreshFamily { id, user_id }).execute(conn).await?;
    Ok(id)
}

pub async fn insert(conn: &mut DbConn, token: &NewRefreshToken<'_>) -> Result<(), Error> {
    diesel::insert_into(refresh_tokens::table).values(token).execute(conn).await?;
    Ok(())
}

/// Finds a token by hash and locks its row, so two concurrent refreshes with one token serialize and
/// the second sees it spent.
pub async fn find_for_update(conn: &mut DbConn, hash: &[u8]) -> Result<Option<PresentedToken>, Error> {
    refresh_tokens::table
        .inner_join(refresh_families::table)
        .filter(refresh_tokens::token_hash.eq(hash))
        .select((
            refresh_tokens::family_id,
            refresh_families::user_id,
            refresh_tokens::expires_at,
            refresh_tokens::spent_at,
            refresh_families::revoked_at,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn mark_spent(conn: &mut DbConn, hash: &[u8]) -> Result<(), Error> {
    diesel::update(refresh_tokens::table.find(hash))
        .set(refresh_tokens::spent_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn revoke_family(conn: &mut DbConn, family_id: Uuid) -> Result<(), Error> {
    diesel::update(refresh_families::table.find(family_id).filter(refresh_families::revoked_at.is_null()))
        .set(refresh_families::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes every refresh family of a user ("log out everywhere").
pub async fn revoke_all_families(conn: &mut DbConn, user_id: Uuid) -> Result<(), Error> {
    diesel::update(
        refresh_families::table
            .filter(refresh_families::user_id.eq(user_id))
            .filter(refresh_families::revoked_at.is_null()),
    )
    .set(refresh_families::revoked_at.eq(diesel::dsl::now))
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves the user's access-token generation on by one and returns the new one: tokens carrying an
/// older generation are refused from now on.
pub async fn bump_generation(conn: &mut DbConn, user_id: Uuid) -> Result<i32, Error> {
    use super::schema::token_revocations as t;
    diesel::insert_into(t::table)
        .values((t::user_id.eq(user_id), t::generation.eq(1)))
        .on_conflict(t::user_id)
        .do_update()
        .set((t::generation.eq(t::generation + 1), t::revoked_at.eq(diesel::dsl::now)))
        .returning(t::generation)
        .get_result(conn)
        .await
}

/// The generation new access tokens of this user carry (0 until the first revocation).
pub async fn generation_of(conn: &mut DbConn, user_id: Uuid) -> Result<i32, Error> {
    use super::schema::token_revocations as t;
    Ok(t::table.find(user_id).select(t::generation).first(conn).await.optional()?.unwrap_or(0))
}

/// `(user, generation)` of every revocation made in the last `within_s` seconds (older ones only
/// concern tokens that have expired anyway).
pub async fn recent_revocations(conn: &mut DbConn, within_s: i64) -> Result<Vec<(Uuid, i32)>, Error> {
    use super::schema::token_revocations as t;
    let since = Utc::now() - chrono::Duration::seconds(within_s);
    t::table.filter(t::revoked_at.gt(since)).select((t::user_id, t::generation)).load(conn).await
}
