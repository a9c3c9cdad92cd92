use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tonic::{Code, Request, metadata::MetadataValue};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use watchword::pb::posts::v1::{self as pb, posts_service_client::PostsServiceClient};

use crate::helpers::*;

#[tokio::test]
async fn every_posts_rpc_without_a_token_is_unauthenticated() {
    let app = spawn_app().await;
    let mut posts = app.posts.clone();
    let id = "0195f3a4-0000-7000-8000-000000000001".to_owned();
    let results = [
        posts
            .create_post(pb::CreatePostRequest::default())
            .await
            .map(drop),
        posts.list_posts(pb::ListPostsRequest::default()).await.map(drop),
        posts
            .get_post(pb::GetPostRequest { id: id.clone() })
            .await
            .map(drop),
        posts.delete_post(pb::DeletePostRequest { id }).await.map(drop),
    ];
    for result in results {
        assert_code(result, Code::Unauthenticated);
    }
}

#[tokio::test]
async fn unusable_authorization_metadata_is_refused_without_asking_auth_svc() {
    let mut app = spawn_app().await;
    let token = app.login_as("alice").await;
    // With auth-svc gone, any call that reached it would be UNAVAILABLE: UNAUTHENTICATED proves it was not asked.
    app.stop_auth().await;
    let values: [&[u8]; 7] = [
        b"Bearer",
        b"Bearer ",
        b"Basic YWxpY2U6cGFzc3dvcmQ=",
        b"Token abc",
        b"bearer\ttoken",
        b"Bearer \xc3\xa9\xc3\xa9",
        b"Bearer a\"b",
    ];
    for value in values {
        let mut request = Request::new(pb::ListPostsRequest::default());
        request
            .metadata_mut()
            .insert("authorization", MetadataValue::try_from(value).unwrap());
        let result = app.posts.clone().list_posts(request).await;
        assert_code(result, Code::Unauthenticated);
    }
    // Two authorization entries are ambiguous, even if both are the same valid token.
    let mut request = bearer(pb::ListPostsRequest::default(), &token);
    request.metadata_mut().append(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    assert_code(app.posts.clone().list_posts(request).await, Code::Unauthenticated);
    let oversized = "a".repeat(9 * 1024);
    assert_code(
        app.posts
            .clone()
            .list_posts(bearer(pb::ListPostsRequest::default(), &oversized))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn a_token_rejected_by_auth_svc_is_unauthenticated() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let tampered = format!("{}x", &token[..token.len() - 1]);
    assert_code(
        app.list_posts(&tampered, Default::default()).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.list_posts("a.b.c", Default::default()).await,
        Code::Unauthenticated,
    );
    app.list_posts(&token, Default::default()).await.unwrap();
}

#[tokio::test]
async fn a_token_signed_by_another_auth_svc_is_rejected() {
    let app = spawn_app().await;
    let other = spawn_app().await;
    let foreign = other.login_as("alice").await;
    assert_code(app.validate(&foreign).await, Code::Unauthenticated);
    assert_code(app.create_post(&foreign, "t", "b").await, Code::Unauthenticated);
}

#[tokio::test]
async fn auth_svc_down_fails_closed_and_recovers_after_restart() {
    let mut app = spawn_app().await;
    let token = app.login_as("alice").await;
    app.create_post(&token, "before", "body").await.unwrap();

    let addr = app.stop_auth().await;
    for _ in 0..3 {
        assert_code(
            app.list_posts(&token, Default::default()).await,
            Code::Unavailable,
        );
        assert_code(app.create_post(&token, "during", "body").await, Code::Unavailable);
    }

    app.restart_auth(addr).await;
    // The channel reconnects with backoff, so recovery is eventual: poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match app.list_posts(&token, Default::default()).await {
            Ok(page) => {
                let titles: Vec<_> = page.posts.iter().map(|p| p.title.as_str()).collect();
                assert_eq!(titles, ["before"], "nothing was written while auth-svc was down");
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "posts-svc did not recover: {status:?}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// auth-svc answering Validate with an error (not a verdict) fails the call closed, and calls succeed again
/// once it answers; no error is ever cached.
#[tokio::test]
async fn an_erroring_validate_fails_closed_and_is_never_cached() {
    let app = TestApp::builder()
        .proxied()
        .cache_ttl(Duration::ZERO)
        .start()
        .await;
    let proxy = app.proxy.as_ref().unwrap();
    let token = app.login_as("alice").await;
    app.list_posts(&token, Default::default()).await.unwrap();
    proxy.fail_validate(true);
    for _ in 0..3 {
        assert_reason(
            app.list_posts(&token, Default::default()).await,
            Code::Unavailable,
            watchword::reason::Reason::AuthUnavailable,
        );
    }
    proxy.fail_validate(false);
    let before = proxy.validates();
    app.list_posts(&token, Default::default()).await.unwrap();
    assert_eq!(proxy.validates(), before + 1, "asked auth-svc again");
}

#[tokio::test]
async fn an_auth_svc_that_never_answers_is_unavailable_within_the_timeout() {
    // Accepts connections and then says nothing, like a frozen process.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let app = TestApp::builder()
        .posts(move |settings| {
            settings.auth_url = format!("http://{silent_addr}");
            settings.auth_timeout = Duration::from_millis(300);
        })
        .start()
        .await;
    let token = app.login_as("alice").await;
    let started = Instant::now();
    assert_code(
        app.list_posts(&token, Default::default()).await,
        Code::Unavailable,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    holder.abort();
}

#[tokio::test]
async fn health_and_reflection_need_no_token() {
    let app = spawn_app().await;
    let auth_addr = app.auth_addr();
    for (addr, service) in [
        (auth_addr, "auth.v1.AuthService"),
        (app.posts_addr(), "posts.v1.PostsService"),
        (auth_addr, ""),
        (app.posts_addr(), ""),
    ] {
        let mut health = HealthClient::new(channel(addr));
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?} on {addr}");
    }
    let mut health = HealthClient::new(channel(app.posts_addr()));
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.v1.Nope".into(),
        })
        .await;
    assert_code(unknown, Code::NotFound);

    let services = reflection_services(app.posts_addr()).await;
    assert!(
        services.contains(&"posts.v1.PostsService".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );
    let services = reflection_services(auth_addr).await;
    assert!(
        services.contains(&"auth.v1.AuthService".to_owned()),
        "{services:?}"
    );
}

async fn reflection_services(addr: std::net::SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(channel(addr));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

#[tokio::test]
async fn a_guarded_handler_sees_the_caller_from_the_token_only() {
    let app = spawn_app().await;
    let alice = app.login_as("alice").await;
    let mut client = PostsServiceClient::new(channel(app.posts_addr()));
    let mut request = bearer(
        pb::CreatePostRequest {
            title: "t".into(),
            body: "b".into(),
            ..Default::default()
        },
        &alice,
    );
    // Metadata that claims another identity is ignored.
    request
        .metadata_mut()
        .insert("x-user-id", MetadataValue::from_static("someone-else"));
    let post = client
        .create_post(request)
        .await
        .unwrap()
        .into_inner()
        .post
        .unwrap();
    assert_eq!(post.author_username, "alice");
}
