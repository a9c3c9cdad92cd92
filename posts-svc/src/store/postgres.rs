//! The PostgreSQL dialect of posts-svc's store: SQL and row mapping, nothing else.

use watchword_db::{
    DbError, from_micros,
    postgres::{PgTx, tokio_postgres::Row},
    to_micros,
};

use crate::domain::Post;

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

const COLUMNS: &str = "seq, id, author_id, author_username, title, body, create_time_us";

fn post(row: &Row) -> (i64, Post) {
    (
        row.get(0),
        Post {
            id: row.get(1),
            author_id: row.get(2),
            author_username: row.get(3),
            title: row.get(4),
            body: row.get(5),
            create_time: from_micros(row.get(6)),
        },
    )
}

impl super::Tx for PgTx<'_> {
    async fn insert_post(&mut self, p: &Post, request_id: Option<&str>) -> Result<bool, DbError> {
        let sql =
            "INSERT INTO posts (id, author_id, author_username, title, body, create_time_us, request_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
        let created = to_micros(p.create_time);
        let params: watchword_db::postgres::Params<'_> = &[
            &p.id,
            &p.author_id,
            &p.author_username,
            &p.title,
            &p.body,
            &created,
            &request_id,
        ];
        Ok(self.exec(sql, params).await? == 1)
    }

    async fn post_by_request_id(
        &mut self,
        author_id: &str,
        request_id: &str,
    ) -> Result<Option<Post>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM posts WHERE author_id = $1 AND request_id = $2");
        Ok(self
            .one(&sql, &[&author_id, &request_id])
            .await?
            .map(|row| post(&row).1))
    }

    async fn post(&mut self, id: &str) -> Result<Option<Post>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM posts WHERE id = $1");
        Ok(self.one(&sql, &[&id]).await?.map(|row| post(&row).1))
    }

    async fn posts_before(
        &mut self,
        author: Option<&str>,
        before: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Post)>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match author {
            Some(author) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM posts WHERE author_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                );
                self.rows(&sql, &[&author, &before, &limit]).await?
            }
            None => {
                let sql = format!("SELECT {COLUMNS} FROM posts WHERE seq < $1 ORDER BY seq DESC LIMIT $2");
                self.rows(&sql, &[&before, &limit]).await?
            }
        };
        Ok(rows.iter().map(post).collect())
    }

    async fn author_of(&mut self, id: &str) -> Result<Option<String>, DbError> {
        let row = self
            .one("SELECT author_id FROM posts WHERE id = $1 FOR UPDATE", &[&id])
            .await?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn delete_post(&mut self, id: &str) -> Result<(), DbError> {
        self.exec("DELETE FROM posts WHERE id = $1", &[&id]).await?;
        Ok(())
    }
}
