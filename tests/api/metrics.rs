//! `/metrics` after a scripted set of calls: exact counts, exact labels, and a text `promtool` accepts.
//!
//! Each service instance has its own registry, so these counts are this test's alone even while other
//! tests run in the same process.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tonic::Code;
use watchword::pb::{auth::v1 as auth_pb, posts::v1 as posts_pb};

use crate::helpers::{PASSWORD, Server, assert_code, bearer, channel, database, spawn_server};

/// Both services with admin servers on port 0; their gRPC and admin addresses.
struct Observed {
    _dir: tempfile::TempDir,
    auth: Server,
    posts: Server,
    auth_admin: SocketAddr,
    posts_admin: SocketAddr,
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn spawn_observed() -> Observed {
    let dir = tempfile::tempdir().unwrap();
    let settings = auth_svc::Settings::for_database(database(&dir, "auth").await);
    let (auth_admin, auth_admin_addr) = bind().await;
    let auth = spawn_server(bind().await.0, move |listener, stop| {
        auth_svc::serve_with_admin(listener, Some(auth_admin), settings, stop)
    });
    let settings = posts_svc::Settings::new(database(&dir, "posts").await, format!("http://{}", auth.addr));
    let (posts_admin, posts_admin_addr) = bind().await;
    let posts = spawn_server(bind().await.0, move |listener, stop| {
        posts_svc::serve_with_admin(listener, Some(posts_admin), settings, stop)
    });
    Observed {
        _dir: dir,
        auth,
        posts,
        auth_admin: auth_admin_addr,
        posts_admin: posts_admin_addr,
    }
}

/// `/metrics` from `admin`, as the raw text and as series → value.
async fn scrape(admin: SocketAddr) -> (String, BTreeMap<String, f64>) {
    let (status, text) = watchword::admin::get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    let series = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect();
    (text, series)
}

#[track_caller]
fn assert_series(series: &BTreeMap<String, f64>, name: &str, expected: f64) {
    assert_eq!(
        series.get(name).copied(),
        Some(expected),
        "{name}; series present:\n{}",
        series.keys().cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Polls `admin`'s metrics until `name` has `value` (state reached in the background, such as the
/// revocation stream), failing after 10 s.
async fn wait_for_series(admin: SocketAddr, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, series) = scrape(admin).await;
        if series.get(name) == Some(&value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached {value}: {:?}",
            series.get(name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An empty gRPC call to `path` (unknown methods and services: nothing is decoded).
async fn call_path(addr: SocketAddr, path: &'static str) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel(addr));
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(
        tonic::Request::new(()),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map_or_else(|status| status.code(), |_| Code::Ok)
}

/// `promtool check metrics` on `text`, when promtool is installed; CI installs it (`.ci/promtool`), and
/// there its absence is a failure.
fn promtool_accepts(service: &str, text: &str) {
    use std::io::Write as _;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not run ({error}): install it with `apt-get install prometheus`");
            return;
        }
        Err(error) => panic!("promtool is missing in CI: {error}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused {service}'s metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

const LIST: &str = r#"grpc_type="unary",grpc_service="posts.v1.PostsService",grpc_method="ListPosts""#;
const VALIDATE: &str = r#"grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="Validate""#;
const LOGIN: &str = r#"grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="Login""#;

#[tokio::test]
async fn metrics_count_a_scripted_session_exactly_and_promtool_accepts_them() {
    let app = spawn_observed().await;
    let mut auth = auth_pb::auth_service_client::AuthServiceClient::new(channel(app.auth.addr));
    let mut posts = posts_pb::posts_service_client::PostsServiceClient::new(channel(app.posts.addr));

    // Before any call, the known methods' series exist at zero, and the revocation stream comes up.
    wait_for_series(app.posts_admin, "watchword_revocation_stream_up", 1.0).await;
    let (_, before) = scrape(app.posts_admin).await;
    assert_series(&before, &format!("grpc_server_started_total{{{LIST}}}"), 0.0);

    auth.register(auth_pb::RegisterRequest {
        username: "alice".into(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    let login = |password: &str| auth_pb::LoginRequest {
        username: "alice".into(),
        password: password.into(),
        ..Default::default()
    };
    let token = auth
        .login(login(PASSWORD))
        .await
        .unwrap()
        .into_inner()
        .access_token;
    assert_code(
        auth.login(login("not the password at all")).await,
        Code::Unauthenticated,
    );

    // No token, then the same token twice: a denial, a miss that asks auth-svc, a hit.
    assert_code(
        posts.list_posts(posts_pb::ListPostsRequest::default()).await,
        Code::Unauthenticated,
    );
    for _ in 0..2 {
        posts
            .list_posts(bearer(posts_pb::ListPostsRequest::default(), &token))
            .await
            .unwrap();
    }
    // Strangers: an unknown service, and an unknown method of a known (unguarded) one.
    assert_eq!(
        call_path(app.posts.addr, "/evil.Service/Anything").await,
        Code::Unimplemented
    );
    assert_eq!(
        call_path(app.posts.addr, "/grpc.health.v1.Health/Nope").await,
        Code::Unimplemented
    );
    // A logout: one session revoked, and the guard hears of it on the stream.
    auth.logout(bearer(auth_pb::LogoutRequest::default(), &token))
        .await
        .unwrap();
    wait_for_series(
        app.posts_admin,
        r#"watchword_revocation_events_total{kind="session"}"#,
        1.0,
    )
    .await;

    let (posts_text, posts_series) = scrape(app.posts_admin).await;
    let series = &posts_series;
    assert_series(series, &format!("grpc_server_started_total{{{LIST}}}"), 3.0);
    assert_series(
        series,
        &format!("grpc_server_handled_total{{{LIST},grpc_code=\"OK\"}}"),
        2.0,
    );
    assert_series(
        series,
        &format!("grpc_server_handled_total{{{LIST},grpc_code=\"Unauthenticated\"}}"),
        1.0,
    );
    assert_series(
        series,
        &format!("grpc_server_handling_seconds_count{{{LIST},grpc_code=\"OK\"}}"),
        2.0,
    );
    assert_series(
        series,
        r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"}"#,
        1.0,
    );
    assert_series(
        series,
        r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="grpc.health.v1.Health",grpc_method="unknown",grpc_code="Unimplemented"}"#,
        1.0,
    );
    assert!(
        !posts_text.contains("evil") && !posts_text.contains("Nope"),
        "{posts_text}"
    );
    assert_series(
        series,
        r#"watchword_guard_decisions_total{decision="allow",reason=""}"#,
        2.0,
    );
    assert_series(
        series,
        r#"watchword_guard_decisions_total{decision="deny",reason="TOKEN_MISSING"}"#,
        1.0,
    );
    assert_series(
        series,
        r#"watchword_guard_decisions_total{decision="unavailable",reason="AUTH_UNAVAILABLE"}"#,
        0.0,
    );
    assert_series(
        series,
        r#"watchword_validation_cache_requests_total{result="miss"}"#,
        1.0,
    );
    assert_series(
        series,
        r#"watchword_validation_cache_requests_total{result="hit"}"#,
        1.0,
    );
    assert_series(
        series,
        r#"watchword_validation_cache_requests_total{result="shared"}"#,
        0.0,
    );
    assert_series(series, "watchword_validation_cache_entries", 1.0);
    assert_series(series, "watchword_revocation_stream_up", 1.0);
    assert_series(series, &format!("grpc_client_started_total{{{VALIDATE}}}"), 1.0);
    assert_series(
        series,
        &format!("grpc_client_handled_total{{{VALIDATE},grpc_code=\"OK\"}}"),
        1.0,
    );
    assert_series(
        series,
        &format!("grpc_client_handling_seconds_count{{{VALIDATE},grpc_code=\"OK\"}}"),
        1.0,
    );
    for state in ["idle", "busy"] {
        assert!(series.contains_key(&format!("watchword_db_connections{{state=\"{state}\"}}")));
    }
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(series[process] > 0.0, "{process}");
    }

    let (auth_text, auth_series) = scrape(app.auth_admin).await;
    let series = &auth_series;
    assert_series(series, r#"watchword_logins_total{outcome="ok"}"#, 1.0);
    assert_series(
        series,
        r#"watchword_logins_total{outcome="invalid_credentials"}"#,
        1.0,
    );
    for outcome in ["locked", "rate_limited", "overloaded"] {
        assert_series(
            series,
            &format!("watchword_logins_total{{outcome=\"{outcome}\"}}"),
            0.0,
        );
    }
    assert_series(series, r#"watchword_sessions_revoked_total{cause="logout"}"#, 1.0);
    assert_series(
        series,
        r#"watchword_sessions_revoked_total{cause="role_removed"}"#,
        0.0,
    );
    assert_series(
        series,
        &format!("grpc_server_handled_total{{{LOGIN},grpc_code=\"OK\"}}"),
        1.0,
    );
    assert_series(
        series,
        &format!("grpc_server_handled_total{{{LOGIN},grpc_code=\"Unauthenticated\"}}"),
        1.0,
    );
    // The guard's one Validate, seen from auth-svc.
    assert_series(
        series,
        &format!("grpc_server_handled_total{{{VALIDATE},grpc_code=\"OK\"}}"),
        1.0,
    );
    // Register, the good login and the bad one: three argon2 jobs (the dummy hash at start is not counted).
    assert_series(series, "watchword_password_hash_seconds_count", 3.0);
    assert_series(series, "watchword_password_hashes_in_flight", 0.0);
    assert!(
        auth_text.contains("# HELP watchword_logins_total "),
        "{auth_text}"
    );

    promtool_accepts("posts-svc", &posts_text);
    promtool_accepts("auth-svc", &auth_text);
    app.posts.stop().await;
    app.auth.stop().await;
}

/// A gRPC-Web call is counted (and logged) with its real status, not as cancelled: the translation sits
/// outside the metrics. The `/.well-known/*` documents are not gRPC calls and are not counted as any.
#[tokio::test]
async fn grpc_web_calls_count_like_grpc_calls_and_http_documents_not_at_all() {
    use crate::grpc_web::{Mode, web_call};
    let app = spawn_observed().await;
    let mut auth = auth_pb::auth_service_client::AuthServiceClient::new(channel(app.auth.addr));
    auth.register(auth_pb::RegisterRequest {
        username: "alice".into(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    for (password, mode) in [(PASSWORD, Mode::Binary), ("wrong password!", Mode::Text)] {
        let login = auth_pb::LoginRequest {
            username: "alice".into(),
            password: password.into(),
            ..Default::default()
        };
        web_call(app.auth.addr, "/auth.v1.AuthService/Login", login, mode, &[]).await;
    }
    let (status, _) = watchword::admin::get(app.auth.addr, "/.well-known/jwks.json")
        .await
        .unwrap();
    assert_eq!(status, 200);

    let (_, series) = scrape(app.auth_admin).await;
    let ok = format!("grpc_server_handled_total{{{LOGIN},grpc_code=\"OK\"}}");
    let refused = format!("grpc_server_handled_total{{{LOGIN},grpc_code=\"Unauthenticated\"}}");
    assert_series(&series, &ok, 1.0);
    assert_series(&series, &refused, 1.0);
    let cancelled = format!("grpc_server_handled_total{{{LOGIN},grpc_code=\"Cancelled\"}}");
    assert_eq!(series.get(&cancelled), None);
    let unknown = series
        .keys()
        .filter(|name| {
            name.starts_with("grpc_server_started_total") && name.contains("grpc_service=\"unknown\"")
        })
        .map(|name| series[name])
        .sum::<f64>();
    assert_eq!(unknown, 0.0, "the JWKS request was counted as a gRPC call");
    app.posts.stop().await;
    app.auth.stop().await;
}

#[tokio::test]
async fn envoy_checks_are_counted_under_their_own_name() {
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckRequest, authorization_client::AuthorizationClient,
    };
    let app = spawn_observed().await;
    let mut client = AuthorizationClient::new(channel(app.auth.addr));
    client.check(CheckRequest::default()).await.unwrap();
    let (_, series) = scrape(app.auth_admin).await;
    assert_series(
        &series,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_code="OK"}"#,
        1.0,
    );
    app.posts.stop().await;
    app.auth.stop().await;
}

#[tokio::test]
async fn with_the_admin_server_off_the_service_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = auth_svc::Settings::for_database(database(&dir, "auth").await);
    settings.admin_listen = watchword::admin::AdminListen::Off;
    let auth = spawn_server(bind().await.0, move |listener, stop| {
        auth_svc::serve(listener, settings, stop)
    });
    let mut client = auth_pb::auth_service_client::AuthServiceClient::new(channel(auth.addr));
    let status = client
        .validate(auth_pb::ValidateRequest { token: "x".into() })
        .await;
    assert_code(status, Code::Unauthenticated);
    auth.stop().await;
}
