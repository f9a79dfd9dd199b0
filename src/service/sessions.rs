//! What a new real-time session starts from, whatever its transport: the user as others see them and,
//! per room, the room's head and the user's cursors. Also the membership check a session makes
//! after attaching to rooms (a removal racing the attach must not leave it listening).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::rooms::{self as q, RoomState};
use crate::db::users;
use crate::error::{ApiError, ApiResult};
use crate::protocol::User;
use crate::state::AppState;

/// The start of a session.
pub struct Start {
    pub user: User,
    /// When the user was last seen before this session (for the presence announcement).
    pub last_seen_at: Option<DateTime<Utc>>,
    pub rooms: Vec<RoomState>,
}

/// Reads the user and their rooms in one pooled connection. A user that no longer exists is
/// `auth.unauthenticated`.
pub async fn start(state: &AppState, user_id: Uuid) -> ApiResult<Start> {
    let mut conn = state.db_conn().await?;
    let user = users::by_id(&mut conn, user_id).await?.ok_or(ApiError::Unauthenticated)?;
    let rooms = q::states_of(&mut conn, user_id).await?;
    let last_seen_at = user.last_seen_at;
    Ok(Start { user: user.into_user(true), last_seen_at, rooms })
}

/// The live rooms the user belongs to now.
pub async fn member_rooms(state: &AppState, user_id: Uuid) -> ApiResult<HashSet<Uuid>> {
    let mut conn = state.db_conn().await?;
    Ok(q::room_ids_of(&mut conn, user_id).await?.into_iter().collect())
}
