//! Roles as levels: guests read, users also write, admins also administer; `--default-role` decides what
//! a new registration starts as.

use tonic::Code;
use watchword::{
    pb::{auth::v1 as pb, posts::v1::ListPostsRequest},
    reason::Reason,
};

use crate::helpers::*;

/// Sets `user_id`'s roles as the admin `root`.
async fn set_roles(app: &TestApp, root: &str, user_id: &str, roles: &[&str]) -> pb::User {
    let request = pb::SetUserRolesRequest {
        user_id: user_id.into(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
    };
    let response = app.auth.clone().set_user_roles(bearer(request, root)).await;
    response.unwrap().into_inner().user.unwrap()
}

#[tokio::test]
async fn a_guest_reads_posts_but_is_refused_writing_them_with_role_required() {
    for mode in [posts_svc::VerifyMode::Remote, posts_svc::VerifyMode::Local] {
        let app = TestApp::builder().verify(mode).start().await;
        let root = app.admin_token("root").await;
        let post = app.create_post(&root, "Hello", "from root").await.unwrap();
        let guest = app.register("gus").await.unwrap();
        set_roles(&app, &root, &guest.id, &["guest"]).await;
        let gus = app.login("gus", PASSWORD).await.unwrap().access_token;

        assert_eq!(app.validate(&gus).await.unwrap().roles, ["guest"]);
        let page = app.list_posts(&gus, ListPostsRequest::default()).await.unwrap();
        assert_eq!(page.posts.len(), 1, "{mode:?}");
        app.get_post(&gus, &post.id).await.unwrap();
        let refused = assert_reason(
            app.create_post(&gus, "Mine", "a guest's post").await,
            Code::PermissionDenied,
            Reason::RoleRequired,
        );
        assert!(refused.message().contains("user"), "{refused:?}");
        assert_reason(
            app.delete_post(&gus, &post.id).await,
            Code::PermissionDenied,
            Reason::RoleRequired,
        );
        assert_eq!(
            app.list_posts(&root, ListPostsRequest::default())
                .await
                .unwrap()
                .posts
                .len(),
            1,
            "{mode:?}: nothing was written"
        );
    }
}

#[tokio::test]
async fn a_higher_level_may_do_what_a_lower_one_may() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let ann = app.register("ann").await.unwrap();
    // Only "admin", without "user": still allowed to write, as admin is above user.
    set_roles(&app, &root, &ann.id, &["admin"]).await;
    let ann_token = app.login("ann", PASSWORD).await.unwrap().access_token;
    let post = app.create_post(&ann_token, "Admin", "writes").await.unwrap();
    app.get_post(&ann_token, &post.id).await.unwrap();
}

#[tokio::test]
async fn with_default_role_guest_new_accounts_only_read_until_an_admin_promotes_them() {
    let app = TestApp::builder()
        .auth(|settings| settings.default_role = auth_svc::settings::DefaultRole::Guest)
        .start()
        .await;
    let root = app.admin_token("root").await;
    let gus = app.register("gus").await.unwrap();
    assert_eq!(gus.roles, ["guest"]);
    let token = app.login("gus", PASSWORD).await.unwrap().access_token;
    app.list_posts(&token, ListPostsRequest::default()).await.unwrap();
    assert_reason(
        app.create_post(&token, "t", "b").await,
        Code::PermissionDenied,
        Reason::RoleRequired,
    );

    // Promotion takes effect with the next token.
    assert_eq!(set_roles(&app, &root, &gus.id, &["user"]).await.roles, ["user"]);
    let promoted = app.login("gus", PASSWORD).await.unwrap().access_token;
    app.create_post(&promoted, "t", "b").await.unwrap();
}

#[tokio::test]
async fn by_default_new_accounts_are_users() {
    let app = spawn_app().await;
    assert_eq!(app.register("alice").await.unwrap().roles, ["user"]);
}
