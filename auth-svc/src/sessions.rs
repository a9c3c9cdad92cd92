//! Session use cases: Validate (is this token good *now*?), Refresh (rotation), Logout, and a user's view
//! of their sessions: GetMe, ListSessions, RevokeSession.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    audit::Origin,
    domain::{Session, User},
    error::AuthError,
    keys::{Claims, IssuedToken, KeyRing, TokenError},
    metrics::AuthMetrics,
    opaque::{Kind, OpaqueTokens},
    policy::{CallerRefusal, Rotation, may_manage},
    revocations::{Liveness, RevocationHub},
    store::Store,
};

/// How sessions live.
#[derive(Debug, Clone)]
pub struct SessionRules {
    /// A session ends if its refresh token goes unused this long.
    pub refresh_token_ttl: Duration,
    /// How long after a rotation a repeat of the same Refresh gets the same successor.
    pub refresh_reuse_grace: Duration,
}

/// A refreshed session: a new access token and the refresh token to use next.
pub struct Refreshed {
    pub access: IssuedToken,
    pub refresh_token: String,
    pub refresh_expire_time: SystemTime,
}

/// What a Logout names.
pub enum LogoutBy<'a> {
    /// An access token of the session (only its signature and claims matter: logging out twice is fine).
    AccessToken(&'a str),
    /// A refresh token of the session.
    RefreshToken(&'a str),
}

#[derive(Clone)]
pub struct Sessions {
    store: Store,
    keys: Arc<KeyRing>,
    hub: Arc<RevocationHub>,
    opaque: OpaqueTokens,
    rules: SessionRules,
    metrics: AuthMetrics,
}

impl Sessions {
    pub fn new(
        store: Store,
        keys: Arc<KeyRing>,
        hub: Arc<RevocationHub>,
        opaque: OpaqueTokens,
        rules: SessionRules,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            store,
            keys,
            hub,
            opaque,
            rules,
            metrics,
        }
    }

    /// Checks `token` completely: signature and claims, then that its session is live and its user enabled.
    pub async fn authenticate(&self, token: &str) -> Result<Claims, AuthError> {
        let claims = self.keys.verify(token, SystemTime::now()).await?;
        let live = self.hub.live_sessions();
        let epoch = match live.lookup(&claims.session_id, &claims.subject) {
            Liveness::Live => return Ok(claims),
            Liveness::Unknown(epoch) => epoch,
        };
        let state = self
            .store
            .session_state(&claims.session_id, &claims.subject)
            .await?
            .ok_or(AuthError::Revoked)?;
        if state.user.disabled {
            return Err(AuthError::UserDisabled);
        }
        if state.revoked {
            return Err(AuthError::Revoked);
        }
        live.remember(&claims.session_id, &claims.subject, epoch);
        Ok(claims)
    }

    /// Exchanges a refresh token for a new access token and its successor (see [`Store::rotate_refresh`]).
    pub async fn refresh(&self, presented: &str, origin: Origin) -> Result<Refreshed, AuthError> {
        if presented.is_empty() {
            return Err(TokenError::Missing.into());
        }
        // An access token, or anything else we never issued as a refresh token, has the wrong shape.
        let hash = self
            .opaque
            .hash(Kind::Refresh, presented)
            .map_err(|_| TokenError::Claims("not a refresh token"))?;
        let successor = self
            .opaque
            .successor(presented)
            .map_err(|_| internal("successor shape"))?;
        let successor_hash = self
            .opaque
            .hash(Kind::Refresh, &successor)
            .map_err(|_| internal("successor shape"))?;
        let now = SystemTime::now();
        let (store, rules) = (self.store.clone(), self.rules.clone());
        let rotation = self
            .hub
            .record(async move {
                let rotation = store
                    .rotate_refresh(
                        hash,
                        successor_hash,
                        now,
                        rules.refresh_reuse_grace,
                        rules.refresh_token_ttl,
                        origin,
                    )
                    .await?;
                let revoked = match &rotation {
                    Rotation::Reused(revocation) => vec![revocation.clone()],
                    _ => vec![],
                };
                Ok::<_, AuthError>((rotation, revoked))
            })
            .await?;
        let (user, session_id, refresh_expire_time) = match rotation {
            Rotation::Rotated {
                user,
                session_id,
                expire_time,
            } => (user, session_id, expire_time),
            Rotation::Unknown => return Err(TokenError::Claims("unknown refresh token").into()),
            Rotation::Expired => return Err(TokenError::Expired.into()),
            Rotation::Revoked => return Err(AuthError::Revoked),
            Rotation::UserDisabled => return Err(AuthError::UserDisabled),
            Rotation::Reused(revocation) => {
                self.metrics.revoked("refresh_reuse", 1);
                tracing::warn!(target = ?revocation.target, "rotated refresh token presented again: session revoked");
                return Err(AuthError::Revoked);
            }
        };
        Ok(Refreshed {
            access: self.keys.issue(&user, &session_id, now)?,
            refresh_token: successor,
            refresh_expire_time,
        })
    }

    /// Ends a session: its refresh tokens stop working and its access tokens stop validating at once,
    /// everywhere. Idempotent.
    pub async fn logout(&self, by: LogoutBy<'_>, origin: Origin) -> Result<(), AuthError> {
        let now = SystemTime::now();
        let session_id = match by {
            LogoutBy::AccessToken(token) => self.keys.verify(token, now).await?.session_id,
            LogoutBy::RefreshToken("") => return Err(TokenError::Missing.into()),
            LogoutBy::RefreshToken(token) => {
                let hash = self
                    .opaque
                    .hash(Kind::Refresh, token)
                    .map_err(|_| TokenError::Malformed)?;
                self.store
                    .session_of_refresh(hash)
                    .await?
                    .ok_or(TokenError::Claims("unknown refresh token"))?
            }
        };
        let store = self.store.clone();
        let id = session_id.clone();
        self.hub
            .record(async move {
                let revocation = store.logout(&id, now, origin).await?.map_err(refused)?;
                Ok::<_, AuthError>(((), vec![revocation]))
            })
            .await?;
        self.metrics.revoked("logout", 1);
        tracing::info!(session_id, "logged out");
        Ok(())
    }
}

impl Sessions {
    /// The caller's account as stored now (its current roles, not the token's), and the session of their
    /// token.
    pub async fn me(&self, caller: &Claims) -> Result<(User, Session), AuthError> {
        self.store
            .me(&caller.subject, &caller.session_id)
            .await?
            .ok_or(AuthError::Revoked)
    }

    /// Whose sessions (or keys) `caller` asks about: its own, or, for an enabled admin, `user_id`'s.
    pub async fn owner(&self, caller: &Claims, user_id: Option<String>) -> Result<String, AuthError> {
        match user_id {
            Some(id) if id != caller.subject => {
                let stored = self.store.find_user(&caller.subject).await?;
                match may_manage(stored.as_ref(), &id) {
                    true => Ok(id),
                    false => Err(AuthError::AdminRequired),
                }
            }
            _ => Ok(caller.subject.clone()),
        }
    }

    /// The live sessions (API keys' too) of the caller, or of `user_id` for an admin, in creation order,
    /// after `after`; each with whether it is the caller's own.
    pub async fn list(
        &self,
        caller: &Claims,
        user_id: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<(Session, bool)>, AuthError> {
        let owner = self.owner(caller, user_id).await?;
        let sessions = self
            .store
            .live_sessions(&owner, after, limit, SystemTime::now())
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| {
                let current = session.id == caller.session_id;
                (session, current)
            })
            .collect())
    }

    /// Ends session `session_id` (the caller's, or anyone's for an admin) at once, everywhere.
    /// Idempotent. An API key's session is the key: ending it revokes the key.
    pub async fn revoke(&self, caller: &Claims, session_id: String, origin: Origin) -> Result<(), AuthError> {
        self.end(caller, session_id, false, origin).await
    }

    /// Ends a session, or with `only_api_key` only an API key's, for `caller` (see [`Store::end_session`]).
    pub async fn end(
        &self,
        caller: &Claims,
        session_id: String,
        only_api_key: bool,
        origin: Origin,
    ) -> Result<(), AuthError> {
        let (store, now, caller_id) = (self.store.clone(), SystemTime::now(), caller.subject.clone());
        self.hub
            .record(async move {
                let ended = store
                    .end_session(&caller_id, &session_id, only_api_key, now, origin)
                    .await?
                    .map_err(refused)?;
                Ok::<_, AuthError>(((), ended.into_iter().collect()))
            })
            .await?;
        tracing::info!(caller = %caller.subject, "ended a session");
        Ok(())
    }
}

/// A refused change of a signed-in user's, as the error the caller gets.
pub fn refused(refusal: CallerRefusal) -> AuthError {
    match refusal {
        CallerRefusal::NotFound => AuthError::SessionNotFound,
        CallerRefusal::Revoked => AuthError::Revoked,
        CallerRefusal::UserDisabled => AuthError::UserDisabled,
        CallerRefusal::ApiKeySession => AuthError::ApiKeyLogout,
    }
}

fn internal(what: &str) -> AuthError {
    AuthError::Internal(what.to_owned())
}
