//! `/auth`: register, login, refresh, logout.

use actix_web::{web, HttpRequest, HttpResponse};

use super::docs::{BadRequest, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable};
use super::extract::Json;
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::protocol::{Credentials, RefreshRequest, TokenPair, User};
use crate::service::accounts;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/auth/register").route(web::post().to(register)))
        .service(web::resource("/auth/login").route(web::post().to(login)))
        .service(web::resource("/auth/refresh").route(web::post().to(refresh)))
        .service(web::resource("/auth/logout").route(web::post().to(logout)))
        .service(web::resource("/auth/logout-all").route(web::post().to(logout_all)));
}

/// Login, register and refresh are limited per client address (see [`super::client_ip`]).
fn limit(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let client = super::client_ip(req, &state.settings.trusted_proxies);
    state.auth_limiter.check(&client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()))
}

/// Create an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = Credentials,
    responses((status = 201, description = "The new account", body = User), (status = 400, response = BadRequest),
        (status = 409, description = "`user.conflict`: the username is taken (case-insensitively)", body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
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
    responses((status = 200, description = "Signed in", body = TokenPair), (status = 400, response = BadRequest),
        (status = 401, description = "`auth.invalid_credentials`: wrong username or password", body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
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
    responses((status = 200, description = "A new pair; the presented refresh token is spent", body = TokenPair),
        (status = 400, response = BadRequest),
        (status = 401, description = "Unknown (`auth.unauthenticated`), expired (`auth.token_expired`) or already \
            used (`auth.refresh_reused`, which revokes its whole family) refresh token", body = ErrorBody),
        (status = 413, response = PayloadTooLarge), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
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
    security(("bearer" = [])),
    responses((status = 204, description = "Logged out (also when the token was unknown or not the caller's)"),
        (status = 400, response = BadRequest), (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge), (status = 503, response = Unavailable)))]
pub async fn logout(
    state: web::Data<AppState>,
    caller: AuthUser,
    body: Json<RefreshRequest>,
) -> ApiResult<HttpResponse> {
    accounts::logout(&state, &caller, &body.refresh_token).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Log out everywhere: revokes every refresh token of the caller, refuses every access token issued
/// before now (401 `auth.token_revoked`), and closes the caller's live sockets on every node (4001).
#[utoipa::path(post, path = "/api/v1/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Every session of the caller is revoked"),
        (status = 401, response = Unauthorized), (status = 503, response = Unavailable)))]
pub async fn logout_all(state: web::Data<AppState>, caller: AuthUser) -> ApiResult<HttpResponse> {
    accounts::logout_all(&state, &caller).await?;
    Ok(HttpResponse::NoContent().finish())
}
