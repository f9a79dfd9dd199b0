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
    pub names: Names,
    timeouts: redis::AsyncConnectionConfig,
    /// How long a connection or a reply may take.
    timeout: Duration,
    /// Cluster mode: the readiness probe's connection, kept while it works.
    probe: tokio::sync::Mutex<Option<redis::cluster_async::ClusterConnection>>,
    /// Counts the primary's moves: a connection made before the last one is stale.
    changes: watch::Sender<u64>,
}

enum Target {
    Single {
        client: redis::Client,
        pool: deadpool_redis::Pool,
    },
    Sentinel(Box<Sentinels>),
    /// Redis Cluster: commands on a cluster connection; the bus's subscriber makes its own (see
    /// `bus::sharded`).
    Cluster {
        seeds: Vec<redis::ConnectionInfo>,
    },
}

/// A command connection: to one server (single, sentinel), or to a whole cluster, which routes each
/// command (and each script, by its first key) to the slot's primary.
#[derive(Clone)]
pub enum Conn {
    Plain(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Plain(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Plain(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Plain(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// Key and channel names. In cluster mode every name carries a hash tag `{p:<n>}`, its partition:
/// a room's channel by the room, a user's channel and presence keys by the user. Keys one script
/// touches share the tag (one slot), and so do the channels one `SSUBSCRIBE` names. In the other
/// modes names are as they always were.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: Arc<str>,
    partitions: Option<u16>,
}

impl Names {
    pub fn new(settings: &Settings) -> Names {
        let partitions = (settings.redis_mode == RedisMode::Cluster).then_some(settings.redis_partitions);
        Names { prefix: settings.redis_prefix.as_str().into(), partitions }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The partitions, in cluster mode.
    pub fn partitions(&self) -> Option<u16> {
        self.partitions
    }

    /// `id`'s partition (UUIDv4 and v7 both end in random bits).
    pub fn partition_of(&self, id: uuid::Uuid) -> Option<u16> {
        self.partitions.map(|n| (id.as_u128() % u128::from(n)) as u16)
    }

    /// The prefix and, in cluster mode, `id`'s hash tag.
    fn tagged(&self, id: uuid::Uuid) -> String {
        match self.partition_of(id) {
            Some(p) => format!("{}{{p:{p}}}", self.prefix),
            None => self.prefix.to_string(),
        }
    }

    pub fn room_channel(&self, room: uuid::Uuid) -> String {
        format!("{}room:{room}", self.tagged(room))
    }

    pub fn user_channel(&self, user: uuid::Uuid) -> String {
        format!("{}user:{user}", self.tagged(user))
    }

    pub fn presence_channel(&self) -> String {
        match self.partitions {
            Some(_) => format!("{}{{presence}}presence", self.prefix),
            None => format!("{}presence", self.prefix),
        }
    }

    /// The partition of a channel this module named (none outside cluster mode).
    pub fn partition_of_channel(&self, channel: &str) -> Option<u16> {
        let rest = channel.strip_prefix(&*self.prefix)?.strip_prefix("{p:")?;
        rest.split('}').next()?.parse().ok()
    }

    pub fn presence_key(&self, user: uuid::Uuid) -> String {
        format!("{}presence:{user}", self.tagged(user))
    }

    /// Where a node records its sessions: one set per node, or in cluster mode one per node and
    /// user partition, in the user's presence key's slot (the open and close scripts touch both).
    pub fn node_sessions_key(&self, node: &str, user: uuid::Uuid) -> String {
        format!("{}node:{node}:sessions", self.tagged(user))
    }

    /// Every node-sessions key of `node` (one, or one per partition).
    pub fn all_node_sessions_keys(&self, node: &str) -> Vec<String> {
        match self.partitions {
            Some(n) => (0..n).map(|p| format!("{}{{p:{p}}}node:{node}:sessions", self.prefix)).collect(),
            None => vec![format!("{}node:{node}:sessions", self.prefix)],
        }
    }

    pub fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }
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
            RedisMode::Cluster => {
                let seeds = settings
                    .redis_urls()
                    .map(|url| url.into_connection_info().map(tcp))
                    .collect::<Result<_, _>>()
                    .map_err(|e| unusable(&e))?;
                Target::Cluster { seeds }
            }
        };
        Ok(Redis {
            target,
            timeouts,
            timeout: settings.db_pool_timeout(),
            probe: tokio::sync::Mutex::default(),
            changes: watch::Sender::new(0),
            names: Names::new(settings),
        })
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
    pub async fn connection(&self) -> Result<Conn, String> {
        match &self.target {
            Target::Single { pool, .. } => {
                // Boxed: a pool checkout holds a whole connection set-up, and only this rare path
                // needs it.
                let pooled = Box::pin(pool.get()).await.map_err(|e| e.to_string())?;
                Ok(Conn::Plain(deadpool_redis::Connection::take(pooled)))
            }
            Target::Sentinel(sentinels) => {
                let client = Redis::primary(sentinels).await?;
                let connecting = client.get_multiplexed_async_connection_with_config(&self.timeouts);
                Ok(Conn::Plain(Box::pin(connecting).await.map_err(|e| e.to_string())?))
            }
            Target::Cluster { seeds } => {
                let client = self.cluster_client(seeds, None).map_err(|e| e.to_string())?;
                Ok(Conn::Cluster(Box::pin(client.get_async_connection()).await.map_err(|e| e.to_string())?))
            }
        }
    }

    fn cluster_client(
        &self,
        seeds: &[redis::ConnectionInfo],
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let timeout = self.timeout;
        let builder = redis::cluster::ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        match pushes {
            // Sharded pub/sub arrives as RESP3 pushes.
            Some(pushes) => builder.use_protocol(redis::ProtocolVersion::RESP3).push_sender(pushes).build(),
            None => builder.build(),
        }
    }

    /// In cluster mode, a connection of its own for sharded subscriptions, whose pushes (messages,
    /// and the server's `sunsubscribe`s and disconnections) arrive on `pushes`.
    pub async fn cluster_subscriber(
        &self,
        pushes: tokio::sync::mpsc::UnboundedSender<redis::PushInfo>,
    ) -> Result<redis::cluster_async::ClusterConnection, String> {
        let Target::Cluster { seeds } = &self.target else { return Err("not in cluster mode".into()) };
        let client = self.cluster_client(seeds, Some(pushes)).map_err(|e| e.to_string())?;
        Box::pin(client.get_async_connection()).await.map_err(|e| e.to_string())
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    /// A pub/sub connection to the server (or primary) that PUBLISHes reach.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, String> {
        let client = match &self.target {
            Target::Single { client, .. } => client.clone(),
            Target::Sentinel(sentinels) => Redis::primary(sentinels).await?,
            Target::Cluster { .. } => return Err("cluster mode subscribes with sharded pub/sub".into()),
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
            Target::Cluster { .. } => {
                // Kept between probes: a cluster connection connects to every node of the cluster.
                let mut slot = self.probe.lock().await;
                let mut conn = match slot.take() {
                    Some(conn) => conn,
                    None => match self.connection().await? {
                        Conn::Cluster(conn) => conn,
                        Conn::Plain(_) => return Err("not a cluster".into()),
                    },
                };
                // One primary, not all: a plain PING fans out to every primary and would fail
                // readiness on every node during any one shard's failover.
                let route = redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::RandomPrimary,
                );
                conn.route_command(redis::cmd("PING"), route).await.map_err(|e| e.to_string())?;
                *slot = Some(conn);
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
