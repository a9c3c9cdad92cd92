//! Everything auth-svc can be told at start-up. Flags and env vars fold into one [`Settings`] value that is
//! passed in; nothing reads the environment later. Tests build `Settings` directly.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use watchword_db::DatabaseUrl;

/// Registers users, logs them in and issues EdDSA-signed access tokens (JWTs); validates them for
/// other services.
#[derive(Debug, Clone, Parser)]
#[command(name = "auth-svc", version)]
pub struct Settings {
    /// Address to serve gRPC on.
    #[arg(long, env = "AUTH_SVC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Where users and signing keys are stored: `sqlite://PATH` (created on first start).
    #[arg(long, env = "AUTH_SVC_DATABASE_URL", default_value = "sqlite://data/auth.db")]
    pub database_url: DatabaseUrl,

    /// Lifetime of access tokens, e.g. `15m`, `90s`. At most 24h: access tokens are meant to be short-lived.
    #[arg(long, env = "AUTH_SVC_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_ttl)]
    pub access_token_ttl: Duration,

    /// Lifetime of a refresh token: a session ends if it goes unused this long, e.g. `30days`, `12h`.
    #[arg(long, env = "AUTH_SVC_REFRESH_TOKEN_TTL", default_value = "30days", value_parser = humantime::parse_duration)]
    pub refresh_token_ttl: Duration,

    /// How long after a refresh token is rotated a repeat of the same Refresh still gets the same new
    /// token instead of being treated as theft (which ends the session).
    #[arg(long, env = "AUTH_SVC_REFRESH_REUSE_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub refresh_reuse_grace: Duration,

    /// Value of the `iss` claim in issued tokens; Validate accepts only this issuer.
    #[arg(long, env = "AUTH_SVC_ISSUER", default_value = "watchword-auth")]
    pub issuer: String,

    /// Value of the `aud` claim in issued tokens; Validate accepts only this audience.
    #[arg(long, env = "AUTH_SVC_AUDIENCE", default_value = "watchword")]
    pub audience: String,

    /// PEM file (PKCS#8) with the Ed25519 signing key. Without it a key is generated on first start and
    /// kept in the database, so tokens stay valid across restarts.
    #[arg(long, env = "AUTH_SVC_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,

    /// Shortest password accepted at registration, in bytes (NIST 800-63B suggests at least 8; we default to 12).
    #[arg(long, env = "AUTH_SVC_MIN_PASSWORD_LENGTH", default_value_t = 12,
          value_parser = clap::value_parser!(u16).range(8..=128))]
    pub min_password_length: u16,

    /// Failed logins in a row after which an account is locked, with a lock that doubles from 30 s (up to
    /// 15 min) on each further failure. Unknown usernames are counted exactly like real ones.
    #[arg(long, env = "AUTH_SVC_LOCKOUT_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub lockout_threshold: u32,

    /// Login and Register calls per second allowed from one peer address (token bucket); 0 turns the
    /// per-address limit off (e.g. behind a load balancer, where every peer is the balancer).
    #[arg(long, env = "AUTH_SVC_PEER_RATE", default_value_t = 5.0)]
    pub peer_rate: f64,

    /// Burst of Login and Register calls allowed from one peer address before the rate applies.
    #[arg(long, env = "AUTH_SVC_PEER_BURST", default_value_t = 30)]
    pub peer_burst: u32,

    /// Create (or promote) USERNAME as an admin, then exit instead of serving. The password is read from
    /// the AUTH_SVC_BOOTSTRAP_PASSWORD environment variable, or else from the first line of standard input;
    /// never from a flag, so it stays out of shell history and process listings.
    #[arg(long, value_name = "USERNAME")]
    pub bootstrap_admin: Option<String>,

    /// PostgreSQL only: connections kept per process.
    #[arg(long, env = "AUTH_SVC_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: usize,

    /// PostgreSQL only: how long a query may wait for a connection (or to open one) before the call fails
    /// with UNAVAILABLE.
    #[arg(long, env = "AUTH_SVC_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,

    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish before the process exits anyway.
    #[arg(long, env = "AUTH_SVC_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(24 * 3600) {
        return Err("must be between 1s and 24h".into());
    }
    Ok(ttl)
}

impl Settings {
    /// Every flag's default, exactly as the binary would have them without arguments, but never taken
    /// from the environment: a developer's exported `AUTH_SVC_*` variables must not leak into tests or
    /// embedders. Each default is written once, in its `#[arg]` attribute.
    fn defaults() -> Self {
        // Building the command reads each `env` variable; dropping every `env` before matching means none
        // of what was read is used.
        let matches = Self::command()
            .mut_args(|arg| arg.env(None::<&'static str>))
            .try_get_matches_from(["auth-svc"])
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

    /// Defaults for everything, storing data in `database_url` and listening on an ephemeral port:
    /// a starting point for tests and embedding.
    pub fn for_database(database_url: DatabaseUrl) -> Self {
        let mut settings = Self::defaults();
        settings.listen = "127.0.0.1:0".parse().expect("valid socket address");
        settings.database_url = database_url;
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Set in the child process that [`for_database_never_reads_the_environment`] starts.
    const CHILD: &str = "WATCHWORD_SETTINGS_TEST_CHILD";

    /// Runs this very test again in a child process (the test process's own environment is never
    /// touched), once with every `AUTH_SVC_*` variable of the flags removed and once with each set to
    /// `bogus`: the settings must come out the same.
    #[test]
    fn for_database_never_reads_the_environment() {
        let settings = Settings::for_database(DatabaseUrl::Sqlite("t.db".into()));
        if std::env::var_os(CHILD).is_some() {
            println!("settings={settings:?}");
            return;
        }
        let test = concat!(module_path!(), "::for_database_never_reads_the_environment");
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
