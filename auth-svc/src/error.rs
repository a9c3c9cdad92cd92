//! auth-svc's errors and their one mapping to gRPC statuses (with `ErrorInfo` reasons where a client can
//! act on them).

use std::time::Duration;

use tonic::{Code, Status};
use watchword::reason::{self, Reason};
use watchword_db::DbError;

use crate::tokens::TokenError;

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
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("account disabled")]
    UserDisabled,
    #[error("this call requires the admin role")]
    AdminRequired,
    #[error("user not found")]
    UserNotFound,
    #[error("too many failed attempts for this account; retry later")]
    AccountLocked { retry_after: Duration },
    #[error("too many requests from this address; retry later")]
    RateLimited { retry_after: Duration },
    #[error("server busy; retry later")]
    Overloaded,
    #[error("the signing key comes from --signing-key-file; rotate it by replacing the file")]
    KeyManagedByFile,
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
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::InvalidArgument { .. } => Status::invalid_argument(error.to_string()),
            AuthError::UsernameTaken => Status::already_exists(error.to_string()),
            AuthError::UserNotFound => Status::not_found(error.to_string()),
            AuthError::KeyManagedByFile => Status::failed_precondition(error.to_string()),
            AuthError::BadCredentials => reason::status(
                Code::Unauthenticated,
                Reason::InvalidCredentials,
                error.to_string(),
            ),
            AuthError::Token(e) => {
                tracing::debug!(cause = %e, "token refused");
                reason::status(Code::Unauthenticated, e.reason(), e.client_message())
            }
            AuthError::UserDisabled => {
                reason::status(Code::Unauthenticated, Reason::UserDisabled, error.to_string())
            }
            AuthError::AdminRequired => {
                reason::status(Code::PermissionDenied, Reason::RoleRequired, error.to_string())
            }
            AuthError::AccountLocked { retry_after } => retry(Reason::AccountLocked, &error, retry_after),
            AuthError::RateLimited { retry_after } => retry(Reason::RateLimited, &error, retry_after),
            AuthError::Overloaded => retry(Reason::Overloaded, &error, OVERLOADED_RETRY),
            AuthError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::unavailable("storage unavailable, retry later")
            }
            AuthError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// What an overloaded server suggests: about the time a queued hash takes to clear.
const OVERLOADED_RETRY: Duration = Duration::from_millis(250);

fn retry(reason: Reason, error: &AuthError, after: Duration) -> Status {
    // Whole milliseconds, at least one: a zero delay would invite a hot retry loop.
    let after = Duration::from_millis(u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1));
    reason::retry_status(Code::ResourceExhausted, reason, error.to_string(), after)
}
