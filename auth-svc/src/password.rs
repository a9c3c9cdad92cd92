//! Password hashing with argon2id.
//!
//! Hashing costs ~35 ms of CPU by design, so it always runs on tokio's blocking pool: an async worker
//! busy hashing would stall every other call on it (Validate included).

use std::sync::Arc;

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::error::AuthError;

/// OWASP's argon2id recommendation: 19 MiB of memory, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// Hashing requests allowed to wait for a worker, per core. Beyond this a request is refused at once
/// (RESOURCE_EXHAUSTED) instead of queueing without bound while its client times out.
const QUEUE_PER_CORE: usize = 8;

#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// One permit per core: argon2 work never takes more CPUs than there are, so Validate always has room.
    workers: Arc<Semaphore>,
    /// Admission: hashing work running or waiting.
    admitted: Arc<Semaphore>,
    /// Verified against when the username is unknown, so that case costs the same as a wrong password.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub async fn new() -> Result<Self, AuthError> {
        let params = Params::new(MEMORY_KIB, PASSES, LANES, None)
            .map_err(|e| AuthError::Internal(format!("argon2 params: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut hasher = Self {
            argon2,
            workers: Arc::new(Semaphore::new(cores)),
            admitted: Arc::new(Semaphore::new(cores * (QUEUE_PER_CORE + 1))),
            dummy_hash: Arc::from(""),
        };
        hasher.dummy_hash = hasher
            .hash("not a real password, only here to spend time".to_owned())
            .await?
            .into();
        Ok(hasher)
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a fresh random salt.
    pub async fn hash(&self, password: String) -> Result<String, AuthError> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| AuthError::Internal(format!("argon2 hash: {e}")))
        })
        .instrument(tracing::debug_span!("argon2_hash"))
        .await
    }

    /// Whether `password` matches `stored`. With `stored = None` (no such user) it does the same work
    /// against a dummy hash and returns `false`.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, AuthError> {
        let argon2 = self.argon2.clone();
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        self.run(move || {
            let parsed =
                PasswordHash::new(&stored).map_err(|e| AuthError::Internal(format!("stored hash: {e}")))?;
            let matches = argon2.verify_password(password.as_bytes(), &parsed).is_ok();
            Ok(matches && known)
        })
        .instrument(tracing::debug_span!("argon2_verify"))
        .await
    }
}

/// Permission to do password work, taken when a Login or Register *starts* (before it touches storage),
/// so excess calls are refused at once instead of piling up on the database and hashing queues.
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl PasswordHasher {
    /// Admits one more call that will hash, or refuses if as many are running or waiting as the cores can
    /// clear promptly.
    pub fn admit(&self) -> Result<Admission, AuthError> {
        Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map(|permit| Admission { _permit: permit })
            .map_err(|_| AuthError::Overloaded)
    }

    /// Runs `f` on the blocking pool once a core is free, or refuses at once if too much is waiting.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let _worker = self
            .workers
            .acquire()
            .await
            .map_err(|_| AuthError::Internal("hashing pool closed".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| AuthError::Internal(format!("hashing task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_only_with_the_right_password_and_never_for_unknown_users() {
        let hasher = PasswordHasher::new().await.unwrap();
        let hash = hasher.hash("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            hasher
                .verify("correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse battery".into(), Some(hash))
                .await
                .unwrap()
        );
        let dummy = "not a real password, only here to spend time".to_owned();
        assert!(!hasher.verify(dummy, None).await.unwrap());
    }
}
