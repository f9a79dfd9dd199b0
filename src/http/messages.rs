//! `/rooms/{id}/messages`, `/rooms/{id}/receipts`, `/unreceived`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{Json, Query};
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{EditMessageRequest, History, Message, Receipt, ReceiptRequest, SendMessageRequest, Unreceived};
use crate::service::messages;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/rooms/{room_id}/messages", web::get().to(history))
        .route("/rooms/{room_id}/messages", web::post().to(send))
        .route("/rooms/{room_id}/messages", web::delete().to(clear))
        .route("/rooms/{room_id}/messages/{message_id}", web::patch().to(edit))
        .route("/rooms/{room_id}/messages/{message_id}", web::delete().to(delete))
        .route("/rooms/{room_id}/receipts", web::post().to(receipts))
        .route("/unreceived", web::get().to(unreceived));
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryQuery {
    /// Newest messages before this seq (default: the newest of all).
    pub before_seq: Option<i64>,
    /// Oldest messages after this seq (pages forward).
    pub after_seq: Option<i64>,
    /// 1–200, default 50.
    pub limit: Option<i64>,
}

/// A window of history, ascending by seq.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}/messages", tag = "messages", params(HistoryQuery),
    security(("bearer" = [])),
    responses((status = 200, body = History), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/messages", tag = "messages", request_body = SendMessageRequest,
    security(("bearer" = [])),
    responses((status = 201, body = Message), (status = 200, body = Message), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
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
#[utoipa::path(patch, path = "/api/v1/rooms/{room_id}/messages/{message_id}", tag = "messages",
    request_body = EditMessageRequest, security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/messages/{message_id}", tag = "messages",
    security(("bearer" = [])),
    responses((status = 200, body = Message), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<web::Json<Message>> {
    let (room_id, message_id) = path.into_inner();
    Ok(web::Json(messages::delete(&state, caller.id, room_id, message_id).await?))
}

/// Clear the room's history. Owner or admin.
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/messages", tag = "messages", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn clear(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    messages::clear(&state, caller.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Move my delivered/read cursors forward (never back).
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/receipts", tag = "messages", request_body = ReceiptRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Receipt), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
    responses((status = 200, body = Unreceived), (status = 401, body = ErrorBody)))]
pub async fn unreceived(state: web::Data<AppState>, caller: AuthUser) -> ApiResult<web::Json<Unreceived>> {
    Ok(web::Json(messages::unreceived(&state, caller.id).await?))
}
