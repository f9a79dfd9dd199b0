//! Who is online, kept in Redis so every node sees every node's sessions.
//!
//! Layout: `{prefix}presence:{user_id}` is a sorted set of the user's live session ids, each scored
//! with the unix-ms time its lease runs out. Nodes renew leases on a heartbeat; a node that dies
//! stops renewing, and its sessions fall out of the count once their lease expires. A user is online
//! while any lease in their set is in the future.

use std::collections::HashSet;

use deadpool_redis::redis;
use uuid::Uuid;

use crate::clock::unix_ms;
use crate::state::AppState;

/// Which of `users` are online. Presence is advisory: if Redis cannot answer, everyone reads as offline
/// rather than failing the request.
pub async fn online_among(state: &AppState, users: &[Uuid]) -> HashSet<Uuid> {
    if users.is_empty() {
        return HashSet::new();
    }
    let now = unix_ms();
    let names = &state.redis.names;
    // One pipeline per slot (in cluster mode a pipeline may not span slots; otherwise there is one).
    let online: Result<HashSet<Uuid>, String> = async {
        let mut conn = redis_conn(state).await?;
        let mut online = HashSet::new();
        for group in by_partition(names, users.iter().copied()) {
            let mut pipe = redis::pipe();
            for user in &group {
                pipe.cmd("ZCOUNT").arg(names.presence_key(*user)).arg(now).arg("+inf");
            }
            let counts: Vec<i64> = pipe.query_async(&mut conn).await.map_err(|e| broken(state, e))?;
            online.extend(group.iter().zip(counts).filter(|(_, n)| *n > 0).map(|(u, _)| *u));
        }
        Ok(online)
    }
    .await;
    match online {
        Ok(online) => online,
        Err(error) => {
            tracing::warn!(%error, "presence lookup failed; reporting users offline");
            HashSet::new()
        }
    }
}

pub async fn is_online(state: &AppState, user: Uuid) -> bool {
    online_among(state, &[user]).await.contains(&user)
}

/// Adds a session's lease; returns how many live sessions the user had before it (0: they just came
/// online).
/// Atomic in Redis: expired leases are dropped and the count taken in the same script, so two
/// sessions opening at once cannot both (or neither) see themselves as first.
const OPEN_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return before
";

/// Removes a session's lease; true when no live session of the user remains (they went offline).
const CLOSE_SCRIPT: &str = r"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
if removed == 0 then return -1 end
return redis.call('ZCARD', KEYS[1])
";

/// `items` grouped by their user's partition: one group outside cluster mode, in their order.
fn by_partition<T>(names: &crate::kv::Names, items: impl IntoIterator<Item = T>) -> Vec<Vec<T>>
where
    T: UserOf,
{
    let mut groups: std::collections::BTreeMap<Option<u16>, Vec<T>> = std::collections::BTreeMap::new();
    for item in items {
        groups.entry(names.partition_of(item.user())).or_default().push(item);
    }
    groups.into_values().collect()
}

/// What [`by_partition`] groups by.
trait UserOf {
    fn user(&self) -> Uuid;
}

impl UserOf for Uuid {
    fn user(&self) -> Uuid {
        *self
    }
}

impl UserOf for (Uuid, Uuid) {
    fn user(&self) -> Uuid {
        self.0
    }
}

fn member(user: Uuid, session: Uuid) -> String {
    format!("{user}:{session}")
}

pub async fn session_opened(state: &AppState, user: Uuid, session: Uuid) -> Result<u64, String> {
    let names = &state.redis.names;
    let ttl_ms = state.settings.presence_ttl_s as i64 * 1000;
    let now = unix_ms();
    let mut conn = redis_conn(state).await?;
    let before: i64 = redis::Script::new(OPEN_SCRIPT)
        .key(names.presence_key(user))
        .key(names.node_sessions_key(state.settings.node_id(), user))
        .arg(session.to_string())
        .arg(now + ttl_ms)
        .arg(now)
        .arg(ttl_ms * 4)
        .arg(member(user, session))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| broken(state, e))?;
    Ok(before.max(0) as u64)
}

pub async fn session_closed(state: &AppState, user: Uuid, session: Uuid) -> Result<bool, String> {
    let names = &state.redis.names;
    let mut conn = redis_conn(state).await?;
    let remaining: i64 = redis::Script::new(CLOSE_SCRIPT)
        .key(names.presence_key(user))
        .key(names.node_sessions_key(state.settings.node_id(), user))
        .arg(session.to_string())
        .arg(unix_ms())
        .arg(member(user, session))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| broken(state, e))?;
    Ok(remaining == 0)
}

/// A presence transition to announce.
pub enum Change {
    /// Came online. `last_seen_at` is the user row's, which the caller has just read (`ready`).
    Online { last_seen_at: Option<chrono::DateTime<chrono::Utc>> },
    /// Went offline: `last_seen_at` is stamped now.
    Offline,
}

/// Tells the user's rooms about a transition, and records `last_seen_at` when they go offline.
/// Rooms larger than `CHORUS_PRESENCE_MAX_ROOM` are left out: a transition there would be one frame
/// per member for every member who connects (quadratic in the room's size); their clients ask with
/// the `presence` command instead.
pub async fn announce(state: &AppState, user: Uuid, change: Change) {
    let online = matches!(change, Change::Online { .. });
    let result: Result<(), crate::error::ApiError> = async {
        let mut conn = state.db_conn().await?;
        let last_seen_at = match change {
            Change::Online { last_seen_at } => last_seen_at,
            Change::Offline => crate::db::users::touch_last_seen(&mut conn, user).await?,
        };
        let max = state.settings.presence_max_room;
        let rooms = crate::db::rooms::room_ids_for_presence(&mut conn, user, max).await?;
        drop(conn);
        if !rooms.is_empty() {
            state.fanout.presence(user, online, last_seen_at, rooms).await;
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, %user, online, "presence announcement failed");
    }
}

/// Renews the leases of this node's sessions and its own liveness mark, every third of the TTL;
/// and, as any node may, cleans up after nodes that stopped renewing (killed without a word).
pub async fn maintain(state: actix_web::web::Data<AppState>) {
    let period = std::time::Duration::from_millis((state.settings.presence_ttl_s * 1000 / 3).max(200));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(error) = renew(&state).await {
            tracing::warn!(%error, "presence renewal failed");
        }
        if let Err(error) = sweep_dead_nodes(&state).await {
            tracing::warn!(%error, "presence sweep failed");
        }
    }
}

/// Sessions renewed per pipeline. The node's whole set in one pipeline would hold the shared Redis
/// connection, and every PUBLISH queued behind it, for as long as Redis takes to run it, and would
/// leave redis-rs's write buffer at that pipeline's size for good: ~700 bytes per socket, measured.
const RENEW_BATCH: usize = 256;

async fn renew(state: &AppState) -> Result<(), String> {
    let names = &state.redis.names;
    let node = state.settings.node_id();
    let ttl_ms = state.settings.presence_ttl_s as i64 * 1000;
    let now = unix_ms();
    let mut conn = redis_conn(state).await?;
    redis::cmd("ZADD")
        .arg(names.nodes_key())
        .arg(now)
        .arg(state.settings.node_id())
        .query_async::<()>(&mut conn)
        .await
        .map_err(|e| broken(state, e))?;
    for group in by_partition(names, state.hub.sessions()) {
        for batch in group.chunks(RENEW_BATCH) {
            let mut pipe = redis::pipe();
            for (user, session) in batch {
                // Plain ZADD, not XX: a lease a sweeper dropped while this node looked dead comes back.
                let key = names.presence_key(*user);
                pipe.cmd("ZADD").arg(&key).arg(now + ttl_ms).arg(session.to_string()).ignore();
                pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms * 4).ignore();
                pipe.cmd("SADD").arg(names.node_sessions_key(node, *user)).arg(member(*user, *session)).ignore();
            }
            pipe.query_async::<()>(&mut conn).await.map_err(|e| broken(state, e))?;
            state.metrics.presence_heartbeats_total.inc_by(batch.len() as u64);
        }
    }
    Ok(())
}

/// Finds nodes whose liveness mark is older than the TTL, takes a short lock per dead node, drops
/// its sessions' leases and announces users who are now offline.
async fn sweep_dead_nodes(state: &AppState) -> Result<(), String> {
    let names = &state.redis.names;
    let prefix = names.prefix();
    let ttl_ms = state.settings.presence_ttl_s as i64 * 1000;
    let now = unix_ms();
    let mut conn = redis_conn(state).await?;
    let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(names.nodes_key())
        .arg("-inf")
        .arg(now - ttl_ms)
        .query_async(&mut conn)
        .await
        .map_err(|e| broken(state, e))?;
    for node in dead.into_iter().filter(|n| n != state.settings.node_id()) {
        let lock: Option<String> = redis::cmd("SET")
            .arg(format!("{prefix}sweep:{node}"))
            .arg(state.settings.node_id())
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| broken(state, e))?;
        if lock.is_none() {
            continue; // another node is on it
        }
        let keys = names.all_node_sessions_keys(&node);
        let mut members: Vec<String> = Vec::new();
        for key in &keys {
            let some: Vec<String> =
                redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await.map_err(|e| broken(state, e))?;
            members.extend(some);
        }
        let mut offline = Vec::new();
        for entry in &members {
            let Some((user, session)) = entry.split_once(':') else { continue };
            let Ok(user) = user.parse::<Uuid>() else { continue };
            let key = names.presence_key(user);
            let (_, live): (i64, i64) = redis::pipe()
                .cmd("ZREM")
                .arg(&key)
                .arg(session)
                .cmd("ZCOUNT")
                .arg(&key)
                .arg(now)
                .arg("+inf")
                .query_async(&mut conn)
                .await
                .map_err(|e| broken(state, e))?;
            if live == 0 {
                offline.push(user);
            }
        }
        // One key per command: in cluster mode they lie in different slots.
        for key in &keys {
            redis::cmd("DEL").arg(key).query_async::<()>(&mut conn).await.map_err(|e| broken(state, e))?;
        }
        redis::cmd("ZREM")
            .arg(names.nodes_key())
            .arg(&node)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| broken(state, e))?;
        tracing::info!(node, sessions = members.len(), offline = offline.len(), "cleaned up after a dead node");
        offline.sort();
        offline.dedup();
        for user in offline {
            announce(state, user, Change::Offline).await;
        }
    }
    Ok(())
}

/// The node's shared, multiplexed Redis connection: presence commands pipeline on it with the bus's
/// PUBLISHes, without a pool checkout each. (With the pool, a storm of 15,000 sockets closing at once
/// queued 7,480 lease removals past the pool's wait timeout.)
async fn redis_conn(state: &AppState) -> Result<crate::kv::Conn, String> {
    state.hub.bus().connection().await
}

/// A command failed: if the error broke the shared connection, the bus replaces it.
fn broken(state: &AppState, error: redis::RedisError) -> String {
    state.hub.bus().forget_connection_if_broken(&error);
    error.to_string()
}
