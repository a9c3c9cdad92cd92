//! Everything auth-svc can be told at start-up. Flags and env vars fold into one [`Settings`] value that is
//! passed in; nothing reads the environment later. Tests build `Settings` directly.

use std::{
    io::Read as _,
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{CommandFactory as _, FromArgMatches as _, Parser, builder::RangedU64ValueParser};
use watchword::{
    admin::AdminListen,
    flags::{self, duration_within},
    telemetry::{LogFormat, otlp_endpoint},
    transport::{self, ServerTls, TlsError, Transport, open_private},
};
use watchword_db::DatabaseUrl;

/// Registers users, logs them in and issues EdDSA-signed access tokens (JWTs); validates them for
/// other services.
///
/// Every value is checked at start: one out of range is a usage error (exit status 2) naming its flag.
#[derive(Debug, Clone, Parser)]
#[command(name = "auth-svc", version)]
pub struct Settings {
    /// Address to serve gRPC on (port 0: any free port, logged at start).
    #[arg(long, env = "AUTH_SVC_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP server (GET /metrics, /livez, /readyz), or `off` for none (and no
    /// metrics). Port 0: any free port, logged at start.
    #[arg(
        long,
        env = "AUTH_SVC_ADMIN_LISTEN",
        default_value = "127.0.0.1:9051",
        value_name = "ADDR|off"
    )]
    pub admin_listen: AdminListen,

    /// Log lines on stderr as `text` or `json` (one object per line, with trace_id and span_id inside a
    /// trace).
    #[arg(
        long,
        env = "AUTH_SVC_LOG_FORMAT",
        default_value = "text",
        value_name = "text|json"
    )]
    pub log_format: LogFormat,

    /// Export traces over OTLP/gRPC to this collector, an http:// URL such as http://127.0.0.1:4317;
    /// OTEL_EXPORTER_OTLP_ENDPOINT is used when this is unset. No traces when neither is set.
    #[arg(long, env = "AUTH_SVC_OTLP_ENDPOINT", value_name = "URL", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// Where users and signing keys are stored: `sqlite://PATH` (created on first start, private to this
    /// user) or `postgres://...`.
    /// TLS to PostgreSQL as in libpq: `?sslmode=verify-full&sslrootcert=/path/ca.pem`.
    #[arg(long, env = "AUTH_SVC_DATABASE_URL", default_value = "sqlite://data/auth.db",
          value_parser = flags::Unechoed(database_url))]
    pub database_url: DatabaseUrl,

    /// Lifetime of access tokens, e.g. `15m`, `90s`. Between 1s and 24h: access tokens are meant to be
    /// short-lived.
    #[arg(long, env = "AUTH_SVC_ACCESS_TOKEN_TTL", default_value = "15m",
          value_parser = |v: &str| duration_within(v, ACCESS_TOKEN_TTL))]
    pub access_token_ttl: Duration,

    /// Lifetime of a refresh token: a session ends if it goes unused this long, e.g. `30days`, `12h`.
    /// Between 1m and 365days.
    #[arg(long, env = "AUTH_SVC_REFRESH_TOKEN_TTL", default_value = "30days",
          value_parser = |v: &str| duration_within(v, REFRESH_TOKEN_TTL))]
    pub refresh_token_ttl: Duration,

    /// How long after a refresh token is rotated a repeat of the same Refresh still gets the same new
    /// token instead of being treated as theft (which ends the session). Between 0s (every repeat is
    /// theft) and 1m.
    #[arg(long, env = "AUTH_SVC_REFRESH_REUSE_GRACE", default_value = "5s",
          value_parser = |v: &str| duration_within(v, REFRESH_REUSE_GRACE))]
    pub refresh_reuse_grace: Duration,

    /// How long RotateSigningKey publishes a new key before it signs, so that verifiers caching the key
    /// set (a gateway's JWKS cache) learn it first. The JWKS documents' `max-age` is half of it. Between 2s
    /// and 30days.
    #[arg(long, env = "AUTH_SVC_KEY_PUBLISH_LEAD", default_value = "10m",
          value_parser = |v: &str| duration_within(v, KEY_PUBLISH_LEAD))]
    pub key_publish_lead: Duration,

    /// Value of the `iss` claim in issued tokens; Validate accepts only this issuer. 1 to 256 bytes, no
    /// control characters.
    #[arg(long, env = "AUTH_SVC_ISSUER", default_value = "watchword-auth", value_parser = claim_value)]
    pub issuer: String,

    /// Value of the `aud` claim in issued tokens; Validate accepts only this audience. 1 to 256 bytes,
    /// no control characters.
    #[arg(long, env = "AUTH_SVC_AUDIENCE", default_value = "watchword", value_parser = claim_value)]
    pub audience: String,

    /// The URL clients reach this service at (`https://auth.example.com`): the base of `jwks_uri` in
    /// `/.well-known/openid-configuration`. Without it, the scheme and host each request was made to.
    #[arg(long, env = "AUTH_SVC_PUBLIC_URL", value_name = "URL", value_parser = public_url)]
    pub public_url: Option<String>,

    /// PEM file (PKCS#8) with the Ed25519 signing key. Without it a key is generated on first start and
    /// kept in the database, so tokens stay valid across restarts. Must be a file that neither group nor
    /// others may access (`chmod 600`).
    #[arg(long, env = "AUTH_SVC_SIGNING_KEY_FILE", value_parser = private_key_file)]
    pub signing_key_file: Option<PathBuf>,

    /// File with the key-encryption key: 32 random bytes in base64 (make one with
    /// `head -c 32 /dev/urandom | base64 > kek && chmod 600 kek`). With it, the private signing keys and the
    /// refresh-token pepper are stored sealed with it (XChaCha20-Poly1305), so a copy of the database alone
    /// yields no key; keys stored unsealed are sealed at start. Without it they are stored unsealed (a
    /// warning at start). Must be a file that neither group nor others may access (`chmod 600`).
    #[arg(long, env = "AUTH_SVC_KEY_ENCRYPTION_KEY_FILE", value_parser = key_encryption_key_file)]
    pub key_encryption_key_file: Option<PathBuf>,

    /// Shortest password accepted at registration, in bytes (NIST 800-63B suggests at least 8; we default to 12).
    /// Between 8 and 128.
    #[arg(long, env = "AUTH_SVC_MIN_PASSWORD_LENGTH", default_value_t = 12,
          value_parser = clap::value_parser!(u16).range(8..=128))]
    pub min_password_length: u16,

    /// Failed logins in a row after which an account is locked, with a lock that doubles from 30 s (up to
    /// 15 min) on each further failure. Unknown usernames are counted exactly like real ones. Between 1
    /// and 1000000.
    #[arg(long, env = "AUTH_SVC_LOCKOUT_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(LOCKOUT_THRESHOLD))]
    pub lockout_threshold: u32,

    /// Login and Register calls per second allowed from one peer address (token bucket); 0 turns the
    /// per-address limit off (e.g. behind a load balancer, where every peer is the balancer). 0, or
    /// between 0.01 and 10000.
    #[arg(long, env = "AUTH_SVC_PEER_RATE", default_value_t = 5.0, value_parser = peer_rate,
          allow_negative_numbers = true)]
    pub peer_rate: f64,

    /// Burst of Login and Register calls allowed from one peer address before the rate applies. Between
    /// 1 and 10000.
    #[arg(long, env = "AUTH_SVC_PEER_BURST", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(PEER_BURST))]
    pub peer_burst: u32,

    /// Load balancers or proxies (CIDR ranges, comma-separated) whose `x-forwarded-for` names the client
    /// for the per-address limit. A peer outside these ranges is the client, whatever it sends.
    #[arg(
        long,
        env = "AUTH_SVC_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR[,CIDR...]"
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Most WatchRevocations streams served at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "AUTH_SVC_MAX_REVOCATION_SUBSCRIBERS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_revocation_subscribers: u32,

    /// The role of a new registration: `user` (may read and write), or `guest` (may only read, until an
    /// admin promotes the account with SetUserRoles).
    #[arg(long, env = "AUTH_SVC_DEFAULT_ROLE", value_enum, default_value_t = DefaultRole::User)]
    pub default_role: DefaultRole,

    /// Longest lifetime an API key may be given (CreateApiKey's `ttl`; a key without one lives 365 days,
    /// or this long if that is shorter). Between 1h and 3650days.
    #[arg(long, env = "AUTH_SVC_API_KEY_MAX_TTL", default_value = "365days",
          value_parser = |v: &str| duration_within(v, API_KEY_MAX_TTL))]
    pub api_key_max_ttl: Duration,

    /// How long audit events are kept (ListAuditEvents); older ones are deleted. Between 1day and
    /// 3650days.
    #[arg(long, env = "AUTH_SVC_AUDIT_RETENTION", default_value = "90days",
          value_parser = |v: &str| duration_within(v, AUDIT_RETENTION))]
    pub audit_retention: Duration,

    /// Create (or promote) USERNAME as an admin, then exit instead of serving. The password is read from
    /// the AUTH_SVC_BOOTSTRAP_PASSWORD environment variable, or else from the first line of standard input;
    /// never from a flag, so it stays out of shell history and process listings.
    #[arg(long, value_name = "USERNAME")]
    pub bootstrap_admin: Option<String>,

    /// PostgreSQL only: connections kept per process. Between 1 and 1000.
    #[arg(long, env = "AUTH_SVC_DB_MAX_CONNECTIONS", default_value_t = 16,
          value_parser = RangedU64ValueParser::<usize>::new().range(flags::DB_MAX_CONNECTIONS))]
    pub db_max_connections: usize,

    /// PostgreSQL only: how long a query may wait for a connection (or to open one) before the call fails
    /// with UNAVAILABLE. Between 100ms and 30s.
    #[arg(long, env = "AUTH_SVC_DB_ACQUIRE_TIMEOUT", default_value = "5s",
          value_parser = |v: &str| duration_within(v, flags::DB_ACQUIRE_TIMEOUT))]
    pub db_acquire_timeout: Duration,

    /// On SIGINT/SIGTERM, how long in-flight calls may take to finish before the process exits anyway.
    /// Between 100ms and 10m.
    #[arg(long, env = "AUTH_SVC_SHUTDOWN_GRACE", default_value = "10s",
          value_parser = |v: &str| duration_within(v, flags::SHUTDOWN_GRACE))]
    pub shutdown_grace: Duration,

    /// PEM certificate (chain) to serve TLS with, with --tls-key: the port then speaks only TLS 1.2 and
    /// 1.3 (ALPN h2). Both files are read again when they change (checked every 5 s, and on SIGHUP).
    #[arg(long, env = "AUTH_SVC_TLS_CERT", value_name = "PATH", requires = "tls_key",
          value_parser = flags::certificate_file)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Must be a file that neither group nor others may access
    /// (`chmod 600`).
    #[arg(long, env = "AUTH_SVC_TLS_KEY", value_name = "PATH", requires = "tls_cert",
          value_parser = flags::private_key_file)]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that client certificates must chain to (needs --tls-cert). Clients may still
    /// call without a certificate, except the internal RPCs (Validate, WatchRevocations), which then need
    /// one (UNAUTHENTICATED, reason CLIENT_CERT_REQUIRED).
    #[arg(long, env = "AUTH_SVC_TLS_CLIENT_CA", value_name = "PATH", requires = "tls_cert",
          value_parser = flags::ca_file)]
    pub tls_client_ca: Option<PathBuf>,

    /// DNS names (comma-separated) of the services allowed to call the internal RPCs: their client
    /// certificate must be valid for one of them (PERMISSION_DENIED, reason CALLER_NOT_ALLOWED, otherwise).
    /// Needs --tls-client-ca; without this flag any certificate from that CA will do.
    #[arg(long, env = "AUTH_SVC_INTERNAL_CLIENTS", value_name = "NAME[,NAME...]", value_delimiter = ',',
          requires = "tls_client_ca", value_parser = flags::dns_name)]
    pub internal_clients: Vec<String>,

    /// A TLS handshake not finished within this is dropped. Between 100ms and 1m.
    #[arg(long, env = "AUTH_SVC_TLS_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = |v: &str| duration_within(v, transport::TLS_HANDSHAKE_TIMEOUT))]
    pub tls_handshake_timeout: Duration,

    /// Most connections open at once (TLS or not, handshakes included); more are closed as they arrive.
    /// Between 1 and 1000000.
    #[arg(long, env = "AUTH_SVC_MAX_CONNECTIONS", default_value_t = transport::DEFAULT_MAX_CONNECTIONS,
          value_parser = RangedU64ValueParser::<usize>::new().range(transport::MAX_CONNECTIONS))]
    pub max_connections: usize,

    /// A connection this old is asked to go away (HTTP/2 GOAWAY; calls in flight finish, within 30 s) and
    /// its client reconnects, perhaps to another replica. Between 10s and 30days.
    #[arg(long, env = "AUTH_SVC_MAX_CONNECTION_AGE", default_value = "30m",
          value_parser = |v: &str| duration_within(v, transport::MAX_CONNECTION_AGE))]
    pub max_connection_age: Duration,

    /// Serve plaintext on an address that is not loopback, e.g. behind a TLS-terminating sidecar or mesh.
    /// Without it (or --tls-cert), such a --listen is refused.
    #[arg(long, env = "AUTH_SVC_INSECURE_LISTEN")]
    pub insecure_listen: bool,

    /// Origins whose pages may call this port from a browser (gRPC-Web), such as https://app.example.com,
    /// comma-separated. None by default: same-origin pages only.
    #[arg(
        long,
        env = "AUTH_SVC_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGIN[,ORIGIN...]",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<watchword::web::Origin>,
}

const ACCESS_TOKEN_TTL: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
const REFRESH_TOKEN_TTL: RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600);
/// Long enough for a client's retry after a lost answer; any longer only widens the window in which a
/// stolen refresh token gets the same successor as its owner.
const REFRESH_REUSE_GRACE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(60);
const KEY_PUBLISH_LEAD: RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(30 * 24 * 3600);
const LOCKOUT_THRESHOLD: RangeInclusive<i64> = 1..=1_000_000;
const PEER_BURST: RangeInclusive<i64> = 1..=10_000;
/// The slowest rate still tells a throttled caller to come back within 100 s (the retry delay is
/// `1 / rate`); NaN, infinities and tiny rates would make that delay meaningless or overflow it.
const PEER_RATE: RangeInclusive<f64> = 0.01..=10_000.0;
const CLAIM_VALUE_MAX_BYTES: usize = 256;
const API_KEY_MAX_TTL: RangeInclusive<Duration> =
    Duration::from_secs(3600)..=Duration::from_secs(3650 * 24 * 3600);
/// At least a day, so the purge (hourly) never races a listing; at most ten years.
const AUDIT_RETENTION: RangeInclusive<Duration> =
    Duration::from_secs(24 * 3600)..=Duration::from_secs(3650 * 24 * 3600);

/// The role a new registration gets (`--default-role`). Never `admin`: admins come from
/// `--bootstrap-admin` or from another admin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultRole {
    Guest,
    User,
}

impl DefaultRole {
    pub fn level(self) -> watchword::roles::Level {
        match self {
            Self::Guest => watchword::roles::Level::Guest,
            Self::User => watchword::roles::Level::User,
        }
    }
}

fn peer_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if rate == 0.0 || PEER_RATE.contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "must be 0 (off) or between {} and {} calls per second",
            PEER_RATE.start(),
            PEER_RATE.end()
        ))
    }
}

/// `iss` and `aud` are compared byte for byte: an empty one, or one with invisible characters, would make
/// tokens nobody can tell apart from misconfiguration.
fn claim_value(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > CLAIM_VALUE_MAX_BYTES || value.chars().any(char::is_control) {
        return Err(format!(
            "must be 1 to {CLAIM_VALUE_MAX_BYTES} bytes without control characters"
        ));
    }
    Ok(value.to_owned())
}

/// `--public-url`: an absolute `http://` or `https://` URL with a host, and no query or fragment.
fn public_url(value: &str) -> Result<String, String> {
    let invalid = || "must be an http:// or https:// URL with a host, without query or fragment".to_owned();
    let uri: http::Uri = value.parse().map_err(|_| invalid())?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let host_ok = uri.host().is_some_and(|h| !h.is_empty())
        && !uri.authority().is_some_and(|a| a.as_str().contains('@'));
    if !scheme_ok || !host_ok || uri.query().is_some() || value.contains('#') {
        return Err(invalid());
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// `--signing-key-file`: refused at start unless it is a file only its owner may access.
fn private_key_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    open_private(&path).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `--key-encryption-key-file`: refused at start unless it is a file only its owner may access, holding a
/// key.
fn key_encryption_key_file(value: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(value);
    read_key_encryption_key_file(&path)?;
    Ok(path)
}

/// Reads the key-encryption key file, refusing one that group or others may access (whoever reads it and a
/// copy of the database can mint tokens) or that does not hold 32 bytes in base64.
pub fn read_key_encryption_key_file(path: &Path) -> Result<crate::sealing::KeyEncryptionKey, String> {
    let mut text = String::new();
    open_private(path)
        .and_then(|mut file| file.read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    crate::sealing::KeyEncryptionKey::from_base64(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads the signing key file, refusing one that group or others may access: anyone who can read the key
/// can mint tokens for any user, and anyone who can write it can swap in their own.
pub fn read_signing_key_file(path: &Path) -> std::io::Result<String> {
    let mut pem = String::new();
    open_private(path)?.read_to_string(&mut pem)?;
    Ok(pem)
}

/// `--database-url`, checked as far as it can be without connecting (see [`DatabaseUrl::parse`]).
fn database_url(value: &str) -> Result<DatabaseUrl, String> {
    DatabaseUrl::parse(value).map_err(|e| e.to_string())
}

impl Settings {
    /// Every flag's default, exactly as the binary would have them without arguments, but never taken
    /// from the environment: a developer's exported `AUTH_SVC_*` variables must not leak into tests or
    /// embedders. Each default is written once, in its `#[arg]` attribute.
    fn defaults() -> Self {
        Self::parse_without_env(["auth-svc"]).expect("the defaults are valid values")
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

    /// Checks what no single flag's parser can: plaintext off loopback, a certificate and key that are no
    /// pair.
    fn checked(self) -> Result<Self, clap::Error> {
        let usage =
            |message: String| Self::command().error(clap::error::ErrorKind::ArgumentConflict, message);
        transport::check_listen(self.listen, self.tls_cert.is_some(), self.insecure_listen)
            .map_err(|message| usage(format!("--listen: {message}")))?;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            transport::tls::check_key_pair(cert, key)
                .map_err(|error| usage(format!("--tls-cert, --tls-key: {error}")))?;
        }
        Ok(self)
    }

    /// How the port is served, from the TLS and connection flags; loads the certificate and starts
    /// watching it. Must be called within a Tokio runtime.
    pub fn transport(&self) -> Result<Transport, TlsError> {
        let transport = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                Transport::tls(ServerTls::from_files(cert, key, self.tls_client_ca.as_deref())?)
            }
            _ => Transport::plaintext(),
        };
        Ok(transport
            .handshake_timeout(self.tls_handshake_timeout)
            .max_connections(self.max_connections)
            .max_connection_age(self.max_connection_age))
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
        // Tests run many servers at once: a fixed admin port would collide.
        settings.admin_listen = AdminListen::At(settings.listen);
        settings.database_url = database_url;
        settings
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn each_flag_accepts_the_ends_of_its_range_and_nothing_past_them() {
        let long_claim = "x".repeat(256);
        let inside = [
            ["--access-token-ttl", "1s"],
            ["--access-token-ttl", "24h"],
            ["--refresh-token-ttl", "1m"],
            ["--refresh-token-ttl", "365days"],
            ["--refresh-reuse-grace", "0s"],
            ["--refresh-reuse-grace", "1m"],
            ["--issuer", &long_claim],
            ["--audience", "a"],
            ["--min-password-length", "8"],
            ["--min-password-length", "128"],
            ["--lockout-threshold", "1"],
            ["--lockout-threshold", "1000000"],
            ["--peer-rate", "0"],
            ["--peer-rate", "0.01"],
            ["--peer-rate", "10000"],
            ["--peer-burst", "1"],
            ["--peer-burst", "10000"],
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
            ["--admin-listen", "[::1]:0"],
            ["--log-format", "json"],
            ["--otlp-endpoint", "http://127.0.0.1:4317"],
            ["--default-role", "guest"],
            ["--default-role", "user"],
            ["--api-key-max-ttl", "1h"],
            ["--api-key-max-ttl", "3650days"],
            ["--audit-retention", "1day"],
            ["--audit-retention", "3650days"],
            ["--key-publish-lead", "2s"],
            ["--key-publish-lead", "30days"],
            ["--public-url", "https://auth.example.com"],
            ["--public-url", "http://127.0.0.1:50051/"],
        ];
        let longer_claim = "x".repeat(257);
        let outside = [
            ["--access-token-ttl", "999ms"],
            ["--access-token-ttl", "24h 1s"],
            ["--refresh-token-ttl", "59s"],
            ["--refresh-token-ttl", "366days"],
            ["--refresh-reuse-grace", "61s"],
            ["--issuer", &longer_claim],
            ["--audience", "new\nline"],
            ["--key-publish-lead", "1999ms"],
            ["--key-publish-lead", "31days"],
            ["--public-url", "auth.example.com"],
            ["--public-url", "ftp://auth.example.com"],
            ["--public-url", "https://auth.example.com/?x=1"],
            ["--public-url", "https://auth.example.com/#top"],
            ["--public-url", "https://user@auth.example.com"],
            ["--min-password-length", "129"],
            ["--lockout-threshold", "1000001"],
            ["--peer-rate", "0.009"],
            ["--peer-rate", "10000.5"],
            ["--peer-burst", "10001"],
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
            ["--tls-client-ca", "/nonexistent/ca.pem"],
            ["--internal-clients", "not a name"],
            ["--admin-listen", "9051"],
            ["--log-format", "yaml"],
            ["--otlp-endpoint", "https://collector:4317"],
            ["--api-key-max-ttl", "59m"],
            ["--api-key-max-ttl", "3651days"],
            ["--audit-retention", "23h"],
            ["--audit-retention", "3651days"],
        ];
        for [flag, value] in inside {
            let parsed = Settings::parse_without_env(["auth-svc", flag, value]);
            assert!(parsed.is_ok(), "{flag} {value}: {parsed:?}");
        }
        for [flag, value] in outside {
            let error = Settings::parse_without_env(["auth-svc", flag, value]).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag} {value}"
            );
            assert!(error.to_string().contains(flag), "{error}");
        }
        // A value outside a closed list is clap's InvalidValue (also exit status 2, the flag named).
        let error = Settings::parse_without_env(["auth-svc", "--default-role", "admin"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(error.to_string().contains("--default-role"), "{error}");
        assert_eq!(Settings::defaults().default_role, DefaultRole::User);
    }

    #[test]
    fn a_signing_key_file_is_read_only_while_it_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "pem").unwrap();
        for mode in [0o640, 0o604, 0o620, 0o602, 0o610] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = read_signing_key_file(&path).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read_signing_key_file(&path).unwrap(), "pem");
        }
        assert!(
            read_signing_key_file(dir.path()).is_err(),
            "a directory is no key file"
        );
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

    #[test]
    fn a_key_encryption_key_file_is_read_only_while_private_and_holding_32_bytes_in_base64() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let path_text = path.to_str().unwrap();
        std::fs::write(&path, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error =
            Settings::parse_without_env(["auth-svc", "--key-encryption-key-file", path_text]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let settings =
            Settings::parse_without_env(["auth-svc", "--key-encryption-key-file", path_text]).unwrap();
        assert_eq!(settings.key_encryption_key_file.as_deref(), Some(path.as_path()));
        std::fs::write(&path, "c2hvcnQ=").unwrap();
        let error =
            Settings::parse_without_env(["auth-svc", "--key-encryption-key-file", path_text]).unwrap_err();
        assert!(error.to_string().contains("--key-encryption-key-file"), "{error}");
        assert!(error.to_string().contains("5 bytes, not 32"), "{error}");
    }

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
