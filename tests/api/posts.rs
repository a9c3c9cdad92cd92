use std::collections::HashSet;

use tonic::Code;
use watchword::pb::posts::v1::{self as pb, ListPostsRequest};

use crate::helpers::*;

fn page(size: i32, token: &str) -> ListPostsRequest {
    ListPostsRequest {
        page_size: size,
        page_token: token.into(),
        author_id: None,
    }
}

#[tokio::test]
async fn create_post_takes_the_author_from_the_token() {
    let app = spawn_app().await;
    let alice = app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;
    let post = app.create_post(&token, "Hello", "First post").await.unwrap();
    assert_eq!(post.author_id, alice.id);
    assert_eq!(post.author_username, "alice");
    assert_eq!((post.title.as_str(), post.body.as_str()), ("Hello", "First post"));
    assert!(post.create_time.is_some());
    assert_eq!(app.get_post(&token, &post.id).await.unwrap(), post);
}

#[tokio::test]
async fn create_post_names_the_offending_field() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let long_title = "t".repeat(201);
    let long_body = "b".repeat(10_001);
    for (title, body, field) in [
        ("", "body", "title"),
        ("   ", "body", "title"),
        (long_title.as_str(), "body", "title"),
        ("title", "", "body"),
        ("title", " \n\t", "body"),
        ("title", long_body.as_str(), "body"),
    ] {
        let status = assert_code(app.create_post(&token, title, body).await, Code::InvalidArgument);
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    // The limits are in characters, not bytes.
    app.create_post(&token, &"é".repeat(200), &"ü".repeat(10_000))
        .await
        .unwrap();
}

#[tokio::test]
async fn list_posts_pages_newest_first_and_tokens_survive_inserts() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(
            app.create_post(&token, &format!("post {i}"), "body")
                .await
                .unwrap()
                .id,
        );
    }
    let first = app.list_posts(&token, page(3, "")).await.unwrap();
    let titles: Vec<_> = first.posts.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["post 6", "post 5", "post 4"]);
    assert!(!first.next_page_token.is_empty());

    // A post added between pages must not shift or repeat what comes next.
    app.create_post(&token, "post 7", "body").await.unwrap();

    let mut seen: Vec<String> = first.posts.into_iter().map(|p| p.id).collect();
    let mut next = first.next_page_token;
    let mut pages = 1;
    while !next.is_empty() {
        let response = app.list_posts(&token, page(3, &next)).await.unwrap();
        assert!(!response.posts.is_empty());
        seen.extend(response.posts.into_iter().map(|p| p.id));
        next = response.next_page_token;
        pages += 1;
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created);

    let newest = app.list_posts(&token, page(1, "")).await.unwrap();
    assert_eq!(newest.posts[0].title, "post 7");
}

#[tokio::test]
async fn list_posts_page_size_follows_aip_158() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    for i in 0..105 {
        app.create_post(&token, &format!("p{i}"), "b").await.unwrap();
    }
    assert_eq!(app.list_posts(&token, page(0, "")).await.unwrap().posts.len(), 20);
    let capped = app.list_posts(&token, page(1000, "")).await.unwrap();
    assert_eq!(capped.posts.len(), 100);
    assert!(!capped.next_page_token.is_empty());
    let rest = app
        .list_posts(&token, page(1000, &capped.next_page_token))
        .await
        .unwrap();
    assert_eq!(rest.posts.len(), 5);
    assert!(rest.next_page_token.is_empty(), "an empty token marks the end");
    assert_code(app.list_posts(&token, page(-1, "")).await, Code::InvalidArgument);
}

#[tokio::test]
async fn list_posts_filters_by_author_and_binds_tokens_to_the_filter() {
    let app = spawn_app().await;
    let alice = app.login_as("alice").await;
    let bob = app.login_as("bob").await;
    let bob_id = app.validate(&bob).await.unwrap().subject;
    for i in 0..3 {
        app.create_post(&alice, &format!("a{i}"), "b").await.unwrap();
        app.create_post(&bob, &format!("b{i}"), "b").await.unwrap();
    }
    let by_bob = |size, token: &str| ListPostsRequest {
        page_size: size,
        page_token: token.into(),
        author_id: Some(bob_id.clone()),
    };
    let first = app.list_posts(&alice, by_bob(2, "")).await.unwrap();
    assert!(first.posts.iter().all(|p| p.author_id == bob_id));
    let second = app
        .list_posts(&alice, by_bob(2, &first.next_page_token))
        .await
        .unwrap();
    assert_eq!(second.posts.len(), 1);
    assert!(second.next_page_token.is_empty());

    // A token issued for one filter cannot be replayed with another.
    let status = assert_code(
        app.list_posts(&alice, page(2, &first.next_page_token)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().starts_with("page_token"));
    assert_code(
        app.list_posts(&alice, page(2, "not-a-token")).await,
        Code::InvalidArgument,
    );
    let malformed_author = ListPostsRequest {
        author_id: Some("bob".into()),
        ..page(2, "")
    };
    assert_code(
        app.list_posts(&alice, malformed_author).await,
        Code::InvalidArgument,
    );
    let nobody = ListPostsRequest {
        author_id: Some("0195f3a4-0000-7000-8000-000000000009".into()),
        ..page(2, "")
    };
    assert!(app.list_posts(&alice, nobody).await.unwrap().posts.is_empty());
}

#[tokio::test]
async fn get_post_distinguishes_malformed_and_missing_ids() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    assert_code(app.get_post(&token, "").await, Code::InvalidArgument);
    assert_code(app.get_post(&token, "../etc/passwd").await, Code::InvalidArgument);
    assert_code(
        app.get_post(&token, "0195f3a4-0000-7000-8000-000000000001").await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn only_the_author_may_delete_a_post_and_others_learn_nothing() {
    let app = spawn_app().await;
    let alice = app.login_as("alice").await;
    let bob = app.login_as("bob").await;
    let post = app.create_post(&alice, "mine", "body").await.unwrap();

    assert_code(app.delete_post(&bob, &post.id).await, Code::PermissionDenied);
    app.get_post(&alice, &post.id)
        .await
        .expect("still there after bob's attempt");

    app.delete_post(&alice, &post.id).await.unwrap();
    assert_code(app.get_post(&alice, &post.id).await, Code::NotFound);
    // A missing post answers a non-admin exactly like someone else's post: existence is not revealed.
    let gone = assert_code(app.delete_post(&alice, &post.id).await, Code::PermissionDenied);
    let never = assert_code(
        app.delete_post(&bob, "0195f3a4-0000-7000-8000-000000000001")
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(gone.message(), never.message());
    assert_eq!(
        watchword::reason::of(&gone),
        Some(watchword::reason::Reason::NotOwner)
    );
    assert_code(app.delete_post(&alice, "nope").await, Code::InvalidArgument);

    let listed: HashSet<_> = app
        .list_posts(&alice, page(0, ""))
        .await
        .unwrap()
        .posts
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert!(!listed.contains(&post.id));
}

#[tokio::test]
async fn posts_survive_a_posts_svc_restart() {
    let mut app = spawn_app().await;
    let token = app.login_as("alice").await;
    let post = app.create_post(&token, "durable", "body").await.unwrap();
    let dir_posts = app.posts_database.clone();
    let auth_url = format!("http://{}", app.auth_addr());
    app.posts_servers.remove(0).stop().await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = start_posts(listener, posts_svc::Settings::new(dir_posts, auth_url)).await;
    let mut client = pb::posts_service_client::PostsServiceClient::new(channel(server.addr));
    let got = client
        .get_post(bearer(pb::GetPostRequest { id: post.id.clone() }, &token))
        .await
        .unwrap()
        .into_inner()
        .post
        .unwrap();
    assert_eq!(got, post);
    server.stop().await;
}

#[tokio::test]
async fn a_retried_create_with_the_same_request_id_returns_the_original_post() {
    let app = spawn_app().await;
    let alice = app.login_as("alice").await;
    let bob = app.login_as("bob").await;
    let create = |token: &str, title: &str| {
        let request = pb::CreatePostRequest {
            title: title.into(),
            body: "body".into(),
            request_id: "3f0c6a4e-idempotent".into(),
        };
        let mut posts = app.posts.clone();
        let request = bearer(request, token);
        async move {
            posts
                .create_post(request)
                .await
                .map(|r| r.into_inner().post.unwrap())
        }
    };
    let first = create(&alice, "first").await.unwrap();
    let retry = create(&alice, "first").await.unwrap();
    assert_eq!(retry, first);
    // Concurrent retries too: one post, always the same.
    let (a, b) = tokio::join!(create(&alice, "first"), create(&alice, "first"));
    assert_eq!((a.unwrap(), b.unwrap()), (first.clone(), first.clone()));
    // The key is per author: bob's post with the same request_id is his own.
    let bobs = create(&bob, "bob's").await.unwrap();
    assert_ne!(bobs.id, first.id);

    let listed = app.list_posts(&alice, page(0, "")).await.unwrap().posts;
    assert_eq!(
        listed.iter().filter(|p| p.author_id == first.author_id).count(),
        1
    );
    let bad = pb::CreatePostRequest {
        title: "t".into(),
        body: "b".into(),
        request_id: "x".repeat(129),
    };
    let status = assert_code(
        app.posts.clone().create_post(bearer(bad, &alice)).await,
        Code::InvalidArgument,
    );
    assert!(status.message().starts_with("request_id"));
}
