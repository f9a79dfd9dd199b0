//! The chat client every node serves at `/`: a few static files from `src/http/web/` (ES modules,
//! no build step), embedded in the binary. Each answer carries a strict Content-Security-Policy (no
//! inline script or style, nothing from elsewhere; the page talks only to its own node), `nosniff`
//! and `no-referrer`, and an ETag: browsers revalidate (`no-cache`) and get `304` while the binary
//! is the same, so a deploy is seen at once and an unchanged page costs a few hundred bytes.
//!
//! Compressed once: each file is gzipped when first served (about a quarter of its size) and sent
//! so to every client that accepts gzip (`Vary: Accept-Encoding`; each encoding has its own ETag,
//! as HTTP wants for two representations).

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use sha2::{Digest, Sha256};

/// `connect-src 'self'` covers the node's own `ws:`/`wss:` (CSP Level 3); `img-src data:` is the
/// empty favicon. Everything else is refused.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the client, by the path it is served at (`tests/browser` checks that the nodes
/// serve each file of `src/http/web/`, and `tests/api` that every module the page imports is here).
const FILES: &[Asset] = &[
    Asset { path: "/", content_type: HTML, body: include_str!("web/index.html") },
    Asset { path: "/web/app.css", content_type: CSS, body: include_str!("web/app.css") },
    Asset { path: "/web/app.js", content_type: JS, body: include_str!("web/app.js") },
    Asset { path: "/web/state.js", content_type: JS, body: include_str!("web/state.js") },
    Asset { path: "/web/api.js", content_type: JS, body: include_str!("web/api.js") },
    Asset { path: "/web/socket.js", content_type: JS, body: include_str!("web/socket.js") },
    Asset { path: "/web/rooms.js", content_type: JS, body: include_str!("web/rooms.js") },
    Asset { path: "/web/members.js", content_type: JS, body: include_str!("web/members.js") },
    Asset { path: "/web/timeline.js", content_type: JS, body: include_str!("web/timeline.js") },
    Asset { path: "/web/outbox.js", content_type: JS, body: include_str!("web/outbox.js") },
    Asset { path: "/web/events.js", content_type: JS, body: include_str!("web/events.js") },
    Asset { path: "/web/dom.js", content_type: JS, body: include_str!("web/dom.js") },
];

/// A file with its ETag (a hash of the content, the same on every node running the same build) and
/// its gzipped form with that form's ETag.
struct Served {
    asset: &'static Asset,
    etag: HeaderValue,
    gzipped: web::Bytes,
    gzip_etag: HeaderValue,
}

fn gzip(body: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body.as_bytes());
    encoder.finish().unwrap_or_default()
}

static SERVED: LazyLock<Vec<Served>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|asset| {
            let digest = Sha256::digest(asset.body.as_bytes());
            let tag = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]);
            // Quotes and base64url characters are always a valid header value.
            let etag = HeaderValue::from_str(&format!("\"{tag}\"")).unwrap_or(HeaderValue::from_static("\"0\""));
            let gzip_etag =
                HeaderValue::from_str(&format!("\"{tag}-gz\"")).unwrap_or(HeaderValue::from_static("\"0-gz\""));
            Served { asset, etag, gzipped: web::Bytes::from(gzip(asset.body)), gzip_etag }
        })
        .collect()
});

pub fn routes(cfg: &mut web::ServiceConfig) {
    for (index, asset) in FILES.iter().enumerate() {
        // GET and HEAD (actix answers HEAD with the headers and no body).
        let handler = move |req: HttpRequest| async move { serve(&req, index) };
        cfg.service(web::resource(asset.path).route(web::get().to(handler)).route(web::head().to(handler)));
    }
}

fn serve(req: &HttpRequest, index: usize) -> HttpResponse {
    let Some(served) = SERVED.get(index) else {
        return HttpResponse::NotFound().finish();
    };
    let gzipped = accepts_gzip(req) && !served.gzipped.is_empty();
    let etag = if gzipped { &served.gzip_etag } else { &served.etag };
    let unchanged = not_modified(req, etag);
    let mut response = if unchanged { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"));
    if unchanged {
        return response.finish();
    }
    response.content_type(served.asset.content_type);
    if gzipped {
        response.insert_header((header::CONTENT_ENCODING, "gzip")).body(served.gzipped.clone())
    } else {
        response.body(served.asset.body)
    }
}

/// `Accept-Encoding` names `gzip` (or `*`) without `q=0`.
fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers().get_all(header::ACCEPT_ENCODING).filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused =
                parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        },
    )
}

/// `If-None-Match` names this ETag (or `*`), weak or strong.
fn not_modified(req: &HttpRequest, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t).as_bytes() == ours)
}
