use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;
use watchword::pb::auth::v1 as pb;

use crate::helpers::*;

#[tokio::test]
async fn register_creates_a_user_with_the_user_role() {
    let app = spawn_app().await;
    let user = app.register("Alice").await.unwrap();
    assert_eq!(user.username, "Alice");
    assert_eq!(user.roles, ["user"]);
    assert!(uuid_like(&user.id), "{}", user.id);
    let created = SystemTime::try_from(user.create_time.unwrap()).unwrap();
    assert!(SystemTime::now().duration_since(created).unwrap() < Duration::from_secs(60));
}

#[tokio::test]
async fn register_refuses_a_username_taken_in_another_case_or_width() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    assert_code(app.register("ALICE").await, Code::AlreadyExists);
    assert_code(app.register("ａｌｉｃｅ").await, Code::AlreadyExists);
}

#[tokio::test]
async fn register_names_the_offending_field_for_bad_input() {
    let app = spawn_app().await;
    let cases = [
        ("ab", PASSWORD, "username"),
        ("has space", PASSWORD, "username"),
        (&*"u".repeat(65), PASSWORD, "username"),
        ("bob", "too short", "password"),
        ("bob", &*"p".repeat(1025), "password"),
        ("bob", "password1234", "password"),
    ];
    for (username, password, field) in cases {
        let result = app
            .auth
            .clone()
            .register(pb::RegisterRequest {
                username: username.into(),
                password: password.into(),
            })
            .await;
        let status = assert_code(result, Code::InvalidArgument);
        assert!(
            status.message().starts_with(field),
            "{username:?}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn login_issues_a_short_lived_bearer_token() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let login = app.login("ALICE", PASSWORD).await.unwrap();
    assert_eq!(login.token_type, "Bearer");
    assert_eq!(login.expires_in, 900);
    let expires = SystemTime::try_from(login.expire_time.unwrap()).unwrap();
    let remaining = expires.duration_since(SystemTime::now()).unwrap();
    assert!(remaining > Duration::from_secs(880) && remaining <= Duration::from_secs(900));

    let (header, claims) = decode_unverified(&login.access_token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    assert!(header["kid"].is_string());
    for claim in ["iss", "aud", "sub", "exp", "iat", "nbf", "jti", "roles"] {
        assert!(!claims[claim].is_null(), "missing {claim}");
    }
}

#[tokio::test]
async fn unknown_user_and_wrong_password_fail_identically() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let wrong_password = assert_code(
        app.login("alice", "not the password").await,
        Code::Unauthenticated,
    );
    let unknown_user = assert_code(app.login("mallory", PASSWORD).await, Code::Unauthenticated);
    let impossible_user = assert_code(app.login("x", PASSWORD).await, Code::Unauthenticated);
    assert_eq!(wrong_password.message(), unknown_user.message());
    assert_eq!(wrong_password.message(), impossible_user.message());
}

#[tokio::test]
async fn login_accepts_http_basic_metadata_when_the_body_is_empty() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    let request = with_authorization(pb::LoginRequest::default(), &format!("Basic {basic}"));
    let login = app.auth.clone().login(request).await.unwrap().into_inner();
    assert_eq!(app.validate(&login.access_token).await.unwrap().username, "alice");

    let wrong = base64::engine::general_purpose::STANDARD.encode("alice:nope nope nope");
    let request = with_authorization(pb::LoginRequest::default(), &format!("Basic {wrong}"));
    assert_code(app.auth.clone().login(request).await, Code::Unauthenticated);
    let nothing = app.auth.clone().login(pb::LoginRequest::default()).await;
    assert_code(nothing, Code::InvalidArgument);
}

#[tokio::test]
async fn validate_returns_the_claims_of_a_valid_token_from_body_or_metadata() {
    let app = spawn_app().await;
    let user = app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;

    let claims = app.validate(&token).await.unwrap();
    assert_eq!(claims.subject, user.id);
    assert_eq!(claims.username, "alice");
    assert_eq!(claims.roles, ["user"]);
    assert_eq!(claims.issuer, "watchword-auth");
    assert_eq!(claims.audience, "watchword");
    assert!(!claims.token_id.is_empty());
    let lifetime = SystemTime::try_from(claims.expire_time.unwrap())
        .unwrap()
        .duration_since(SystemTime::try_from(claims.issue_time.unwrap()).unwrap())
        .unwrap();
    assert_eq!(lifetime, Duration::from_secs(900));

    let from_metadata = app
        .auth
        .clone()
        .validate(bearer(pb::ValidateRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .claims
        .unwrap();
    assert_eq!(from_metadata, claims);
}

#[tokio::test]
async fn validate_refuses_missing_garbage_and_tampered_tokens() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    assert_code(app.validate("").await, Code::Unauthenticated);
    assert_code(app.validate("garbage").await, Code::Unauthenticated);
    assert_code(app.validate("a.b.c").await, Code::Unauthenticated);

    // Change one character of the payload: the signature must no longer verify.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert_code(app.validate(&parts.join(".")).await, Code::Unauthenticated);

    // Drop the signature.
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    assert_code(app.validate(&unsigned).await, Code::Unauthenticated);
}

/// Tokens signed with the service's own key but with claims it would never issue.
#[tokio::test]
async fn validate_refuses_well_signed_tokens_with_bad_claims_or_headers() {
    let app = TestApp::builder().signing_key_file().start().await;
    let pem = std::fs::read_to_string(app.dir.path().join("signing-key.pem")).unwrap();
    let kid = auth_svc::keys::SigningKey::from_pkcs8_pem(&pem)
        .unwrap()
        .kid()
        .to_owned();
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    // Start from the claims of a real token (its session is live), re-signed with the same key.
    let (_, mut good) = decode_unverified(&app.login_as("alice").await);
    good["exp"] = json!(now + 600);
    good["jti"] = json!("j1");
    let sign = |claims: &Value, typ: Option<&str>, kid: Option<&str>| {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = typ.map(str::to_owned);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    };
    // The baseline is accepted, so each refusal below is down to the one thing changed.
    app.validate(&sign(&good, Some("at+jwt"), Some(&kid)))
        .await
        .unwrap();

    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let without = |field: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(field);
        claims
    };
    let bad_claims = [
        with("exp", json!(now - 1)),
        with("exp", json!((now + 600).to_string())),
        with("exp", json!(u64::MAX)),
        with("exp", json!(now + 86_400)),
        with("nbf", json!(now + 3600)),
        with("iat", json!(now + 3600)),
        with("iss", json!("someone-else")),
        with("iss", json!(["watchword-auth"])),
        with("aud", json!("other")),
        with("sub", json!("")),
        without("exp"),
        without("nbf"),
        without("iss"),
        without("aud"),
        without("sub"),
        without("jti"),
        without("sid"),
        with("sid", json!("0195f3a4-0000-7000-8000-00000000dead")),
    ];
    for claims in &bad_claims {
        let token = sign(claims, Some("at+jwt"), Some(&kid));
        assert_code(app.validate(&token).await, Code::Unauthenticated);
        // And through posts-svc's guard.
        let listed = app.list_posts(&token, Default::default()).await;
        assert_code(listed, Code::Unauthenticated);
    }
    assert_code(
        app.validate(&sign(&good, None, Some(&kid))).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.validate(&sign(&good, Some("JWT"), Some(&kid))).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.validate(&sign(&good, Some("at+jwt"), None)).await,
        Code::Unauthenticated,
    );
    assert_code(
        app.validate(&sign(&good, Some("at+jwt"), Some("nope"))).await,
        Code::Unauthenticated,
    );

    // alg=none, whatever the casing.
    for alg in ["none", "None", "NONE"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "at+jwt", "kid": kid}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(good.to_string());
        assert_code(
            app.validate(&format!("{header}.{payload}.")).await,
            Code::Unauthenticated,
        );
        assert_code(
            app.validate(&format!("{header}.{payload}.AAAA")).await,
            Code::Unauthenticated,
        );
    }
}

#[tokio::test]
async fn the_signing_key_persists_so_tokens_survive_a_restart() {
    let mut app = spawn_app().await;
    let token = app.login_as("alice").await;
    let addr = app.stop_auth().await;
    app.restart_auth(addr).await;
    assert_eq!(app.validate(&token).await.unwrap().username, "alice");
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

fn decode_unverified(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next =
        || serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap()).unwrap();
    (next(), next())
}
