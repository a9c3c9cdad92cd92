//! Machine-readable reasons for auth failures, carried as a `google.rpc.ErrorInfo` status detail.
//!
//! Status codes say *what kind* of failure happened; the reason says *what to do about it*: a client that
//! sees `TOKEN_EXPIRED` refreshes, one that sees `TOKEN_REVOKED` or `USER_DISABLED` logs in again (or
//! gives up). Reasons are a stable public contract: add new ones, never rename.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// `ErrorInfo.domain` of every reason below.
pub const ERROR_DOMAIN: &str = "watchword";

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Why an auth-related call failed. See the README for the list and what clients should do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, for documentation and tests.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The `ErrorInfo.reason` string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            pub fn parse(value: &str) -> Option<Self> {
                match value {
                    $($name => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

reasons! {
    /// No credentials were sent. Log in and send `authorization: Bearer <token>`.
    TokenMissing => "TOKEN_MISSING",
    /// The credentials are not shaped like a token (bad scheme, encoding, size). Fix the client.
    TokenMalformed => "TOKEN_MALFORMED",
    /// The token expired. Refresh (or log in again).
    TokenExpired => "TOKEN_EXPIRED",
    /// The session was ended (logout, refresh-token reuse, role removal). Log in again.
    TokenRevoked => "TOKEN_REVOKED",
    /// The token is not one we issued or accept (signature, key, claims, wrong token type). Log in again.
    TokenInvalid => "TOKEN_INVALID",
    /// The account is disabled. Logging in again will not help.
    UserDisabled => "USER_DISABLED",
    /// Wrong username or password (deliberately not saying which).
    InvalidCredentials => "INVALID_CREDENTIALS",
    /// The caller is authenticated but lacks the role this call needs.
    RoleRequired => "ROLE_REQUIRED",
    /// The caller may not act on this resource (e.g. delete someone else's post).
    NotOwner => "NOT_OWNER",
    /// No verdict could be had from auth-svc: retry later.
    AuthUnavailable => "AUTH_UNAVAILABLE",
    /// Too many failed logins for this account: wait for the RetryInfo delay.
    AccountLocked => "ACCOUNT_LOCKED",
    /// Too many calls from this address: wait for the RetryInfo delay.
    RateLimited => "RATE_LIMITED",
    /// The server is at capacity for this kind of work: retry after the RetryInfo delay.
    Overloaded => "OVERLOADED",
    /// The call is one services make to each other (Validate, WatchRevocations) and needs a client
    /// certificate (mutual TLS). Configure the calling service's client certificate.
    ClientCertRequired => "CLIENT_CERT_REQUIRED",
    /// The client certificate is valid, but names no service allowed to make this call.
    CallerNotAllowed => "CALLER_NOT_ALLOWED",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status with `code`, `message` and an `ErrorInfo` detail naming `reason`.
pub fn status(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, HashMap::new()),
    )
}

/// Like [`status`], plus a `google.rpc.RetryInfo` telling the client how long to wait.
pub fn retry_status(code: Code, reason: Reason, message: impl Into<String>, retry_after: Duration) -> Status {
    let mut details = ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, HashMap::new());
    details.set_retry_info(Some(retry_after));
    Status::with_error_details(code, message, details)
}

/// The `RetryInfo` delay carried by `status`, if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// The reason carried by `status`, if it has one of ours.
pub fn of(status: &Status) -> Option<Reason> {
    let info = status.get_details_error_info()?;
    (info.domain == ERROR_DOMAIN)
        .then(|| Reason::parse(&info.reason))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_a_status() {
        for &reason in Reason::ALL {
            let status = status(Code::Unauthenticated, reason, "m");
            assert_eq!(of(&status), Some(reason));
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert!(
                reason
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_')
            );
        }
        assert_eq!(of(&Status::unauthenticated("plain")), None);
    }
}
