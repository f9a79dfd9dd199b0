//! Accounts: register, login, refresh-token rotation with reuse detection, logout, user lookup.

use chrono::Utc;
use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::auth::tokens::{hash_refresh_token, new_refresh_token};
use crate::auth::AuthUser;
use crate::db::models::{NewRefreshToken, NewUser, UserRow};
use crate::db::{self, is_unique_violation, tokens, users};
use crate::error::{ApiError, ApiResult, Missing};
use crate::presence;
use crate::protocol::ws::Presence;
use crate::protocol::{Credentials, Page, TokenPair, User};
use crate::state::AppState;
use crate::validate::{self, Checks};

pub async fn register(state: &AppState, req: Credentials) -> ApiResult<User> {
    Checks::new().add(validate::username(&req.username)).add(validate::password("password", &req.password)).finish()?;
    let hash = state.passwords.hash(req.password).await?;
    let key = req.username.to_ascii_lowercase();
    let mut conn = state.db_conn().await?;
    let new = NewUser { id: Uuid::now_v7(), username: &req.username, username_key: &key, password_hash: &hash };
    match users::insert(&mut conn, &new).await {
        Ok(row) => Ok(row.into_user(false)),
        Err(e) if is_unique_violation(&e, "users_username_key_unique") => {
            Err(ApiError::Conflict(Missing::User, "that username is taken"))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn login(state: &AppState, req: Credentials) -> ApiResult<TokenPair> {
    // A name that could never have registered is not looked up, but still costs a full verify.
    let user = if validate::username(&req.username).is_ok() {
        let mut conn = state.db_conn().await?;
        users::by_username_key(&mut conn, &req.username.to_ascii_lowercase()).await?
    } else {
        None
    };
    let ok = state.passwords.verify(req.password, user.as_ref().map(|u| u.password_hash.clone())).await?;
    let user = match (ok, user) {
        (true, Some(user)) => user,
        _ => return Err(ApiError::InvalidCredentials),
    };
    let mut conn = state.db_conn().await?;
    let family = tokens::new_family(&mut conn, user.id).await?;
    issue_pair(state, &mut conn, family, user).await
}

async fn issue_pair(state: &AppState, conn: &mut db::DbConn, family: Uuid, user: UserRow) -> ApiResult<TokenPair> {
    let refresh_token = new_refresh_token();
    let expires_at = Utc::now() + chrono::Duration::seconds(state.tokens.refresh_ttl_s as i64);
    let hash = hash_refresh_token(&refresh_token);
    tokens::insert(conn, &NewRefreshToken { token_hash: &hash, family_id: family, expires_at }).await?;
    let generation = tokens::generation_of(conn, user.id).await?;
    let access_token = state.tokens.issue_access(user.id, &user.username, generation)?;
    let online = presence::is_online(state, user.id).await;
    Ok(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in: state.tokens.access_ttl_s,
        user: user.into_user(online),
    })
}

/// Outcome of presenting a refresh token, decided inside the transaction.
enum Presented {
    Fresh { family: Uuid, user: Uuid },
    Reused { user: Uuid, generation: i32 },
    Revoked,
    Expired,
}

/// Revokes every refresh family of the user and moves their token generation on; returns it.
async fn revoke_everything(conn: &mut db::DbConn, user: Uuid) -> Result<i32, diesel::result::Error> {
    tokens::revoke_all_families(conn, user).await?;
    tokens::bump_generation(conn, user).await
}

/// The caller an access token names, if the token is valid, unexpired and not revoked. Every
/// transport (REST, WebSocket) authenticates through this one function.
pub fn authenticate(state: &AppState, token: &str) -> ApiResult<AuthUser> {
    let claims = state.tokens.verify(token)?;
    state.revocations.check(claims.sub, claims.gen)?;
    Ok(AuthUser::from(claims))
}

/// "Log out everywhere": every refresh family of the caller is revoked, every access token issued
/// before now is refused, and every live socket of the caller closes with 4001: at once on this node,
/// within about a second on the others (`revocations`).
pub async fn logout_all(state: &AppState, caller: &AuthUser) -> ApiResult<()> {
    let mut conn = state.db_conn().await?;
    let generation =
        conn.transaction::<_, ApiError, _>(async |conn| Ok(revoke_everything(conn, caller.id).await?)).await?;
    drop(conn);
    state.revocations.apply(&state.hub, caller.id, generation);
    Ok(())
}

pub async fn refresh(state: &AppState, refresh_token: &str) -> ApiResult<TokenPair> {
    let hash = hash_refresh_token(refresh_token);
    let mut conn = state.db_conn().await?;
    // The token row is locked, so of two concurrent refreshes with one token, the second sees it spent.
    // A reuse commits the family's revocation before answering 401.
    let outcome = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let token = tokens::find_for_update(conn, &hash).await?.ok_or(ApiError::Unauthenticated)?;
            if token.spent_at.is_some() {
                // A spent token came back: someone holds a copy. Whoever it is, every session of the
                // user ends, live sockets and access tokens included.
                let generation = revoke_everything(conn, token.user_id).await?;
                return Ok(Presented::Reused { user: token.user_id, generation });
            }
            if token.family_revoked_at.is_some() {
                // A session that was logged out: refused, without ending the user's other sessions.
                return Ok(Presented::Revoked);
            }
            if token.expires_at <= Utc::now() {
                return Ok(Presented::Expired);
            }
            tokens::mark_spent(conn, &hash).await?;
            Ok(Presented::Fresh { family: token.family_id, user: token.user_id })
        })
        .await?;
    match outcome {
        Presented::Reused { user, generation } => {
            state.revocations.apply(&state.hub, user, generation);
            Err(ApiError::RefreshReused)
        }
        Presented::Revoked => Err(ApiError::RefreshReused),
        Presented::Expired => Err(ApiError::TokenExpired),
        Presented::Fresh { family, user } => {
            let user = users::by_id(&mut conn, user).await?.ok_or(ApiError::Unauthenticated)?;
            issue_pair(state, &mut conn, family, user).await
        }
    }
}

/// Revokes the family of `refresh_token` if it is the caller's. Unknown tokens are ignored: logging out
/// twice is not an error.
pub async fn logout(state: &AppState, caller: &AuthUser, refresh_token: &str) -> ApiResult<()> {
    let hash = hash_refresh_token(refresh_token);
    let mut conn = state.db_conn().await?;
    conn.transaction::<_, ApiError, _>(async |conn| {
        if let Some(token) = tokens::find_for_update(conn, &hash).await? {
            if token.user_id == caller.id {
                tokens::revoke_family(conn, token.family_id).await?;
            }
        }
        Ok(())
    })
    .await
}

/// Who of `ids` is online, and when each was last seen; unknown ids are left out. One query and one
/// Redis pipeline for the whole list (the caller bounds its length).
pub async fn presence_of(state: &AppState, ids: &[Uuid]) -> ApiResult<Vec<Presence>> {
    let mut conn = state.db_conn().await?;
    let rows = users::by_ids(&mut conn, ids).await?;
    drop(conn);
    let found: Vec<Uuid> = rows.iter().map(|u| u.id).collect();
    let online = presence::online_among(state, &found).await;
    let mut by_id: std::collections::HashMap<Uuid, UserRow> = rows.into_iter().map(|u| (u.id, u)).collect();
    // In the order asked, each once.
    Ok(ids
        .iter()
        .filter_map(|id| by_id.remove(id))
        .map(|u| Presence { user_id: u.id, online: online.contains(&u.id), last_seen_at: u.last_seen_at })
        .collect())
}

pub async fn get_user(state: &AppState, id: Uuid) -> ApiResult<User> {
    let mut conn = state.db_conn().await?;
    let row = users::by_id(&mut conn, id).await?.ok_or(ApiError::NotFound(Missing::User))?;
    let online = presence::is_online(state, id).await;
    Ok(row.into_user(online))
}

pub async fn search(state: &AppState, q: &str, cursor: Option<&str>, limit: Option<i64>) -> ApiResult<Page<User>> {
    let limit = validate::limit(limit)?;
    if q.len() > 32 || !q.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(ApiError::field("q", "must be at most 32 characters of letters, digits, '_', '.' or '-'"));
    }
    let after = validate::decode_cursor(cursor)?;
    let mut conn = state.db_conn().await?;
    let mut rows = users::search(&mut conn, &q.to_ascii_lowercase(), after.as_deref(), limit + 1).await?;
    let next_cursor = validate::next_cursor(&mut rows, limit, |u| u.username_key.clone());
    let ids: Vec<Uuid> = rows.iter().map(|u| u.id).collect();
    let online = presence::online_among(state, &ids).await;
    let items = rows.into_iter().map(|u| {
        let on = online.contains(&u.id);
        u.into_user(on)
    });
    Ok(Page { items: items.collect(), next_cursor })
}
