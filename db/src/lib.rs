//! Storage plumbing for the Watchword services: embedded SQLite (the default) and PostgreSQL ([`postgres`]).
//!
//! Embedded SQLite:
//!
//! rusqlite is synchronous, so every statement runs on tokio's blocking pool, never on an async worker.
//! SQLite allows one writer at a time: writes go through a single connection guarded by a one-permit
//! semaphore (waiting happens in async land, not by parking blocking threads). Reads use a small pool
//! of connections, which WAL mode lets run alongside the writer.
//!
//! Durability: WAL with `synchronous=FULL`, so an acknowledged commit survives power loss; write
//! transactions start with `BEGIN IMMEDIATE` so a read-then-write never fails its lock upgrade.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    pin::pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod batch;
pub mod postgres;

pub use batch::GroupCommit;

pub use rusqlite;
pub use tokio_postgres;

/// How long a statement waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Readers kept open. Two cores gain nothing from more; a burst beyond this waits for a permit.
const MAX_READERS: usize = 8;

/// Errors from the storage layer. Callers map them to `UNAVAILABLE`/`INTERNAL`; the text is for logs only.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("database file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("database lock file {path}: {source}")]
    LockFile { path: PathBuf, source: std::io::Error },
    /// Holds only what precedes the first ':' of the URL: the rest may carry a password.
    #[error("unsupported database url (it starts {0:?}): expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("postgres: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database connection pool: {0}")]
    Pool(String),
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database worker thread failed")]
    Worker,
    /// Another process already holds [`DatabaseUrl::claim_exclusive`] on this database.
    #[error("{path} is already served by another process (it holds {lock})")]
    InUse { path: PathBuf, lock: PathBuf },
    /// The transaction of a [`GroupCommit`] batch failed, so every write in it shares this error.
    #[error("{0}")]
    Batch(Arc<DbError>),
}

/// The server's own words when there are some: tokio-postgres alone says only "db error".
fn postgres_message(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => with_causes(error),
    }
}

/// `error` and each of its causes: tokio-postgres says "error performing TLS handshake" and keeps why (an
/// unknown issuer, a name the certificate does not carry) in its source.
pub(crate) fn with_causes(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !message.ends_with(&text) {
            message = format!("{message}: {text}");
        }
        cause = next.source();
    }
    message
}

impl DbError {
    /// Whether this is a unique-constraint violation, in either backend.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            }
            Self::Postgres(e) => e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
            Self::Batch(e) => e.is_unique_violation(),
            _ => false,
        }
    }
}

/// Where a service keeps its data, parsed from `--database-url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file, created on first use.
    Sqlite(PathBuf),
    /// A PostgreSQL connection string.
    Postgres(String),
}

impl std::fmt::Debug for DatabaseUrl {
    /// Never prints a PostgreSQL password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl DatabaseUrl {
    /// For an SQLite file, claims it for this process until the returned file is dropped, or fails with
    /// [`DbError::InUse`] if another process (or another claim here) holds it. A PostgreSQL database is
    /// meant to be shared: `None`.
    ///
    /// For services that keep state derived from the database in memory and so must see every write. The
    /// lock is an advisory `flock` on a `<database>.lock` file beside it, not on the database itself:
    /// closing any descriptor of the database file would drop SQLite's own POSIX locks. The kernel releases
    /// it when the process dies, however it dies.
    ///
    /// The lock file is named after the database's canonical path (the file is created first, so it has
    /// one): a symlink to the file, or to a directory on the way, is one database and so one claim.
    /// (Hard links are not recognised: they have no canonical name.)
    pub fn claim_exclusive(&self) -> Result<Option<std::fs::File>, DbError> {
        let Self::Sqlite(path) = self else {
            return Ok(None);
        };
        create_parent_dir(path)?;
        create_database_file(path)?;
        let canonical = std::fs::canonicalize(path).map_err(|source| DbError::File {
            path: path.clone(),
            source,
        })?;
        let mut lock = canonical.into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let file = private_file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| DbError::LockFile {
                path: lock.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(DbError::InUse {
                path: path.clone(),
                lock,
            }),
            Err(std::fs::TryLockError::Error(source)) => Err(DbError::LockFile { path: lock, source }),
        }
    }

    /// Accepts `sqlite://PATH`, `sqlite:PATH` (relative to the working directory) and
    /// `postgres://...`/`postgresql://...`. A PostgreSQL URL is checked as far as it can be without
    /// connecting (its parameters, `sslmode`, and that an `sslrootcert` file holds certificates), so a
    /// mistake is refused before anything starts. Errors never repeat the URL: it may carry a password.
    pub fn parse(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::check_url(url)?;
            return Ok(Self::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DbError::UnsupportedUrl(url.split(':').next().unwrap_or_default().to_owned()))?;
        Ok(Self::Sqlite(PathBuf::from(path)))
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            // Host and database only: the URL may carry a password.
            Self::Postgres(url) => {
                let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                write!(f, "postgres://{}", host.split('?').next().unwrap_or_default())
            }
        }
    }
}

/// A service's database, whichever backend `--database-url` chose.
///
/// A service writes each storage rule once, as an async function over a [`Conn`], and each statement once,
/// in the SQL both dialects speak; [`transaction!`] and [`read!`] run a rule on whichever backend is in use.
#[derive(Clone)]
pub enum Database {
    Sqlite(Sqlite),
    Postgres(postgres::Postgres),
}

/// A service's schema, once per dialect (each list append-only, with the same version numbers).
pub struct Migrations {
    pub sqlite: &'static [&'static str],
    pub postgres: &'static [&'static str],
}

impl Database {
    /// Opens (and migrates) the database `url` names.
    pub async fn open(
        url: &DatabaseUrl,
        pool: &postgres::PoolOptions,
        migrations: &Migrations,
    ) -> Result<Self, DbError> {
        Ok(match url {
            DatabaseUrl::Sqlite(path) => Self::Sqlite(Sqlite::open(path, migrations.sqlite).await?),
            DatabaseUrl::Postgres(url) => {
                Self::Postgres(postgres::Postgres::connect(url, pool, migrations.postgres).await?)
            }
        })
    }

    /// Whether other processes may write to this database too (PostgreSQL: replicas).
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// A cheap query proving the database answers; used by health reporting.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => db.ping().await,
            Self::Postgres(pg) => pg.ping().await,
        }
    }

    /// SQLite: rewrites the file without free pages and empties the WAL into it, so content that was
    /// overwritten or deleted is no longer in either ([`Sqlite::vacuum`]). PostgreSQL: nothing; the old row
    /// versions stay on disk until the server's own vacuum reuses their space (and in its WAL archives).
    pub async fn vacuum(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => db.vacuum().await,
            Self::Postgres(_) => Ok(()),
        }
    }

    /// The connections open now, idle and busy (for metrics).
    pub fn connections(&self) -> Connections {
        match self {
            Self::Sqlite(db) => db.connections(),
            Self::Postgres(pg) => pg.connections(),
        }
    }
}

/// How many database connections a process holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Connections {
    pub idle: usize,
    pub busy: usize,
}

/// Runs `$rule` (an expression that may use `$tx: &impl `[`Conn`]) in one write transaction of `$db` (a
/// [`Database`]): committed when it returns `Ok`, rolled back otherwise. On SQLite the rule runs on the
/// blocking thread holding the writer ([`run_ready`]); on PostgreSQL it awaits each statement on a pooled
/// connection. Evaluates to `Result<T, DbError>`.
#[macro_export]
macro_rules! transaction {
    ($db:expr, |$tx:ident| $rule:expr) => {
        match $db {
            $crate::Database::Sqlite(db) => {
                db.write(move |t| {
                    let $tx = &$crate::SqliteConn(t);
                    $crate::run_ready($crate::rule($rule))
                })
                .await
            }
            $crate::Database::Postgres(pg) => {
                async {
                    let mut client = pg.client().await?;
                    let t = client.transaction().await?;
                    let value = {
                        let $tx = &$crate::postgres::PgConn::Transaction(&t);
                        $crate::rule($rule).await?
                    };
                    t.commit().await?;
                    Ok::<_, $crate::DbError>(value)
                }
                .await
            }
        }
    };
}

/// Like [`transaction!`], for a rule that only reads: on a read-only SQLite connection, or a pooled
/// PostgreSQL connection without a transaction.
///
/// `read!(db, |tx| ...)` is for a bounded read (a few rows, a page): on SQLite it runs on the calling
/// thread (see [`Sqlite::read`]). `read!(unbounded: db, |tx| ...)` is for one that may scan many rows
/// (a backlog of revocations): on SQLite it runs on the blocking pool.
#[macro_export]
macro_rules! read {
    (unbounded: $db:expr, |$tx:ident| $rule:expr) => {
        $crate::read!(@on read_unbounded, $db, |$tx| $rule)
    };
    ($db:expr, |$tx:ident| $rule:expr) => {
        $crate::read!(@on read, $db, |$tx| $rule)
    };
    (@on $read:ident, $db:expr, |$tx:ident| $rule:expr) => {
        match $db {
            $crate::Database::Sqlite(db) => {
                db.$read(move |c| {
                    let $tx = &$crate::SqliteConn(c);
                    $crate::run_ready($crate::rule($rule))
                })
                .await
            }
            $crate::Database::Postgres(pg) => {
                async {
                    let client = pg.client().await?;
                    let $tx = &$crate::postgres::PgConn::Client(&client);
                    $crate::rule($rule).await
                }
                .await
            }
        }
    };
}

/// Pins a rule's error type, which an `async` block cannot declare. For [`transaction!`] and [`read!`].
#[doc(hidden)]
pub fn rule<T, F: Future<Output = Result<T, DbError>>>(rule: F) -> F {
    rule
}

/// A statement parameter: a value both drivers can bind (`i64`, `bool`, `&str`, `String`, `&[u8]`,
/// `Vec<u8>`, and `Option`s of them).
pub trait Param: rusqlite::ToSql + tokio_postgres::types::ToSql + Sync {}
impl<T: rusqlite::ToSql + tokio_postgres::types::ToSql + Sync> Param for T {}

/// A column value both drivers can read (the same types as [`Param`]).
pub trait Value: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a> {}
impl<T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>> Value for T {}

/// A result row of either driver.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0).
    pub fn get<T: Value>(&self, i: usize) -> Result<T, DbError> {
        Ok(match self {
            Self::Sqlite(row) => row.get(i)?,
            Self::Postgres(row) => row.try_get(i)?,
        })
    }
}

/// A connection inside a storage rule. Statements are written once, in SQL both dialects speak, with
/// parameters `$1`, `$2`, ... numbered in the order they first appear (SQLite numbers `$n` parameters by
/// first appearance, PostgreSQL by n: in that order the two agree). What differs is said where it differs:
/// [`Conn::locking`] and [`Conn::lock`] for PostgreSQL's locks, [`Conn::is_postgres`] for the rare statement
/// that has to be written twice.
///
/// A trait rather than an enum so that a rule is compiled once per backend: an SQLite connection cannot
/// leave its thread, and a PostgreSQL rule must be free to.
#[allow(async_fn_in_trait)] // Implemented here, for the two backends only.
pub trait Conn {
    fn is_postgres(&self) -> bool;

    /// Runs a statement; the number of rows it changed.
    async fn exec(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError>;

    /// Every row, mapped.
    async fn all<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError>;

    /// The first row, mapped.
    async fn one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError>;

    /// `clause` (`"FOR UPDATE"`, ...) on PostgreSQL, where a rule that reads in order to write must lock
    /// the rows it read; nothing on SQLite, whose write transaction holds the whole database.
    fn locking(&self, clause: &'static str) -> &'static str {
        if self.is_postgres() { clause } else { "" }
    }

    /// Serialises the transactions that take the lock named `name`, until they end (a PostgreSQL advisory
    /// lock; SQLite's writer is alone anyway).
    async fn lock(&self, name: &str) -> Result<(), DbError> {
        if self.is_postgres() {
            self.exec("SELECT pg_advisory_xact_lock(hashtext($1))", &[&name])
                .await?;
        }
        Ok(())
    }
}

/// An SQLite connection inside a rule: a write transaction, or a read-only connection.
pub struct SqliteConn<'c>(pub &'c Connection);

impl Conn for SqliteConn<'_> {
    fn is_postgres(&self) -> bool {
        false
    }

    async fn exec(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        Ok(self.0.prepare_cached(sql)?.execute(sqlite_params(params))? as u64)
    }

    async fn all<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut map: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let mut rows = statement.query(sqlite_params(params))?;
        let mut mapped = Vec::new();
        while let Some(row) = rows.next()? {
            mapped.push(map(&Row::Sqlite(row))?);
        }
        Ok(mapped)
    }

    async fn one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let mut rows = statement.query(sqlite_params(params))?;
        rows.next()?.map(|row| map(&Row::Sqlite(row))).transpose()
    }
}

fn sqlite_params<'a>(params: &'a [&'a dyn Param]) -> rusqlite::ParamsFromIter<Vec<&'a dyn rusqlite::ToSql>> {
    rusqlite::params_from_iter(
        params
            .iter()
            .map(|p| *p as &dyn rusqlite::ToSql)
            .collect::<Vec<_>>(),
    )
}

pub(crate) fn pg_params<'a>(
    params: &'a [&'a dyn Param],
) -> Vec<&'a (dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| *p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// A handle to one SQLite database. Cheap to clone.
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// Permits are moved into the blocking work they admit, so work whose caller has gone (a cancelled
    /// call) still holds its permit until it has finished: the limits bound the work, not the waiters.
    write_permit: Arc<Semaphore>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Arc<Semaphore>,
}

impl Sqlite {
    /// Opens (creating if needed, private to this user) the database at `path` and applies any
    /// `migrations` not yet applied.
    ///
    /// `migrations[i]` is schema version `i + 1`; the version lives in `PRAGMA user_version`, so the list
    /// is append-only: never edit a migration that has shipped.
    pub async fn open(path: &Path, migrations: &'static [&'static str]) -> Result<Self, DbError> {
        let path = path.to_path_buf();
        blocking(move || {
            create_parent_dir(&path)?;
            create_database_file(&path)?;
            let mut writer = connect(&path, false)?;
            migrate(&mut writer, migrations)?;
            Ok(Self {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(writer),
                    write_permit: Arc::new(Semaphore::new(1)),
                    readers: Mutex::new(Vec::new()),
                    read_permits: Arc::new(Semaphore::new(MAX_READERS)),
                }),
            })
        })
        .await
    }

    /// Runs `f` on a read-only connection, on the calling thread: for reads of a few rows.
    ///
    /// Not on the blocking pool, because for a short read the hop costs more than the read. A ListPosts
    /// page (21 rows) is ~15 µs of SQLite; the hop to a blocking thread and back cost ~17 µs of CPU per
    /// call, 7 futex calls of thread wake-ups, a fifth of the whole call (`bench/profile.sh`,
    /// BENCHMARKS.md "Where ListPosts' time goes"). In WAL mode a reader never waits for the writer, so
    /// what can stall the async thread is a page not in the cache, read from disk. Writes, which wait for
    /// fsync, and [`Self::read_unbounded`] stay on the blocking pool.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&Connection) -> Result<T, E>,
        E: Into<DbError>,
    {
        let permit = self.read_permit().await?;
        // As on the blocking pool, a rule that panics fails its own call, not the connection's task.
        std::panic::catch_unwind(AssertUnwindSafe(|| self.with_reader(permit, f)))
            .map_err(|_| DbError::Worker)?
    }

    /// [`Self::read`] on the blocking pool: for a read that may scan many rows.
    pub async fn read_unbounded<T, E, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        E: Into<DbError>,
        T: Send + 'static,
    {
        let permit = self.read_permit().await?;
        let this = self.clone();
        blocking(move || this.with_reader(permit, f)).await
    }

    async fn read_permit(&self) -> Result<OwnedSemaphorePermit, DbError> {
        Arc::clone(&self.inner.read_permits)
            .acquire_owned()
            .await
            .map_err(|_| DbError::Worker)
    }

    /// Runs `f` on a pooled reader (opened if none is idle), holding `permit` meanwhile.
    fn with_reader<T, E, F>(&self, permit: OwnedSemaphorePermit, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&Connection) -> Result<T, E>,
        E: Into<DbError>,
    {
        let _permit = permit;
        let inner = &self.inner;
        let pooled = inner.readers.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => connect(&inner.path, true)?,
        };
        let result = f(&conn);
        inner
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        result.map_err(Into::into)
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction, committed only if `f` returns `Ok`.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        E: Into<DbError>,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.inner.write_permit)
            .acquire_owned()
            .await
            .map_err(|_| DbError::Worker)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let _permit = permit;
            let mut conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx).map_err(Into::into)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// A cheap query proving the database answers; used by health reporting.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    /// Rewrites the database without free pages (`VACUUM`) and then copies the WAL into it and truncates
    /// it, so that content which was overwritten or deleted is in neither file any more. Holds the writer
    /// throughout; meant for start-up.
    pub async fn vacuum(&self) -> Result<(), DbError> {
        let permit = Arc::clone(&self.inner.write_permit)
            .acquire_owned()
            .await
            .map_err(|_| DbError::Worker)?;
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            let _permit = permit;
            let conn = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            conn.execute_batch("VACUUM")?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// The writer and the readers opened so far: busy while a permit is out (a reader is opened on first
    /// use, so a busy one may still be opening), idle otherwise.
    pub fn connections(&self) -> Connections {
        let inner = &self.inner;
        let writer_busy = usize::from(inner.write_permit.available_permits() == 0);
        let readers_busy = MAX_READERS.saturating_sub(inner.read_permits.available_permits());
        let readers_idle = inner.readers.lock().unwrap_or_else(PoisonError::into_inner).len();
        Connections {
            idle: (1 - writer_busy) + readers_idle,
            busy: writer_busy + readers_busy,
        }
    }
}

/// The output of `future`, which must be ready at once: a rule written as async code (so PostgreSQL can
/// await its statements) that runs on an SQLite connection, whose statements never wait. It runs on the
/// blocking thread holding the connection, inside the transaction.
///
/// # Panics
/// If `future` is not ready on its first poll: that would be a rule awaiting something other than SQLite
/// statements, a bug that must not turn into a hang on a thread holding the writer.
pub fn run_ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an SQLite rule awaited something that was not ready"),
    }
}

/// Microseconds since the Unix epoch: the precision times are stored with.
pub fn to_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The inverse of [`to_micros`]; times before the epoch clamp to it.
pub fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// The current time at storage precision, so what a create call returns equals what a later read returns.
pub fn now() -> SystemTime {
    from_micros(to_micros(SystemTime::now()))
}

/// Creates the database's directory and any missing parents, accessible to this user only: the database
/// holds password hashes and signing keys. A directory that already exists keeps its mode; it is the
/// operator's.
fn create_parent_dir(path: &Path) -> Result<(), DbError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| DbError::Directory {
        path: dir.to_path_buf(),
        source,
    })
}

/// Creates the database file, if it does not exist yet, readable and writable by this user only. SQLite
/// would create it 0644, and it creates the `-wal` and `-shm` files with the database file's mode, so
/// those follow. An existing file is never opened here: closing a descriptor of a database this process
/// has open would drop SQLite's POSIX locks on it.
fn create_database_file(path: &Path) -> Result<(), DbError> {
    match private_file_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DbError::File {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Options that create a file with mode 0600 (before the umask, which can only narrow it).
fn private_file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn connect(path: &Path, read_only: bool) -> Result<Connection, DbError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if !read_only {
        // `journal_mode` is persistent in the file; setting it from the writer is enough.
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), DbError> {
    // IMMEDIATE takes the write lock first, so two processes starting on one file cannot both migrate.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (version, sql) in (1i64..)
        .zip(migrations)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tracing::info!(version, "applied schema migration");
    }
    tx.commit()?;
    Ok(())
}

async fn blocking<T, F>(f: F) -> Result<T, DbError>
where
    F: FnOnce() -> Result<T, DbError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| DbError::Worker)?
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &[
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
        "ALTER TABLE t ADD COLUMN w TEXT",
    ];

    #[test]
    fn an_exclusive_claim_holds_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::Sqlite(dir.path().join("new/a.db"));
        let claim = url.claim_exclusive().unwrap();
        assert!(claim.is_some());
        assert!(matches!(url.claim_exclusive(), Err(DbError::InUse { .. })));
        drop(claim);
        assert!(url.claim_exclusive().expect("free again once dropped").is_some());
        let shared = DatabaseUrl::Postgres("postgres://localhost/db".into());
        assert!(shared.claim_exclusive().unwrap().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_claim_keys_on_the_file_not_on_how_its_path_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let plain = DatabaseUrl::Sqlite(dir.path().join("data/a.db"));
        let _claim = plain.claim_exclusive().unwrap();
        // `<path>.lock` already coincided for spellings that differ only in the directory part; a link to
        // the file itself (or to a directory on the way, then named differently) did not.
        std::os::unix::fs::symlink(dir.path().join("data"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("data/a.db"), dir.path().join("alias.db")).unwrap();
        std::os::unix::fs::symlink("a.db", dir.path().join("data/sub-alias.db")).unwrap();
        for other in ["data/../data/a.db", "link/a.db", "alias.db", "link/sub-alias.db"] {
            let url = DatabaseUrl::Sqlite(dir.path().join(other));
            assert!(
                matches!(url.claim_exclusive(), Err(DbError::InUse { .. })),
                "{other} is the same file and must be refused"
            );
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_private_to_their_owner_in_directories_created_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| format!("{:o}", std::fs::metadata(p).unwrap().permissions().mode() & 0o777);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("new/nested/db.sqlite");
        let url = DatabaseUrl::Sqlite(path.clone());
        let _claim = url.claim_exclusive().unwrap();
        let db = Sqlite::open(&path, MIGRATIONS).await.unwrap();
        db.write(|tx| tx.execute("INSERT INTO t (v) VALUES ('a')", []))
            .await
            .unwrap();

        assert_eq!(
            mode(dir.path()),
            "755",
            "a directory we did not create keeps its mode"
        );
        for created in ["new", "new/nested"] {
            assert_eq!(mode(&dir.path().join(created)), "700", "{created}");
        }
        for file in ["db.sqlite", "db.sqlite-wal", "db.sqlite-shm", "db.sqlite.lock"] {
            assert_eq!(mode(&dir.path().join("new/nested").join(file)), "600", "{file}");
        }

        // Opening without a claim (posts-svc) creates the file private too.
        let other = dir.path().join("other.db");
        drop(Sqlite::open(&other, MIGRATIONS).await.unwrap());
        assert_eq!(mode(&other), "600");
    }

    #[test]
    fn database_url_accepts_sqlite_forms_and_rejects_others() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/a.db").unwrap(),
            DatabaseUrl::Sqlite("data/a.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:/tmp/a.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/a.db".into())
        );
        assert!(DatabaseUrl::parse("mysql://x").is_err());
        let pg = DatabaseUrl::parse("postgres://app:secret@db.example/watchword?sslmode=disable").unwrap();
        assert_eq!(pg.to_string(), "postgres://db.example/watchword");
        assert!(!format!("{pg:?}").contains("secret"));
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn a_postgres_url_is_checked_before_connecting_and_refusals_never_show_its_password() {
        for (url, named) in [
            ("postgres://app:hunter2@db/app?sslmode=verify", "sslmode"),
            (
                "postgres://app:hunter2@db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert",
            ),
            ("postgres://app:hunter2@db/app?port=x", "port"),
            ("mysql://app:hunter2@db/app", "mysql"),
        ] {
            let error = DatabaseUrl::parse(url).unwrap_err().to_string();
            assert!(error.contains(named), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
        let tls = DatabaseUrl::parse("postgres://app:hunter2@db/app?sslmode=require").unwrap();
        assert_eq!(tls.to_string(), "postgres://db/app");
    }

    #[tokio::test]
    async fn migrations_apply_once_and_failed_writes_roll_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/db.sqlite");
        let db = Sqlite::open(&path, MIGRATIONS).await.unwrap();
        db.write(|tx| tx.execute("INSERT INTO t (v, w) VALUES ('a', 'b')", []))
            .await
            .unwrap();
        let failed = db
            .write(|tx| {
                tx.execute("INSERT INTO t (v) VALUES ('half')", [])?;
                tx.execute("INSERT INTO t (v) VALUES (NULL)", [])
            })
            .await;
        assert!(failed.is_err());
        drop(db);

        // Reopening must not re-run migrations (ALTER TABLE would fail) and must keep committed rows only.
        let db = Sqlite::open(&path, MIGRATIONS).await.unwrap();
        let rows: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT v FROM t")?;
                stmt.query_map([], |r| r.get(0))?.collect()
            })
            .await
            .unwrap();
        assert_eq!(rows, ["a"]);
        db.ping().await.unwrap();
    }

    /// A rule that panics fails its own call with `DbError::Worker`, inline or on the blocking pool; its
    /// reader connection is dropped, and the next read opens another.
    #[tokio::test]
    async fn a_read_that_panics_fails_its_call_and_the_readers_keep_serving() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("db.sqlite"), MIGRATIONS)
            .await
            .unwrap();
        let inline: Result<i64, _> = db
            .read(|_| -> rusqlite::Result<i64> { panic!("a rule with a bug") })
            .await;
        assert!(matches!(inline, Err(DbError::Worker)), "{inline:?}");
        let pooled: Result<i64, _> = db
            .read_unbounded(|_| -> rusqlite::Result<i64> { panic!("a rule with a bug") })
            .await;
        assert!(matches!(pooled, Err(DbError::Worker)), "{pooled:?}");
        let count = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |row| row.get::<_, i64>(0)))
            .await
            .unwrap();
        assert_eq!(count, 0);
    }

    /// Work whose caller has gone (a cancelled call) keeps its permit until it has finished: the writer
    /// permit bounds the work actually running, not the callers still waiting.
    #[tokio::test]
    async fn a_write_whose_caller_left_holds_the_writer_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let db = Sqlite::open(&dir.path().join("db.sqlite"), MIGRATIONS)
            .await
            .unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let write = tokio::spawn({
            let (db, started) = (db.clone(), Arc::clone(&started));
            async move {
                db.write(move |tx| {
                    started.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = gate.recv();
                    tx.execute("INSERT INTO t (v) VALUES ('late')", [])
                })
                .await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !started.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        write.abort();
        assert!(write.await.unwrap_err().is_cancelled());
        assert_eq!(
            db.inner.write_permit.available_permits(),
            0,
            "the write still runs"
        );
        release.send(()).unwrap();
        while db.inner.write_permit.available_permits() == 0 {
            assert!(std::time::Instant::now() < deadline, "the permit never came back");
            tokio::task::yield_now().await;
        }
        let rows: i64 = db
            .read(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(rows, 1, "the abandoned write still committed");
    }
}
