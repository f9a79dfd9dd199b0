//! `GET /api/v1/ws`: authenticate, upgrade, and hand the socket to its session task.

mod session;
pub(crate) mod wire;

use actix_http::body::{BodyStream, MessageBody};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::{bearer_token, query_token};
use crate::error::ApiError;
use crate::hub::WorkerId;
use crate::service::accounts;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/ws").route(web::get().to(upgrade)));
}

async fn upgrade(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    worker: web::Data<WorkerId>,
) -> Result<HttpResponse, ApiError> {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Unavailable("this node is draining".into()));
    }
    // Authenticate before upgrading, so a bad token is a plain 401 the client can read.
    let token = bearer_token(&req).or_else(|| query_token(&req)).ok_or(ApiError::Unauthenticated)?;
    let user = accounts::authenticate(&state, &token)?;
    let mut response = actix_http::ws::handshake(req.head()).map_err(|e| ApiError::field("upgrade", e.to_string()))?;
    let (queue, queued) = tokio::sync::mpsc::channel(state.settings.ws_queue);
    let (out, body) = wire::pair(queued);
    // A frame or fragmented message over the cap closes the socket (1009) on its header, before
    // its payload is read.
    let inbound = wire::Inbound::new(payload.into_inner(), state.settings.max_frame_bytes);
    let response =
        response.message_body(BodyStream::new(body).boxed()).map_err(|e| ApiError::field("upgrade", e.to_string()))?;
    // The session and the body share state through an `Rc`: both stay on this worker's thread.
    actix_web::rt::spawn(session::run(state.into_inner(), user, **worker, out, inbound, queue));
    Ok(response.into())
}
