//! The PostgreSQL side of auth-svc's [`Store`](super::Store): the same operations, in PostgreSQL's dialect.
//! Read-then-write operations lock the rows they read (`FOR UPDATE`), which is what makes them atomic
//! across replicas.

use std::time::{Duration, SystemTime};

use watchword::reason::Reason;
use watchword_db::{
    DbError, from_micros,
    postgres::{Postgres, tokio_postgres::Row},
    to_micros,
};

use super::{LOCK_CAP, Rotation, SessionState, StoreError, lock_until};
use crate::{
    domain::{Credentials, User, Username},
    revocations::{Revocation, Target},
};

/// Append-only: entry `i` is schema version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[r#"
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
"#];

const USER_COLUMNS: &str = "id, username, roles, create_time_us, disabled";

fn read_user(row: &Row) -> User {
    User {
        id: row.get(0),
        username: row.get(1),
        roles: super::split_roles(row.get(2)),
        create_time: from_micros(row.get(3)),
        disabled: row.get(4),
    }
}

pub(super) async fn insert_user(
    db: &Postgres,
    user: &User,
    username: &Username,
    password_hash: &str,
) -> Result<(), StoreError> {
    let client = db.client().await?;
    let result = client
        .execute(
            "INSERT INTO users (id, username, username_key, password_hash, roles, create_time_us)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &user.id,
                &username.as_str(),
                &username.key(),
                &password_hash,
                &user.roles.join(" "),
                &to_micros(user.create_time),
            ],
        )
        .await
        .map_err(DbError::from);
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.is_unique_violation() => Err(StoreError::Conflict),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn find_credentials(
    db: &Postgres,
    username: &Username,
) -> Result<Option<Credentials>, DbError> {
    let row = db
        .client()
        .await?
        .query_opt(
            &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username_key = $1"),
            &[&username.key()],
        )
        .await?;
    Ok(row.map(|row| Credentials {
        user: read_user(&row),
        password_hash: row.get(5),
    }))
}

pub(super) async fn find_user(db: &Postgres, user_id: &str) -> Result<Option<User>, DbError> {
    let row = db
        .client()
        .await?
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            &[&user_id],
        )
        .await?;
    Ok(row.as_ref().map(read_user))
}

pub(super) async fn list_users(
    db: &Postgres,
    after: Option<String>,
    limit: usize,
) -> Result<Vec<User>, DbError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = db
        .client()
        .await?
        .query(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"),
            &[&after.unwrap_or_default(), &limit],
        )
        .await?;
    Ok(rows.iter().map(read_user).collect())
}

pub(super) async fn set_roles(
    db: &Postgres,
    user_id: &str,
    roles: Vec<String>,
    now: SystemTime,
) -> Result<Option<(User, Vec<String>)>, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"),
            &[&user_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut user = read_user(&row);
    let removes_a_role = user.roles.iter().any(|r| !roles.contains(r));
    tx.execute(
        "UPDATE users SET roles = $1 WHERE id = $2",
        &[&roles.join(" "), &user_id],
    )
    .await?;
    let ended = if removes_a_role {
        tx.query(
            "UPDATE sessions SET revoke_time_us = $1 WHERE user_id = $2 AND revoke_time_us IS NULL RETURNING id",
            &[&to_micros(now), &user_id],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect()
    } else {
        Vec::new()
    };
    tx.commit().await?;
    user.roles = roles;
    Ok(Some((user, ended)))
}

pub(super) async fn disable_user(
    db: &Postgres,
    user_id: &str,
    now: SystemTime,
) -> Result<Option<User>, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let Some(row) = tx
        .query_opt(
            &format!(
                "UPDATE users SET disabled = TRUE, disable_time_us = COALESCE(disable_time_us, $2)
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            ),
            &[&user_id, &to_micros(now)],
        )
        .await?
    else {
        return Ok(None);
    };
    tx.execute(
        "UPDATE sessions SET revoke_time_us = $1 WHERE user_id = $2 AND revoke_time_us IS NULL",
        &[&to_micros(now), &user_id],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(read_user(&row)))
}

pub(super) async fn create_session(
    db: &Postgres,
    session_id: &str,
    user_id: &str,
    refresh_hash: Vec<u8>,
    refresh_expire_time: SystemTime,
    now: SystemTime,
) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO sessions (id, user_id, create_time_us) VALUES ($1, $2, $3)",
        &[&session_id, &user_id, &to_micros(now)],
    )
    .await?;
    tx.execute(
        "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES ($1, $2, $3)",
        &[&refresh_hash, &session_id, &to_micros(refresh_expire_time)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn session_state(
    db: &Postgres,
    session_id: &str,
    user_id: &str,
) -> Result<Option<SessionState>, DbError> {
    let row = db
        .client()
        .await?
        .query_opt(
            "SELECT u.id, u.username, u.roles, u.create_time_us, u.disabled, s.revoke_time_us
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.user_id = $2",
            &[&session_id, &user_id],
        )
        .await?;
    Ok(row.map(|row| SessionState {
        user: read_user(&row),
        revoked: row.get::<_, Option<i64>>(5).is_some(),
    }))
}

pub(super) async fn rotate_refresh(
    db: &Postgres,
    hash: Vec<u8>,
    successor_hash: Vec<u8>,
    now: SystemTime,
    grace: Duration,
    ttl: Duration,
) -> Result<Rotation, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    // Locking the presented token's row serialises concurrent rotations of it, on any replica.
    let Some(row) = tx
        .query_opt(
            "SELECT r.session_id, r.expire_time_us, r.rotate_time_us, s.revoke_time_us,
                    u.id, u.username, u.roles, u.create_time_us, u.disabled, f.locked_until_us
             FROM refresh_tokens r
             JOIN sessions s ON s.id = r.session_id
             JOIN users u ON u.id = s.user_id
             LEFT JOIN login_failures f ON f.username_key = u.username_key
             WHERE r.hash = $1
             FOR UPDATE OF r",
            &[&hash],
        )
        .await?
    else {
        return Ok(Rotation::Unknown);
    };
    let session_id: String = row.get(0);
    let expire_time = from_micros(row.get(1));
    let rotated_at = row.get::<_, Option<i64>>(2).map(from_micros);
    let revoked = row.get::<_, Option<i64>>(3).is_some();
    let user = User {
        id: row.get(4),
        username: row.get(5),
        roles: super::split_roles(row.get(6)),
        create_time: from_micros(row.get(7)),
        disabled: row.get(8),
    };
    let locked_until = row.get::<_, Option<i64>>(9).map(from_micros);
    if let Some(early) = super::refusal(&user, revoked, locked_until, expire_time, now) {
        return Ok(early);
    }
    let successor_expire_time = now + ttl;
    let outcome = match rotated_at {
        None => {
            tx.execute(
                "UPDATE refresh_tokens SET rotate_time_us = $1 WHERE hash = $2",
                &[&to_micros(now), &hash],
            )
            .await?;
            tx.execute(
                "INSERT INTO refresh_tokens (hash, session_id, expire_time_us) VALUES ($1, $2, $3)",
                &[&successor_hash, &session_id, &to_micros(successor_expire_time)],
            )
            .await?;
            Rotation::Rotated {
                user,
                session_id,
                expire_time: successor_expire_time,
            }
        }
        Some(rotated_at) if now.duration_since(rotated_at).unwrap_or_default() <= grace => {
            let successor = tx
                .query_opt(
                    "SELECT rotate_time_us, expire_time_us FROM refresh_tokens WHERE hash = $1",
                    &[&successor_hash],
                )
                .await?
                .map(|row| (row.get::<_, Option<i64>>(0), row.get::<_, i64>(1)));
            match successor {
                Some((None, expire_us)) => Rotation::Rotated {
                    user,
                    session_id,
                    expire_time: from_micros(expire_us),
                },
                _ => revoke_in(&tx, session_id, now).await?,
            }
        }
        Some(_) => revoke_in(&tx, session_id, now).await?,
    };
    tx.commit().await?;
    Ok(outcome)
}

async fn revoke_in(
    tx: &watchword_db::postgres::Transaction<'_>,
    session_id: String,
    now: SystemTime,
) -> Result<Rotation, DbError> {
    tx.execute(
        "UPDATE sessions SET revoke_time_us = $1 WHERE id = $2 AND revoke_time_us IS NULL",
        &[&to_micros(now), &session_id],
    )
    .await?;
    Ok(Rotation::Reused { session_id })
}

pub(super) async fn begin_login_attempt(
    db: &Postgres,
    key: &str,
    threshold: u32,
    now: SystemTime,
) -> Result<Result<(), Duration>, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    // Insert-or-lock in one statement: the row is ours until commit, and a concurrent successful login
    // deleting it cannot leave us reading nothing.
    let row = tx
        .query_one(
            "INSERT INTO login_failures (username_key, failures, last_attempt_us) VALUES ($1, 0, $2)
             ON CONFLICT (username_key) DO UPDATE SET last_attempt_us = EXCLUDED.last_attempt_us
             RETURNING failures, locked_until_us",
            &[&key, &to_micros(now)],
        )
        .await?;
    let (failures, locked_until): (i64, Option<i64>) = (row.get(0), row.get(1));
    if let Some(wait) = locked_until.and_then(|until| from_micros(until).duration_since(now).ok()) {
        tx.commit().await?;
        return Ok(Err(wait));
    }
    let failures = failures.saturating_add(1);
    let locked_until = lock_until(failures, threshold, now);
    tx.execute(
        "UPDATE login_failures SET failures = $2, locked_until_us = $3, last_attempt_us = $4
         WHERE username_key = $1",
        &[&key, &failures, &locked_until, &to_micros(now)],
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

pub(super) async fn login_succeeded(db: &Postgres, key: &str) -> Result<(), DbError> {
    db.client()
        .await?
        .execute("DELETE FROM login_failures WHERE username_key = $1", &[&key])
        .await?;
    Ok(())
}

pub(super) async fn session_of_refresh(db: &Postgres, hash: Vec<u8>) -> Result<Option<String>, DbError> {
    let row = db
        .client()
        .await?
        .query_opt("SELECT session_id FROM refresh_tokens WHERE hash = $1", &[&hash])
        .await?;
    Ok(row.map(|row| row.get(0)))
}

pub(super) async fn revoke_session(db: &Postgres, session_id: &str, now: SystemTime) -> Result<(), DbError> {
    db.client()
        .await?
        .execute(
            "UPDATE sessions SET revoke_time_us = $1 WHERE id = $2 AND revoke_time_us IS NULL",
            &[&to_micros(now), &session_id],
        )
        .await?;
    Ok(())
}

pub(super) async fn purge_expired(db: &Postgres, cutoff: SystemTime) -> Result<usize, DbError> {
    let client = db.client().await?;
    let tokens = client
        .execute(
            "DELETE FROM refresh_tokens WHERE expire_time_us < $1",
            &[&to_micros(cutoff)],
        )
        .await?;
    let failures = client
        .execute(
            "DELETE FROM login_failures WHERE last_attempt_us < $1",
            &[&to_micros(cutoff - LOCK_CAP)],
        )
        .await?;
    Ok(usize::try_from(tokens + failures).unwrap_or(usize::MAX))
}

pub(super) async fn secret_or_insert(
    db: &Postgres,
    name: &str,
    candidate: Vec<u8>,
) -> Result<Vec<u8>, DbError> {
    let client = db.client().await?;
    client
        .execute(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate],
        )
        .await?;
    Ok(client
        .query_one("SELECT value FROM secrets WHERE name = $1", &[&name])
        .await?
        .get(0))
}

pub(super) async fn load_keys(db: &Postgres, cutoff: SystemTime) -> Result<Vec<(String, bool)>, DbError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT private_key_pem, retire_time_us IS NOT NULL FROM signing_keys
             WHERE retire_time_us IS NULL OR retire_time_us >= $1
             ORDER BY create_time_us DESC, kid",
            &[&to_micros(cutoff)],
        )
        .await?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

pub(super) async fn rotate_key(db: &Postgres, kid: &str, pem: &str, now: SystemTime) -> Result<(), DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('signing_keys'))", &[])
        .await?;
    tx.execute(
        "UPDATE signing_keys SET retire_time_us = $1 WHERE retire_time_us IS NULL",
        &[&to_micros(now)],
    )
    .await?;
    tx.execute(
        "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES ($1, $2, $3)",
        &[&kid, &pem, &to_micros(now)],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn drop_retired_keys(db: &Postgres, cutoff: SystemTime) -> Result<usize, DbError> {
    let deleted = db
        .client()
        .await?
        .execute(
            "DELETE FROM signing_keys WHERE retire_time_us < $1",
            &[&to_micros(cutoff)],
        )
        .await?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}

pub(super) async fn signing_key_or_insert(db: &Postgres, kid: &str, pem: &str) -> Result<String, DbError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    // Replicas starting together on an empty database agree on one key.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('signing_keys'))", &[])
        .await?;
    let existing = tx
        .query_opt(
            "SELECT private_key_pem FROM signing_keys WHERE retire_time_us IS NULL
             ORDER BY create_time_us DESC, kid LIMIT 1",
            &[],
        )
        .await?;
    let pem = match existing {
        Some(row) => row.get(0),
        None => {
            tx.execute(
                "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES ($1, $2, $3)",
                &[&kid, &pem, &to_micros(SystemTime::now())],
            )
            .await?;
            pem.to_owned()
        }
    };
    tx.commit().await?;
    Ok(pem)
}

/// Revocations recorded at or after `since`: ended sessions and disabled users. Polled by every replica
/// so that revocations made through another replica reach this one's WatchRevocations streams.
pub(super) async fn revocations_since(db: &Postgres, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
    let client = db.client().await?;
    let since = to_micros(since);
    let mut revocations: Vec<Revocation> = client
        .query(
            "SELECT id, revoke_time_us FROM sessions WHERE revoke_time_us >= $1",
            &[&since],
        )
        .await?
        .iter()
        .map(|row| Revocation {
            target: Target::Session(row.get(0)),
            revoke_time: from_micros(row.get(1)),
            reason: Reason::TokenRevoked,
        })
        .collect();
    revocations.extend(
        client
            .query(
                "SELECT id, disable_time_us FROM users WHERE disabled AND disable_time_us >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|row| Revocation {
                target: Target::User(row.get(0)),
                revoke_time: from_micros(row.get(1)),
                reason: Reason::UserDisabled,
            }),
    );
    Ok(revocations)
}

/// Every disabled user, for the WatchRevocations snapshot.
pub(super) async fn disabled_users(db: &Postgres) -> Result<Vec<(String, SystemTime)>, DbError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT id, COALESCE(disable_time_us, 0) FROM users WHERE disabled",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get(0), from_micros(row.get(1))))
        .collect())
}

/// What may still matter to a new WatchRevocations subscriber: sessions ended since `since`, and every
/// disabled user.
pub(super) async fn recent_revocations(db: &Postgres, since: SystemTime) -> Result<Vec<Revocation>, DbError> {
    let mut revocations: Vec<Revocation> = revocations_since(db, since)
        .await?
        .into_iter()
        .filter(|r| matches!(r.target, Target::Session(_)))
        .collect();
    revocations.extend(disabled_users(db).await?.into_iter().map(|(id, at)| Revocation {
        target: Target::User(id),
        revoke_time: at,
        reason: Reason::UserDisabled,
    }));
    Ok(revocations)
}
