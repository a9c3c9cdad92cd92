//! posts-svc's storage. Each rule is written once, here, over a [`watchword_db::Conn`]; each statement once,
//! in `sql.rs`; `sqlite.rs` and `postgres.rs` hold the two schemas (see auth-svc's store for the pattern).

mod postgres;
mod sql;
mod sqlite;

use watchword_db::{
    Conn, Database, DatabaseUrl, DbError, GroupCommit, Migrations, SqliteConn, postgres::PoolOptions, read,
    run_ready, transaction,
};

use crate::domain::{PageRequest, PageToken, Post};

/// Outcome of a delete that is not "deleted".
#[derive(Debug)]
pub enum DeleteError {
    NotFound,
    NotAuthor,
    Db(DbError),
}

impl From<DbError> for DeleteError {
    fn from(error: DbError) -> Self {
        Self::Db(error)
    }
}

/// A page of posts and the token for the next one.
#[derive(Debug)]
pub struct Page {
    pub posts: Vec<Post>,
    pub next: Option<PageToken>,
}

/// The schema, in each dialect, with the same version numbers (`tests/api/schema.rs` checks that the two
/// arrive at the same tables and columns).
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: sqlite::MIGRATIONS,
    postgres: postgres::MIGRATIONS,
};

#[derive(Clone)]
pub struct Store {
    db: Database,
    /// SQLite only: CreatePost's inserts, committed in groups (PostgreSQL does its own group commit).
    inserts: Option<GroupCommit<(Post, Option<String>), Post>>,
}

/// Most inserts committed in one transaction: a few milliseconds of writer time at most.
const MAX_INSERT_BATCH: usize = 128;

impl Store {
    pub async fn open(url: &DatabaseUrl, pool: &PoolOptions) -> Result<Self, DbError> {
        let db = Database::open(url, pool, &MIGRATIONS).await?;
        let inserts = match &db {
            Database::Sqlite(sqlite) => Some(GroupCommit::spawn(
                sqlite.clone(),
                MAX_INSERT_BATCH,
                |tx, item| run_ready(insert(&SqliteConn(tx), item)),
            )),
            Database::Postgres(_) => None,
        };
        Ok(Self { db, inserts })
    }

    /// Stores `post`, unless its author already created a post with the same `request_id`: then that
    /// earlier post is returned instead (the insert and the lookup are one transaction). Returns once the
    /// post is durably committed.
    pub async fn insert(&self, post: Post, request_id: Option<String>) -> Result<Post, DbError> {
        match &self.inserts {
            Some(inserts) => inserts.submit((post, request_id)).await,
            None => transaction!(&self.db, |tx| insert(tx, (post, request_id))),
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Post>, DbError> {
        let id = id.to_owned();
        read!(&self.db, |tx| async move { sql::post_by_id(tx, &id).await })
    }

    /// Newest first, starting after `page.before`.
    pub async fn list(&self, page: PageRequest) -> Result<Page, DbError> {
        read!(&self.db, |tx| async move {
            // One more row than asked tells whether another page exists.
            let before = page.before.unwrap_or(i64::MAX);
            let mut rows = sql::posts_before(tx, page.author_id.as_deref(), before, page.size + 1).await?;
            Ok(page_of(&mut rows, &page))
        })
    }

    /// Deletes post `id` if `caller` wrote it or `as_admin`; check and delete are one transaction.
    pub async fn delete(&self, id: &str, caller: &str, as_admin: bool) -> Result<(), DeleteError> {
        let (id, caller) = (id.to_owned(), caller.to_owned());
        let outcome = transaction!(&self.db, |tx| async move {
            let author = sql::author_of(tx, &id).await?;
            if let Err(refused) = may_delete(author.as_deref(), &caller, as_admin) {
                return Ok(Err(refused));
            }
            sql::delete_post(tx, &id).await?;
            Ok(Ok(()))
        });
        outcome?
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.db.ping().await
    }

    /// Database connections held now, idle and busy.
    pub fn connections(&self) -> watchword_db::Connections {
        self.db.connections()
    }
}

/// One CreatePost: the post, or the author's earlier post with the same `request_id` (maybe earlier in the
/// very same group commit).
async fn insert(tx: &impl Conn, (post, request_id): (Post, Option<String>)) -> Result<Post, DbError> {
    if sql::insert_post(tx, &post, request_id.as_deref()).await? {
        return Ok(post);
    }
    let request_id = request_id.unwrap_or_default();
    sql::post_by_request_id(tx, &post.author_id, &request_id)
        .await?
        .ok_or_else(|| DbError::Config("a conflicting insert left no post behind".into()))
}

/// Trims the one extra row fetched to learn whether another page exists, and makes the page token.
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
