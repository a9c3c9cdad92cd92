//! Every statement of posts-svc's store, written once in the SQL both dialects speak, with its row mapping.

use watchword_db::{Conn, DbError, Row, from_micros, to_micros};

use crate::domain::Post;

const COLUMNS: &str = "seq, id, author_id, author_username, title, body, create_time_us";

fn post(row: &Row<'_>) -> Result<(i64, Post), DbError> {
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

/// Inserts `post` unless its author already used `request_id`; whether it was inserted.
pub async fn insert_post(tx: &impl Conn, p: &Post, request_id: Option<&str>) -> Result<bool, DbError> {
    let sql = "INSERT INTO posts (id, author_id, author_username, title, body, create_time_us, request_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
    let created = to_micros(p.create_time);
    let params: [&dyn watchword_db::Param; 7] = [
        &p.id,
        &p.author_id,
        &p.author_username,
        &p.title,
        &p.body,
        &created,
        &request_id,
    ];
    Ok(tx.exec(sql, &params).await? == 1)
}

pub async fn post_by_request_id(
    tx: &impl Conn,
    author_id: &str,
    request_id: &str,
) -> Result<Option<Post>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM posts WHERE author_id = $1 AND request_id = $2");
    Ok(tx
        .one(&sql, &[&author_id, &request_id], post)
        .await?
        .map(|(_, post)| post))
}

pub async fn post_by_id(tx: &impl Conn, id: &str) -> Result<Option<Post>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM posts WHERE id = $1");
    Ok(tx.one(&sql, &[&id], post).await?.map(|(_, post)| post))
}

/// Up to `limit` posts (by `author` if given) older than position `before`, newest first, with their
/// positions.
///
/// `LIMIT CAST($n AS BIGINT)`, never `LIMIT $n`: SQLite's planner reads a bare bound LIMIT, which marks the
/// statement stale on every rebind, so a cached statement was re-parsed and re-planned on every page (3x
/// the cost of the query itself). Behind a cast, the plan no longer depends on the value.
pub async fn posts_before(
    tx: &impl Conn,
    author: Option<&str>,
    before: i64,
    limit: usize,
) -> Result<Vec<(i64, Post)>, DbError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    match author {
        Some(author) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM posts WHERE author_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT CAST($3 AS BIGINT)"
            );
            tx.all(&sql, &[&author, &before, &limit], post).await
        }
        None => {
            let sql = format!(
                "SELECT {COLUMNS} FROM posts WHERE seq < $1 ORDER BY seq DESC LIMIT CAST($2 AS BIGINT)"
            );
            tx.all(&sql, &[&before, &limit], post).await
        }
    }
}

/// The author of post `id`, locked until the transaction ends.
pub async fn author_of(tx: &impl Conn, id: &str) -> Result<Option<String>, DbError> {
    let sql = format!(
        "SELECT author_id FROM posts WHERE id = $1 {}",
        tx.locking("FOR UPDATE")
    );
    tx.one(&sql, &[&id], |row| row.get(0)).await
}

pub async fn delete_post(tx: &impl Conn, id: &str) -> Result<(), DbError> {
    tx.exec("DELETE FROM posts WHERE id = $1", &[&id]).await.map(drop)
}
