//! `/healthz` (the process is alive) and `/readyz` (it should get traffic: stores reachable, not draining).

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .service(web::resource("/metrics").route(web::get().to(metrics)));
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub postgres: bool,
    pub redis: bool,
    pub draining: bool,
    pub node_id: String,
}

/// Liveness: answers while the process can serve HTTP at all.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Liveness)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "ok" })
}

/// Readiness: PostgreSQL and Redis reachable and the node not draining; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: a store is unreachable, or the node is draining", body = Readiness)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
    let draining = state.draining.load(Ordering::Relaxed);
    let postgres = async {
        let mut conn = state.db.get().await.ok()?;
        diesel_async::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), &mut conn).await.ok()
    };
    let redis = async { state.redis.ping().await.ok() };
    let (postgres, redis) =
        tokio::join!(tokio::time::timeout(PROBE_TIMEOUT, postgres), tokio::time::timeout(PROBE_TIMEOUT, redis));
    let postgres = matches!(postgres, Ok(Some(_)));
    let redis = matches!(redis, Ok(Some(_)));
    // The pub/sub connection matters as much as a PING: without it this node's sockets miss live events.
    let redis = redis && state.hub.bus().is_connected();
    let ready = postgres && redis && !draining;
    let body = Readiness { ready, postgres, redis, draining, node_id: state.settings.node_id().to_owned() };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text exposition of this node's metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let status = state.db.status();
    state.metrics.db_pool_connections.set(status.size as i64);
    state.metrics.db_pool_in_use_connections.set((status.size - status.available) as i64);
    state.metrics.db_pool_waiting_requests.set(status.waiting as i64);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}
