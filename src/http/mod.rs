//! REST routes: thin handlers that parse, call `service`, and shape the response. Extractor failures
//! (bad JSON, bad query or path) are turned into `validation` errors here, in one place.

pub mod auth;
pub mod docs;
pub mod health;
pub mod messages;
pub mod rooms;
pub mod users;

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest};

use crate::error::{ApiError, FieldError, Missing};

/// Registers every route; `max_body` bounds JSON bodies.
pub fn configure(max_body: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::JsonConfig::default().limit(max_body).error_handler(json_error))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .configure(health::routes)
            .configure(docs::routes)
            .service(
                web::scope("/api/v1")
                    .configure(auth::routes)
                    .configure(users::routes)
                    .configure(rooms::routes)
                    .configure(messages::routes)
                    .configure(crate::ws::routes),
            )
            .default_service(web::to(not_found));
    }
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(Missing::Route))
}

/// serde names the culprit in its message ("missing field `name`"); surface it as the field.
fn field_from_serde(message: &str) -> String {
    message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
        .map(str::to_owned)
        .unwrap_or_else(|| "body".to_owned())
}

fn json_error(err: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::TooLarge(*limit)
        }
        JsonPayloadError::ContentType => ApiError::field("body", "Content-Type must be application/json"),
        JsonPayloadError::Deserialize(e) => {
            let message = e.to_string();
            ApiError::Validation(vec![FieldError::new(field_from_serde(&message), message)])
        }
        other => ApiError::field("body", other.to_string()),
    };
    api.into()
}

fn query_error(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    let message = err.to_string();
    ApiError::Validation(vec![FieldError::new(field_from_serde(&message).replace("body", "query"), message)]).into()
}

fn path_error(err: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::field("path", format!("an id in the path is not a valid UUID ({err})")).into()
}

/// Query parameters of list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// 1–200, default 50.
    pub limit: Option<i64>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}
