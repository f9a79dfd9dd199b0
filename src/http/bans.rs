//! `/rooms/{room_id}/bans`: keeping someone out of a room (owner and admins).

use actix_web::{web, HttpResponse};
use uuid::Uuid;

use super::docs::{BadRequest, PayloadTooLarge, Unauthorized, Unavailable};
use super::extract::{Json, Query};
use super::PageQuery;
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{Ban, BanRequest, Page};
use crate::service::rooms;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/rooms/{room_id}/bans").route(web::post().to(ban)).route(web::get().to(list)))
        .service(web::resource("/rooms/{room_id}/bans/{user_id}").route(web::delete().to(unban)));
}

/// Ban a user: a member is removed at once (their sockets on every node stop receiving the room),
/// and the user cannot join or be added until unbanned. Admins may ban members and outsiders; the
/// owner may also ban admins.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/bans", tag = "rooms", request_body = BanRequest,
    params(("room_id" = Uuid, Path, description = "The room")), security(("bearer" = [])),
    responses((status = 201, description = "The ban", body = Ban), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin, the user's role is not below the \
            caller's, or a direct room", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `user.not_found`",
            body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn ban(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<BanRequest>,
) -> ApiResult<HttpResponse> {
    let ban = rooms::ban(&state, caller.id, path.into_inner(), body.into_inner()).await?;
    Ok(HttpResponse::Created().json(ban))
}

/// The room's bans, by user id.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}/bans", tag = "rooms",
    params(("room_id" = Uuid, Path, description = "The room"), PageQuery), security(("bearer" = [])),
    responses((status = 200, description = "A page of bans", body = Page<Ban>), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin", body = ErrorBody),
        (status = 404, description = "`room.not_found`: no such live room, or a private one the caller is not in",
            body = ErrorBody),
        (status = 503, response = Unavailable)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    query: Query<PageQuery>,
) -> ApiResult<web::Json<Page<Ban>>> {
    let q = query.into_inner();
    Ok(web::Json(rooms::list_bans(&state, caller.id, path.into_inner(), q.cursor.as_deref(), q.limit).await?))
}

/// Lift a ban.
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/bans/{user_id}", tag = "rooms",
    params(("room_id" = Uuid, Path, description = "The room"), ("user_id" = Uuid, Path, description = "The banned user")),
    security(("bearer" = [])),
    responses((status = 204, description = "Unbanned"), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `user.not_found`: \
            no such ban", body = ErrorBody),
        (status = 503, response = Unavailable)))]
pub async fn unban(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (room_id, user_id) = path.into_inner();
    rooms::unban(&state, caller.id, room_id, user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}
