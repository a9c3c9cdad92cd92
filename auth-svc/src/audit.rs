//! Audit events: a record of security-relevant actions, stored in auth-svc's database and written by the
//! storage rule that makes the change, in the same transaction, so an action that fails (or whose
//! transaction rolls back) leaves no event and a committed one always has its event. Never a password, a
//! token or a key secret: only ids, names, roles and reasons.

use std::{net::IpAddr, time::SystemTime};

macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What happened. The names are a public contract (`auth.v1.AuditEventKind`): add, never rename.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum AuditKind {
            $($(#[$doc])* $variant,)*
        }

        impl AuditKind {
            /// Every kind, for documentation and tests.
            pub const ALL: &'static [AuditKind] = &[$(AuditKind::$variant,)*];

            /// The name, as stored and as the proto enum value is called.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(AuditKind::$variant => $name,)*
                }
            }

            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(AuditKind::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

kinds! {
    /// A login started a session (`session_id`).
    LoginSucceeded => "LOGIN_SUCCEEDED",
    /// A login or a password check failed; `detail` has the normalised username and the reason.
    LoginFailed => "LOGIN_FAILED",
    /// Failed logins locked the account (or one of its device tokens' budgets).
    AccountLocked => "ACCOUNT_LOCKED",
    /// An admin lifted a lockout (UnlockUser).
    AccountUnlocked => "ACCOUNT_UNLOCKED",
    /// The session's holder ended it (Logout).
    Logout => "LOGOUT",
    /// A rotated refresh token came back after the grace window: the session was revoked.
    RefreshReuseDetected => "REFRESH_REUSE_DETECTED",
    /// The user changed their password; their other sessions ended.
    PasswordChanged => "PASSWORD_CHANGED",
    /// A session was ended by RevokeSession (its owner, or an admin).
    SessionRevoked => "SESSION_REVOKED",
    /// An admin (or `--bootstrap-admin`) changed a user's roles.
    RolesChanged => "ROLES_CHANGED",
    /// An admin disabled a user.
    UserDisabled => "USER_DISABLED",
    /// A new signing key signs from now on.
    SigningKeyRotated => "SIGNING_KEY_ROTATED",
    /// A signing key was revoked.
    SigningKeyRevoked => "SIGNING_KEY_REVOKED",
    /// An API key was created (`session_id` is the key's id).
    ApiKeyCreated => "API_KEY_CREATED",
    /// An API key was revoked (`session_id` is the key's id).
    ApiKeyRevoked => "API_KEY_REVOKED",
    /// An account was created (Register, or `--bootstrap-admin`).
    UserRegistered => "USER_REGISTERED",
}

/// Where a call came from, for the audit log: the client's address (through `--trusted-proxies`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub client: Option<IpAddr>,
}

impl Origin {
    /// No client: an action of the operator's (`--bootstrap-admin`).
    pub fn operator() -> Self {
        Self::default()
    }
}

/// One audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub time: SystemTime,
    /// Who acted: a user id, or `None` (an anonymous caller, the operator, or a stranger's login attempt).
    pub actor_id: Option<String>,
    /// Whom it concerns: a user id, or `None` (a login attempt for a name no account has, a signing key).
    pub subject_id: Option<String>,
    pub client_address: Option<String>,
    /// The session it concerns (for API key events, the key's id), where there is one.
    pub session_id: Option<String>,
    /// What else matters, as `name=value` pairs: never a secret.
    pub detail: String,
}

impl AuditEvent {
    /// An event of `kind` at `time`, from `origin`, with nothing else set yet.
    pub fn new(kind: AuditKind, time: SystemTime, origin: &Origin) -> Self {
        Self {
            kind,
            time,
            actor_id: None,
            subject_id: None,
            client_address: origin.client.map(|ip| ip.to_string()),
            session_id: None,
            detail: String::new(),
        }
    }

    pub fn actor(mut self, id: impl Into<String>) -> Self {
        self.actor_id = Some(id.into());
        self
    }

    pub fn subject(mut self, id: impl Into<String>) -> Self {
        self.subject_id = Some(id.into());
        self
    }

    pub fn subject_opt(mut self, id: Option<String>) -> Self {
        self.subject_id = id;
        self
    }

    pub fn session(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Adds `name=value` to the detail (values are ids, names, roles and reasons, never secrets).
    pub fn detail(mut self, name: &str, value: impl std::fmt::Display) -> Self {
        if !self.detail.is_empty() {
            self.detail.push(' ');
        }
        self.detail.push_str(&format!("{name}={value}"));
        self
    }
}

/// Which audit events to list: newest first, before `before_id` (exclusive), `limit` at most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Events whose actor or subject is this user.
    pub user_id: Option<String>,
    pub kind: Option<AuditKind>,
    /// Events at or after this instant.
    pub since: Option<SystemTime>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_are_upper_snake_case() {
        assert_eq!(AuditKind::ALL.len(), 15);
        for &kind in AuditKind::ALL {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
            assert!(kind.as_str().bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
        assert_eq!(AuditKind::parse("login_succeeded"), None);
    }

    #[test]
    fn details_are_name_value_pairs() {
        let event = AuditEvent::new(
            AuditKind::RolesChanged,
            SystemTime::UNIX_EPOCH,
            &Origin::operator(),
        )
        .detail("from", "user")
        .detail("to", "admin,user");
        assert_eq!(event.detail, "from=user to=admin,user");
        assert_eq!(event.client_address, None);
    }
}
