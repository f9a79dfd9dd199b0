//! "Log out everywhere" without a lookup per request. Every access token carries its user's token
//! generation (`Claims::gen`); revoking moves the generation on in PostgreSQL. Each node keeps the
//! generations revoked within the access-token lifetime in memory (older tokens have expired anyway),
//! refuses tokens of an older generation, and closes its sockets that were opened with one (4001).
//!
//! Nodes learn of a revocation by polling PostgreSQL every second, not from the bus: a revocation
//! must reach every node even when a PUBLISH fails, and the poll is one indexed query per node per
//! second. The node that revoked applies it at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use uuid::Uuid;

use crate::db::{self, DbPool};
use crate::error::ApiError;
use crate::hub::Hub;
use crate::protocol::ws::close_code;

/// How often a node reads the recent revocations.
const POLL_EVERY: Duration = Duration::from_secs(1);

pub struct Revocations {
    /// user → the oldest token generation still accepted, for users revoked recently.
    current: RwLock<HashMap<Uuid, i32>>,
    /// How far back revocations matter: the access-token lifetime plus the verifier's leeway.
    window_s: i64,
}

impl Revocations {
    pub fn new(access_ttl_s: u64) -> Self {
        Revocations { current: RwLock::default(), window_s: access_ttl_s as i64 + 60 }
    }

    /// Refuses a token whose generation is older than the user's current one.
    pub fn check(&self, user: Uuid, generation: i32) -> Result<(), ApiError> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        match current.get(&user) {
            Some(&valid) if generation < valid => Err(ApiError::TokenRevoked),
            _ => Ok(()),
        }
    }

    /// Records that `user`'s tokens older than `generation` are revoked, and closes this node's
    /// sockets that were opened (or last re-authenticated) with one.
    pub fn apply(&self, hub: &Hub, user: Uuid, generation: i32) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let known = current.entry(user).or_insert(generation);
        *known = (*known).max(generation);
        drop(current);
        hub.close_user_sessions_before(user, generation, close_code::TOKEN_REVOKED);
    }

    /// Loads the recent revocations once (at start-up, before the node serves anything).
    pub async fn load(&self, db: &DbPool, hub: &Hub) -> Result<(), String> {
        let mut conn = db.get().await.map_err(|e| e.to_string())?;
        let rows = db::tokens::recent_revocations(&mut conn, self.window_s).await.map_err(|e| e.to_string())?;
        self.replace(hub, rows);
        Ok(())
    }

    /// Swaps in a fresh read: users whose generation moved get their sockets closed; users whose
    /// revocation aged out of the window are forgotten.
    fn replace(&self, hub: &Hub, rows: Vec<(Uuid, i32)>) {
        let fresh: HashMap<Uuid, i32> = rows.into_iter().collect();
        let mut moved = Vec::new();
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            for (user, generation) in &fresh {
                if current.get(user).is_none_or(|known| known < generation) {
                    moved.push((*user, *generation));
                }
            }
            // A generation this node applied itself is never lowered by a read that raced it.
            let mut merged = fresh;
            for (user, generation) in merged.iter_mut() {
                if let Some(known) = current.get(user) {
                    *generation = (*generation).max(*known);
                }
            }
            *current = merged;
        }
        for (user, generation) in moved {
            hub.close_user_sessions_before(user, generation, close_code::TOKEN_REVOKED);
        }
    }
}

/// Polls PostgreSQL for revocations made on any node, for as long as the node runs.
pub async fn watch(revocations: Arc<Revocations>, db: DbPool, hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = revocations.load(&db, &hub).await {
            tracing::warn!(%error, "could not read token revocations; will retry");
        }
    }
}
