//! `/auth`: register, login, refresh, logout.

use actix_web::{web, HttpRequest, HttpResponse};

use super::extract::Json;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::protocol::{Credentials, RefreshRequest, TokenPair, User};
use crate::service::accounts;
use crate::startup::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/auth/register", web::post().to(register))
        .route("/auth/login", web::post().to(login))
        .route("/auth/refresh", web::post().to(refresh))
        .route("/auth/logout", web::post().to(logout));
}

/// The client's address: the first `X-Forwarded-For`/`Forwarded` hop when a proxy set one (the load
/// balancer in front of every node does), else the peer address.
fn limit(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let info = req.connection_info();
    let client = info.realip_remote_addr().unwrap_or("unknown");
    state.auth_limiter.check(client)
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials,
    responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<Credentials>,
) -> ApiResult<HttpResponse> {
    limit(&req, &state)?;
    let user = accounts::register(&state, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(user))
}

/// Exchange a username and password for an access token and a refresh token.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<Credentials>,
) -> ApiResult<web::Json<TokenPair>> {
    limit(&req, &state)?;
    Ok(web::Json(accounts::login(&state, body.into_inner()).await?))
}

/// Rotate a refresh token: the old one is spent; presenting a spent one revokes its family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Json<RefreshRequest>,
) -> ApiResult<web::Json<TokenPair>> {
    limit(&req, &state)?;
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
