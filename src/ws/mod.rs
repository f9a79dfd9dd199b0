//! `GET /api/v1/ws`: authenticate, upgrade, and hand the socket to its session task.

pub(crate) mod connection;
mod session;
pub(crate) mod wire;

use actix_http::body::{BodyStream, MessageBody};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::{bearer_token, offered_protocols, query_token, SUBPROTOCOL, SUBPROTOCOL_TOKEN_PREFIX};
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
    // Authenticate before upgrading, so a bad token is a plain 401 the client can read. Browsers
    // cannot set `Authorization` on an upgrade: they offer the token as a subprotocol (kept out of
    // URLs and so out of logs) or, as older clients do, in `?token=`.
    let offered = offered_protocols(&req);
    if offered.token.is_some() && !offered.chorus {
        return Err(ApiError::field(
            "Sec-WebSocket-Protocol",
            format!("offer {SUBPROTOCOL} beside {SUBPROTOCOL_TOKEN_PREFIX}<token>: the server selects {SUBPROTOCOL}"),
        ));
    }
    let token = bearer_token(&req).or(offered.token).or_else(|| query_token(&req)).ok_or(ApiError::Unauthenticated)?;
    let user = accounts::authenticate(&state, &token)?;
    let mut response = actix_http::ws::handshake(req.head()).map_err(|e| ApiError::field("upgrade", e.to_string()))?;
    if offered.chorus {
        response.insert_header((actix_web::http::header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL));
    }
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
