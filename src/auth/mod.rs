//! Authentication: password hashing, token issue and verification, and who the caller is. Turning a
//! presented token into an [`AuthUser`] (verification plus revocation) is `service::accounts::authenticate`,
//! which every transport calls; the HTTP extractor is in `http::extract`.

pub mod password;
pub mod tokens;

use actix_web::{web, HttpRequest};
use uuid::Uuid;

use self::tokens::Claims;

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

impl From<Claims> for AuthUser {
    fn from(claims: Claims) -> Self {
        AuthUser { id: claims.sub, username: claims.name, expires_at: claims.exp, generation: claims.gen }
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

/// The WebSocket subprotocol a browser offers beside [`SUBPROTOCOL_TOKEN_PREFIX`]`<token>`, and the one
/// the upgrade selects: a browser fails the connection unless the server echoes one it offered, and
/// the server must never echo the token.
pub const SUBPROTOCOL: &str = "chorus.v1";
/// `Sec-WebSocket-Protocol: chorus.v1, chorus.bearer.<access token>`: how a browser hands the
/// upgrade its token without putting it in the URL (a JWT is base64url with dots: valid there).
pub const SUBPROTOCOL_TOKEN_PREFIX: &str = "chorus.bearer.";

/// What the upgrade's `Sec-WebSocket-Protocol` offers: the token, if one rides there, and whether
/// [`SUBPROTOCOL`] is offered (then the response must select it).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OfferedProtocols {
    pub token: Option<String>,
    pub chorus: bool,
}

pub fn offered_protocols(req: &HttpRequest) -> OfferedProtocols {
    let mut offered = OfferedProtocols::default();
    let values = req.headers().get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL);
    for protocol in values.filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim) {
        if protocol == SUBPROTOCOL {
            offered.chorus = true;
        } else if let Some(token) = protocol.strip_prefix(SUBPROTOCOL_TOKEN_PREFIX) {
            if offered.token.is_none() && !token.is_empty() {
                offered.token = Some(token.to_owned());
            }
        }
    }
    offered
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}
