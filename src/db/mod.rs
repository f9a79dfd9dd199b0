//! PostgreSQL access: the pool, migrations, and one query module per aggregate. Query functions take a
//! `&mut DbConn` so they compose inside a transaction.

pub mod bans;
pub mod group_commit;
pub mod messages;
pub mod models;
pub mod rooms;
pub mod schema;
pub mod tokens;
pub mod users;

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub type DbConn = AsyncPgConnection;
pub type DbPool = Pool<DbConn>;
pub type PoolError = diesel_async::pooled_connection::deadpool::PoolError;
pub type PooledConn = diesel_async::pooled_connection::deadpool::Object<DbConn>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Makes `$query` (a struct that implements `QueryFragment<Pg>` with fixed SQL text and bound values)
/// a statement that diesel-async prepares once per connection and then only binds and executes. A
/// `sql_query` is never cached: PostgreSQL parses and plans it on every call, which on the send path
/// was its largest share of a message's cost (docs/BENCHMARKS.md, round 3). `$key` is the cache key
/// type, one per statement. Rows load through `QueryableByName`, as with `sql_query`.
macro_rules! prepared_statement {
    ($query:ty, $key:ident) => {
        /// Cache key of one prepared statement (see `db::prepared_statement!`).
        struct $key;

        impl diesel::query_builder::QueryId for $query {
            type QueryId = $key;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl diesel::query_builder::Query for $query {
            type SqlType = diesel::sql_types::Untyped;
        }
    };
}
pub(crate) use prepared_statement;

/// Arbitrary but fixed: every node takes this advisory lock before migrating, so many nodes may start at once.
const MIGRATION_LOCK_KEY: i64 = 0x4348_4f52_5553; // "CHORUS"

pub fn build_pool(url: &str, max_size: usize, wait: Duration) -> Result<DbPool, String> {
    // `Fast`: a checkout only checks that the connection is open and not inside a transaction. The
    // default (`Verified`) runs `SELECT 1` on every checkout, a round trip that doubled PostgreSQL's
    // transactions per message. A connection PostgreSQL closed is still seen (its driver task ends
    // and the pool drops it); one that dies silently fails its next query, which is answered 503.
    let mut config = ManagerConfig::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<DbConn>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(max_size)
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}

/// Applies pending migrations under a PostgreSQL advisory lock; returns the versions it applied.
pub async fn run_migrations(url: &str) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let url = url.to_owned();
    // diesel's migration runner is synchronous: run it on the blocking pool through the async
    // connection wrapper (which drives its own small runtime), so it works under any runtime flavour.
    tokio::task::spawn_blocking(move || {
        use diesel::{Connection, RunQueryDsl as _};
        let mut conn = AsyncConnectionWrapper::<DbConn>::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")).execute(&mut conn)?;
        let applied = conn.run_pending_migrations(MIGRATIONS).map(|v| v.iter().map(|m| m.to_string()).collect());
        // The lock is session-scoped: it also goes when the connection drops, even if unlocking fails.
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")).execute(&mut conn)?;
        applied
    })
    .await?
}

/// True when `e` is a unique-constraint violation on the named constraint or index.
pub fn is_unique_violation(e: &DieselError, constraint: &str) -> bool {
    matches!(e, DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
        if info.constraint_name() == Some(constraint))
}

/// No pooled connection in time (or PostgreSQL refused one): the client may retry.
impl From<PoolError> for crate::error::ApiError {
    fn from(e: PoolError) -> Self {
        crate::error::ApiError::Unavailable(Box::new(e))
    }
}
