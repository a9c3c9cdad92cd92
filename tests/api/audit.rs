//! The audit log: every kind of event is written by the action that causes it, in that action's
//! transaction (a failed action leaves none; an action whose event cannot be stored does not happen), and
//! ListAuditEvents pages and filters them for admins.

use std::time::Duration;

use tonic::Code;
use watchword::{
    pb::auth::v1::{self as pb, AuditEventKind as Kind},
    reason::Reason,
};

use crate::helpers::*;

/// The audit events of `kind` concerning `subject` (actor or subject), newest first.
async fn events_of(app: &TestApp, root: &str, kind: Kind, user: &str) -> Vec<pb::AuditEvent> {
    let request = pb::ListAuditEventsRequest {
        page_size: 100,
        kind: kind.into(),
        user_id: user.into(),
        ..Default::default()
    };
    app.audit_events(root, request).await.unwrap().events
}

/// The newest page of audit events (enough for a test's few).
async fn all_events(app: &TestApp, root: &str) -> Vec<pb::AuditEvent> {
    let request = pb::ListAuditEventsRequest {
        page_size: 100,
        ..Default::default()
    };
    app.audit_events(root, request).await.unwrap().events
}

/// The one event of `kind` concerning `user`.
async fn the_event(app: &TestApp, root: &str, kind: Kind, user: &str) -> pb::AuditEvent {
    let mut events = events_of(app, root, kind, user).await;
    assert_eq!(events.len(), 1, "{kind:?} for {user}: {events:#?}");
    events.remove(0)
}

fn detail_has(event: &pb::AuditEvent, pair: &str) -> bool {
    event.detail.split(' ').any(|p| p == pair)
}

const LOOPBACK: &str = "127.0.0.1";

#[tokio::test]
async fn account_and_session_events_are_recorded_by_the_actions_that_cause_them() {
    let app = TestApp::builder()
        .no_peer_limit()
        .auth(|settings| {
            settings.lockout_threshold = 2;
            settings.refresh_reuse_grace = Duration::ZERO;
        })
        .start()
        .await;
    let root = app.admin_token("root").await;
    let root_id = app.validate(&root).await.unwrap().subject;

    // The operator's bootstrap: registered with no actor and no client address.
    let registered = the_event(&app, &root, Kind::UserRegistered, &root_id).await;
    assert_eq!(
        (registered.actor_id.as_str(), registered.client_address.as_str()),
        ("", "")
    );
    assert!(detail_has(&registered, "roles=admin,user"), "{registered:?}");

    let alice = app.register("alice").await.unwrap();
    let registered = the_event(&app, &root, Kind::UserRegistered, &alice.id).await;
    assert_eq!(registered.subject_id, alice.id);
    assert_eq!(registered.client_address, LOOPBACK);
    assert!(registered.time.is_some());

    // A wrong password: LOGIN_FAILED for alice's account, by nobody signed in.
    assert_code(
        app.login("Alice", "not the right password").await,
        Code::Unauthenticated,
    );
    let failed = the_event(&app, &root, Kind::LoginFailed, &alice.id).await;
    assert_eq!(
        (failed.actor_id.as_str(), failed.subject_id.as_str()),
        ("", alice.id.as_str())
    );
    assert!(detail_has(&failed, "username=alice"), "{failed:?}");
    assert!(detail_has(&failed, "reason=INVALID_CREDENTIALS"), "{failed:?}");
    // A name no account has: LOGIN_FAILED without a subject.
    assert_code(app.login("nobody", PASSWORD).await, Code::Unauthenticated);

    // A successful login: LOGIN_SUCCEEDED with its session, and no LOGIN_FAILED left for that attempt.
    let login = app.login("alice", PASSWORD).await.unwrap();
    let succeeded = the_event(&app, &root, Kind::LoginSucceeded, &alice.id).await;
    assert_eq!(succeeded.actor_id, alice.id);
    assert_eq!(succeeded.session_id, login.session_id);
    assert_eq!(succeeded.client_address, LOOPBACK);
    assert_eq!(
        events_of(&app, &root, Kind::LoginFailed, &alice.id).await.len(),
        1
    );

    // A rotated refresh token presented again: the session is revoked, REFRESH_REUSE_DETECTED.
    app.refresh(&login.refresh_token).await.unwrap();
    assert_code(app.refresh(&login.refresh_token).await, Code::Unauthenticated);
    let reuse = the_event(&app, &root, Kind::RefreshReuseDetected, &alice.id).await;
    assert_eq!(reuse.session_id, login.session_id);
    assert_eq!(reuse.actor_id, "", "whoever presented it is unknown");

    // Logout: LOGOUT by the session's holder; a second Logout changes nothing and records nothing.
    let second = app.login("alice", PASSWORD).await.unwrap();
    app.logout(&second.access_token).await.unwrap();
    app.logout(&second.access_token).await.unwrap();
    let logout = the_event(&app, &root, Kind::Logout, &alice.id).await;
    assert_eq!(
        (logout.actor_id.as_str(), logout.session_id.as_str()),
        (alice.id.as_str(), second.session_id.as_str())
    );

    // Lockout: the failure that reaches the threshold locks; a locked attempt is a failure too.
    let bob = app.register("bob").await.unwrap();
    for _ in 0..2 {
        assert_code(app.login("bob", "wrong password!!").await, Code::Unauthenticated);
    }
    assert_reason(
        app.login("bob", PASSWORD).await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
    let locked = the_event(&app, &root, Kind::AccountLocked, &bob.id).await;
    assert!(detail_has(&locked, "failures=2"), "{locked:?}");
    let failures = events_of(&app, &root, Kind::LoginFailed, &bob.id).await;
    assert_eq!(failures.len(), 3, "{failures:#?}");
    assert!(
        detail_has(&failures[0], "reason=ACCOUNT_LOCKED"),
        "newest first: {failures:#?}"
    );

    let mut auth = app.auth.clone();
    let unlock = pb::UnlockUserRequest {
        user_id: bob.id.clone(),
    };
    auth.unlock_user(bearer(unlock, &root)).await.unwrap();
    let unlocked = the_event(&app, &root, Kind::AccountUnlocked, &bob.id).await;
    assert_eq!(
        (unlocked.actor_id.as_str(), unlocked.subject_id.as_str()),
        (root_id.as_str(), bob.id.as_str())
    );

    let roles = pb::SetUserRolesRequest {
        user_id: bob.id.clone(),
        roles: vec!["guest".into()],
    };
    auth.set_user_roles(bearer(roles, &root)).await.unwrap();
    let changed = the_event(&app, &root, Kind::RolesChanged, &bob.id).await;
    assert_eq!(changed.actor_id, root_id);
    assert!(detail_has(&changed, "from=user"), "{changed:?}");
    assert!(detail_has(&changed, "to=guest"), "{changed:?}");

    let disable = pb::DisableUserRequest {
        user_id: bob.id.clone(),
    };
    auth.disable_user(bearer(disable.clone(), &root)).await.unwrap();
    auth.disable_user(bearer(disable, &root)).await.unwrap();
    let disabled = the_event(&app, &root, Kind::UserDisabled, &bob.id).await;
    assert_eq!(disabled.actor_id, root_id, "once, however often it is repeated");
}

#[tokio::test]
async fn signing_key_events_name_the_key() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let root_id = app.validate(&root).await.unwrap().subject;
    let mut auth = app.auth.clone();
    let kid = auth
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await
        .unwrap()
        .into_inner()
        .kid;
    let rotated = app.audit_of_kind(&root, Kind::SigningKeyRotated).await;
    assert_eq!(rotated.len(), 1);
    assert_eq!(rotated[0].actor_id, root_id);
    assert!(detail_has(&rotated[0], &format!("kid={kid}")), "{rotated:?}");

    let revoke = pb::RevokeSigningKeyRequest { kid: kid.clone() };
    let signing = auth
        .revoke_signing_key(bearer(revoke.clone(), &root))
        .await
        .unwrap()
        .into_inner()
        .signing_kid;
    let root = app.login("root", PASSWORD).await.unwrap().access_token;
    auth.revoke_signing_key(bearer(revoke, &root)).await.unwrap();
    let revoked = app.audit_of_kind(&root, Kind::SigningKeyRevoked).await;
    assert_eq!(revoked.len(), 1, "revoking again records nothing: {revoked:?}");
    assert!(detail_has(&revoked[0], &format!("kid={kid}")), "{revoked:?}");
    assert!(
        detail_has(&revoked[0], &format!("signing_kid={signing}")),
        "{revoked:?}"
    );
}

#[tokio::test]
async fn failed_actions_leave_no_event() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let root_id = app.validate(&root).await.unwrap().subject;
    let mut auth = app.auth.clone();
    let before = app
        .audit_events(&root, pb::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .events
        .len();

    // Refused by a rule: the last admin.
    let demote = pb::SetUserRolesRequest {
        user_id: root_id.clone(),
        roles: vec!["user".into()],
    };
    assert_code(
        auth.set_user_roles(bearer(demote, &root)).await,
        Code::FailedPrecondition,
    );
    let disable = pb::DisableUserRequest {
        user_id: root_id.clone(),
    };
    assert_code(
        auth.disable_user(bearer(disable, &root)).await,
        Code::FailedPrecondition,
    );
    // Nothing there to act on.
    let nobody = "0195f3a4-0000-7000-8000-000000000001".to_owned();
    let unlock = pb::UnlockUserRequest { user_id: nobody };
    assert_code(auth.unlock_user(bearer(unlock, &root)).await, Code::NotFound);
    let revoke = pb::RevokeSigningKeyRequest {
        kid: "no-such-kid".into(),
    };
    assert_code(
        auth.revoke_signing_key(bearer(revoke, &root)).await,
        Code::NotFound,
    );
    // Refused before anything is written: a taken name, a weak password, a non-admin caller.
    assert_code(app.register("root").await, Code::AlreadyExists);
    let weak = pb::RegisterRequest {
        username: "carol".into(),
        password: "short".into(),
    };
    assert_code(auth.register(weak).await, Code::InvalidArgument);
    let alice = app.login_as("alice").await;
    let events_now = app
        .audit_events(&root, pb::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .events;
    // alice's registration and login are the only new events.
    let new: Vec<_> = events_now[..events_now.len() - before]
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(new, [Kind::LoginSucceeded, Kind::UserRegistered]);
    let alice_promotes_herself = pb::SetUserRolesRequest {
        user_id: app.validate(&alice).await.unwrap().subject,
        roles: vec!["admin".into()],
    };
    assert_code(
        auth.set_user_roles(bearer(alice_promotes_herself, &alice)).await,
        Code::PermissionDenied,
    );
    assert!(app.audit_of_kind(&root, Kind::RolesChanged).await.is_empty());
}

/// The event is written in the transaction of the change it records: when the event cannot be stored,
/// the change does not happen either.
#[tokio::test]
async fn an_action_whose_event_cannot_be_stored_does_not_happen() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let mut auth = app.auth.clone();

    app.refuse_audit(Kind::UserRegistered).await;
    assert_code(app.register("alice").await, Code::Unavailable);
    app.allow_audit().await;
    let alice = app.register("alice").await.expect("the name was never taken");

    app.refuse_audit(Kind::LoginSucceeded).await;
    assert_code(app.login("alice", PASSWORD).await, Code::Unavailable);
    app.allow_audit().await;
    let login = app.login("alice", PASSWORD).await.unwrap();
    assert_eq!(
        app.audit_of_kind(&root, Kind::LoginSucceeded).await.len(),
        2,
        "root's and this one"
    );

    app.refuse_audit(Kind::Logout).await;
    assert_code(app.logout(&login.access_token).await, Code::Unavailable);
    app.allow_audit().await;
    app.validate(&login.access_token)
        .await
        .expect("the session was not ended");

    app.refuse_audit(Kind::RolesChanged).await;
    let promote = pb::SetUserRolesRequest {
        user_id: alice.id.clone(),
        roles: vec!["admin".into(), "user".into()],
    };
    assert_code(
        auth.set_user_roles(bearer(promote, &root)).await,
        Code::Unavailable,
    );
    app.allow_audit().await;
    let alice_token = app.login("alice", PASSWORD).await.unwrap().access_token;
    assert_eq!(app.validate(&alice_token).await.unwrap().roles, ["user"]);

    app.refuse_audit(Kind::UserDisabled).await;
    let disable = pb::DisableUserRequest {
        user_id: alice.id.clone(),
    };
    assert_code(auth.disable_user(bearer(disable, &root)).await, Code::Unavailable);
    app.allow_audit().await;
    app.validate(&alice_token).await.expect("alice was not disabled");
}

#[tokio::test]
async fn audit_events_are_listed_newest_first_in_pages_and_filtered() {
    let app = TestApp::builder().no_peer_limit().start().await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    for _ in 0..3 {
        app.login("alice", PASSWORD).await.unwrap();
    }
    let since = std::time::SystemTime::now();
    app.register("bob").await.unwrap();
    app.login("bob", PASSWORD).await.unwrap();

    // Pages of two, newest first, until the end.
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAuditEventsRequest {
            page_size: 2,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = app.audit_events(&root, request).await.unwrap();
        assert!(page.events.len() <= 2);
        all.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // root: registered, logged in; alice: registered, 3 logins; bob: registered, logged in.
    assert_eq!(all.len(), 8, "{all:#?}");
    let times: Vec<_> = all.iter().map(|e| e.time.unwrap().seconds).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(all[0].kind(), Kind::LoginSucceeded);

    // By user (actor or subject) and kind.
    let alice_logins = events_of(&app, &root, Kind::LoginSucceeded, &alice.id).await;
    assert_eq!(alice_logins.len(), 3);
    assert!(alice_logins.iter().all(|e| e.subject_id == alice.id));
    // By time.
    let request = pb::ListAuditEventsRequest {
        since: Some(since.into()),
        ..Default::default()
    };
    let recent = app.audit_events(&root, request).await.unwrap().events;
    let kinds: Vec<_> = recent.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, [Kind::LoginSucceeded, Kind::UserRegistered]);

    // A page token belongs to its filter (AIP-158).
    let first = pb::ListAuditEventsRequest {
        page_size: 1,
        kind: Kind::LoginSucceeded.into(),
        ..Default::default()
    };
    let token = app.audit_events(&root, first).await.unwrap().next_page_token;
    let other_filter = pb::ListAuditEventsRequest {
        page_token: token,
        kind: Kind::UserRegistered.into(),
        ..Default::default()
    };
    assert_code(app.audit_events(&root, other_filter).await, Code::InvalidArgument);
    for bad in [
        pb::ListAuditEventsRequest {
            page_size: -1,
            ..Default::default()
        },
        pb::ListAuditEventsRequest {
            user_id: "not-a-uuid".into(),
            ..Default::default()
        },
        pb::ListAuditEventsRequest {
            kind: 999,
            ..Default::default()
        },
        pb::ListAuditEventsRequest {
            page_token: "garbage".into(),
            ..Default::default()
        },
    ] {
        assert_code(app.audit_events(&root, bad).await, Code::InvalidArgument);
    }

    // Admins only.
    let alice_token = app.login("alice", PASSWORD).await.unwrap().access_token;
    assert_reason(
        app.audit_events(&alice_token, Default::default()).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
    assert_reason(
        app.auth
            .clone()
            .list_audit_events(pb::ListAuditEventsRequest::default())
            .await,
        Code::Unauthenticated,
        Reason::TokenMissing,
    );
}

#[tokio::test]
async fn audit_events_older_than_the_retention_are_purged() {
    let mut app = spawn_app().await;
    let root = app.admin_token("root").await;
    app.register("alice").await.unwrap();
    assert_eq!(all_events(&app, &root).await.len(), 3);
    // Age the registrations past the retention (90 days by default); the purge runs at start, then hourly.
    let aged = "UPDATE audit_events SET time_us = time_us - CAST(91 AS BIGINT) * 24 * 3600 * 1000000
                WHERE kind = 'USER_REGISTERED'";
    app.auth_sql(aged, aged).await;
    let addr = app.stop_auth().await;
    app.restart_auth(addr).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = all_events(&app, &root).await;
        if events.iter().all(|e| e.kind() == Kind::LoginSucceeded) {
            assert_eq!(events.len(), 1, "the recent event stays: {events:#?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not purged: {events:#?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn self_service_events_name_the_caller_and_the_session() {
    let app = TestApp::builder().no_peer_limit().start().await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    let mine = app.login("alice", PASSWORD).await.unwrap();
    let other = app.login("alice", PASSWORD).await.unwrap();
    let third = app.login("alice", PASSWORD).await.unwrap();

    app.revoke_session(&mine.access_token, &third.session_id)
        .await
        .unwrap();
    let revoked = the_event(&app, &root, Kind::SessionRevoked, &alice.id).await;
    assert_eq!(
        (revoked.actor_id.as_str(), revoked.session_id.as_str()),
        (alice.id.as_str(), third.session_id.as_str())
    );

    // A wrong current password is a failed login by the signed-in user.
    assert_code(
        app.change_password(&mine.access_token, "not my password", "a new passphrase")
            .await,
        Code::Unauthenticated,
    );
    let failed = the_event(&app, &root, Kind::LoginFailed, &alice.id).await;
    assert_eq!(failed.actor_id, alice.id);
    assert!(
        events_of(&app, &root, Kind::PasswordChanged, &alice.id)
            .await
            .is_empty()
    );

    app.change_password(&mine.access_token, PASSWORD, "a new passphrase")
        .await
        .unwrap();
    let changed = the_event(&app, &root, Kind::PasswordChanged, &alice.id).await;
    assert_eq!(changed.actor_id, alice.id);
    assert_eq!(changed.session_id, mine.session_id, "the session that stays");
    assert!(detail_has(&changed, "sessions_ended=1"), "{changed:?}");
    assert_code(app.validate(&other.access_token).await, Code::Unauthenticated);
    assert_eq!(
        events_of(&app, &root, Kind::LoginFailed, &alice.id).await.len(),
        1,
        "the successful check withdrew its provisional failure"
    );
}

#[tokio::test]
async fn a_self_service_change_whose_event_cannot_be_stored_does_not_happen() {
    let app = TestApp::builder().no_peer_limit().start().await;
    app.register("alice").await.unwrap();
    let mine = app.login("alice", PASSWORD).await.unwrap();
    let other = app.login("alice", PASSWORD).await.unwrap();

    app.refuse_audit(Kind::SessionRevoked).await;
    assert_code(
        app.revoke_session(&mine.access_token, &other.session_id).await,
        Code::Unavailable,
    );
    app.allow_audit().await;
    app.validate(&other.access_token).await.expect("not revoked");

    app.refuse_audit(Kind::PasswordChanged).await;
    assert_code(
        app.change_password(&mine.access_token, PASSWORD, "a new passphrase")
            .await,
        Code::Unavailable,
    );
    app.allow_audit().await;
    app.validate(&other.access_token).await.expect("no session ended");
    app.login("alice", PASSWORD)
        .await
        .expect("the old password stands");
}

#[tokio::test]
async fn api_key_events_name_the_key_and_a_failed_or_unstorable_change_leaves_none() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let root_id = app.validate(&root).await.unwrap().subject;
    let alice = app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;

    // Refused (a role alice may not give): no key, no event.
    assert_code(
        app.create_api_key(&token, "x", &["admin"], None).await,
        Code::PermissionDenied,
    );
    assert!(
        events_of(&app, &root, Kind::ApiKeyCreated, &alice.id)
            .await
            .is_empty()
    );
    // Its event cannot be stored: no key either.
    app.refuse_audit(Kind::ApiKeyCreated).await;
    assert_code(
        app.create_api_key(&token, "x", &[], None).await,
        Code::Unavailable,
    );
    app.allow_audit().await;
    assert!(
        app.list_api_keys(&token, Default::default())
            .await
            .unwrap()
            .api_keys
            .is_empty()
    );

    let key = app
        .create_api_key(&token, "bot", &[], None)
        .await
        .unwrap()
        .api_key
        .unwrap();
    let created = the_event(&app, &root, Kind::ApiKeyCreated, &alice.id).await;
    assert_eq!(
        (created.actor_id.as_str(), created.session_id.as_str()),
        (alice.id.as_str(), key.id.as_str())
    );
    assert!(detail_has(&created, "roles=user"), "{created:?}");

    app.refuse_audit(Kind::ApiKeyRevoked).await;
    assert_code(app.revoke_api_key(&token, &key.id).await, Code::Unavailable);
    app.allow_audit().await;
    assert_eq!(
        app.list_api_keys(&token, Default::default())
            .await
            .unwrap()
            .api_keys
            .len(),
        1,
        "not revoked"
    );
    app.revoke_api_key(&root, &key.id).await.unwrap();
    app.revoke_api_key(&root, &key.id).await.unwrap();
    let revoked = the_event(&app, &root, Kind::ApiKeyRevoked, &alice.id).await;
    assert_eq!(
        (
            revoked.actor_id.as_str(),
            revoked.subject_id.as_str(),
            revoked.session_id.as_str()
        ),
        (root_id.as_str(), alice.id.as_str(), key.id.as_str())
    );

    // A role change that ends a key records its revocation too, by the admin who made it.
    let kept = app
        .create_api_key(&token, "reader", &["guest"], None)
        .await
        .unwrap()
        .api_key
        .unwrap();
    let demote = pb::SetUserRolesRequest {
        user_id: alice.id.clone(),
        roles: vec![],
    };
    app.auth
        .clone()
        .set_user_roles(bearer(demote, &root))
        .await
        .unwrap();
    let revoked = events_of(&app, &root, Kind::ApiKeyRevoked, &alice.id).await;
    assert_eq!(revoked.len(), 2, "{revoked:#?}");
    assert_eq!(revoked[0].session_id, kept.id);
    assert!(detail_has(&revoked[0], "reason=roles_changed"), "{revoked:?}");
    assert_eq!(revoked[0].actor_id, root_id);
}
