//! Password hashing with argon2id. Hashing is deliberately slow, so it runs on the blocking pool, and
//! only a few at a time: each run takes ~19 MiB and tens of ms of a core, so a flood of logins or room
//! passwords would otherwise fill the blocking pool and memory and starve every other login. Past the
//! cap a request waits briefly, then gets 503 `unavailable` with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::ApiError;

/// argon2id parameters, fixed at start-up from the settings.
#[derive(Debug, Clone)]
pub struct PasswordHashing {
    params: Params,
    /// Verifying against this when a username does not exist costs the same time as a real check,
    /// so response times do not reveal which usernames exist.
    dummy_hash: Arc<str>,
    /// One permit per hash allowed to run at once on this node.
    permits: Arc<tokio::sync::Semaphore>,
}

/// How long a request waits for a hashing slot before it is told to come back.
const SLOT_WAIT: Duration = Duration::from_secs(2);

impl PasswordHashing {
    pub fn new(memory_kib: u32, iterations: u32, concurrency: usize) -> Result<Self, String> {
        let params =
            Params::new(memory_kib, iterations, 1, None).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        let dummy = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password(b"chorus-dummy-password")
            .map_err(|e| format!("argon2 self-test failed: {e}"))?
            .to_string();
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        Ok(Self { params, dummy_hash: dummy.into(), permits })
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A hashing slot, held by the blocking task for as long as it runs.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(SLOT_WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::Busy("too many password checks are running on this node")),
        }
    }

    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let hasher = self.argon2();
        let slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            hasher.hash_password(password.as_bytes()).map(|h| h.to_string())
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::Internal(e.to_string().into()))
    }

    /// True when `password` matches `hash`. `hash: None` (unknown user) burns the same time and fails.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let verifier = self.argon2();
        let dummy = self.dummy_hash.clone();
        let slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let ok = verifier.verify_password(password.as_bytes(), hash.as_deref().unwrap_or(&dummy)).is_ok();
            ok && hash.is_some()
        })
        .await
        .map_err(ApiError::internal)
    }
}
