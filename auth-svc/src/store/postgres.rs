//! What is PostgreSQL's own in auth-svc's store: the schema, and the one statement written differently.

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
    r#"
-- Each key's raw Ed25519 public key (see sqlite.rs, version 6).
ALTER TABLE signing_keys ADD COLUMN public_key BYTEA;
"#,
    r#"
-- Session details, API keys and the audit log (see sqlite.rs, version 7).
ALTER TABLE sessions ADD COLUMN expire_time_us BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN last_refresh_time_us BIGINT;
ALTER TABLE sessions ADD COLUMN client_address TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
UPDATE sessions SET expire_time_us = COALESCE(
    (SELECT MAX(r.expire_time_us) FROM refresh_tokens r WHERE r.session_id = sessions.id), create_time_us);
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY REFERENCES sessions (id),
    hash            BYTEA NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    roles           TEXT NOT NULL
);
CREATE TABLE audit_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            TEXT NOT NULL,
    time_us         BIGINT NOT NULL,
    actor_id        TEXT,
    subject_id      TEXT,
    client_address  TEXT,
    session_id      TEXT,
    detail          TEXT NOT NULL
);
CREATE INDEX audit_events_by_time ON audit_events (time_us);
CREATE INDEX audit_events_by_actor ON audit_events (actor_id, id);
CREATE INDEX audit_events_by_subject ON audit_events (subject_id, id);
"#,
    r#"
-- When each key starts signing (see sqlite.rs, version 8).
ALTER TABLE signing_keys ADD COLUMN sign_time_us BIGINT;
UPDATE signing_keys SET sign_time_us = create_time_us;
"#,
];

/// The failed logins of a username key, locked until the transaction ends: insert-or-lock in one
/// statement, so a concurrent successful login deleting the row cannot leave us reading nothing.
pub(super) const LOCK_ACCOUNT_FAILURES: &str =
    "INSERT INTO login_failures (username_key, failures, last_attempt_us) VALUES ($1, 0, $2)
     ON CONFLICT (username_key) DO UPDATE SET last_attempt_us = EXCLUDED.last_attempt_us
     RETURNING failures, locked_until_us";
