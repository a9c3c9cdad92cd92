//! Everything posts-svc can be told at start-up, folded from flags and env vars into one value.

use std::{net::SocketAddr, time::Duration};

use clap::Parser;
use watchword::guard::Mode;
use watchword_db::DatabaseUrl;

/// Stores posts. Every call must carry `authorization: Bearer <token>`, validated by auth-svc before any
/// handler runs.
#[derive(Debug, Clone, Parser)]
#[command(name = "posts-svc", version)]
pub struct Settings {
    /// Address to serve gRPC on.
    #[arg(long, env = "POSTS_SVC_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// Where posts are stored: `sqlite://PATH` (created on first start).
    #[arg(
        long,
        env = "POSTS_SVC_DATABASE_URL",
        default_value = "sqlite://data/posts.db"
    )]
    pub database_url: DatabaseUrl,

    /// auth-svc's address; every call's token is validated there.
    #[arg(long, env = "POSTS_SVC_AUTH_URL", default_value = "http://127.0.0.1:50051")]
    pub auth_url: String,

    /// How long to wait for auth-svc's verdict (connect included) before failing a call with UNAVAILABLE.
    #[arg(long, env = "POSTS_SVC_AUTH_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub auth_timeout: Duration,

    /// How the guard checks tokens: `remote` asks auth-svc's Validate (cached for --validate-cache-ttl);
    /// `local` verifies signatures with auth-svc's published keys (JWKS). Both honour revocations at once.
    #[arg(long, env = "POSTS_SVC_VERIFY", value_enum, default_value_t = VerifyMode::Remote)]
    pub verify: VerifyMode,

    /// In remote mode, how long a successful validation is reused (never past the token's expiry);
    /// `0` validates every call remotely.
    #[arg(long, env = "POSTS_SVC_VALIDATE_CACHE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub validate_cache_ttl: Duration,

    /// Most validations kept in the cache.
    #[arg(long, env = "POSTS_SVC_VALIDATE_CACHE_SIZE", default_value_t = 100_000)]
    pub validate_cache_size: usize,

    /// In local mode, how often auth-svc's keys (JWKS) are fetched again, replacing the set held (a key
    /// auth-svc stops publishing stops verifying within this), and the shortest time between two fetches
    /// prompted by a token with an unknown key.
    #[arg(long, env = "POSTS_SVC_JWKS_REFETCH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub jwks_refetch_interval: Duration,

    /// PostgreSQL only: connections kept per process.
    #[arg(long, env = "POSTS_SVC_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: usize,

    /// PostgreSQL only: how long a query may wait for a connection (or to open one) before the call fails
    /// with UNAVAILABLE.
    #[arg(long, env = "POSTS_SVC_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,

    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish before the process exits anyway.
    #[arg(long, env = "POSTS_SVC_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// How the guard checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// Ask auth-svc (with the validation cache unless its TTL is 0).
    Remote,
    /// Verify with auth-svc's JWKS.
    Local,
}

impl Settings {
    /// How the guard checks tokens, from `--verify` and the flags of that mode.
    pub fn guard_mode(&self) -> Mode {
        match self.verify {
            // A TTL of 0 caches nothing: the guard then asks auth-svc about every call.
            VerifyMode::Remote => Mode::Cached {
                ttl: self.validate_cache_ttl,
                max_entries: self.validate_cache_size,
            },
            VerifyMode::Local => Mode::Local {
                refetch_interval: self.jwks_refetch_interval,
            },
        }
    }

    /// The PostgreSQL pool limits from the flags.
    pub fn pool_options(&self) -> watchword_db::postgres::PoolOptions {
        watchword_db::postgres::PoolOptions {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
        }
    }

    /// Defaults for everything, with the given storage and auth-svc, listening on an ephemeral port.
    pub fn new(database_url: DatabaseUrl, auth_url: impl Into<String>) -> Self {
        let mut settings = Self::parse_from(["posts-svc"]);
        settings.listen = "127.0.0.1:0".parse().expect("valid socket address");
        settings.database_url = database_url;
        settings.auth_url = auth_url.into();
        settings
    }
}
