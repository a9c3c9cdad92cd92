//! The SQLite dialect of auth-svc's store: SQL and row mapping, nothing else.

use std::time::SystemTime;

use watchword::reason::Reason;
use watchword_db::{
    DbError, SqliteTx, from_micros,
    rusqlite::{self, Row, params},
    to_micros,
};

use super::{Failures, Presented, SessionState, StoredKey};
use crate::domain::{Credentials, Revocation, User, Username, split_roles};

/// Append-only: entry `i` is schema version `i + 1`, the same version as in `postgres.rs`.
pub(super) const MIGRATIONS: &[&str] = &[
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
    r#"
-- When the account was disabled: the time its revocation carries, whoever reads it. Accounts disabled
-- before this version get the time of the upgrade.
ALTER TABLE users ADD COLUMN disable_time_us INTEGER;
UPDATE users SET disable_time_us = CAST(unixepoch('subsec') * 1000000 AS INTEGER) WHERE disabled = 1;

-- Set by RevokeSigningKey: the key verifies nothing from then on.
ALTER TABLE signing_keys ADD COLUMN revoke_time_us INTEGER;

-- Every revocation, in commit order: replicas relay the rows after the last id they have seen.
CREATE TABLE revocation (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- 'session', 'user' or 'key'.
    target_kind     TEXT NOT NULL,
    target_id       TEXT NOT NULL,
    -- The ErrorInfo reason for an affected token.
    reason          TEXT NOT NULL,
    revoke_time_us  INTEGER NOT NULL
) STRICT;
CREATE INDEX revocation_by_time ON revocation (revoke_time_us);
INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us)
    SELECT 'session', id, 'TOKEN_REVOKED', revoke_time_us FROM sessions
    WHERE revoke_time_us IS NOT NULL ORDER BY revoke_time_us;
INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us)
    SELECT 'user', id, 'USER_DISABLED', disable_time_us FROM users WHERE disabled = 1;

-- Devices the account holder logged in from (keyed hashes of device tokens): a login presenting one has
-- its own failure budget, so strangers' failures cannot lock the account holder out.
CREATE TABLE device_tokens (
    hash            BLOB PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id),
    create_time_us  INTEGER NOT NULL,
    expire_time_us  INTEGER NOT NULL,
    failures        INTEGER NOT NULL DEFAULT 0,
    locked_until_us INTEGER
) STRICT;
CREATE INDEX device_tokens_by_user ON device_tokens (user_id);
CREATE INDEX device_tokens_by_expiry ON device_tokens (expire_time_us);
"#,
];

const USER: &str = "id, username, roles, create_time_us, disabled";

fn user(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        roles: split_roles(&row.get::<_, String>(2)?),
        create_time: from_micros(row.get(3)?),
        disabled: row.get(4)?,
    })
}

fn time(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<SystemTime>> {
    Ok(row.get::<_, Option<i64>>(i)?.map(from_micros))
}

fn failures(row: &Row<'_>) -> rusqlite::Result<Failures> {
    Ok(Failures {
        count: row.get(0)?,
        locked_until: time(row, 1)?,
    })
}

fn revocation(row: &Row<'_>, first: usize) -> rusqlite::Result<Revocation> {
    let (kind, id, reason): (String, String, String) =
        (row.get(first)?, row.get(first + 1)?, row.get(first + 2)?);
    Revocation::from_columns(
        &kind,
        id,
        Reason::parse(&reason),
        from_micros(row.get(first + 3)?),
    )
    .ok_or_else(|| rusqlite::Error::InvalidColumnType(first, kind, rusqlite::types::Type::Text))
}

impl super::Tx for SqliteTx<'_> {
    async fn insert_user(&mut self, u: &User, username: &Username, hash: &str) -> Result<(), DbError> {
        self.exec(
            "INSERT INTO users (id, username, username_key, password_hash, roles, create_time_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                u.id,
                username.as_str(),
                username.key(),
                hash,
                u.roles.join(" "),
                to_micros(u.create_time)
            ],
        )?;
        Ok(())
    }

    async fn credentials(&mut self, username_key: &str) -> Result<Option<Credentials>, DbError> {
        let sql = format!("SELECT {USER}, password_hash FROM users WHERE username_key = ?1");
        self.one(&sql, [username_key], |row| {
            Ok(Credentials {
                user: user(row)?,
                password_hash: row.get(5)?,
            })
        })
    }

    async fn user(&mut self, id: &str, _lock: bool) -> Result<Option<User>, DbError> {
        self.one(&format!("SELECT {USER} FROM users WHERE id = ?1"), [id], user)
    }

    async fn users_after(&mut self, after: &str, limit: usize) -> Result<Vec<User>, DbError> {
        // The cast keeps the bound LIMIT out of the plan: a bare `LIMIT ?2` re-prepares on every call.
        let sql = format!("SELECT {USER} FROM users WHERE id > ?1 ORDER BY id LIMIT CAST(?2 AS INTEGER)");
        self.all(
            &sql,
            params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
            user,
        )
    }

    async fn enabled_admins(&mut self) -> Result<Vec<String>, DbError> {
        let sql = "SELECT id FROM users WHERE disabled = 0 AND ' ' || roles || ' ' LIKE '% admin %'";
        self.all(sql, [], |row| row.get(0))
    }

    async fn set_roles(&mut self, id: &str, roles: &[String]) -> Result<(), DbError> {
        self.exec(
            "UPDATE users SET roles = ?1 WHERE id = ?2",
            params![roles.join(" "), id],
        )?;
        Ok(())
    }

    async fn disable_user(&mut self, id: &str, now: SystemTime) -> Result<SystemTime, DbError> {
        let sql =
            "UPDATE users SET disabled = 1, disable_time_us = COALESCE(disable_time_us, ?2) WHERE id = ?1
                   RETURNING disable_time_us";
        let at = self.one(sql, params![id, to_micros(now)], |row| row.get(0))?;
        Ok(at.map_or(now, from_micros))
    }

    async fn insert_session(&mut self, id: &str, user_id: &str, now: SystemTime) -> Result<(), DbError> {
        let sql = "INSERT INTO sessions (id, user_id, create_time_us) VALUES (?1, ?2, ?3)";
        self.exec(sql, params![id, user_id, to_micros(now)])?;
        Ok(())
    }

    async fn session_state(&mut self, id: &str, user_id: &str) -> Result<Option<SessionState>, DbError> {
        let sql = "SELECT u.id, u.username, u.roles, u.create_time_us, u.disabled, s.revoke_time_us
                   FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1 AND s.user_id = ?2";
        self.one(sql, [id, user_id], |row| {
            Ok(SessionState {
                user: user(row)?,
                revoked: time(row, 5)?.is_some(),
            })
        })
    }

    async fn revoke_session(&mut self, id: &str, now: SystemTime) -> Result<bool, DbError> {
        let sql = "UPDATE sessions SET revoke_time_us = ?1 WHERE id = ?2 AND revoke_time_us IS NULL";
        Ok(self.exec(sql, params![to_micros(now), id])? == 1)
    }

    async fn revoke_user_sessions(&mut self, user_id: &str, now: SystemTime) -> Result<Vec<String>, DbError> {
        let sql = "UPDATE sessions SET revoke_time_us = ?1 WHERE user_id = ?2 AND revoke_time_us IS NULL
                   RETURNING id";
        self.all(sql, params![to_micros(now), user_id], |row| row.get(0))
    }

    async fn insert_refresh(
        &mut self,
        hash: &[u8],
        session_id: &str,
        expire: SystemTime,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES (?1, ?2, ?3)";
        self.exec(sql, params![hash, session_id, to_micros(expire)])?;
        Ok(())
    }

    async fn presented_refresh(&mut self, hash: &[u8]) -> Result<Option<Presented>, DbError> {
        let sql = "SELECT u.id, u.username, u.roles, u.create_time_us, u.disabled,
                          r.session_id, r.expire_time_us, r.rotate_time_us, s.revoke_time_us
                   FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id
                   WHERE r.hash = ?1";
        self.one(sql, [hash], |row| {
            Ok(Presented {
                user: user(row)?,
                session_id: row.get(5)?,
                expire_time: from_micros(row.get(6)?),
                rotate_time: time(row, 7)?,
                session_revoked: time(row, 8)?.is_some(),
            })
        })
    }

    async fn mark_rotated(&mut self, hash: &[u8], now: SystemTime) -> Result<(), DbError> {
        self.exec(
            "UPDATE refresh_tokens SET rotate_time_us = ?1 WHERE hash = ?2",
            params![to_micros(now), hash],
        )?;
        Ok(())
    }

    async fn refresh_times(
        &mut self,
        hash: &[u8],
    ) -> Result<Option<(Option<SystemTime>, SystemTime)>, DbError> {
        let sql = "SELECT rotate_time_us, expire_time_us FROM refresh_tokens WHERE hash = ?1";
        self.one(sql, [hash], |row| Ok((time(row, 0)?, from_micros(row.get(1)?))))
    }

    async fn refresh_session(&mut self, hash: &[u8]) -> Result<Option<String>, DbError> {
        self.one(
            "SELECT session_id FROM refresh_tokens WHERE hash = ?1",
            [hash],
            |row| row.get(0),
        )
    }

    async fn account_failures(&mut self, key: &str, _now: SystemTime) -> Result<Failures, DbError> {
        let sql = "SELECT failures, locked_until_us FROM login_failures WHERE username_key = ?1";
        Ok(self.one(sql, [key], failures)?.unwrap_or_default())
    }

    async fn set_account_failures(&mut self, key: &str, f: Failures, now: SystemTime) -> Result<(), DbError> {
        let sql = "INSERT INTO login_failures (username_key, failures, locked_until_us, last_attempt_us)
                   VALUES (?1, ?2, ?3, ?4) ON CONFLICT (username_key) DO UPDATE
                   SET failures = ?2, locked_until_us = ?3, last_attempt_us = ?4";
        self.exec(
            sql,
            params![key, f.count, f.locked_until.map(to_micros), to_micros(now)],
        )?;
        Ok(())
    }

    async fn clear_account_failures(&mut self, key: &str) -> Result<(), DbError> {
        self.exec("DELETE FROM login_failures WHERE username_key = ?1", [key])?;
        Ok(())
    }

    async fn device_failures(
        &mut self,
        hash: &[u8],
        key: &str,
        now: SystemTime,
    ) -> Result<Option<Failures>, DbError> {
        let sql = "SELECT d.failures, d.locked_until_us FROM device_tokens d JOIN users u ON u.id = d.user_id
                   WHERE d.hash = ?1 AND u.username_key = ?2 AND d.expire_time_us > ?3";
        self.one(sql, params![hash, key, to_micros(now)], failures)
    }

    async fn set_device_failures(&mut self, hash: &[u8], f: Failures) -> Result<(), DbError> {
        let sql = "UPDATE device_tokens SET failures = ?2, locked_until_us = ?3 WHERE hash = ?1";
        self.exec(sql, params![hash, f.count, f.locked_until.map(to_micros)])?;
        Ok(())
    }

    async fn insert_device(
        &mut self,
        hash: &[u8],
        user_id: &str,
        now: SystemTime,
        expire: SystemTime,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO device_tokens (hash, user_id, create_time_us, expire_time_us) VALUES (?1, ?2, ?3, ?4)";
        self.exec(sql, params![hash, user_id, to_micros(now), to_micros(expire)])?;
        Ok(())
    }

    async fn clear_user_failures(&mut self, user_id: &str) -> Result<(), DbError> {
        self.exec(
            "DELETE FROM login_failures WHERE username_key = (SELECT username_key FROM users WHERE id = ?1)",
            [user_id],
        )?;
        let sql = "UPDATE device_tokens SET failures = 0, locked_until_us = NULL WHERE user_id = ?1";
        self.exec(sql, [user_id])?;
        Ok(())
    }

    async fn keys(&mut self, retired_since: SystemTime) -> Result<Vec<StoredKey>, DbError> {
        let sql = "SELECT kid, private_key_pem, retire_time_us IS NOT NULL FROM signing_keys
                   WHERE revoke_time_us IS NULL AND (retire_time_us IS NULL OR retire_time_us >= ?1)
                   ORDER BY retire_time_us IS NOT NULL, create_time_us DESC, kid";
        self.all(sql, [to_micros(retired_since)], |row| {
            Ok(StoredKey {
                kid: row.get(0)?,
                pem: row.get(1)?,
                retired: row.get(2)?,
            })
        })
    }

    async fn revoked_keys(&mut self, since: SystemTime) -> Result<Vec<String>, DbError> {
        let sql = "SELECT kid FROM signing_keys WHERE revoke_time_us >= ?1";
        self.all(sql, [to_micros(since)], |row| row.get(0))
    }

    async fn lock_keys(&mut self) -> Result<(), DbError> {
        Ok(())
    }

    async fn insert_key(&mut self, kid: &str, pem: &str, now: SystemTime) -> Result<(), DbError> {
        let sql = "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES (?1, ?2, ?3)";
        self.exec(sql, params![kid, pem, to_micros(now)])?;
        Ok(())
    }

    async fn retire_signing_key(&mut self, now: SystemTime) -> Result<(), DbError> {
        let sql = "UPDATE signing_keys SET retire_time_us = ?1 WHERE retire_time_us IS NULL";
        self.exec(sql, [to_micros(now)])?;
        Ok(())
    }

    async fn revoke_key(&mut self, kid: &str, now: SystemTime) -> Result<bool, DbError> {
        let sql = "UPDATE signing_keys SET revoke_time_us = COALESCE(revoke_time_us, ?2),
                   retire_time_us = COALESCE(retire_time_us, ?2) WHERE kid = ?1";
        Ok(self.exec(sql, params![kid, to_micros(now)])? == 1)
    }

    async fn delete_keys_retired_before(&mut self, cutoff: SystemTime) -> Result<usize, DbError> {
        self.exec(
            "DELETE FROM signing_keys WHERE retire_time_us < ?1",
            [to_micros(cutoff)],
        )
    }

    async fn secret(&mut self, name: &str) -> Result<Option<Vec<u8>>, DbError> {
        self.one("SELECT value FROM secrets WHERE name = ?1", [name], |row| {
            row.get(0)
        })
    }

    async fn insert_secret(&mut self, name: &str, value: &[u8]) -> Result<(), DbError> {
        let sql = "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING";
        self.exec(sql, params![name, value])?;
        Ok(())
    }

    async fn log_revocation(&mut self, r: &Revocation) -> Result<(), DbError> {
        let (kind, id) = r.target.columns();
        let sql =
            "INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us) VALUES (?1, ?2, ?3, ?4)";
        self.exec(
            sql,
            params![kind, id, r.reason.as_str(), to_micros(r.revoke_time)],
        )?;
        Ok(())
    }

    async fn revocations_since(&mut self, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
        let sql = "SELECT target_kind, target_id, reason, revoke_time_us FROM revocation
                   WHERE revoke_time_us >= ?1 ORDER BY id";
        self.all(sql, [to_micros(since)], |row| revocation(row, 0))
    }

    async fn revocations_after(&mut self, id: i64) -> Result<Vec<(i64, Revocation)>, DbError> {
        let sql = "SELECT id, target_kind, target_id, reason, revoke_time_us FROM revocation WHERE id > ?1 ORDER BY id";
        self.all(sql, [id], |row| Ok((row.get(0)?, revocation(row, 1)?)))
    }

    async fn last_revocation_id(&mut self) -> Result<i64, DbError> {
        Ok(self
            .one("SELECT COALESCE(MAX(id), 0) FROM revocation", [], |row| {
                row.get(0)
            })?
            .unwrap_or(0))
    }

    async fn purge(
        &mut self,
        now: SystemTime,
        idle: SystemTime,
        log_cutoff: SystemTime,
    ) -> Result<usize, DbError> {
        let now = to_micros(now);
        Ok(
            self.exec("DELETE FROM refresh_tokens WHERE expire_time_us < ?1", [now])?
                + self.exec("DELETE FROM device_tokens WHERE expire_time_us < ?1", [now])?
                + self.exec(
                    "DELETE FROM login_failures WHERE last_attempt_us < ?1",
                    [to_micros(idle)],
                )?
                + self.exec(
                    "DELETE FROM revocation WHERE revoke_time_us < ?1",
                    [to_micros(log_cutoff)],
                )?,
        )
    }
}
