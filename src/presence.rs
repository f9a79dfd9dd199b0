//! Who is online, kept in Redis so every node sees every node's sessions.
//!
//! Layout: `{prefix}presence:{user_id}` is a sorted set of the user's live session ids, each scored
//! with the unix-ms time its lease runs out. Nodes renew leases on a heartbeat; a node that dies
//! stops renewing, and its sessions fall out of the count once their lease expires. A user is online
//! while any lease in their set is in the future.

use std::collections::HashSet;

use deadpool_redis::redis;
use uuid::Uuid;

use crate::startup::AppState;

pub fn presence_key(prefix: &str, user: Uuid) -> String {
    format!("{prefix}presence:{user}")
}

pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which of `users` are online. Presence is advisory: if Redis cannot answer, everyone reads as offline
/// rather than failing the request.
pub async fn online_among(state: &AppState, users: &[Uuid]) -> HashSet<Uuid> {
    if users.is_empty() {
        return HashSet::new();
    }
    let now = unix_ms();
    let mut pipe = redis::pipe();
    for user in users {
        pipe.cmd("ZCOUNT").arg(presence_key(&state.settings.redis_prefix, *user)).arg(now).arg("+inf");
    }
    let counts: Result<Vec<i64>, String> = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        pipe.query_async(&mut *conn).await.map_err(|e| e.to_string())
    }
    .await;
    match counts {
        Ok(counts) => users.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(u, _)| *u).collect(),
        Err(error) => {
            tracing::warn!(%error, "presence lookup failed; reporting users offline");
            HashSet::new()
        }
    }
}

pub async fn is_online(state: &AppState, user: Uuid) -> bool {
    online_among(state, &[user]).await.contains(&user)
}
