//! auth-svc's errors and their one mapping to gRPC statuses (with `ErrorInfo` reasons where a client can
//! act on them).

use std::time::Duration;

use tonic::{Code, Status};
use watchword::{
    reason::{self, Reason},
    token::TokenError,
};
use watchword_db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A request field broke a rule; the message names the field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("username is already taken")]
    UsernameTaken,
    /// Unknown user, wrong password or disabled account at login: deliberately one variant, so they
    /// cannot be told apart.
    #[error("invalid username or password")]
    BadCredentials,
    /// The token (access or refresh) is not one we would accept, whatever its session.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token's session was ended (logout, refresh-token reuse, role removal), or its key revoked.
    #[error("token revoked: log in again")]
    Revoked,
    #[error("account disabled")]
    UserDisabled,
    #[error("this call requires the admin role")]
    AdminRequired,
    #[error("user not found")]
    UserNotFound,
    #[error("no signing key with that kid")]
    KeyNotFound,
    /// No such session, or one the caller may not see.
    #[error("session not found")]
    SessionNotFound,
    /// No such API key, or one the caller may not see.
    #[error("API key not found")]
    ApiKeyNotFound,
    /// CreateApiKey asked for a role its caller may not give.
    #[error("an API key may carry only roles you hold (or lower levels); not {role:?}")]
    RoleNotHeld { role: String },
    #[error("this token comes from an API key: revoke the key with RevokeApiKey instead of logging out")]
    ApiKeyLogout,
    #[error("this would leave no enabled admin; make another user an admin first")]
    LastAdmin,
    #[error("too many failed attempts for this account; retry later")]
    AccountLocked { retry_after: Duration },
    #[error("too many requests from this address; retry later")]
    RateLimited { retry_after: Duration },
    #[error("server busy; retry later")]
    Overloaded,
    #[error("too many revocation subscribers; retry later")]
    TooManySubscribers,
    /// This replica cannot read the revocation log, so it cannot vouch for what it streams.
    #[error("revocations unavailable on this replica; retry, or use another replica")]
    RevocationsUnavailable,
    #[error("the signing key comes from --signing-key-file; rotate it by replacing the file")]
    KeyManagedByFile,
    #[error(
        "an account with that username exists and the password given is not its password; nothing changed"
    )]
    BootstrapPasswordMismatch,
    /// A stored key does not open with the key-encryption key we have (or we have none).
    #[error(transparent)]
    Sealing(#[from] crate::sealing::SealError),
    #[error("storage: {0}")]
    Storage(#[from] DbError),
    #[error("internal: {0}")]
    Internal(String),
}

impl AuthError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The same error, naming request field `field` if it names one: a rule written for one field
    /// (`password`) applied to another (`new_password`).
    pub(crate) fn for_field(self, field: &'static str) -> Self {
        match self {
            Self::InvalidArgument { reason, .. } => Self::InvalidArgument { field, reason },
            other => other,
        }
    }
}

impl From<crate::keys::KeyError> for AuthError {
    fn from(error: crate::keys::KeyError) -> Self {
        Self::Internal(format!("signing key: {error}"))
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        let message = error.to_string();
        match error {
            AuthError::InvalidArgument { .. } => Status::invalid_argument(message),
            AuthError::UsernameTaken => Status::already_exists(message),
            AuthError::UserNotFound
            | AuthError::KeyNotFound
            | AuthError::SessionNotFound
            | AuthError::ApiKeyNotFound => Status::not_found(message),
            AuthError::RoleNotHeld { .. } => {
                reason::status(Code::PermissionDenied, Reason::RoleRequired, message)
            }
            AuthError::ApiKeyLogout => Status::failed_precondition(message),
            AuthError::KeyManagedByFile | AuthError::LastAdmin | AuthError::BootstrapPasswordMismatch => {
                Status::failed_precondition(message)
            }
            AuthError::BadCredentials => {
                reason::status(Code::Unauthenticated, Reason::InvalidCredentials, message)
            }
            AuthError::Token(e) => {
                tracing::debug!(cause = %e, "token refused");
                reason::status(Code::Unauthenticated, e.reason(), e.client_message())
            }
            AuthError::Revoked => reason::status(Code::Unauthenticated, Reason::TokenRevoked, message),
            AuthError::UserDisabled => reason::status(Code::Unauthenticated, Reason::UserDisabled, message),
            AuthError::AdminRequired => reason::status(Code::PermissionDenied, Reason::RoleRequired, message),
            AuthError::AccountLocked { retry_after } => retry(Reason::AccountLocked, message, retry_after),
            AuthError::RateLimited { retry_after } => retry(Reason::RateLimited, message, retry_after),
            AuthError::Overloaded => retry(Reason::Overloaded, message, OVERLOADED_RETRY),
            AuthError::TooManySubscribers => retry(Reason::Overloaded, message, SUBSCRIBERS_RETRY),
            AuthError::RevocationsUnavailable => Status::unavailable(message),
            AuthError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::unavailable("storage unavailable, retry later")
            }
            AuthError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error")
            }
            AuthError::Sealing(e) => {
                tracing::error!(error = %e, "stored keys");
                Status::internal("internal error")
            }
        }
    }
}

/// What an overloaded server suggests: about the time a queued hash takes to clear.
const OVERLOADED_RETRY: Duration = Duration::from_millis(250);
/// What a full set of revocation subscribers suggests: a stream ends when its guard goes away, rarely.
const SUBSCRIBERS_RETRY: Duration = Duration::from_secs(5);

fn retry(reason: Reason, message: String, after: Duration) -> Status {
    // Whole milliseconds, at least one: a zero delay would invite a hot retry loop.
    let after = Duration::from_millis(u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1));
    reason::retry_status(Code::ResourceExhausted, reason, message, after)
}
