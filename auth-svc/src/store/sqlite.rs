//! What is SQLite's own in auth-svc's store: the schema, and the one statement written differently.

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
    r#"
-- Each key's raw Ed25519 public key, so that keys which no longer sign are loaded without their private
-- key (which may be sealed: `private_key_pem` then holds its sealed form, see auth-svc's sealing.rs). Filled
-- in at start for keys stored before this version (SQL cannot derive it).
ALTER TABLE signing_keys ADD COLUMN public_key BLOB;
"#,
    r#"
-- What GetMe and ListSessions show of a session: when it ends unless refreshed (its newest refresh token's
-- expiry; an API key's expiry), when it was last refreshed (an API key: last exchanged), and where the
-- login came from. Sessions from before this version end when their newest refresh token does.
ALTER TABLE sessions ADD COLUMN expire_time_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN last_refresh_time_us INTEGER;
ALTER TABLE sessions ADD COLUMN client_address TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;
UPDATE sessions SET expire_time_us = COALESCE(
    (SELECT MAX(r.expire_time_us) FROM refresh_tokens r WHERE r.session_id = sessions.id), create_time_us);

-- API keys. Each key is a session of its own (the same id): its access tokens carry the key's id as
-- `sid`, so revoking the key is revoking that session, and everything that honours revoked sessions
-- (Validate, the revocation log and stream, every guard) honours revoked keys. Only a keyed hash of the
-- secret is stored.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY REFERENCES sessions (id),
    hash            BLOB NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    -- Space-separated role names, as users.roles.
    roles           TEXT NOT NULL
) STRICT;

-- Security events, written in the transaction of the change they record (see auth-svc's audit.rs).
CREATE TABLE audit_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT NOT NULL,
    time_us         INTEGER NOT NULL,
    actor_id        TEXT,
    subject_id      TEXT,
    client_address  TEXT,
    session_id      TEXT,
    detail          TEXT NOT NULL
) STRICT;
CREATE INDEX audit_events_by_time ON audit_events (time_us);
CREATE INDEX audit_events_by_actor ON audit_events (actor_id, id);
CREATE INDEX audit_events_by_subject ON audit_events (subject_id, id);
"#,
    r#"
-- When each key starts (or started) signing. RotateSigningKey publishes a new key at once and lets it sign
-- only after --key-publish-lead, so verifiers that cache the key set learn it first; the key it replaces
-- gets that same time as its retire time. Keys from before this version signed from their creation.
ALTER TABLE signing_keys ADD COLUMN sign_time_us INTEGER;
UPDATE signing_keys SET sign_time_us = create_time_us;
"#,
];

/// The failed logins of a username key. (Nothing to lock: the write transaction holds the database.)
pub(super) const ACCOUNT_FAILURES: &str =
    "SELECT failures, locked_until_us FROM login_failures WHERE username_key = $1";
