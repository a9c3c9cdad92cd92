//! The PostgreSQL side of posts-svc's [`Store`](super::Store): the same operations, in PostgreSQL's dialect.

use watchword_db::{
    DbError, from_micros,
    postgres::{Postgres, tokio_postgres::Row},
    to_micros,
};

use super::{DeleteError, Page};
use crate::domain::{PageRequest, Post};

/// Append-only: entry `i` is schema version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[r#"
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
"#];

const COLUMNS: &str = "seq, id, author_id, author_username, title, body, create_time_us";

pub(super) async fn insert(db: &Postgres, post: Post, request_id: Option<String>) -> Result<Post, DbError> {
    let client = db.client().await?;
    let created = to_micros(post.create_time);
    let inserted = client
        .execute(
            "INSERT INTO posts (id, author_id, author_username, title, body, create_time_us, request_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[
                &post.id,
                &post.author_id,
                &post.author_username,
                &post.title,
                &post.body,
                &created,
                &request_id,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(post);
    }
    // A retry: the earlier post with this request_id (committed, so visible to this statement).
    let row = client
        .query_one(
            &format!("SELECT {COLUMNS} FROM posts WHERE author_id = $1 AND request_id = $2"),
            &[&post.author_id, &request_id],
        )
        .await?;
    Ok(read_post(&row).1)
}

pub(super) async fn get(db: &Postgres, id: &str) -> Result<Option<Post>, DbError> {
    let client = db.client().await?;
    let row = client
        .query_opt(&format!("SELECT {COLUMNS} FROM posts WHERE id = $1"), &[&id])
        .await?;
    Ok(row.map(|row| read_post(&row).1))
}

pub(super) async fn list(db: &Postgres, page: PageRequest) -> Result<Page, DbError> {
    let client = db.client().await?;
    let before = page.before.unwrap_or(i64::MAX);
    let limit = i64::try_from(page.size + 1).unwrap_or(i64::MAX);
    let rows = match &page.author_id {
        Some(author) => client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM posts WHERE author_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
                ),
                &[author, &before, &limit],
            )
            .await?,
        None => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM posts WHERE seq < $1 ORDER BY seq DESC LIMIT $2"),
                    &[&before, &limit],
                )
                .await?
        }
    };
    let mut rows: Vec<(i64, Post)> = rows.iter().map(read_post).collect();
    Ok(super::page_of(&mut rows, &page))
}

pub(super) async fn delete(db: &Postgres, id: &str, caller: &str, as_admin: bool) -> Result<(), DeleteError> {
    let mut client = db.client().await.map_err(DeleteError::Db)?;
    let tx = client
        .transaction()
        .await
        .map_err(|e| DeleteError::Db(e.into()))?;
    let author: Option<String> = tx
        .query_opt("SELECT author_id FROM posts WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(|e| DeleteError::Db(e.into()))?
        .map(|row| row.get(0));
    super::may_delete(author.as_deref(), caller, as_admin)?;
    tx.execute("DELETE FROM posts WHERE id = $1", &[&id])
        .await
        .map_err(|e| DeleteError::Db(e.into()))?;
    tx.commit().await.map_err(|e| DeleteError::Db(e.into()))
}

fn read_post(row: &Row) -> (i64, Post) {
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
