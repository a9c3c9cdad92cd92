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

use crate::helpers::*;

#[tokio::test]
async fn two_auth_and_two_posts_replicas_on_one_postgres_behave_as_one_service() {
    if std::env::var("WATCHWORD_TEST_DATABASE_URL").is_err() {
        eprintln!("skipped: replicas need WATCHWORD_TEST_DATABASE_URL (PostgreSQL); .ci/run sets it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (auth_db, posts_db) = (database(&dir, "auth").await, database(&dir, "posts").await);
    let mut auth_settings = auth_svc::Settings::for_database(auth_db);
    auth_settings.refresh_reuse_grace = Duration::ZERO;
    auth_settings.peer_rate = 0.0;
    let listen = || TcpListener::bind("127.0.0.1:0");
    let auth_a = start_auth(listen().await.unwrap(), auth_settings.clone()).await;
    let auth_b = start_auth(listen().await.unwrap(), auth_settings.clone()).await;
    let posts_for = |auth: &Server| {
        let mut settings = posts_svc::Settings::new(posts_db.clone(), format!("http://{}", auth.addr));
        settings.validate_cache_ttl = Duration::from_secs(60);
        settings
    };
    let posts_a = start_posts(listen().await.unwrap(), posts_for(&auth_a)).await;
    let posts_b = start_posts(listen().await.unwrap(), posts_for(&auth_b)).await;
    let (mut a, mut b) = (
        AuthServiceClient::new(channel(auth_a.addr)),
        AuthServiceClient::new(channel(auth_b.addr)),
    );
    let (pa, pb_) = (
        PostsServiceClient::new(channel(posts_a.addr)),
        PostsServiceClient::new(channel(posts_b.addr)),
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
    a.rotate_signing_key(bearer(pb::RotateSigningKeyRequest {}, &root))
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
    for server in [posts_a, posts_b, auth_a, auth_b] {
        server.stop().await;
    }
}
