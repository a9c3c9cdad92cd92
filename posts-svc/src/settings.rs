//! Everything posts-svc can be told at start-up, folded from flags and env vars into one value.

use std::{net::SocketAddr, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
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

    /// In local mode, the shortest time between two JWKS fetches prompted by a token with an unknown key.
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
    /// Every flag's default, exactly as the binary would have them without arguments, but never taken
    /// from the environment: a developer's exported `POSTS_SVC_*` variables must not leak into tests or
    /// embedders. Each default is written once, in its `#[arg]` attribute.
    fn defaults() -> Self {
        // Building the command reads each `env` variable; dropping every `env` before matching means none
        // of what was read is used.
        let matches = Self::command()
            .mut_args(|arg| arg.env(None::<&'static str>))
            .try_get_matches_from(["posts-svc"])
            .expect("the defaults parse: no argument is required");
        Self::from_arg_matches(&matches).expect("the defaults are valid values")
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
        let mut settings = Self::defaults();
        settings.listen = "127.0.0.1:0".parse().expect("valid socket address");
        settings.database_url = database_url;
        settings.auth_url = auth_url.into();
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Set in the child process that [`new_never_reads_the_environment`] starts.
    const CHILD: &str = "WATCHWORD_SETTINGS_TEST_CHILD";

    /// Runs this very test again in a child process (the test process's own environment is never
    /// touched), once with every `POSTS_SVC_*` variable of the flags removed and once with each set to
    /// `bogus`: the settings must come out the same.
    #[test]
    fn new_never_reads_the_environment() {
        let settings = Settings::new(DatabaseUrl::Sqlite("t.db".into()), "http://127.0.0.1:1");
        if std::env::var_os(CHILD).is_some() {
            println!("settings={settings:?}");
            return;
        }
        let test = concat!(module_path!(), "::new_never_reads_the_environment");
        let test = test.split_once("::").map_or(test, |(_crate, path)| path);
        let run = |value: Option<&str>| {
            let mut child = Command::new(std::env::current_exe().unwrap());
            child.args(["--exact", test, "--nocapture"]).env(CHILD, "1");
            for var in Settings::command()
                .get_arguments()
                .filter_map(|arg| arg.get_env())
            {
                match value {
                    Some(value) => child.env(var, value),
                    None => child.env_remove(var),
                };
            }
            let output = child.output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "{:?}\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            stdout
                .lines()
                .find_map(|line| line.strip_prefix("settings=").map(str::to_owned))
                .unwrap_or_else(|| panic!("no settings in {stdout}"))
        };
        assert_eq!(run(Some("bogus")), run(None));
    }
}
