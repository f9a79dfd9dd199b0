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
