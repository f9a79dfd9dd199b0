//! The OpenAPI document, generated from the handlers' annotations, and a self-contained docs page
//! (no CDN: these machines and many production networks have no internet).

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{auth, health, messages, rooms, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "Chorus", description = "Horizontally scaled chat server. WebSocket protocol: docs/PROTOCOL.md."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout,
        users::search, users::me, users::by_id,
        rooms::create, rooms::list, rooms::get, rooms::update, rooms::close, rooms::transfer, rooms::join,
        rooms::leave, rooms::members, rooms::add_members, rooms::remove_member, rooms::set_role, rooms::direct,
        messages::history, messages::send, messages::edit, messages::delete, messages::clear, messages::receipts,
        messages::unreceived,
        health::healthz, health::readyz, health::metrics,
    ),
    modifiers(&BearerAuth),
    tags((name = "auth"), (name = "users"), (name = "rooms"), (name = "messages"), (name = "ops"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    // Rendered once at start-up; every request shares the bytes.
    let spec = ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_owned());
    cfg.app_data(web::Data::new(OpenApiJson(spec)))
        .route("/api/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(docs_page))
        .route("/", web::get().to(chat_page));
}

struct OpenApiJson(String);

async fn openapi_json(spec: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(spec.0.clone())
}

/// A small browser chat client: open two tabs on different nodes and talk.
async fn chat_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("chat.html"))
}

async fn docs_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("docs.html"))
}
