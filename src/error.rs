//! The one error type every REST handler and WebSocket command returns, and the one place that maps each
//! failure to its HTTP status and stable wire code (`{"code", "message", "details"?}`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// One bad field of a request: which field, and what is wrong with it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// What was not found; each has its own wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    Room,
    User,
    Message,
    Route,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("a valid access token is required")]
    Unauthenticated,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("the access token has expired")]
    TokenExpired,
    #[error("this refresh token was already used; its whole session family is now revoked")]
    RefreshReused,
    #[error("this access token was revoked (logged out everywhere); log in again")]
    TokenRevoked,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("wrong room password")]
    WrongPassword,
    #[error("you are banned from this room")]
    Banned,
    #[error("{0}")]
    TooManyRooms(&'static str),
    #[error("not found")]
    NotFound(Missing),
    #[error("{1}")]
    Conflict(Missing, &'static str),
    #[error("the message is larger than {0} bytes")]
    TooLarge(usize),
    #[error("too many requests; retry in {0} s")]
    RateLimited(u64),
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The node is at a capacity limit of its own (e.g. concurrent password hashes): retry shortly.
    #[error("{0}; retry in a moment")]
    Busy(&'static str),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The JSON body of every error response, and of a failed WebSocket `reply`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, `<area>.<reason>`.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
}

impl ApiError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    /// A validation error naming the field serde stumbled on (`visibility`, `rooms[0].room_id`), or
    /// `whole` when serde could not say.
    pub fn from_serde<E: std::fmt::Display>(error: serde_path_to_error::Error<E>, whole: &str) -> Self {
        let message = error.inner().to_string();
        let path = error.path().to_string();
        let field = if path == "." || path.is_empty() {
            // serde names a missing or unknown field only in its message: "missing field `name`".
            message
                .split('`')
                .nth(1)
                .filter(|_| message.contains("field"))
                .map(str::to_owned)
                .unwrap_or_else(|| whole.to_owned())
        } else {
            path
        };
        ApiError::Validation(vec![FieldError::new(field, message)])
    }

    pub fn internal(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Internal(Box::new(e))
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation",
            ApiError::Unauthenticated => "auth.unauthenticated",
            ApiError::InvalidCredentials => "auth.invalid_credentials",
            ApiError::TokenExpired => "auth.token_expired",
            ApiError::RefreshReused => "auth.refresh_reused",
            ApiError::TokenRevoked => "auth.token_revoked",
            ApiError::Forbidden(_) => "room.forbidden",
            ApiError::WrongPassword => "room.wrong_password",
            ApiError::Banned => "room.banned",
            ApiError::TooManyRooms(_) => "limit.rooms",
            ApiError::NotFound(Missing::Room) => "room.not_found",
            ApiError::NotFound(Missing::User) => "user.not_found",
            ApiError::NotFound(Missing::Message) => "message.not_found",
            ApiError::NotFound(Missing::Route) => "not_found",
            ApiError::Conflict(Missing::User, _) => "user.conflict",
            ApiError::Conflict(_, _) => "room.conflict",
            ApiError::TooLarge(_) => "message.too_large",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Unavailable(_) | ApiError::Busy(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let message = match self {
            ApiError::NotFound(Missing::Room) => "room not found".to_owned(),
            ApiError::NotFound(Missing::User) => "user not found".to_owned(),
            ApiError::NotFound(Missing::Message) => "message not found".to_owned(),
            ApiError::NotFound(Missing::Route) => "no such route".to_owned(),
            ApiError::Validation(fields) => {
                let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
                format!("invalid request: check {}", names.join(", "))
            }
            other => other.to_string(),
        };
        let details = match self {
            ApiError::Validation(fields) => Some(fields.clone()),
            _ => None,
        };
        ErrorBody { code: self.code(), message, details }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated
            | ApiError::InvalidCredentials
            | ApiError::TokenExpired
            | ApiError::RefreshReused
            | ApiError::TokenRevoked => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::WrongPassword | ApiError::Banned => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(..) | ApiError::TooManyRooms(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        // Runs inside the request's span, so these lines carry its request id. The cause is logged
        // here and never sent: the client gets only the code and a sentence.
        match self {
            ApiError::Internal(cause) => tracing::error!(error = %cause, debug = ?cause, "internal error"),
            ApiError::Unavailable(cause) => tracing::warn!(error = %cause, "dependency unavailable"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited(secs) => {
                response.insert_header(("Retry-After", secs.to_string()));
            }
            ApiError::Busy(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            _ => {}
        }
        if matches!(self, ApiError::Unauthenticated | ApiError::TokenExpired | ApiError::TokenRevoked) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response.json(self.body())
    }
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            // A dropped connection or server shutdown: the client may retry.
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _) => {
                ApiError::Unavailable(Box::new(e))
            }
            // PostgreSQL ending the session under a query in flight (a restart or failover: SQLSTATE
            // 57P01-57P03) arrives as an unclassified error; diesel hides the SQLSTATE, so it is
            // told by the server's (English, the default) text. Seen as `internal` by a client
            // during a PostgreSQL restart under load (loadtest --scenario chaos).
            Error::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                if info.message().starts_with("terminating connection")
                    || info.message().starts_with("the database system is") =>
            {
                ApiError::Unavailable(Box::new(e))
            }
            other => ApiError::internal(other),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
