//! REST routes: thin handlers that parse, call `service`, and shape the response. Extractor failures
//! (bad JSON, bad query or path) are turned into `validation` errors here, in one place.

pub mod auth;
pub mod bans;
pub mod client;
pub mod docs;
pub mod extract;
pub mod health;
pub mod messages;
pub mod rooms;
pub mod users;

use std::net::IpAddr;

use actix_web::dev::ServiceResponse;
use actix_web::error::PathError;
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::config::TrustedProxies;
use crate::error::{ApiError, ErrorBody, Missing};

/// Registers every route; `max_body` bounds JSON bodies.
pub fn configure(max_body: usize) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::PayloadConfig::new(max_body))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .service(
                // Each path is one resource with a route per method, so a method the path does not
                // serve gets actix's 405 with `Allow`; the wrapper gives it the usual error body.
                web::scope("")
                    .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed))
                    .configure(health::routes)
                    .configure(docs::routes)
                    .configure(client::routes)
                    .configure(crate::sio::routes)
                    .service(
                        web::scope("/api/v1")
                            .configure(auth::routes)
                            .configure(users::routes)
                            .configure(rooms::routes)
                            .configure(bans::routes)
                            .configure(messages::routes)
                            .configure(crate::ws::routes),
                    ),
            )
            .default_service(web::to(not_found));
    }
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(Missing::Route))
}

/// actix's 405 (which lists the path's methods in `Allow`) with a `method_not_allowed` error body.
fn method_not_allowed<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, res) = res.into_parts();
    let mut out = HttpResponse::MethodNotAllowed();
    if let Some(allow) = res.headers().get(header::ALLOW) {
        out.insert_header((header::ALLOW, allow.clone()));
    }
    let body = ErrorBody {
        code: "method_not_allowed",
        message: format!("{} is not served on this path; see Allow", req.method()),
        details: None,
    };
    Ok(ErrorHandlerResponse::Response(ServiceResponse::new(req, out.json(body)).map_into_right_body()))
}

fn path_error(err: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::field("path", format!("an id in the path is not a valid UUID ({err})")).into()
}

/// The client's address. A forwarded header (`X-Forwarded-For`, else `Forwarded`) is believed only
/// when the TCP peer is a trusted proxy (`CHORUS_TRUSTED_PROXIES`); the client is then the right-most
/// address in it that is not itself a trusted proxy. Anyone else can write those headers, so from
/// an untrusted peer they are ignored and the peer is the client.
pub fn client_ip(req: &HttpRequest, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let headers = req.headers();
    let forwarded_for: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    let hops = if forwarded_for.is_empty() {
        headers
            .get_all("forwarded")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .filter_map(|pair| pair.trim().strip_prefix("for=").or_else(|| pair.trim().strip_prefix("For=")))
            .filter_map(forwarded_node)
            .collect()
    } else {
        forwarded_for
    };
    // Right to left: each trusted proxy appended the address it received the request from.
    Some(hops.into_iter().rev().find(|ip| !trusted.contains(*ip)).unwrap_or(peer))
}

/// The address in a `Forwarded` `for=` value: `192.0.2.1`, `"192.0.2.1:4711"`, `"[2001:db8::1]:4711"`.
fn forwarded_node(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    value.parse().ok().or_else(|| value.rsplit_once(':')?.0.parse().ok())
}

/// Query parameters of list routes.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1–200 (default 50).
    #[param(required = false, value_type = i64, minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// Opaque cursor from a previous page's `next_cursor`.
    #[param(required = false, value_type = String)]
    pub cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn cidrs(list: &[&str]) -> TrustedProxies {
        list.join(",").parse().expect("test CIDRs")
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let req = TestRequest::default()
            .peer_addr("203.0.113.9:5000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "198.51.100.1"))
            .insert_header(("forwarded", "for=198.51.100.2"))
            .to_http_request();
        assert_eq!(client_ip(&req, &cidrs(&[])), "203.0.113.9".parse().ok());
        assert_eq!(client_ip(&req, &cidrs(&["10.0.0.0/8"])), "203.0.113.9".parse().ok());
    }

    #[test]
    fn a_trusted_proxy_names_the_client_right_to_left() {
        let trusted = cidrs(&["10.0.0.0/8", "127.0.0.1"]);
        // The client put a fake hop first; the proxy appended the real peer it saw.
        let req = TestRequest::default()
            .peer_addr("10.1.2.3:5000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "1.1.1.1, 198.51.100.7, 10.9.9.9"))
            .to_http_request();
        assert_eq!(client_ip(&req, &trusted), "198.51.100.7".parse().ok());
        let req = TestRequest::default()
            .peer_addr("127.0.0.1:5000".parse().expect("addr"))
            .insert_header(("forwarded", r#"for="[2001:db8::5]:4711";proto=https"#))
            .to_http_request();
        assert_eq!(client_ip(&req, &trusted), "2001:db8::5".parse().ok());
        // Nothing forwarded: the proxy itself is all there is.
        let req = TestRequest::default().peer_addr("10.1.2.3:5000".parse().expect("addr")).to_http_request();
        assert_eq!(client_ip(&req, &trusted), "10.1.2.3".parse().ok());
    }
}
