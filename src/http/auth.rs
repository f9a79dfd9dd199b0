//! `/auth`: register, login, refresh, logout.

use actix_web::{web, HttpResponse};

use super::extract::Json;
use crate::auth::AuthUser;
use crate::error::{ApiResult, ErrorBody};
use crate::protocol::{Credentials, RefreshRequest, TokenPair, User};
use crate::service::accounts;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout));
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn register(state: web::Data<AppState>, body: Json<Credentials>) -> ApiResult<HttpResponse> {
    let user = accounts::register(&state, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(user))
}

/// Exchange a username and password for an access token and a refresh token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
pub async fn login(state: web::Data<AppState>, body: Json<Credentials>) -> ApiResult<web::Json<TokenPair>> {
    Ok(web::Json(accounts::login(&state, body.into_inner()).await?))
}

/// Rotate a refresh token: the old one is spent; presenting a spent one revokes its family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
pub async fn refresh(state: web::Data<AppState>, body: Json<RefreshRequest>) -> ApiResult<web::Json<TokenPair>> {
    Ok(web::Json(accounts::refresh(&state, &body.refresh_token).await?))
}

/// Revoke the refresh token's family.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    security(("bearer" = [])), responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<RefreshRequest>,
) -> ApiResult<HttpResponse> {
    accounts::logout(&state, &caller, &body.refresh_token).await?;
    Ok(HttpResponse::NoContent().finish())
}
