//! TLS, mutual TLS and connection limits, against the services started in-process as the binaries start
//! them (`Settings::transport`), with certificates from a CA each test makes.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore, SupportedProtocolVersion,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use tempfile::TempDir;
use tokio::{
    io::AsyncReadExt as _,
    net::{TcpListener, TcpStream},
};
use tokio_rustls::client::TlsStream;
use tonic::{
    Code,
    transport::{Channel, Endpoint, Uri},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use watchword::{
    pb::{
        auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
        posts::v1::{self as posts_pb, posts_service_client::PostsServiceClient},
    },
    reason::Reason,
    transport::{ClientTls, tls::dev::Ca},
};

use crate::helpers::{
    PASSWORD, Server, assert_code, assert_reason, bearer, database, start_auth, start_posts,
};

/// Longest any single wait here may take; the waits poll for an outcome, so this is only a backstop.
const PATIENCE: Duration = Duration::from_secs(30);

/// A CA and certificates issued by it, written into a temp dir.
struct Pki {
    dir: TempDir,
    ca: Ca,
}

/// A certificate and key on disk.
#[derive(Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("watchword test CA").unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Self { dir, ca }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate for `names`, written as `<file>.pem` and `<file>.key`.
    fn issue(&self, file: &str, names: &[&str]) -> Files {
        let files = Files {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        self.ca
            .issue(names)
            .unwrap()
            .write(&files.cert, &files.key)
            .unwrap();
        files
    }

    /// A server certificate for the loopback names clients use here.
    fn server(&self, file: &str) -> Files {
        self.issue(file, &["localhost", "127.0.0.1"])
    }
}

fn first_cert(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// auth-svc serving TLS with `server`, as `configure` further sets it.
async fn auth_with_tls(
    storage: &TempDir,
    server: &Files,
    configure: impl FnOnce(&mut auth_svc::Settings),
) -> Server {
    let mut settings = auth_svc::Settings::for_database(database(storage, "auth").await);
    settings.tls_cert = Some(server.cert.clone());
    settings.tls_key = Some(server.key.clone());
    configure(&mut settings);
    start_auth(listener().await, settings).await
}

/// A TLS channel to `addr` trusting `ca`, presenting `identity` if given.
fn tls_channel(addr: SocketAddr, ca: &Path, identity: Option<&Files>) -> Channel {
    let mut tls = ClientTls::builder().ca_file(ca);
    if let Some(files) = identity {
        tls = tls.identity_files(&files.cert, &files.key);
    }
    let tls = tls.build().unwrap();
    tls.connect_lazy(&format!("https://localhost:{}", addr.port()), |endpoint| {
        endpoint.timeout(Duration::from_secs(10))
    })
    .unwrap()
}

/// A raw TLS handshake with `addr` offering only `versions` and ALPN h2, trusting `ca`.
async fn handshake(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static SupportedProtocolVersion],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A channel over exactly one connection, `stream`: if that connection goes, so does the channel.
async fn channel_over(stream: TlsStream<TcpStream>) -> Channel {
    let slot = Arc::new(Mutex::new(Some(stream)));
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let stream = slot.lock().unwrap().take();
            async move {
                stream
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("this channel has one connection only"))
            }
        }))
        .await
        .unwrap()
}

/// The call failed for want of a connection: tonic reports a connection refused, closed or broken
/// during its set-up as one of these, never with a status from a server.
#[track_caller]
fn assert_no_connection<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    let status = result.expect_err("no connection, so no answer");
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
        ),
        "{status:?}"
    );
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await?;
    Ok(response.into_inner().status)
}

#[tokio::test]
async fn a_tls_port_speaks_tls_1_2_and_1_3_with_alpn_h2_and_refuses_plaintext() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |_| {}).await;

    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let stream = handshake(auth.addr, &pki.ca(), &[version]).await.unwrap();
        let (_, session) = stream.get_ref();
        assert_eq!(session.protocol_version(), Some(name));
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
        let presented = session.peer_certificates().unwrap()[0].to_vec();
        assert_eq!(presented, first_cert(&server_files.cert));
        assert_eq!(
            health(channel_over(stream).await).await.unwrap(),
            1,
            "SERVING over {name:?}"
        );
    }

    // gRPC through the library's TLS client.
    assert_eq!(health(tls_channel(auth.addr, &pki.ca(), None)).await.unwrap(), 1);

    // Plain HTTP/2 to the TLS port gets no answer.
    let plaintext = Endpoint::from_shared(format!("http://{}", auth.addr))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    assert_no_connection(health(plaintext).await);

    // A client that trusts another CA does not finish the handshake.
    let stranger = Pki::new();
    assert!(
        handshake(auth.addr, &stranger.ca(), &[&rustls::version::TLS13])
            .await
            .is_err()
    );
    auth.stop().await;
}

#[tokio::test]
async fn a_replaced_certificate_reaches_new_handshakes_while_open_connections_keep_working() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |_| {}).await;
    let old = first_cert(&server_files.cert);

    // One connection made with the old certificate, used before and after the rotation.
    let stream = handshake(auth.addr, &pki.ca(), &[&rustls::version::TLS13])
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap()[0].to_vec(), old);
    let open = channel_over(stream).await;
    assert_eq!(health(open.clone()).await.unwrap(), 1);

    // Rotate: a new pair in the same files, then SIGHUP (the 5 s check would find it too).
    let rotated = pki.server("rotated");
    std::fs::copy(&rotated.cert, &server_files.cert).unwrap();
    std::fs::copy(&rotated.key, &server_files.key).unwrap();
    let new = first_cert(&server_files.cert);
    assert_ne!(new, old);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stream = handshake(auth.addr, &pki.ca(), &[&rustls::version::TLS13])
            .await
            .unwrap();
        if stream.get_ref().1.peer_certificates().unwrap()[0].to_vec() == new {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new handshakes still get the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        health(open).await.unwrap(),
        1,
        "the connection opened before the rotation keeps working"
    );
    auth.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_dropped_without_holding_up_others() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |settings| {
        settings.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;

    // Connects and says nothing.
    let mut silent = TcpStream::connect(auth.addr).await.unwrap();
    // Others are served meanwhile: each handshake has its own task.
    assert_eq!(health(tls_channel(auth.addr, &pki.ca(), None)).await.unwrap(), 1);
    // The silent one is closed by the server: its read ends (EOF or reset) instead of waiting forever.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut byte))
        .await
        .expect("the server closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    auth.stop().await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_until_one_goes() {
    let storage = tempfile::tempdir().unwrap();
    let mut settings = auth_svc::Settings::for_database(database(&storage, "auth").await);
    settings.max_connections = 2;
    let auth = start_auth(listener().await, settings).await;
    let plain = |addr: SocketAddr| {
        Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect_lazy()
    };
    let (first, second) = (plain(auth.addr), plain(auth.addr));
    assert_eq!(health(first.clone()).await.unwrap(), 1);
    assert_eq!(health(second.clone()).await.unwrap(), 1);

    // A third connection is closed at once.
    let mut third = TcpStream::connect(auth.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, third.read(&mut byte))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_no_connection(health(plain(auth.addr)).await);

    // When one of the two closes, a new connection is served.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while health(plain(auth.addr)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection served after one closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(second).await.unwrap(), 1);
    auth.stop().await;
}

#[tokio::test]
async fn a_connection_past_its_age_gets_goaway_its_streams_a_drain_and_then_it_is_closed() {
    // The transport alone, with ages far below the flag's range, in front of a health service.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let transport = watchword::transport::Transport::plaintext()
        .max_connection_age(Duration::from_millis(500))
        .max_connection_age_grace(Duration::from_millis(500));
    let router =
        watchword::server::builder_for(&transport, watchword::observe::ObserveLayer::disabled(), &[])
            .add_service(health_service);
    let listener = listener().await;
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        watchword::server::serve(
            router,
            listener,
            &transport,
            async { drop(stop_rx.await) },
            Duration::from_secs(5),
        )
        .await
    });

    // One connection only: once the server sends it away, this channel cannot reconnect.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let slot = Arc::new(Mutex::new(Some(tcp)));
    let channel = Endpoint::from_static("http://localhost")
        .timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let tcp = slot.lock().unwrap().take();
            async move {
                tcp.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("one connection only"))
            }
        }))
        .await
        .unwrap();
    // A stream that never ends by itself, opened before the connection's age.
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());

    // After the age: GOAWAY, so new calls find no connection...
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while health(channel.clone()).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection was never sent away"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...while the stream in flight lives on until the drain is over, then the connection is closed.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the lingering stream is cut after the drain");
    assert!(
        ended.is_err() || ended.as_ref().is_ok_and(Option::is_none),
        "{ended:?}"
    );

    let _ = stop_tx.send(());
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn internal_rpcs_need_a_client_certificate_and_one_of_the_allowed_names() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let posts_identity = pki.issue("posts", &["posts-svc.test"]);
    let other_identity = pki.issue("other", &["other-svc.test"]);
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |settings| {
        settings.tls_client_ca = Some(pki.ca());
        settings.internal_clients = vec!["posts-svc.test".to_owned()];
    })
    .await;

    // End users need no certificate.
    let anonymous = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), None));
    anonymous
        .clone()
        .register(auth_pb::RegisterRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let token = anonymous
        .clone()
        .login(auth_pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let validate = |client: &AuthServiceClient<Channel>| {
        let mut client = client.clone();
        let token = token.clone();
        async move { client.validate(auth_pb::ValidateRequest { token }).await }
    };
    let watch = |client: &AuthServiceClient<Channel>| {
        let mut client = client.clone();
        async move {
            client
                .watch_revocations(auth_pb::WatchRevocationsRequest {})
                .await
        }
    };

    // Internal RPCs: no certificate.
    assert_reason(
        validate(&anonymous).await,
        Code::Unauthenticated,
        Reason::ClientCertRequired,
    );
    assert_reason(
        watch(&anonymous).await,
        Code::Unauthenticated,
        Reason::ClientCertRequired,
    );

    // A certificate from the CA, but not for an allowed name.
    let other = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), Some(&other_identity)));
    assert_reason(
        validate(&other).await,
        Code::PermissionDenied,
        Reason::CallerNotAllowed,
    );
    assert_reason(
        watch(&other).await,
        Code::PermissionDenied,
        Reason::CallerNotAllowed,
    );

    // The allowed service.
    let posts = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), Some(&posts_identity)));
    let claims = validate(&posts).await.unwrap().into_inner().claims.unwrap();
    assert_eq!(claims.username, "alice");
    let mut stream = watch(&posts).await.unwrap().into_inner();
    assert!(
        stream.message().await.unwrap().is_some(),
        "the revocation stream flows"
    );

    // Envoy's Check is internal too: the gateway presents a certificate like any service.
    let check = |identity: Option<&_>| {
        let channel = tls_channel(auth.addr, &pki.ca(), identity);
        async move {
            envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel)
                .check(envoy_types::pb::envoy::service::auth::v3::CheckRequest::default())
                .await
        }
    };
    assert_reason(
        check(None).await,
        Code::Unauthenticated,
        Reason::ClientCertRequired,
    );
    assert_reason(
        check(Some(&other_identity)).await,
        Code::PermissionDenied,
        Reason::CallerNotAllowed,
    );
    check(Some(&posts_identity)).await.unwrap();

    // A certificate from another CA does not get through the handshake at all.
    let stranger = Pki::new();
    let forged = stranger.issue("posts", &["posts-svc.test"]);
    let forged = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), Some(&forged)));
    assert_no_connection(validate(&forged).await);
    auth.stop().await;
}

#[tokio::test]
async fn per_address_limits_still_see_the_client_address_over_tls() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |settings| {
        settings.peer_rate = 0.01;
        settings.peer_burst = 1;
    })
    .await;
    let client = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), None));
    let register = |name: &str| {
        let mut client = client.clone();
        let request = auth_pb::RegisterRequest {
            username: name.into(),
            password: PASSWORD.into(),
        };
        async move { client.register(request).await }
    };
    register("first").await.unwrap();
    assert_reason(
        register("second").await,
        Code::ResourceExhausted,
        Reason::RateLimited,
    );
    auth.stop().await;
}

/// posts-svc serving TLS, reaching auth-svc at `https://localhost` with `identity` (if any).
async fn posts_over_tls(storage: &TempDir, pki: &Pki, auth: &Server, identity: Option<&Files>) -> Server {
    let server_files = pki.server("posts-server");
    let mut settings = posts_svc::Settings::new(
        database(storage, "posts").await,
        format!("https://localhost:{}", auth.addr.port()),
    );
    settings.tls_cert = Some(server_files.cert);
    settings.tls_key = Some(server_files.key);
    settings.auth_ca = Some(pki.ca());
    if let Some(files) = identity {
        settings.auth_client_cert = Some(files.cert.clone());
        settings.auth_client_key = Some(files.key.clone());
    }
    start_posts(listener().await, settings).await
}

#[tokio::test]
async fn posts_svc_has_tokens_validated_by_auth_svc_over_mutual_tls() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |settings| {
        settings.tls_client_ca = Some(pki.ca());
        settings.internal_clients = vec!["posts-svc.test".to_owned()];
    })
    .await;
    let identity = pki.issue("posts-client", &["posts-svc.test"]);
    let posts_server = posts_over_tls(&storage, &pki, &auth, Some(&identity)).await;

    let auth_client = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), None));
    auth_client
        .clone()
        .register(auth_pb::RegisterRequest {
            username: "bob".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let token = auth_client
        .clone()
        .login(auth_pb::LoginRequest {
            username: "bob".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let posts = PostsServiceClient::new(tls_channel(posts_server.addr, &pki.ca(), None));
    let created = posts
        .clone()
        .create_post(bearer(
            posts_pb::CreatePostRequest {
                title: "Over TLS".into(),
                body: "validated through mutual TLS".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .post
        .unwrap();
    assert_eq!(created.title, "Over TLS");

    // The revocation stream runs over the same mutual TLS: a logout is enforced at once.
    auth_client
        .clone()
        .logout(bearer(auth_pb::LogoutRequest::default(), &token))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let listed = posts
            .clone()
            .list_posts(bearer(posts_pb::ListPostsRequest::default(), &token))
            .await;
        match listed {
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "logout never enforced"),
            Err(status) => {
                assert_eq!(
                    watchword::reason::of(&status),
                    Some(Reason::TokenRevoked),
                    "{status:?}"
                );
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    posts_server.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn posts_svc_without_a_client_certificate_fails_closed() {
    let pki = Pki::new();
    let server_files = pki.server("auth");
    let storage = tempfile::tempdir().unwrap();
    let auth = auth_with_tls(&storage, &server_files, |settings| {
        settings.tls_client_ca = Some(pki.ca());
    })
    .await;
    let posts_server = posts_over_tls(&storage, &pki, &auth, None).await;
    let auth_client = AuthServiceClient::new(tls_channel(auth.addr, &pki.ca(), None));
    auth_client
        .clone()
        .register(auth_pb::RegisterRequest {
            username: "carol".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let token = auth_client
        .clone()
        .login(auth_pb::LoginRequest {
            username: "carol".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let posts = PostsServiceClient::new(tls_channel(posts_server.addr, &pki.ca(), None));
    // auth-svc refuses posts-svc, not the caller: UNAVAILABLE, never the refusal passed on as the token's.
    let status = assert_code(
        posts
            .clone()
            .list_posts(bearer(posts_pb::ListPostsRequest::default(), &token))
            .await,
        Code::Unavailable,
    );
    assert_eq!(
        watchword::reason::of(&status),
        Some(Reason::AuthUnavailable),
        "{status:?}"
    );
    posts_server.stop().await;
    auth.stop().await;
}
