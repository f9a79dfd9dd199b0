//! Authentication: password hashing, token issue and verification, and the extractor that turns a
//! bearer token into the calling user.

pub mod password;
pub mod tokens;

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use uuid::Uuid;

use crate::error::ApiError;
use crate::startup::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub username: String,
    /// Unix seconds when the access token expires (a WebSocket closes then unless re-authenticated).
    pub expires_at: u64,
    /// The token generation the access token carries (see `revocations`).
    pub generation: i32,
}

impl AuthUser {
    /// The caller an access token names, if the token is valid, unexpired and not revoked. Every
    /// transport authenticates through this one function.
    pub fn from_token(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
        let claims = state.tokens.verify(token)?;
        state.revocations.check(claims.sub, claims.gen)?;
        Ok(AuthUser { id: claims.sub, username: claims.name, expires_at: claims.exp, generation: claims.gen })
    }
}

/// The bearer token from the `Authorization` header.
pub fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The `?token=` query parameter. Only the WebSocket upgrade accepts it: browsers cannot set headers
/// there, and tokens in URLs elsewhere would end up in proxy logs.
pub fn query_token(req: &HttpRequest) -> Option<String> {
    web::Query::<TokenQuery>::from_query(req.query_string()).ok().and_then(|q| q.into_inner().token)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let state =
        req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let token = bearer_token(req).ok_or(ApiError::Unauthenticated)?;
    AuthUser::from_token(state, &token)
}
