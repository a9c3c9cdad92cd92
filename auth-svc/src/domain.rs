//! Validated domain values. Raw request fields are parsed into these at the handler boundary; nothing
//! past it handles an unchecked username or password.

use std::time::SystemTime;

use unicode_normalization::UnicodeNormalization;
use watchword::{reason::Reason, roles::Level};

use crate::error::AuthError;

pub const USERNAME_MIN_CHARS: usize = 3;
pub const USERNAME_MAX_CHARS: usize = 64;
pub const PASSWORD_MAX_BYTES: usize = 1024;

/// The role every new account gets unless `--default-role` says `guest`.
pub const ROLE_USER: &str = "user";
/// The role that may call the admin RPCs (and, in posts-svc, delete any post).
pub const ROLE_ADMIN: &str = "admin";
/// A role list from a request: only known roles (the levels `guest` < `user` < `admin`, see
/// `watchword::roles`), sorted, without repeats.
pub fn parse_roles(roles: Vec<String>) -> Result<Vec<String>, AuthError> {
    let mut parsed = Vec::with_capacity(roles.len());
    for role in roles {
        if Level::parse(&role).is_none() {
            return Err(AuthError::invalid(
                "roles",
                format!(
                    "unknown role {role:?}; known roles: {:?}",
                    Level::ALL.map(Level::as_str)
                ),
            ));
        }
        parsed.push(role);
    }
    parsed.sort();
    parsed.dedup();
    Ok(parsed)
}

/// A user id from a request: a UUID, in canonical form.
pub fn parse_user_id(raw: &str) -> Result<String, AuthError> {
    parse_id("user_id", raw)
}

/// An id (of a user, a session, an API key) from request field `field`: a UUID, in canonical form.
pub fn parse_id(field: &'static str, raw: &str) -> Result<String, AuthError> {
    uuid::Uuid::parse_str(raw)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| AuthError::invalid(field, "must be a UUID"))
}

/// A username: NFKC-normalised for display, with a case-folded key for uniqueness and lookup, so that
/// "Alice", "ALICE" and "Ａｌｉｃｅ" (full-width) are one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    display: String,
    key: String,
}

impl Username {
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let display: String = raw.nfkc().collect();
        let chars = display.chars().count();
        if !(USERNAME_MIN_CHARS..=USERNAME_MAX_CHARS).contains(&chars) {
            return Err(AuthError::invalid(
                "username",
                format!("must be {USERNAME_MIN_CHARS} to {USERNAME_MAX_CHARS} characters"),
            ));
        }
        if !display
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(AuthError::invalid(
                "username",
                "may contain only letters, digits, '.', '_' and '-'",
            ));
        }
        // NFKC(casefold(NFKC(x))): case folding can produce unnormalised text, so normalise again.
        let key = caseless::default_case_fold_str(&display).nfkc().collect();
        Ok(Self { display, key })
    }

    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The case-insensitive identity used for uniqueness.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A password that passed the registration policy (NIST 800-63B: length, a blocklist, no composition rules).
pub struct NewPassword(String);

/// Passwords that meet the length rule but are among the first guesses of any attacker.
const COMMON_PASSWORDS: &[&str] = &[
    "123456789012",
    "1234567890123",
    "12345678901234",
    "123456789123",
    "password1234",
    "password12345",
    "password123456",
    "passwordpassword",
    "qwertyuiopasdf",
    "qwertyuiop123",
    "qwerty123456",
    "iloveyou1234",
    "letmein12345",
    "welcome12345",
    "administrator",
    "abcdefghijkl",
    "abc123456789",
    "111111111111",
    "000000000000",
    "changeme1234",
];

impl NewPassword {
    pub fn parse(raw: String, min_bytes: usize, username: &Username) -> Result<Self, AuthError> {
        check_max_length(&raw)?;
        if raw.len() < min_bytes {
            return Err(AuthError::invalid(
                "password",
                format!("must be at least {min_bytes} bytes"),
            ));
        }
        let folded = caseless::default_case_fold_str(&raw);
        let mut chars = raw.chars();
        let first = chars.next();
        let repeated = chars.all(|c| Some(c) == first);
        if repeated || COMMON_PASSWORDS.contains(&folded.as_str()) || folded.contains(username.key()) {
            return Err(AuthError::invalid(
                "password",
                "is too easy to guess (a common password, one repeated character, or contains the username)",
            ));
        }
        Ok(Self(raw))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Bounds the bytes argon2 will be fed from a login attempt, before any work is done.
pub fn check_max_length(password: &str) -> Result<(), AuthError> {
    if password.len() > PASSWORD_MAX_BYTES {
        return Err(AuthError::invalid(
            "password",
            format!("must be at most {PASSWORD_MAX_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A stored account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub create_time: SystemTime,
    pub disabled: bool,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ROLE_ADMIN)
    }
}

/// A session as GetMe and ListSessions show it: a login's, or an API key's (the key's id is the session's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub create_time: SystemTime,
    /// The last Refresh (an API key: the last ExchangeApiKey).
    pub last_refresh_time: Option<SystemTime>,
    /// When it ends unless refreshed before (an API key: when the key expires).
    pub expire_time: SystemTime,
    pub api_key_id: Option<String>,
    /// Where the Login came from, and the client it named.
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
}

/// An API key as its owner sees it (never its secret). It is a session of its own, with the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub roles: Vec<String>,
    pub create_time: SystemTime,
    pub expire_time: SystemTime,
    /// The last ExchangeApiKey.
    pub last_exchange_time: Option<SystemTime>,
}

pub const API_KEY_NAME_MAX_CHARS: usize = 100;

/// An API key's name from a request: what its owner calls it, 1 to 100 characters after trimming, no
/// control characters.
pub fn parse_api_key_name(raw: &str) -> Result<String, AuthError> {
    let name = raw.trim();
    let chars = name.chars().count();
    if !(1..=API_KEY_NAME_MAX_CHARS).contains(&chars) || name.chars().any(char::is_control) {
        return Err(AuthError::invalid(
            "name",
            format!("must be 1 to {API_KEY_NAME_MAX_CHARS} characters without control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Longest `user-agent` kept with a session, in characters.
const USER_AGENT_MAX_CHARS: usize = 256;

/// A client's `user-agent` metadata as a session keeps it: control characters dropped, at most 256
/// characters; `None` when nothing is left.
pub fn user_agent(raw: &str) -> Option<String> {
    let kept: String = raw
        .chars()
        .filter(|c| !c.is_control())
        .take(USER_AGENT_MAX_CHARS)
        .collect();
    let kept = kept.trim();
    (!kept.is_empty()).then(|| kept.to_owned())
}

/// A stored account with its password hash, as read for login.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// Roles as stored: space-separated names.
pub fn split_roles(roles: &str) -> Vec<String> {
    roles.split_whitespace().map(str::to_owned).collect()
}

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every token of this session.
    Session(String),
    /// Every token of this user: all of them when it is disabled, else those issued up to the revocation.
    User(String),
    /// Every token signed by this key.
    Key(String),
}

impl Target {
    /// The target as stored in the revocation log: (kind, id).
    pub fn columns(&self) -> (&'static str, &str) {
        match self {
            Self::Session(id) => ("session", id),
            Self::User(id) => ("user", id),
            Self::Key(id) => ("key", id),
        }
    }
}

/// A stored revocation, as published to WatchRevocations subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: Target,
    pub revoke_time: SystemTime,
    /// The reason a verifier should give for an affected token.
    pub reason: Reason,
}

impl Revocation {
    pub fn new(target: Target, revoke_time: SystemTime, reason: Reason) -> Self {
        Self {
            target,
            revoke_time,
            reason,
        }
    }

    /// A revocation from its log columns; `None` for a kind this version does not know.
    pub fn from_columns(
        kind: &str,
        id: String,
        reason: Option<Reason>,
        revoke_time: SystemTime,
    ) -> Option<Self> {
        let target = match kind {
            "session" => Target::Session(id),
            "user" => Target::User(id),
            "key" => Target::Key(id),
            _ => return None,
        };
        Some(Self::new(
            target,
            revoke_time,
            reason.unwrap_or(Reason::TokenRevoked),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised_and_case_folded() {
        let a = Username::parse("Alice").unwrap();
        let b = Username::parse("ＡＬＩＣＥ").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(b.as_str(), "ALICE");
        assert_eq!(Username::parse("Straße").unwrap().key(), "strasse");
    }

    #[test]
    fn usernames_outside_the_rules_are_invalid_arguments_naming_the_field() {
        for bad in ["ab", "", "a b c", "bob\u{0}", "x/y", &"a".repeat(65)] {
            let err = Username::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("username:"), "{bad:?}: {err}");
        }
        assert!(Username::parse(&"é".repeat(64)).is_ok());
    }

    #[test]
    fn api_key_names_are_trimmed_printable_and_bounded() {
        assert_eq!(parse_api_key_name("  ci deploy ").unwrap(), "ci deploy");
        assert!(parse_api_key_name("é".repeat(100).as_str()).is_ok());
        for bad in ["", "   ", "a\nb", &"x".repeat(101)] {
            let err = parse_api_key_name(bad).unwrap_err();
            assert!(err.to_string().starts_with("name:"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn user_agents_are_kept_printable_and_bounded() {
        assert_eq!(user_agent("grpc-go/1.60 "), Some("grpc-go/1.60".into()));
        assert_eq!(user_agent("a\nb\u{7}c"), Some("abc".into()));
        assert_eq!(user_agent(" \t"), None);
        assert_eq!(user_agent(&"x".repeat(1000)).unwrap().len(), 256);
    }

    #[test]
    fn password_policy_checks_length_and_guessability_only() {
        let alice = Username::parse("alice").unwrap();
        let ok = |p: &str| NewPassword::parse(p.to_owned(), 12, &alice).is_ok();
        assert!(ok("correct horse battery"));
        assert!(ok("nocomposition"));
        assert!(!ok("short"));
        assert!(!ok(&"x".repeat(1025)));
        assert!(!ok("Password1234"));
        assert!(!ok("aaaaaaaaaaaaaaa"));
        assert!(!ok("ALICE-is-great-2024"));
        assert!(NewPassword::parse("shortpass".into(), 8, &alice).is_ok());
    }
}
