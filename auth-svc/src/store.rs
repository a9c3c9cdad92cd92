//! auth-svc's storage: users and signing keys. Handlers see only these methods, so another backend can
//! slot in behind them without touching handler code.

use std::time::SystemTime;

use watchword_db::{DatabaseUrl, DbError, Sqlite, from_micros, rusqlite, to_micros};

use crate::domain::{Credentials, User, Username};

/// Append-only: entry `i` is schema version `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated")]
    Conflict,
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(Clone)]
pub struct Store {
    db: Sqlite,
}

impl Store {
    pub async fn open(url: &DatabaseUrl) -> Result<Self, DbError> {
        match url {
            DatabaseUrl::Sqlite(path) => Ok(Self {
                db: Sqlite::open(path, MIGRATIONS).await?,
            }),
        }
    }

    /// Inserts a new user; `Conflict` if the username key is taken.
    pub async fn insert_user(
        &self,
        user: &User,
        username: &Username,
        password_hash: String,
    ) -> Result<(), StoreError> {
        let (id, display, key) = (
            user.id.clone(),
            username.as_str().to_owned(),
            username.key().to_owned(),
        );
        let roles = user.roles.join(" ");
        let created = to_micros(user.create_time);
        let result = self
            .db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO users (id, username, username_key, password_hash, roles, create_time_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    rusqlite::params![id, display, key, password_hash, roles, created],
                )
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(DbError::Sqlite(e)) if is_unique_violation(&e) => Err(StoreError::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    /// The account with this username key, with its password hash.
    pub async fn find_credentials(&self, username: &Username) -> Result<Option<Credentials>, DbError> {
        let key = username.key().to_owned();
        self.db
            .read(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT id, username, roles, create_time_us, password_hash FROM users WHERE username_key = ?1",
                )?;
                let mut rows = stmt.query([key])?;
                let Some(row) = rows.next()? else {
                    return Ok(None);
                };
                let roles: String = row.get(2)?;
                Ok(Some(Credentials {
                    user: User {
                        id: row.get(0)?,
                        username: row.get(1)?,
                        roles: roles.split_whitespace().map(str::to_owned).collect(),
                        create_time: from_micros(row.get(3)?),
                    },
                    password_hash: row.get(4)?,
                }))
            })
            .await
    }

    /// The signing key in use: the newest stored one, or `candidate` if none is stored yet. Insert-then-read
    /// lets several processes starting at once agree on one key.
    pub async fn signing_key_or_insert(&self, kid: &str, pem: &str) -> Result<String, DbError> {
        let (kid, pem) = (kid.to_owned(), pem.to_owned());
        let created = to_micros(SystemTime::now());
        self.db
            .write(move |tx| {
                let existing: Option<String> = tx
                    .query_row(
                        "SELECT private_key_pem FROM signing_keys ORDER BY create_time_us DESC, kid LIMIT 1",
                        [],
                        |row| row.get(0),
                    )
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                if let Some(pem) = existing {
                    return Ok(pem);
                }
                tx.execute(
                    "INSERT INTO signing_keys (kid, private_key_pem, create_time_us) VALUES (?1, ?2, ?3)",
                    rusqlite::params![kid, pem, created],
                )?;
                Ok(pem)
            })
            .await
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.db.ping().await
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}
