//! `/rooms` and `/direct`: rooms, membership, roles.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{Json, Query};
use super::PageQuery;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::protocol::{
    AddMembersRequest, CreateRoomRequest, JoinRequest, Member, Page, Room, UpdateMemberRequest, UpdateRoomRequest,
    UserIdRequest,
};
use crate::service::rooms::{self, Scope};
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/rooms", web::post().to(create))
        .route("/rooms", web::get().to(list))
        .route("/rooms/{room_id}", web::get().to(get))
        .route("/rooms/{room_id}", web::patch().to(update))
        .route("/rooms/{room_id}", web::delete().to(close))
        .route("/rooms/{room_id}/owner", web::post().to(transfer))
        .route("/rooms/{room_id}/join", web::post().to(join))
        .route("/rooms/{room_id}/leave", web::post().to(leave))
        .route("/rooms/{room_id}/members", web::get().to(members))
        .route("/rooms/{room_id}/members", web::post().to(add_members))
        .route("/rooms/{room_id}/members/{user_id}", web::delete().to(remove_member))
        .route("/rooms/{room_id}/members/{user_id}", web::patch().to(set_role))
        .route("/direct", web::post().to(direct));
}

/// Create a group room; the caller becomes its owner.
#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", request_body = CreateRoomRequest, security(("bearer" = [])),
    responses((status = 201, body = Room), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<CreateRoomRequest>,
) -> ApiResult<HttpResponse> {
    let room = rooms::create(&state, caller.id, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(room))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// `joined` (default): my rooms with my cursors; `public`: public rooms to discover.
    pub scope: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// Rooms I belong to, or public rooms.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms", params(ListQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Room>), (status = 400, body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: Query<ListQuery>,
) -> ApiResult<web::Json<Page<Room>>> {
    let scope = match query.scope.as_deref() {
        None | Some("joined") => Scope::Joined,
        Some("public") => Scope::Public,
        Some(_) => return Err(ApiError::field("scope", "must be joined or public")),
    };
    Ok(web::Json(rooms::list(&state, caller.id, scope, query.cursor.as_deref(), query.limit).await?))
}

/// A room: members see any room they are in; anyone sees a public room.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = Room), (status = 404, body = ErrorBody)))]
pub async fn get(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<web::Json<Room>> {
    Ok(web::Json(rooms::get(&state, caller.id, path.into_inner()).await?))
}

/// Rename, change visibility, set or remove (`null`) the password. Owner or admin.
#[utoipa::path(patch, path = "/api/v1/rooms/{room_id}", tag = "rooms", request_body = UpdateRoomRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Room), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn update(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<UpdateRoomRequest>,
) -> ApiResult<web::Json<Room>> {
    Ok(web::Json(rooms::update(&state, caller.id, path.into_inner(), body.into_inner()).await?))
}

/// Close the room. Owner only.
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}", tag = "rooms", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn close(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    rooms::close(&state, caller.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Hand ownership to another member; the old owner becomes an admin.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/owner", tag = "rooms", request_body = UserIdRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Room), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn transfer(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Json<UserIdRequest>,
) -> ApiResult<web::Json<Room>> {
    Ok(web::Json(rooms::transfer(&state, caller.id, path.into_inner(), body.user_id).await?))
}

/// Join a public room (with its password if protected). Joining twice is harmless.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/join", tag = "rooms", request_body = JoinRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Room), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn join(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<Uuid>,
    body: Option<Json<JoinRequest>>,
) -> ApiResult<web::Json<Room>> {
    let password = body.and_then(|b| b.into_inner().password);
    let (room, _added) = rooms::join(&state, caller.id, path.into_inner(), password).await?;
    Ok(web::Json(room))
}

/// Leave; an owner's role passes to the longest-standing admin, else member; the last one out closes the room.
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/leave", tag = "rooms", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn leave(state: web::Data<AppState>, caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    rooms::leave(&state, caller.id, path.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Members with their roles, by join time.
#[utoipa::path(get, path = "/api/v1/rooms/{room_id}/members", tag = "rooms", params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<Member>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
#[utoipa::path(post, path = "/api/v1/rooms/{room_id}/members", tag = "rooms", request_body = AddMembersRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Added), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
#[utoipa::path(delete, path = "/api/v1/rooms/{room_id}/members/{user_id}", tag = "rooms", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
#[utoipa::path(patch, path = "/api/v1/rooms/{room_id}/members/{user_id}", tag = "rooms",
    request_body = UpdateMemberRequest, security(("bearer" = [])),
    responses((status = 200, body = Member), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
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
    responses((status = 201, body = Room), (status = 200, body = Room), (status = 404, body = ErrorBody)))]
pub async fn direct(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<UserIdRequest>,
) -> ApiResult<HttpResponse> {
    let (room, created) = rooms::direct(&state, caller.id, body.user_id).await?;
    Ok(if created { HttpResponse::Created() } else { HttpResponse::Ok() }.json(room))
}
