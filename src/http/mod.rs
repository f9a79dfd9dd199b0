//! REST routes: thin handlers that parse, call `service`, and shape the response. Extractor failures
//! (bad JSON, bad query or path) are turned into `validation` errors here, in one place.

pub mod auth;
pub mod docs;
pub mod extract;
pub mod health;
pub mod messages;
pub mod rooms;
pub mod users;

use actix_web::error::PathError;
use actix_web::{web, HttpRequest};

use crate::error::{ApiError, Missing};

/// Registers every route; `max_body` bounds JSON bodies.
pub fn configure(max_body: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::PayloadConfig::new(max_body))
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
