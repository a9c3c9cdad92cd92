//! The SQLite dialect of posts-svc's store: SQL and row mapping, nothing else.

use watchword_db::{
    DbError, SqliteTx, from_micros,
    rusqlite::{self, Row, params},
    to_micros,
};

use crate::domain::Post;

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

const COLUMNS: &str = "seq, id, author_id, author_username, title, body, create_time_us";

fn post(row: &Row<'_>) -> rusqlite::Result<(i64, Post)> {
    Ok((
        row.get(0)?,
        Post {
            id: row.get(1)?,
            author_id: row.get(2)?,
            author_username: row.get(3)?,
            title: row.get(4)?,
            body: row.get(5)?,
            create_time: from_micros(row.get(6)?),
        },
    ))
}

impl super::Tx for SqliteTx<'_> {
    async fn insert_post(&mut self, p: &Post, request_id: Option<&str>) -> Result<bool, DbError> {
        let sql =
            "INSERT INTO posts (id, author_id, author_username, title, body, create_time_us, request_id)
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING";
        let params = params![
            p.id,
            p.author_id,
            p.author_username,
            p.title,
            p.body,
            to_micros(p.create_time),
            request_id
        ];
        Ok(self.exec(sql, params)? == 1)
    }

    async fn post_by_request_id(
        &mut self,
        author_id: &str,
        request_id: &str,
    ) -> Result<Option<Post>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM posts WHERE author_id = ?1 AND request_id = ?2");
        Ok(self
            .one(&sql, [author_id, request_id], post)?
            .map(|(_, post)| post))
    }

    async fn post(&mut self, id: &str) -> Result<Option<Post>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM posts WHERE id = ?1");
        Ok(self.one(&sql, [id], post)?.map(|(_, post)| post))
    }

    async fn posts_before(
        &mut self,
        author: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Post)>, DbError> {
        // `LIMIT CAST(?n AS INTEGER)`, never `LIMIT ?n`: SQLite's planner reads a bare bound LIMIT, which marks
        // the statement stale on every rebind, so a cached statement was re-parsed and re-planned on every
        // page (3x the cost of the query itself). Behind a cast, the plan no longer depends on the value.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match author {
            Some(author) => self.all(
                &format!("SELECT {COLUMNS} FROM posts WHERE author_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT CAST(?3 AS INTEGER)"),
                params![author, before, limit],
                post,
            ),
            None => self.all(
                &format!("SELECT {COLUMNS} FROM posts WHERE seq < ?1 ORDER BY seq DESC LIMIT CAST(?2 AS INTEGER)"),
                params![before, limit],
                post,
            ),
        }
    }

    async fn author_of(&mut self, id: &str) -> Result<Option<String>, DbError> {
        self.one("SELECT author_id FROM posts WHERE id = ?1", [id], |row| {
            row.get(0)
        })
    }

    async fn delete_post(&mut self, id: &str) -> Result<(), DbError> {
        self.exec("DELETE FROM posts WHERE id = ?1", [id])?;
        Ok(())
    }
}
