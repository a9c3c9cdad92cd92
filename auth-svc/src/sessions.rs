//! Session use cases: Validate (is this token good *now*?), Refresh (rotation) and Logout.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    audit::Origin,
    error::AuthError,
    keys::{Claims, IssuedToken, KeyRing, TokenError},
    opaque::{Kind, OpaqueTokens},
    policy::Rotation,
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
}

impl Sessions {
    pub fn new(
        store: Store,
        keys: Arc<KeyRing>,
        hub: Arc<RevocationHub>,
        opaque: OpaqueTokens,
        rules: SessionRules,
    ) -> Self {
        Self {
            store,
            keys,
            hub,
            opaque,
            rules,
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
            .record(async move { Ok::<_, AuthError>(((), vec![store.logout(&id, now, origin).await?])) })
            .await?;
        tracing::info!(session_id, "logged out");
        Ok(())
    }
}

fn internal(what: &str) -> AuthError {
    AuthError::Internal(what.to_owned())
}
