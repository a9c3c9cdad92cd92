//! Hostile tokens and metadata: every one ends UNAUTHENTICATED (or the transport's refusal), at auth-svc's
//! Validate and through posts-svc's guard, never OK and never a panic; the connection keeps serving.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::{Code, Request, metadata::MetadataValue};
use watchword::pb::posts::v1::{CreatePostRequest, ListPostsRequest};

use crate::helpers::*;

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An app whose signing key the test knows, a live token, and what it takes to forge variants of it.
struct Forge {
    app: TestApp,
    token: String,
    kid: String,
    key: EncodingKey,
    public: [u8; 32],
    public_pem: String,
    public_der: Vec<u8>,
}

async fn forge() -> Forge {
    let app = TestApp::builder().signing_key_file().start().await;
    let pem = std::fs::read_to_string(app.dir.path().join("signing-key.pem")).unwrap();
    let signing = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
    let verifying = signing.verifying_key();
    let token = app.login_as("alice").await;
    Forge {
        kid: auth_svc::keys::SigningKey::from_pkcs8_pem(&pem)
            .unwrap()
            .kid()
            .to_owned(),
        key: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
        public: verifying.to_bytes(),
        public_pem: verifying.to_public_key_pem(Default::default()).unwrap(),
        public_der: verifying.to_public_key_der().unwrap().as_bytes().to_vec(),
        token,
        app,
    }
}

impl Forge {
    fn claims(&self) -> Value {
        let payload = self.token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    fn header(&self) -> Header {
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        header
    }

    /// A correctly signed token with `header` and the live token's claims.
    fn sign(&self, header: &Header) -> String {
        jsonwebtoken::encode(header, &self.claims(), &self.key).unwrap()
    }

    /// A token signed with HMAC-SHA256 using `secret` as the key, claiming our `kid`.
    fn hs256_with(&self, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &self.claims(), &EncodingKey::from_secret(secret)).unwrap()
    }

    /// Raw `header.payload.signature` with arbitrary (unsigned) header JSON.
    fn raw_header(&self, header: &Value) -> String {
        let mut parts = self.token.split('.');
        let (_, payload, signature) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        format!("{}.{payload}.{signature}", b64(header.to_string()))
    }
}

fn hostile_tokens(f: &Forge) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = f.token.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let mut flipped = URL_SAFE_NO_PAD.decode(s).unwrap();
    flipped[0] ^= 1;
    let mut payload_changed = p.as_bytes().to_vec();
    payload_changed[10] = if payload_changed[10] == b'A' { b'B' } else { b'A' };
    let mut header_changed = h.as_bytes().to_vec();
    header_changed[5] = if header_changed[5] == b'A' { b'B' } else { b'A' };
    let nested = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(f.public)}).to_string();

    let with = |edit: &dyn Fn(&mut Header)| {
        let mut header = f.header();
        edit(&mut header);
        f.sign(&header)
    };

    vec![
        // Malformed.
        ("one segment", "abc".into()),
        ("two segments", format!("{h}.{p}")),
        ("four segments", format!("{h}.{p}.{s}.{s}")),
        ("JWE-shaped", format!("{h}.{p}.{s}.{s}.{s}")),
        ("empty segments", "..".into()),
        ("padding", format!("{h}=.{p}.{s}")),
        (
            "standard base64 alphabet",
            format!("{}+/.{p}.{s}", &h[..h.len() - 2]),
        ),
        ("non-JSON header", format!("{}.{p}.{s}", b64("not json"))),
        ("deeply nested JSON", format!("{}.{p}.{s}", b64(&nested))),
        (
            "invalid UTF-8 header",
            format!("{}.{p}.{s}", b64([0xff, 0xfe, 0xfd])),
        ),
        ("invalid UTF-8 payload", format!("{h}.{}.{s}", b64([0xc3, 0x28]))),
        ("over the size cap", format!("{h}.{}.{s}", "A".repeat(9 * 1024))),
        // Forged.
        (
            "alg none",
            f.raw_header(&json!({"alg": "none", "typ": "at+jwt", "kid": f.kid}))
                .replace(s, ""),
        ),
        (
            "alg None",
            f.raw_header(&json!({"alg": "None", "typ": "at+jwt", "kid": f.kid})),
        ),
        (
            "alg NONE",
            f.raw_header(&json!({"alg": "NONE", "typ": "at+jwt", "kid": f.kid})),
        ),
        (
            "alg nOnE",
            f.raw_header(&json!({"alg": "nOnE", "typ": "at+jwt", "kid": f.kid})),
        ),
        (
            "HS256 keyed with the PEM public key",
            f.hs256_with(f.public_pem.as_bytes()),
        ),
        ("HS256 keyed with the DER public key", f.hs256_with(&f.public_der)),
        ("HS256 keyed with the raw public key", f.hs256_with(&f.public)),
        (
            "HS256 keyed with the JWK public key",
            f.hs256_with(jwk.as_bytes()),
        ),
        (
            "ES256 claimed for an EdDSA key",
            f.raw_header(&json!({"alg": "ES256", "typ": "at+jwt", "kid": f.kid})),
        ),
        (
            "RS256 claimed for an EdDSA key",
            f.raw_header(&json!({"alg": "RS256", "typ": "at+jwt", "kid": f.kid})),
        ),
        ("flipped signature bit", format!("{h}.{p}.{}", b64(&flipped))),
        ("truncated signature", format!("{h}.{p}.{}", &s[..s.len() - 4])),
        ("removed signature", format!("{h}.{p}.")),
        (
            "one byte changed in the payload",
            format!("{h}.{}.{s}", String::from_utf8(payload_changed).unwrap()),
        ),
        (
            "one byte changed in the header",
            format!("{}.{p}.{s}", String::from_utf8(header_changed).unwrap()),
        ),
        ("unknown kid", with(&|hd| hd.kid = Some("unknown".into()))),
        ("huge kid", with(&|hd| hd.kid = Some("k".repeat(4000)))),
        (
            "path-like kid",
            with(&|hd| hd.kid = Some("../../../../etc/passwd".into())),
        ),
        (
            "SQL-like kid",
            with(&|hd| hd.kid = Some("' OR '1'='1' --".into())),
        ),
        (
            "jku header",
            with(&|hd| hd.jku = Some("http://127.0.0.1:1/keys".into())),
        ),
        (
            "x5u header",
            with(&|hd| hd.x5u = Some("http://127.0.0.1:1/cert".into())),
        ),
        (
            "embedded jwk header",
            with(&|hd| hd.jwk = Some(serde_json::from_str(&jwk).unwrap())),
        ),
        (
            "unknown crit",
            with(&|hd| hd.crit = Some(vec!["urn:example:ext".into()])),
        ),
        ("typ JWT", with(&|hd| hd.typ = Some("JWT".into()))),
        ("no typ", with(&|hd| hd.typ = None)),
    ]
}

#[tokio::test]
async fn hostile_tokens_are_unauthenticated_at_validate_and_through_the_guard() {
    let f = forge().await;
    // The untouched token works, so each refusal below is down to what was changed.
    f.app.validate(&f.token).await.unwrap();
    f.app
        .list_posts(&f.token, ListPostsRequest::default())
        .await
        .unwrap();
    assert!(
        f.app.validate(&f.sign(&f.header())).await.is_ok(),
        "re-signing alone keeps it valid"
    );

    for (name, token) in hostile_tokens(&f) {
        let status = f.app.validate(&token).await.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        // Through the guard (skipping tokens that cannot even be sent as ASCII metadata).
        if MetadataValue::try_from(format!("Bearer {token}")).is_ok() {
            let status = f
                .app
                .list_posts(&token, ListPostsRequest::default())
                .await
                .expect_err(name);
            assert_eq!(status.code(), Code::Unauthenticated, "{name} (guard): {status:?}");
        }
    }
    // Both services are still up and serving on the same connections.
    f.app.validate(&f.token).await.unwrap();
    f.app
        .list_posts(&f.token, ListPostsRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_metadata_never_gets_through_and_the_connection_keeps_serving() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let mut posts = app.posts.clone();

    // A header block far over the 16 KiB limit: refused by the transport, not OK.
    let mut request = bearer(ListPostsRequest::default(), &token);
    request.metadata_mut().insert(
        "x-padding",
        MetadataValue::try_from("p".repeat(64 * 1024)).unwrap(),
    );
    assert!(
        posts.list_posts(request).await.is_err(),
        "oversized header block was accepted"
    );

    // Binary metadata named authorization-bin, and authorization with obs-text bytes.
    let mut request = Request::new(ListPostsRequest::default());
    request.metadata_mut().insert_bin(
        "authorization-bin",
        tonic::metadata::MetadataValue::from_bytes(token.as_bytes()),
    );
    assert_code(posts.list_posts(request).await, Code::Unauthenticated);
    let mut request = Request::new(ListPostsRequest::default());
    let value = MetadataValue::try_from(b"Bearer \x80\xff".as_slice()).unwrap();
    request.metadata_mut().insert("authorization", value);
    assert_code(posts.list_posts(request).await, Code::Unauthenticated);

    // The same client still works.
    app.list_posts(&token, ListPostsRequest::default()).await.unwrap();
}

#[tokio::test]
async fn oversized_messages_and_expired_deadlines_get_tonics_statuses() {
    let app = spawn_app().await;
    let token = app.login_as("alice").await;
    let huge = CreatePostRequest {
        title: "t".into(),
        body: "b".repeat(70 * 1024),
        ..Default::default()
    };
    let status = assert_code(
        app.posts.clone().create_post(bearer(huge, &token)).await,
        Code::OutOfRange,
    );
    assert!(
        status.message().contains("message length too large"),
        "{status:?}"
    );

    // A deadline far shorter than an argon2 hash.
    let mut request = tonic::Request::new(watchword::pb::auth::v1::LoginRequest {
        username: "alice".into(),
        password: PASSWORD.into(),
        ..Default::default()
    });
    request.set_timeout(std::time::Duration::from_millis(1));
    let status = app.auth.clone().login(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // Nothing is wedged afterwards.
    app.login("alice", PASSWORD).await.unwrap();
}
