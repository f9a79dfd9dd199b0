//! The OpenAPI document, generated from the handlers' annotations, and a self-contained docs page
//! (no CDN: these machines and many production networks have no internet).

use actix_web::{web, HttpResponse};
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};

use super::{auth, bans, health, messages, rooms, users};
use crate::error::ErrorBody;
use crate::state::AppState;

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
// These types exist only for the document (`ToResponse`): nothing builds or reads them.

/// `validation`: malformed JSON, a Content-Type other than `application/json`, a missing, unknown or
/// ill-typed field, an id in the path that is not a UUID, or a value out of range. `details` names
/// each bad field.
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct BadRequest(pub ErrorBody);

/// No valid access token (`auth.unauthenticated`, `auth.token_expired`, `auth.token_revoked`).
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
#[allow(dead_code)]
pub struct Unauthorized(pub ErrorBody);

/// The request body is larger than the node accepts (`CHORUS_MAX_FRAME_BYTES`), or a message's
/// content is longer than `CHORUS_MAX_MESSAGE_BYTES` (`message.too_large`).
#[derive(ToResponse)]
#[allow(dead_code)]
pub struct PayloadTooLarge(pub ErrorBody);

/// `rate_limited`: retry after the number of seconds in `Retry-After`.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds until a retry can succeed")))]
#[allow(dead_code)]
pub struct TooManyRequests(pub ErrorBody);

/// `unavailable`: PostgreSQL or Redis did not answer in time, or the node is at its limit of
/// concurrent password hashes (then with `Retry-After`). Safe to retry.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Seconds to wait, when the node is busy")))]
#[allow(dead_code)]
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
        .service(web::resource("/api/openapi.json").route(web::get().to(openapi_json)))
        .service(web::resource("/docs").route(web::get().to(docs_page)));
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

async fn docs_page() -> HttpResponse {
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(include_str!("docs.html"))
}

#[cfg(test)]
mod tests {
    //! What tools need from the document, checked without a node (script/test's schemathesis phase
    //! checks the served document against a live one).

    use serde_json::Value;

    use super::document;

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
        ops
    }

    fn statuses(op: &Value) -> Vec<&str> {
        op["responses"].as_object().expect("responses").keys().map(String::as_str).collect()
    }

    #[test]
    fn every_path_parameter_is_declared_as_a_uuid() {
        let doc = document(4096);
        for (method, path, op) in operations(&doc) {
            let names: Vec<&str> = path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for name in &names {
                let param = params.iter().find(|p| p["name"] == *name && p["in"] == "path");
                let param = param.unwrap_or_else(|| panic!("{method} {path}: path parameter {name} not declared"));
                assert_eq!(param["required"], true, "{method} {path} {name}");
                assert_eq!(param["schema"]["format"], "uuid", "{method} {path} {name}");
            }
            for p in params.iter().filter(|p| p["in"] == "path") {
                assert!(names.contains(&p["name"].as_str().unwrap_or_default()), "{method} {path}: stray {p}");
            }
        }
    }

    #[test]
    fn query_parameters_are_optional_and_bounded() {
        let doc = document(4096);
        for (method, path, op) in operations(&doc) {
            for p in op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "query") {
                assert_eq!(p["required"], false, "{method} {path} {}", p["name"]);
                match p["name"].as_str() {
                    Some("limit") => {
                        assert_eq!((&p["schema"]["minimum"], &p["schema"]["maximum"]), (&1.into(), &200.into()))
                    }
                    Some("before_seq" | "after_seq") => assert_eq!(p["schema"]["minimum"], 0),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn every_operation_lists_the_errors_it_can_answer() {
        let doc = document(4096);
        for (method, path, op) in operations(&doc) {
            let listed = statuses(op);
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let has_input = op["parameters"].as_array().is_some_and(|p| !p.is_empty()) || !op["requestBody"].is_null();
            let expect = |status: &str, why: &str| {
                assert!(listed.contains(&status), "{method} {path}: {status} ({why}) not documented: {listed:?}")
            };
            if secured {
                expect("401", "bearer token");
                assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{method} {path}");
            }
            if has_input {
                expect("400", "validation");
            }
            if !op["requestBody"].is_null() {
                expect("413", "body limit");
            }
            if path.starts_with("/api/v1/") {
                expect("503", "stores unavailable");
            }
            for (status, response) in op["responses"].as_object().expect("responses") {
                let described = response["description"].as_str().is_some_and(|d| !d.is_empty())
                    || response["$ref"].as_str().is_some_and(|r| r.starts_with("#/components/responses/"));
                assert!(described, "{method} {path} {status}: a response needs a description");
                if status.starts_with('4') || (status.starts_with('5') && path.starts_with("/api/")) {
                    let schema = response.pointer("/content/application~1json/schema/$ref");
                    let shared = response["$ref"].is_string();
                    assert!(
                        shared || schema == Some(&"#/components/schemas/ErrorBody".into()),
                        "{method} {path} {status}: error responses carry ErrorBody"
                    );
                }
            }
        }
    }

    #[test]
    fn message_content_is_bounded_by_the_setting() {
        let doc = document(1234);
        for name in ["SendMessageRequest", "EditMessageRequest"] {
            assert_eq!(doc["components"]["schemas"][name]["properties"]["content"]["maxLength"], 1234, "{name}");
        }
    }
}
