//! What a stranger, or whoever registers first, must not be able to do to users and services (issue 12):
//! lock the account holder out, outlive a key revocation, ride a demotion or a disabling with a token
//! issued from a stale read, remove the last admin, or dodge the limits.

use std::time::{Duration, Instant};

use tonic::{Code, Request, metadata::MetadataValue};
use watchword::{
    pb::{auth::v1 as pb, posts::v1::ListPostsRequest},
    reason::Reason,
};

use crate::helpers::*;

async fn login_with_device(
    app: &TestApp,
    password: &str,
    device_token: &str,
) -> Result<pb::LoginResponse, tonic::Status> {
    let request = pb::LoginRequest {
        username: "alice".into(),
        password: password.into(),
        device_token: device_token.into(),
    };
    Ok(app.auth.clone().login(request).await?.into_inner())
}

async fn lock_out(app: &TestApp, username: &str) {
    for _ in 0..5 {
        let _ = app.login(username, "a stranger's guess").await;
    }
    assert_reason(
        app.login(username, PASSWORD).await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
}

#[tokio::test]
async fn a_strangers_failed_logins_never_end_or_block_live_sessions() {
    let app = TestApp::builder().no_peer_limit().start().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    lock_out(&app, "alice").await;
    let refreshed = app
        .refresh(&login.refresh_token)
        .await
        .expect("refresh is never refused because of a login lockout");
    app.validate(&refreshed.access_token).await.unwrap();
}

#[tokio::test]
async fn the_account_holders_device_logs_in_through_a_strangers_lockout() {
    let app = TestApp::builder().no_peer_limit().start().await;
    app.register("alice").await.unwrap();
    let first = app.login("alice", PASSWORD).await.unwrap();
    let device = first.device_token;
    assert!(device.starts_with("wwdt_"), "{device}");

    lock_out(&app, "alice").await;
    let through = login_with_device(&app, PASSWORD, &device)
        .await
        .expect("the account holder's device is not held up by strangers' failures");
    assert_eq!(through.device_token, device, "a device keeps its token");

    // A made-up or another account's device token is no way around the lock.
    assert_reason(
        login_with_device(&app, PASSWORD, "wwdt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
    app.register("bobby").await.unwrap();
    let bobs_device = app.login("bobby", PASSWORD).await.unwrap().device_token;
    assert_reason(
        login_with_device(&app, PASSWORD, &bobs_device).await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );

    // The device has its own budget: guessing with a stolen device token locks that device too.
    for _ in 0..5 {
        assert_code(
            login_with_device(&app, "not the password", &device).await,
            Code::Unauthenticated,
        );
    }
    assert_reason(
        login_with_device(&app, PASSWORD, &device).await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
}

#[tokio::test]
async fn device_tokens_are_stored_only_as_keyed_hashes() {
    let app = spawn_app().await;
    if !matches!(
        app.auth_settings.database_url,
        watchword_db::DatabaseUrl::Sqlite(_)
    ) {
        return; // The same code stores them on PostgreSQL; reading the file is the SQLite-only part.
    }
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let device = login.device_token.trim_start_matches("wwdt_").to_owned();
    let db = std::fs::read(app.dir.path().join("auth.db")).unwrap();
    let wal = std::fs::read(app.dir.path().join("auth.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(device.len()).any(|w| w == device.as_bytes()));
        assert!(
            !bytes
                .windows(20)
                .any(|w| w == &login.refresh_token.as_bytes()[5..25])
        );
    }
}

#[tokio::test]
async fn admins_unlock_a_locked_user() {
    let app = TestApp::builder().no_peer_limit().start().await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    lock_out(&app, "alice").await;
    let unlock = |user_id: &str, token: &str| {
        let mut auth = app.auth.clone();
        let request = bearer(
            pb::UnlockUserRequest {
                user_id: user_id.into(),
            },
            token,
        );
        async move { auth.unlock_user(request).await }
    };
    let bob = app.login_as("bobby").await;
    assert_reason(
        unlock(&alice.id, &bob).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
    let unlocked = unlock(&alice.id, &root).await.unwrap().into_inner().user.unwrap();
    assert_eq!(unlocked.id, alice.id);
    app.login("alice", PASSWORD).await.expect("unlocked");
    assert_code(
        unlock("0195f3a4-0000-7000-8000-000000000001", &root).await,
        Code::NotFound,
    );
    assert_code(unlock("not-a-uuid", &root).await, Code::InvalidArgument);
}

#[tokio::test]
async fn the_last_enabled_admin_can_be_neither_demoted_nor_disabled() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let root_id = app.validate(&root).await.unwrap().subject;
    let mut auth = app.auth.clone();
    let demote = pb::SetUserRolesRequest {
        user_id: root_id.clone(),
        roles: vec!["user".into()],
    };
    let disable = pb::DisableUserRequest {
        user_id: root_id.clone(),
    };
    assert_code(
        auth.set_user_roles(bearer(demote.clone(), &root)).await,
        Code::FailedPrecondition,
    );
    assert_code(
        auth.disable_user(bearer(disable.clone(), &root)).await,
        Code::FailedPrecondition,
    );
    app.validate(&root).await.expect("nothing changed");

    // With a second admin, the first may go.
    let ops = app.admin_token("ops").await;
    auth.set_user_roles(bearer(demote, &ops)).await.unwrap();
    let ops_id = app.validate(&ops).await.unwrap().subject;
    let disable_ops = pb::DisableUserRequest { user_id: ops_id };
    assert_code(
        auth.disable_user(bearer(disable_ops, &ops)).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn bootstrap_admin_promotes_an_existing_account_only_with_its_password() {
    let app = spawn_app().await;
    // Somebody registered "root" before the operator ran the documented command.
    app.register("root").await.unwrap();
    let refused =
        auth_svc::bootstrap_admin(&app.auth_settings, "root", "the operator's passphrase".into()).await;
    assert!(refused.unwrap_err().to_string().contains("nothing changed"));
    let token = app.login("root", PASSWORD).await.unwrap().access_token;
    assert!(
        !app.validate(&token)
            .await
            .unwrap()
            .roles
            .contains(&"admin".to_owned())
    );
    let granted = auth_svc::bootstrap_admin(&app.auth_settings, "root", PASSWORD.into()).await;
    assert!(granted.unwrap().contains("granted admin"));
}

#[tokio::test]
async fn a_disabled_admin_is_no_admin() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let ops = app.admin_token("ops").await;
    let ops_id = app.validate(&ops).await.unwrap().subject;
    let mut auth = app.auth.clone();
    auth.disable_user(bearer(pb::DisableUserRequest { user_id: ops_id }, &root))
        .await
        .unwrap();
    let list = pb::ListUsersRequest::default();
    let refused = auth.list_users(bearer(list, &ops)).await.unwrap_err();
    assert!(
        matches!(refused.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{refused:?}"
    );
}

/// A login whose password check overlaps a demotion is issued its token from the user as stored when the
/// session is created: either it no longer says admin, or the demotion ended its session.
#[tokio::test]
async fn a_login_racing_a_demotion_never_keeps_the_admin_role() {
    let app = TestApp::builder().no_peer_limit().start().await;
    let root = app.admin_token("root").await;
    for round in 0..5 {
        let name = format!("admin{round}");
        let token = app.admin_token(&name).await;
        let user_id = app.validate(&token).await.unwrap().subject;
        let mut auth = app.auth.clone();
        let demote = bearer(
            pb::SetUserRolesRequest {
                user_id,
                roles: vec!["user".into()],
            },
            &root,
        );
        // The login hashes for tens of milliseconds; the demotion lands while it does.
        let (login, demoted) = tokio::join!(app.login(&name, PASSWORD), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            auth.set_user_roles(demote).await
        });
        demoted.unwrap();
        let token = login.unwrap().access_token;
        match app.validate(&token).await {
            Ok(claims) => assert!(
                !claims.roles.contains(&"admin".to_owned()),
                "round {round}: {claims:?}"
            ),
            Err(status) => assert_eq!(watchword::reason::of(&status), Some(Reason::TokenRevoked)),
        }
    }
}

/// A login racing DisableUser: it fails, or its token is refused everywhere whatever its `iat`.
#[tokio::test]
async fn a_login_racing_a_disabling_never_yields_a_usable_token() {
    let app = TestApp::builder()
        .no_peer_limit()
        .verify(posts_svc::VerifyMode::Local)
        .start()
        .await;
    let root = app.admin_token("root").await;
    for round in 0..5 {
        let name = format!("user{round}");
        let user = app.register(&name).await.unwrap();
        let mut auth = app.auth.clone();
        let disable = bearer(pb::DisableUserRequest { user_id: user.id }, &root);
        let (login, disabled) = tokio::join!(app.login(&name, PASSWORD), async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            auth.disable_user(disable).await
        });
        disabled.unwrap();
        let Ok(login) = login else { continue };
        assert_reason(
            app.validate(&login.access_token).await,
            Code::Unauthenticated,
            Reason::UserDisabled,
        );
        app.refused_within(&login.access_token, Reason::UserDisabled, Duration::from_secs(1))
            .await;
    }
}

/// RevokeSigningKey stops every token the key signed, in every validation mode, within a second.
#[tokio::test]
async fn a_revoked_key_is_refused_everywhere_within_a_second() {
    for (mode, cache_ttl) in [
        (posts_svc::VerifyMode::Local, Duration::from_secs(5)),
        (posts_svc::VerifyMode::Remote, Duration::from_secs(60)),
        (posts_svc::VerifyMode::Remote, Duration::ZERO),
    ] {
        let app = TestApp::builder().verify(mode).cache_ttl(cache_ttl).start().await;
        let root = app.admin_token("root").await;
        let alice = app.login_as("alice").await;
        let kid = app.validate(&alice).await.unwrap().key_id;
        // Warm the guard: the revocation stream is up and (in local and cached modes) the token is known.
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.list_posts(&alice, ListPostsRequest::default()).await.is_err() {
            assert!(Instant::now() < deadline);
        }
        let revoked = app
            .auth
            .clone()
            .revoke_signing_key(bearer(pb::RevokeSigningKeyRequest { kid: kid.clone() }, &root))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(revoked.signing_kid, kid, "a revoked signing key is replaced");
        assert_reason(
            app.validate(&alice).await,
            Code::Unauthenticated,
            Reason::TokenRevoked,
        );
        let took = app
            .refused_within(&alice, Reason::TokenRevoked, Duration::from_secs(1))
            .await;
        println!("{mode:?} (cache {cache_ttl:?}): revoked key refused by posts-svc after {took:?}");
        // The new key signs, and its tokens are accepted.
        let fresh = app.login("alice", PASSWORD).await.unwrap().access_token;
        assert_eq!(app.validate(&fresh).await.unwrap().key_id, revoked.signing_kid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(status) = app.list_posts(&fresh, ListPostsRequest::default()).await {
            assert!(
                Instant::now() < deadline,
                "the new key's token is refused: {status:?}"
            );
        }
        let jwks = app
            .auth
            .clone()
            .get_jwks(pb::GetJwksRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            jwks.keys.iter().all(|k| k.kid != kid),
            "a revoked key is no longer published"
        );
    }
}

#[tokio::test]
async fn revoking_an_unknown_key_or_the_key_file_is_refused() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let revoke = |kid: &str| {
        let mut auth = app.auth.clone();
        let request = bearer(pb::RevokeSigningKeyRequest { kid: kid.into() }, &root);
        async move { auth.revoke_signing_key(request).await }
    };
    assert_code(revoke("no-such-kid").await, Code::NotFound);
    assert_code(revoke("").await, Code::InvalidArgument);
    let alice = app.login_as("alice").await;
    let request = bearer(pb::RevokeSigningKeyRequest { kid: "x".into() }, &alice);
    assert_reason(
        app.auth.clone().revoke_signing_key(request).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );

    let filed = TestApp::builder().signing_key_file().start().await;
    let root = filed.admin_token("root").await;
    let kid = filed.validate(&root).await.unwrap().key_id;
    let request = bearer(pb::RevokeSigningKeyRequest { kid }, &root);
    assert_code(
        filed.auth.clone().revoke_signing_key(request).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn revocation_subscribers_are_capped() {
    let app = TestApp::builder()
        .auth(|settings| settings.max_revocation_subscribers = 3)
        .cache_ttl(Duration::ZERO)
        .start()
        .await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let stream = app
            .auth
            .clone()
            .watch_revocations(pb::WatchRevocationsRequest {})
            .await;
        streams.push(stream.expect("within the cap").into_inner());
    }
    let refused = assert_code(
        app.auth
            .clone()
            .watch_revocations(pb::WatchRevocationsRequest {})
            .await,
        Code::ResourceExhausted,
    );
    assert!(watchword::reason::retry_after(&refused).is_some(), "{refused:?}");
    // A subscriber that leaves makes room.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .auth
        .clone()
        .watch_revocations(pb::WatchRevocationsRequest {})
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the departed subscriber's place was not freed"
        );
    }
}

fn login_from(forwarded_for: &str) -> Request<pb::LoginRequest> {
    let mut request = Request::new(pb::LoginRequest {
        username: "nobody".into(),
        password: "not a password at all".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-forwarded-for", MetadataValue::try_from(forwarded_for).unwrap());
    request
}

/// Behind a trusted balancer each client has its own bucket; a peer that is not trusted cannot pick one.
#[tokio::test]
async fn x_forwarded_for_names_the_client_only_behind_trusted_proxies() {
    for trusted in [true, false] {
        let app = TestApp::builder()
            .auth(move |settings| {
                settings.peer_rate = 1.0;
                settings.peer_burst = 2;
                settings.lockout_threshold = u32::MAX;
                if trusted {
                    settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
                }
            })
            .start()
            .await;
        let mut codes = Vec::new();
        for client in ["198.51.100.1", "198.51.100.1", "198.51.100.1", "198.51.100.2"] {
            let outcome = app.auth.clone().login(login_from(client)).await;
            codes.push(outcome.unwrap_err().code());
        }
        let limited = Code::ResourceExhausted;
        let checked = Code::Unauthenticated;
        if trusted {
            assert_eq!(
                codes,
                [checked, checked, limited, checked],
                "each client its own bucket"
            );
        } else {
            assert_eq!(
                codes,
                [checked, checked, limited, limited],
                "one peer, one bucket"
            );
        }
    }
}
