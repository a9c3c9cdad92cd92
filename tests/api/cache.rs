//! Fast validation without giving up revocation: the cache, the revocation stream, key rotation and
//! local verification, observed through a proxy that counts the Validate calls reaching auth-svc.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tonic::Code;
use watchword::{
    pb::{auth::v1 as pb, posts::v1::ListPostsRequest},
    reason::Reason,
};

use crate::helpers::*;

/// The app with posts-svc talking to auth-svc through a stand-in that counts the Validate calls.
struct Proxied {
    app: TestApp,
}

impl Proxied {
    fn validates(&self) -> usize {
        self.app.proxy.as_ref().expect("proxied").validates()
    }

    /// Calls ListPosts until a call is answered from the cache (the feed is live and the token cached).
    async fn warm(&self, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = self.validates();
            self.app
                .list_posts(token, ListPostsRequest::default())
                .await
                .unwrap();
            if self.validates() == before {
                return;
            }
            assert!(Instant::now() < deadline, "calls never came from the cache");
            tokio::task::yield_now().await;
        }
    }
}

async fn spawn_proxied(posts: impl FnOnce(&mut posts_svc::Settings) + 'static) -> Proxied {
    Proxied {
        app: TestApp::builder().proxied().posts(posts).start().await,
    }
}

fn cache_ttl(ttl: Duration) -> impl FnOnce(&mut posts_svc::Settings) {
    move |settings| settings.validate_cache_ttl = ttl
}

#[tokio::test]
async fn a_cache_hit_does_not_call_auth_svc() {
    let p = spawn_proxied(cache_ttl(Duration::from_secs(60))).await;
    let token = p.app.login_as("alice").await;
    p.warm(&token).await;
    let before = p.validates();
    for _ in 0..20 {
        p.app
            .list_posts(&token, ListPostsRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(p.validates(), before);
}

#[tokio::test]
async fn concurrent_calls_with_one_uncached_token_share_one_validate_call() {
    let p = spawn_proxied(cache_ttl(Duration::from_secs(60))).await;
    let warmer = p.app.login_as("warmer").await;
    p.warm(&warmer).await;
    let token = p.app.login_as("alice").await;
    let before = p.validates();
    let calls = (0..100).map(|_| p.app.list_posts(&token, ListPostsRequest::default()));
    for result in join_all(calls).await {
        result.unwrap();
    }
    assert_eq!(p.validates() - before, 1, "single flight");
}

#[tokio::test]
async fn with_ttl_zero_every_call_is_validated_remotely() {
    let p = spawn_proxied(cache_ttl(Duration::ZERO)).await;
    let token = p.app.login_as("alice").await;
    let before = p.validates();
    for _ in 0..10 {
        p.app
            .list_posts(&token, ListPostsRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(p.validates() - before, 10);
}

#[tokio::test]
async fn logout_is_enforced_within_a_second_despite_a_60s_cache() {
    let p = spawn_proxied(cache_ttl(Duration::from_secs(60))).await;
    p.app.register("alice").await.unwrap();
    let login = p.app.login("alice", PASSWORD).await.unwrap();
    p.warm(&login.access_token).await;
    p.app.logout(&login.access_token).await.unwrap();
    let took = p
        .app
        .refused_within(&login.access_token, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
    println!("logout enforced by posts-svc after {took:?}");
}

#[tokio::test]
async fn disabling_a_user_evicts_their_cached_tokens() {
    let p = spawn_proxied(cache_ttl(Duration::from_secs(60))).await;
    let root = p.app.admin_token("root").await;
    let bob = p.app.login_as("bob").await;
    let bob_id = p.app.validate(&bob).await.unwrap().subject;
    p.warm(&bob).await;
    let request = pb::DisableUserRequest { user_id: bob_id };
    p.app
        .auth
        .clone()
        .disable_user(bearer(request, &root))
        .await
        .unwrap();
    p.app
        .refused_within(&bob, Reason::UserDisabled, Duration::from_secs(1))
        .await;
}

#[tokio::test]
async fn losing_the_revocation_stream_drops_the_cache_and_fails_closed() {
    let mut p = spawn_proxied(cache_ttl(Duration::from_secs(60))).await;
    let token = p.app.login_as("alice").await;
    p.warm(&token).await;
    // auth-svc goes away: the stream ends, so the cached verdict must not be used any more.
    p.app.stop_auth().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match p.app.list_posts(&token, ListPostsRequest::default()).await {
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                break;
            }
            Ok(_) => assert!(
                Instant::now() < deadline,
                "cached verdict still used after the stream broke"
            ),
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..5 {
        assert_code(
            p.app.list_posts(&token, ListPostsRequest::default()).await,
            Code::Unavailable,
        );
    }
}

#[tokio::test]
async fn jwks_lists_the_keys_and_rotation_keeps_old_tokens_valid() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let old_token = app.login_as("alice").await;
    let mut auth = app.auth.clone();
    let jwks = auth.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    assert_eq!(jwks.keys.len(), 1);
    let key = &jwks.keys[0];
    assert_eq!(
        (&*key.kty, &*key.crv, &*key.alg, &*key.r#use),
        ("OKP", "Ed25519", "EdDSA", "sig")
    );
    assert_eq!((&*jwks.issuer, &*jwks.audience), ("watchword-auth", "watchword"));
    let json: serde_json::Value = serde_json::from_str(&jwks.jwks_json).unwrap();
    assert_eq!(json["keys"][0]["kid"], key.kid.as_str());

    let rotated = auth
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.kid, key.kid);
    let jwks = auth.get_jwks(pb::GetJwksRequest {}).await.unwrap().into_inner();
    let kids: Vec<&str> = jwks.keys.iter().map(|k| k.kid.as_str()).collect();
    assert_eq!(
        kids,
        [rotated.kid.as_str(), key.kid.as_str()],
        "signing key first"
    );

    app.validate(&old_token)
        .await
        .expect("tokens from the previous key still verify");
    let new_token = app.login("alice", PASSWORD).await.unwrap().access_token;
    let header: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            new_token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], rotated.kid.as_str());

    let alice = app.login("alice", PASSWORD).await.unwrap().access_token;
    assert_reason(
        auth.rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &alice))
            .await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
}

#[tokio::test]
async fn a_signing_key_from_a_file_cannot_be_rotated_over_grpc() {
    let app = TestApp::builder().signing_key_file().start().await;
    let root = app.admin_token("root").await;
    let result = app
        .auth
        .clone()
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await;
    assert_code(result, Code::FailedPrecondition);
}

/// Rotating keys while calls flow never produces a false UNAUTHENTICATED, in either guard mode.
#[tokio::test]
async fn rotation_under_load_never_refuses_a_valid_token() {
    for mode in [posts_svc::VerifyMode::Remote, posts_svc::VerifyMode::Local] {
        let p = spawn_proxied(move |settings| {
            settings.verify = mode;
            settings.jwks_refetch_interval = Duration::from_millis(50);
        })
        .await;
        let root = p.app.admin_token("root").await;
        let mut tokens = vec![p.app.login_as("alice").await];
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared = Arc::new(std::sync::Mutex::new(tokens.clone()));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (posts, stop, shared) = (p.app.posts.clone(), stop.clone(), shared.clone());
            workers.push(tokio::spawn(async move {
                let mut calls = 0;
                while !stop.load(Ordering::Relaxed) {
                    let all = shared.lock().unwrap().clone();
                    for token in all {
                        let result = posts
                            .clone()
                            .list_posts(bearer(ListPostsRequest::default(), &token))
                            .await;
                        if let Err(status) = result {
                            panic!("{mode:?}: valid token refused during rotation: {status:?}");
                        }
                        calls += 1;
                    }
                }
                calls
            }));
        }
        for _ in 0..3 {
            p.app
                .auth
                .clone()
                .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
                .await
                .unwrap();
            let token = p.app.login("alice", PASSWORD).await.unwrap().access_token;
            tokens.push(token);
            *shared.lock().unwrap() = tokens.clone();
            for token in &tokens {
                p.app
                    .list_posts(token, ListPostsRequest::default())
                    .await
                    .unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut calls = 0;
        for worker in workers {
            calls += worker.await.unwrap();
        }
        println!("{mode:?}: {calls} calls across 3 rotations, none refused");
    }
}

#[tokio::test]
async fn local_mode_verifies_without_calling_validate_and_refuses_foreign_keys() {
    let p = spawn_proxied(|settings| settings.verify = posts_svc::VerifyMode::Local).await;
    let token = p.app.login_as("alice").await;
    p.warm(&token).await;
    let before = p.validates();
    let other_token = p.app.login("alice", PASSWORD).await.unwrap().access_token;
    for _ in 0..10 {
        p.app
            .list_posts(&other_token, ListPostsRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(p.validates(), before, "local mode verified every call itself");

    // Same decision and reason as remote mode for a token signed by a key it never trusted.
    let elsewhere = spawn_app().await;
    let foreign = elsewhere.login_as("alice").await;
    let remote = assert_code(p.app.validate(&foreign).await, Code::Unauthenticated);
    let local = assert_code(
        p.app.list_posts(&foreign, ListPostsRequest::default()).await,
        Code::Unauthenticated,
    );
    assert_eq!(watchword::reason::of(&local), watchword::reason::of(&remote));

    // Logout is honoured through the stream.
    p.app.logout(&other_token).await.unwrap();
    p.app
        .refused_within(&other_token, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
}

#[tokio::test]
async fn local_mode_accepts_tokens_from_a_rotated_in_key() {
    let p = spawn_proxied(|settings| {
        settings.verify = posts_svc::VerifyMode::Local;
        settings.jwks_refetch_interval = Duration::ZERO;
    })
    .await;
    let root = p.app.admin_token("root").await;
    p.warm(&root).await;
    p.app
        .auth
        .clone()
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await
        .unwrap();
    let fresh = p.app.login("root", PASSWORD).await.unwrap().access_token;
    let before = p.validates();
    p.app
        .list_posts(&fresh, ListPostsRequest::default())
        .await
        .unwrap();
    p.app
        .list_posts(&fresh, ListPostsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        p.validates(),
        before,
        "the new key was fetched from the JWKS, not validated remotely"
    );
}
