//! API key use cases: CreateApiKey, ListApiKeys, RevokeApiKey and ExchangeApiKey.
//!
//! An API key is a session of its own: its id is the session's, and the access tokens an exchange issues
//! carry it as `sid`. So revoking a key is revoking that session, through the revocation hub, and every
//! place that honours revoked sessions (Validate and its memory of live sessions, the revocation log and
//! stream, every guard in every mode) honours revoked keys with nothing added. Disabling the owner ends
//! the key like every other session; a role change ends the keys it leaves worth more than their owner.
//! The secret (`wwk_…`, with a checksum) is shown once and stored only as a keyed hash.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    audit::Origin,
    domain::ApiKey,
    error::AuthError,
    keys::{Claims, IssuedToken, KeyRing, TokenError},
    opaque::{Kind, OpaqueTokens},
    policy::{Exchange, KeyRefusal, KeyTtlRefusal, key_ttl},
    sessions::Sessions,
    store::{NewApiKey, Store},
    throttle::RateLimiter,
};

/// Exchanges per second allowed per key, and the burst. A client needs one exchange per token lifetime
/// (15 minutes by default); this leaves room for a fleet restarting at once, and makes a leaked key no
/// faster a token mint than that.
const EXCHANGE_RATE: f64 = 1.0;
const EXCHANGE_BURST: u32 = 20;

/// How API keys live.
#[derive(Debug, Clone)]
pub struct ApiKeyRules {
    /// The longest lifetime a key may be given (`--api-key-max-ttl`).
    pub max_ttl: Duration,
}

/// What CreateApiKey asks for.
pub struct CreateKey {
    pub name: String,
    /// None: the caller's roles.
    pub roles: Vec<String>,
    pub ttl: Option<Duration>,
    pub user_agent: Option<String>,
}

#[derive(Clone)]
pub struct ApiKeys {
    store: Store,
    keys: Arc<KeyRing>,
    sessions: Sessions,
    opaque: OpaqueTokens,
    /// Per key (its hash): exchanges.
    exchanges: Arc<RateLimiter<Vec<u8>>>,
    rules: ApiKeyRules,
}

impl ApiKeys {
    pub fn new(
        store: Store,
        keys: Arc<KeyRing>,
        sessions: Sessions,
        opaque: OpaqueTokens,
        rules: ApiKeyRules,
    ) -> Self {
        Self {
            store,
            keys,
            sessions,
            opaque,
            exchanges: Arc::new(RateLimiter::new(EXCHANGE_RATE, EXCHANGE_BURST)),
            rules,
        }
    }

    /// Creates a key for the caller with `roles` (each one the caller holds now, or a lower level; none
    /// means the caller's roles), living `ttl` (at most `--api-key-max-ttl`; a year by default). Returns
    /// the key and its secret, which is never shown again.
    pub async fn create(
        &self,
        caller: &Claims,
        create: CreateKey,
        origin: Origin,
    ) -> Result<(ApiKey, String), AuthError> {
        let ttl = key_ttl(create.ttl, self.rules.max_ttl).map_err(|refusal| match refusal {
            KeyTtlRefusal::NotPositive => AuthError::invalid("ttl", "must be positive"),
            KeyTtlRefusal::AboveMax(max) => AuthError::invalid(
                "ttl",
                format!(
                    "must be at most {} (--api-key-max-ttl)",
                    humantime::format_duration(max)
                ),
            ),
        })?;
        let secret = OpaqueTokens::generate(Kind::ApiKey)
            .map_err(|e| AuthError::Internal(format!("randomness: {e}")))?;
        let hash = self
            .opaque
            .hash(Kind::ApiKey, &secret)
            .map_err(|_| AuthError::Internal("a fresh API key has the wrong shape".into()))?;
        let now = watchword_db::now();
        let new = NewApiKey {
            id: uuid::Uuid::now_v7().to_string(),
            user_id: caller.subject.clone(),
            name: create.name,
            roles: create.roles,
            hash,
            expire_time: now + ttl,
            created_in: caller.session_id.clone(),
            user_agent: create.user_agent,
            origin,
        };
        let key = self
            .store
            .create_api_key(new, now)
            .await?
            .map_err(|refusal| match refusal {
                KeyRefusal::UserDisabled => AuthError::UserDisabled,
                KeyRefusal::RoleNotHeld(role) => AuthError::RoleNotHeld { role },
            })?;
        tracing::info!(user_id = %key.user_id, key_id = %key.id, roles = ?key.roles, "created API key");
        Ok((key, secret))
    }

    /// The live keys (neither revoked nor expired) of the caller, or of `user_id` for an admin, oldest
    /// first, after `after`.
    pub async fn list(
        &self,
        caller: &Claims,
        user_id: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<ApiKey>, AuthError> {
        let owner = self.sessions.owner(caller, user_id).await?;
        Ok(self
            .store
            .api_keys(&owner, after, limit, SystemTime::now())
            .await?)
    }

    /// Revokes key `id` (the caller's, or anyone's for an admin): its tokens are refused everywhere within
    /// a second, and it exchanges no more. Idempotent.
    pub async fn revoke(&self, caller: &Claims, id: String, origin: Origin) -> Result<(), AuthError> {
        self.sessions
            .end(caller, id, true, origin)
            .await
            .map_err(|e| match e {
                AuthError::SessionNotFound => AuthError::ApiKeyNotFound,
                other => other,
            })
    }

    /// An ordinary access token for the key's owner, with the key's roles, in the key's session.
    pub async fn exchange(&self, secret: &str) -> Result<IssuedToken, AuthError> {
        if secret.is_empty() {
            return Err(TokenError::Missing.into());
        }
        // A mistyped or truncated key fails its checksum here, before any storage work.
        let hash = self
            .opaque
            .hash(Kind::ApiKey, secret)
            .map_err(|_| TokenError::Claims("not an API key"))?;
        self.exchanges
            .take(hash.clone(), Instant::now())
            .map_err(|retry_after| AuthError::RateLimited { retry_after })?;
        let now = SystemTime::now();
        match self.store.exchange_api_key(hash, now).await? {
            Exchange::Issue { user, key_id } => {
                let issued = self.keys.issue(&user, &key_id, now)?;
                tracing::info!(user_id = %user.id, key_id, token_id = %issued.claims.token_id, "exchanged API key");
                Ok(issued)
            }
            Exchange::Unknown => Err(TokenError::Claims("unknown API key").into()),
            Exchange::Expired => Err(TokenError::Expired.into()),
            Exchange::Revoked => Err(AuthError::Revoked),
            Exchange::UserDisabled => Err(AuthError::UserDisabled),
        }
    }
}
