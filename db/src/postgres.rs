//! PostgreSQL for deployments that outgrow one machine: several replicas of each service share one database.
//!
//! tokio-postgres with a deadpool pool (sqlx cannot be linked beside rusqlite: both link `sqlite3`).
//! Migrations are embedded like SQLite's, recorded in `schema_migrations`, and applied under a
//! transaction-scoped advisory lock so replicas starting together do not race.

use std::time::Duration;

pub use deadpool_postgres::{Client, Transaction};
use deadpool_postgres::{Manager, Pool, Runtime};
pub use tokio_postgres;
use tokio_postgres::{NoTls, Row};

use crate::{Conn, DbError, Param, pg_params};

mod tls;
pub use tls::SslMode;
pub(crate) use tls::TlsUrl;

/// Pool limits, from the services' `--db-*` flags.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Connections kept at most (per process).
    pub max_connections: usize,
    /// How long a query waits for a free connection, and how long opening one may take, before the call
    /// fails with UNAVAILABLE.
    pub acquire_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A pooled PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connects to `url` (`postgres://user@host/db`; `?options=-csearch_path%3Dname` picks a schema;
    /// `sslmode` and `sslrootcert` as in libpq, see [`tls`]) and applies any `migrations` not yet applied.
    /// `migrations[i]` is version `i + 1`; append only.
    pub async fn connect(url: &str, options: &PoolOptions, migrations: &[&str]) -> Result<Self, DbError> {
        let url = TlsUrl::parse(url)?;
        let mut config = parse_config(&url.rest)?;
        config.connect_timeout(options.acquire_timeout);
        let manager = match url.client_config()? {
            None => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Manager::new(config, NoTls)
            }
            Some(tls) => {
                // tokio-postgres knows only prefer and require; the verify-* modes are in `tls`'s verifier.
                config.ssl_mode(match url.mode {
                    SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                    _ => tokio_postgres::config::SslMode::Require,
                });
                Manager::new(config, tokio_postgres_rustls::MakeRustlsConnect::new(tls))
            }
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.acquire_timeout))
            .recycle_timeout(Some(options.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Config(e.to_string()))?;
        let db = Self { pool };
        db.migrate(migrations).await?;
        Ok(db)
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Client, DbError> {
        self.pool
            .get()
            .await
            .map_err(|e| DbError::Pool(crate::with_causes(&e)))
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The pool's connections: idle ones wait in the pool, busy ones are out with a query.
    pub fn connections(&self) -> crate::Connections {
        let status = self.pool.status();
        crate::Connections {
            idle: status.available,
            busy: status.size.saturating_sub(status.available),
        }
    }

    async fn migrate(&self, migrations: &[&str]) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // One migrator per schema at a time; the lock goes with the transaction.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))", &[])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            .await?;
        let current: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
            .await?
            .get(0);
        for (version, sql) in (1i32..)
            .zip(migrations)
            .skip(usize::try_from(current).unwrap_or(0))
        {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version])
                .await?;
            tracing::info!(version, "applied schema migration");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Checks a `postgres://` URL as far as can be done without connecting: what tokio-postgres would say of it,
/// the TLS parameters, and that an `sslrootcert` file holds certificates.
pub(crate) fn check_url(url: &str) -> Result<(), DbError> {
    parse_config(&TlsUrl::check(url)?.rest).map(drop)
}

fn parse_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.parse()
        .map_err(|e: tokio_postgres::Error| DbError::Config(crate::with_causes(&e)))
}

/// A PostgreSQL connection inside a storage rule (see [`crate::Conn`]): a transaction, or a pooled client
/// for single reads. Statements are prepared once per connection and cached.
pub enum PgConn<'c> {
    Transaction(&'c Transaction<'c>),
    Client(&'c Client),
}

impl PgConn<'_> {
    async fn rows(&self, sql: &str, params: &[&dyn Param]) -> Result<Vec<Row>, DbError> {
        let params = pg_params(params);
        Ok(match self {
            Self::Transaction(t) => t.query(&t.prepare_cached(sql).await?, &params).await?,
            Self::Client(c) => c.query(&c.prepare_cached(sql).await?, &params).await?,
        })
    }
}

impl Conn for PgConn<'_> {
    fn is_postgres(&self) -> bool {
        true
    }

    async fn exec(&self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        let params = pg_params(params);
        Ok(match self {
            Self::Transaction(t) => t.execute(&t.prepare_cached(sql).await?, &params).await?,
            Self::Client(c) => c.execute(&c.prepare_cached(sql).await?, &params).await?,
        })
    }

    async fn all<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut map: impl FnMut(&crate::Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let rows = self.rows(sql, params).await?;
        rows.iter().map(|row| map(&crate::Row::Postgres(row))).collect()
    }

    async fn one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        map: impl FnOnce(&crate::Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        let rows = self.rows(sql, params).await?;
        rows.first()
            .map(|row| map(&crate::Row::Postgres(row)))
            .transpose()
    }
}
