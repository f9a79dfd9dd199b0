//! `/users`: search, me, by id.

use actix_web::web;
use uuid::Uuid;

use super::extract::Query;
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{Page, User};
use crate::service::accounts;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/users", web::get().to(search))
        .route("/users/me", web::get().to(me))
        .route("/users/{user_id}", web::get().to(by_id));
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct SearchQuery {
    /// Username prefix, case-insensitive; empty lists everyone.
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// List users, or find them by username prefix.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", params(SearchQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<User>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
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
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn me(state: web::Data<AppState>, caller: AuthUser) -> ApiResult<web::Json<User>> {
    Ok(web::Json(accounts::get_user(&state, caller.id).await?))
}

/// A user by id.
#[utoipa::path(get, path = "/api/v1/users/{user_id}", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 404, body = ErrorBody)))]
pub async fn by_id(state: web::Data<AppState>, _caller: AuthUser, path: web::Path<Uuid>) -> ApiResult<web::Json<User>> {
    Ok(web::Json(accounts::get_user(&state, path.into_inner()).await?))
}
