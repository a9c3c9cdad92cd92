//! auth-svc's storage: users, sessions, refresh and device tokens, failed-login records, signing keys,
//! secrets and the revocation log.
//!
//! Every read-decide-write rule is written once, in this file, as an async function over [`Tx`] (what a
//! transaction can do): it loads what it needs, decides (the decisions are plain functions, unit-tested
//! without a database) and applies the decision. The dialects only speak: `sqlite.rs` and `postgres.rs`
//! implement [`Tx`] for `watchword_db`'s connection types with SQL and row mapping. A rule runs in one
//! transaction either way ([`watchword_db::transaction!`]): on SQLite on the blocking thread that holds the
//! writer, where each statement's future is ready at once; on PostgreSQL on a pooled connection, awaiting
//! each statement.

mod postgres;
mod sqlite;

use std::time::{Duration, SystemTime};

use watchword::reason::Reason;
use watchword_db::{Database, DatabaseUrl, DbError, Migrations, postgres::PoolOptions, read, transaction};

use crate::domain::{Credentials, ROLE_ADMIN, Revocation, Target, User, Username};

/// The first lock lasts this long; each further failure doubles it, up to [`LOCK_CAP`].
const LOCK_BASE: Duration = Duration::from_secs(30);
const LOCK_CAP: Duration = Duration::from_secs(15 * 60);
/// Revocation log rows are kept this long after they stop mattering, so a replica whose relay was briefly
/// cut off still reads every row it missed when it catches up.
const LOG_MARGIN: Duration = Duration::from_secs(3600);

/// What a transaction can do. Each method is one statement (or a few) of SQL in each dialect.
///
/// Locking (`FOR UPDATE` and advisory locks on PostgreSQL) is the dialect's business: SQLite write
/// transactions hold the database's one write lock from their first statement (`BEGIN IMMEDIATE`).
#[allow(async_fn_in_trait)] // Only this crate implements it; each dialect's futures are as Send as it is.
pub(crate) trait Tx {
    async fn insert_user(
        &mut self,
        user: &User,
        username: &Username,
        password_hash: &str,
    ) -> Result<(), DbError>;
    async fn credentials(&mut self, username_key: &str) -> Result<Option<Credentials>, DbError>;
    /// With `lock`, the row stays locked until the transaction ends.
    async fn user(&mut self, id: &str, lock: bool) -> Result<Option<User>, DbError>;
    async fn users_after(&mut self, after: &str, limit: usize) -> Result<Vec<User>, DbError>;
    /// Ids of the enabled admins, locked, so two demotions cannot each leave the other the last admin.
    async fn enabled_admins(&mut self) -> Result<Vec<String>, DbError>;
    async fn set_roles(&mut self, id: &str, roles: &[String]) -> Result<(), DbError>;
    /// Disables the user and returns when it was disabled (the first time, when it already was).
    async fn disable_user(&mut self, id: &str, now: SystemTime) -> Result<SystemTime, DbError>;

    async fn insert_session(&mut self, id: &str, user_id: &str, now: SystemTime) -> Result<(), DbError>;
    /// The session `id` of `user_id` and its user.
    async fn session_state(&mut self, id: &str, user_id: &str) -> Result<Option<SessionState>, DbError>;
    /// Ends the session if it is live; `false` if there was nothing to end.
    async fn revoke_session(&mut self, id: &str, now: SystemTime) -> Result<bool, DbError>;
    /// Ends every live session of `user_id`, returning their ids.
    async fn revoke_user_sessions(&mut self, user_id: &str, now: SystemTime) -> Result<Vec<String>, DbError>;

    async fn insert_refresh(
        &mut self,
        hash: &[u8],
        session_id: &str,
        expire: SystemTime,
    ) -> Result<(), DbError>;
    /// The refresh token `hash` with its session and user, locked until the transaction ends.
    async fn presented_refresh(&mut self, hash: &[u8]) -> Result<Option<Presented>, DbError>;
    async fn mark_rotated(&mut self, hash: &[u8], now: SystemTime) -> Result<(), DbError>;
    /// When the refresh token `hash` was rotated (if it was) and when it expires.
    async fn refresh_times(
        &mut self,
        hash: &[u8],
    ) -> Result<Option<(Option<SystemTime>, SystemTime)>, DbError>;
    async fn refresh_session(&mut self, hash: &[u8]) -> Result<Option<String>, DbError>;

    /// The failed logins of `username_key`, locked until the transaction ends.
    async fn account_failures(&mut self, username_key: &str, now: SystemTime) -> Result<Failures, DbError>;
    async fn set_account_failures(
        &mut self,
        username_key: &str,
        failures: Failures,
        now: SystemTime,
    ) -> Result<(), DbError>;
    async fn clear_account_failures(&mut self, username_key: &str) -> Result<(), DbError>;
    /// The failed logins of device token `hash`, if it belongs to the account `username_key` and has not
    /// expired, locked until the transaction ends.
    async fn device_failures(
        &mut self,
        hash: &[u8],
        username_key: &str,
        now: SystemTime,
    ) -> Result<Option<Failures>, DbError>;
    async fn set_device_failures(&mut self, hash: &[u8], failures: Failures) -> Result<(), DbError>;
    async fn insert_device(
        &mut self,
        hash: &[u8],
        user_id: &str,
        now: SystemTime,
        expire: SystemTime,
    ) -> Result<(), DbError>;
    /// Forgets the failed logins of `user_id`'s account and of its devices.
    async fn clear_user_failures(&mut self, user_id: &str) -> Result<(), DbError>;

    /// Keys not revoked, and not retired before `retired_since`, newest first.
    async fn keys(&mut self, retired_since: SystemTime) -> Result<Vec<StoredKey>, DbError>;
    async fn revoked_keys(&mut self, since: SystemTime) -> Result<Vec<String>, DbError>;
    /// Serialises changes to the key set across replicas (a no-op on SQLite, whose writer is alone).
    async fn lock_keys(&mut self) -> Result<(), DbError>;
    async fn insert_key(&mut self, kid: &str, pem: &str, now: SystemTime) -> Result<(), DbError>;
    /// Retires the signing key (the one not retired); it keeps verifying for a while.
    async fn retire_signing_key(&mut self, now: SystemTime) -> Result<(), DbError>;
    /// Marks `kid` revoked (and retired); `false` if there is no such key.
    async fn revoke_key(&mut self, kid: &str, now: SystemTime) -> Result<bool, DbError>;
    async fn delete_keys_retired_before(&mut self, cutoff: SystemTime) -> Result<usize, DbError>;

    async fn secret(&mut self, name: &str) -> Result<Option<Vec<u8>>, DbError>;
    /// Stores the secret unless one of that name exists.
    async fn insert_secret(&mut self, name: &str, value: &[u8]) -> Result<(), DbError>;

    /// Appends to the revocation log. Ids are handed out in commit order (PostgreSQL takes a lock held
    /// until commit first), so a reader that has seen id `n` has seen every id below it.
    async fn log_revocation(&mut self, revocation: &Revocation) -> Result<(), DbError>;
    async fn revocations_since(&mut self, since: SystemTime) -> Result<Vec<Revocation>, DbError>;
    async fn revocations_after(&mut self, id: i64) -> Result<Vec<(i64, Revocation)>, DbError>;
    async fn last_revocation_id(&mut self) -> Result<i64, DbError>;

    /// Deletes refresh and device tokens expired before `now`, failed-login records idle since `idle`, and
    /// revocation log rows from before `log_cutoff`.
    async fn purge(
        &mut self,
        now: SystemTime,
        idle: SystemTime,
        log_cutoff: SystemTime,
    ) -> Result<usize, DbError>;
}

/// What Validate needs to know beyond the signature: is the session live, and the user enabled?
#[derive(Debug, Clone)]
pub struct SessionState {
    pub revoked: bool,
    pub user: User,
}

/// A presented refresh token with what rotation decides on.
#[derive(Debug)]
pub struct Presented {
    pub session_id: String,
    pub expire_time: SystemTime,
    pub rotate_time: Option<SystemTime>,
    pub session_revoked: bool,
    pub user: User,
}

/// Failed logins in a row, and the lock they led to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: i64,
    pub locked_until: Option<SystemTime>,
}

/// A stored signing key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub kid: String,
    pub pem: String,
    pub retired: bool,
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum Rotation {
    /// Rotated now, or repeated within the grace window: issue tokens for `user` in `session_id`.
    Rotated {
        user: User,
        session_id: String,
        expire_time: SystemTime,
    },
    Unknown,
    Expired,
    Revoked,
    UserDisabled,
    /// An already-rotated token came back after the grace window: the session has just been revoked.
    Reused(Revocation),
}

/// Whose failure budget a login attempt draws on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The account's: strangers' failures count here, and lock every login without a device token.
    Account,
    /// A device token's own (the hash), presented by a device the account holder logged in from before.
    Device(Vec<u8>),
}

/// What a successful password check turns into, in one transaction.
pub struct NewSession<'a> {
    pub attempt: &'a Attempt,
    pub username_key: &'a str,
    pub user_id: &'a str,
    pub session_id: &'a str,
    pub refresh_hash: &'a [u8],
    pub refresh_expire_time: SystemTime,
    /// A device token to remember (its hash and expiry), when the login did not present one.
    pub new_device: Option<(&'a [u8], SystemTime)>,
}

/// Why an admin change to a user was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    NotFound,
    /// It would leave no enabled admin.
    LastAdmin,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated")]
    Conflict,
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub async fn open(url: &DatabaseUrl, pool: &PoolOptions) -> Result<Self, DbError> {
        let migrations = Migrations {
            sqlite: sqlite::MIGRATIONS,
            postgres: postgres::MIGRATIONS,
        };
        Ok(Self {
            db: Database::open(url, pool, &migrations).await?,
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

    /// Inserts a new user; `Conflict` if the username key is taken.
    pub async fn insert_user(&self, user: User, username: Username, hash: String) -> Result<(), StoreError> {
        let inserted: Result<(), DbError> = transaction!(&self.db, |tx| async move {
            tx.insert_user(&user, &username, &hash).await
        });
        inserted.map_err(|e| {
            if e.is_unique_violation() {
                StoreError::Conflict
            } else {
                e.into()
            }
        })
    }

    /// The account with this username, with its password hash.
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<Credentials>, DbError> {
        let key = username.key().to_owned();
        read!(&self.db, |tx| async move { tx.credentials(&key).await })
    }

    pub async fn find_user(&self, user_id: &str) -> Result<Option<User>, DbError> {
        let id = user_id.to_owned();
        read!(&self.db, |tx| async move { tx.user(&id, false).await })
    }

    /// Users in creation order (ids are UUIDv7, so id order), after `after`.
    pub async fn list_users(&self, after: Option<String>, limit: usize) -> Result<Vec<User>, DbError> {
        let after = after.unwrap_or_default();
        read!(&self.db, |tx| async move { tx.users_after(&after, limit).await })
    }

    /// Replaces a user's roles. Taking any role away ends the user's sessions, so no live token still
    /// carries it: their revocations are returned, logged in the same transaction.
    pub async fn set_roles(
        &self,
        user_id: &str,
        roles: Vec<String>,
        now: SystemTime,
    ) -> Result<Result<(User, Vec<Revocation>), AdminRefusal>, DbError> {
        let id = user_id.to_owned();
        transaction!(&self.db, |tx| async move {
            // The admins first, then the user: one lock order for every admin change, so two cannot deadlock.
            let admins = tx.enabled_admins().await?;
            let Some(mut user) = tx.user(&id, true).await? else {
                return Ok(Err(AdminRefusal::NotFound));
            };
            if !roles.iter().any(|r| r == ROLE_ADMIN) && is_last_admin(&admins, &id) {
                return Ok(Err(AdminRefusal::LastAdmin));
            }
            tx.set_roles(&id, &roles).await?;
            let removes_a_role = user.roles.iter().any(|r| !roles.contains(r));
            let ended = match removes_a_role {
                true => tx.revoke_user_sessions(&id, now).await?,
                false => Vec::new(),
            };
            let revocations: Vec<Revocation> = ended
                .into_iter()
                .map(|session| Revocation::new(Target::Session(session), now, Reason::TokenRevoked))
                .collect();
            log_all(tx, &revocations).await?;
            user.roles = roles;
            Ok(Ok((user, revocations)))
        })
    }

    /// Disables a user and ends its sessions (idempotent: the first disabling time stands).
    pub async fn disable_user(
        &self,
        user_id: &str,
        now: SystemTime,
    ) -> Result<Result<(User, Revocation), AdminRefusal>, DbError> {
        let id = user_id.to_owned();
        transaction!(&self.db, |tx| async move {
            let admins = tx.enabled_admins().await?;
            let Some(mut user) = tx.user(&id, true).await? else {
                return Ok(Err(AdminRefusal::NotFound));
            };
            if is_last_admin(&admins, &id) {
                return Ok(Err(AdminRefusal::LastAdmin));
            }
            let disabled_at = tx.disable_user(&id, now).await?;
            tx.revoke_user_sessions(&id, now).await?;
            let revocation = Revocation::new(Target::User(id), disabled_at, Reason::UserDisabled);
            if !user.disabled {
                tx.log_revocation(&revocation).await?;
            }
            user.disabled = true;
            Ok(Ok((user, revocation)))
        })
    }

    /// Forgets a user's failed logins (and its devices'), lifting any lock.
    pub async fn unlock_user(&self, user_id: &str) -> Result<Option<User>, DbError> {
        let id = user_id.to_owned();
        transaction!(&self.db, |tx| async move {
            let user = tx.user(&id, true).await?;
            if user.is_some() {
                tx.clear_user_failures(&id).await?;
            }
            Ok(user)
        })
    }

    /// Reserves one login attempt: counted as a failure *before* the password is checked (and forgiven by
    /// [`Store::start_session`]), so parallel guesses cannot slip in before the first failure is recorded.
    /// A live device token of this account draws on its own budget; anything else on the account's.
    pub async fn begin_login_attempt(
        &self,
        username_key: &str,
        device_hash: Option<Vec<u8>>,
        threshold: u32,
        now: SystemTime,
    ) -> Result<Result<Attempt, Duration>, DbError> {
        let key = username_key.to_owned();
        transaction!(&self.db, |tx| async move {
            if let Some(hash) = device_hash
                && let Some(failures) = tx.device_failures(&hash, &key, now).await?
            {
                return Ok(match reserve(failures, threshold, now) {
                    Ok(counted) => {
                        tx.set_device_failures(&hash, counted).await?;
                        Ok(Attempt::Device(hash))
                    }
                    Err(wait) => Err(wait),
                });
            }
            let failures = tx.account_failures(&key, now).await?;
            Ok(match reserve(failures, threshold, now) {
                Ok(counted) => {
                    tx.set_account_failures(&key, counted, now).await?;
                    Ok(Attempt::Account)
                }
                Err(wait) => Err(wait),
            })
        })
    }

    /// After a password matched: forgives the attempt and starts a session, for the user as stored *now*
    /// (its roles, and `None` if it has been disabled meanwhile), so the token is issued from this read.
    pub async fn start_session(&self, new: NewSession<'_>, now: SystemTime) -> Result<Option<User>, DbError> {
        let (attempt, key, user_id, session_id) = (
            new.attempt.clone(),
            new.username_key.to_owned(),
            new.user_id.to_owned(),
            new.session_id.to_owned(),
        );
        let refresh_hash = new.refresh_hash.to_vec();
        let new_device = new.new_device.map(|(hash, expire)| (hash.to_vec(), expire));
        let refresh_expire_time = new.refresh_expire_time;
        transaction!(&self.db, |tx| async move {
            let user = match tx.user(&user_id, true).await? {
                Some(user) if !user.disabled => user,
                _ => return Ok(None),
            };
            match &attempt {
                Attempt::Account => tx.clear_account_failures(&key).await?,
                Attempt::Device(hash) => tx.set_device_failures(hash, Failures::default()).await?,
            }
            tx.insert_session(&session_id, &user_id, now).await?;
            tx.insert_refresh(&refresh_hash, &session_id, refresh_expire_time)
                .await?;
            if let Some((hash, expire)) = new_device {
                tx.insert_device(&hash, &user_id, now, expire).await?;
            }
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
            tx.session_state(&session_id, &user_id).await
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
    ) -> Result<Rotation, DbError> {
        transaction!(&self.db, |tx| async move {
            let Some(presented) = tx.presented_refresh(&hash).await? else {
                return Ok(Rotation::Unknown);
            };
            let successor = match presented.rotate_time {
                Some(_) => tx.refresh_times(&successor_hash).await?,
                None => None,
            };
            let outcome = rotation(&presented, successor, now, grace, ttl);
            match &outcome {
                Rotation::Rotated { expire_time, .. } if presented.rotate_time.is_none() => {
                    tx.mark_rotated(&hash, now).await?;
                    tx.insert_refresh(&successor_hash, &presented.session_id, *expire_time)
                        .await?;
                }
                // `rotation` answers Revoked for an ended session, so this one is live until now.
                Rotation::Reused(revocation) => {
                    tx.revoke_session(&presented.session_id, now).await?;
                    tx.log_revocation(revocation).await?;
                }
                _ => {}
            }
            Ok(outcome)
        })
    }

    /// The session a refresh token belongs to, if it is one of ours.
    pub async fn session_of_refresh(&self, hash: Vec<u8>) -> Result<Option<String>, DbError> {
        read!(&self.db, |tx| async move { tx.refresh_session(&hash).await })
    }

    /// Ends a session (idempotent: an ended session keeps its first revocation, and is not logged again).
    pub async fn revoke_session(&self, session_id: &str, now: SystemTime) -> Result<Revocation, DbError> {
        let revocation = Revocation::new(Target::Session(session_id.to_owned()), now, Reason::TokenRevoked);
        let logged = revocation.clone();
        let id = session_id.to_owned();
        transaction!(&self.db, |tx| async move {
            if tx.revoke_session(&id, now).await? {
                tx.log_revocation(&logged).await?;
            }
            Ok::<_, DbError>(())
        })?;
        Ok(revocation)
    }

    /// Drops what can no longer matter: expired refresh and device tokens, failed-login records idle for
    /// longer than the longest lock, and revocation log rows older than `window` (plus a margin).
    pub async fn purge_expired(&self, now: SystemTime, window: Duration) -> Result<usize, DbError> {
        let (idle, log_cutoff) = (now - LOCK_CAP, now - window - LOG_MARGIN);
        transaction!(
            &self.db,
            |tx| async move { tx.purge(now, idle, log_cutoff).await }
        )
    }

    /// A named secret, created from `candidate` the first time it is asked for.
    pub async fn secret_or_insert(&self, name: &'static str, candidate: Vec<u8>) -> Result<Vec<u8>, DbError> {
        transaction!(&self.db, |tx| async move {
            tx.insert_secret(name, &candidate).await?;
            Ok(tx.secret(name).await?.unwrap_or(candidate))
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
            Ok((tx.keys(now - window).await?, tx.revoked_keys(now - window).await?))
        })
    }

    /// The signing key: the newest stored one, or `candidate` if none is stored yet. Replicas starting at
    /// once on an empty database agree on one key.
    pub async fn signing_key_or_insert(
        &self,
        kid: &str,
        pem: &str,
        now: SystemTime,
    ) -> Result<String, DbError> {
        let (kid, pem) = (kid.to_owned(), pem.to_owned());
        transaction!(&self.db, |tx| async move {
            tx.lock_keys().await?;
            match tx.keys(now).await?.into_iter().find(|k| !k.retired) {
                Some(key) => Ok(key.pem),
                None => {
                    tx.insert_key(&kid, &pem, now).await?;
                    Ok(pem)
                }
            }
        })
    }

    /// Makes `pem` the signing key: the current one is retired now (and keeps verifying for a while).
    pub async fn rotate_key(&self, kid: &str, pem: &str, now: SystemTime) -> Result<(), DbError> {
        let (kid, pem) = (kid.to_owned(), pem.to_owned());
        transaction!(&self.db, |tx| async move {
            tx.lock_keys().await?;
            tx.retire_signing_key(now).await?;
            tx.insert_key(&kid, &pem, now).await
        })
    }

    /// Revokes key `kid`: it verifies nothing from now on. If it was the signing key, `replacement` (kid,
    /// PEM) signs from now on. `None` if there is no such key.
    pub async fn revoke_key(
        &self,
        kid: &str,
        replacement: (String, String),
        now: SystemTime,
    ) -> Result<Option<Revocation>, DbError> {
        let kid = kid.to_owned();
        transaction!(&self.db, |tx| async move {
            tx.lock_keys().await?;
            let keys = tx.keys(SystemTime::UNIX_EPOCH).await?;
            let was_signing = keys.iter().any(|k| k.kid == kid && !k.retired);
            if !tx.revoke_key(&kid, now).await? {
                return Ok(None);
            }
            if was_signing {
                tx.insert_key(&replacement.0, &replacement.1, now).await?;
            }
            let revocation = Revocation::new(Target::Key(kid), now, Reason::TokenRevoked);
            tx.log_revocation(&revocation).await?;
            Ok(Some(revocation))
        })
    }

    /// Deletes keys retired before `cutoff`: no live token can name them.
    pub async fn drop_retired_keys(&self, cutoff: SystemTime) -> Result<usize, DbError> {
        transaction!(&self.db, |tx| async move {
            tx.delete_keys_retired_before(cutoff).await
        })
    }

    /// Revocations that may still matter: those made since `since`.
    pub async fn recent_revocations(&self, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
        read!(&self.db, |tx| async move { tx.revocations_since(since).await })
    }

    /// Revocation log rows after `id`, in commit order, with their ids.
    pub async fn revocations_after(&self, id: i64) -> Result<Vec<(i64, Revocation)>, DbError> {
        read!(&self.db, |tx| async move { tx.revocations_after(id).await })
    }

    /// The id of the newest revocation log row (0 when there is none).
    pub async fn last_revocation_id(&self) -> Result<i64, DbError> {
        read!(&self.db, |tx| async move { tx.last_revocation_id().await })
    }
}

async fn log_all(tx: &mut impl Tx, revocations: &[Revocation]) -> Result<(), DbError> {
    for revocation in revocations {
        tx.log_revocation(revocation).await?;
    }
    Ok(())
}

/// Whether `user_id` is the only enabled admin, so taking admin away from it would leave none.
fn is_last_admin(enabled_admins: &[String], user_id: &str) -> bool {
    enabled_admins.iter().all(|admin| admin == user_id) && enabled_admins.iter().any(|a| a == user_id)
}

/// Counts one more attempt against `failures`, or says how long they are locked. Reaching `threshold`
/// failures locks for 30 s, doubling with each further failure, up to 15 min.
fn reserve(failures: Failures, threshold: u32, now: SystemTime) -> Result<Failures, Duration> {
    let wait = failures
        .locked_until
        .and_then(|until| until.duration_since(now).ok());
    if let Some(wait) = wait.filter(|wait| !wait.is_zero()) {
        return Err(wait);
    }
    let count = failures.count.saturating_add(1);
    let locked_until = u32::try_from(count)
        .ok()
        .and_then(|count| count.checked_sub(threshold))
        .map(|over| {
            now + LOCK_BASE
                .saturating_mul(2u32.saturating_pow(over.min(20)))
                .min(LOCK_CAP)
        });
    Ok(Failures { count, locked_until })
}

/// What presenting a refresh token leads to. `successor`: the rotate and expire times of the token this
/// one was rotated to, when it was. Disabled first: disabling also revokes sessions, and "disabled" is the
/// more useful answer. A failed login never matters here: whoever holds a live session keeps it.
fn rotation(
    presented: &Presented,
    successor: Option<(Option<SystemTime>, SystemTime)>,
    now: SystemTime,
    grace: Duration,
    ttl: Duration,
) -> Rotation {
    if presented.user.disabled {
        return Rotation::UserDisabled;
    }
    if presented.session_revoked {
        return Rotation::Revoked;
    }
    if presented.expire_time <= now {
        return Rotation::Expired;
    }
    let rotated = |expire_time| Rotation::Rotated {
        user: presented.user.clone(),
        session_id: presented.session_id.clone(),
        expire_time,
    };
    let Some(rotated_at) = presented.rotate_time else {
        return rotated(now + ttl);
    };
    let repeat = now.duration_since(rotated_at).unwrap_or_default() <= grace;
    match successor {
        // A repeat within the grace window, and the successor has not itself been used yet.
        Some((None, successor_expires)) if repeat => rotated(successor_expires),
        _ => Rotation::Reused(Revocation::new(
            Target::Session(presented.session_id.clone()),
            now,
            Reason::TokenRevoked,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_000_000);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + T0 + Duration::from_secs(secs)
    }

    #[test]
    fn attempts_lock_at_the_threshold_and_double_up_to_the_cap() {
        let mut failures = Failures::default();
        for _ in 0..4 {
            failures = reserve(failures, 5, at(0)).unwrap();
            assert_eq!(failures.locked_until, None);
        }
        failures = reserve(failures, 5, at(0)).unwrap();
        assert_eq!(failures.locked_until, Some(at(30)));
        assert_eq!(reserve(failures, 5, at(10)), Err(Duration::from_secs(20)));
        failures = reserve(failures, 5, at(30)).unwrap();
        assert_eq!(failures.locked_until, Some(at(90)));
        let capped = reserve(
            Failures {
                count: 40,
                locked_until: None,
            },
            5,
            at(0),
        )
        .unwrap();
        assert_eq!(capped.locked_until, Some(at(0) + LOCK_CAP));
    }

    #[test]
    fn the_last_enabled_admin_is_recognised() {
        let admins = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_last_admin(&admins(&["a"]), "a"));
        assert!(!is_last_admin(&admins(&["a", "b"]), "a"));
        assert!(
            !is_last_admin(&admins(&["a"]), "b"),
            "not an admin: nothing to lose"
        );
        assert!(!is_last_admin(&admins(&[]), "a"));
    }

    fn presented(rotate_time: Option<SystemTime>) -> Presented {
        Presented {
            session_id: "s".into(),
            expire_time: at(1000),
            rotate_time,
            session_revoked: false,
            user: User {
                id: "u".into(),
                username: "alice".into(),
                roles: vec![],
                create_time: at(0),
                disabled: false,
            },
        }
    }

    #[test]
    fn rotation_repeats_within_grace_and_treats_later_reuse_as_theft() {
        let (grace, ttl) = (Duration::from_secs(5), Duration::from_secs(100));
        let fresh = rotation(&presented(None), None, at(10), grace, ttl);
        assert!(matches!(fresh, Rotation::Rotated { expire_time, .. } if expire_time == at(110)));
        let rotated = presented(Some(at(10)));
        let repeat = rotation(&rotated, Some((None, at(110))), at(12), grace, ttl);
        assert!(matches!(repeat, Rotation::Rotated { expire_time, .. } if expire_time == at(110)));
        let late = rotation(&rotated, Some((None, at(110))), at(20), grace, ttl);
        assert!(matches!(late, Rotation::Reused(_)));
        let successor_used = rotation(&rotated, Some((Some(at(11)), at(110))), at(12), grace, ttl);
        assert!(matches!(successor_used, Rotation::Reused(_)));
        let mut disabled = presented(None);
        disabled.user.disabled = true;
        disabled.session_revoked = true;
        assert!(matches!(
            rotation(&disabled, None, at(10), grace, ttl),
            Rotation::UserDisabled
        ));
        assert!(matches!(
            rotation(&presented(None), None, at(1000), grace, ttl),
            Rotation::Expired
        ));
    }
}
