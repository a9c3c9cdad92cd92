//! Every statement of auth-svc's store, written once in the SQL both dialects speak, with its row mapping.
//! Rows a rule reads in order to write are locked on PostgreSQL ([`Conn::locking`]), which is what makes
//! the rules atomic across replicas; SQLite's write transaction holds the whole database.

use std::time::SystemTime;

use watchword::reason::Reason;
use watchword_db::{Conn, DbError, Row, from_micros, to_micros};

use super::{NewKey, SessionState, StoredKey, postgres, sqlite};
use crate::{
    audit::{AuditEvent, AuditKind, AuditQuery},
    domain::{ApiKey, Credentials, Revocation, Session, User, Username, split_roles},
    policy::{Failures, Presented, PresentedKey},
    sealing::{KeyRow, SecretRow},
};

const USER: &str = "u.id, u.username, u.roles, u.create_time_us, u.disabled";

fn user(row: &Row<'_>) -> Result<User, DbError> {
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        roles: split_roles(&row.get::<String>(2)?),
        create_time: from_micros(row.get(3)?),
        disabled: row.get(4)?,
    })
}

fn time(row: &Row<'_>, i: usize) -> Result<Option<SystemTime>, DbError> {
    Ok(row.get::<Option<i64>>(i)?.map(from_micros))
}

fn failures(row: &Row<'_>) -> Result<Failures, DbError> {
    Ok(Failures {
        count: row.get(0)?,
        locked_until: time(row, 1)?,
    })
}

fn revocation(row: &Row<'_>, first: usize) -> Result<Revocation, DbError> {
    let kind: String = row.get(first)?;
    let reason = Reason::parse(&row.get::<String>(first + 2)?);
    let time = from_micros(row.get(first + 3)?);
    Revocation::from_columns(&kind, row.get(first + 1)?, reason, time)
        .ok_or_else(|| DbError::Config(format!("unknown revocation target kind {kind:?}")))
}

pub async fn insert_user(tx: &impl Conn, u: &User, name: &Username, hash: &str) -> Result<(), DbError> {
    let sql = "INSERT INTO users (id, username, username_key, password_hash, roles, create_time_us)
               VALUES ($1, $2, $3, $4, $5, $6)";
    let roles = u.roles.join(" ");
    let params: [&dyn watchword_db::Param; 6] = [
        &u.id,
        &name.as_str(),
        &name.key(),
        &hash,
        &roles,
        &to_micros(u.create_time),
    ];
    tx.exec(sql, &params).await.map(drop)
}

pub async fn credentials(tx: &impl Conn, username_key: &str) -> Result<Option<Credentials>, DbError> {
    let sql = format!("SELECT {USER}, u.password_hash FROM users u WHERE u.username_key = $1");
    tx.one(&sql, &[&username_key], |row| {
        Ok(Credentials {
            user: user(row)?,
            password_hash: row.get(5)?,
        })
    })
    .await
}

/// The account `id` with its password hash and username key.
pub async fn credentials_by_id(tx: &impl Conn, id: &str) -> Result<Option<(Credentials, String)>, DbError> {
    let sql = format!("SELECT {USER}, u.password_hash, u.username_key FROM users u WHERE u.id = $1");
    tx.one(&sql, &[&id], |row| {
        let credentials = Credentials {
            user: user(row)?,
            password_hash: row.get(5)?,
        };
        Ok((credentials, row.get(6)?))
    })
    .await
}

/// With `lock`, the row stays locked until the transaction ends.
pub async fn user_by_id(tx: &impl Conn, id: &str, lock: bool) -> Result<Option<User>, DbError> {
    let lock = if lock { tx.locking("FOR UPDATE") } else { "" };
    let sql = format!("SELECT {USER} FROM users u WHERE u.id = $1 {lock}");
    tx.one(&sql, &[&id], user).await
}

pub async fn users_after(tx: &impl Conn, after: &str, limit: usize) -> Result<Vec<User>, DbError> {
    // The cast keeps the bound LIMIT out of SQLite's plan: a bare `LIMIT $2` re-prepares on every call.
    let sql = format!("SELECT {USER} FROM users u WHERE u.id > $1 ORDER BY u.id LIMIT CAST($2 AS BIGINT)");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    tx.all(&sql, &[&after, &limit], user).await
}

/// Ids of the enabled admins, locked, so two demotions cannot each leave the other the last admin.
pub async fn enabled_admins(tx: &impl Conn) -> Result<Vec<String>, DbError> {
    let sql = format!(
        "SELECT id FROM users WHERE NOT disabled AND ' ' || roles || ' ' LIKE '% admin %' {}",
        tx.locking("FOR UPDATE")
    );
    tx.all(&sql, &[], |row| row.get(0)).await
}

pub async fn set_roles(tx: &impl Conn, id: &str, roles: &[String]) -> Result<(), DbError> {
    tx.exec(
        "UPDATE users SET roles = $1 WHERE id = $2",
        &[&roles.join(" "), &id],
    )
    .await
    .map(drop)
}

/// Disables the user and returns when it was disabled (the first time, when it already was).
pub async fn disable_user(tx: &impl Conn, id: &str, now: SystemTime) -> Result<SystemTime, DbError> {
    let sql =
        "UPDATE users SET disabled = TRUE, disable_time_us = COALESCE(disable_time_us, $1) WHERE id = $2
               RETURNING disable_time_us";
    let at = tx.one(sql, &[&to_micros(now), &id], |row| time(row, 0)).await?;
    Ok(at.flatten().unwrap_or(now))
}

pub async fn insert_session(tx: &impl Conn, s: &Session) -> Result<(), DbError> {
    let sql = "INSERT INTO sessions (id, user_id, create_time_us, expire_time_us, client_address, user_agent)
               VALUES ($1, $2, $3, $4, $5, $6)";
    let params: [&dyn watchword_db::Param; 6] = [
        &s.id,
        &s.user_id,
        &to_micros(s.create_time),
        &to_micros(s.expire_time),
        &s.client_address,
        &s.user_agent,
    ];
    tx.exec(sql, &params).await.map(drop)
}

/// A session's columns, for [`session`]: `s` is the session, `k` its API key (if it is one's).
const SESSION: &str = "s.id, s.user_id, s.create_time_us, s.last_refresh_time_us, s.expire_time_us, k.id,
                       s.client_address, s.user_agent";

fn session(row: &Row<'_>, first: usize) -> Result<Session, DbError> {
    Ok(Session {
        id: row.get(first)?,
        user_id: row.get(first + 1)?,
        create_time: from_micros(row.get(first + 2)?),
        last_refresh_time: time(row, first + 3)?,
        expire_time: from_micros(row.get(first + 4)?),
        api_key_id: row.get(first + 5)?,
        client_address: row.get(first + 6)?,
        user_agent: row.get(first + 7)?,
    })
}

/// Session `id` and whether it has been revoked; with `lock`, its row stays locked until the transaction
/// ends.
pub async fn session_by_id(tx: &impl Conn, id: &str, lock: bool) -> Result<Option<(Session, bool)>, DbError> {
    let lock = if lock { tx.locking("FOR UPDATE OF s") } else { "" };
    let sql = format!(
        "SELECT {SESSION}, s.revoke_time_us FROM sessions s LEFT JOIN api_keys k ON k.id = s.id
         WHERE s.id = $1 {lock}"
    );
    tx.one(&sql, &[&id], |row| {
        Ok((session(row, 0)?, time(row, 8)?.is_some()))
    })
    .await
}

/// The live sessions of `user_id` (not revoked, not expired at `now`) in creation order, after `after`.
pub async fn live_sessions(
    tx: &impl Conn,
    user_id: &str,
    after: &str,
    now: SystemTime,
    limit: usize,
) -> Result<Vec<Session>, DbError> {
    let sql = format!(
        "SELECT {SESSION} FROM sessions s LEFT JOIN api_keys k ON k.id = s.id
         WHERE s.user_id = $1 AND s.id > $2 AND s.revoke_time_us IS NULL AND s.expire_time_us > $3
         ORDER BY s.id LIMIT CAST($4 AS BIGINT)"
    );
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    tx.all(&sql, &[&user_id, &after, &to_micros(now), &limit], |row| {
        session(row, 0)
    })
    .await
}

pub async fn insert_api_key(
    tx: &impl Conn,
    id: &str,
    hash: &[u8],
    name: &str,
    roles: &[String],
) -> Result<(), DbError> {
    let sql = "INSERT INTO api_keys (id, hash, name, roles) VALUES ($1, $2, $3, $4)";
    tx.exec(sql, &[&id, &hash, &name, &roles.join(" ")])
        .await
        .map(drop)
}

/// The live API keys of `user_id` (neither revoked nor expired at `now`), oldest first, after `after`.
pub async fn live_api_keys(
    tx: &impl Conn,
    user_id: &str,
    after: &str,
    now: SystemTime,
    limit: usize,
) -> Result<Vec<ApiKey>, DbError> {
    let sql = "SELECT k.id, s.user_id, k.name, k.roles, s.create_time_us, s.expire_time_us,
                      s.last_refresh_time_us
               FROM api_keys k JOIN sessions s ON s.id = k.id
               WHERE s.user_id = $1 AND k.id > $2 AND s.revoke_time_us IS NULL AND s.expire_time_us > $3
               ORDER BY k.id LIMIT CAST($4 AS BIGINT)";
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    tx.all(sql, &[&user_id, &after, &to_micros(now), &limit], |row| {
        Ok(ApiKey {
            id: row.get(0)?,
            user_id: row.get(1)?,
            name: row.get(2)?,
            roles: split_roles(&row.get::<String>(3)?),
            create_time: from_micros(row.get(4)?),
            expire_time: from_micros(row.get(5)?),
            last_exchange_time: time(row, 6)?,
        })
    })
    .await
}

/// The API key `hash` with its session's state and its owner; the session's row stays locked until the
/// transaction ends.
pub async fn presented_key(tx: &impl Conn, hash: &[u8]) -> Result<Option<PresentedKey>, DbError> {
    let sql = format!(
        "SELECT {USER}, k.id, k.roles, s.expire_time_us, s.revoke_time_us
         FROM api_keys k JOIN sessions s ON s.id = k.id JOIN users u ON u.id = s.user_id
         WHERE k.hash = $1 {}",
        tx.locking("FOR UPDATE OF s")
    );
    tx.one(&sql, &[&hash], |row| {
        Ok(PresentedKey {
            user: user(row)?,
            key_id: row.get(5)?,
            roles: split_roles(&row.get::<String>(6)?),
            expire_time: from_micros(row.get(7)?),
            revoked: time(row, 8)?.is_some(),
        })
    })
    .await
}

/// The API keys of `user_id` not yet revoked, with their roles.
pub async fn unrevoked_api_keys(
    tx: &impl Conn,
    user_id: &str,
) -> Result<Vec<(String, Vec<String>)>, DbError> {
    let sql = "SELECT k.id, k.roles FROM api_keys k JOIN sessions s ON s.id = k.id
               WHERE s.user_id = $1 AND s.revoke_time_us IS NULL ORDER BY k.id";
    tx.all(sql, &[&user_id], |row| {
        Ok((row.get(0)?, split_roles(&row.get::<String>(1)?)))
    })
    .await
}

/// Ends every live login session of `user_id` (not its API keys'), returning their ids.
pub async fn revoke_login_sessions(
    tx: &impl Conn,
    user_id: &str,
    now: SystemTime,
) -> Result<Vec<String>, DbError> {
    let sql = "UPDATE sessions SET revoke_time_us = $1
               WHERE user_id = $2 AND revoke_time_us IS NULL AND id NOT IN (SELECT id FROM api_keys)
               RETURNING id";
    tx.all(sql, &[&to_micros(now), &user_id], |row| row.get(0)).await
}

/// An exchange of the API key `id` at `now`.
pub async fn exchanged_key(tx: &impl Conn, id: &str, now: SystemTime) -> Result<(), DbError> {
    let sql = "UPDATE sessions SET last_refresh_time_us = $1 WHERE id = $2";
    tx.exec(sql, &[&to_micros(now), &id]).await.map(drop)
}

/// A refresh moved the session's end to `expire`.
pub async fn refreshed_session(
    tx: &impl Conn,
    id: &str,
    now: SystemTime,
    expire: SystemTime,
) -> Result<(), DbError> {
    let sql = "UPDATE sessions SET last_refresh_time_us = $1, expire_time_us = $2 WHERE id = $3";
    tx.exec(sql, &[&to_micros(now), &to_micros(expire), &id])
        .await
        .map(drop)
}

/// The session `id` of `user_id` and its user.
pub async fn session_state(tx: &impl Conn, id: &str, user_id: &str) -> Result<Option<SessionState>, DbError> {
    let sql = format!(
        "SELECT {USER}, s.revoke_time_us FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = $1 AND s.user_id = $2"
    );
    tx.one(&sql, &[&id, &user_id], |row| {
        Ok(SessionState {
            user: user(row)?,
            revoked: time(row, 5)?.is_some(),
        })
    })
    .await
}

/// Ends the session if it is live, returning its user; `None` if there was nothing to end.
pub async fn revoke_session(tx: &impl Conn, id: &str, now: SystemTime) -> Result<Option<String>, DbError> {
    let sql = "UPDATE sessions SET revoke_time_us = $1 WHERE id = $2 AND revoke_time_us IS NULL
               RETURNING user_id";
    tx.one(sql, &[&to_micros(now), &id], |row| row.get(0)).await
}

/// Ends every live session of `user_id` but `keep`, returning their ids.
pub async fn revoke_other_sessions(
    tx: &impl Conn,
    user_id: &str,
    keep: &str,
    now: SystemTime,
) -> Result<Vec<String>, DbError> {
    let sql = "UPDATE sessions SET revoke_time_us = $1
               WHERE user_id = $2 AND id <> $3 AND revoke_time_us IS NULL RETURNING id";
    tx.all(sql, &[&to_micros(now), &user_id, &keep], |row| row.get(0))
        .await
}

pub async fn set_password(tx: &impl Conn, id: &str, hash: &str) -> Result<(), DbError> {
    tx.exec("UPDATE users SET password_hash = $1 WHERE id = $2", &[&hash, &id])
        .await
        .map(drop)
}

/// Ends every live session of `user_id`, returning their ids.
pub async fn revoke_user_sessions(
    tx: &impl Conn,
    user_id: &str,
    now: SystemTime,
) -> Result<Vec<String>, DbError> {
    let sql = "UPDATE sessions SET revoke_time_us = $1 WHERE user_id = $2 AND revoke_time_us IS NULL
               RETURNING id";
    tx.all(sql, &[&to_micros(now), &user_id], |row| row.get(0)).await
}

pub async fn insert_refresh(
    tx: &impl Conn,
    hash: &[u8],
    session_id: &str,
    expire: SystemTime,
) -> Result<(), DbError> {
    let sql = "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES ($1, $2, $3)";
    tx.exec(sql, &[&hash, &session_id, &to_micros(expire)])
        .await
        .map(drop)
}

/// The refresh token `hash` with its session and user; locking its row serialises concurrent rotations of
/// it, on any replica.
pub async fn presented_refresh(tx: &impl Conn, hash: &[u8]) -> Result<Option<Presented>, DbError> {
    let sql = format!(
        "SELECT {USER}, r.session_id, r.expire_time_us, r.rotate_time_us, s.revoke_time_us
         FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id JOIN users u ON u.id = s.user_id
         WHERE r.hash = $1 {}",
        tx.locking("FOR UPDATE OF r")
    );
    tx.one(&sql, &[&hash], |row| {
        Ok(Presented {
            user: user(row)?,
            session_id: row.get(5)?,
            expire_time: from_micros(row.get(6)?),
            rotate_time: time(row, 7)?,
            session_revoked: time(row, 8)?.is_some(),
        })
    })
    .await
}

pub async fn mark_rotated(tx: &impl Conn, hash: &[u8], now: SystemTime) -> Result<(), DbError> {
    let sql = "UPDATE refresh_tokens SET rotate_time_us = $1 WHERE hash = $2";
    tx.exec(sql, &[&to_micros(now), &hash]).await.map(drop)
}

/// When the refresh token `hash` was rotated (if it was) and when it expires.
pub async fn refresh_times(
    tx: &impl Conn,
    hash: &[u8],
) -> Result<Option<(Option<SystemTime>, SystemTime)>, DbError> {
    let sql = "SELECT rotate_time_us, expire_time_us FROM refresh_tokens WHERE hash = $1";
    tx.one(sql, &[&hash], |row| Ok((time(row, 0)?, from_micros(row.get(1)?))))
        .await
}

pub async fn refresh_session(tx: &impl Conn, hash: &[u8]) -> Result<Option<String>, DbError> {
    let sql = "SELECT session_id FROM refresh_tokens WHERE hash = $1";
    tx.one(sql, &[&hash], |row| row.get(0)).await
}

/// The failed logins of `username_key`, locked until the transaction ends.
pub async fn account_failures(tx: &impl Conn, key: &str, now: SystemTime) -> Result<Failures, DbError> {
    let (sql, params): (_, &[&dyn watchword_db::Param]) = if tx.is_postgres() {
        (postgres::LOCK_ACCOUNT_FAILURES, &[&key, &to_micros(now)])
    } else {
        (sqlite::ACCOUNT_FAILURES, &[&key])
    };
    Ok(tx.one(sql, params, failures).await?.unwrap_or_default())
}

pub async fn set_account_failures(
    tx: &impl Conn,
    key: &str,
    f: Failures,
    now: SystemTime,
) -> Result<(), DbError> {
    let sql = "INSERT INTO login_failures (username_key, failures, locked_until_us, last_attempt_us)
               VALUES ($1, $2, $3, $4) ON CONFLICT (username_key) DO UPDATE
               SET failures = excluded.failures, locked_until_us = excluded.locked_until_us,
                   last_attempt_us = excluded.last_attempt_us";
    let until = f.locked_until.map(to_micros);
    tx.exec(sql, &[&key, &f.count, &until, &to_micros(now)])
        .await
        .map(drop)
}

pub async fn clear_account_failures(tx: &impl Conn, key: &str) -> Result<(), DbError> {
    tx.exec("DELETE FROM login_failures WHERE username_key = $1", &[&key])
        .await
        .map(drop)
}

/// The failed logins of device token `hash`, if it belongs to the account `username_key` and has not
/// expired, locked until the transaction ends.
pub async fn device_failures(
    tx: &impl Conn,
    hash: &[u8],
    key: &str,
    now: SystemTime,
) -> Result<Option<Failures>, DbError> {
    let sql = format!(
        "SELECT d.failures, d.locked_until_us FROM device_tokens d JOIN users u ON u.id = d.user_id
         WHERE d.hash = $1 AND u.username_key = $2 AND d.expire_time_us > $3 {}",
        tx.locking("FOR UPDATE OF d")
    );
    tx.one(&sql, &[&hash, &key, &to_micros(now)], failures).await
}

pub async fn set_device_failures(tx: &impl Conn, hash: &[u8], f: Failures) -> Result<(), DbError> {
    let sql = "UPDATE device_tokens SET failures = $1, locked_until_us = $2 WHERE hash = $3";
    tx.exec(sql, &[&f.count, &f.locked_until.map(to_micros), &hash])
        .await
        .map(drop)
}

pub async fn insert_device(
    tx: &impl Conn,
    hash: &[u8],
    user_id: &str,
    now: SystemTime,
    expire: SystemTime,
) -> Result<(), DbError> {
    let sql =
        "INSERT INTO device_tokens (hash, user_id, create_time_us, expire_time_us) VALUES ($1, $2, $3, $4)";
    tx.exec(sql, &[&hash, &user_id, &to_micros(now), &to_micros(expire)])
        .await
        .map(drop)
}

/// Forgets the failed logins of `user_id`'s account and of its devices.
pub async fn clear_user_failures(tx: &impl Conn, user_id: &str) -> Result<(), DbError> {
    let sql =
        "DELETE FROM login_failures WHERE username_key = (SELECT username_key FROM users WHERE id = $1)";
    tx.exec(sql, &[&user_id]).await?;
    let sql = "UPDATE device_tokens SET failures = 0, locked_until_us = NULL WHERE user_id = $1";
    tx.exec(sql, &[&user_id]).await.map(drop)
}

/// Keys not revoked, and not retired before `retired_since`, newest first. The private key is read only
/// for keys that sign at `now` or later (and for a key whose public key was never stored): the others are
/// needed for verifying only.
pub async fn keys(
    tx: &impl Conn,
    now: SystemTime,
    retired_since: SystemTime,
) -> Result<Vec<StoredKey>, DbError> {
    // SQLite numbers `$N` parameters in order of first appearance: keep `$1` before `$2`.
    let sql = "SELECT kid, public_key,
                      CASE WHEN retire_time_us IS NULL OR retire_time_us > $1 OR public_key IS NULL
                           THEN private_key_pem END,
                      COALESCE(sign_time_us, create_time_us), retire_time_us
               FROM signing_keys
               WHERE revoke_time_us IS NULL AND (retire_time_us IS NULL OR retire_time_us >= $2)
               ORDER BY COALESCE(sign_time_us, create_time_us) DESC, create_time_us DESC, kid";
    tx.all(sql, &[&to_micros(now), &to_micros(retired_since)], |row| {
        Ok(StoredKey {
            kid: row.get(0)?,
            public_key: row.get(1)?,
            private_key: row.get(2)?,
            sign_time: from_micros(row.get(3)?),
            retire_time: row.get::<Option<i64>>(4)?.map(from_micros),
        })
    })
    .await
}

/// Every stored key's material, locked, for the at-rest upgrade.
pub async fn key_material(tx: &impl Conn) -> Result<Vec<KeyRow>, DbError> {
    let sql = format!(
        "SELECT kid, public_key, private_key_pem FROM signing_keys ORDER BY kid {}",
        tx.locking("FOR UPDATE")
    );
    tx.all(&sql, &[], |row| {
        Ok(KeyRow {
            kid: row.get(0)?,
            public_key: row.get(1)?,
            private_key: row.get(2)?,
        })
    })
    .await
}

pub async fn set_key_material(tx: &impl Conn, key: &KeyRow) -> Result<(), DbError> {
    let sql = "UPDATE signing_keys SET public_key = $1, private_key_pem = $2 WHERE kid = $3";
    tx.exec(sql, &[&key.public_key, &key.private_key, &key.kid])
        .await
        .map(drop)
}

/// Every stored secret, locked, for the at-rest upgrade.
pub async fn secrets(tx: &impl Conn) -> Result<Vec<SecretRow>, DbError> {
    let sql = format!(
        "SELECT name, value FROM secrets ORDER BY name {}",
        tx.locking("FOR UPDATE")
    );
    tx.all(&sql, &[], |row| {
        Ok(SecretRow {
            name: row.get(0)?,
            value: row.get(1)?,
        })
    })
    .await
}

pub async fn set_secret(tx: &impl Conn, secret: &SecretRow) -> Result<(), DbError> {
    let sql = "UPDATE secrets SET value = $1 WHERE name = $2";
    tx.exec(sql, &[&secret.value, &secret.name]).await.map(drop)
}

pub async fn revoked_keys(tx: &impl Conn, since: SystemTime) -> Result<Vec<String>, DbError> {
    let sql = "SELECT kid FROM signing_keys WHERE revoke_time_us >= $1";
    tx.all(sql, &[&to_micros(since)], |row| row.get(0)).await
}

/// Serialises changes to the key set across replicas.
pub async fn lock_keys(tx: &impl Conn) -> Result<(), DbError> {
    tx.lock("signing_keys").await
}

/// Stores `key`, created `now`, to sign from `sign_time` on.
pub async fn insert_key(
    tx: &impl Conn,
    key: &NewKey,
    now: SystemTime,
    sign_time: SystemTime,
) -> Result<(), DbError> {
    let sql = "INSERT INTO signing_keys (kid, public_key, private_key_pem, create_time_us, sign_time_us)
               VALUES ($1, $2, $3, $4, $5)";
    tx.exec(
        sql,
        &[
            &key.kid,
            &key.public_key,
            &key.private_key,
            &to_micros(now),
            &to_micros(sign_time),
        ],
    )
    .await
    .map(drop)
}

/// Retires, at `at`, every key that would still sign then (the signing key, and any key waiting to sign):
/// they keep verifying for a while.
pub async fn retire_signing_keys(tx: &impl Conn, at: SystemTime) -> Result<(), DbError> {
    let sql = "UPDATE signing_keys SET retire_time_us = $1
               WHERE revoke_time_us IS NULL AND (retire_time_us IS NULL OR retire_time_us > $1)";
    tx.exec(sql, &[&to_micros(at)]).await.map(drop)
}

/// Marks `kid` revoked (and retired); `false` if there is no such key.
pub async fn revoke_key(tx: &impl Conn, kid: &str, now: SystemTime) -> Result<bool, DbError> {
    let sql = "UPDATE signing_keys SET revoke_time_us = COALESCE(revoke_time_us, $1),
               retire_time_us = COALESCE(retire_time_us, $1) WHERE kid = $2";
    Ok(tx.exec(sql, &[&to_micros(now), &kid]).await? == 1)
}

pub async fn delete_keys_retired_before(tx: &impl Conn, cutoff: SystemTime) -> Result<usize, DbError> {
    let deleted = tx
        .exec(
            "DELETE FROM signing_keys WHERE retire_time_us < $1",
            &[&to_micros(cutoff)],
        )
        .await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

pub async fn secret(tx: &impl Conn, name: &str) -> Result<Option<Vec<u8>>, DbError> {
    tx.one("SELECT value FROM secrets WHERE name = $1", &[&name], |row| {
        row.get(0)
    })
    .await
}

/// Stores the secret unless one of that name exists.
pub async fn insert_secret(tx: &impl Conn, name: &str, value: &[u8]) -> Result<(), DbError> {
    let sql = "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
    tx.exec(sql, &[&name, &value]).await.map(drop)
}

/// Appends to the revocation log.
///
/// Ids are handed out in commit order, so a reader that has seen id `n` has seen every id below it. On
/// PostgreSQL ids come from a sequence when the row is inserted, not when it commits: without the lock
/// (held until commit) a transaction could take id 10, commit after id 11 was read, and be skipped by every
/// relay. Revocations are rare; serialising them is cheap. SQLite has one writer, so one order anyway.
pub async fn log_revocation(tx: &impl Conn, r: &Revocation) -> Result<(), DbError> {
    tx.lock("revocation").await?;
    let (kind, id) = r.target.columns();
    let sql =
        "INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us) VALUES ($1, $2, $3, $4)";
    tx.exec(sql, &[&kind, &id, &r.reason.as_str(), &to_micros(r.revoke_time)])
        .await
        .map(drop)
}

pub async fn revocations_since(tx: &impl Conn, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
    let sql = "SELECT target_kind, target_id, reason, revoke_time_us FROM revocation
               WHERE revoke_time_us >= $1 ORDER BY id";
    tx.all(sql, &[&to_micros(since)], |row| revocation(row, 0)).await
}

pub async fn revocations_after(tx: &impl Conn, id: i64) -> Result<Vec<(i64, Revocation)>, DbError> {
    let sql =
        "SELECT id, target_kind, target_id, reason, revoke_time_us FROM revocation WHERE id > $1 ORDER BY id";
    tx.all(sql, &[&id], |row| Ok((row.get(0)?, revocation(row, 1)?)))
        .await
}

pub async fn last_revocation_id(tx: &impl Conn) -> Result<i64, DbError> {
    let id = tx
        .one("SELECT COALESCE(MAX(id), 0) FROM revocation", &[], |row| {
            row.get(0)
        })
        .await?;
    Ok(id.unwrap_or(0))
}

/// The id of the account with username key `key`, if there is one.
pub async fn user_id_by_key(tx: &impl Conn, key: &str) -> Result<Option<String>, DbError> {
    let sql = "SELECT id FROM users WHERE username_key = $1";
    tx.one(sql, &[&key], |row| row.get(0)).await
}

/// Appends an audit event; its id.
pub async fn insert_audit(tx: &impl Conn, e: &AuditEvent) -> Result<i64, DbError> {
    let sql = "INSERT INTO audit_events (kind, time_us, actor_id, subject_id, client_address, session_id,
                                         detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id";
    let params: [&dyn watchword_db::Param; 7] = [
        &e.kind.as_str(),
        &to_micros(e.time),
        &e.actor_id,
        &e.subject_id,
        &e.client_address,
        &e.session_id,
        &e.detail,
    ];
    let id = tx.one(sql, &params, |row| row.get(0)).await?;
    id.ok_or_else(|| DbError::Config("INSERT ... RETURNING id returned no row".into()))
}

/// Withdraws a provisional audit event (see `Store::begin_login_attempt`).
pub async fn delete_audit(tx: &impl Conn, id: i64) -> Result<(), DbError> {
    tx.exec("DELETE FROM audit_events WHERE id = $1", &[&id])
        .await
        .map(drop)
}

/// Audit events matching `q`, newest first, with their ids.
pub async fn audit_events(tx: &impl Conn, q: &AuditQuery) -> Result<Vec<(i64, AuditEvent)>, DbError> {
    let sql = "SELECT id, kind, time_us, actor_id, subject_id, client_address, session_id, detail
               FROM audit_events
               WHERE id < $1 AND time_us >= $2 AND ($3 = '' OR kind = $3)
                 AND ($4 = '' OR actor_id = $4 OR subject_id = $4)
               ORDER BY id DESC LIMIT CAST($5 AS BIGINT)";
    let before = q.before_id.unwrap_or(i64::MAX);
    let since = q.since.map_or(i64::MIN, to_micros);
    let kind = q.kind.map_or("", AuditKind::as_str);
    let user = q.user_id.as_deref().unwrap_or("");
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    tx.all(sql, &[&before, &since, &kind, &user, &limit], |row| {
        let kind: String = row.get(1)?;
        let kind = AuditKind::parse(&kind)
            .ok_or_else(|| DbError::Config(format!("unknown audit event kind {kind:?}")))?;
        let event = AuditEvent {
            kind,
            time: from_micros(row.get(2)?),
            actor_id: row.get(3)?,
            subject_id: row.get(4)?,
            client_address: row.get(5)?,
            session_id: row.get(6)?,
            detail: row.get(7)?,
        };
        Ok((row.get(0)?, event))
    })
    .await
}

/// Deletes refresh and device tokens expired before `now`, failed-login records idle since `idle`,
/// revocation log rows from before `log_cutoff`, and audit events from before `audit_cutoff`.
pub async fn purge(
    tx: &impl Conn,
    now: SystemTime,
    idle: SystemTime,
    log_cutoff: SystemTime,
    audit_cutoff: SystemTime,
) -> Result<usize, DbError> {
    let now = to_micros(now);
    let deleted = tx
        .exec("DELETE FROM refresh_tokens WHERE expire_time_us < $1", &[&now])
        .await?
        + tx.exec("DELETE FROM device_tokens WHERE expire_time_us < $1", &[&now])
            .await?
        + tx.exec(
            "DELETE FROM login_failures WHERE last_attempt_us < $1",
            &[&to_micros(idle)],
        )
        .await?
        + tx.exec(
            "DELETE FROM revocation WHERE revoke_time_us < $1",
            &[&to_micros(log_cutoff)],
        )
        .await?
        + tx.exec(
            "DELETE FROM audit_events WHERE time_us < $1",
            &[&to_micros(audit_cutoff)],
        )
        .await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}
