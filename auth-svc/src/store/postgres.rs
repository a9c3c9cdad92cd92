//! The PostgreSQL dialect of auth-svc's store: SQL and row mapping, nothing else. Rows a rule reads in
//! order to write are locked (`FOR UPDATE`), which is what makes the rules atomic across replicas.

use std::time::SystemTime;

use watchword::reason::Reason;
use watchword_db::{
    DbError, from_micros,
    postgres::{Params, PgTx, tokio_postgres::Row},
    to_micros,
};

use super::{Failures, Presented, SessionState, StoredKey};
use crate::domain::{Credentials, Revocation, User, Username, split_roles};

/// Append-only: entry `i` is schema version `i + 1`, the same version as in `sqlite.rs`. Version 1 was
/// written when SQLite was at version 4 and holds all four, so versions 2 to 4 change nothing here.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    username_key    TEXT NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,
    roles           TEXT NOT NULL,
    create_time_us  BIGINT NOT NULL,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    disable_time_us BIGINT
);
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    private_key_pem TEXT NOT NULL,
    create_time_us  BIGINT NOT NULL,
    retire_time_us  BIGINT
);
CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id),
    create_time_us  BIGINT NOT NULL,
    revoke_time_us  BIGINT
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_revoke_time ON sessions (revoke_time_us) WHERE revoke_time_us IS NOT NULL;
CREATE TABLE refresh_tokens (
    hash            BYTEA PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions (id),
    expire_time_us  BIGINT NOT NULL,
    rotate_time_us  BIGINT
);
CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens (expire_time_us);
CREATE TABLE secrets (
    name            TEXT PRIMARY KEY,
    value           BYTEA NOT NULL
);
CREATE TABLE login_failures (
    username_key    TEXT PRIMARY KEY,
    failures        BIGINT NOT NULL,
    locked_until_us BIGINT,
    last_attempt_us BIGINT NOT NULL
);
"#,
    "-- SQLite's version 2 (sessions, refresh tokens, secrets): part of version 1 here.",
    "-- SQLite's version 3 (login failures): part of version 1 here.",
    "-- SQLite's version 4 (key retirement): part of version 1 here.",
    r#"
ALTER TABLE signing_keys ADD COLUMN revoke_time_us BIGINT;
CREATE TABLE revocation (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_kind     TEXT NOT NULL,
    target_id       TEXT NOT NULL,
    reason          TEXT NOT NULL,
    revoke_time_us  BIGINT NOT NULL
);
CREATE INDEX revocation_by_time ON revocation (revoke_time_us);
INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us)
    SELECT 'session', id, 'TOKEN_REVOKED', revoke_time_us FROM sessions
    WHERE revoke_time_us IS NOT NULL ORDER BY revoke_time_us;
INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us)
    SELECT 'user', id, 'USER_DISABLED', COALESCE(disable_time_us, 0) FROM users WHERE disabled;
CREATE TABLE device_tokens (
    hash            BYTEA PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id),
    create_time_us  BIGINT NOT NULL,
    expire_time_us  BIGINT NOT NULL,
    failures        BIGINT NOT NULL DEFAULT 0,
    locked_until_us BIGINT
);
CREATE INDEX device_tokens_by_user ON device_tokens (user_id);
CREATE INDEX device_tokens_by_expiry ON device_tokens (expire_time_us);
"#,
];

const USER: &str = "id, username, roles, create_time_us, disabled";

fn user(row: &Row) -> User {
    User {
        id: row.get(0),
        username: row.get(1),
        roles: split_roles(row.get(2)),
        create_time: from_micros(row.get(3)),
        disabled: row.get(4),
    }
}

fn time(row: &Row, i: usize) -> Option<SystemTime> {
    row.get::<_, Option<i64>>(i).map(from_micros)
}

fn failures(row: &Row) -> Failures {
    Failures {
        count: row.get(0),
        locked_until: time(row, 1),
    }
}

fn revocation(row: &Row, first: usize) -> Result<Revocation, DbError> {
    let kind: String = row.get(first);
    let reason = Reason::parse(row.get(first + 2));
    Revocation::from_columns(&kind, row.get(first + 1), reason, from_micros(row.get(first + 3)))
        .ok_or_else(|| DbError::Config(format!("unknown revocation target kind {kind:?}")))
}

fn micros(t: Option<SystemTime>) -> Option<i64> {
    t.map(to_micros)
}

impl super::Tx for PgTx<'_> {
    async fn insert_user(&mut self, u: &User, username: &Username, hash: &str) -> Result<(), DbError> {
        let sql = "INSERT INTO users (id, username, username_key, password_hash, roles, create_time_us)
                   VALUES ($1, $2, $3, $4, $5, $6)";
        let roles = u.roles.join(" ");
        let params: Params<'_> = &[
            &u.id,
            &username.as_str(),
            &username.key(),
            &hash,
            &roles,
            &to_micros(u.create_time),
        ];
        self.exec(sql, params).await?;
        Ok(())
    }

    async fn credentials(&mut self, username_key: &str) -> Result<Option<Credentials>, DbError> {
        let sql = format!("SELECT {USER}, password_hash FROM users WHERE username_key = $1");
        let row = self.one(&sql, &[&username_key]).await?;
        Ok(row.map(|row| Credentials {
            user: user(&row),
            password_hash: row.get(5),
        }))
    }

    async fn user(&mut self, id: &str, lock: bool) -> Result<Option<User>, DbError> {
        let lock = if lock { "FOR UPDATE" } else { "" };
        let row = self
            .one(&format!("SELECT {USER} FROM users WHERE id = $1 {lock}"), &[&id])
            .await?;
        Ok(row.as_ref().map(user))
    }

    async fn users_after(&mut self, after: &str, limit: usize) -> Result<Vec<User>, DbError> {
        let sql = format!("SELECT {USER} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(self
            .rows(&sql, &[&after, &limit])
            .await?
            .iter()
            .map(user)
            .collect())
    }

    async fn enabled_admins(&mut self) -> Result<Vec<String>, DbError> {
        let sql =
            "SELECT id FROM users WHERE NOT disabled AND ' ' || roles || ' ' LIKE '% admin %' FOR UPDATE";
        Ok(self.rows(sql, &[]).await?.iter().map(|row| row.get(0)).collect())
    }

    async fn set_roles(&mut self, id: &str, roles: &[String]) -> Result<(), DbError> {
        self.exec(
            "UPDATE users SET roles = $1 WHERE id = $2",
            &[&roles.join(" "), &id],
        )
        .await?;
        Ok(())
    }

    async fn disable_user(&mut self, id: &str, now: SystemTime) -> Result<SystemTime, DbError> {
        let sql =
            "UPDATE users SET disabled = TRUE, disable_time_us = COALESCE(disable_time_us, $2) WHERE id = $1
                   RETURNING disable_time_us";
        let row = self.one(sql, &[&id, &to_micros(now)]).await?;
        Ok(row.and_then(|row| time(&row, 0)).unwrap_or(now))
    }

    async fn insert_session(&mut self, id: &str, user_id: &str, now: SystemTime) -> Result<(), DbError> {
        let sql = "INSERT INTO sessions (id, user_id, create_time_us) VALUES ($1, $2, $3)";
        self.exec(sql, &[&id, &user_id, &to_micros(now)]).await?;
        Ok(())
    }

    async fn session_state(&mut self, id: &str, user_id: &str) -> Result<Option<SessionState>, DbError> {
        let sql = "SELECT u.id, u.username, u.roles, u.create_time_us, u.disabled, s.revoke_time_us
                   FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1 AND s.user_id = $2";
        let row = self.one(sql, &[&id, &user_id]).await?;
        Ok(row.map(|row| SessionState {
            user: user(&row),
            revoked: time(&row, 5).is_some(),
        }))
    }

    async fn revoke_session(&mut self, id: &str, now: SystemTime) -> Result<bool, DbError> {
        let sql = "UPDATE sessions SET revoke_time_us = $1 WHERE id = $2 AND revoke_time_us IS NULL";
        Ok(self.exec(sql, &[&to_micros(now), &id]).await? == 1)
    }

    async fn revoke_user_sessions(&mut self, user_id: &str, now: SystemTime) -> Result<Vec<String>, DbError> {
        let sql = "UPDATE sessions SET revoke_time_us = $1 WHERE user_id = $2 AND revoke_time_us IS NULL
                   RETURNING id";
        let rows = self.rows(sql, &[&to_micros(now), &user_id]).await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn insert_refresh(
        &mut self,
        hash: &[u8],
        session_id: &str,
        expire: SystemTime,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES ($1, $2, $3)";
        self.exec(sql, &[&hash, &session_id, &to_micros(expire)]).await?;
        Ok(())
    }

    async fn presented_refresh(&mut self, hash: &[u8]) -> Result<Option<Presented>, DbError> {
        // Locking the presented token's row serialises concurrent rotations of it, on any replica.
        let sql = "SELECT u.id, u.username, u.roles, u.create_time_us, u.disabled,
                          r.session_id, r.expire_time_us, r.rotate_time_us, s.revoke_time_us
                   FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id
                   WHERE r.hash = $1 FOR UPDATE OF r";
        let row = self.one(sql, &[&hash]).await?;
        Ok(row.map(|row| Presented {
            user: user(&row),
            session_id: row.get(5),
            expire_time: from_micros(row.get(6)),
            rotate_time: time(&row, 7),
            session_revoked: time(&row, 8).is_some(),
        }))
    }

    async fn mark_rotated(&mut self, hash: &[u8], now: SystemTime) -> Result<(), DbError> {
        let sql = "UPDATE refresh_tokens SET rotate_time_us = $1 WHERE hash = $2";
        self.exec(sql, &[&to_micros(now), &hash]).await?;
        Ok(())
    }

    async fn refresh_times(
        &mut self,
        hash: &[u8],
    ) -> Result<Option<(Option<SystemTime>, SystemTime)>, DbError> {
        let sql = "SELECT rotate_time_us, expire_time_us FROM refresh_tokens WHERE hash = $1";
        let row = self.one(sql, &[&hash]).await?;
        Ok(row.map(|row| (time(&row, 0), from_micros(row.get(1)))))
    }

    async fn refresh_session(&mut self, hash: &[u8]) -> Result<Option<String>, DbError> {
        let row = self
            .one("SELECT session_id FROM refresh_tokens WHERE hash = $1", &[&hash])
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn account_failures(&mut self, key: &str, now: SystemTime) -> Result<Failures, DbError> {
        // Insert-or-lock in one statement: the row is ours until commit, and a concurrent successful login
        // deleting it cannot leave us reading nothing.
        let sql = "INSERT INTO login_failures (username_key, failures, last_attempt_us) VALUES ($1, 0, $2)
                   ON CONFLICT (username_key) DO UPDATE SET last_attempt_us = EXCLUDED.last_attempt_us
                   RETURNING failures, locked_until_us";
        let row = self.one(sql, &[&key, &to_micros(now)]).await?;
        Ok(row.as_ref().map(failures).unwrap_or_default())
    }

    async fn set_account_failures(&mut self, key: &str, f: Failures, now: SystemTime) -> Result<(), DbError> {
        let sql = "UPDATE login_failures SET failures = $2, locked_until_us = $3, last_attempt_us = $4
                   WHERE username_key = $1";
        self.exec(sql, &[&key, &f.count, &micros(f.locked_until), &to_micros(now)])
            .await?;
        Ok(())
    }

    async fn clear_account_failures(&mut self, key: &str) -> Result<(), DbError> {
        self.exec("DELETE FROM login_failures WHERE username_key = $1", &[&key])
            .await?;
        Ok(())
    }

    async fn device_failures(
        &mut self,
        hash: &[u8],
        key: &str,
        now: SystemTime,
    ) -> Result<Option<Failures>, DbError> {
        let sql = "SELECT d.failures, d.locked_until_us FROM device_tokens d JOIN users u ON u.id = d.user_id
                   WHERE d.hash = $1 AND u.username_key = $2 AND d.expire_time_us > $3 FOR UPDATE OF d";
        let row = self.one(sql, &[&hash, &key, &to_micros(now)]).await?;
        Ok(row.as_ref().map(failures))
    }

    async fn set_device_failures(&mut self, hash: &[u8], f: Failures) -> Result<(), DbError> {
        let sql = "UPDATE device_tokens SET failures = $2, locked_until_us = $3 WHERE hash = $1";
        self.exec(sql, &[&hash, &f.count, &micros(f.locked_until)])
            .await?;
        Ok(())
    }

    async fn insert_device(
        &mut self,
        hash: &[u8],
        user_id: &str,
        now: SystemTime,
        expire: SystemTime,
    ) -> Result<(), DbError> {
        let sql = "INSERT INTO device_tokens (hash, user_id, create_time_us, expire_time_us) VALUES ($1, $2, $3, $4)";
        self.exec(sql, &[&hash, &user_id, &to_micros(now), &to_micros(expire)])
            .await?;
        Ok(())
    }

    async fn clear_user_failures(&mut self, user_id: &str) -> Result<(), DbError> {
        let sql =
            "DELETE FROM login_failures WHERE username_key = (SELECT username_key FROM users WHERE id = $1)";
        self.exec(sql, &[&user_id]).await?;
        let sql = "UPDATE device_tokens SET failures = 0, locked_until_us = NULL WHERE user_id = $1";
        self.exec(sql, &[&user_id]).await?;
        Ok(())
    }

    async fn keys(&mut self, retired_since: SystemTime) -> Result<Vec<StoredKey>, DbError> {
        let sql = "SELECT kid, private_key_pem, retire_time_us IS NOT NULL FROM signing_keys
                   WHERE revoke_time_us IS NULL AND (retire_time_us IS NULL OR retire_time_us >= $1)
                   ORDER BY retire_time_us IS NOT NULL, create_time_us DESC, kid";
        let rows = self.rows(sql, &[&to_micros(retired_since)]).await?;
        Ok(rows
            .iter()
            .map(|row| StoredKey {
                kid: row.get(0),
                pem: row.get(1),
                retired: row.get(2),
            })
            .collect())
    }

    async fn revoked_keys(&mut self, since: SystemTime) -> Result<Vec<String>, DbError> {
        let rows = self
            .rows(
                "SELECT kid FROM signing_keys WHERE revoke_time_us >= $1",
                &[&to_micros(since)],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn lock_keys(&mut self) -> Result<(), DbError> {
        self.exec("SELECT pg_advisory_xact_lock(hashtext('signing_keys'))", &[])
            .await?;
        Ok(())
    }

    async fn insert_key(&mut self, kid: &str, pem: &str, now: SystemTime) -> Result<(), DbError> {
        let sql = "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES ($1, $2, $3)";
        self.exec(sql, &[&kid, &pem, &to_micros(now)]).await?;
        Ok(())
    }

    async fn retire_signing_key(&mut self, now: SystemTime) -> Result<(), DbError> {
        let sql = "UPDATE signing_keys SET retire_time_us = $1 WHERE retire_time_us IS NULL";
        self.exec(sql, &[&to_micros(now)]).await?;
        Ok(())
    }

    async fn revoke_key(&mut self, kid: &str, now: SystemTime) -> Result<bool, DbError> {
        let sql = "UPDATE signing_keys SET revoke_time_us = COALESCE(revoke_time_us, $2),
                   retire_time_us = COALESCE(retire_time_us, $2) WHERE kid = $1";
        Ok(self.exec(sql, &[&kid, &to_micros(now)]).await? == 1)
    }

    async fn delete_keys_retired_before(&mut self, cutoff: SystemTime) -> Result<usize, DbError> {
        let sql = "DELETE FROM signing_keys WHERE retire_time_us < $1";
        let deleted = self.exec(sql, &[&to_micros(cutoff)]).await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<Vec<u8>>, DbError> {
        let row = self
            .one("SELECT value FROM secrets WHERE name = $1", &[&name])
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn insert_secret(&mut self, name: &str, value: &[u8]) -> Result<(), DbError> {
        let sql = "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
        self.exec(sql, &[&name, &value]).await?;
        Ok(())
    }

    async fn log_revocation(&mut self, r: &Revocation) -> Result<(), DbError> {
        // Ids come from a sequence when the row is inserted, not when it commits: without this lock (held
        // until commit) a transaction could take id 10, commit after id 11 was read, and be skipped by every
        // relay. With it, ids are handed out in commit order. Revocations are rare; serialising them is cheap.
        self.exec("SELECT pg_advisory_xact_lock(hashtext('revocation'))", &[])
            .await?;
        let (kind, id) = r.target.columns();
        let sql =
            "INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us) VALUES ($1, $2, $3, $4)";
        self.exec(sql, &[&kind, &id, &r.reason.as_str(), &to_micros(r.revoke_time)])
            .await?;
        Ok(())
    }

    async fn revocations_since(&mut self, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
        let sql = "SELECT target_kind, target_id, reason, revoke_time_us FROM revocation
                   WHERE revoke_time_us >= $1 ORDER BY id";
        let rows = self.rows(sql, &[&to_micros(since)]).await?;
        rows.iter().map(|row| revocation(row, 0)).collect()
    }

    async fn revocations_after(&mut self, id: i64) -> Result<Vec<(i64, Revocation)>, DbError> {
        let sql = "SELECT id, target_kind, target_id, reason, revoke_time_us FROM revocation WHERE id > $1 ORDER BY id";
        let rows = self.rows(sql, &[&id]).await?;
        rows.iter()
            .map(|row| Ok((row.get(0), revocation(row, 1)?)))
            .collect()
    }

    async fn last_revocation_id(&mut self) -> Result<i64, DbError> {
        let row = self
            .one("SELECT COALESCE(MAX(id), 0) FROM revocation", &[])
            .await?;
        Ok(row.map_or(0, |row| row.get(0)))
    }

    async fn purge(
        &mut self,
        now: SystemTime,
        idle: SystemTime,
        log_cutoff: SystemTime,
    ) -> Result<usize, DbError> {
        let now = to_micros(now);
        let deleted = self
            .exec("DELETE FROM refresh_tokens WHERE expire_time_us < $1", &[&now])
            .await?
            + self
                .exec("DELETE FROM device_tokens WHERE expire_time_us < $1", &[&now])
                .await?
            + self
                .exec(
                    "DELETE FROM login_failures WHERE last_attempt_us < $1",
                    &[&to_micros(idle)],
                )
                .await?
            + self
                .exec(
                    "DELETE FROM revocation WHERE revoke_time_us < $1",
                    &[&to_micros(log_cutoff)],
                )
                .await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}
