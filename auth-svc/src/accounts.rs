//! Account use cases: Register, Login (with lockout and device tokens) and the first admin.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use watchword::roles::Level;

use crate::{
    audit::Origin,
    domain::{NewPassword, ROLE_ADMIN, ROLE_USER, User, Username, check_max_length, parse_roles},
    error::AuthError,
    keys::{Claims, IssuedToken, KeyRing},
    metrics::AuthMetrics,
    opaque::{Kind, OpaqueTokens},
    password::PasswordHasher,
    policy::Attempt,
    revocations::RevocationHub,
    sessions::refused,
    store::{NewSession, PasswordChange, Store},
    throttle::{PeerLimiter, TrustedProxies},
};

/// How long a device token marks a device as the account holder's.
const DEVICE_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The account rules from the command line.
#[derive(Debug, Clone)]
pub struct AccountRules {
    pub min_password_length: usize,
    /// Failed logins in a row before an account (or a device) is locked.
    pub lockout_threshold: u32,
    pub refresh_token_ttl: Duration,
    /// Login and Register calls per second per client, and the burst; rate 0 turns the limit off.
    pub peer_rate: f64,
    pub peer_burst: u32,
    pub trusted_proxies: TrustedProxies,
    /// The role of a new registration (`--default-role`).
    pub default_role: Level,
}

/// Where a call came from: the TCP peer and the `x-forwarded-for` values it sent.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Option<IpAddr>,
    pub forwarded_for: Vec<String>,
}

impl Peer {
    /// The client, for per-client limits and the audit log: the TCP peer, or, when that is one of
    /// `proxies`, the client its `x-forwarded-for` names (see [`TrustedProxies::client`]).
    pub fn origin(&self, proxies: &TrustedProxies) -> Origin {
        let forwarded: Vec<&str> = self.forwarded_for.iter().map(String::as_str).collect();
        Origin {
            client: self.addr.map(|addr| proxies.client(addr, &forwarded)),
        }
    }
}

pub struct Login {
    pub username: String,
    pub password: String,
    /// The device token of an earlier successful login, if the client kept one.
    pub device_token: Option<String>,
    pub peer: Peer,
    /// The client's `user-agent`, kept with the session (see `domain::user_agent`).
    pub user_agent: Option<String>,
}

pub struct LoggedIn {
    pub access: IssuedToken,
    pub session_id: String,
    pub refresh_token: String,
    pub refresh_expire_time: SystemTime,
    pub device_token: String,
}

#[derive(Clone)]
pub struct Accounts {
    store: Store,
    hasher: PasswordHasher,
    keys: Arc<KeyRing>,
    hub: Arc<RevocationHub>,
    opaque: OpaqueTokens,
    peers: Arc<PeerLimiter>,
    rules: AccountRules,
    metrics: AuthMetrics,
}

impl Accounts {
    pub fn new(
        store: Store,
        hasher: PasswordHasher,
        keys: Arc<KeyRing>,
        hub: Arc<RevocationHub>,
        opaque: OpaqueTokens,
        rules: AccountRules,
        metrics: AuthMetrics,
    ) -> Self {
        Self {
            store,
            hasher,
            keys,
            hub,
            opaque,
            peers: Arc::new(PeerLimiter::new(rules.peer_rate, rules.peer_burst)),
            rules,
            metrics,
        }
    }

    /// Where `peer` says the call came from, after applying the per-client rate limit to it (calls that
    /// did not come over TCP are not limited).
    fn check_peer(&self, peer: &Peer) -> Result<Origin, AuthError> {
        let origin = peer.origin(&self.rules.trusted_proxies);
        let Some(client) = origin.client else {
            return Ok(origin);
        };
        self.peers
            .check(client, Instant::now())
            .map_err(|retry_after| AuthError::RateLimited { retry_after })?;
        Ok(origin)
    }

    /// Creates an account with the default role (`--default-role`: `user`, or `guest`).
    pub async fn register(&self, username: &str, password: String, peer: &Peer) -> Result<User, AuthError> {
        let origin = self.check_peer(peer)?;
        let role = self.rules.default_role.as_str().to_owned();
        let user = self.create_user(username, password, vec![role], origin).await?;
        tracing::info!(user_id = %user.id, "registered user");
        Ok(user)
    }

    /// Registers a user with `roles`, enforcing the username and password rules.
    async fn create_user(
        &self,
        username: &str,
        password: String,
        roles: Vec<String>,
        origin: Origin,
    ) -> Result<User, AuthError> {
        let admission = self.hasher.admit()?;
        let username = Username::parse(username)?;
        let password = NewPassword::parse(password, self.rules.min_password_length, &username)?;
        let hash = self.hasher.hash(admission, password.into_inner()).await?;
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_owned(),
            roles,
            create_time: watchword_db::now(),
            disabled: false,
        };
        self.store
            .insert_user(user.clone(), username, hash, origin)
            .await
            .map_err(|e| match e.is_unique_violation() {
                true => AuthError::UsernameTaken,
                false => AuthError::Storage(e),
            })?;
        Ok(user)
    }

    /// Checks a username and password and starts a session.
    ///
    /// The attempt is counted before the password is checked (see [`Store::begin_login_attempt`]), against
    /// the presented device token's own budget when it is a live one of this account, else against the
    /// account's. An unknown username is treated exactly like a wrong password: same throttling, same
    /// argon2 work, same answer; so is a disabled account. The session and its token come from the user as
    /// stored when the session is created, not as read before hashing. The outcome is counted.
    pub async fn login(&self, login: Login) -> Result<LoggedIn, AuthError> {
        let result = self.attempt_login(login).await;
        self.metrics.login(&result);
        result
    }

    async fn attempt_login(&self, login: Login) -> Result<LoggedIn, AuthError> {
        let origin = self.check_peer(&login.peer)?;
        let admission = self.hasher.admit()?;
        check_max_length(&login.password)?;
        let now = watchword_db::now();
        let parsed = Username::parse(&login.username).ok();
        let key = parsed
            .as_ref()
            .map_or_else(|| impossible_key(&login.username), |u| u.key().to_owned());
        let device = login
            .device_token
            .as_deref()
            .and_then(|token| Some((token, self.opaque.hash(Kind::Device, token).ok()?)));
        let reserved = self
            .store
            .begin_login_attempt(
                &key,
                device.as_ref().map(|(_, hash)| hash.clone()),
                self.rules.lockout_threshold,
                now,
                None,
                origin.clone(),
            )
            .await?
            .map_err(|retry_after| AuthError::AccountLocked { retry_after })?;
        let found = match &parsed {
            Some(username) => self.store.find_credentials(username).await?,
            None => None,
        };
        let stored_hash = found.as_ref().map(|c| c.password_hash.clone());
        let matches = self.hasher.verify(admission, login.password, stored_hash).await?;
        let user_id = match found {
            Some(credentials) if matches => credentials.user.id,
            _ => return Err(AuthError::BadCredentials),
        };

        let session_id = uuid::Uuid::now_v7().to_string();
        let refresh_token = generate(Kind::Refresh)?;
        let refresh_hash = self
            .opaque
            .hash(Kind::Refresh, &refresh_token)
            .map_err(|_| shape())?;
        let refresh_expire_time = now + self.rules.refresh_token_ttl;
        // A device that presented its token keeps it; any other gets one now.
        let (device_token, new_device) = match (&reserved.attempt, device) {
            (Attempt::Device(_), Some((token, _))) => (token.to_owned(), None),
            _ => {
                let token = generate(Kind::Device)?;
                let hash = self.opaque.hash(Kind::Device, &token).map_err(|_| shape())?;
                (token, Some(hash))
            }
        };
        let new = NewSession {
            reserved,
            username_key: key,
            user_id,
            session_id: session_id.clone(),
            refresh_hash,
            refresh_expire_time,
            new_device: new_device.map(|hash| (hash, now + DEVICE_TOKEN_TTL)),
            origin,
            user_agent: login.user_agent,
        };
        // Disabled since the password check: fails like a wrong password.
        let user = self
            .store
            .start_session(new, now)
            .await?
            .ok_or(AuthError::BadCredentials)?;
        let access = self.keys.issue(&user, &session_id, now)?;
        tracing::info!(user_id = %user.id, session_id, token_id = %access.claims.token_id, "logged in");
        Ok(LoggedIn {
            access,
            session_id,
            refresh_token,
            refresh_expire_time,
            device_token,
        })
    }

    /// Replaces the caller's password. The current password is checked as Login checks it (the attempt
    /// reserved against the account's lockout budget first, then the same argon2 work); the new one must
    /// meet the password policy. Every other session of the user (its API keys too: whoever knew the old
    /// password may have made them) ends at once, everywhere; the caller's session stays live.
    pub async fn change_password(
        &self,
        caller: &Claims,
        current: String,
        new: String,
        origin: Origin,
    ) -> Result<(), AuthError> {
        let admission = self.hasher.admit()?;
        check_max_length(&current).map_err(|e| e.for_field("current_password"))?;
        let (credentials, username_key) = self
            .store
            .credentials_of(&caller.subject)
            .await?
            .ok_or(AuthError::Revoked)?;
        let username = Username::parse(&credentials.user.username)?;
        let new = NewPassword::parse(new, self.rules.min_password_length, &username)
            .map_err(|e| e.for_field("new_password"))?;
        let now = watchword_db::now();
        let reserved = self
            .store
            .begin_login_attempt(
                &username_key,
                None,
                self.rules.lockout_threshold,
                now,
                Some(&caller.subject),
                origin.clone(),
            )
            .await?
            .map_err(|retry_after| AuthError::AccountLocked { retry_after })?;
        let stored = Some(credentials.password_hash);
        if !self.hasher.verify(admission, current, stored).await? {
            return Err(AuthError::BadCredentials);
        }
        let hash = self.hasher.hash(self.hasher.admit()?, new.into_inner()).await?;
        let change = PasswordChange {
            user_id: caller.subject.clone(),
            session_id: caller.session_id.clone(),
            username_key,
            hash,
            reserved,
            origin,
        };
        let store = self.store.clone();
        self.hub
            .record(async move {
                let ended = store.change_password(change, now).await?.map_err(refused)?;
                Ok::<_, AuthError>(((), ended))
            })
            .await?;
        tracing::info!(user_id = %caller.subject, session_id = %caller.session_id, "changed password");
        Ok(())
    }

    /// Creates `username` as an admin (roles admin and user), or, when the account exists and `password`
    /// is its password, gives it the admin role. For `auth-svc --bootstrap-admin`.
    pub async fn bootstrap_admin(&self, username: &str, password: String) -> Result<String, AuthError> {
        let roles = vec![ROLE_ADMIN.to_owned(), ROLE_USER.to_owned()];
        match self
            .create_user(username, password.clone(), roles, Origin::operator())
            .await
        {
            Ok(user) => return Ok(format!("created admin {} ({})", user.username, user.id)),
            Err(AuthError::UsernameTaken) => {}
            Err(e) => return Err(e),
        }
        // Whoever registered the name first must not become admin by the operator's command: the operator
        // must know the account's password.
        let parsed = Username::parse(username)?;
        let existing = self.store.find_credentials(&parsed).await?;
        let stored = existing.as_ref().map(|c| c.password_hash.clone());
        let matches = self.hasher.verify(self.hasher.admit()?, password, stored).await?;
        let existing = match existing {
            Some(credentials) if matches => credentials.user,
            _ => return Err(AuthError::BootstrapPasswordMismatch),
        };
        let mut roles = existing.roles.clone();
        roles.push(ROLE_ADMIN.to_owned());
        let roles = parse_roles(roles)?;
        self.store
            .set_roles(&existing.id, roles, watchword_db::now(), None, Origin::operator())
            .await?
            .map_err(|_| AuthError::UserNotFound)?;
        Ok(format!(
            "granted admin to existing user {} ({})",
            existing.username, existing.id
        ))
    }
}

fn generate(kind: Kind) -> Result<String, AuthError> {
    OpaqueTokens::generate(kind).map_err(|e| AuthError::Internal(format!("randomness: {e}")))
}

fn shape() -> AuthError {
    AuthError::Internal("a fresh token has the wrong shape".into())
}

/// The lockout key for a username that cannot be registered. `~` never appears in a real key, so these
/// cannot lock a real account; the length is bounded so junk cannot bloat storage.
fn impossible_key(raw: &str) -> String {
    format!("~{}", raw.chars().take(128).collect::<String>().to_lowercase())
}
