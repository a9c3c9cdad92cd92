//! Local verification for the guard: check signatures with auth-svc's published keys (JWKS) instead of
//! calling Validate, while still honouring the revocation stream.
//!
//! Decisions and reasons match remote mode because the checks are the same code
//! ([`crate::token::Verifier`]) and revocations carry the reason auth-svc would give. When the revocation
//! feed is not live, or no key set has been fetched yet, it falls back to asking auth-svc, so it never
//! accepts a token it could not fully check.

use std::{
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

use super::{GuardError, Identity, RemoteValidator, Validator, feed::RevocationFeed};
use crate::{
    pb::auth::v1::{GetJwksRequest, GetJwksResponse, auth_service_client::AuthServiceClient},
    token::{TokenError, Verifier},
};

pub struct LocalValidator {
    remote: RemoteValidator,
    revocations: Arc<RevocationFeed>,
    verifier: RwLock<Option<Verifier>>,
    refetch_interval: Duration,
    last_fetch: Mutex<Option<Instant>>,
}

impl LocalValidator {
    /// Fetches the key set once now (failure is fine: it falls back to `remote` until a fetch succeeds).
    pub async fn new(
        remote: RemoteValidator,
        revocations: Arc<RevocationFeed>,
        refetch_interval: Duration,
    ) -> Self {
        let validator = Self {
            remote,
            revocations,
            verifier: RwLock::new(None),
            refetch_interval,
            last_fetch: Mutex::new(None),
        };
        validator.refetch().await;
        validator
    }

    /// Fetches the key set if the last attempt is at least `refetch_interval` old. A failed fetch keeps
    /// the last good set.
    async fn refetch(&self) {
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < self.refetch_interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut client = AuthServiceClient::new(self.remote.channel());
        let fetched = tokio::time::timeout(self.remote.timeout(), client.get_jwks(GetJwksRequest {})).await;
        match fetched {
            Ok(Ok(response)) => match verifier_from(response.into_inner()) {
                Some(verifier) => {
                    tracing::info!(keys = verifier.key_count(), "fetched JWKS");
                    *self.verifier.write().unwrap_or_else(PoisonError::into_inner) = Some(verifier);
                }
                None => tracing::warn!("JWKS response unusable; keeping the previous key set"),
            },
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), "fetching JWKS failed; keeping the previous key set")
            }
            Err(_) => tracing::warn!("fetching JWKS timed out; keeping the previous key set"),
        }
    }

    fn verify(&self, token: &str) -> Option<Result<Identity, TokenError>> {
        let verifier = self.verifier.read().unwrap_or_else(PoisonError::into_inner);
        let verifier = verifier.as_ref()?;
        Some(verifier.verify(token, SystemTime::now()).map(Identity::from))
    }
}

/// A verifier for the keys and claims in a JWKS response; `None` if it names nothing we can use.
fn verifier_from(response: GetJwksResponse) -> Option<Verifier> {
    let lifetime = response
        .max_token_lifetime
        .and_then(|d| Duration::try_from(d).ok())?;
    let mut verifier = Verifier::new(&response.issuer, &response.audience, lifetime);
    for key in response.keys {
        let usable = key.kty == "OKP" && key.crv == "Ed25519" && key.alg == "EdDSA" && key.r#use == "sig";
        let x = URL_SAFE_NO_PAD
            .decode(&key.x)
            .ok()
            .and_then(|x| <[u8; 32]>::try_from(x).ok());
        match x {
            // The kid is recomputed from the key itself, never taken on trust.
            Some(x) if usable => verifier.insert_key(&x),
            _ => tracing::warn!(kid = %key.kid, "ignoring unusable JWK"),
        }
    }
    (verifier.key_count() > 0).then_some(verifier)
}

impl Validator for LocalValidator {
    async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
        if !self.revocations.is_live() {
            return self.remote.validate(token).await;
        }
        let mut verdict = self.verify(token);
        if matches!(verdict, None | Some(Err(TokenError::UnknownKey))) {
            // A key we have not seen: perhaps a rotation. Refetch (rate limited) and try once more.
            self.refetch().await;
            verdict = self.verify(token);
        }
        let identity = match verdict {
            // Still no key for it (or none at all): let auth-svc decide rather than guess. Forged kids cost a
            // remote call, never a wrong answer.
            None | Some(Err(TokenError::UnknownKey)) => return self.remote.validate(token).await,
            Some(Ok(identity)) => identity,
            Some(Err(error)) => {
                return Err(GuardError::Rejected {
                    reason: error.reason(),
                    message: error.client_message().to_owned(),
                });
            }
        };
        self.revocations.check(&identity)?;
        Ok(identity)
    }
}
