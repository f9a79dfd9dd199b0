//! The node's shared state: everything a handler, a command or a background task may need, built
//! once per node by `startup` and shared by every worker. It lives in a module of its own, which
//! imports the parts it holds and none of the code that uses it (handlers, commands, services), so
//! the import graph points one way.

use std::sync::Arc;

use crate::auth::password::PasswordHashing;
use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::db::{self, DbPool};
use crate::fanout::Fanout;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Everything a request handler may need, built once per node and shared by every worker.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DbPool,
    /// A read replica for history going back (`CHORUS_DATABASE_REPLICA_URL`), if there is one.
    pub db_replica: Option<DbPool>,
    /// Where Redis is (one server, or the primary Sentinel names).
    pub redis: Arc<crate::kv::Redis>,
    pub tokens: TokenKeys,
    pub passwords: PasswordHashing,
    pub metrics: Arc<Metrics>,
    /// This node's sockets and room subscriptions.
    pub hub: Arc<Hub>,
    /// Publishes events to every node.
    pub fanout: Fanout,
    /// Writes sends to PostgreSQL in batches (group commit).
    pub group_commit: crate::db::group_commit::GroupCommit,
    /// Brute-force brake on login, register and refresh.
    pub auth_limiter: crate::ratelimit::RateLimiter,
    /// Per-user cost limits, shared by every node through Redis.
    pub limits: crate::limits::Limits,
    /// Token generations revoked by "log out everywhere", polled from PostgreSQL.
    pub revocations: Arc<crate::revocations::Revocations>,
    /// Set on SIGTERM: `/readyz` fails at once so the load balancer stops sending new clients.
    pub draining: std::sync::atomic::AtomicBool,
    /// Notified once when the drain starts, for tasks that wait on nothing else (an Engine.IO
    /// session without a Socket.IO session).
    pub drain_started: tokio::sync::Notify,
    /// The node's background tasks until the first HTTP worker starts them (see [`NodeTasks`]).
    pub(crate) node_tasks: std::sync::Mutex<Option<NodeTasks>>,
}

/// The node's long-lived tasks: the pub/sub reader, the hub's room shards and poller, presence
/// upkeep. They run on the first HTTP worker's thread, not on a runtime of their own: a message's
/// whole path (the sender's frame, the INSERT, the PUBLISH, the pub/sub read, the writes to the
/// recipients' sockets) then stays on one thread when a node has one worker, and every hand-off is
/// a task switch instead of a thread wake-up (a system call and a context switch each; ~6 per
/// message per node were measured before this). The connections those tasks open (PostgreSQL,
/// Redis) drive their I/O on that thread too.
pub(crate) struct NodeTasks {
    pub(crate) subscriber: crate::bus::Subscriber,
    pub(crate) hub: crate::hub::HubTasks,
    pub(crate) group_commit: crate::db::group_commit::GroupCommitTasks,
}

impl AppState {
    /// A pooled PostgreSQL connection; the wait is measured (pool pressure shows up in metrics
    /// before it shows up as 503s).
    pub async fn db_conn(&self) -> Result<db::PooledConn, crate::error::ApiError> {
        let started = std::time::Instant::now();
        // Boxed: the checkout future holds a whole connection set-up (several KiB) in case the pool
        // has to open one, and inline it would make every request and command future that large.
        let conn = Box::pin(self.db.get()).await;
        self.metrics.db_pool_wait_seconds.observe(started.elapsed().as_secs_f64());
        Ok(conn?)
    }

    /// Runs `query`, recording its duration under `name` (a handful of fixed names, never ids).
    pub async fn timed<T>(&self, name: &str, query: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let result = query.await;
        self.metrics.db_query_duration_seconds.with_label_values(&[name]).observe(started.elapsed().as_secs_f64());
        result
    }
}
