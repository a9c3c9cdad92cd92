//! `spawn_app()` and typed helpers, so each test reads like the behaviour it checks.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tempfile::TempDir;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Channel};
use watchword::pb::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    posts::v1::{self as posts_pb, posts_service_client::PostsServiceClient},
};
use watchword_db::DatabaseUrl;
use watchword_db::postgres::tokio_postgres::NoTls;

pub const PASSWORD: &str = "correct horse battery staple";

/// A server task and the means to stop it.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), String>>,
}

impl Server {
    /// Stops the server gracefully; a server error or panic fails the test.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("server stops within its grace period")
            .expect("server task does not panic");
        result.expect("server exits cleanly");
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).await.expect("bind")
}

/// Starts auth-svc and waits until it reports SERVING.
pub async fn start_auth(listener: TcpListener, settings: auth_svc::Settings) -> Server {
    let tls = settings.tls_cert.is_some();
    let server = spawn_server(listener, |listener, stop| {
        auth_svc::serve(listener, settings, stop)
    });
    serving(server, "auth.v1.AuthService", tls).await
}

/// Starts posts-svc and waits until it reports SERVING.
pub async fn start_posts(listener: TcpListener, settings: posts_svc::Settings) -> Server {
    let tls = settings.tls_cert.is_some();
    let server = spawn_server(listener, |listener, stop| {
        posts_svc::serve(listener, settings, stop)
    });
    serving(server, "posts.v1.PostsService", tls).await
}

/// `server` once its health service reports `service` SERVING, so a test never races start-up (a second
/// writer on a fresh SQLite file, a call before the first health probe). A server that stops instead
/// fails the test with its error. A TLS server is returned at once: its tests make their own clients.
async fn serving(mut server: Server, service: &str, tls: bool) -> Server {
    if tls {
        return server;
    }
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(channel(server.addr));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let status = health.check(request).await.map(|r| r.into_inner().status);
        if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
            return server;
        }
        if server.task.is_finished() {
            let outcome = (&mut server.task).await.expect("server task does not panic");
            panic!("{service} stopped before serving: {outcome:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service} not SERVING after 30 s: {status:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// Runs `serve` on `listener` in a task, with a shutdown signal that [`Server::stop`] fires.
pub fn spawn_server<F, Fut, E>(listener: TcpListener, serve: F) -> Server
where
    F: FnOnce(TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let stop = Box::pin(async {
        let _ = rx.await;
    });
    let running = serve(listener, stop);
    let task = tokio::spawn(async move { running.await.map_err(|e| e.to_string()) });
    Server {
        addr,
        shutdown: Some(tx),
        task,
    }
}

pub fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

/// Both services on fresh storage, with clients for each: `spawn_app()` for the defaults, or
/// [`TestApp::builder`]
/// for a builder whose options combine.
pub struct TestApp {
    pub dir: TempDir,
    /// The auth-svc replicas; [`TestApp::auth`] talks to the first.
    pub auth_servers: Vec<Server>,
    /// The posts-svc replicas; the `i`-th asks the `i`-th auth-svc (through the stand-in, with
    /// [`AppBuilder::proxied`]); [`TestApp::posts`] talks to the first.
    pub posts_servers: Vec<Server>,
    pub auth: AuthServiceClient<Channel>,
    pub posts: PostsServiceClient<Channel>,
    pub auth_settings: auth_svc::Settings,
    pub posts_database: DatabaseUrl,
    /// The stand-in between posts-svc and auth-svc, with [`AppBuilder::proxied`].
    pub proxy: Option<AuthProxy>,
}

type AuthKnob = Box<dyn FnOnce(&mut auth_svc::Settings)>;
type PostsKnob = Box<dyn FnOnce(&mut posts_svc::Settings)>;

/// How a test app is set up. Every option adds to the others, in the order given.
#[derive(Default)]
pub struct AppBuilder {
    auth: Vec<AuthKnob>,
    posts: Vec<PostsKnob>,
    signing_key_file: bool,
    auth_replicas: Option<usize>,
    proxied: bool,
}

impl TestApp {
    /// A test app to set up: `TestApp::builder().no_peer_limit().verify(Local).start().await`.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }
}

pub async fn spawn_app() -> TestApp {
    TestApp::builder().start().await
}

impl AppBuilder {
    /// Changes auth-svc's settings (every replica's).
    pub fn auth(mut self, knob: impl FnOnce(&mut auth_svc::Settings) + 'static) -> Self {
        self.auth.push(Box::new(knob));
        self
    }

    /// Changes posts-svc's settings (every replica's).
    pub fn posts(mut self, knob: impl FnOnce(&mut posts_svc::Settings) + 'static) -> Self {
        self.posts.push(Box::new(knob));
        self
    }

    /// auth-svc signs with a key from `--signing-key-file` (written into the app's directory).
    pub fn signing_key_file(mut self) -> Self {
        self.signing_key_file = true;
        self
    }

    /// No per-address limit: for tests that log in more often than one address may.
    pub fn no_peer_limit(self) -> Self {
        self.auth(|settings| settings.peer_rate = 0.0)
    }

    /// Neither the per-address limit nor lockout: for tests that log in far more often than a person would.
    pub fn no_throttling(self) -> Self {
        self.no_peer_limit()
            .auth(|settings| settings.lockout_threshold = u32::MAX)
    }

    /// How posts-svc's guard checks tokens.
    pub fn verify(self, mode: posts_svc::VerifyMode) -> Self {
        self.posts(move |settings| settings.verify = mode)
    }

    /// How long posts-svc's guard reuses a remote verdict (`ZERO`: asks auth-svc about every call).
    pub fn cache_ttl(self, ttl: Duration) -> Self {
        self.posts(move |settings| settings.validate_cache_ttl = ttl)
    }

    /// `n` auth-svc replicas on one database, each with its own posts-svc replica. Several replicas need
    /// PostgreSQL (an SQLite file has one auth-svc): `start` returns `None` on SQLite.
    pub fn auth_replicas(mut self, n: usize) -> Self {
        self.auth_replicas = Some(n.max(1));
        self
    }

    /// posts-svc reaches auth-svc through an [`AuthProxy`]: a stand-in that forwards every call and counts
    /// them, and can be made to fail Validate.
    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    /// Starts the app. Panics if a service cannot be started; see [`AppBuilder::auth_replicas`] for the one
    /// set-up that is skipped instead (then the test should return).
    pub async fn start(self) -> TestApp {
        self.try_start()
            .await
            .expect("several auth-svc replicas need PostgreSQL")
    }

    /// Like [`AppBuilder::start`], but `None` when the set-up needs PostgreSQL and the tests run on SQLite.
    pub async fn try_start(self) -> Option<TestApp> {
        let replicas = self.auth_replicas.unwrap_or(1);
        let dir = tempfile::tempdir().unwrap();
        let auth_database = database(&dir, "auth").await;
        if replicas > 1 && !matches!(auth_database, DatabaseUrl::Postgres(_)) {
            eprintln!(
                "skipped: several auth-svc replicas need WATCHWORD_TEST_DATABASE_URL (PostgreSQL); .ci/run sets it"
            );
            return None;
        }
        let mut auth_settings = auth_svc::Settings::for_database(auth_database);
        if self.signing_key_file {
            auth_settings.signing_key_file = Some(write_signing_key(&dir).0);
        }
        for knob in self.auth {
            knob(&mut auth_settings);
        }
        let mut auth_servers = Vec::new();
        for _ in 0..replicas {
            auth_servers.push(start_auth(bind(auth_settings.listen).await, auth_settings.clone()).await);
        }
        let proxy = match self.proxied {
            true => Some(AuthProxy::start(auth_servers[0].addr).await),
            false => None,
        };

        let posts_database = database(&dir, "posts").await;
        // The first posts-svc asks the stand-in when there is one; a knob may point it elsewhere.
        let first = proxy.as_ref().map_or(auth_servers[0].addr, |proxy| proxy.addr);
        let mut posts_settings = posts_svc::Settings::new(posts_database.clone(), format!("http://{first}"));
        for knob in self.posts {
            knob(&mut posts_settings);
        }
        let mut posts_servers = Vec::new();
        for (i, auth) in auth_servers.iter().enumerate() {
            let mut settings = posts_settings.clone();
            if i > 0 {
                settings.auth_url = format!("http://{}", auth.addr);
            }
            posts_servers.push(start_posts(bind(settings.listen).await, settings).await);
        }

        Some(TestApp {
            auth: AuthServiceClient::new(channel(auth_servers[0].addr)),
            posts: PostsServiceClient::new(channel(posts_servers[0].addr)),
            auth_servers,
            posts_servers,
            auth_settings,
            posts_database,
            proxy,
            dir,
        })
    }
}

/// A stand-in for auth-svc between posts-svc and the real one: a tonic server that forwards every
/// `auth.v1.AuthService` call, behind a tower layer that counts calls per method and can fail Validate.
pub struct AuthProxy {
    pub addr: SocketAddr,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    failing: Arc<AtomicBool>,
    _server: Server,
}

impl AuthProxy {
    async fn start(auth: SocketAddr) -> Self {
        let (calls, failing) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let layer = StandIn {
            calls: Arc::clone(&calls),
            failing: Arc::clone(&failing),
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).await;
        let server = spawn_server(listener, move |listener, stop| {
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(Forward(channel(auth)))
                .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), stop)
        });
        Self {
            addr: server.addr,
            calls,
            failing,
            _server: server,
        }
    }

    /// Calls of `method` (e.g. `"Validate"`) that reached the stand-in.
    pub fn calls(&self, method: &str) -> usize {
        let path = format!("/auth.v1.AuthService/{method}");
        self.calls.lock().unwrap().get(&path).copied().unwrap_or(0)
    }

    pub fn validates(&self) -> usize {
        self.calls("Validate")
    }

    /// While `fail`, Validate answers `UNAVAILABLE` without reaching auth-svc.
    pub fn fail_validate(&self, fail: bool) {
        self.failing.store(fail, Ordering::SeqCst);
    }
}

/// Forwards any `auth.v1.AuthService` call to auth-svc.
#[derive(Clone)]
struct Forward(Channel);

impl tonic::server::NamedService for Forward {
    const NAME: &'static str = "auth.v1.AuthService";
}

impl tower::Service<http::Request<tonic::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let channel = self.0.clone();
        Box::pin(async move {
            let response = tower::ServiceExt::oneshot(channel, request).await;
            Ok(response.unwrap_or_else(|e| Status::unavailable(e.to_string()).into_http()))
        })
    }
}

/// The stand-in's layer: counts each call's method, and fails Validate while told to.
#[derive(Clone)]
struct StandIn {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    failing: Arc<AtomicBool>,
}

impl<S> tower::Layer<S> for StandIn {
    type Service = StandInService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        StandInService {
            inner,
            stand_in: self.clone(),
        }
    }
}

#[derive(Clone)]
struct StandInService<S> {
    inner: S,
    stand_in: StandIn,
}

impl<S, B> tower::Service<http::Request<B>> for StandInService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        *self
            .stand_in
            .calls
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_default() += 1;
        if path.ends_with("/Validate") && self.stand_in.failing.load(Ordering::SeqCst) {
            return Box::pin(async { Ok(Status::unavailable("the stand-in fails Validate").into_http()) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// Storage for one service of one test app: an SQLite file in the app's temp dir, or, when
/// `WATCHWORD_TEST_DATABASE_URL` names a PostgreSQL database, a fresh schema in it (so tests run in
/// parallel without seeing each other's rows).
pub async fn database(dir: &TempDir, name: &str) -> DatabaseUrl {
    let Ok(base) = std::env::var("WATCHWORD_TEST_DATABASE_URL") else {
        return DatabaseUrl::Sqlite(dir.path().join(format!("{name}.db")));
    };
    let schema = format!("t_{name}_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = watchword_db::postgres::tokio_postgres::connect(&base, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create test schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    DatabaseUrl::Postgres(format!("{base}{separator}options=-csearch_path%3D{schema}"))
}

/// Writes a fresh Ed25519 PKCS#8 PEM key into `dir` and returns its path and PEM.
pub fn write_signing_key(dir: &TempDir) -> (PathBuf, String) {
    let key = auth_svc::keys::SigningKey::generate().unwrap();
    let path = dir.path().join("signing-key.pem");
    std::fs::write(&path, key.to_pkcs8_pem()).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (path, key.to_pkcs8_pem().to_owned())
}

/// `message` with `authorization: Bearer <token>` metadata.
pub fn bearer<T>(message: T, token: &str) -> Request<T> {
    with_authorization(message, &format!("Bearer {token}"))
}

pub fn with_authorization<T>(message: T, value: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", MetadataValue::try_from(value).unwrap());
    request
}

impl TestApp {
    pub async fn register(&self, username: &str) -> Result<auth_pb::User, Status> {
        let response = self
            .auth
            .clone()
            .register(auth_pb::RegisterRequest {
                username: username.into(),
                password: PASSWORD.into(),
            })
            .await?;
        Ok(response.into_inner().user.expect("user in response"))
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<auth_pb::LoginResponse, Status> {
        let response = self
            .auth
            .clone()
            .login(auth_pb::LoginRequest {
                username: username.into(),
                password: password.into(),
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Registers `username` and returns an access token for it.
    pub async fn login_as(&self, username: &str) -> String {
        self.register(username).await.expect("register");
        self.login(username, PASSWORD).await.expect("login").access_token
    }

    pub async fn validate(&self, token: &str) -> Result<auth_pb::Claims, Status> {
        let response = self
            .auth
            .clone()
            .validate(auth_pb::ValidateRequest { token: token.into() })
            .await?;
        Ok(response.into_inner().claims.expect("claims in response"))
    }

    pub async fn create_post(&self, token: &str, title: &str, body: &str) -> Result<posts_pb::Post, Status> {
        let request = posts_pb::CreatePostRequest {
            title: title.into(),
            body: body.into(),
            ..Default::default()
        };
        let response = self.posts.clone().create_post(bearer(request, token)).await?;
        Ok(response.into_inner().post.expect("post in response"))
    }

    pub async fn list_posts(
        &self,
        token: &str,
        request: posts_pb::ListPostsRequest,
    ) -> Result<posts_pb::ListPostsResponse, Status> {
        Ok(self
            .posts
            .clone()
            .list_posts(bearer(request, token))
            .await?
            .into_inner())
    }

    pub async fn get_post(&self, token: &str, id: &str) -> Result<posts_pb::Post, Status> {
        let request = posts_pb::GetPostRequest { id: id.into() };
        let response = self.posts.clone().get_post(bearer(request, token)).await?;
        Ok(response.into_inner().post.expect("post in response"))
    }

    pub async fn delete_post(&self, token: &str, id: &str) -> Result<(), Status> {
        let request = posts_pb::DeletePostRequest { id: id.into() };
        self.posts.clone().delete_post(bearer(request, token)).await?;
        Ok(())
    }

    /// Stops (the first) auth-svc, leaving posts-svc pointing at its (now closed) address.
    pub async fn stop_auth(&mut self) -> SocketAddr {
        let server = self.auth_servers.remove(0);
        let addr = server.addr;
        server.stop().await;
        addr
    }

    /// Starts auth-svc again on `addr` with the same storage and settings.
    pub async fn restart_auth(&mut self, addr: SocketAddr) {
        let server = start_auth(bind(addr).await, self.auth_settings.clone()).await;
        self.auth_servers.insert(0, server);
    }

    /// The address of (the first) auth-svc.
    pub fn auth_addr(&self) -> SocketAddr {
        self.auth_servers[0].addr
    }

    /// The address of (the first) posts-svc.
    pub fn posts_addr(&self) -> SocketAddr {
        self.posts_servers[0].addr
    }
}

/// Asserts that `result` failed with `code`, returning the status for further checks.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "unexpected status: {status:?}");
            status
        }
    }
}

impl TestApp {
    /// Creates `username` as an admin through the bootstrap path and logs it in.
    pub async fn admin_token(&self, username: &str) -> String {
        auth_svc::bootstrap_admin(&self.auth_settings, username, PASSWORD.to_owned())
            .await
            .expect("bootstrap admin");
        self.login(username, PASSWORD)
            .await
            .expect("admin login")
            .access_token
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<auth_pb::RefreshResponse, Status> {
        let request = auth_pb::RefreshRequest {
            refresh_token: refresh_token.into(),
        };
        Ok(self.auth.clone().refresh(request).await?.into_inner())
    }

    pub async fn logout(&self, access_token: &str) -> Result<(), Status> {
        self.auth
            .clone()
            .logout(bearer(auth_pb::LogoutRequest::default(), access_token))
            .await?;
        Ok(())
    }
}

/// Asserts that `result` failed with `code` and ErrorInfo `reason`.
#[track_caller]
pub fn assert_reason<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: watchword::reason::Reason,
) -> Status {
    let status = assert_code(result, code);
    assert_eq!(watchword::reason::of(&status), Some(reason), "{status:?}");
    status
}

impl TestApp {
    /// Calls ListPosts with `token` until posts-svc refuses it with `reason`, failing if it is still
    /// accepted after `within`. Returns how long enforcement took.
    pub async fn refused_within(
        &self,
        token: &str,
        reason: watchword::reason::Reason,
        within: std::time::Duration,
    ) -> std::time::Duration {
        let started = std::time::Instant::now();
        loop {
            match self.list_posts(token, Default::default()).await {
                Err(status) => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                    assert_eq!(watchword::reason::of(&status), Some(reason), "{status:?}");
                    return started.elapsed();
                }
                Ok(_) => {
                    assert!(
                        started.elapsed() < within,
                        "token still accepted after {within:?}"
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
    }
}

/// Runs all `futures` concurrently on this task (no spawning), returning their outputs in order.
pub async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

impl TestApp {
    /// Audit events as the admin `token` lists them with `request` (one page).
    pub async fn audit_events(
        &self,
        token: &str,
        request: auth_pb::ListAuditEventsRequest,
    ) -> Result<auth_pb::ListAuditEventsResponse, Status> {
        let response = self
            .auth
            .clone()
            .list_audit_events(bearer(request, token))
            .await?;
        Ok(response.into_inner())
    }

    /// Every audit event of `kind` (all pages), newest first.
    pub async fn audit_of_kind(
        &self,
        token: &str,
        kind: auth_pb::AuditEventKind,
    ) -> Vec<auth_pb::AuditEvent> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let request = auth_pb::ListAuditEventsRequest {
                page_size: 100,
                page_token,
                kind: kind.into(),
                ..Default::default()
            };
            let page = self
                .audit_events(token, request)
                .await
                .expect("list audit events");
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }

    /// Runs statements on auth-svc's database behind its back (`sqlite` or `postgres`, whichever it uses),
    /// for tests that must do what no RPC does: make a write fail, or age a row.
    pub async fn auth_sql(&self, sqlite: &str, postgres: &str) {
        match &self.auth_settings.database_url {
            DatabaseUrl::Sqlite(path) => {
                let conn =
                    watchword_db::rusqlite::Connection::open(path).expect("open auth-svc's SQLite file");
                conn.busy_timeout(Duration::from_secs(5)).unwrap();
                conn.execute_batch(sqlite)
                    .expect("run SQL on auth-svc's database");
            }
            DatabaseUrl::Postgres(url) => {
                let (client, connection) = watchword_db::postgres::tokio_postgres::connect(url, NoTls)
                    .await
                    .expect("connect to auth-svc's PostgreSQL");
                let connection = tokio::spawn(connection);
                client
                    .batch_execute(postgres)
                    .await
                    .expect("run SQL on auth-svc's database");
                drop(client);
                let _ = connection.await;
            }
        }
    }

    /// Makes every insert of an audit event of `kind` fail, until [`TestApp::allow_audit`]: the change
    /// written with it must then fail too, as they share a transaction.
    pub async fn refuse_audit(&self, kind: auth_pb::AuditEventKind) {
        let kind = kind.as_str_name();
        self.auth_sql(
            &format!(
                "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events WHEN NEW.kind = '{kind}'
                 BEGIN SELECT RAISE(ABORT, 'audit refused by the test'); END;"
            ),
            &format!(
                "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'audit refused by the test'; END $$;
                 CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW
                   WHEN (NEW.kind = '{kind}') EXECUTE FUNCTION refuse_audit();"
            ),
        )
        .await;
    }

    /// Undoes [`TestApp::refuse_audit`].
    pub async fn allow_audit(&self) {
        self.auth_sql(
            "DROP TRIGGER refuse_audit;",
            "DROP TRIGGER refuse_audit ON audit_events; DROP FUNCTION refuse_audit();",
        )
        .await;
    }
}

impl TestApp {
    pub async fn get_me(&self, token: &str) -> Result<auth_pb::GetMeResponse, Status> {
        let response = self
            .auth
            .clone()
            .get_me(bearer(auth_pb::GetMeRequest {}, token))
            .await?;
        Ok(response.into_inner())
    }

    pub async fn change_password(&self, token: &str, current: &str, new: &str) -> Result<(), Status> {
        let request = auth_pb::ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        self.auth.clone().change_password(bearer(request, token)).await?;
        Ok(())
    }

    pub async fn list_sessions(
        &self,
        token: &str,
        request: auth_pb::ListSessionsRequest,
    ) -> Result<auth_pb::ListSessionsResponse, Status> {
        let response = self.auth.clone().list_sessions(bearer(request, token)).await?;
        Ok(response.into_inner())
    }

    pub async fn revoke_session(&self, token: &str, session_id: &str) -> Result<(), Status> {
        let request = auth_pb::RevokeSessionRequest {
            session_id: session_id.into(),
        };
        self.auth.clone().revoke_session(bearer(request, token)).await?;
        Ok(())
    }
}

impl TestApp {
    /// Creates an API key named `name` with `roles` (none: the caller's) for the caller of `token`.
    pub async fn create_api_key(
        &self,
        token: &str,
        name: &str,
        roles: &[&str],
        ttl: Option<Duration>,
    ) -> Result<auth_pb::CreateApiKeyResponse, Status> {
        let request = auth_pb::CreateApiKeyRequest {
            name: name.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ttl: ttl.map(|ttl| prost_types::Duration::try_from(ttl).unwrap()),
        };
        let response = self.auth.clone().create_api_key(bearer(request, token)).await?;
        Ok(response.into_inner())
    }

    /// An access token for API key `secret`.
    pub async fn exchange_api_key(&self, secret: &str) -> Result<auth_pb::ExchangeApiKeyResponse, Status> {
        let request = auth_pb::ExchangeApiKeyRequest {
            api_key: secret.into(),
        };
        Ok(self.auth.clone().exchange_api_key(request).await?.into_inner())
    }

    pub async fn list_api_keys(
        &self,
        token: &str,
        request: auth_pb::ListApiKeysRequest,
    ) -> Result<auth_pb::ListApiKeysResponse, Status> {
        let response = self.auth.clone().list_api_keys(bearer(request, token)).await?;
        Ok(response.into_inner())
    }

    pub async fn revoke_api_key(&self, token: &str, id: &str) -> Result<(), Status> {
        let request = auth_pb::RevokeApiKeyRequest { id: id.into() };
        self.auth.clone().revoke_api_key(bearer(request, token)).await?;
        Ok(())
    }
}
