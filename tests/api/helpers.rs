//! `spawn_app()` and typed helpers, so each test reads like the behaviour it checks.

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, time::Duration};

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

pub async fn start_auth(listener: TcpListener, settings: auth_svc::Settings) -> Server {
    spawn_server(listener, |listener, stop| {
        auth_svc::serve(listener, settings, stop)
    })
}

pub async fn start_posts(listener: TcpListener, settings: posts_svc::Settings) -> Server {
    spawn_server(listener, |listener, stop| {
        posts_svc::serve(listener, settings, stop)
    })
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

/// Both services on fresh storage, with clients for each.
pub struct TestApp {
    pub dir: TempDir,
    pub auth_server: Option<Server>,
    pub posts_server: Server,
    pub auth: AuthServiceClient<Channel>,
    pub posts: PostsServiceClient<Channel>,
    pub auth_settings: auth_svc::Settings,
    pub posts_database: DatabaseUrl,
}

type AuthKnob = Box<dyn FnOnce(&mut auth_svc::Settings, &TempDir)>;
type PostsKnob = Box<dyn FnOnce(&mut posts_svc::Settings)>;

/// Knobs a test may turn before the services start.
pub struct Options {
    pub auth: AuthKnob,
    pub posts: PostsKnob,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auth: Box::new(|_, _| {}),
            posts: Box::new(|_| {}),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut auth_settings = auth_svc::Settings::for_database(database(&dir, "auth").await);
    (options.auth)(&mut auth_settings, &dir);
    let auth_server = start_auth(bind(auth_settings.listen).await, auth_settings.clone()).await;

    let posts_database = database(&dir, "posts").await;
    let mut posts_settings =
        posts_svc::Settings::new(posts_database.clone(), format!("http://{}", auth_server.addr));
    (options.posts)(&mut posts_settings);
    let posts_server = start_posts(bind(posts_settings.listen).await, posts_settings).await;

    TestApp {
        auth: AuthServiceClient::new(channel(auth_server.addr)),
        posts: PostsServiceClient::new(channel(posts_server.addr)),
        auth_server: Some(auth_server),
        posts_server,
        auth_settings,
        posts_database,
        dir,
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

    /// Stops auth-svc, leaving posts-svc pointing at its (now closed) address.
    pub async fn stop_auth(&mut self) -> SocketAddr {
        let server = self.auth_server.take().expect("auth-svc running");
        let addr = server.addr;
        server.stop().await;
        addr
    }

    /// Starts auth-svc again on `addr` with the same storage and settings.
    pub async fn restart_auth(&mut self, addr: SocketAddr) {
        let server = start_auth(bind(addr).await, self.auth_settings.clone()).await;
        self.auth_server = Some(server);
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
