//! auth-svc's HTTP documents on its gRPC port: `/.well-known/jwks.json` and
//! `/.well-known/openid-configuration`, over HTTP/1.1 and HTTP/2, and what a JOSE library does with them.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{DecodingKey, Validation, jwk::Jwk};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use watchword::pb::auth::v1 as pb;

use crate::helpers::*;

/// One HTTP/1.1 request on a fresh connection: the status, the head's lines, and the body.
async fn http1(addr: SocketAddr, method: &str, path: &str, host: Option<&str>) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a whole HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// `GET path` over HTTP/2 (prior knowledge, as a gateway's cluster with `http2_protocol_options` sends it).
async fn http2_get(addr: SocketAddr, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status.as_u16(),
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn json(text: impl AsRef<[u8]>) -> serde_json::Value {
    serde_json::from_slice(text.as_ref()).unwrap()
}

/// Verifies `token` as a JOSE library would from a JWK Set document: the key named by the token's `kid`,
/// EdDSA only, issuer and audience checked.
fn verify(document: &serde_json::Value, token: &str, issuer: &str) -> Result<String, String> {
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk: Jwk = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .map(|k| serde_json::from_value(k.clone()).unwrap())
        .ok_or_else(|| format!("no key {kid} in the set"))?;
    let mut validation = Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&["watchword"]);
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|data| data.claims["sub"].as_str().unwrap().to_owned())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_jwks_document_has_getjwks_keys_and_verifies_issued_tokens_over_http_1_1_and_http_2() {
    let app = spawn_app().await;
    let user = app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;
    let grpc = app
        .auth
        .clone()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();

    let (status, head, body) = http1(app.auth_addr(), "GET", "/.well-known/jwks.json", Some("auth")).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("cache-control: public, max-age=300"), "{head}");
    let document = json(&body);
    assert_eq!(document, json(&grpc.jwks_json), "the same key set as GetJwks");
    assert_eq!(document["keys"][0]["kid"], grpc.keys[0].kid.as_str());
    assert_eq!(verify(&document, &token, "watchword-auth"), Ok(user.id.clone()));

    let (status, headers, body) = http2_get(app.auth_addr(), "/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "public, max-age=300");
    assert_eq!(json(&body), document);

    // A token signed by a key the set does not hold does not verify against it.
    let (_, other_key) = write_signing_key(&app.dir);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(grpc.keys[0].kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA)
        },
        &serde_json::json!({"sub": user.id, "iss": "watchword-auth", "aud": "watchword",
            "exp": 4_000_000_000u64, "iat": 1_700_000_000u64}),
        &jsonwebtoken::EncodingKey::from_ed_pem(other_key.as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(verify(&document, &forged, "watchword-auth").is_err());
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

#[tokio::test]
async fn a_rotated_in_key_is_published_at_once_and_signs_only_after_the_publish_lead() {
    let app = TestApp::builder()
        .auth(|s| s.key_publish_lead = std::time::Duration::from_secs(2))
        .start()
        .await;
    let root = app.admin_token("root").await;
    let old_token = app.login_as("alice").await;
    let before = std::time::SystemTime::now();
    let rotated = app
        .auth
        .clone()
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: false }, &root))
        .await
        .unwrap()
        .into_inner();
    let sign_time = std::time::SystemTime::try_from(rotated.sign_time.unwrap()).unwrap();
    let lead = sign_time.duration_since(before).unwrap();
    assert!(
        lead >= std::time::Duration::from_secs(2) && lead < std::time::Duration::from_secs(3),
        "{lead:?}"
    );

    // Published at once, over HTTP and gRPC; not signing yet.
    let (status, head, body) = http1(app.auth_addr(), "GET", "/.well-known/jwks.json", Some("auth")).await;
    assert_eq!(status, 200);
    assert!(
        head.contains("cache-control: public, max-age=1"),
        "half the lead: {head}"
    );
    let document = json(&body);
    let kids: Vec<&str> = document["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&rotated.kid.as_str()));
    assert_ne!(kids[0], rotated.kid, "the key signing now comes first");
    let waiting = app.login("alice", PASSWORD).await.unwrap().access_token;
    assert_eq!(
        kid_of(&waiting),
        kid_of(&old_token),
        "the old key signs until the new key's time"
    );

    // From its time on, the new key signs (never before it); every token verifies against the set
    // published before. Polled, with a deadline.
    let deadline = sign_time + std::time::Duration::from_secs(3);
    let new_token = loop {
        let token = app.login("alice", PASSWORD).await.unwrap().access_token;
        if kid_of(&token) == rotated.kid {
            assert!(
                std::time::SystemTime::now() >= sign_time,
                "signed before its sign time"
            );
            break token;
        }
        assert!(
            std::time::SystemTime::now() < deadline,
            "the new key never signed"
        );
        // A login a quarter second: well inside the per-address login limit.
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    for token in [&old_token, &waiting, &new_token] {
        assert!(verify(&document, token, "watchword-auth").is_ok());
        app.validate(token).await.unwrap();
    }
    let (_, _, body) = http1(app.auth_addr(), "GET", "/.well-known/jwks.json", Some("auth")).await;
    assert_eq!(
        json(&body)["keys"][0]["kid"],
        rotated.kid.as_str(),
        "now the signing key comes first"
    );
}

#[tokio::test]
async fn an_immediate_rotation_signs_at_once() {
    let app = spawn_app().await;
    let root = app.admin_token("root").await;
    let old_token = app.login_as("alice").await;
    let rotated = app
        .auth
        .clone()
        .rotate_signing_key(bearer(pb::RotateSigningKeyRequest { immediate: true }, &root))
        .await
        .unwrap()
        .into_inner();
    let sign_time = std::time::SystemTime::try_from(rotated.sign_time.unwrap()).unwrap();
    assert!(sign_time <= std::time::SystemTime::now());
    let new_token = app.login("alice", PASSWORD).await.unwrap().access_token;
    assert_eq!(kid_of(&new_token), rotated.kid);
    let (status, _, body) = http1(app.auth_addr(), "GET", "/.well-known/jwks.json", Some("auth")).await;
    assert_eq!(status, 200);
    let document = json(&body);
    assert_eq!(
        document["keys"][0]["kid"],
        rotated.kid.as_str(),
        "the signing key first"
    );
    for token in [&old_token, &new_token] {
        assert!(verify(&document, token, "watchword-auth").is_ok());
    }
}

#[tokio::test]
async fn discovery_names_the_issuer_and_a_jwks_uri_from_the_public_url_or_the_request() {
    let app = spawn_app().await;
    let (status, head, body) = http1(
        app.auth_addr(),
        "GET",
        "/.well-known/openid-configuration",
        Some("auth.test:8443"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("cache-control: public, max-age=300"), "{head}");
    assert_eq!(
        json(&body),
        serde_json::json!({
            "issuer": "watchword-auth",
            "jwks_uri": "http://auth.test:8443/.well-known/jwks.json",
            "id_token_signing_alg_values_supported": ["EdDSA"],
        })
    );
    // HTTP/2 names the authority in `:authority`.
    let (status, _, body) = http2_get(app.auth_addr(), "/.well-known/openid-configuration").await;
    assert_eq!(status, 200);
    assert_eq!(
        json(&body)["jwks_uri"],
        format!("http://{}/.well-known/jwks.json", app.auth_addr())
    );
    // Without a usable host there is no base to publish: a clear refusal, not a made-up URL.
    let (status, _, _) = http1(app.auth_addr(), "GET", "/.well-known/openid-configuration", None).await;
    assert_eq!(status, 400);

    let app = TestApp::builder()
        .auth(|s| {
            s.public_url = Some("https://auth.example.com".into());
            s.issuer = "https://auth.example.com".into();
        })
        .start()
        .await;
    let (_, _, body) = http1(
        app.auth_addr(),
        "GET",
        "/.well-known/openid-configuration",
        Some("evil.test"),
    )
    .await;
    let document = json(&body);
    assert_eq!(document["issuer"], "https://auth.example.com");
    assert_eq!(
        document["jwks_uri"],
        "https://auth.example.com/.well-known/jwks.json"
    );
    let token = app.login_as("alice").await;
    let (_, _, jwks) = http1(app.auth_addr(), "GET", "/.well-known/jwks.json", Some("auth")).await;
    assert!(verify(&json(&jwks), &token, "https://auth.example.com").is_ok());
}

#[tokio::test]
async fn other_methods_and_paths_get_http_errors_and_grpc_is_untouched() {
    let app = spawn_app().await;
    let (status, head, body) = http1(app.auth_addr(), "HEAD", "/.well-known/jwks.json", Some("a")).await;
    assert_eq!(status, 200);
    assert!(head.contains("cache-control: public, max-age=300"), "{head}");
    assert!(body.is_empty());

    let (status, head, _) = http1(app.auth_addr(), "POST", "/.well-known/jwks.json", Some("a")).await;
    assert_eq!(status, 405);
    assert!(head.contains("allow: get, head"), "{head}");
    let (status, _, _) = http1(app.auth_addr(), "GET", "/.well-known/other", Some("a")).await;
    assert_eq!(status, 404);

    // gRPC on the same port, after the HTTP requests, as before.
    app.login_as("alice").await;
}
