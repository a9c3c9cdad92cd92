//! posts-svc's storage. Handlers see only these methods, so another backend can slot in behind them.

mod postgres;

use watchword_db::rusqlite::OptionalExtension as _;
use watchword_db::{
    Database, DatabaseUrl, DbError, GroupCommit, Migrations, from_micros, postgres::PoolOptions, rusqlite,
    sqlite_or, to_micros,
};

use crate::domain::{PageRequest, PageToken, Post};

/// Append-only: entry `i` is schema version `i + 1`.
const MIGRATIONS: &[&str] = &[
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

/// Outcome of a delete that is not "deleted".
#[derive(Debug)]
pub enum DeleteError {
    NotFound,
    NotAuthor,
    Db(DbError),
}

/// A page of posts and the token for the next one.
#[derive(Debug)]
pub struct Page {
    pub posts: Vec<Post>,
    pub next: Option<PageToken>,
}

#[derive(Clone)]
pub struct Store {
    db: Database,
    /// SQLite only: CreatePost's inserts, committed in groups (PostgreSQL does its own group commit).
    inserts: Option<GroupCommit<(Post, Option<String>), Post>>,
}

/// Most inserts committed in one transaction: a few milliseconds of writer time at most.
const MAX_INSERT_BATCH: usize = 128;

const COLUMNS: &str = "seq, id, author_id, author_username, title, body, create_time_us";
/// `LIMIT CAST(?n AS INTEGER)`, never `LIMIT ?n`: SQLite's planner reads a bare bound LIMIT, which marks the
/// statement stale on every rebind, so a cached statement was re-parsed and re-planned on every page (3x the
/// cost of the query itself). Behind a cast, the plan no longer depends on the value.
const LIMIT_2: &str = "CAST(?2 AS INTEGER)";
const LIMIT_3: &str = "CAST(?3 AS INTEGER)";

impl Store {
    pub async fn open(url: &DatabaseUrl, pool: &PoolOptions) -> Result<Self, DbError> {
        let migrations = Migrations {
            sqlite: MIGRATIONS,
            postgres: postgres::MIGRATIONS,
        };
        let db = Database::open(url, pool, &migrations).await?;
        let inserts = match &db {
            Database::Sqlite(sqlite) => {
                Some(GroupCommit::spawn(sqlite.clone(), MAX_INSERT_BATCH, insert_post))
            }
            Database::Postgres(_) => None,
        };
        Ok(Self { db, inserts })
    }

    /// Stores `post`, unless its author already created a post with the same `request_id`: then that
    /// earlier post is returned instead (the insert and the lookup are one transaction). Returns once the
    /// post is durably committed.
    pub async fn insert(&self, post: Post, request_id: Option<String>) -> Result<Post, DbError> {
        let _sqlite = sqlite_or!(&self.db, |pg| postgres::insert(pg, post, request_id).await);
        // `open` starts the group commit for every SQLite store.
        let inserts = self.inserts.as_ref().ok_or(DbError::Worker)?;
        inserts.submit((post, request_id)).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Post>, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::get(pg, id).await);
        let id = id.to_owned();
        db.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM posts WHERE id = ?1"))?;
            let mut rows = stmt.query([id])?;
            rows.next()?
                .map(|row| read_post(row).map(|(_, post)| post))
                .transpose()
        })
        .await
    }

    /// Newest first, starting after `page.before`.
    pub async fn list(&self, page: PageRequest) -> Result<Page, DbError> {
        let db = sqlite_or!(&self.db, |pg| postgres::list(pg, page).await);
        db.read(move |conn| {
                let before = page.before.unwrap_or(i64::MAX);
                // One more row than asked tells whether another page exists.
                let limit = i64::try_from(page.size + 1).unwrap_or(i64::MAX);
                let mut rows: Vec<(i64, Post)> = match &page.author_id {
                    Some(author) => conn
                        .prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM posts WHERE author_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT {LIMIT_3}"
                        ))?
                        .query_map(rusqlite::params![author, before, limit], read_post)?
                        .collect::<Result<_, _>>()?,
                    None => conn
                        .prepare_cached(&format!(
                            "SELECT {COLUMNS} FROM posts WHERE seq < ?1 ORDER BY seq DESC LIMIT {LIMIT_2}"
                        ))?
                        .query_map(rusqlite::params![before, limit], read_post)?
                        .collect::<Result<_, _>>()?,
                };
                Ok(page_of(&mut rows, &page))
            })
            .await
    }

    /// Deletes post `id` if `caller` wrote it or `as_admin`; check and delete are one transaction.
    ///
    /// A non-admin learns nothing about posts it may not delete: a missing post and someone else's post
    /// both come back as `NotAuthor`. Only admins see `NotFound`.
    pub async fn delete(&self, id: &str, caller: &str, as_admin: bool) -> Result<(), DeleteError> {
        let db = sqlite_or!(&self.db, |pg| postgres::delete(pg, id, caller, as_admin).await);
        let (id, caller) = (id.to_owned(), caller.to_owned());
        let result = db
            .write(move |tx| {
                let author: Option<String> = tx
                    .prepare_cached("SELECT author_id FROM posts WHERE id = ?1")?
                    .query_row([&id], |row| row.get(0))
                    .optional()?;
                if let Err(refused) = may_delete(author.as_deref(), &caller, as_admin) {
                    return Ok(Err(refused));
                }
                tx.execute("DELETE FROM posts WHERE id = ?1", [&id])?;
                Ok(Ok(()))
            })
            .await;
        result.map_err(DeleteError::Db)?
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.db.ping().await
    }
}

/// Trims the one extra row fetched to learn whether another page exists, and makes the page token.
/// One CreatePost insert, run by the group commit inside its batch's transaction.
fn insert_post(
    tx: &rusqlite::Transaction<'_>,
    (post, request_id): (Post, Option<String>),
) -> rusqlite::Result<Post> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO posts (id, author_id, author_username, title, body, create_time_us, request_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO NOTHING",
        )?
        .execute(rusqlite::params![
            post.id,
            post.author_id,
            post.author_username,
            post.title,
            post.body,
            to_micros(post.create_time),
            request_id,
        ])?;
    if inserted == 1 {
        return Ok(post);
    }
    // The author sent this request_id before (maybe earlier in this very batch): answer with that post.
    tx.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM posts WHERE author_id = ?1 AND request_id = ?2"
    ))?
    .query_row(rusqlite::params![post.author_id, request_id], read_post)
    .map(|(_, post)| post)
}

fn page_of(rows: &mut Vec<(i64, Post)>, page: &PageRequest) -> Page {
    let next = if rows.len() > page.size {
        rows.truncate(page.size);
        rows.last().map(|(seq, _)| PageToken {
            before: *seq,
            author_id: page.author_id.clone(),
        })
    } else {
        None
    };
    Page {
        posts: rows.drain(..).map(|(_, post)| post).collect(),
        next,
    }
}

/// Who may delete a post whose author is `author` (`None`: no such post). A non-admin learns nothing
/// about posts it may not delete: a missing post and someone else's both refuse as `NotAuthor`.
fn may_delete(author: Option<&str>, caller: &str, as_admin: bool) -> Result<(), DeleteError> {
    match author {
        None if as_admin => Err(DeleteError::NotFound),
        None => Err(DeleteError::NotAuthor),
        Some(author) if author != caller && !as_admin => Err(DeleteError::NotAuthor),
        Some(_) => Ok(()),
    }
}

fn read_post(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Post)> {
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
