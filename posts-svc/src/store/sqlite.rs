//! What is SQLite's own in posts-svc's store: the schema.

/// Append-only: entry `i` is schema version `i + 1`, the same version as in `postgres.rs`.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE posts (
    -- Insertion order: the keyset for pagination. AUTOINCREMENT never reuses a deleted post's value,
    -- so a page token keeps meaning the same position.
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    author_id       TEXT NOT NULL,
    author_username TEXT NOT NULL,
    title           TEXT NOT NULL,
    body            TEXT NOT NULL,
    create_time_us  INTEGER NOT NULL
) STRICT;

CREATE INDEX posts_by_author ON posts (author_id, seq);
"#,
    r#"
-- The client's idempotency key for CreatePost, unique per author.
ALTER TABLE posts ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX posts_by_request_id ON posts (author_id, request_id) WHERE request_id IS NOT NULL;
"#,
];
