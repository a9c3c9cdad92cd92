//! Several replicas of each service on one PostgreSQL database: they share users, sessions, refresh
//! tokens and keys, and a revocation made through one auth-svc reaches guards attached to another.
//! Runs when `WATCHWORD_TEST_DATABASE_URL` names a PostgreSQL database (CI sets it); SQLite has no replicas.

use std::time::Duration;

use tokio::net::TcpListener;
use watchword::{
    pb::{
        auth::v1::{self as pb, auth_service_client::AuthServiceClient},
        posts::v1::{CreatePostRequest, ListPostsRequest, posts_service_client::PostsServiceClient},
    },
    reason::Reason,
};
use watchword_db::postgres::tokio_postgres::NoTls;

use crate::helpers::*;

#[tokio::test]
async fn two_auth_and_two_posts_replicas_on_one_postgres_behave_as_one_service() {
    let Some(app) = TestApp::builder()
        .auth_replicas(2)
        .no_peer_limit()
        .auth(|settings| settings.refresh_reuse_grace = Duration::ZERO)
        .cache_ttl(Duration::from_secs(60))
        .try_start()
        .await
    else {
        return;
    };
    let auth_settings = app.auth_settings.clone();
    let client = |servers: &[Server], i: usize| channel(servers[i].addr);
    let (mut a, mut b) = (
        AuthServiceClient::new(client(&app.auth_servers, 0)),
        AuthServiceClient::new(client(&app.auth_servers, 1)),
    );
    let (pa, pb_) = (
        PostsServiceClient::new(client(&app.posts_servers, 0)),
        PostsServiceClient::new(client(&app.posts_servers, 1)),
    );

    // A user registered on A logs in on B; a token issued by A validates on B.
    a.register(pb::RegisterRequest {
        username: "alice".into(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    let login = |client: &mut AuthServiceClient<_>| {
        let mut client = client.clone();
        async move {
            let request = pb::LoginRequest {
                username: "alice".into(),
                password: PASSWORD.into(),
                ..Default::default()
            };
            client.login(request).await.unwrap().into_inner()
        }
    };
    let from_a = login(&mut a).await;
    login(&mut b).await;
    let validate = |client: &AuthServiceClient<_>, token: &str| {
        let (mut client, token) = (client.clone(), token.to_owned());
        async move { client.validate(pb::ValidateRequest { token }).await }
    };
    validate(&b, &from_a.access_token)
        .await
        .expect("A's token validates on B");

    // Posts written through one posts-svc replica are read through the other.
    let create = CreatePostRequest {
        title: "shared".into(),
        body: "body".into(),
        ..Default::default()
    };
    pa.clone()
        .create_post(bearer(create, &from_a.access_token))
        .await
        .unwrap();
    let listed = pb_
        .clone()
        .list_posts(bearer(ListPostsRequest::default(), &from_a.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.posts.len(), 1);

    // A refresh token rotated on A cannot be reused on B (and the reuse ends the session).
    let rotated = a
        .refresh(pb::RefreshRequest {
            refresh_token: from_a.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let reuse = b
        .refresh(pb::RefreshRequest {
            refresh_token: from_a.refresh_token.clone(),
        })
        .await;
    assert_reason(reuse, tonic::Code::Unauthenticated, Reason::TokenRevoked);
    assert_reason(
        validate(&a, &rotated.access_token).await,
        tonic::Code::Unauthenticated,
        Reason::TokenRevoked,
    );

    // A key rotated on A signs tokens that B accepts.
    auth_svc::bootstrap_admin(&auth_settings, "root", PASSWORD.to_owned())
        .await
        .unwrap();
    let root = a
        .login(pb::LoginRequest {
            username: "root".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    a.rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await
        .unwrap();
    let fresh = login(&mut a).await;
    validate(&b, &fresh.access_token)
        .await
        .expect("B uses the key rotated in on A");

    // Logout through A is enforced by posts-svc B (which talks to auth B, with a 60 s cache) within 1 s.
    let token = fresh.access_token.clone();
    for _ in 0..3 {
        pb_.clone()
            .list_posts(bearer(ListPostsRequest::default(), &token))
            .await
            .unwrap();
    }
    a.logout(bearer(pb::LogoutRequest::default(), &token))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        match pb_
            .clone()
            .list_posts(bearer(ListPostsRequest::default(), &token))
            .await
        {
            Err(status) => {
                assert_eq!(
                    watchword::reason::of(&status),
                    Some(Reason::TokenRevoked),
                    "{status:?}"
                );
                break;
            }
            Ok(_) => assert!(
                started.elapsed() < Duration::from_secs(1),
                "still accepted on B after 1 s"
            ),
        }
        tokio::task::yield_now().await;
    }
    println!(
        "logout on auth A enforced by posts B after {:?}",
        started.elapsed()
    );
    for server in app.posts_servers.into_iter().chain(app.auth_servers) {
        server.stop().await;
    }
}

/// The PostgreSQL database a test app's service uses (its URL names a schema of its own), for tests that
/// reach into it: a raw client, and the schema's name.
async fn raw_client(
    url: &watchword_db::DatabaseUrl,
) -> (watchword_db::postgres::tokio_postgres::Client, String) {
    let watchword_db::DatabaseUrl::Postgres(url) = url else {
        panic!("a PostgreSQL URL")
    };
    let (client, connection) = watchword_db::postgres::tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    let schema = url.rsplit("search_path%3D").next().unwrap().to_owned();
    (client, schema)
}

/// Reads `stream` until its first heartbeat: the end of the snapshot.
async fn past_snapshot(stream: &mut tonic::Streaming<pb::WatchRevocationsResponse>) {
    while let Some(event) = stream.message().await.unwrap() {
        if event.target.is_none() {
            return;
        }
    }
    panic!("the revocation stream ended before its snapshot did");
}

/// A revocation whose transaction commits long after it was written (here 2.5 s, longer than the 2 s
/// overlap the relay used to poll with) is still relayed by the other replicas: they read the log by id,
/// and ids are handed out in commit order.
#[tokio::test]
async fn a_revocation_committed_late_is_still_relayed_by_other_replicas() {
    let Some(app) = TestApp::builder()
        .auth_replicas(2)
        .no_peer_limit()
        .try_start()
        .await
    else {
        return;
    };
    let auth_db = app.auth_settings.database_url.clone();
    let (a, b) = (
        app.auth.clone(),
        AuthServiceClient::new(channel(app.auth_servers[1].addr)),
    );
    a.clone()
        .register(pb::RegisterRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let login = a
        .clone()
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut stream = b
        .clone()
        .watch_revocations(pb::WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    past_snapshot(&mut stream).await;

    // A replica that stored a revocation and then took its time to commit it, as auth-svc's store writes
    // one: the log row under the log's lock, and the session.
    let (client, _) = raw_client(&auth_db).await;
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtext('revocation'))")
        .await
        .unwrap();
    let now_us = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    client
        .execute(
            "INSERT INTO revocation (target_kind, target_id, reason, revoke_time_us)
             VALUES ('session', $1, 'TOKEN_REVOKED', $2)",
            &[&login.session_id, &now_us],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE sessions SET revoke_time_us = $2 WHERE id = $1",
            &[&login.session_id, &now_us],
        )
        .await
        .unwrap();
    // Holding the commit back is the point of this test: nothing to poll for while it is held.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client.batch_execute("COMMIT").await.unwrap();
    let committed = std::time::Instant::now();

    let relayed = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let event = stream.message().await.unwrap().expect("stream open");
            if event.target
                == Some(pb::watch_revocations_response::Target::SessionId(
                    login.session_id.clone(),
                ))
            {
                return;
            }
        }
    })
    .await;
    assert!(relayed.is_ok(), "replica B never relayed the late revocation");
    println!(
        "late revocation relayed by B {:?} after its commit",
        committed.elapsed()
    );
    assert_reason(
        b.clone()
            .validate(pb::ValidateRequest {
                token: login.access_token.clone(),
            })
            .await,
        tonic::Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    drop(stream);
    for server in app.posts_servers.into_iter().chain(app.auth_servers) {
        server.stop().await;
    }
}

/// Two auth-svc replicas, one cut off from the database. A logout through the other is never accepted
/// more than a second later by the posts-svc replicas behind the cut-off one, in any validation mode: the
/// cut-off replica stops vouching (its revocation streams end), so their guards drop what they cached and
/// ask it, and it cannot answer either.
#[tokio::test]
async fn a_replica_cut_off_from_the_database_stops_vouching_for_revoked_tokens() {
    let Ok(base) = std::env::var("WATCHWORD_TEST_DATABASE_URL") else {
        eprintln!("skipped: replicas need WATCHWORD_TEST_DATABASE_URL (PostgreSQL); .ci/run sets it");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let auth_db = database(&dir, "auth").await;
    let posts_db = database(&dir, "posts").await;
    let mut settings = auth_svc::Settings::for_database(auth_db.clone());
    settings.peer_rate = 0.0;
    let listen = || TcpListener::bind("127.0.0.1:0");
    let auth_a = start_auth(listen().await.unwrap(), settings.clone()).await;
    // A answers once it has migrated the schema that B is then given access to.
    let a = AuthServiceClient::new(channel(auth_a.addr));
    a.clone()
        .register(pb::RegisterRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();

    // Replica B logs in as a role of its own, so it alone can be cut off.
    let (admin, schema) = raw_client(&auth_db).await;
    let role = format!("cut_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'cut-off'; GRANT USAGE, CREATE ON SCHEMA {schema} TO {role};
             GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role};"
        ))
        .await
        .unwrap();
    let watchword_db::DatabaseUrl::Postgres(url) = &auth_db else {
        unreachable!()
    };
    let after_userinfo = url.split_once("://").unwrap().1;
    let host_and_rest = after_userinfo
        .rsplit_once('@')
        .map_or(after_userinfo, |(_, rest)| rest);
    let mut settings_b = settings.clone();
    settings_b.database_url =
        watchword_db::DatabaseUrl::Postgres(format!("postgres://{role}:cut-off@{host_and_rest}"));
    let auth_b = start_auth(listen().await.unwrap(), settings_b).await;

    let modes = [
        (posts_svc::VerifyMode::Remote, Duration::ZERO),
        (posts_svc::VerifyMode::Remote, Duration::from_secs(60)),
        (posts_svc::VerifyMode::Local, Duration::from_secs(60)),
    ];
    let mut posts = Vec::new();
    for (verify, ttl) in modes {
        let mut settings = posts_svc::Settings::new(posts_db.clone(), format!("http://{}", auth_b.addr));
        (settings.verify, settings.validate_cache_ttl) = (verify, ttl);
        posts.push(start_posts(listen().await.unwrap(), settings).await);
    }
    let token = a
        .clone()
        .login(pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let list = |addr: std::net::SocketAddr| {
        let token = token.clone();
        async move {
            PostsServiceClient::new(channel(addr))
                .list_posts(bearer(ListPostsRequest::default(), &token))
                .await
        }
    };
    for server in &posts {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Err(status) = list(server.addr).await {
            assert!(
                std::time::Instant::now() < deadline,
                "posts-svc never accepted the token: {status:?}"
            );
        }
    }

    // Cut B off, then log out through A.
    admin
        .batch_execute(&format!(
            "ALTER ROLE {role} NOLOGIN;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}';"
        ))
        .await
        .unwrap();
    a.clone()
        .logout(bearer(pb::LogoutRequest::default(), &token))
        .await
        .unwrap();
    let logged_out = std::time::Instant::now();
    for (server, mode) in posts.iter().zip(modes) {
        loop {
            match list(server.addr).await {
                Err(status) => {
                    assert!(
                        matches!(
                            status.code(),
                            tonic::Code::Unauthenticated | tonic::Code::Unavailable
                        ),
                        "{mode:?}: {status:?}"
                    );
                    break;
                }
                Ok(_) => assert!(
                    logged_out.elapsed() < Duration::from_secs(1),
                    "{mode:?}: the logged-out token was still accepted behind the cut-off replica after 1 s"
                ),
            }
            tokio::task::yield_now().await;
        }
        println!(
            "{mode:?}: refused behind the cut-off replica {:?} after the logout",
            logged_out.elapsed()
        );
    }
    for server in posts {
        server.stop().await;
    }
    for server in [auth_a, auth_b] {
        server.stop().await;
    }
    let _ = base;
    let _ = admin
        .batch_execute(&format!(
            "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role};
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role};
             REVOKE ALL ON SCHEMA {schema} FROM {role}; DROP ROLE {role};"
        ))
        .await;
}

/// An API key created on one replica exchanges on another, and revoking it on the first ends its tokens
/// at the other's guard (local mode: only the relayed revocation can stop it) within a second.
#[tokio::test]
async fn an_api_key_revoked_on_one_replica_is_refused_behind_every_replica_within_a_second() {
    let Some(app) = TestApp::builder()
        .auth_replicas(2)
        .no_peer_limit()
        .verify(posts_svc::VerifyMode::Local)
        .try_start()
        .await
    else {
        return;
    };
    let token = app.login_as("alice").await;
    let created = app.create_api_key(&token, "bot", &[], None).await.unwrap();
    let mut b = AuthServiceClient::new(channel(app.auth_servers[1].addr));
    let exchanged = b
        .exchange_api_key(pb::ExchangeApiKeyRequest {
            api_key: created.secret.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let posts_b = PostsServiceClient::new(channel(app.posts_servers[1].addr));
    let list = |mut posts: PostsServiceClient<_>, token: String| async move {
        posts
            .list_posts(bearer(ListPostsRequest::default(), &token))
            .await
    };
    list(posts_b.clone(), exchanged.access_token.clone())
        .await
        .unwrap();

    app.revoke_api_key(&token, &created.api_key.unwrap().id)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match list(posts_b.clone(), exchanged.access_token.clone()).await {
            Err(status) => {
                assert_eq!(
                    watchword::reason::of(&status),
                    Some(Reason::TokenRevoked),
                    "{status:?}"
                );
                break;
            }
            Ok(_) => assert!(
                std::time::Instant::now() < deadline,
                "still accepted behind replica B"
            ),
        }
        tokio::task::yield_now().await;
    }
    let again = b
        .exchange_api_key(pb::ExchangeApiKeyRequest {
            api_key: created.secret,
        })
        .await;
    assert_reason(again, tonic::Code::Unauthenticated, Reason::TokenRevoked);
}
