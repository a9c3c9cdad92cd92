//! Envoy's external authorization on auth-svc (`envoy.service.auth.v3.Authorization/Check`): Validate's
//! decision as a gateway needs it.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, attribute_context, authorization_client::AuthorizationClient,
};
use tonic::Code;

use crate::helpers::{bearer as bearer_request, *};

async fn check(app: &TestApp, headers: &[(&str, &str)]) -> Result<CheckResponse, tonic::Status> {
    let http = attribute_context::HttpRequest {
        method: "POST".into(),
        path: "/posts.v1.PostsService/ListPosts".into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(http),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let mut client = AuthorizationClient::new(channel(app.auth_addr()));
    client.check(request).await.map(tonic::Response::into_inner)
}

/// The headers of the answer, by name: (value, whether it overwrites).
fn answer(response: &CheckResponse) -> (Option<u32>, HashMap<String, String>) {
    let (status, options) = match response.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => (None, &ok.headers),
        HttpResponse::DeniedResponse(denied) => {
            (denied.status.as_ref().map(|s| s.code as u32), &denied.headers)
        }
        HttpResponse::ErrorResponse(_) => panic!("an error response"),
    };
    let map = options
        .iter()
        .map(|o| {
            let h = o.header.as_ref().unwrap();
            (h.key.clone(), h.value.clone())
        })
        .collect();
    (status, map)
}

#[tokio::test]
async fn an_allowed_request_carries_the_caller_upstream_and_no_client_supplied_identity() {
    let app = spawn_app().await;
    let user = app.register("alice").await.unwrap();
    let login = app.login("alice", PASSWORD).await.unwrap();
    let bearer = format!("Bearer {}", login.access_token);
    let response = check(
        &app,
        &[("authorization", &bearer), ("x-watchword-user-id", "root")],
    )
    .await
    .unwrap();
    assert_eq!(response.status.as_ref().unwrap().code, Code::Ok as i32);
    let (status, headers) = answer(&response);
    assert_eq!(status, None, "an OK response");
    assert_eq!(headers["x-watchword-user-id"], user.id);
    assert_eq!(headers["x-watchword-username"], "alice");
    assert_eq!(headers["x-watchword-roles"], "user");
    assert_eq!(headers["x-watchword-session-id"], login.session_id);
    let HttpResponse::OkResponse(ok) = response.http_response.unwrap() else {
        unreachable!()
    };
    for option in ok.headers {
        assert_eq!(
            option.append_action,
            envoy_types::ext_authz::v3::pb::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            "{option:?}: a client's own x-watchword-* header must not survive"
        );
    }
}

#[tokio::test]
async fn refusals_are_401_with_a_bearer_challenge_the_reason_and_the_grpc_status() {
    let app = spawn_app().await;

    let response = check(&app, &[]).await.unwrap();
    assert_eq!(
        response.status.as_ref().unwrap().code,
        Code::Unauthenticated as i32
    );
    let (status, headers) = answer(&response);
    assert_eq!(status, Some(401));
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["x-watchword-reason"], "TOKEN_MISSING");
    assert_eq!(headers["grpc-status"], "16");
    assert!(headers.contains_key("grpc-status-details-bin"));

    let response = check(&app, &[("authorization", "Bearer not-a-token")])
        .await
        .unwrap();
    let (status, headers) = answer(&response);
    assert_eq!(status, Some(401));
    assert_eq!(headers["www-authenticate"], r#"Bearer error="invalid_token""#);
    assert_eq!(headers["x-watchword-reason"], "TOKEN_MALFORMED");

    let response = check(&app, &[("authorization", "Basic YTpi")]).await.unwrap();
    assert_eq!(headers_of(&response)["x-watchword-reason"], "TOKEN_MALFORMED");
}

fn headers_of(response: &CheckResponse) -> HashMap<String, String> {
    answer(response).1
}

#[tokio::test]
async fn a_logout_or_a_disabled_user_is_denied_at_once() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;
    let bearer = format!("Bearer {token}");
    assert!(
        answer(&check(&app, &[("authorization", &bearer)]).await.unwrap())
            .0
            .is_none()
    );
    app.logout(&token).await.unwrap();
    let response = check(&app, &[("authorization", &bearer)]).await.unwrap();
    let (status, headers) = answer(&response);
    assert_eq!(status, Some(401));
    assert_eq!(headers["x-watchword-reason"], "TOKEN_REVOKED");

    let root = app.admin_token("root").await;
    let bob = app.register("bob").await.unwrap();
    let bearer = format!(
        "Bearer {}",
        app.login("bob", PASSWORD).await.unwrap().access_token
    );
    assert!(
        answer(&check(&app, &[("authorization", &bearer)]).await.unwrap())
            .0
            .is_none()
    );
    let disable = watchword::pb::auth::v1::DisableUserRequest { user_id: bob.id };
    app.auth
        .clone()
        .disable_user(bearer_request(disable, &root))
        .await
        .unwrap();
    let response = check(&app, &[("authorization", &bearer)]).await.unwrap();
    let (status, headers) = answer(&response);
    assert_eq!(status, Some(401));
    assert_eq!(headers["x-watchword-reason"], "USER_DISABLED");
}
