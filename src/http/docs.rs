//! The OpenAPI document, generated from the handlers' annotations, and a self-contained docs page
//! (no CDN: these machines and many production networks have no internet).

use actix_web::{web, HttpResponse};
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};

use super::{auth, bans, health, messages, rooms, users};
use crate::error::ErrorBody;
use crate::startup::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Chorus", description = "Horizontally scaled chat server. WebSocket protocol: docs/PROTOCOL.md."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::logout_all,
        users::search, users::me, users::by_id,
        rooms::create, rooms::list, rooms::get, rooms::update, rooms::close, rooms::transfer, rooms::join,
        rooms::leave, rooms::members, rooms::add_members, rooms::remove_member, rooms::set_role, rooms::direct,
        bans::ban, bans::list, bans::unban,
        messages::history, messages::send, messages::edit, messages::delete, messages::clear, messages::receipts,
        messages::unreceived,
        health::healthz, health::readyz, health::metrics,
    ),
    components(responses(BadRequest, Unauthorized, PayloadTooLarge, TooManyRequests, Unavailable)),
    modifiers(&BearerAuth),
    tags((name = "auth"), (name = "users"), (name = "rooms"), (name = "messages"), (name = "ops"))
)]
pub struct ApiDoc;

// Error responses shared by many operations. Every error body is `ErrorBody` (`{code, message,
// details?}`); the statuses an operation can really answer are listed on the operation itself.

/// `validation`: malformed JSON, a Content-Type other than `application/json`, a missing, unknown or
/// ill-typed field, an id in the path that is not a UUID, or a value out of range. `details` names
/// each bad field.
#[derive(ToResponse)]
pub struct BadRequest(pub ErrorBody);

/// No valid access token (`auth.unauthenticated`, `auth.token_expired`, `auth.token_revoked`).
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
pub struct Unauthorized(pub ErrorBody);

/// The request body is larger than the node accepts (`CHORUS_MAX_FRAME_BYTES`), or a message's
/// content is longer than `CHORUS_MAX_MESSAGE_BYTES` (`message.too_large`).
#[derive(ToResponse)]
pub struct PayloadTooLarge(pub ErrorBody);

/// `rate_limited`: retry after the number of seconds in `Retry-After`.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds until a retry can succeed")))]
pub struct TooManyRequests(pub ErrorBody);

/// `unavailable`: PostgreSQL or Redis did not answer in time, or the node is at its limit of
/// concurrent password hashes (then with `Retry-After`). Safe to retry.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait, when the node is busy")))]
pub struct Unavailable(pub ErrorBody);

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
    cfg.app_data(web::Data::new(OpenApiJson::default()))
        .route("/api/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(docs_page))
        .route("/", web::get().to(chat_page));
}

/// The document as this node serves it: the annotations, plus what depends on the node's settings
/// or what the annotations cannot say.
pub fn document(max_message_bytes: usize) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(|s| s.as_object_mut()) {
        for name in ["SendMessageRequest", "EditMessageRequest"] {
            if let Some(content) = schemas.get_mut(name).and_then(|s| s.pointer_mut("/properties/content")) {
                // In characters, while the limit is in bytes: non-ASCII text reaches it sooner (413).
                content["maxLength"] = json!(max_message_bytes);
            }
        }
        // At least one cursor, and `null` counts as leaving it out.
        if let Some(receipt) = schemas.get_mut("ReceiptRequest").and_then(|s| s.as_object_mut()) {
            let given = |field: &str| json!({"required": [field], "properties": {field: {"type": "integer"}}});
            receipt.insert("anyOf".into(), json!([given("delivered_seq"), given("read_seq")]));
        }
    }
    doc
}

/// Rendered on the first request (it needs the node's settings); every request shares the bytes.
#[derive(Default)]
struct OpenApiJson(std::sync::OnceLock<String>);

async fn openapi_json(spec: web::Data<OpenApiJson>, state: web::Data<AppState>) -> HttpResponse {
    let body = spec.0.get_or_init(|| document(state.settings.max_message_bytes).to_string());
    HttpResponse::Ok().content_type("application/json").body(body.clone())
}

/// A small browser chat client: open two tabs on different nodes and talk.
async fn chat_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("chat.html"))
}

async fn docs_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("docs.html"))
}
