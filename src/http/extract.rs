//! JSON body and query-string extractors that name the exact field a client got wrong
//! (`visibility`, `limit`, `rooms[0].room_id`), where the stock extractors only say "body".

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;

use crate::auth::{bearer_token, AuthUser};
use crate::error::ApiError;
use crate::service::accounts;
use crate::state::AppState;

/// A JSON request body.
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = json_body(req, payload);
        Box::pin(async move {
            let (bytes, json_type) = body.await?;
            parse(&bytes, json_type).map(Json)
        })
    }
}

/// A JSON request body that may be left out: no body (or `null`) is `None`, but a body that is there
/// must be valid (the same errors as [`Json`]), so a mistyped field is never silently ignored.
pub struct OptionalJson<T>(pub Option<T>);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> Option<T> {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = json_body(req, payload);
        Box::pin(async move {
            let (bytes, json_type) = body.await?;
            if bytes.is_empty() {
                return Ok(OptionalJson(None));
            }
            parse(&bytes, json_type).map(OptionalJson)
        })
    }
}

/// The body's bytes (bounded by the node's body limit) and whether its Content-Type is JSON.
fn json_body(req: &HttpRequest, payload: &mut Payload) -> impl Future<Output = Result<(web::Bytes, bool), ApiError>> {
    let json_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    let limit = req.app_data::<web::Data<crate::state::AppState>>().map_or(0, |s| s.settings.max_frame_bytes);
    let body = web::Bytes::from_request(req, payload);
    async move {
        let bytes = body.await.map_err(|e| match e.as_response_error().status_code() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limit),
            _ => ApiError::field("body", e.to_string()),
        })?;
        Ok((bytes, json_type))
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8], json_type: bool) -> Result<T, ApiError> {
    if !json_type {
        return Err(ApiError::field("body", "Content-Type must be application/json"));
    }
    // serde would take an array for a struct (its fields in order); every body here is an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::field("body", "must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| ApiError::from_serde(e, "body"))
}

/// Query-string parameters.
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let parsed = form_pairs(req.query_string());
        std::future::ready(parsed.map(Query))
    }
}

fn form_pairs<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|e| ApiError::from_serde(e, "query"))
}

/// The caller of an authenticated route, from the `Authorization: Bearer` header.
impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<AuthUser, ApiError> {
    let state =
        req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::Internal("application state missing".into()))?;
    let token = bearer_token(req).ok_or(ApiError::Unauthenticated)?;
    accounts::authenticate(state, &token)
}
