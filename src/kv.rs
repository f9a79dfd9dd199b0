//! Where this node's Redis is (`CHORUS_REDIS_MODE`).
//!
//! - `single`: the one server `REDIS_URL` names, through a `deadpool-redis` pool, as always.
//! - `sentinel`: `REDIS_URL` lists Sentinels, and Redis is the primary they name for
//!   `CHORUS_REDIS_SENTINEL_MASTER`, found with redis-rs's `SentinelClient` (which checks `ROLE`).
//!   A connection never follows a failover by itself, and errors alone would not say one happened:
//!   after `SENTINEL FAILOVER` the old primary goes on accepting writes and PUBLISHes for ~10 s,
//!   which then reach no one. So the node asks the Sentinels where the primary is every second,
//!   and when it moved, [`Redis::changes`] says so: the bus drops its shared connection and its
//!   subscriber reconnects, and the reconnect makes the hub catch up from PostgreSQL, as after any
//!   loss of the bus.
//!
//! The pool (single mode) is kept for what it was used for (readiness probes, the first shared
//! connection); in sentinel mode connections are made to the current primary directly, since a
//! pooled connection to a demoted primary still answers PING.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_redis::redis;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::sync::watch;

use crate::config::{RedisMode, Settings};

/// How often the Sentinels are asked where the primary is.
const SENTINEL_POLL: Duration = Duration::from_secs(1);

pub struct Redis {
    target: Target,
    timeouts: redis::AsyncConnectionConfig,
    /// Counts the primary's moves: a connection made before the last one is stale.
    changes: watch::Sender<u64>,
}

enum Target {
    Single { client: redis::Client, pool: deadpool_redis::Pool },
    Sentinel(Box<Sentinels>),
}

struct Sentinels {
    /// The primary's name as the Sentinels monitor it.
    master: String,
    /// Resolves the primary: asks the Sentinels, then checks `ROLE` on the address they give.
    resolver: tokio::sync::Mutex<SentinelClient>,
    /// Each Sentinel, asked in turn where the primary is.
    sentinels: Vec<redis::Client>,
    primary: RwLock<Option<redis::Client>>,
}

fn tcp(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    // Nagle's algorithm off: PUBLISHes pipeline on one connection, and a small write held back
    // until the previous one is acknowledged is latency for nothing.
    info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
}

fn address(client: &redis::Client) -> Option<(String, u16)> {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

impl Redis {
    /// Builds the clients (and, in single mode, the pool) from the settings; connects to nothing.
    pub fn new(settings: &Settings) -> Result<Redis, String> {
        let unusable = |e: &dyn std::fmt::Display| format!("REDIS_URL is not usable: {e}");
        // redis-rs gives up on a reply after 500 ms by default. A node that is busy (a storm of
        // sockets closing at once) polls late, not Redis answering late; wait as long as for a pool.
        let timeouts = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(settings.db_pool_timeout()))
            .set_connection_timeout(Some(settings.db_pool_timeout()));
        let target = match settings.redis_mode {
            RedisMode::Single => {
                let info = tcp(settings.redis_url.as_str().into_connection_info().map_err(|e| unusable(&e))?);
                let client = redis::Client::open(info.clone()).map_err(|e| unusable(&e))?;
                let manager =
                    deadpool_redis::Manager::new_with_config(info, timeouts.clone()).map_err(|e| unusable(&e))?;
                let pool = deadpool_redis::Pool::builder(manager)
                    .max_size(settings.redis_pool_size)
                    .wait_timeout(Some(settings.db_pool_timeout()))
                    .create_timeout(Some(settings.db_pool_timeout()))
                    .recycle_timeout(Some(settings.db_pool_timeout()))
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()
                    .map_err(|e| unusable(&e))?;
                Target::Single { client, pool }
            }
            RedisMode::Sentinel => {
                let master = settings.redis_sentinel_master.clone().unwrap_or_default();
                let urls: Vec<redis::ConnectionInfo> = settings
                    .redis_urls()
                    .map(|url| url.into_connection_info().map(tcp))
                    .collect::<Result<_, _>>()
                    .map_err(|e| unusable(&e))?;
                let first = urls.first().ok_or_else(|| unusable(&"no Sentinel URL"))?;
                // The URLs' credentials (and database) are the primary's too.
                let node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(first.redis_settings().clone())
                    .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
                let resolver =
                    SentinelClient::build(urls.clone(), master.clone(), Some(node), SentinelServerType::Master)
                        .map_err(|e| unusable(&e))?;
                let sentinels =
                    urls.into_iter().map(redis::Client::open).collect::<Result<_, _>>().map_err(|e| unusable(&e))?;
                Target::Sentinel(Box::new(Sentinels {
                    master,
                    resolver: tokio::sync::Mutex::new(resolver),
                    sentinels,
                    primary: RwLock::default(),
                }))
            }
        };
        Ok(Redis { target, timeouts, changes: watch::Sender::new(0) })
    }

    /// How many times the primary has moved since the node started.
    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Tells when the primary moves (never, in single mode).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The primary's client: the one found last, or found now.
    async fn primary(sentinels: &Sentinels) -> Result<redis::Client, String> {
        if let Some(client) = sentinels.primary.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(client);
        }
        let client =
            sentinels.resolver.lock().await.async_get_client().await.map_err(|e| {
                format!("no Sentinel in REDIS_URL names a reachable primary `{}`: {e}", sentinels.master)
            })?;
        *sentinels.primary.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// A connection of its own (taken out of the pool in single mode): the bus shares one per node.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        match &self.target {
            Target::Single { pool, .. } => {
                // Boxed: a pool checkout holds a whole connection set-up, and only this rare path
                // needs it.
                let pooled = Box::pin(pool.get()).await.map_err(|e| e.to_string())?;
                Ok(deadpool_redis::Connection::take(pooled))
            }
            Target::Sentinel(sentinels) => {
                let client = Redis::primary(sentinels).await?;
                let connecting = client.get_multiplexed_async_connection_with_config(&self.timeouts);
                Box::pin(connecting).await.map_err(|e| e.to_string())
            }
        }
    }

    /// A pub/sub connection to the server (or primary) that PUBLISHes reach.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let client = match &self.target {
            Target::Single { client, .. } => client.clone(),
            Target::Sentinel(sentinels) => Redis::primary(sentinels).await?,
        };
        client.get_async_pubsub().await.map_err(|e| e.to_string())
    }

    /// PING, for readiness: on a pooled connection in single mode, on the current primary otherwise.
    pub async fn ping(&self) -> Result<(), String> {
        match &self.target {
            Target::Single { pool, .. } => {
                let mut conn = pool.get().await.map_err(|e| e.to_string())?;
                redis::cmd("PING").query_async::<String>(&mut *conn).await.map_err(|e| e.to_string())?;
            }
            Target::Sentinel(_) => {
                let mut conn = self.connection().await?;
                redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// The node's task that follows the primary (sentinel mode; returns at once otherwise).
    pub async fn follow_primary(self: Arc<Self>) {
        let Target::Sentinel(sentinels) = &self.target else { return };
        let mut asking: Option<(usize, redis::aio::MultiplexedConnection)> = None;
        let mut tick = tokio::time::interval(SENTINEL_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(named) = self.where_sentinels_say(sentinels, &mut asking).await else { continue };
            let current = sentinels.primary.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(address);
            if current.as_ref() == Some(&named) {
                continue;
            }
            // The Sentinels name another primary: resolve it (which checks its ROLE; during a
            // failover this fails until the promotion is done, and the next tick tries again).
            let resolved = sentinels.resolver.lock().await.async_get_client().await;
            match resolved {
                Ok(client) if address(&client) == Some(named.clone()) => {
                    tracing::warn!(from = ?current, to = ?named, "the Redis primary moved: reconnecting");
                    *sentinels.primary.write().unwrap_or_else(|e| e.into_inner()) = Some(client);
                    self.changes.send_modify(|generation| *generation += 1);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "the new Redis primary is not ready yet"),
            }
        }
    }

    /// Where the Sentinels say the primary is: the first Sentinel that answers, starting with the
    /// one that answered last.
    async fn where_sentinels_say(
        &self,
        sentinels: &Sentinels,
        asking: &mut Option<(usize, redis::aio::MultiplexedConnection)>,
    ) -> Option<(String, u16)> {
        let count = sentinels.sentinels.len();
        let start = asking.as_ref().map_or(0, |(index, _)| *index);
        for attempt in 0..count {
            let index = (start + attempt) % count;
            if asking.as_ref().is_none_or(|(i, _)| *i != index) {
                let client = &sentinels.sentinels[index];
                let connecting = client.get_multiplexed_async_connection_with_config(&self.timeouts);
                let Ok(Ok(conn)) = tokio::time::timeout(SENTINEL_POLL, connecting).await else { continue };
                *asking = Some((index, conn));
            }
            let Some((_, conn)) = asking.as_mut() else { continue };
            let answer: Result<Option<(String, u16)>, _> =
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&sentinels.master).query_async(conn).await;
            match answer {
                Ok(named) => return named,
                Err(_) => *asking = None,
            }
        }
        None
    }
}
