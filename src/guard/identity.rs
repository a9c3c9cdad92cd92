//! Who the caller is (once the guard has validated the token) and why a call was refused.

use std::time::SystemTime;

use tonic::{Code, Status};

use crate::{
    credentials::CredentialsError,
    reason::{self, Reason},
};

/// The validated caller, inserted into request extensions by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (the token's `sub`).
    pub user_id: String,
    /// The username when the token was issued.
    pub username: String,
    /// Roles granted when the token was issued.
    pub roles: Vec<String>,
    /// The token's `jti`.
    pub token_id: String,
    /// The session the token belongs to (`sid`).
    pub session_id: String,
    /// When the token was issued.
    pub issue_time: SystemTime,
    /// When the token stops being valid.
    pub expire_time: SystemTime,
    /// The key that signed the token (`kid`), so revoking a key can deny its tokens.
    pub key_id: String,
}

impl From<crate::token::Claims> for Identity {
    fn from(claims: crate::token::Claims) -> Self {
        Self {
            user_id: claims.subject,
            username: claims.username,
            roles: claims.roles,
            token_id: claims.token_id,
            session_id: claims.session_id,
            issue_time: claims.issue_time,
            expire_time: claims.expire_time,
            key_id: claims.key_id,
        }
    }
}

impl Identity {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The caller's level: the highest level among its roles (`None` when it holds none).
    pub fn level(&self) -> Option<crate::roles::Level> {
        crate::roles::Level::of(&self.roles)
    }
}

/// The caller of a guarded request.
///
/// A missing identity means the service was wired without the guard: that is a server bug, so it is
/// `INTERNAL`, never a default or anonymous user.
pub fn identity<T>(request: &tonic::Request<T>) -> Result<&Identity, Status> {
    request.extensions().get::<Identity>().ok_or_else(|| {
        tracing::error!("guarded handler called without an Identity: is the AuthLayer installed?");
        Status::internal("internal error")
    })
}

/// Why the guard refused a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuardError {
    /// The metadata held no usable bearer token; auth-svc was not asked.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// auth-svc looked at the token and refused it, for this reason.
    #[error("{message}")]
    Rejected { reason: Reason, message: String },
    /// The token is fine but the policy does not let its roles call this method.
    #[error("this call requires {required}")]
    RoleRequired { required: super::Require },
    /// No verdict could be had (auth-svc down, slow or erroring): fail closed.
    #[error("authentication service unavailable")]
    Unavailable,
}

impl GuardError {
    /// The `ErrorInfo` reason the refusal carries (as [`Status::from`] writes it).
    pub fn reason(&self) -> Reason {
        match self {
            GuardError::Credentials(CredentialsError::Missing) => Reason::TokenMissing,
            GuardError::Credentials(_) => Reason::TokenMalformed,
            GuardError::Rejected { reason, .. } => *reason,
            GuardError::RoleRequired { .. } => Reason::RoleRequired,
            GuardError::Unavailable => Reason::AuthUnavailable,
        }
    }
}

impl From<GuardError> for Status {
    fn from(error: GuardError) -> Self {
        let message = error.to_string();
        match error {
            GuardError::Credentials(CredentialsError::Missing) => reason::status(
                Code::Unauthenticated,
                Reason::TokenMissing,
                "missing authorization: Bearer <token> metadata",
            ),
            GuardError::Credentials(_) => {
                reason::status(Code::Unauthenticated, Reason::TokenMalformed, message)
            }
            GuardError::Rejected { reason, message } => {
                reason::status(Code::Unauthenticated, reason, message)
            }
            GuardError::RoleRequired { .. } => {
                reason::status(Code::PermissionDenied, Reason::RoleRequired, message)
            }
            GuardError::Unavailable => reason::status(Code::Unavailable, Reason::AuthUnavailable, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_of_a_refusal_is_the_one_its_status_carries() {
        let refusals = [
            GuardError::Credentials(CredentialsError::Missing),
            GuardError::Credentials(CredentialsError::Malformed),
            GuardError::Rejected {
                reason: Reason::TokenExpired,
                message: "m".into(),
            },
            GuardError::RoleRequired {
                required: crate::guard::Require::AnyOf(&["admin"]),
            },
            GuardError::Unavailable,
        ];
        for refusal in refusals {
            let reason = refusal.reason();
            assert_eq!(reason::of(&Status::from(refusal)), Some(reason));
        }
    }
}
