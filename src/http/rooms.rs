//! `/rooms` and `/direct`: rooms, membership, roles.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::docs::{BadRequest, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable};
use super::extract::{Json, OptionalJson, Query};
use super::PageQuery;
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{
    AddMembersRequest, CreateRoomRequest, JoinRequest, Member, Page, Room, UpdateMemberRequest, UpdateRoomRequest,
    UserIdRequest,
};
use crate::service::rooms::{self, Scope};
use crate::state::AppState;

/// The 404 of every room route.
const NOT_VISIBLE: &str = "`room.not_found`: no such live room, or a private one the caller is not in";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/rooms").route(web::post().to(create)).route(web::get().to(list)))
        .service(
            web::resource("/rooms/{room_id}")
                .route(web::get().to(get))
                .route(web::patch().to(update))
                .route(web::delete().to(close)),
        )
        .service(web::resource("/rooms/{room_id}/owner").route(web::post().to(transfer)))
        .service(web::resource("/rooms/{room_id}/join").route(web::post().to(join)))
        .service(web::resource("/rooms/{room_id}/leave").route(web::post().to(leave)))
        .service(
            web::resource("/rooms/{room_id}/members").route(web::get().to(members)).route(web::post().to(add_members)),
        )
        .service(
            web::resource("/rooms/{room_id}/members/{user_id}")
                .route(web::delete().to(remove_member))
                .route(web::patch().to(set_role)),
        )
        .service(web::resource("/direct").route(web::post().to(direct)));
}

/// Create a group room; the caller becomes its owner.
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", request_body = CreateRoomRequest, security(("bearer" = [])),
    responses((status = 201, description = "The new room", body = Room), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`user.not_found`: one of `member_ids` does not exist", body = ErrorBody),
        (status = 409, description = "`room.conflict`: a public room has that name; `limit.rooms`: someone would \
            be in more rooms than allowed", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<CreateRoomRequest>,
) -> ApiResult<HttpResponse> {
    let room = rooms::create(&state, caller.id, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(room))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `joined` (default): my rooms with my cursors; `public`: public rooms to discover.
    #[param(required = false, inline, value_type = ListScope)]
    pub scope: Option<ListScope>,
    /// Page size, 1–200 (default 50).
    #[param(required = false, value_type = i64, minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// Opaque cursor from a previous page's `next_cursor`.
    #[param(required = false, value_type = String)]
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ListScope {
    Joined,
    Public,
}

/// Rooms I belong to, or public rooms.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, description = "A page of rooms", body = Page<Room>), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 503, response = Unavailable)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: Query<ListQuery>,
) -> ApiResult<web::Json<Page<Room>>> {
    let scope = match query.scope {
        None | Some(ListScope::Joined) => Scope::Joined,
        Some(ListScope::Public) => Scope::Public,
    };
    Ok(web::Json(rooms::list(&state, caller.id, scope, query.cursor.as_deref(), query.limit).await?))
}

/// A room: members see any room they are in; anyone sees a public room.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}", tag = "rooms", params(("room_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, description = "The room", body = Room), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 404, description = NOT_VISIBLE, body = ErrorBody),
        (status = 503, response = Unavailable)))]
pub async fn get(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<web::Json<Room>> {
    Ok(web::Json(rooms::get(&state, caller.id, path.into_inner()).await?))
}

/// Rename, change visibility, set or remove (`null`) the password. Owner or admin.
#[utoipa::path(patch, path = "/api/v1/rooms/{room_id}", tag = "rooms", params(("room_id" = Uuid, Path)), request_body = UpdateRoomRequest,
    security(("bearer" = [])),
    responses((status = 200, description = "The room as changed", body = Room), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin, or a direct room", body = ErrorBody),
        (status = 404, description = NOT_VISIBLE, body = ErrorBody),
        (status = 409, description = "`room.conflict`: a public room has that name", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
pub async fn update(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<UpdateRoomRequest>,
) -> ApiResult<web::Json<Room>> {
    Ok(web::Json(rooms::update(&state, caller.id, path.into_inner(), body.into_inner()).await?))
}

/// Close the room. Owner only.
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}", tag = "rooms", params(("room_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Closed"), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner, or a direct room", body = ErrorBody),
        (status = 404, description = NOT_VISIBLE, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn close(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    rooms::close(&state, caller.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Hand ownership to another member; the old owner becomes an admin.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/owner", tag = "rooms", params(("room_id" = Uuid, Path)), request_body = UserIdRequest,
    security(("bearer" = [])),
    responses((status = 200, description = "The room under its new owner", body = Room),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner, or a direct room", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `user.not_found`: \
            the new owner is not a member", body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn transfer(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<UserIdRequest>,
) -> ApiResult<web::Json<Room>> {
    Ok(web::Json(rooms::transfer(&state, caller.id, path.into_inner(), body.user_id).await?))
}

/// Join a public room (with its password if protected). Joining twice is harmless.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/join", tag = "rooms", params(("room_id" = Uuid, Path)),
    request_body(content = Option<JoinRequest>, description = "Needed only for a protected room"),
    security(("bearer" = [])),
    responses((status = 200, description = "The room, now with the caller as a member", body = Room),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.wrong_password`: missing or wrong password; `room.banned`", body = ErrorBody),
        (status = 404, description = "`room.not_found`: no such live room, or a private one", body = ErrorBody),
        (status = 409, description = "`limit.rooms`: the caller is in as many rooms as allowed", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
pub async fn join(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: OptionalJson<JoinRequest>,
) -> ApiResult<web::Json<Room>> {
    let password = body.into_inner().and_then(|b| b.password);
    let (room, _added) = rooms::join(&state, caller.id, path.into_inner(), password).await?;
    Ok(web::Json(room))
}

/// Leave; an owner's role passes to the longest-standing admin, else member; the last one out closes the room.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/leave", tag = "rooms", params(("room_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Left"), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not a member, or a direct room", body = ErrorBody),
        (status = 404, description = NOT_VISIBLE, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn leave(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    rooms::leave(&state, caller.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Members with their roles, by join time.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}/members", tag = "rooms", params(("room_id" = Uuid, Path), PageQuery),
    security(("bearer" = [])),
    responses((status = 200, description = "A page of members", body = Page<Member>),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not a member", body = ErrorBody),
        (status = 404, description = NOT_VISIBLE, body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn members(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    query: Query<PageQuery>,
) -> ApiResult<web::Json<Page<Member>>> {
    let page = rooms::members(&state, caller.id, path.into_inner(), query.cursor.as_deref(), query.limit).await?;
    Ok(web::Json(page))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Added {
    /// Users newly added (those already in are left out).
    pub added: Vec<Uuid>,
}

/// Add users (also to private rooms). Owner or admin.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/members", tag = "rooms", params(("room_id" = Uuid, Path)),
    request_body = AddMembersRequest, security(("bearer" = [])),
    responses((status = 200, description = "Who was added", body = Added), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin, or a direct room; `room.banned`: \
            one of the users is banned", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `user.not_found`",
            body = ErrorBody),
        (status = 409, description = "`limit.rooms`: a user would be in more rooms than allowed", body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn add_members(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<AddMembersRequest>,
) -> ApiResult<web::Json<Added>> {
    let added = rooms::add_members(&state, caller.id, path.into_inner(), body.into_inner().user_ids).await?;
    Ok(web::Json(Added { added }))
}

/// Remove a member whose role is below the caller's (never the owner).
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/members/{user_id}", tag = "rooms", params(("room_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 204, description = "Removed"),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner or an admin, the member's role is not below \
            the caller's, or a direct room", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `user.not_found`: \
            not a member", body = ErrorBody),
        (status = 503, response = Unavailable)))]
pub async fn remove_member(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
) -> ApiResult<HttpResponse> {
    let (room_id, user_id) = path.into_inner();
    rooms::remove_member(&state, caller.id, room_id, user_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Promote to admin or demote to member. Owner only.
#[utoipa::path(patch, path = "/api/v1/rooms/{room_id}/members/{user_id}", tag = "rooms", params(("room_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    request_body = UpdateMemberRequest, security(("bearer" = [])),
    responses((status = 200, description = "The member's new role", body = Member),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 403, description = "`room.forbidden`: not the owner, or a direct room", body = ErrorBody),
        (status = 404, description = "`room.not_found` (see `GET /rooms/{room_id}`), or `user.not_found`: \
            not a member", body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn set_role(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<(Uuid, Uuid)>,
    body: Json<UpdateMemberRequest>,
) -> ApiResult<web::Json<Member>> {
    let (room_id, user_id) = path.into_inner();
    Ok(web::Json(rooms::set_role(&state, caller.id, room_id, user_id, body.role).await?))
}

/// The one direct room between the caller and a user: 201 when created, 200 after.
#[utoipa::path(post, path = "/api/v1/direct", tag = "rooms", request_body = UserIdRequest, security(("bearer" = [])),
    responses((status = 201, description = "Created", body = Room), (status = 200, description = "It already existed",
            body = Room),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 404, description = "`user.not_found`", body = ErrorBody),
        (status = 409, description = "`limit.rooms`: one of the two is in as many rooms as allowed", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
pub async fn direct(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<UserIdRequest>,
) -> ApiResult<HttpResponse> {
    let (room, created) = rooms::direct(&state, caller.id, body.user_id).await?;
    Ok(if created { HttpResponse::Created() } else { HttpResponse::Ok() }.json(room))
}
