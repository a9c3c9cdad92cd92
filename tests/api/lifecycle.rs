//! Refresh, logout, roles and admin: the token lifecycle beyond "issue and check".

use std::time::Duration;

use tonic::Code;
use watchword::{
    pb::{
        auth::v1::{self as pb, LogoutRequest},
        posts::v1::ListPostsRequest,
    },
    reason::Reason,
};

use crate::helpers::*;

#[tokio::test]
async fn login_starts_a_session_carried_by_the_access_token() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    assert!(login.refresh_token.starts_with("wwrt_"));
    assert!(!login.session_id.is_empty());
    assert!(login.refresh_expire_time.is_some());
    let claims = app.validate(&login.access_token).await.unwrap();
    assert_eq!(claims.session_id, login.session_id);
}

#[tokio::test]
async fn refresh_rotates_the_refresh_token_and_issues_a_new_access_token() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let first = app.refresh(&login.refresh_token).await.unwrap();
    assert_ne!(first.refresh_token, login.refresh_token);
    assert_ne!(first.access_token, login.access_token);
    assert_eq!((first.token_type.as_str(), first.expires_in), ("Bearer", 900));
    let claims = app.validate(&first.access_token).await.unwrap();
    assert_eq!(claims.session_id, login.session_id);
    let second = app.refresh(&first.refresh_token).await.unwrap();
    app.validate(&second.access_token).await.unwrap();
}

#[tokio::test]
async fn concurrent_refreshes_within_the_grace_window_get_the_same_successor() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let (a, b) = tokio::join!(
        app.refresh(&login.refresh_token),
        app.refresh(&login.refresh_token)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.refresh_token, b.refresh_token);
    // And a plain retry a moment later too (a lost response, retried).
    let c = app.refresh(&login.refresh_token).await.unwrap();
    assert_eq!(c.refresh_token, a.refresh_token);
    // The session is still alive: the successor works.
    app.refresh(&a.refresh_token).await.unwrap();
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_after_the_grace_window_ends_the_session() {
    let app = TestApp::builder()
        .auth(|settings| settings.refresh_reuse_grace = Duration::ZERO)
        .start()
        .await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let rotated = app.refresh(&login.refresh_token).await.unwrap();

    // Someone replays the old token (stolen, say): the whole session dies, for both holders.
    assert_reason(
        app.refresh(&login.refresh_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    assert_reason(
        app.refresh(&rotated.refresh_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    assert_reason(
        app.validate(&rotated.access_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    // Through the guard: enforced within a second, even with cached validations.
    app.refused_within(&login.access_token, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
    // A new login is a new session and works.
    app.login("alice", PASSWORD).await.unwrap();
}

#[tokio::test]
async fn refresh_refuses_anything_but_a_live_refresh_token() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    assert_reason(app.refresh("").await, Code::Unauthenticated, Reason::TokenMissing);
    assert_reason(
        app.refresh(&login.access_token).await,
        Code::Unauthenticated,
        Reason::TokenInvalid,
    );
    let unknown = format!("wwrt_{}", "A".repeat(43));
    assert_reason(
        app.refresh(&unknown).await,
        Code::Unauthenticated,
        Reason::TokenInvalid,
    );
    // ... and a refresh token is never an access token.
    assert_code(app.validate(&login.refresh_token).await, Code::Unauthenticated);
    assert_code(
        app.list_posts(&login.refresh_token, ListPostsRequest::default())
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused_as_expired() {
    let app = TestApp::builder()
        .auth(|settings| settings.refresh_token_ttl = Duration::ZERO)
        .start()
        .await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    assert_reason(
        app.refresh(&login.refresh_token).await,
        Code::Unauthenticated,
        Reason::TokenExpired,
    );
}

#[tokio::test]
async fn logout_revokes_the_session_at_once_everywhere_and_is_idempotent() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let other_session = app.login("alice", PASSWORD).await.unwrap();
    app.list_posts(&login.access_token, ListPostsRequest::default())
        .await
        .unwrap();

    app.logout(&login.access_token).await.unwrap();
    assert_reason(
        app.validate(&login.access_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    // posts-svc passes auth-svc's reason through, so the client knows to log in again.
    // Through the guard: enforced within a second, even with cached validations.
    app.refused_within(&login.access_token, Reason::TokenRevoked, Duration::from_secs(1))
        .await;
    assert_reason(
        app.refresh(&login.refresh_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    app.logout(&login.access_token)
        .await
        .expect("logout is idempotent");

    // Other sessions of the same user are untouched.
    app.validate(&other_session.access_token).await.unwrap();
}

/// auth-svc remembers verified tokens and live sessions (on SQLite); a logout racing a stream of Validates
/// must still win for every Validate that starts after the logout returned.
#[tokio::test]
async fn validate_refuses_a_token_from_the_moment_logout_returns_even_under_load() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    for round in 0..5 {
        let login = app.login("alice", PASSWORD).await.unwrap();
        app.validate(&login.access_token).await.unwrap();
        let hammering: Vec<_> = (0..4)
            .map(|_| {
                let (mut auth, token) = (app.auth.clone(), login.access_token.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let _ = auth.validate(pb::ValidateRequest { token: token.clone() }).await;
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        app.logout(&login.access_token).await.unwrap();
        for _ in 0..20 {
            assert_reason(
                app.validate(&login.access_token).await,
                Code::Unauthenticated,
                Reason::TokenRevoked,
            );
        }
        for task in hammering {
            task.await.unwrap();
        }
        assert_reason(
            app.validate(&login.access_token).await,
            Code::Unauthenticated,
            Reason::TokenRevoked,
        );
        eprintln!("round {round}: refused after logout");
    }
}

#[tokio::test]
async fn logout_with_only_a_refresh_token_ends_that_session() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let request = LogoutRequest {
        refresh_token: login.refresh_token.clone(),
    };
    app.auth.clone().logout(request).await.unwrap();
    assert_reason(
        app.validate(&login.access_token).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    let nothing = app.auth.clone().logout(LogoutRequest::default()).await;
    assert_reason(nothing, Code::Unauthenticated, Reason::TokenMissing);
}

#[tokio::test]
async fn admin_rpcs_refuse_non_admins_and_anonymous_callers() {
    let app = spawn_app().await;
    let alice = app.login_as("alice").await;
    let alice_id = app.validate(&alice).await.unwrap().subject;
    let mut auth = app.auth.clone();

    let set_roles = pb::SetUserRolesRequest {
        user_id: alice_id.clone(),
        roles: vec!["admin".into()],
    };
    let disable = pb::DisableUserRequest {
        user_id: alice_id.clone(),
    };
    for (token, code, reason) in [
        (Some(alice.as_str()), Code::PermissionDenied, Reason::RoleRequired),
        (None, Code::Unauthenticated, Reason::TokenMissing),
    ] {
        let set_roles = maybe_bearer(set_roles.clone(), token);
        assert_reason(auth.set_user_roles(set_roles).await, code, reason);
        let list = maybe_bearer(pb::ListUsersRequest::default(), token);
        assert_reason(auth.list_users(list).await, code, reason);
        let disable = maybe_bearer(disable.clone(), token);
        assert_reason(auth.disable_user(disable).await, code, reason);
    }
    // Nothing changed.
    assert_eq!(app.validate(&alice).await.unwrap().roles, ["user"]);
}

fn maybe_bearer<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    match token {
        Some(token) => bearer(message, token),
        None => tonic::Request::new(message),
    }
}

#[tokio::test]
async fn admins_list_users_page_by_page() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    for name in ["alice", "bob", "carol"] {
        app.register(name).await.unwrap();
    }
    let mut auth = app.auth.clone();
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListUsersRequest {
            page_size: 2,
            page_token: token,
        };
        let page = auth
            .list_users(bearer(request, &root))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 2);
        names.extend(page.users.into_iter().map(|u| u.username));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(names, ["root", "alice", "bob", "carol"]);
    let bad = pb::ListUsersRequest {
        page_size: -1,
        page_token: String::new(),
    };
    assert_code(auth.list_users(bearer(bad, &root)).await, Code::InvalidArgument);
}

#[tokio::test]
async fn granting_admin_takes_effect_on_the_next_token_and_removing_it_ends_sessions() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let alice = app.login_as("alice").await;
    let post = app.create_post(&alice, "alice's", "body").await.unwrap();
    let bob = app.login_as("bob").await;
    let bob_id = app.validate(&bob).await.unwrap().subject;
    let mut auth = app.auth.clone();
    let set = |roles: &[&str]| pb::SetUserRolesRequest {
        user_id: bob_id.clone(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    };

    let user = auth
        .set_user_roles(bearer(set(&["user", "admin"]), &root))
        .await
        .unwrap();
    assert_eq!(user.into_inner().user.unwrap().roles, ["admin", "user"]);
    // Adding a role keeps bob's session; his old token still says "user", a new one says "admin".
    assert_reason(
        app.delete_post(&bob, &post.id).await,
        Code::PermissionDenied,
        Reason::NotOwner,
    );
    let bob_admin = app.login("bob", PASSWORD).await.unwrap().access_token;
    app.delete_post(&bob_admin, &post.id)
        .await
        .expect("admins delete any post");
    assert_code(
        app.delete_post(&bob_admin, &post.id).await,
        Code::NotFound, // admins may learn that a post does not exist
    );

    // Taking a role away ends bob's sessions, so no live token keeps it.
    auth.set_user_roles(bearer(set(&["user"]), &root)).await.unwrap();
    assert_reason(
        app.validate(&bob_admin).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );
    assert_reason(
        app.validate(&bob).await,
        Code::Unauthenticated,
        Reason::TokenRevoked,
    );

    // With no role at all, bob can log in but the posts policy refuses him.
    auth.set_user_roles(bearer(set(&[]), &root)).await.unwrap();
    let roleless = app.login("bob", PASSWORD).await.unwrap().access_token;
    assert_reason(
        app.list_posts(&roleless, ListPostsRequest::default()).await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );

    let unknown_role = auth.set_user_roles(bearer(set(&["superuser"]), &root)).await;
    assert_code(unknown_role, Code::InvalidArgument);
    let nobody = pb::SetUserRolesRequest {
        user_id: "0195f3a4-0000-7000-8000-000000000001".into(),
        roles: vec![],
    };
    assert_code(auth.set_user_roles(bearer(nobody, &root)).await, Code::NotFound);
}

#[tokio::test]
async fn a_disabled_user_is_locked_out_at_once() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    app.register("bob").await.unwrap();
    let login = app.login("bob", PASSWORD).await.unwrap();
    let bob_id = app.validate(&login.access_token).await.unwrap().subject;

    let request = pb::DisableUserRequest { user_id: bob_id };
    let user = app
        .auth
        .clone()
        .disable_user(bearer(request.clone(), &root))
        .await
        .unwrap();
    assert!(user.into_inner().user.unwrap().disabled);
    app.auth
        .clone()
        .disable_user(bearer(request, &root))
        .await
        .expect("disabling twice is fine");

    assert_reason(
        app.validate(&login.access_token).await,
        Code::Unauthenticated,
        Reason::UserDisabled,
    );
    // Through the guard: enforced within a second, even with cached validations.
    app.refused_within(&login.access_token, Reason::UserDisabled, Duration::from_secs(1))
        .await;
    assert_reason(
        app.refresh(&login.refresh_token).await,
        Code::Unauthenticated,
        Reason::UserDisabled,
    );
    // Login fails exactly like a wrong password.
    let disabled = assert_code(app.login("bob", PASSWORD).await, Code::Unauthenticated);
    let wrong = assert_code(app.login("root", "wrong password!!").await, Code::Unauthenticated);
    assert_eq!(disabled.message(), wrong.message());
    assert_eq!(watchword::reason::of(&disabled), watchword::reason::of(&wrong));
}

#[tokio::test]
async fn the_guard_reports_why_it_refused() {
    let mut app = spawn_app().await;
    let token = app.login_as("alice").await;
    let list = ListPostsRequest::default();
    assert_reason(
        app.posts.clone().list_posts(list.clone()).await,
        Code::Unauthenticated,
        Reason::TokenMissing,
    );
    let basic = with_authorization(list.clone(), "Basic YWxpY2U6cGFzc3dvcmQ=");
    assert_reason(
        app.posts.clone().list_posts(basic).await,
        Code::Unauthenticated,
        Reason::TokenMalformed,
    );
    assert_reason(
        app.list_posts("a.b.c", list.clone()).await,
        Code::Unauthenticated,
        Reason::TokenMalformed,
    );
    app.stop_auth().await;
    assert_reason(
        app.list_posts(&token, list).await,
        Code::Unavailable,
        Reason::AuthUnavailable,
    );
}
