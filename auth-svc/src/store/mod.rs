//! auth-svc's storage: users, sessions, refresh and device tokens, failed-login records, signing keys,
//! secrets and the revocation log.
//!
//! Every read-decide-write rule is written once, in this file, as an async function over a
//! [`watchword_db::Conn`]: it loads what it needs, decides (the decisions are plain functions, unit-tested
//! without a database) and applies the decision. Every statement is written once too, in `sql.rs`, in the
//! SQL both dialects speak (row locks are added where PostgreSQL needs them); `sqlite.rs` and `postgres.rs`
//! hold what differs: the migrations, and one statement. A rule runs in one transaction either way
//! ([`watchword_db::transaction!`]): on SQLite on the blocking thread that holds the writer, where each
//! statement's future is ready at once; on PostgreSQL on a pooled connection, awaiting each statement.

mod postgres;
mod sql;
mod sqlite;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use watchword::reason::Reason;
use watchword_db::{
    Conn, Database, DatabaseUrl, DbError, Migrations, postgres::PoolOptions, read, transaction,
};

use crate::{
    audit::{AuditEvent, AuditKind, AuditQuery, Origin},
    domain::{ApiKey, Credentials, ROLE_ADMIN, Revocation, Session, Target, User, Username},
    policy::{
        AdminRefusal, Attempt, CallerRefusal, Exchange, Failures, KeyRefusal, LOCK_CAP, Rotation, exchange,
        is_last_admin, key_roles, keys_to_end, may_manage, reserve, rotation,
    },
    sealing::{self, Change, KeyEncryptionKey, SealError},
};

/// Revocation log rows are kept this long after they stop mattering, so a replica whose relay was briefly
/// cut off still reads every row it missed when it catches up.
const LOG_MARGIN: Duration = Duration::from_secs(3600);

/// What Validate needs to know beyond the signature: is the session live, and the user enabled?
#[derive(Debug, Clone)]
pub struct SessionState {
    pub revoked: bool,
    pub user: User,
}

/// A stored signing key, as the key set loads it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    /// The raw Ed25519 public key; `None` for a key stored before public keys were.
    pub public_key: Option<Vec<u8>>,
    /// PKCS#8 PEM or its sealed form (see `sealing.rs`); read only for the signing key, and for a key
    /// without a stored public key.
    pub private_key: Option<String>,
    /// When it starts (or started) signing.
    pub sign_time: SystemTime,
    /// When it stops (or stopped) signing: the next key's sign time, or when it was revoked.
    pub retire_time: Option<SystemTime>,
}

impl StoredKey {
    /// Whether it signs at `now`: its sign time has come and its retire time has not.
    pub fn signs_at(&self, now: SystemTime) -> bool {
        self.sign_time <= now && self.retire_time.is_none_or(|retire| retire > now)
    }

    /// Whether it signs at `now` or will later (rotated in with a publish lead).
    pub fn signs_now_or_later(&self, now: SystemTime) -> bool {
        self.retire_time.is_none_or(|retire| retire > now)
    }
}

/// A signing key to store.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub kid: String,
    pub public_key: Vec<u8>,
    /// PKCS#8 PEM, or its sealed form when there is a key-encryption key.
    pub private_key: String,
}

/// A login attempt reserved by [`Store::begin_login_attempt`]: whose budget it draws on, and the audit
/// events recorded as though it failed, which the transaction that forgives it withdraws.
#[derive(Debug)]
pub struct Reserved {
    pub attempt: Attempt,
    pub provisional: Vec<i64>,
}

/// What a successful password check turns into, in one transaction.
pub struct NewSession {
    pub reserved: Reserved,
    pub username_key: String,
    pub user_id: String,
    pub session_id: String,
    pub refresh_hash: Vec<u8>,
    pub refresh_expire_time: SystemTime,
    /// A device token to remember (its hash and expiry), when the login did not present one.
    pub new_device: Option<(Vec<u8>, SystemTime)>,
    pub origin: Origin,
    pub user_agent: Option<String>,
}

/// A password change that passed the checks, as [`Store::change_password`] applies it.
pub struct PasswordChange {
    pub user_id: String,
    /// The caller's session, which stays live; every other session of the user ends.
    pub session_id: String,
    pub username_key: String,
    /// The new password's hash.
    pub hash: String,
    /// The attempt the current password was checked under, forgiven with the change.
    pub reserved: Reserved,
    pub origin: Origin,
}

/// An API key to create, as [`Store::create_api_key`] checks and stores it.
pub struct NewApiKey {
    pub id: String,
    /// The owner: the caller, whose roles (as stored now) bound the key's.
    pub user_id: String,
    pub name: String,
    /// The roles asked for; none means the owner's.
    pub roles: Vec<String>,
    /// The keyed hash of the secret.
    pub hash: Vec<u8>,
    pub expire_time: SystemTime,
    /// The session the caller created it from.
    pub created_in: String,
    pub user_agent: Option<String>,
    pub origin: Origin,
}

/// The schema, in each dialect, with the same version numbers (`tests/api/schema.rs` checks that the two
/// arrive at the same tables and columns).
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: sqlite::MIGRATIONS,
    postgres: postgres::MIGRATIONS,
};

#[derive(Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub async fn open(url: &DatabaseUrl, pool: &PoolOptions) -> Result<Self, DbError> {
        Ok(Self {
            db: Database::open(url, pool, &MIGRATIONS).await?,
        })
    }

    /// Whether other processes may write to this database (PostgreSQL), so their revocations reach this
    /// one only through the log.
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.db.ping().await
    }

    /// Database connections held now, idle and busy.
    pub fn connections(&self) -> watchword_db::Connections {
        self.db.connections()
    }

    /// Inserts a new user (audited as registered from `origin`); a unique violation if the username key
    /// is taken.
    pub async fn insert_user(
        &self,
        user: User,
        username: Username,
        hash: String,
        origin: Origin,
    ) -> Result<(), DbError> {
        transaction!(&self.db, |tx| async move {
            sql::insert_user(tx, &user, &username, &hash).await?;
            let event = AuditEvent::new(AuditKind::UserRegistered, user.create_time, &origin)
                .subject(&user.id)
                .detail("username", &user.username)
                .detail("roles", user.roles.join(","));
            sql::insert_audit(tx, &event).await.map(drop)
        })
    }

    /// The account with this username, with its password hash.
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<Credentials>, DbError> {
        let key = username.key().to_owned();
        read!(&self.db, |tx| async move { sql::credentials(tx, &key).await })
    }

    /// The account `user_id` with its password hash and username key.
    pub async fn credentials_of(&self, user_id: &str) -> Result<Option<(Credentials, String)>, DbError> {
        let id = user_id.to_owned();
        read!(
            &self.db,
            |tx| async move { sql::credentials_by_id(tx, &id).await }
        )
    }

    /// The user `user_id` as stored and its session `session_id`, if the session is that user's.
    pub async fn me(&self, user_id: &str, session_id: &str) -> Result<Option<(User, Session)>, DbError> {
        let (user_id, session_id) = (user_id.to_owned(), session_id.to_owned());
        read!(&self.db, |tx| async move {
            let Some(user) = sql::user_by_id(tx, &user_id, false).await? else {
                return Ok(None);
            };
            Ok(sql::session_by_id(tx, &session_id, false)
                .await?
                .filter(|(session, _)| session.user_id == user_id)
                .map(|(session, _)| (user, session)))
        })
    }

    /// The live sessions of `user_id` (neither revoked nor expired at `now`), in creation order (ids are
    /// UUIDv7), after `after`.
    pub async fn live_sessions(
        &self,
        user_id: &str,
        after: Option<String>,
        limit: usize,
        now: SystemTime,
    ) -> Result<Vec<Session>, DbError> {
        let (user_id, after) = (user_id.to_owned(), after.unwrap_or_default());
        read!(&self.db, |tx| async move {
            sql::live_sessions(tx, &user_id, &after, now, limit).await
        })
    }

    /// Ends session `session_id` for `caller_id`, who must own it or be an enabled admin (otherwise, as
    /// when there is no such session, `NotFound`). With `only_api_key`, only an API key's session (the key)
    /// may be ended this way. Audited as `API_KEY_REVOKED` for a key, else `SESSION_REVOKED`. `None` when
    /// it had ended already (idempotent: nothing is logged or audited again).
    pub async fn end_session(
        &self,
        caller_id: &str,
        session_id: &str,
        only_api_key: bool,
        now: SystemTime,
        origin: Origin,
    ) -> Result<Result<Option<Revocation>, CallerRefusal>, DbError> {
        let (caller_id, id) = (caller_id.to_owned(), session_id.to_owned());
        transaction!(&self.db, |tx| async move {
            let caller = sql::user_by_id(tx, &caller_id, false).await?;
            let Some((session, revoked)) = sql::session_by_id(tx, &id, true).await? else {
                return Ok(Err(CallerRefusal::NotFound));
            };
            if (only_api_key && session.api_key_id.is_none())
                || !may_manage(caller.as_ref(), &session.user_id)
            {
                return Ok(Err(CallerRefusal::NotFound));
            }
            if revoked {
                return Ok(Ok(None));
            }
            sql::revoke_session(tx, &id, now).await?;
            let revocation = Revocation::new(Target::Session(id.clone()), now, Reason::TokenRevoked);
            sql::log_revocation(tx, &revocation).await?;
            let kind = match session.api_key_id {
                Some(_) => AuditKind::ApiKeyRevoked,
                None => AuditKind::SessionRevoked,
            };
            let event = AuditEvent::new(kind, now, &origin)
                .actor(caller_id)
                .subject(session.user_id)
                .session(id);
            sql::insert_audit(tx, &event).await?;
            Ok(Ok(Some(revocation)))
        })
    }

    /// Sets a new password hash, forgiving the attempt the current password was checked under, and ends
    /// every other session of the user (its API keys too): their revocations are returned, logged in the
    /// same transaction. Refused when the caller's own session or account has ended meanwhile.
    pub async fn change_password(
        &self,
        change: PasswordChange,
        now: SystemTime,
    ) -> Result<Result<Vec<Revocation>, CallerRefusal>, DbError> {
        transaction!(&self.db, |tx| async move {
            match sql::user_by_id(tx, &change.user_id, true).await? {
                Some(user) if !user.disabled => {}
                _ => return Ok(Err(CallerRefusal::UserDisabled)),
            }
            match sql::session_by_id(tx, &change.session_id, true).await? {
                Some((session, false)) if session.user_id == change.user_id => {}
                _ => return Ok(Err(CallerRefusal::Revoked)),
            }
            forgive(tx, &change.reserved, &change.username_key).await?;
            sql::set_password(tx, &change.user_id, &change.hash).await?;
            let ended = sql::revoke_other_sessions(tx, &change.user_id, &change.session_id, now).await?;
            let revocations: Vec<Revocation> = ended
                .into_iter()
                .map(|session| Revocation::new(Target::Session(session), now, Reason::TokenRevoked))
                .collect();
            log_all(tx, &revocations).await?;
            let event = AuditEvent::new(AuditKind::PasswordChanged, now, &change.origin)
                .actor(&change.user_id)
                .subject(&change.user_id)
                .session(&change.session_id)
                .detail("sessions_ended", revocations.len());
            sql::insert_audit(tx, &event).await?;
            Ok(Ok(revocations))
        })
    }

    pub async fn find_user(&self, user_id: &str) -> Result<Option<User>, DbError> {
        let id = user_id.to_owned();
        read!(
            &self.db,
            |tx| async move { sql::user_by_id(tx, &id, false).await }
        )
    }

    /// Users in creation order (ids are UUIDv7, so id order), after `after`.
    pub async fn list_users(&self, after: Option<String>, limit: usize) -> Result<Vec<User>, DbError> {
        let after = after.unwrap_or_default();
        read!(
            &self.db,
            |tx| async move { sql::users_after(tx, &after, limit).await }
        )
    }

    /// Replaces a user's roles. Taking any role away ends the user's sessions, so no live token still
    /// carries it: their revocations are returned, logged in the same transaction.
    pub async fn set_roles(
        &self,
        user_id: &str,
        roles: Vec<String>,
        now: SystemTime,
        actor: Option<&str>,
        origin: Origin,
    ) -> Result<Result<(User, Vec<Revocation>), AdminRefusal>, DbError> {
        let (id, actor) = (user_id.to_owned(), actor.map(str::to_owned));
        transaction!(&self.db, |tx| async move {
            // The admins first, then the user: one lock order for every admin change, so two cannot deadlock.
            let admins = sql::enabled_admins(tx).await?;
            let Some(mut user) = sql::user_by_id(tx, &id, true).await? else {
                return Ok(Err(AdminRefusal::NotFound));
            };
            if !roles.iter().any(|r| r == ROLE_ADMIN) && is_last_admin(&admins, &id) {
                return Ok(Err(AdminRefusal::LastAdmin));
            }
            sql::set_roles(tx, &id, &roles).await?;
            let removes_a_role = user.roles.iter().any(|r| !roles.contains(r));
            let (mut ended, mut keys_ended) = (Vec::new(), Vec::new());
            if removes_a_role {
                // Every login session (its tokens carry the old roles), and every API key now worth more
                // than its owner; keys the new roles still cover go on.
                ended = sql::revoke_login_sessions(tx, &id, now).await?;
                let keys = sql::unrevoked_api_keys(tx, &id).await?;
                for key in keys_to_end(&keys, &roles) {
                    sql::revoke_session(tx, &key, now).await?;
                    keys_ended.push(key);
                }
            }
            for key in &keys_ended {
                let mut event = AuditEvent::new(AuditKind::ApiKeyRevoked, now, &origin)
                    .subject(&id)
                    .session(key)
                    .detail("reason", "roles_changed");
                event.actor_id.clone_from(&actor);
                sql::insert_audit(tx, &event).await?;
            }
            ended.extend(keys_ended);
            let revocations: Vec<Revocation> = ended
                .into_iter()
                .map(|session| Revocation::new(Target::Session(session), now, Reason::TokenRevoked))
                .collect();
            log_all(tx, &revocations).await?;
            let mut event = AuditEvent::new(AuditKind::RolesChanged, now, &origin)
                .subject(&id)
                .detail("from", user.roles.join(","))
                .detail("to", roles.join(","))
                .detail("sessions_ended", revocations.len());
            event.actor_id = actor;
            sql::insert_audit(tx, &event).await?;
            user.roles = roles;
            Ok(Ok((user, revocations)))
        })
    }

    /// Disables a user and ends its sessions (idempotent: the first disabling time stands).
    pub async fn disable_user(
        &self,
        user_id: &str,
        now: SystemTime,
        actor: &str,
        origin: Origin,
    ) -> Result<Result<(User, Revocation), AdminRefusal>, DbError> {
        let (id, actor) = (user_id.to_owned(), actor.to_owned());
        transaction!(&self.db, |tx| async move {
            let admins = sql::enabled_admins(tx).await?;
            let Some(mut user) = sql::user_by_id(tx, &id, true).await? else {
                return Ok(Err(AdminRefusal::NotFound));
            };
            if is_last_admin(&admins, &id) {
                return Ok(Err(AdminRefusal::LastAdmin));
            }
            let disabled_at = sql::disable_user(tx, &id, now).await?;
            let ended = sql::revoke_user_sessions(tx, &id, now).await?;
            if !user.disabled {
                let event = AuditEvent::new(AuditKind::UserDisabled, now, &origin)
                    .actor(actor)
                    .subject(&id)
                    .detail("sessions_ended", ended.len());
                sql::insert_audit(tx, &event).await?;
            }
            let revocation = Revocation::new(Target::User(id), disabled_at, Reason::UserDisabled);
            if !user.disabled {
                sql::log_revocation(tx, &revocation).await?;
            }
            user.disabled = true;
            Ok(Ok((user, revocation)))
        })
    }

    /// Forgets a user's failed logins (and its devices'), lifting any lock.
    pub async fn unlock_user(
        &self,
        user_id: &str,
        now: SystemTime,
        actor: &str,
        origin: Origin,
    ) -> Result<Option<User>, DbError> {
        let (id, actor) = (user_id.to_owned(), actor.to_owned());
        transaction!(&self.db, |tx| async move {
            let user = sql::user_by_id(tx, &id, true).await?;
            if user.is_some() {
                sql::clear_user_failures(tx, &id).await?;
                let event = AuditEvent::new(AuditKind::AccountUnlocked, now, &origin)
                    .actor(actor)
                    .subject(&id);
                sql::insert_audit(tx, &event).await?;
            }
            Ok(user)
        })
    }

    /// Reserves one login attempt: counted as a failure *before* the password is checked (and forgiven by
    /// [`Store::start_session`]), so parallel guesses cannot slip in before the first failure is recorded.
    /// A live device token of this account draws on its own budget; anything else on the account's.
    ///
    /// The audit log follows the count: the attempt is recorded as `LOGIN_FAILED` (and `ACCOUNT_LOCKED`
    /// when it reaches the threshold) in this transaction, and the transaction that forgives it withdraws
    /// those events; so a login cancelled in between leaves its failure in both. A refused attempt (the
    /// budget is locked) is recorded as failed with reason `ACCOUNT_LOCKED`. `actor`: the caller, when the
    /// password is checked for a signed-in user (ChangePassword).
    pub async fn begin_login_attempt(
        &self,
        username_key: &str,
        device_hash: Option<Vec<u8>>,
        threshold: u32,
        now: SystemTime,
        actor: Option<&str>,
        origin: Origin,
    ) -> Result<Result<Reserved, Duration>, DbError> {
        let (key, actor) = (username_key.to_owned(), actor.map(str::to_owned));
        transaction!(&self.db, |tx| async move {
            let subject = sql::user_id_by_key(tx, &key).await?;
            let event = |kind, budget: &str| {
                let mut event = AuditEvent::new(kind, now, &origin)
                    .subject_opt(subject.clone())
                    .detail("username", &key)
                    .detail("budget", budget);
                event.actor_id.clone_from(&actor);
                event
            };
            let (budget, failures, attempt) = match device_hash {
                Some(hash) => match sql::device_failures(tx, &hash, &key, now).await? {
                    Some(failures) => ("device", failures, Attempt::Device(hash)),
                    None => (
                        "account",
                        sql::account_failures(tx, &key, now).await?,
                        Attempt::Account,
                    ),
                },
                None => (
                    "account",
                    sql::account_failures(tx, &key, now).await?,
                    Attempt::Account,
                ),
            };
            let counted = match reserve(failures, threshold, now) {
                Ok(counted) => counted,
                Err(wait) => {
                    let refused =
                        event(AuditKind::LoginFailed, budget).detail("reason", Reason::AccountLocked);
                    sql::insert_audit(tx, &refused).await?;
                    return Ok(Err(wait));
                }
            };
            match &attempt {
                Attempt::Device(hash) => sql::set_device_failures(tx, hash, counted).await?,
                Attempt::Account => sql::set_account_failures(tx, &key, counted, now).await?,
            }
            let failed = event(AuditKind::LoginFailed, budget).detail("reason", Reason::InvalidCredentials);
            let mut provisional = vec![sql::insert_audit(tx, &failed).await?];
            if let Some(until) = counted.locked_until {
                let lock = until.duration_since(now).unwrap_or_default();
                let locked = event(AuditKind::AccountLocked, budget)
                    .detail("failures", counted.count)
                    .detail("for", humantime::format_duration(lock));
                provisional.push(sql::insert_audit(tx, &locked).await?);
            }
            Ok(Ok(Reserved { attempt, provisional }))
        })
    }

    /// After a password matched: forgives the attempt (and withdraws its provisional audit events) and
    /// starts a session, for the user as stored *now* (its roles, and `None` if it has been disabled
    /// meanwhile), so the token is issued from this read.
    pub async fn start_session(&self, new: NewSession, now: SystemTime) -> Result<Option<User>, DbError> {
        transaction!(&self.db, |tx| async move {
            let user = match sql::user_by_id(tx, &new.user_id, true).await? {
                Some(user) if !user.disabled => user,
                _ => return Ok(None),
            };
            forgive(tx, &new.reserved, &new.username_key).await?;
            let session = Session {
                id: new.session_id.clone(),
                user_id: new.user_id.clone(),
                create_time: now,
                last_refresh_time: None,
                expire_time: new.refresh_expire_time,
                api_key_id: None,
                client_address: new.origin.client.map(|ip| ip.to_string()),
                user_agent: new.user_agent.clone(),
            };
            sql::insert_session(tx, &session).await?;
            sql::insert_refresh(tx, &new.refresh_hash, &new.session_id, new.refresh_expire_time).await?;
            if let Some((hash, expire)) = &new.new_device {
                sql::insert_device(tx, hash, &new.user_id, now, *expire).await?;
            }
            let event = AuditEvent::new(AuditKind::LoginSucceeded, now, &new.origin)
                .actor(&user.id)
                .subject(&user.id)
                .session(&new.session_id)
                .detail("username", &user.username)
                .detail("device", if new.new_device.is_some() { "new" } else { "known" });
            sql::insert_audit(tx, &event).await?;
            Ok(Some(user))
        })
    }

    /// The state of `session_id` and its user, or `None` if the session does not belong to `user_id`.
    pub async fn session_state(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> Result<Option<SessionState>, DbError> {
        let (session_id, user_id) = (session_id.to_owned(), user_id.to_owned());
        read!(&self.db, |tx| async move {
            sql::session_state(tx, &session_id, &user_id).await
        })
    }

    /// Presents refresh token `hash` for rotation to `successor_hash`, atomically.
    ///
    /// Within `grace` of the first rotation, presenting the same token again is a repeat (the caller hands
    /// out the same, derived successor). Later, it is reuse: the session is revoked.
    pub async fn rotate_refresh(
        &self,
        hash: Vec<u8>,
        successor_hash: Vec<u8>,
        now: SystemTime,
        grace: Duration,
        ttl: Duration,
        origin: Origin,
    ) -> Result<Rotation, DbError> {
        transaction!(&self.db, |tx| async move {
            let Some(presented) = sql::presented_refresh(tx, &hash).await? else {
                return Ok(Rotation::Unknown);
            };
            let successor = match presented.rotate_time {
                Some(_) => sql::refresh_times(tx, &successor_hash).await?,
                None => None,
            };
            let outcome = rotation(&presented, successor, now, grace, ttl);
            match &outcome {
                Rotation::Rotated { expire_time, .. } if presented.rotate_time.is_none() => {
                    sql::mark_rotated(tx, &hash, now).await?;
                    sql::insert_refresh(tx, &successor_hash, &presented.session_id, *expire_time).await?;
                    sql::refreshed_session(tx, &presented.session_id, now, *expire_time).await?;
                }
                // `rotation` answers Revoked for an ended session, so this one is live until now.
                Rotation::Reused(revocation) => {
                    sql::revoke_session(tx, &presented.session_id, now).await?;
                    sql::log_revocation(tx, revocation).await?;
                    let event = AuditEvent::new(AuditKind::RefreshReuseDetected, now, &origin)
                        .subject(&presented.user.id)
                        .session(&presented.session_id);
                    sql::insert_audit(tx, &event).await?;
                }
                _ => {}
            }
            Ok(outcome)
        })
    }

    /// The session a refresh token belongs to, if it is one of ours.
    pub async fn session_of_refresh(&self, hash: Vec<u8>) -> Result<Option<String>, DbError> {
        read!(
            &self.db,
            |tx| async move { sql::refresh_session(tx, &hash).await }
        )
    }

    /// Ends a session at its holder's request (idempotent: an ended session keeps its first revocation,
    /// and is not logged or audited again). Not an API key's: that would revoke the key.
    pub async fn logout(
        &self,
        session_id: &str,
        now: SystemTime,
        origin: Origin,
    ) -> Result<Result<Revocation, CallerRefusal>, DbError> {
        let revocation = Revocation::new(Target::Session(session_id.to_owned()), now, Reason::TokenRevoked);
        let logged = revocation.clone();
        let id = session_id.to_owned();
        transaction!(&self.db, |tx| async move {
            let is_key = sql::session_by_id(tx, &id, true)
                .await?
                .is_some_and(|(session, _)| session.api_key_id.is_some());
            if is_key {
                return Ok(Err(CallerRefusal::ApiKeySession));
            }
            if let Some(owner) = sql::revoke_session(tx, &id, now).await? {
                sql::log_revocation(tx, &logged).await?;
                let event = AuditEvent::new(AuditKind::Logout, now, &origin)
                    .actor(&owner)
                    .subject(owner)
                    .session(&id);
                sql::insert_audit(tx, &event).await?;
            }
            Ok(Ok(revocation))
        })
    }

    /// Creates an API key for its owner, with roles the owner (as stored now) may grant: a session of its
    /// own (the same id) and the key's hash, audited as `API_KEY_CREATED`.
    pub async fn create_api_key(
        &self,
        new: NewApiKey,
        now: SystemTime,
    ) -> Result<Result<ApiKey, KeyRefusal>, DbError> {
        transaction!(&self.db, |tx| async move {
            let owner = match sql::user_by_id(tx, &new.user_id, true).await? {
                Some(user) if !user.disabled => user,
                _ => return Ok(Err(KeyRefusal::UserDisabled)),
            };
            let roles = match key_roles(&owner.roles, new.roles) {
                Ok(roles) => roles,
                Err(refused) => return Ok(Err(refused)),
            };
            let session = Session {
                id: new.id.clone(),
                user_id: new.user_id.clone(),
                create_time: now,
                last_refresh_time: None,
                expire_time: new.expire_time,
                api_key_id: Some(new.id.clone()),
                client_address: new.origin.client.map(|ip| ip.to_string()),
                user_agent: new.user_agent,
            };
            sql::insert_session(tx, &session).await?;
            sql::insert_api_key(tx, &new.id, &new.hash, &new.name, &roles).await?;
            let event = AuditEvent::new(AuditKind::ApiKeyCreated, now, &new.origin)
                .actor(&owner.id)
                .subject(&owner.id)
                .session(&new.id)
                .detail("created_in", &new.created_in)
                .detail("roles", roles.join(","));
            sql::insert_audit(tx, &event).await?;
            Ok(Ok(ApiKey {
                id: new.id,
                user_id: owner.id,
                name: new.name,
                roles,
                create_time: now,
                expire_time: new.expire_time,
                last_exchange_time: None,
            }))
        })
    }

    /// The live API keys of `user_id` (neither revoked nor expired at `now`), oldest first, after `after`.
    pub async fn api_keys(
        &self,
        user_id: &str,
        after: Option<String>,
        limit: usize,
        now: SystemTime,
    ) -> Result<Vec<ApiKey>, DbError> {
        let (user_id, after) = (user_id.to_owned(), after.unwrap_or_default());
        read!(&self.db, |tx| async move {
            sql::live_api_keys(tx, &user_id, &after, now, limit).await
        })
    }

    /// Presents API key `hash` for an exchange: decided from the key and its owner as stored now (the
    /// key's row locked), and, when it is good, the exchange recorded.
    pub async fn exchange_api_key(&self, hash: Vec<u8>, now: SystemTime) -> Result<Exchange, DbError> {
        transaction!(&self.db, |tx| async move {
            let outcome = exchange(sql::presented_key(tx, &hash).await?, now);
            if let Exchange::Issue { key_id, .. } = &outcome {
                sql::exchanged_key(tx, key_id, now).await?;
            }
            Ok(outcome)
        })
    }

    /// Drops what can no longer matter: expired refresh and device tokens, failed-login records idle for
    /// longer than the longest lock, revocation log rows older than `window` (plus a margin), and audit
    /// events older than `audit_retention`.
    pub async fn purge_expired(
        &self,
        now: SystemTime,
        window: Duration,
        audit_retention: Duration,
    ) -> Result<usize, DbError> {
        let (idle, log_cutoff, audit_cutoff) =
            (now - LOCK_CAP, now - window - LOG_MARGIN, now - audit_retention);
        transaction!(&self.db, |tx| async move {
            sql::purge(tx, now, idle, log_cutoff, audit_cutoff).await
        })
    }

    /// Audit events matching `query`, newest first, with their ids (for paging).
    pub async fn audit_events(&self, query: AuditQuery) -> Result<Vec<(i64, AuditEvent)>, DbError> {
        read!(&self.db, |tx| async move { sql::audit_events(tx, &query).await })
    }

    /// Brings the keys at rest in line with `kek`, in one transaction under the key-set lock (replicas
    /// starting together take turns, and the later ones find nothing left to do): unsealed private keys
    /// and secrets are sealed with it, and missing public keys filled in. Refused, with nothing changed,
    /// when stored values are sealed and `kek` is not their key (see [`sealing::plan`]). The number of
    /// rows rewritten.
    pub async fn keys_at_rest(
        &self,
        kek: Option<Arc<KeyEncryptionKey>>,
    ) -> Result<Result<usize, SealError>, DbError> {
        transaction!(&self.db, |tx| async move {
            sql::lock_keys(tx).await?;
            let (keys, secrets) = (sql::key_material(tx).await?, sql::secrets(tx).await?);
            let changes = match sealing::plan(&keys, &secrets, kek.as_deref()) {
                Ok(changes) => changes,
                Err(refused) => return Ok(Err(refused)),
            };
            for change in &changes {
                match change {
                    Change::Key(key) => sql::set_key_material(tx, key).await?,
                    Change::Secret(secret) => sql::set_secret(tx, secret).await?,
                }
            }
            Ok(Ok(changes.len()))
        })
    }

    /// Rewrites an SQLite database so that overwritten content (keys stored unsealed before they were
    /// sealed) is no longer in its file or its WAL. PostgreSQL: nothing (see `Database::vacuum`).
    pub async fn vacuum(&self) -> Result<(), DbError> {
        self.db.vacuum().await
    }

    /// A named secret, created from `candidate` the first time it is asked for.
    pub async fn secret_or_insert(&self, name: &'static str, candidate: Vec<u8>) -> Result<Vec<u8>, DbError> {
        transaction!(&self.db, |tx| async move {
            sql::insert_secret(tx, name, &candidate).await?;
            Ok(sql::secret(tx, name).await?.unwrap_or(candidate))
        })
    }

    /// Keys that may still verify a live token, newest first (signing key first), and the keys revoked
    /// within `window`.
    pub async fn load_keys(
        &self,
        window: Duration,
        now: SystemTime,
    ) -> Result<(Vec<StoredKey>, Vec<String>), DbError> {
        read!(&self.db, |tx| async move {
            Ok((
                sql::keys(tx, now, now - window).await?,
                sql::revoked_keys(tx, now - window).await?,
            ))
        })
    }

    /// The signing key (its kid and stored private key): the newest stored one, or `candidate` if none is
    /// stored yet. Replicas starting at once on an empty database agree on one key.
    pub async fn signing_key_or_insert(
        &self,
        candidate: NewKey,
        now: SystemTime,
    ) -> Result<(String, String), DbError> {
        transaction!(&self.db, |tx| async move {
            sql::lock_keys(tx).await?;
            match sql::keys(tx, now, now)
                .await?
                .into_iter()
                .find(|k| k.signs_at(now))
            {
                Some(StoredKey {
                    kid,
                    private_key: Some(private_key),
                    ..
                }) => Ok((kid, private_key)),
                Some(key) => Err(DbError::Config(format!(
                    "signing key {} was read without its private key",
                    key.kid
                ))),
                None => {
                    sql::insert_key(tx, &candidate, now, now).await?;
                    Ok((candidate.kid, candidate.private_key))
                }
            }
        })
    }

    /// Stores `key`, published from `now`, to sign from `sign_time`: the keys that would sign then are
    /// retired at that moment (and keep verifying for a while).
    pub async fn rotate_key(
        &self,
        key: NewKey,
        now: SystemTime,
        sign_time: SystemTime,
        actor: &str,
        origin: Origin,
    ) -> Result<(), DbError> {
        let actor = actor.to_owned();
        transaction!(&self.db, |tx| async move {
            sql::lock_keys(tx).await?;
            sql::retire_signing_keys(tx, sign_time).await?;
            sql::insert_key(tx, &key, now, sign_time).await?;
            let event = AuditEvent::new(AuditKind::SigningKeyRotated, now, &origin)
                .actor(actor)
                .detail("kid", &key.kid)
                .detail("sign_time_us", watchword_db::to_micros(sign_time));
            sql::insert_audit(tx, &event).await.map(drop)
        })
    }

    /// Revokes key `kid`: it verifies nothing from now on. If it was the signing key, `replacement` signs
    /// from now on. `None` if there is no such key.
    pub async fn revoke_key(
        &self,
        kid: &str,
        replacement: NewKey,
        now: SystemTime,
        actor: &str,
        origin: Origin,
    ) -> Result<Option<Revocation>, DbError> {
        let (kid, actor) = (kid.to_owned(), actor.to_owned());
        transaction!(&self.db, |tx| async move {
            sql::lock_keys(tx).await?;
            // Every key not revoked yet.
            let keys = sql::keys(tx, now, SystemTime::UNIX_EPOCH).await?;
            let was_live = keys.iter().any(|k| k.kid == kid);
            // Signing now, or waiting to: the replacement signs at once, and nothing waits any more.
            let was_signing = keys.iter().any(|k| k.kid == kid && k.signs_now_or_later(now));
            if !sql::revoke_key(tx, &kid, now).await? {
                return Ok(None);
            }
            if was_signing {
                sql::retire_signing_keys(tx, now).await?;
                sql::insert_key(tx, &replacement, now, now).await?;
            }
            if was_live {
                let mut event = AuditEvent::new(AuditKind::SigningKeyRevoked, now, &origin)
                    .actor(actor)
                    .detail("kid", &kid);
                if was_signing {
                    event = event.detail("signing_kid", &replacement.kid);
                }
                sql::insert_audit(tx, &event).await?;
            }
            let revocation = Revocation::new(Target::Key(kid), now, Reason::TokenRevoked);
            sql::log_revocation(tx, &revocation).await?;
            Ok(Some(revocation))
        })
    }

    /// Deletes keys retired before `cutoff`: no live token can name them.
    pub async fn drop_retired_keys(&self, cutoff: SystemTime) -> Result<usize, DbError> {
        transaction!(&self.db, |tx| async move {
            sql::delete_keys_retired_before(tx, cutoff).await
        })
    }

    /// Revocations that may still matter: those made since `since`.
    pub async fn recent_revocations(&self, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
        read!(unbounded: &self.db, |tx| async move {
            sql::revocations_since(tx, since).await
        })
    }

    /// Revocation log rows after `id`, in commit order, with their ids.
    pub async fn revocations_after(&self, id: i64) -> Result<Vec<(i64, Revocation)>, DbError> {
        read!(unbounded: &self.db, |tx| async move {
            sql::revocations_after(tx, id).await
        })
    }

    /// The id of the newest revocation log row (0 when there is none).
    pub async fn last_revocation_id(&self) -> Result<i64, DbError> {
        read!(&self.db, |tx| async move { sql::last_revocation_id(tx).await })
    }
}

/// Forgives a reserved login attempt whose password matched: its failure is uncounted and its provisional
/// audit events withdrawn.
async fn forgive(tx: &impl Conn, reserved: &Reserved, username_key: &str) -> Result<(), DbError> {
    match &reserved.attempt {
        Attempt::Account => sql::clear_account_failures(tx, username_key).await?,
        Attempt::Device(hash) => sql::set_device_failures(tx, hash, Failures::default()).await?,
    }
    for id in &reserved.provisional {
        sql::delete_audit(tx, *id).await?;
    }
    Ok(())
}

async fn log_all(tx: &impl Conn, revocations: &[Revocation]) -> Result<(), DbError> {
    for revocation in revocations {
        sql::log_revocation(tx, revocation).await?;
    }
    Ok(())
}
