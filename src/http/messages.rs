//! `/rooms/{id}/messages`, `/rooms/{id}/receipts`, `/unreceived`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use super::docs::{BadRequest, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable};
use super::extract::{Json, Query};
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{EditMessageRequest, History, Message, Receipt, ReceiptRequest, SendMessageRequest, Unreceived};
use crate::service::messages;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/rooms/{room_id}/messages")
            .route(web::get().to(history))
            .route(web::post().to(send))
            .route(web::delete().to(clear)),
    )
    .service(
        web::resource("/rooms/{room_id}/messages/{message_id}")
            .route(web::patch().to(edit))
            .route(web::delete().to(delete)),
    )
    .service(web::resource("/rooms/{room_id}/receipts").route(web::post().to(receipts)))
    .service(web::resource("/unreceived").route(web::get().to(unreceived)));
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Newest messages before this seq (default: the newest of all).
    #[param(required = false, value_type = i64, minimum = 0)]
    pub before_seq: Option<i64>,
    /// Oldest messages after this seq (pages forward; wins over `before_seq`).
    #[param(required = false, value_type = i64, minimum = 0)]
    pub after_seq: Option<i64>,
    /// Page size, 1–200 (default 50).
    #[param(required = false, value_type = i64, minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
}

/// A window of history, ascending by seq.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}/messages", tag = "messages",
    params(("room_id" = Uuid, Path), HistoryQuery), security(("bearer" = [])),
    responses((status = 200, description = "A window of history", body = History),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized), (status = 403, description = "`room.forbidden`: not a member", body = ErrorBody),
        (status = 404, description = "`room.not_found`: no such live room, or a private one the caller is not in", body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn history(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    query: Query<HistoryQuery>,
) -> ApiResult<web::Json<History>> {
    let q = query.into_inner();
    Ok(web::Json(messages::history(&state, caller.id, path.into_inner(), q.before_seq, q.after_seq, q.limit).await?))
}

/// Send a message: 201 when stored, 200 when `client_msg_id` matched an already stored one.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/messages", tag = "messages", params(("room_id" = Uuid, Path)),
    request_body = SendMessageRequest, security(("bearer" = [])),
    responses((status = 201, description = "Stored", body = Message),
        (status = 200, description = "Already stored under this `client_msg_id`", body = Message),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized), (status = 403, description = "`room.forbidden`: not a member", body = ErrorBody),
        (status = 404, description = "`room.not_found`: no such live room, or a private one the caller is not in", body = ErrorBody), (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
pub async fn send(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<SendMessageRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let sent =
        messages::send(&state, caller.id, path.into_inner(), &body.content, body.client_msg_id.as_deref()).await?;
    Ok(if sent.created { HttpResponse::Created() } else { HttpResponse::Ok() }.json(sent.message))
}

/// Edit your own message.
#[utoipa::path(patch, path = "/api/v1/rooms/{room_id}/messages/{message_id}", tag = "messages", params(("room_id" = Uuid, Path), ("message_id" = Uuid, Path)),
    request_body = EditMessageRequest, security(("bearer" = [])),
    responses((status = 200, description = "The edited message", body = Message),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not a member, or not the author", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `message.not_found`: unknown, \
            deleted or cleared", body = ErrorBody), (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn edit(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<EditMessageRequest>,
) -> ApiResult<web::Json<Message>> {
    let (room_id, message_id) = path.into_inner();
    Ok(web::Json(messages::edit(&state, caller.id, room_id, message_id, &body.content).await?))
}

/// Delete a message (author, owner or admin); a tombstone keeps its seq.
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/messages/{message_id}", tag = "messages", params(("room_id" = Uuid, Path), ("message_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, description = "The tombstone", body = Message),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not a member, or neither the author nor the owner or an \
            admin", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `message.not_found`: unknown, \
            deleted or cleared", body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<web::Json<Message>> {
    let (room_id, message_id) = path.into_inner();
    Ok(web::Json(messages::delete(&state, caller.id, room_id, message_id).await?))
}

/// Clear the room's history. Owner or admin.
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/messages", tag = "messages", params(("room_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Cleared"), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin", body = ErrorBody),
        (status = 404, description = "`room.not_found`: no such live room, or a private one the caller is not in", body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn clear(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    messages::clear(&state, caller.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Move my delivered/read cursors forward (never back).
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/receipts", tag = "messages", params(("room_id" = Uuid, Path)),
    request_body = ReceiptRequest, security(("bearer" = [])),
    responses((status = 200, description = "The caller's cursors after the move", body = Receipt),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized), (status = 403, description = "`room.forbidden`: not a member", body = ErrorBody),
        (status = 404, description = "`room.not_found`: no such live room, or a private one the caller is not in", body = ErrorBody), (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn receipts(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<ReceiptRequest>,
) -> ApiResult<web::Json<Receipt>> {
    let body = body.into_inner();
    Ok(web::Json(messages::receipts(&state, caller.id, path.into_inner(), body.delivered_seq, body.read_seq).await?))
}

/// Every message past my delivered cursor, grouped by room.
#[utoipa::path(get, path = "/api/v1/unreceived", tag = "messages", security(("bearer" = [])),
    responses((status = 200, description = "What is waiting, by room", body = Unreceived),
        (status = 401, response = Unauthorized), (status = 503, response = Unavailable)))]
pub async fn unreceived(state: web::Data<AppState>, caller: AuthUser) -> ApiResult<web::Json<Unreceived>> {
    Ok(web::Json(messages::unreceived(&state, caller.id).await?))
}
