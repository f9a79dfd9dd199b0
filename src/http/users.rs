//! `/users`: search, me, by id.

use actix_web::web;
use uuid::Uuid;

use super::docs::{BadRequest, Unauthorized, Unavailable};
use super::extract::Query;
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{Page, User};
use crate::service::accounts;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/users").route(web::get().to(search)))
        .service(web::resource("/users/me").route(web::get().to(me)))
        .service(web::resource("/users/{user_id}").route(web::get().to(by_id)));
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Username prefix, case-insensitive; empty lists everyone.
    #[param(required = false, value_type = String, max_length = 32, pattern = "^[A-Za-z0-9_.-]*$")]
    pub q: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(required = false, value_type = i64, minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// Opaque cursor from a previous page's `next_cursor`.
    #[param(required = false, value_type = String)]
    pub cursor: Option<String>,
}

/// List users, or find them by username prefix.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(SearchQuery), security(("bearer" = [])),
    responses((status = 200, description = "Users by username", body = Page<User>),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 503, response = Unavailable)))]
pub async fn search(
    state: web::Data<AppState>,
    _caller: AuthUser,
    query: Query<SearchQuery>,
) -> ApiResult<web::Json<Page<User>>> {
    let q = query.q.as_deref().unwrap_or("");
    Ok(web::Json(accounts::search(&state, q, query.cursor.as_deref(), query.limit).await?))
}

/// The caller.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "The caller", body = User), (status = 401, response = Unauthorized),
        (status = 404, description = "`user.not_found`: the token names an account that no longer exists",
            body = ErrorBody),
        (status = 503, response = Unavailable)))]
pub async fn me(state: web::Data<AppState>, caller: AuthUser) -> ApiResult<web::Json<User>> {
    Ok(web::Json(accounts::get_user(&state, caller.id).await?))
}

/// A user by id.
#[utoipa::path(get, path = "/api/v1/users/{user_id}", tag = "users", params(("user_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses((status = 200, description = "The user", body = User), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`user.not_found`", body = ErrorBody), (status = 503, response = Unavailable)))]
pub async fn by_id(state: web::Data<AppState>, _caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<web::Json<User>> {
    Ok(web::Json(accounts::get_user(&state, path.into_inner()).await?))
}
