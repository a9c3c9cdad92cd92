//! Admin use cases: roles, listing, disabling and unlocking users, and the audit log. Each takes an
//! [`AdminCaller`], which only [`Admin::require_admin`] makes, so no admin use case can run for a caller
//! nobody checked.

use std::sync::Arc;

use crate::{
    audit::{AuditEvent, AuditQuery, Origin},
    domain::User,
    error::AuthError,
    keys::Claims,
    metrics::AuthMetrics,
    policy::AdminRefusal,
    revocations::RevocationHub,
    store::Store,
};

/// A caller whose account is, as stored *now*, an enabled admin.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    user_id: String,
}

impl AdminCaller {
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self {
            user_id: "test-admin".into(),
        }
    }
}

#[derive(Clone)]
pub struct Admin {
    store: Store,
    hub: Arc<RevocationHub>,
    metrics: AuthMetrics,
}

impl Admin {
    pub fn new(store: Store, hub: Arc<RevocationHub>, metrics: AuthMetrics) -> Self {
        Self { store, hub, metrics }
    }

    /// The caller (already authenticated) as an admin, if its account is an enabled admin *now*: roles are
    /// read from storage, not from the token, so a demotion or disabling takes effect at once.
    pub async fn require_admin(&self, caller: &Claims) -> Result<AdminCaller, AuthError> {
        match self.store.find_user(&caller.subject).await? {
            Some(user) if user.is_admin() && !user.disabled => Ok(AdminCaller { user_id: user.id }),
            _ => Err(AuthError::AdminRequired),
        }
    }

    /// Replaces a user's roles; taking a role away ends the user's sessions at once.
    pub async fn set_roles(
        &self,
        admin: &AdminCaller,
        user_id: String,
        roles: Vec<String>,
        origin: Origin,
    ) -> Result<User, AuthError> {
        let (store, now, actor) = (self.store.clone(), watchword_db::now(), admin.user_id.clone());
        let (user, ended) = self
            .hub
            .record(async move {
                // Name the sessions, not the user: a token from a login right after this must stay valid,
                // and `iat` has only one-second resolution.
                let (user, revocations) = refused(
                    store
                        .set_roles(&user_id, roles, now, Some(&actor), origin)
                        .await?,
                )?;
                Ok::<_, AuthError>(((user, revocations.len()), revocations))
            })
            .await?;
        self.metrics.revoked("role_removed", ended);
        tracing::info!(admin = %admin.user_id, user_id = %user.id, roles = ?user.roles, "set roles");
        Ok(user)
    }

    /// Users in creation order, `limit` at most, after `after`.
    pub async fn list_users(
        &self,
        _admin: &AdminCaller,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<User>, AuthError> {
        Ok(self.store.list_users(after, limit).await?)
    }

    /// Disables a user: its tokens are refused everywhere at once and it can no longer log in.
    pub async fn disable_user(
        &self,
        admin: &AdminCaller,
        user_id: String,
        origin: Origin,
    ) -> Result<User, AuthError> {
        let (store, now, actor) = (self.store.clone(), watchword_db::now(), admin.user_id.clone());
        let user = self
            .hub
            .record(async move {
                let (user, revocation) = refused(store.disable_user(&user_id, now, &actor, origin).await?)?;
                Ok::<_, AuthError>((user, vec![revocation]))
            })
            .await?;
        self.metrics.revoked("user_disabled", 1);
        tracing::info!(admin = %admin.user_id, user_id = %user.id, "disabled user");
        Ok(user)
    }

    /// Lifts a login lockout: the user's (and its devices') failed logins are forgotten.
    pub async fn unlock_user(
        &self,
        admin: &AdminCaller,
        user_id: &str,
        origin: Origin,
    ) -> Result<User, AuthError> {
        let user = self
            .store
            .unlock_user(user_id, watchword_db::now(), &admin.user_id, origin)
            .await?
            .ok_or(AuthError::UserNotFound)?;
        tracing::info!(admin = %admin.user_id, user_id, "unlocked user");
        Ok(user)
    }

    /// Audit events matching `query`, newest first, with their ids.
    pub async fn audit_events(
        &self,
        _admin: &AdminCaller,
        query: AuditQuery,
    ) -> Result<Vec<(i64, AuditEvent)>, AuthError> {
        Ok(self.store.audit_events(query).await?)
    }
}

fn refused<T>(outcome: Result<T, AdminRefusal>) -> Result<T, AuthError> {
    outcome.map_err(|refusal| match refusal {
        AdminRefusal::NotFound => AuthError::UserNotFound,
        AdminRefusal::LastAdmin => AuthError::LastAdmin,
    })
}
