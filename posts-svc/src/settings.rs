//! Everything posts-svc can be told at start-up, folded from flags and env vars into one value.

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, time::Duration};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, builder::RangedU64ValueParser};
use watchword::{
    admin::AdminListen,
    flags::{self, duration_within},
    guard::Mode,
    telemetry::{LogFormat, otlp_endpoint},
    transport::{self, ClientTls, ServerTls, TlsError, Transport},
};
use watchword_db::DatabaseUrl;

/// Stores posts. Every call must carry `authorization: Bearer <token>`, validated by auth-svc before any
/// handler runs.
///
/// Every value is checked at start: one out of range is a usage error (exit status 2) naming its flag.
#[derive(Debug, Clone, Parser)]
#[command(name = "posts-svc", version)]
pub struct Settings {
    /// Address to serve gRPC on (port 0: any free port, logged at start).
    #[arg(long, env = "POSTS_SVC_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP server (GET /metrics, /livez, /readyz), or `off` for none (and no
    /// metrics). Port 0: any free port, logged at start.
    #[arg(
        long,
        env = "POSTS_SVC_ADMIN_LISTEN",
        default_value = "127.0.0.1:9052",
        value_name = "ADDR|off"
    )]
    pub admin_listen: AdminListen,

    /// Log lines on stderr as `text` or `json` (one object per line, with trace_id and span_id inside a
    /// trace).
    #[arg(
        long,
        env = "POSTS_SVC_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json"
    )]
    pub log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector, an http:// URL such as http://127.0.0.1:4317;
    /// OTEL_EXPORTER_OTLP_ENDPOINT is used when this is unset. No traces when neither is set.
    #[arg(long, env = "POSTS_SVC_OTLP_ENDPOINT", value_name = "URL", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// Where posts are stored: `sqlite://PATH` (created on first start, private to this user) or
    /// `postgres://...`.
    /// TLS to PostgreSQL as in libpq: `?sslmode=verify-full&sslrootcert=/path/ca.pem`.
    #[arg(long, env = "POSTS_SVC_DATABASE_URL", default_value = "sqlite://data/posts.db",
          value_parser = flags::Unechoed(database_url))]
    pub database_url: DatabaseUrl,

    /// auth-svc's address, where every call's token is validated: an `https://` URL (TLS; see --auth-ca and
    /// --auth-client-cert) or an `http://` one, with a host. Plain `http://` is refused for a host that is
    /// not loopback, unless --allow-insecure-auth-url.
    #[arg(long, env = "POSTS_SVC_AUTH_URL", default_value = "http://127.0.0.1:50051", value_parser = auth_url)]
    pub auth_url: String,

    /// PEM CA certificate(s) that auth-svc's certificate must chain to (an `https://` --auth-url). Without
    /// it, the system's trust anchors.
    #[arg(long, env = "POSTS_SVC_AUTH_CA", value_name = "PATH", value_parser = flags::ca_file)]
    pub auth_ca: Option<PathBuf>,

    /// PEM client certificate to present to auth-svc (mutual TLS), with --auth-client-key. auth-svc needs
    /// one for Validate and WatchRevocations when it has --tls-client-ca. Both files are read again when
    /// they change (checked every 5 s, and on SIGHUP).
    #[arg(long, env = "POSTS_SVC_AUTH_CLIENT_CERT", value_name = "PATH", requires = "auth_client_key",
          value_parser = flags::certificate_file)]
    pub auth_client_cert: Option<PathBuf>,

    /// PEM private key of --auth-client-cert. Must be a file that neither group nor others may access
    /// (`chmod 600`).
    #[arg(long, env = "POSTS_SVC_AUTH_CLIENT_KEY", value_name = "PATH", requires = "auth_client_cert",
          value_parser = flags::private_key_file)]
    pub auth_client_key: Option<PathBuf>,

    /// Accept a plain `http://` --auth-url to a host that is not loopback (whoever answers there decides
    /// which tokens are valid), e.g. through a mesh that adds TLS.
    #[arg(long, env = "POSTS_SVC_ALLOW_INSECURE_AUTH_URL")]
    pub allow_insecure_auth_url: bool,

    /// How long to wait for auth-svc's verdict (connect included) before failing a call with UNAVAILABLE.
    /// Between 50ms and 30s.
    #[arg(long, env = "POSTS_SVC_AUTH_TIMEOUT", default_value = "2s",
          value_parser = |v: &str| duration_within(v, AUTH_TIMEOUT))]
    pub auth_timeout: Duration,

    /// How the guard checks tokens: `remote` asks auth-svc's Validate (cached for --validate-cache-ttl);
    /// `local` verifies signatures with auth-svc's published keys (JWKS). Both honour revocations at once.
    #[arg(long, env = "POSTS_SVC_VERIFY", value_enum, default_value_t = VerifyMode::Remote)]
    pub verify: VerifyMode,

    /// In remote mode, how long a successful validation is reused (never past the token's expiry);
    /// `0` validates every call remotely. Between 0s and 1h.
    #[arg(long, env = "POSTS_SVC_VALIDATE_CACHE_TTL", default_value = "5s",
          value_parser = |v: &str| duration_within(v, VALIDATE_CACHE_TTL))]
    pub validate_cache_ttl: Duration,

    /// Most validations kept in the cache. Between 1 and 10000000.
    #[arg(long, env = "POSTS_SVC_VALIDATE_CACHE_SIZE", default_value_t = 100_000,
          value_parser = RangedU64ValueParser::<usize>::new().range(VALIDATE_CACHE_SIZE))]
    pub validate_cache_size: usize,

    /// In local mode, how often auth-svc's keys (JWKS) are fetched again, replacing the set held (a key
    /// auth-svc stops publishing stops verifying within this), and the shortest time between two fetches
    /// prompted by a token with an unknown key. Between 1s and 1h.
    #[arg(long, env = "POSTS_SVC_JWKS_REFETCH_INTERVAL", default_value = "10s",
          value_parser = |v: &str| duration_within(v, JWKS_REFETCH_INTERVAL))]
    pub jwks_refetch_interval: Duration,

    /// PostgreSQL only: connections kept per process. Between 1 and 1000.
    #[arg(long, env = "POSTS_SVC_DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = RangedU64ValueParser::<usize>::new().range(flags::DB_MAX_CONNECTIONS))]
    pub db_max_connections: usize,

    /// PostgreSQL only: how long a query may wait for a connection (or to open one) before the call fails
    /// with UNAVAILABLE. Between 100ms and 30s.
    #[arg(long, env = "POSTS_SVC_DB_ACQUIRE_TIMEOUT", default_value = "5s",
          value_parser = |v: &str| duration_within(v, flags::DB_ACQUIRE_TIMEOUT))]
    pub db_acquire_timeout: Duration,

    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish before the process exits anyway.
    /// Between 100ms and 10m.
    #[arg(long, env = "POSTS_SVC_SHUTDOWN_GRACE", default_value = "10s",
          value_parser = |v: &str| duration_within(v, flags::SHUTDOWN_GRACE))]
    pub shutdown_grace: Duration,

    /// PEM certificate (chain) to serve TLS with, with --tls-key: the port then speaks only TLS 1.2 and
    /// 1.3 (ALPN h2). Both files are read again when they change (checked every 5 s, and on SIGHUP).
    #[arg(long, env = "POSTS_SVC_TLS_CERT", value_name = "PATH", requires = "tls_key",
          value_parser = flags::certificate_file)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Must be a file that neither group nor others may access
    /// (`chmod 600`).
    #[arg(long, env = "POSTS_SVC_TLS_KEY", value_name = "PATH", requires = "tls_cert",
          value_parser = flags::private_key_file)]
    pub tls_key: Option<PathBuf>,

    /// A TLS handshake not finished within this is dropped. Between 100ms and 1m.
    #[arg(long, env = "POSTS_SVC_TLS_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = |v: &str| duration_within(v, transport::TLS_HANDSHAKE_TIMEOUT))]
    pub tls_handshake_timeout: Duration,

    /// Most connections open at once (TLS or not, handshakes included); more are closed as they arrive.
    /// Between 1 and 1000000.
    #[arg(long, env = "POSTS_SVC_MAX_CONNECTIONS", default_value_t = transport::DEFAULT_MAX_CONNECTIONS,
          value_parser = RangedU64ValueParser::<usize>::new().range(transport::MAX_CONNECTIONS))]
    pub max_connections: usize,

    /// A connection this old is asked to go away (HTTP/2 GOAWAY; calls in flight finish, within 30 s) and
    /// its client reconnects, perhaps to another replica. Between 10s and 30days.
    #[arg(long, env = "POSTS_SVC_MAX_CONNECTION_AGE", default_value = "30m",
          value_parser = |v: &str| duration_within(v, transport::MAX_CONNECTION_AGE))]
    pub max_connection_age: Duration,

    /// Serve plaintext on an address that is not loopback, e.g. behind a TLS-terminating sidecar or mesh.
    /// Without it (or --tls-cert), such a --listen is refused.
    #[arg(long, env = "POSTS_SVC_INSECURE_LISTEN")]
    pub insecure_listen: bool,

    /// Origins whose pages may call this port from a browser (gRPC-Web), such as https://app.example.com,
    /// comma-separated. None by default: same-origin pages only.
    #[arg(
        long,
        env = "POSTS_SVC_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGIN[,ORIGIN...]",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<watchword::web::Origin>,
}

/// A verdict slower than a call may live (30 s) is no verdict; below 50 ms even a healthy auth-svc on
/// another machine would be refused.
const AUTH_TIMEOUT: RangeInclusive<Duration> = Duration::from_millis(50)..=Duration::from_secs(30);
/// `0` turns the cache off. Cached verdicts are trusted only while the revocation stream is live, but an
/// hour is already longer than any access token should live.
const VALIDATE_CACHE_TTL: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(3600);
/// At least one entry; ten million is gigabytes of memory already.
const VALIDATE_CACHE_SIZE: RangeInclusive<u64> = 1..=10_000_000;
/// Each unknown `kid` may prompt a fetch from auth-svc this often: below a second, forged tokens would
/// drive a fetch flood; above an hour, a key rotation stays unknown too long.
const JWKS_REFETCH_INTERVAL: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);

/// The guard connects to auth-svc lazily, so a URL it cannot use would otherwise show only as every call
/// failing: check here what it will parse, and that it names a host.
fn auth_url(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be an https:// or http:// URL with a host, e.g. https://auth.internal:50051 or http://127.0.0.1:50051";
    let endpoint = tonic::transport::Endpoint::from_shared(value.to_owned()).map_err(|_| EXPECTED)?;
    let uri = endpoint.uri();
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none_or(str::is_empty) {
        return Err(EXPECTED.to_owned());
    }
    Ok(value.to_owned())
}

/// Whether `--auth-url` is `https://` (the parser has checked it is one or `http://`).
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// The host of a URL `auth_url` accepted.
fn host(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned))
        .unwrap_or_default()
}

/// How the guard checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyMode {
    /// Ask auth-svc (with the validation cache unless its TTL is 0).
    Remote,
    /// Verify with auth-svc's JWKS.
    Local,
}

/// `--database-url`, checked as far as it can be without connecting (see [`DatabaseUrl::parse`]).
fn database_url(value: &str) -> Result<DatabaseUrl, String> {
    DatabaseUrl::parse(value).map_err(|e| e.to_string())
}

impl Settings {
    /// Every flag's default, exactly as the binary would have them without arguments, but never taken
    /// from the environment: a developer's exported `POSTS_SVC_*` variables must not leak into tests or
    /// embedders. Each default is written once, in its `#[arg]` attribute.
    fn defaults() -> Self {
        Self::parse_without_env(["posts-svc"]).expect("the defaults are valid values")
    }

    /// Parses `args` (the first is the program name) as the binary would, with the same checks, but
    /// ignoring the environment.
    fn parse_without_env<const N: usize>(args: [&str; N]) -> Result<Self, clap::Error> {
        // Building the command reads each `env` variable; dropping every `env` before matching means none
        // of what was read is used.
        let matches = Self::command()
            .mut_args(|arg| arg.env(None::<&'static str>))
            .try_get_matches_from(args)?;
        Self::from_arg_matches(&matches)?.checked()
    }

    /// The settings from the command line and the environment, as the binary takes them: a value out of
    /// range, or flags that cannot be served together, end the process with a usage error (exit status 2).
    pub fn from_command_line() -> Self {
        match Self::parse().checked() {
            Ok(settings) => settings,
            Err(error) => error.exit(),
        }
    }

    /// Checks what no single flag's parser can: plaintext off loopback (served, or to auth-svc), TLS files
    /// that are no pair, TLS options for a plaintext auth-svc URL.
    fn checked(self) -> Result<Self, clap::Error> {
        let usage =
            |message: String| Self::command().error(clap::error::ErrorKind::ArgumentConflict, message);
        transport::check_listen(self.listen, self.tls_cert.is_some(), self.insecure_listen)
            .map_err(|message| usage(format!("--listen: {message}")))?;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            transport::tls::check_key_pair(cert, key)
                .map_err(|error| usage(format!("--tls-cert, --tls-key: {error}")))?;
        }
        if let (Some(cert), Some(key)) = (&self.auth_client_cert, &self.auth_client_key) {
            transport::tls::check_key_pair(cert, key)
                .map_err(|error| usage(format!("--auth-client-cert, --auth-client-key: {error}")))?;
        }
        if !is_https(&self.auth_url) {
            if self.auth_ca.is_some() || self.auth_client_cert.is_some() {
                return Err(usage(
                    "--auth-ca and --auth-client-cert need an https:// --auth-url".to_owned(),
                ));
            }
            let host = host(&self.auth_url);
            if !self.allow_insecure_auth_url && !transport::is_loopback_host(&host) {
                return Err(usage(format!(
                    "--auth-url: refusing plaintext http:// to {host}, which is not loopback: whoever answers \
                     there decides which tokens are valid. Use https:// (with --auth-ca and \
                     --auth-client-cert), or --allow-insecure-auth-url if a mesh adds TLS"
                )));
            }
        }
        Ok(self)
    }

    /// How the port is served, from the TLS and connection flags; loads the certificate and starts
    /// watching it. Must be called within a Tokio runtime.
    pub fn transport(&self) -> Result<Transport, TlsError> {
        let transport = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Transport::tls(ServerTls::from_files(cert, key, None)?),
            _ => Transport::plaintext(),
        };
        Ok(transport
            .handshake_timeout(self.tls_handshake_timeout)
            .max_connections(self.max_connections)
            .max_connection_age(self.max_connection_age))
    }

    /// TLS to auth-svc for an `https://` --auth-url: --auth-ca (or the system's roots) and the client
    /// certificate, watched for changes. `None` for `http://`. Must be called within a Tokio runtime.
    pub fn auth_tls(&self) -> Result<Option<ClientTls>, TlsError> {
        if !is_https(&self.auth_url) {
            return Ok(None);
        }
        let mut tls = ClientTls::builder();
        if let Some(ca) = &self.auth_ca {
            tls = tls.ca_file(ca);
        }
        if let (Some(cert), Some(key)) = (&self.auth_client_cert, &self.auth_client_key) {
            tls = tls.identity_files(cert, key);
        }
        tls.build().map(Some)
    }

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
        let mut settings = Self::defaults();
        settings.listen = "127.0.0.1:0".parse().expect("valid socket address");
        // Tests run many servers at once: a fixed admin port would collide.
        settings.admin_listen = AdminListen::At(settings.listen);
        settings.database_url = database_url;
        settings.auth_url = auth_url.into();
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn each_flag_accepts_the_ends_of_its_range_and_nothing_past_them() {
        let inside = [
            ["--auth-url", "https://auth.internal:50051"],
            ["--auth-url", "http://[::1]:50051"],
            ["--auth-url", "http://localhost:50051"],
            ["--auth-timeout", "50ms"],
            ["--auth-timeout", "30s"],
            ["--verify", "local"],
            ["--validate-cache-ttl", "0"],
            ["--validate-cache-ttl", "1h"],
            ["--validate-cache-size", "1"],
            ["--validate-cache-size", "10000000"],
            ["--jwks-refetch-interval", "1s"],
            ["--jwks-refetch-interval", "1h"],
            ["--db-max-connections", "1"],
            ["--db-max-connections", "1000"],
            ["--db-acquire-timeout", "100ms"],
            ["--db-acquire-timeout", "30s"],
            ["--shutdown-grace", "100ms"],
            ["--shutdown-grace", "10m"],
            ["--tls-handshake-timeout", "100ms"],
            ["--tls-handshake-timeout", "1m"],
            ["--max-connections", "1"],
            ["--max-connections", "1000000"],
            ["--max-connection-age", "10s"],
            ["--max-connection-age", "30days"],
            ["--admin-listen", "off"],
            ["--admin-listen", "127.0.0.1:0"],
            ["--log-format", "json"],
            ["--otlp-endpoint", "http://collector.internal:4317"],
        ];
        let outside = [
            ["--auth-url", "http://"],
            ["--auth-url", "ftp://auth.internal:50051"],
            ["--auth-timeout", "49ms"],
            ["--auth-timeout", "31s"],
            ["--validate-cache-ttl", "1h 1s"],
            ["--validate-cache-size", "10000001"],
            ["--jwks-refetch-interval", "999ms"],
            ["--jwks-refetch-interval", "61m"],
            ["--db-max-connections", "1001"],
            ["--db-acquire-timeout", "99ms"],
            ["--db-acquire-timeout", "31s"],
            ["--shutdown-grace", "99ms"],
            ["--shutdown-grace", "11m"],
            ["--tls-handshake-timeout", "99ms"],
            ["--tls-handshake-timeout", "61s"],
            ["--max-connections", "0"],
            ["--max-connections", "1000001"],
            ["--max-connection-age", "9s"],
            ["--max-connection-age", "31days"],
            ["--tls-cert", "/nonexistent/cert.pem"],
            ["--tls-key", "/nonexistent/key.pem"],
            ["--auth-ca", "/nonexistent/ca.pem"],
            ["--auth-client-cert", "/nonexistent/cert.pem"],
            ["--auth-client-key", "/nonexistent/key.pem"],
            ["--admin-listen", "localhost"],
            ["--log-format", "logfmt"],
            ["--otlp-endpoint", "grpc://collector:4317"],
        ];
        for [flag, value] in inside {
            let parsed = Settings::parse_without_env(["posts-svc", flag, value]);
            assert!(parsed.is_ok(), "{flag} {value}: {parsed:?}");
        }
        for [flag, value] in outside {
            let error = Settings::parse_without_env(["posts-svc", flag, value]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {value}"
            );
            assert!(error.to_string().contains(flag), "{error}");
        }
    }

    #[test]
    fn tls_files_and_auth_urls_are_checked_together() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let ca = watchword::transport::tls::dev::Ca::new("test CA").unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
        ca.issue(&["posts-svc"]).unwrap().write(&cert, &key).unwrap();
        let (ca_path, cert, key) = (
            ca_path.to_str().unwrap(),
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        );
        let parse = |args: &[&str]| {
            let mut all = vec!["posts-svc"];
            all.extend_from_slice(args);
            let matches = Settings::command()
                .mut_args(|arg| arg.env(None::<&'static str>))
                .try_get_matches_from(all)?;
            Settings::from_arg_matches(&matches)?.checked()
        };
        let https = ["--auth-url", "https://auth.internal:50051", "--auth-ca", ca_path];
        let mutual = [
            &https[..],
            &["--auth-client-cert", cert, "--auth-client-key", key],
        ]
        .concat();
        assert!(parse(&https).is_ok());
        assert!(parse(&mutual).is_ok());
        let error = parse(&["--auth-url", "http://127.0.0.1:1", "--auth-ca", ca_path]).unwrap_err();
        assert!(error.to_string().contains("need an https://"), "{error}");
        assert_eq!(error.exit_code(), 2);
        let error = parse(&["--auth-url", "http://auth.internal:50051"]).unwrap_err();
        assert!(error.to_string().contains("--allow-insecure-auth-url"), "{error}");
        assert!(
            parse(&[
                "--auth-url",
                "http://auth.internal:50051",
                "--allow-insecure-auth-url"
            ])
            .is_ok()
        );
        let error = parse(&["--auth-url", "https://a:1", "--auth-client-cert", cert]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument,
            "{error}"
        );

        // A client key others may read is refused, naming the flag and the fix.
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = parse(&mutual).unwrap_err().to_string();
        assert!(
            error.contains("--auth-client-key") && error.contains("chmod 600"),
            "{error}"
        );
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();

        // A certificate with another's key is no pair.
        let (other_cert, other_key) = (dir.path().join("o.pem"), dir.path().join("o.key"));
        ca.issue(&["other"])
            .unwrap()
            .write(&other_cert, &other_key)
            .unwrap();
        let error = parse(&["--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()]).unwrap_err();
        assert!(error.to_string().contains("--tls-cert, --tls-key"), "{error}");
        assert!(parse(&["--tls-cert", cert, "--tls-key", key, "--listen", "0.0.0.0:0"]).is_ok());
    }

    /// The flags' defaults are the library's (`Transport::plaintext`), so a service and an embedder of
    /// `watchword::transport` get the same limits.
    #[test]
    fn connection_flag_defaults_are_the_transport_defaults() {
        let settings = Settings::defaults();
        assert_eq!(
            settings.tls_handshake_timeout,
            transport::DEFAULT_TLS_HANDSHAKE_TIMEOUT
        );
        assert_eq!(settings.max_connections, transport::DEFAULT_MAX_CONNECTIONS);
        assert_eq!(settings.max_connection_age, transport::DEFAULT_MAX_CONNECTION_AGE);
        assert!(settings.tls_cert.is_none() && !settings.insecure_listen);
    }

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
