//! auth-svc's storage: users, sessions, refresh tokens, signing keys and secrets. Handlers see only these
//! methods, so another backend can slot in behind them without touching handler code.

use std::time::{Duration, SystemTime};

mod postgres;

use watchword_db::rusqlite::OptionalExtension as _;
use watchword_db::{
    Database, DatabaseUrl, DbError, Migrations, from_micros, postgres::PoolOptions, rusqlite, sqlite_or,
    to_micros,
};

use watchword::reason::Reason;

use crate::{
    domain::{Credentials, User, Username},
    revocations::{Revocation, Target},
};

/// Append-only: entry `i` is schema version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    -- NFKC + case-folded username: the uniqueness key.
    username_key    TEXT NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,
    -- Space-separated role names.
    roles           TEXT NOT NULL,
    create_time_us  INTEGER NOT NULL
) STRICT;

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    private_key_pem TEXT NOT NULL,
    create_time_us  INTEGER NOT NULL
) STRICT;
"#,
    r#"
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;

-- One row per login. Revoking it ends every access and refresh token of the login.
CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id),
    create_time_us  INTEGER NOT NULL,
    revoke_time_us  INTEGER
) STRICT;
CREATE INDEX sessions_by_user ON sessions (user_id);

-- Keyed hashes of refresh tokens, never the tokens. A rotated token keeps its row (rotate_time_us set)
-- so that reuse can be recognised.
CREATE TABLE refresh_tokens (
    hash            BLOB PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions (id),
    expire_time_us  INTEGER NOT NULL,
    rotate_time_us  INTEGER
) STRICT;
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expire_time_us);

-- Service-wide secrets generated on first start (e.g. the refresh-token pepper).
CREATE TABLE secrets (
    name            TEXT PRIMARY KEY,
    value           BLOB NOT NULL
) STRICT;
"#,
    r#"
-- Failed-login bookkeeping per username key, whether or not such a user exists (so that unknown names
-- are throttled exactly like real ones). A row is deleted by a successful login.
CREATE TABLE login_failures (
    username_key    TEXT PRIMARY KEY,
    failures        INTEGER NOT NULL,
    locked_until_us INTEGER,
    last_attempt_us INTEGER NOT NULL
) STRICT;
"#,
    r#"
-- Set when a newer key takes over signing; the key keeps verifying until its tokens have expired.
ALTER TABLE signing_keys ADD COLUMN retire_time_us INTEGER;
CREATE INDEX sessions_by_revoke_time ON sessions (revoke_time_us) WHERE revoke_time_us IS NOT NULL;
"#,
];

/// The first lock lasts this long; each further failure doubles it, up to [`LOCK_CAP`].
const LOCK_BASE: Duration = Duration::from_secs(30);
const LOCK_CAP: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated")]
    Conflict,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What Validate needs to know beyond the signature: is the session live, and the user enabled?
#[derive(Debug, Clone)]
pub struct SessionState {
    pub revoked: bool,
    pub user: User,
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
    /// The account is locked after failed logins; refresh waits like login does.
    Locked(Duration),
    /// An already-rotated token came back after the grace window: the session has just been revoked.
    Reused {
        session_id: String,
    },
}

#[derive(Clone)]
pub struct Store {
    db: Database,
}

const USER_COLUMNS: &str = "id, username, roles, create_time_us, disabled";

impl Store {
    pub async fn open(url: &DatabaseUrl, pool: &PoolOptions) -> Result<Self, DbError> {
        let migrations = Migrations {
            sqlite: MIGRATIONS,
            postgres: postgres::MIGRATIONS,
        };
        Ok(Self {
            db: Database::open(url, pool, &migrations).await?,
        })
    }

    /// Whether other processes may write to this database (PostgreSQL), so revocations made elsewhere
    /// must be picked up by polling.
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    /// Revocations recorded at or after `since` (PostgreSQL; an SQLite file has one writer process, which
    /// already published its own).
    pub async fn revocations_since(&self, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
        match &self.db {
            Database::Sqlite(_) => Ok(Vec::new()),
            Database::Postgres(pg) => postgres::revocations_since(pg, since).await,
        }
    }

    /// Inserts a new user; `Conflict` if the username key is taken.
    pub async fn insert_user(
        &self,
        user: &User,
        username: &Username,
        password_hash: String,
    ) -> Result<(), StoreError> {
        let db = sqlite_or!(&self.db, |pg| postgres::insert_user(
            pg,
            user,
            username,
            &password_hash
        )
        .await);
        let (id, display, key) = (
            user.id.clone(),
            username.as_str().to_owned(),
            username.key().to_owned(),
        );
        let roles = user.roles.join(" ");
        let created = to_micros(user.create_time);
        let result = db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO users (id, username, username_key, password_hash, roles, create_time_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![id, display, key, password_hash, roles, created],
                )
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(DbError::Sqlite(e)) if is_unique_violation(&e) => Err(StoreError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// The account with this username key, with its password hash.
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<Credentials>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::find_credentials(pg, username).await);
        let key = username.key().to_owned();
        db.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users WHERE username_key = ?1"
            ))?;
            let mut rows = stmt.query([key])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(Credentials {
                user: read_user(row)?,
                password_hash: row.get(5)?,
            }))
        })
        .await
    }

    pub async fn find_user(&self, user_id: &str) -> Result<Option<User>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::find_user(pg, user_id).await);
        let id = user_id.to_owned();
        db.read(move |conn| user_by_id(conn, &id)).await
    }

    /// Users in creation order (ids are UUIDv7, so id order), after `after`.
    pub async fn list_users(&self, after: Option<String>, limit: usize) -> Result<Vec<User>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::list_users(pg, after, limit).await);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        db.read(move |conn| {
            // The cast keeps the bound LIMIT out of the plan: a bare `LIMIT ?2` re-prepares on every call.
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE id > ?1 ORDER BY id LIMIT CAST(?2 AS INTEGER)"
            ))?
            .query_map(rusqlite::params![after.unwrap_or_default(), limit], |row| {
                read_user(row)
            })?
            .collect()
        })
        .await
    }

    /// Replaces a user's roles. If any role is taken away, the user's sessions end, so that no live
    /// token still carries it (their ids are returned). `None` if there is no such user.
    pub async fn set_roles(
        &self,
        user_id: &str,
        roles: Vec<String>,
        now: SystemTime,
    ) -> Result<Option<(User, Vec<String>)>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::set_roles(pg, user_id, roles, now).await);
        let id = user_id.to_owned();
        db.write(move |tx| {
            let Some(mut user) = user_by_id(tx, &id)? else {
                return Ok(None);
            };
            let removes_a_role = user.roles.iter().any(|r| !roles.contains(r));
            tx.execute(
                "UPDATE users SET roles = ?1 WHERE id = ?2",
                rusqlite::params![roles.join(" "), id],
            )?;
            let ended = if removes_a_role {
                revoke_user_sessions(tx, &id, now)?
            } else {
                Vec::new()
            };
            user.roles = roles;
            Ok(Some((user, ended)))
        })
        .await
    }

    /// Disables a user and ends all its sessions. `None` if there is no such user.
    pub async fn disable_user(&self, user_id: &str, now: SystemTime) -> Result<Option<User>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::disable_user(pg, user_id, now).await);
        let id = user_id.to_owned();
        db.write(move |tx| {
            let Some(mut user) = user_by_id(tx, &id)? else {
                return Ok(None);
            };
            tx.execute("UPDATE users SET disabled = 1 WHERE id = ?1", [&id])?;
            revoke_user_sessions(tx, &id, now)?;
            user.disabled = true;
            Ok(Some(user))
        })
        .await
    }

    /// Starts a session for `user_id` with its first refresh token.
    pub async fn create_session(
        &self,
        session_id: &str,
        user_id: &str,
        refresh_hash: Vec<u8>,
        refresh_expire_time: SystemTime,
        now: SystemTime,
    ) -> Result<(), DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::create_session(
            pg,
            session_id,
            user_id,
            refresh_hash,
            refresh_expire_time,
            now
        )
        .await);
        let (session_id, user_id) = (session_id.to_owned(), user_id.to_owned());
        db.write(move |tx| {
            tx.execute(
                "INSERT INTO sessions (id, user_id, create_time_us) VALUES (?1, ?2, ?3)",
                rusqlite::params![session_id, user_id, to_micros(now)],
            )?;
            tx.execute(
                "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES (?1, ?2, ?3)",
                rusqlite::params![refresh_hash, session_id, to_micros(refresh_expire_time)],
            )?;
            Ok(())
        })
        .await
    }

    /// The state of `session_id` and its user, or `None` if the session does not belong to `user_id`.
    pub async fn session_state(
        &self,
        session_id: &str,
        user_id: &str,
    ) -> Result<Option<SessionState>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::session_state(pg, session_id, user_id)
            .await);
        let (session_id, user_id) = (session_id.to_owned(), user_id.to_owned());
        db.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT u.id, u.username, u.roles, u.create_time_us, u.disabled, s.revoke_time_us
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.id = ?1 AND s.user_id = ?2",
            )?;
            let mut rows = stmt.query([session_id, user_id])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(SessionState {
                user: read_user(row)?,
                revoked: row.get::<_, Option<i64>>(5)?.is_some(),
            }))
        })
        .await
    }

    /// Presents refresh token `hash` for rotation to `successor_hash`, atomically.
    ///
    /// Within `grace` of the first rotation, presenting the same token again is accepted as a repeat
    /// (the caller hands out the same, derived successor). Later, it is reuse: the session is revoked.
    pub async fn rotate_refresh(
        &self,
        hash: Vec<u8>,
        successor_hash: Vec<u8>,
        now: SystemTime,
        grace: Duration,
        ttl: Duration,
    ) -> Result<Rotation, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::rotate_refresh(
            pg,
            hash,
            successor_hash,
            now,
            grace,
            ttl
        )
        .await);
        db.write(move |tx| {
            let found = {
                let mut stmt = tx.prepare_cached(
                    "SELECT r.session_id, r.expire_time_us, r.rotate_time_us, s.revoke_time_us,
                                u.id, u.username, u.roles, u.create_time_us, u.disabled, f.locked_until_us
                         FROM refresh_tokens r
                         JOIN sessions s ON s.id = r.session_id
                         JOIN users u ON u.id = s.user_id
                         LEFT JOIN login_failures f ON f.username_key = u.username_key
                         WHERE r.hash = ?1",
                )?;
                let mut rows = stmt.query([&hash])?;
                match rows.next()? {
                    None => None,
                    Some(row) => Some((
                        row.get::<_, String>(0)?,
                        from_micros(row.get(1)?),
                        row.get::<_, Option<i64>>(2)?.map(from_micros),
                        row.get::<_, Option<i64>>(3)?.is_some(),
                        User {
                            id: row.get(4)?,
                            username: row.get(5)?,
                            roles: split_roles(&row.get::<_, String>(6)?),
                            create_time: from_micros(row.get(7)?),
                            disabled: row.get(8)?,
                        },
                        row.get::<_, Option<i64>>(9)?.map(from_micros),
                    )),
                }
            };
            let Some((session_id, expire_time, rotated_at, revoked, user, locked_until)) = found else {
                return Ok(Rotation::Unknown);
            };
            if let Some(early) = refusal(&user, revoked, locked_until, expire_time, now) {
                return Ok(early);
            }
            let successor_expire_time = now + ttl;
            match rotated_at {
                None => {
                    tx.execute(
                        "UPDATE refresh_tokens SET rotate_time_us = ?1 WHERE hash = ?2",
                        rusqlite::params![to_micros(now), hash],
                    )?;
                    tx.execute(
                        "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES (?1, ?2, ?3)",
                        rusqlite::params![successor_hash, session_id, to_micros(successor_expire_time)],
                    )?;
                    Ok(Rotation::Rotated {
                        user,
                        session_id,
                        expire_time: successor_expire_time,
                    })
                }
                Some(rotated_at) if now.duration_since(rotated_at).unwrap_or_default() <= grace => {
                    // A repeat: fine as long as the successor has not itself been used yet.
                    let successor: Option<(Option<i64>, i64)> = tx
                        .query_row(
                            "SELECT rotate_time_us, expire_time_us FROM refresh_tokens WHERE hash = ?1",
                            [&successor_hash],
                            |row| Ok((row.get(0)?, row.get(1)?)),
                        )
                        .optional()?;
                    match successor {
                        Some((None, expire_us)) => Ok(Rotation::Rotated {
                            user,
                            session_id,
                            expire_time: from_micros(expire_us),
                        }),
                        _ => {
                            revoke_session(tx, &session_id, now)?;
                            Ok(Rotation::Reused { session_id })
                        }
                    }
                }
                Some(_) => {
                    revoke_session(tx, &session_id, now)?;
                    Ok(Rotation::Reused { session_id })
                }
            }
        })
        .await
    }

    /// Reserves one login attempt for `username_key`, or says how long the account is locked.
    ///
    /// The attempt is counted as a failure *before* the password is checked (and forgiven by
    /// [`Store::login_succeeded`]), in one write transaction: so 50 parallel guesses cannot all slip in
    /// before the first failure is recorded. Reaching `threshold` failures locks the account for 30 s,
    /// doubling with each further failure up to 15 min.
    pub async fn begin_login_attempt(
        &self,
        username_key: &str,
        threshold: u32,
        now: SystemTime,
    ) -> Result<Result<(), Duration>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::begin_login_attempt(
            pg,
            username_key,
            threshold,
            now
        )
        .await);
        let key = username_key.to_owned();
        db.write(move |tx| {
            let row: Option<(i64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT failures, locked_until_us FROM login_failures WHERE username_key = ?1",
                )?
                .query_row([&key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let (failures, locked_until) = row.unwrap_or((0, None));
            if let Some(wait) = locked_until.and_then(|until| from_micros(until).duration_since(now).ok()) {
                return Ok(Err(wait));
            }
            let failures: i64 = failures.saturating_add(1);
            let locked_until = lock_until(failures, threshold, now);
            tx.prepare_cached(
                "INSERT INTO login_failures (username_key, failures, locked_until_us, last_attempt_us)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (username_key) DO UPDATE
                     SET failures = ?2, locked_until_us = ?3, last_attempt_us = ?4",
            )?
            .execute(rusqlite::params![key, failures, locked_until, to_micros(now)])?;
            Ok(Ok(()))
        })
        .await
    }

    /// Forgets failed attempts after a successful login.
    pub async fn login_succeeded(&self, username_key: &str) -> Result<(), DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::login_succeeded(pg, username_key).await);
        let key = username_key.to_owned();
        db.write(move |tx| tx.execute("DELETE FROM login_failures WHERE username_key = ?1", [key]))
            .await?;
        Ok(())
    }

    /// The session a refresh token belongs to, if it is one of ours.
    pub async fn session_of_refresh(&self, hash: Vec<u8>) -> Result<Option<String>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::session_of_refresh(pg, hash).await);
        db.read(move |conn| {
            conn.query_row(
                "SELECT session_id FROM refresh_tokens WHERE hash = ?1",
                [hash],
                |row| row.get(0),
            )
            .optional()
        })
        .await
    }

    /// Ends a session (idempotent: an ended session keeps its first revocation time).
    pub async fn revoke_session(&self, session_id: &str, now: SystemTime) -> Result<(), DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::revoke_session(pg, session_id, now).await);
        let session_id = session_id.to_owned();
        db.write(move |tx| revoke_session(tx, &session_id, now)).await
    }

    /// Drops refresh-token rows that expired before `cutoff` (they can never be presented successfully) and
    /// failed-login records idle for longer than the longest lock.
    pub async fn purge_expired(&self, cutoff: SystemTime) -> Result<usize, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::purge_expired(pg, cutoff).await);
        let idle = to_micros(cutoff - LOCK_CAP);
        db.write(move |tx| {
            let tokens = tx.execute(
                "DELETE FROM refresh_tokens WHERE expire_time_us < ?1",
                [to_micros(cutoff)],
            )?;
            let failures = tx.execute("DELETE FROM login_failures WHERE last_attempt_us < ?1", [idle])?;
            Ok(tokens + failures)
        })
        .await
    }

    /// A named secret, created from `candidate` the first time it is asked for.
    pub async fn secret_or_insert(&self, name: &'static str, candidate: Vec<u8>) -> Result<Vec<u8>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::secret_or_insert(pg, name, candidate)
            .await);
        db.write(move |tx| {
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                rusqlite::params![name, candidate],
            )?;
            tx.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |row| {
                row.get(0)
            })
        })
        .await
    }

    /// Keys that may still verify a live token, newest first: `(private key PEM, retired)`. Keys retired
    /// before `cutoff` are left out (every token they signed has expired).
    pub async fn load_keys(&self, cutoff: SystemTime) -> Result<Vec<(String, bool)>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::load_keys(pg, cutoff).await);
        db.read(move |conn| {
            conn.prepare_cached(
                "SELECT private_key_pem, retire_time_us IS NOT NULL FROM signing_keys
                     WHERE retire_time_us IS NULL OR retire_time_us >= ?1
                     ORDER BY create_time_us DESC, kid",
            )?
            .query_map([to_micros(cutoff)], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect()
        })
        .await
    }

    /// Makes `pem` the signing key: every other key is retired now (and keeps verifying for a while).
    pub async fn rotate_key(&self, kid: &str, pem: &str, now: SystemTime) -> Result<(), DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::rotate_key(pg, kid, pem, now).await);
        let (kid, pem) = (kid.to_owned(), pem.to_owned());
        db.write(move |tx| {
            tx.execute(
                "UPDATE signing_keys SET retire_time_us = ?1 WHERE retire_time_us IS NULL",
                [to_micros(now)],
            )?;
            tx.execute(
                "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES (?1, ?2, ?3)",
                rusqlite::params![kid, pem, to_micros(now)],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes keys retired before `cutoff`: no live token can name them.
    pub async fn drop_retired_keys(&self, cutoff: SystemTime) -> Result<usize, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::drop_retired_keys(pg, cutoff).await);
        db.write(move |tx| {
            tx.execute(
                "DELETE FROM signing_keys WHERE retire_time_us < ?1",
                [to_micros(cutoff)],
            )
        })
        .await
    }

    /// Revocations that may still matter: sessions revoked since `since`, and disabled users.
    pub async fn recent_revocations(&self, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::recent_revocations(pg, since).await);
        db.read(move |conn| {
            let mut revocations: Vec<Revocation> = conn
                .prepare_cached("SELECT id, revoke_time_us FROM sessions WHERE revoke_time_us >= ?1")?
                .query_map([to_micros(since)], |row| {
                    Ok(Revocation {
                        target: Target::Session(row.get(0)?),
                        revoke_time: from_micros(row.get(1)?),
                        reason: Reason::TokenRevoked,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let disabled = conn
                .prepare_cached("SELECT id FROM users WHERE disabled = 1")?
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let now = SystemTime::now();
            revocations.extend(disabled.into_iter().map(|id| Revocation {
                target: Target::User(id),
                revoke_time: now,
                reason: Reason::UserDisabled,
            }));
            Ok(revocations)
        })
        .await
    }

    /// The signing key in use: the newest stored one, or `candidate` if none is stored yet. Insert-then-read
    /// lets several processes starting at once agree on one key.
    pub async fn signing_key_or_insert(&self, kid: &str, pem: &str) -> Result<String, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::signing_key_or_insert(pg, kid, pem).await);
        let (kid, pem) = (kid.to_owned(), pem.to_owned());
        let created = to_micros(SystemTime::now());
        db.write(move |tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT private_key_pem FROM signing_keys WHERE retire_time_us IS NULL
                         ORDER BY create_time_us DESC, kid LIMIT 1",
                    [],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(pem) = existing {
                return Ok(pem);
            }
            tx.execute(
                "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES (?1, ?2, ?3)",
                rusqlite::params![kid, pem, created],
            )?;
            Ok(pem)
        })
        .await
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.db.ping().await
    }
}

fn user_by_id(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], read_user)
        .optional()
}

fn read_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        roles: split_roles(&row.get::<_, String>(2)?),
        create_time: from_micros(row.get(3)?),
        disabled: row.get(4)?,
    })
}

/// The lock to set after `failures` failed attempts: none below `threshold`, then 30 s doubling per further
/// failure, capped. Shared by both backends so they lock alike.
fn lock_until(failures: i64, threshold: u32, now: SystemTime) -> Option<i64> {
    let over = u32::try_from(failures).ok()?.checked_sub(threshold)?;
    let lock = LOCK_BASE.saturating_mul(2u32.saturating_pow(over.min(20)));
    Some(to_micros(now + lock.min(LOCK_CAP)))
}

/// Why a presented refresh token cannot be rotated, before looking at rotation itself. Disabled first:
/// disabling also revokes sessions, and "disabled" is the more useful answer.
fn refusal(
    user: &User,
    revoked: bool,
    locked_until: Option<SystemTime>,
    expire_time: SystemTime,
    now: SystemTime,
) -> Option<Rotation> {
    if user.disabled {
        return Some(Rotation::UserDisabled);
    }
    if revoked {
        return Some(Rotation::Revoked);
    }
    if let Some(wait) = locked_until.and_then(|until| until.duration_since(now).ok()) {
        return Some(Rotation::Locked(wait));
    }
    if expire_time <= now {
        return Some(Rotation::Expired);
    }
    None
}

fn split_roles(roles: &str) -> Vec<String> {
    roles.split_whitespace().map(str::to_owned).collect()
}

fn revoke_session(tx: &rusqlite::Transaction<'_>, session_id: &str, now: SystemTime) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE sessions SET revoke_time_us = ?1 WHERE id = ?2 AND revoke_time_us IS NULL",
        rusqlite::params![to_micros(now), session_id],
    )?;
    Ok(())
}

/// Ends every live session of `user_id`, returning their ids.
fn revoke_user_sessions(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    now: SystemTime,
) -> rusqlite::Result<Vec<String>> {
    tx.prepare_cached(
        "UPDATE sessions SET revoke_time_us = ?1 WHERE user_id = ?2 AND revoke_time_us IS NULL RETURNING id",
    )?
    .query_map(rusqlite::params![to_micros(now), user_id], |row| row.get(0))?
    .collect()
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}
