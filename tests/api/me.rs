//! The signed-in user's own account: GetMe, ChangePassword, ListSessions and RevokeSession.

use std::time::{Duration, SystemTime};

use tonic::Code;
use watchword::{
    pb::{auth::v1 as pb, posts::v1::ListPostsRequest},
    reason::Reason,
};

use crate::helpers::*;

const NEW_PASSWORD: &str = "a brand new passphrase";

fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().expect("timestamp set").seconds
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn get_me_returns_the_stored_user_and_the_session_of_the_token() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();

    let me = app.get_me(&login.access_token).await.unwrap();
    let (user, session) = (me.user.unwrap(), me.session.unwrap());
    assert_eq!(
        (user.id.as_str(), user.username.as_str()),
        (alice.id.as_str(), "alice")
    );
    assert_eq!(session.id, login.session_id);
    assert!(session.current);
    assert_eq!(session.api_key_id, "");
    assert_eq!(session.client_address, "127.0.0.1");
    assert!(session.user_agent.contains("tonic"), "{session:?}");
    assert!(session.last_refresh_time.is_none());
    assert_eq!(seconds(&session.expire_time), seconds(&login.refresh_expire_time));
    assert!((seconds(&session.create_time) - unix_now()).abs() < 60);

    // The roles as stored now, not as the token says.
    let grant = pb::SetUserRolesRequest {
        user_id: alice.id.clone(),
        roles: vec!["admin".into(), "user".into()],
    };
    app.auth
        .clone()
        .set_user_roles(bearer(grant, &root))
        .await
        .unwrap();
    assert_eq!(app.validate(&login.access_token).await.unwrap().roles, ["user"]);
    let me = app.get_me(&login.access_token).await.unwrap();
    assert_eq!(me.user.unwrap().roles, ["admin", "user"]);

    // A refresh moves the session on.
    let refreshed = app.refresh(&login.refresh_token).await.unwrap();
    let session = app
        .get_me(&refreshed.access_token)
        .await
        .unwrap()
        .session
        .unwrap();
    assert!(session.last_refresh_time.is_some());
    assert_eq!(
        seconds(&session.expire_time),
        seconds(&refreshed.refresh_expire_time)
    );

    // Only for a valid token of a live session.
    app.logout(&refreshed.access_token).await.unwrap();
    assert_reason(
        app.get_me(&refreshed.access_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    assert_reason(
        app.auth.clone().get_me(pb::GetMeRequest {}).await,
        Code::Unauthenticated,
        Reason::TokenMissing,
    );
}

#[tokio::test]
async fn change_password_ends_every_other_session_within_a_second_but_not_the_callers() {
    for mode in [posts_svc::VerifyMode::Remote, posts_svc::VerifyMode::Local] {
        let app = TestApp::builder().no_peer_limit().verify(mode).start().await;
        app.register("alice").await.unwrap();
        let mine = app.login("alice", PASSWORD).await.unwrap();
        let other = app.login("alice", PASSWORD).await.unwrap();
        // Both work through the guard (and are cached, or verified locally, from now on).
        for token in [&mine.access_token, &other.access_token] {
            app.list_posts(token, ListPostsRequest::default()).await.unwrap();
        }

        app.change_password(&mine.access_token, PASSWORD, NEW_PASSWORD)
            .await
            .unwrap();

        let took = app
            .refused_within(&other.access_token, Reason::TokenRevoked, Duration::from_secs(1))
            .await;
        eprintln!("{mode:?}: the other session refused after {took:?}");
        assert_reason(
            app.validate(&other.access_token).await,
            Code::Unauthenticated,
            Reason::TokenRevoked,
        );
        assert_reason(
            app.refresh(&other.refresh_token).await,
            Code::Unauthenticated,
            Reason::TokenRevoked,
        );
        // The caller's session goes on, through the guard and with its refresh token.
        app.list_posts(&mine.access_token, ListPostsRequest::default())
            .await
            .unwrap();
        app.create_post(&mine.access_token, "still", "here")
            .await
            .unwrap();
        app.refresh(&mine.refresh_token).await.unwrap();
        // The old password is gone, the new one logs in.
        assert_reason(
            app.login("alice", PASSWORD).await,
            Code::Unauthenticated,
            Reason::InvalidCredentials,
        );
        app.login("alice", NEW_PASSWORD).await.unwrap();
    }
}

#[tokio::test]
async fn change_password_checks_the_current_password_as_login_does() {
    let app = TestApp::builder()
        .no_peer_limit()
        .auth(|settings| settings.lockout_threshold = 2)
        .start()
        .await;
    app.register("alice").await.unwrap();
    let mine = app.login("alice", PASSWORD).await.unwrap();
    let other = app.login("alice", PASSWORD).await.unwrap();

    // The new password must meet the policy; nothing is counted for that.
    for weak in ["short", "password1234", "alice-is-my-name"] {
        let refused = assert_code(
            app.change_password(&mine.access_token, PASSWORD, weak).await,
            Code::InvalidArgument,
        );
        assert!(refused.message().starts_with("new_password:"), "{refused:?}");
    }
    let too_long = "x".repeat(1025);
    assert_code(
        app.change_password(&mine.access_token, &too_long, NEW_PASSWORD)
            .await,
        Code::InvalidArgument,
    );

    // A wrong current password fails like a wrong login, counts against the lockout, and changes nothing.
    assert_reason(
        app.change_password(&mine.access_token, "not my password", NEW_PASSWORD)
            .await,
        Code::Unauthenticated,
        Reason::InvalidCredentials,
    );
    app.validate(&other.access_token).await.expect("nothing ended");
    assert_reason(
        app.change_password(&mine.access_token, "still not my password", NEW_PASSWORD)
            .await,
        Code::Unauthenticated,
        Reason::InvalidCredentials,
    );
    assert_reason(
        app.change_password(&mine.access_token, PASSWORD, NEW_PASSWORD)
            .await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
    assert_reason(
        app.login("alice", PASSWORD).await,
        Code::ResourceExhausted,
        Reason::AccountLocked,
    );
    app.login("alice", PASSWORD).await.expect_err("still locked");
    app.validate(&other.access_token).await.expect("nothing ended");

    // Without a valid token there is nothing to change.
    assert_reason(
        app.change_password("a.b.c", PASSWORD, NEW_PASSWORD).await,
        Code::Unauthenticated,
        Reason::TokenMalformed,
    );
}

#[tokio::test]
async fn list_sessions_shows_the_live_sessions_and_marks_the_callers() {
    let app = TestApp::builder().no_peer_limit().start().await;
    let root = app.admin_token("root").await;
    let alice = app.register("alice").await.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(app.login("alice", PASSWORD).await.unwrap());
    }
    app.logout(&sessions[3].access_token).await.unwrap();
    let mine = &sessions[1];

    let listed = app
        .list_sessions(&mine.access_token, Default::default())
        .await
        .unwrap();
    assert_eq!(listed.next_page_token, "");
    let ids: Vec<_> = listed.sessions.iter().map(|s| s.id.as_str()).collect();
    let live: Vec<_> = sessions[..3].iter().map(|l| l.session_id.as_str()).collect();
    assert_eq!(ids, live, "live ones only, oldest first");
    let current: Vec<_> = listed.sessions.iter().map(|s| s.current).collect();
    assert_eq!(current, [false, true, false]);
    assert!(listed.sessions.iter().all(|s| s.client_address == "127.0.0.1"));

    // A page at a time; a page token belongs to its user_id.
    let mut paged = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListSessionsRequest {
            page_size: 2,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = app.list_sessions(&mine.access_token, request).await.unwrap();
        paged.extend(page.sessions.into_iter().map(|s| s.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paged, live);

    // Admins list anyone's; others only their own.
    let request = pb::ListSessionsRequest {
        user_id: alice.id.clone(),
        ..Default::default()
    };
    let as_admin = app.list_sessions(&root, request.clone()).await.unwrap();
    assert_eq!(as_admin.sessions.len(), 3);
    assert!(as_admin.sessions.iter().all(|s| !s.current));
    let bob = app.login_as("bob").await;
    assert_reason(
        app.list_sessions(&bob, request).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );
    let own = pb::ListSessionsRequest {
        user_id: app.validate(&bob).await.unwrap().subject,
        ..Default::default()
    };
    assert_eq!(app.list_sessions(&bob, own).await.unwrap().sessions.len(), 1);
    let bad = pb::ListSessionsRequest {
        user_id: "not-a-uuid".into(),
        ..Default::default()
    };
    assert_code(app.list_sessions(&bob, bad).await, Code::InvalidArgument);
}

#[tokio::test]
async fn revoke_session_ends_ones_own_or_as_an_admin_anyones_within_a_second() {
    let app = TestApp::builder()
        .no_peer_limit()
        .verify(posts_svc::VerifyMode::Local)
        .start()
        .await;
    let root = app.admin_token("root").await;
    app.register("alice").await.unwrap();
    let laptop = app.login("alice", PASSWORD).await.unwrap();
    let phone = app.login("alice", PASSWORD).await.unwrap();
    let tablet = app.login("alice", PASSWORD).await.unwrap();
    app.list_posts(&phone.access_token, ListPostsRequest::default())
        .await
        .unwrap();

    // From the laptop, alice signs out her phone.
    app.revoke_session(&laptop.access_token, &phone.session_id)
        .await
        .unwrap();
    app.refused_within(&phone.access_token, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
    assert_reason(
        app.refresh(&phone.refresh_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    app.revoke_session(&laptop.access_token, &phone.session_id)
        .await
        .expect("idempotent");
    app.validate(&laptop.access_token).await.unwrap();

    // Nobody else may, and they cannot even tell it exists; an admin may.
    let bob = app.login_as("bob").await;
    assert_code(app.revoke_session(&bob, &tablet.session_id).await, Code::NotFound);
    app.validate(&tablet.access_token).await.unwrap();
    app.revoke_session(&root, &tablet.session_id).await.unwrap();
    app.refused_within(&tablet.access_token, Reason::TokenRevoked, Duration::from_secs(1))
        .await;

    assert_code(
        app.revoke_session(&bob, "0195f3a4-0000-7000-8000-000000000001")
            .await,
        Code::NotFound,
    );
    assert_code(
        app.revoke_session(&bob, "not-a-uuid").await,
        Code::InvalidArgument,
    );
    // Ending one's own current session is a logout.
    app.revoke_session(&laptop.access_token, &laptop.session_id)
        .await
        .unwrap();
    assert_reason(
        app.validate(&laptop.access_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
}
