//! What is PostgreSQL's own in posts-svc's store: the schema.

/// Append-only: entry `i` is schema version `i + 1`, the same version as in `sqlite.rs`. Version 1 was
/// written when SQLite was at version 2 and holds both, so version 2 changes nothing here.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE posts (
    -- Insertion order: the keyset for pagination; an identity value is never reused.
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              TEXT NOT NULL UNIQUE,
    author_id       TEXT NOT NULL,
    author_username TEXT NOT NULL,
    title           TEXT NOT NULL,
    body            TEXT NOT NULL,
    create_time_us  BIGINT NOT NULL,
    -- The client's idempotency key for CreatePost, unique per author.
    request_id      TEXT
);
CREATE INDEX posts_by_author ON posts (author_id, seq);
CREATE UNIQUE INDEX posts_by_request_id ON posts (author_id, request_id) WHERE request_id IS NOT NULL;
"#,
    "-- SQLite's version 2 (request_id): part of version 1 here.",
];
