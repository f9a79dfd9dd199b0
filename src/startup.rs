//! Wiring: builds the shared state from settings, binds the listener (port 0 works, for tests), and
//! runs the HTTP server until it is told to stop.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::auth::password::PasswordHashing;
use crate::auth::tokens::TokenKeys;
use crate::config::Settings;
use crate::db::{self, DbPool};
use crate::{http, telemetry};

/// Everything a request handler may need; cheap to clone (pools and `Arc`s).
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DbPool,
    pub redis: deadpool_redis::Pool,
    pub tokens: TokenKeys,
    pub passwords: PasswordHashing,
    /// Set on SIGTERM: `/readyz` fails at once so the load balancer stops sending new clients.
    pub draining: std::sync::atomic::AtomicBool,
}

/// A start-up failure, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

impl AppState {
    pub fn build(settings: Settings) -> Result<Self, StartupError> {
        let db = db::build_pool(&settings.database_url, settings.db_pool_size, settings.db_pool_timeout())
            .map_err(|e| StartupError(format!("DATABASE_URL is not usable: {e}")))?;
        let mut redis_cfg = deadpool_redis::Config::from_url(settings.redis_url.clone());
        let mut pool_cfg = deadpool_redis::PoolConfig::new(settings.redis_pool_size);
        pool_cfg.timeouts.wait = Some(settings.db_pool_timeout());
        pool_cfg.timeouts.create = Some(settings.db_pool_timeout());
        pool_cfg.timeouts.recycle = Some(settings.db_pool_timeout());
        redis_cfg.pool = Some(pool_cfg);
        let redis = redis_cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| StartupError(format!("REDIS_URL is not usable: {e}")))?;
        let tokens = TokenKeys::from_settings(&settings).map_err(StartupError)?;
        let passwords = PasswordHashing::new(settings.argon2_memory_kib, settings.argon2_iterations).map_err(StartupError)?;
        Ok(Self { settings: Arc::new(settings), db, redis, tokens, passwords, draining: Default::default() })
    }
}

/// A node that has bound its port and is ready to run.
pub struct Application {
    port: u16,
    server: Server,
    pub state: web::Data<AppState>,
}

impl Application {
    /// Checks the stores, applies migrations, binds the listener. Every failure is one clear sentence.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        db::run_migrations(&settings.database_url).await.map_err(|e| {
            StartupError(format!(
                "cannot prepare the database at DATABASE_URL (is PostgreSQL running and the database created?): {e}"
            ))
        })?;
        let state = web::Data::new(AppState::build(settings)?);
        check_redis(&state).await?;
        let listener = TcpListener::bind(state.settings.bind)
            .map_err(|e| StartupError(format!("cannot listen on CHORUS_BIND={}: {e}", state.settings.bind)))?;
        let port = listener.local_addr().map_err(|e| StartupError(e.to_string()))?.port();
        let server = run(listener, state.clone())?;
        Ok(Self { port, server, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn check_redis(state: &AppState) -> Result<(), StartupError> {
    let fail = |e: String| StartupError(format!("cannot reach Redis at REDIS_URL (is it running?): {e}"));
    let mut conn = state.redis.get().await.map_err(|e| fail(e.to_string()))?;
    deadpool_redis::redis::cmd("PING").query_async::<String>(&mut *conn).await.map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn run(listener: TcpListener, state: web::Data<AppState>) -> Result<Server, StartupError> {
    let workers = state.settings.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let grace = state.settings.shutdown_grace_s;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(http::configure(state.settings.max_frame_bytes))
            .wrap(actix_web::middleware::from_fn(telemetry::request_span))
    })
    .workers(workers)
    .shutdown_timeout(grace)
    .client_request_timeout(Duration::from_secs(10))
    .listen(listener)
    .map_err(|e| StartupError(e.to_string()))?
    .run();
    Ok(server)
}
