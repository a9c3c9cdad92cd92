//! API keys for machine clients: created by a signed-in user with roles it may grant, exchanged for
//! ordinary access tokens (the key's id as `sid`), listed without secrets, and ended (revocation, the
//! owner disabled, a role the key carries taken away) everywhere within a second, in every guard mode.

use std::time::Duration;

use tonic::Code;
use watchword::{
    pb::{auth::v1 as pb, posts::v1::ListPostsRequest},
    reason::Reason,
};

use crate::helpers::*;

/// Every way the guard can check a token: remote without a cache, remote with one, local.
fn every_guard_mode() -> Vec<(&'static str, AppBuilder)> {
    vec![
        (
            "remote",
            TestApp::builder()
                .verify(posts_svc::VerifyMode::Remote)
                .cache_ttl(Duration::ZERO),
        ),
        (
            "cached",
            TestApp::builder()
                .verify(posts_svc::VerifyMode::Remote)
                .cache_ttl(Duration::from_secs(60)),
        ),
        ("local", TestApp::builder().verify(posts_svc::VerifyMode::Local)),
    ]
}

#[tokio::test]
async fn an_api_key_is_exchanged_for_an_ordinary_token_of_its_owner_with_the_keys_roles() {
    let app = spawn_app().await;
    let alice = app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;

    let created = app
        .create_api_key(&token, " deploy bot ", &[], None)
        .await
        .unwrap();
    let key = created.api_key.unwrap();
    assert!(created.secret.starts_with("wwk_"), "{}", created.secret);
    assert_eq!(created.secret.len(), 4 + 43 + 6);
    assert_eq!(key.name, "deploy bot");
    assert_eq!(key.roles, ["user"], "none asked: the caller's");
    assert_eq!(key.user_id, alice.id);
    let lifetime = key.expire_time.unwrap().seconds - key.create_time.unwrap().seconds;
    assert_eq!(lifetime, 365 * 24 * 3600, "a year by default");
    assert!(key.last_exchange_time.is_none());

    let exchanged = app.exchange_api_key(&created.secret).await.unwrap();
    assert_eq!(
        (exchanged.token_type.as_str(), exchanged.expires_in),
        ("Bearer", 900)
    );
    let claims = app.validate(&exchanged.access_token).await.unwrap();
    assert_eq!(claims.subject, alice.id);
    assert_eq!(claims.username, "alice");
    assert_eq!(claims.roles, ["user"]);
    assert_eq!(claims.session_id, key.id, "the key is the token's session");
    app.create_post(&exchanged.access_token, "From a bot", "hello")
        .await
        .unwrap();

    // The key is a session of its own.
    let me = app.get_me(&exchanged.access_token).await.unwrap();
    let session = me.session.unwrap();
    assert_eq!(
        (session.id.as_str(), session.api_key_id.as_str()),
        (key.id.as_str(), key.id.as_str())
    );
    assert!(session.last_refresh_time.is_some(), "the exchange is recorded");
    let sessions = app.list_sessions(&token, Default::default()).await.unwrap();
    assert!(sessions.sessions.iter().any(|s| s.api_key_id == key.id));

    // Listed without its secret.
    let listed = app.list_api_keys(&token, Default::default()).await.unwrap();
    assert_eq!(listed.api_keys.len(), 1);
    assert_eq!(listed.api_keys[0].id, key.id);
    assert!(listed.api_keys[0].last_exchange_time.is_some());
    assert!(!format!("{listed:?}").contains(&created.secret[4..]));
}

#[tokio::test]
async fn a_key_carries_only_roles_its_creator_may_grant() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let token = app.login_as("alice").await;

    assert_reason(
        app.create_api_key(&token, "escalate", &["admin"], None).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
    assert_reason(
        app.create_api_key(&token, "escalate", &["user", "admin"], None)
            .await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
    assert!(
        app.list_api_keys(&token, Default::default())
            .await
            .unwrap()
            .api_keys
            .is_empty()
    );

    // A lower level is fine: a read-only key.
    let reader = app
        .create_api_key(&token, "reader", &["guest"], None)
        .await
        .unwrap();
    let reader_token = app.exchange_api_key(&reader.secret).await.unwrap().access_token;
    assert_eq!(app.validate(&reader_token).await.unwrap().roles, ["guest"]);
    app.list_posts(&reader_token, ListPostsRequest::default())
        .await
        .unwrap();
    assert_reason(
        app.create_post(&reader_token, "t", "b").await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );

    // An admin may give a key admin; its token is an admin's.
    let admin_key = app.create_api_key(&root, "ops", &["admin"], None).await.unwrap();
    let admin_token = app
        .exchange_api_key(&admin_key.secret)
        .await
        .unwrap()
        .access_token;
    let users = pb::ListUsersRequest::default();
    app.auth
        .clone()
        .list_users(bearer(users, &admin_token))
        .await
        .unwrap();

    // Request checks.
    for (name, roles, ttl) in [
        ("", &[][..], None),
        ("x", &["superuser"][..], None),
        ("x", &[][..], Some(Duration::from_secs(366 * 24 * 3600))),
        ("x", &[][..], Some(Duration::ZERO)),
    ] {
        assert_code(
            app.create_api_key(&token, name, roles, ttl).await,
            Code::InvalidArgument,
        );
    }
    assert_reason(
        app.auth
            .clone()
            .create_api_key(pb::CreateApiKeyRequest::default())
            .await,
        Code::Unauthenticated,
        Reason::TokenMissing,
    );
}

#[tokio::test]
async fn the_key_lifetime_is_bounded_by_api_key_max_ttl() {
    let app = TestApp::builder()
        .auth(|settings| settings.api_key_max_ttl = Duration::from_secs(30 * 24 * 3600))
        .start()
        .await;
    let token = app.login_as("alice").await;
    let key = app.create_api_key(&token, "k", &[], None).await.unwrap();
    let key = key.api_key.unwrap();
    let lifetime = key.expire_time.unwrap().seconds - key.create_time.unwrap().seconds;
    assert_eq!(lifetime, 30 * 24 * 3600, "the maximum, when shorter than a year");
    let refused = assert_code(
        app.create_api_key(&token, "k", &[], Some(Duration::from_secs(31 * 24 * 3600)))
            .await,
        Code::InvalidArgument,
    );
    assert!(refused.message().starts_with("ttl:"), "{refused:?}");
    let day = app
        .create_api_key(&token, "k", &[], Some(Duration::from_secs(24 * 3600)))
        .await
        .unwrap()
        .api_key
        .unwrap();
    assert_eq!(
        day.expire_time.unwrap().seconds - day.create_time.unwrap().seconds,
        24 * 3600
    );
}

#[tokio::test]
async fn a_revoked_keys_tokens_are_refused_within_a_second_in_every_guard_mode() {
    for (mode, builder) in every_guard_mode() {
        let app = builder.start().await;
        let token = app.login_as("alice").await;
        let created = app.create_api_key(&token, "bot", &[], None).await.unwrap();
        let key_id = created.api_key.unwrap().id;
        let bot = app.exchange_api_key(&created.secret).await.unwrap().access_token;
        // Accepted first: cached, or verified locally, from now on.
        for _ in 0..3 {
            app.list_posts(&bot, ListPostsRequest::default()).await.unwrap();
        }

        app.revoke_api_key(&token, &key_id).await.unwrap();

        let took = app
            .refused_within(&bot, Reason::TokenRevoked, Duration::from_secs(1))
            .await;
        eprintln!("{mode}: a revoked key's token refused after {took:?}");
        assert_reason(
            app.exchange_api_key(&created.secret).await,
            Code::Unauthenticated,
            Reason::TokenRevoked,
        );
        app.revoke_api_key(&token, &key_id).await.expect("idempotent");
        assert!(
            app.list_api_keys(&token, Default::default())
                .await
                .unwrap()
                .api_keys
                .is_empty()
        );
        // The owner's own session is untouched.
        app.list_posts(&token, ListPostsRequest::default()).await.unwrap();
    }
}

#[tokio::test]
async fn disabling_the_owner_ends_its_keys_within_a_second() {
    let app = TestApp::builder()
        .verify(posts_svc::VerifyMode::Local)
        .start()
        .await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;
    let created = app.create_api_key(&token, "bot", &[], None).await.unwrap();
    let bot = app.exchange_api_key(&created.secret).await.unwrap().access_token;
    app.list_posts(&bot, ListPostsRequest::default()).await.unwrap();

    let disable = pb::DisableUserRequest {
        user_id: alice.id.clone(),
    };
    app.auth
        .clone()
        .disable_user(bearer(disable, &root))
        .await
        .unwrap();
    app.refused_within(&bot, Reason::UserDisabled, Duration::from_secs(1))
        .await;
    assert_reason(
        app.exchange_api_key(&created.secret).await,
        Code::Unauthenticated,
        Reason::UserDisabled,
    );
}

#[tokio::test]
async fn taking_a_role_away_ends_the_keys_that_carry_it_within_a_second_and_no_others() {
    let app = TestApp::builder()
        .verify(posts_svc::VerifyMode::Local)
        .start()
        .await;
    let root = app.admin_token("root").await;
    let ann = app.register("ann").await.unwrap();
    let promote = pb::SetUserRolesRequest {
        user_id: ann.id.clone(),
        roles: vec!["admin".into(), "user".into()],
    };
    app.auth
        .clone()
        .set_user_roles(bearer(promote, &root))
        .await
        .unwrap();
    let token = app.login("ann", PASSWORD).await.unwrap().access_token;
    let admin_key = app.create_api_key(&token, "ops", &["admin"], None).await.unwrap();
    let user_key = app.create_api_key(&token, "bot", &["user"], None).await.unwrap();
    let ops = app
        .exchange_api_key(&admin_key.secret)
        .await
        .unwrap()
        .access_token;
    let bot = app.exchange_api_key(&user_key.secret).await.unwrap().access_token;
    for token in [&ops, &bot] {
        app.list_posts(token, ListPostsRequest::default()).await.unwrap();
    }

    let demote = pb::SetUserRolesRequest {
        user_id: ann.id.clone(),
        roles: vec!["user".into()],
    };
    app.auth
        .clone()
        .set_user_roles(bearer(demote, &root))
        .await
        .unwrap();

    app.refused_within(&ops, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
    assert_reason(
        app.exchange_api_key(&admin_key.secret).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    // The key whose roles ann still holds goes on.
    app.list_posts(&bot, ListPostsRequest::default()).await.unwrap();
    app.exchange_api_key(&user_key.secret).await.unwrap();
    let ann_again = app.login("ann", PASSWORD).await.unwrap().access_token;
    let keys = app.list_api_keys(&ann_again, Default::default()).await.unwrap();
    let names: Vec<_> = keys.api_keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["bot"]);
}

#[tokio::test]
async fn a_wrong_expired_or_revoked_key_is_unauthenticated_with_its_reason() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let created = app
        .create_api_key(&token, "short-lived", &[], Some(Duration::from_secs(1)))
        .await
        .unwrap();

    assert_reason(
        app.exchange_api_key("").await,
        Code::Unauthenticated,
        Reason::TokenMissing,
    );
    let mut typo = created.secret.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let refresh_token = app.login("alice", PASSWORD).await.unwrap().refresh_token;
    for wrong in [
        String::from_utf8(typo).unwrap(),
        format!("wwk_{}", "A".repeat(49)),
        "garbage".to_owned(),
        refresh_token,
        token.clone(),
    ] {
        assert_reason(
            app.exchange_api_key(&wrong).await,
            Code::Unauthenticated,
            Reason::TokenInvalid,
        );
    }
    // A well-formed key (its checksum right) that was never issued.
    let other = TestApp::builder().start().await;
    let other_token = other.login_as("mallory").await;
    let foreign = other
        .create_api_key(&other_token, "elsewhere", &[], None)
        .await
        .unwrap();
    assert_reason(
        app.exchange_api_key(&foreign.secret).await,
        Code::Unauthenticated,
        Reason::TokenInvalid,
    );

    // Expired: it leaves the list when it expires, and exchanges no more.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !app
        .list_api_keys(&token, Default::default())
        .await
        .unwrap()
        .api_keys
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "the key never expired");
        tokio::task::yield_now().await;
    }
    assert_reason(
        app.exchange_api_key(&created.secret).await,
        Code::Unauthenticated,
        Reason::TokenExpired,
    );
}

#[tokio::test]
async fn exchanges_are_rate_limited_per_key() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let busy = app.create_api_key(&token, "busy", &[], None).await.unwrap();
    let calm = app.create_api_key(&token, "calm", &[], None).await.unwrap();
    let mut refused = None;
    for _ in 0..100 {
        if let Err(status) = app.exchange_api_key(&busy.secret).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("a key exchanged again and again is limited");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(watchword::reason::of(&refused), Some(Reason::RateLimited));
    let wait = watchword::reason::retry_after(&refused).expect("RetryInfo");
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    app.exchange_api_key(&calm.secret)
        .await
        .expect("another key has its own budget");
}

#[tokio::test]
async fn keys_are_managed_by_their_owner_or_an_admin() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    let alice_token = app.login("alice", PASSWORD).await.unwrap().access_token;
    let key = app
        .create_api_key(&alice_token, "bot", &[], None)
        .await
        .unwrap()
        .api_key
        .unwrap();
    let bob = app.login_as("bob").await;

    // Others cannot see or revoke it; they cannot even tell it exists.
    let hers = pb::ListApiKeysRequest {
        user_id: alice.id.clone(),
        ..Default::default()
    };
    assert_reason(
        app.list_api_keys(&bob, hers.clone()).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
    assert_code(app.revoke_api_key(&bob, &key.id).await, Code::NotFound);
    assert_code(
        app.revoke_api_key(&bob, "0195f3a4-0000-7000-8000-000000000001")
            .await,
        Code::NotFound,
    );
    assert_code(app.revoke_api_key(&bob, "nope").await, Code::InvalidArgument);
    // RevokeApiKey ends keys only, not login sessions.
    let session = app.validate(&alice_token).await.unwrap().session_id;
    assert_code(app.revoke_api_key(&alice_token, &session).await, Code::NotFound);
    app.validate(&alice_token).await.unwrap();

    // An admin lists and revokes anyone's.
    let listed = app.list_api_keys(&root, hers).await.unwrap();
    assert_eq!(listed.api_keys.len(), 1);
    app.revoke_api_key(&root, &key.id).await.unwrap();
    assert!(
        app.list_api_keys(&alice_token, Default::default())
            .await
            .unwrap()
            .api_keys
            .is_empty()
    );
}

#[tokio::test]
async fn keys_are_listed_a_page_at_a_time() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let mut created = Vec::new();
    for i in 0..5 {
        let name = format!("key {i}");
        let key = app.create_api_key(&token, &name, &[], None).await.unwrap();
        created.push(key.api_key.unwrap().id);
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListApiKeysRequest {
            page_size: 2,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = app.list_api_keys(&token, request).await.unwrap();
        assert!(page.api_keys.len() <= 2);
        listed.extend(page.api_keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, created, "oldest first, each once");
    let wrong_filter = pb::ListApiKeysRequest {
        page_token: app
            .list_api_keys(
                &token,
                pb::ListApiKeysRequest {
                    page_size: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .next_page_token,
        user_id: app.validate(&token).await.unwrap().subject,
        ..Default::default()
    };
    assert_code(
        app.list_api_keys(&token, wrong_filter).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn logout_refuses_a_keys_token_and_change_password_ends_the_keys() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let created = app
        .create_api_key(&login.access_token, "bot", &[], None)
        .await
        .unwrap();
    let bot = app.exchange_api_key(&created.secret).await.unwrap().access_token;

    // Logging out with a key's token would revoke the key: refused, and the key goes on.
    assert_code(app.logout(&bot).await, Code::FailedPrecondition);
    app.validate(&bot).await.unwrap();
    app.exchange_api_key(&created.secret).await.unwrap();

    // A password change ends every other session, keys too.
    app.change_password(&login.access_token, PASSWORD, "a brand new passphrase")
        .await
        .unwrap();
    app.refused_within(&bot, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
    assert_reason(
        app.exchange_api_key(&created.secret).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
}

#[tokio::test]
async fn api_key_secrets_are_stored_only_as_keyed_hashes() {
    let app = spawn_app().await;
    if !matches!(
        app.auth_settings.database_url,
        watchword_db::DatabaseUrl::Sqlite(_)
    ) {
        return; // The same code stores them on PostgreSQL; reading the file is the SQLite-only part.
    }
    let token = app.login_as("alice").await;
    let created = app.create_api_key(&token, "bot", &[], None).await.unwrap();
    app.exchange_api_key(&created.secret).await.unwrap();
    let secret = &created.secret.as_bytes()[4..24];
    let db = std::fs::read(app.dir.path().join("auth.db")).unwrap();
    let wal = std::fs::read(app.dir.path().join("auth.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret));
    }
}
