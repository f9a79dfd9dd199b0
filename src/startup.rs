//! Wiring: builds the shared state from settings, binds the listener (port 0 works, for tests), and
//! runs the HTTP server until it is told to stop.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use std::rc::Rc;

use actix_http::{HttpService, KeepAlive};
use actix_service::{map_config, IntoServiceFactory};
use actix_web::dev::{fn_factory, fn_service, AppConfig, Server, ServerHandle, ServiceFactory};
use actix_web::{web, App};

use crate::auth::password::PasswordHashing;
use crate::auth::tokens::TokenKeys;
use crate::bus::Bus;
use crate::config::Settings;
use crate::db;
use crate::fanout::Fanout;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::state::NodeTasks;
use crate::{http, telemetry, ws};

/// A start-up failure, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Starts the node's tasks (see [`NodeTasks`]) on the calling thread's runtime, once; later calls
/// do nothing.
fn start_node_tasks(state: &web::Data<AppState>) {
    let tasks = state.node_tasks.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(NodeTasks { subscriber, hub, group_commit }) = tasks {
        group_commit.spawn();
        tokio::spawn(subscriber.run());
        tokio::spawn(state.redis.clone().follow_primary());
        hub.spawn(&state.hub);
        tokio::spawn(crate::presence::maintain(state.clone()));
        tokio::spawn(crate::revocations::watch(state.revocations.clone(), state.db.clone(), state.hub.clone()));
    }
}

/// Builds the node's state from its settings: pools, keys, the bus, the hub. Nothing connects yet.
pub fn build_state(settings: Settings) -> Result<AppState, StartupError> {
    let db = db::build_pool(&settings.database_url, settings.db_pool_size, settings.db_pool_timeout())
        .map_err(|e| StartupError(format!("DATABASE_URL is not usable: {e}")))?;
    let db_replica = settings
        .database_replica_url
        .as_deref()
        .map(|url| db::build_pool(url, settings.db_pool_size, settings.db_pool_timeout()))
        .transpose()
        .map_err(|e| StartupError(format!("CHORUS_DATABASE_REPLICA_URL is not usable: {e}")))?;
    let redis = Arc::new(crate::kv::Redis::new(&settings).map_err(StartupError)?);
    let tokens = TokenKeys::from_settings(&settings).map_err(StartupError)?;
    let argon2_concurrency =
        settings.argon2_concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let passwords = PasswordHashing::new(settings.argon2_memory_kib, settings.argon2_iterations, argon2_concurrency)
        .map_err(StartupError)?;
    let metrics = Arc::new(Metrics::new().map_err(|e| StartupError(e.to_string()))?);
    let (bus, subscriber, bus_events) = Bus::new(redis.clone(), metrics.clone());
    let (hub, hub_tasks) = Hub::new(
        bus.clone(),
        bus_events,
        db.clone(),
        metrics.clone(),
        settings.ws_queue,
        Duration::from_millis(settings.degraded_poll_ms),
    );
    let limits = crate::limits::Limits::new(&settings, bus.clone(), metrics.clone());
    let revocations = Arc::new(crate::revocations::Revocations::new(settings.access_token_ttl_s));
    let fanout = Fanout::new(bus, hub.clone());
    let (group_commit, group_commit_tasks) = db::group_commit::GroupCommit::new(
        db.clone(),
        metrics.clone(),
        settings.send_writers(),
        settings.send_batch_max,
    );
    let settings_rate = settings.auth_rate_per_min;
    Ok(AppState {
        settings: Arc::new(settings),
        db,
        db_replica,
        redis,
        tokens,
        passwords,
        metrics,
        hub,
        fanout,
        group_commit,
        auth_limiter: crate::ratelimit::RateLimiter::per_minute(settings_rate),
        limits,
        revocations,
        draining: Default::default(),
        drain_started: Default::default(),
        node_tasks: std::sync::Mutex::new(Some(NodeTasks {
            subscriber,
            hub: hub_tasks,
            group_commit: group_commit_tasks,
        })),
    })
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
        let state = web::Data::new(build_state(settings)?);
        check_redis(&state).await?;
        // Revoked tokens are refused from the first request on, not from the first poll.
        state
            .revocations
            .load(&state.db, &state.hub)
            .await
            .map_err(|e| StartupError(format!("cannot read token revocations from PostgreSQL: {e}")))?;
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

    /// Drains the node: `/readyz` fails at once, every socket is closed with 1012 (clients reconnect
    /// to another node), then the server stops, all within the grace period.
    pub async fn drain(state: &AppState, handle: &ServerHandle) {
        state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        state.drain_started.notify_waiters();
        // Half the grace period for sockets to close, the rest for in-flight HTTP requests.
        let grace = Duration::from_secs(state.settings.shutdown_grace_s);
        let deadline = tokio::time::Instant::now() + grace / 2;
        loop {
            // Repeated: a socket whose upgrade raced the drain flag is closed on the next round.
            state.hub.close_all(crate::protocol::ws::close_code::SERVICE_RESTART);
            // Socket.IO sessions are gone from the hub before their transport has taken the last
            // packets (`closing`, then the close): wait for their engines to end too, or a
            // long-polling client's next request finds the node gone and reads a transport error.
            let engines = state.metrics.socketio_engines.get();
            if (state.hub.session_count() == 0 && engines == 0) || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        handle.stop(true).await;
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

async fn check_redis(state: &AppState) -> Result<(), StartupError> {
    let fail = |e: String| StartupError(format!("cannot reach Redis at REDIS_URL (is it running?): {e}"));
    // A connection of its own (taken out of the pool in single mode), not returned to it: its I/O
    // runs on the start-up runtime, and the node's traffic belongs on the workers' threads (see
    // `NodeTasks`).
    let mut conn = state.redis.connection().await.map_err(fail)?;
    deadpool_redis::redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(|e| fail(e.to_string()))?;
    if let Some(partitions) = state.redis.names.partitions() {
        // Nodes that spread names over different partitions stop hearing each other without an
        // error: the first node records its count, and a node with another one does not start.
        let key = format!("{}meta:partitions", state.redis.names.prefix());
        let _: Option<String> = deadpool_redis::redis::cmd("SET")
            .arg(&key)
            .arg(partitions)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let recorded: Option<u16> = deadpool_redis::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(recorded) = recorded.filter(|recorded| *recorded != partitions) {
            return Err(StartupError(format!(
                "CHORUS_REDIS_PARTITIONS is {partitions}, but the nodes of this deployment use {recorded}: set the \
                 same on every node (to change it, stop every node, then delete the Redis key {key})"
            )));
        }
    }
    Ok(())
}

fn run(listener: TcpListener, state: web::Data<AppState>) -> Result<Server, StartupError> {
    let workers = state.settings.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let grace = state.settings.shutdown_grace_s;
    let engines = web::Data::new(crate::sio::Engines::new(state.settings.node_id(), state.metrics.clone()));
    let addr = listener.local_addr().map_err(|e| StartupError(e.to_string()))?;
    // actix-web's `HttpServer`, put together here by hand for one reason: it has no place for an
    // upgrade service, which keeps WebSockets off the HTTP dispatcher's buffers (`ws::connection`).
    // Its settings are HttpServer's, but for the request timeout.
    let builder = Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    let server = builder
        .workers(workers)
        // SIGTERM/SIGINT are handled by `main`, which drains sockets before stopping the server.
        .disable_signals()
        // Graceful stop gets the half of the grace period the socket drain leaves.
        .shutdown_timeout(grace.div_ceil(2))
        .listen("chorus-http", listener, move || {
            // Called once on each worker thread: the worker's own delivery task for its sockets,
            // and on the first one, the node's tasks. (A worker is restarted only if its thread
            // dies, which a panic in a handler or a socket's task does not do: tokio contains it
            // in the task.)
            start_node_tasks(&state);
            let worker = state.hub.add_worker();
            let app = {
                let (state, engines) = (state.clone(), engines.clone());
                move || {
                    App::new()
                        .app_data(state.clone())
                        .app_data(web::Data::new(worker))
                        .app_data(engines.clone())
                        .configure(http::configure(state.settings.max_frame_bytes))
                        .wrap(actix_web::middleware::from_fn(telemetry::request_span))
                }
            };
            let shutdown = shutdown.clone();
            // Upgrade requests get an `App` of their own (the same routes and data), which
            // `ws::connection` calls before taking the connection over.
            // A session ends a client that stops reading once its queue overflows (4008) or after
            // 2.5 heartbeats without a word from it (4000); the connection then waits up to 4
            // heartbeats without progress for the close frame's write before it resets, long
            // enough for a client that reads again after a pause to get the close frame.
            let write_stall = Duration::from_secs(state.settings.ws_heartbeat_s.saturating_mul(4));
            let upgrades = {
                let app = app.clone();
                fn_factory(move || {
                    let app = app().into_factory();
                    async move {
                        let app = Rc::new(app.new_service(AppConfig::default()).await?);
                        Ok::<_, ()>(fn_service(move |(req, framed)| {
                            ws::connection::serve(app.clone(), req, framed, write_stall)
                        }))
                    }
                })
            };
            HttpService::build()
                .keep_alive(KeepAlive::default())
                .client_request_timeout(Duration::from_secs(10))
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(addr)
                // Nagle's algorithm off: a socket's frames (a reply, then the message it
                // acknowledges) go out as written, instead of the second waiting up to 40 ms for
                // the client's delayed ACK.
                .tcp_nodelay(true)
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.notified().await }
                })
                .upgrade(upgrades)
                .finish(map_config(app(), |_| AppConfig::default()))
                .tcp()
        })
        .map_err(|e| StartupError(e.to_string()))?
        .run();
    Ok(server)
}
