//! Access tokens (short-lived JWTs) and refresh tokens (opaque random strings stored hashed).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{JwtAlgorithm, Settings};
use crate::error::ApiError;

/// What an access token says about its bearer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: Uuid,
    /// Username, so a socket can label typing events without a database read.
    pub name: String,
    pub iat: u64,
    pub exp: u64,
    /// The user's token generation when this token was issued: "log out everywhere" moves it on,
    /// and tokens of an older generation are refused (`revocations`). Absent means 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gen: i32,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Signs and verifies access tokens with the one algorithm this cluster is configured for; a token
/// with any other `alg` (including `none`) fails verification.
#[derive(Clone)]
pub struct TokenKeys {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl_s: u64,
    pub refresh_ttl_s: u64,
}

impl TokenKeys {
    pub fn from_settings(s: &Settings) -> Result<Self, String> {
        let read = |p: &Option<std::path::PathBuf>, what: &str| -> Result<Vec<u8>, String> {
            let path = p.as_ref().ok_or_else(|| format!("{what} is not set"))?;
            std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
        };
        let (algorithm, encoding, decoding) = match s.jwt_alg {
            JwtAlgorithm::Hs256 => {
                let secret = s.jwt_secret.as_deref().ok_or("JWT_SECRET is not set")?.as_bytes();
                (Algorithm::HS256, EncodingKey::from_secret(secret), DecodingKey::from_secret(secret))
            }
            JwtAlgorithm::Rs256 => {
                let private = read(&s.jwt_private_key_file, "CHORUS_JWT_PRIVATE_KEY_FILE")?;
                let public = read(&s.jwt_public_key_file, "CHORUS_JWT_PUBLIC_KEY_FILE")?;
                (
                    Algorithm::RS256,
                    EncodingKey::from_rsa_pem(&private).map_err(|e| format!("bad RSA private key: {e}"))?,
                    DecodingKey::from_rsa_pem(&public).map_err(|e| format!("bad RSA public key: {e}"))?,
                )
            }
            JwtAlgorithm::EdDsa => {
                let private = read(&s.jwt_private_key_file, "CHORUS_JWT_PRIVATE_KEY_FILE")?;
                let public = read(&s.jwt_public_key_file, "CHORUS_JWT_PUBLIC_KEY_FILE")?;
                (
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(&private).map_err(|e| format!("bad Ed25519 private key: {e}"))?,
                    DecodingKey::from_ed_pem(&public).map_err(|e| format!("bad Ed25519 public key: {e}"))?,
                )
            }
        };
        let mut validation = Validation::new(algorithm);
        // Nodes share a clock source in practice; a little leeway absorbs skew without stretching the TTL much.
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            algorithm,
            encoding,
            decoding,
            validation,
            access_ttl_s: s.access_token_ttl_s,
            refresh_ttl_s: s.refresh_token_ttl_s,
        })
    }

    pub fn issue_access(&self, user_id: Uuid, username: &str, generation: i32) -> Result<String, ApiError> {
        let now = crate::clock::unix_secs();
        let claims =
            Claims { sub: user_id, name: username.to_owned(), iat: now, exp: now + self.access_ttl_s, gen: generation };
        self.sign(&claims)
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.encoding)
            .map_err(|e| ApiError::Internal(Box::new(e)))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|data| data.claims).map_err(|e| {
            match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::TokenExpired,
                _ => ApiError::Unauthenticated,
            }
        })
    }
}

/// A new opaque refresh token: 256 random bits, URL-safe.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the database stores in place of the token.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}
