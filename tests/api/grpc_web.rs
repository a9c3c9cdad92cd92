//! Browsers: gRPC-Web (binary and text) over HTTP/1.1 on both services' ports, CORS from
//! `--cors-allowed-origins`, and gRPC-Web calls logged and counted as the gRPC calls they are.

use std::net::SocketAddr;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use watchword::pb::{auth::v1 as auth_pb, posts::v1 as posts_pb};

use crate::helpers::*;

/// gRPC-Web framing: binary (`application/grpc-web+proto`) or base64 text (`application/grpc-web-text`).
#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Binary,
    Text,
}

/// What came back from a gRPC-Web call.
#[derive(Debug)]
pub struct WebReply {
    http_status: u16,
    headers: http::HeaderMap,
    /// The messages of the body's data frames.
    messages: Vec<Bytes>,
    /// `grpc-status`, from the trailer frame, or from the headers of a trailers-only response.
    grpc_status: Option<String>,
    /// The trailer frame's text (`grpc-status:0\r\n...`) or, for trailers-only, the status headers.
    trailers: String,
}

/// An HTTP/1.1 request on a fresh connection, as a browser's fetch sends it.
async fn http1(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

pub async fn web_call(
    addr: SocketAddr,
    path: &str,
    message: impl prost::Message,
    mode: Mode,
    headers: &[(&str, &str)],
) -> WebReply {
    let mut frame = vec![0u8];
    let encoded = message.encode_to_vec();
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let (content_type, body) = match mode {
        Mode::Binary => ("application/grpc-web+proto", Bytes::from(frame)),
        Mode::Text => ("application/grpc-web-text", Bytes::from(STANDARD.encode(&frame))),
    };
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("host", addr.to_string())
        .header("content-type", content_type)
        // As grpc-web's JavaScript client does: the text mode asks for a text response.
        .header("accept", content_type)
        .header("x-grpc-web", "1");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (parts, body) = http1(addr, request.body(Full::new(body)).unwrap()).await;
    let body = match mode {
        Mode::Binary => body.to_vec(),
        // Each chunk is base64 of its own, padded: split after each run of `=`.
        Mode::Text => text_chunks(&body)
            .flat_map(|chunk| {
                STANDARD
                    .decode(chunk)
                    .unwrap_or_else(|_| panic!("base64 body: {body:?}"))
            })
            .collect(),
    };
    let (mut messages, mut trailers) = (Vec::new(), String::new());
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        match rest[0] & 0x80 {
            0 => messages.push(Bytes::copy_from_slice(payload)),
            _ => trailers = String::from_utf8(payload.to_vec()).unwrap(),
        }
        rest = &rest[5 + len..];
    }
    let from_trailers = trailers.lines().find_map(|line| {
        line.trim()
            .strip_prefix("grpc-status:")
            .map(|v| v.trim().to_owned())
    });
    let from_headers = parts
        .headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    if trailers.is_empty() {
        trailers = ["grpc-status", "grpc-message", "grpc-status-details-bin"]
            .iter()
            .filter_map(|name| Some(format!("{name}:{}\r\n", parts.headers.get(*name)?.to_str().ok()?)))
            .collect();
    }
    WebReply {
        http_status: parts.status.as_u16(),
        headers: parts.headers,
        messages,
        grpc_status: from_trailers.or(from_headers),
        trailers,
    }
}

/// The base64 chunks of a grpc-web-text body, each ending at its padding (or at the end).
fn text_chunks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = match rest.iter().position(|&b| b == b'=') {
            Some(first) => first + rest[first..].iter().take_while(|&&b| b == b'=').count(),
            None => rest.len(),
        };
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        Some(chunk)
    })
}

/// The ErrorInfo reason in a `grpc-status-details-bin` value (base64 of a `google.rpc.Status`).
fn reason(details_bin: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details_bin.trim_end_matches('='))
        .unwrap();
    let status = tonic_types::pb::Status::decode(&bytes[..]).unwrap();
    let info = tonic_types::pb::ErrorInfo::decode(&status.details[0].value[..]).unwrap();
    info.reason
}

fn details_bin(reply: &WebReply) -> String {
    reply
        .trailers
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("grpc-status-details-bin:")
                .map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no grpc-status-details-bin in {reply:?}"))
}

#[tokio::test]
async fn a_browser_logs_in_and_lists_posts_over_grpc_web_binary_and_text() {
    let app = spawn_app().await;
    app.register("alice").await.unwrap();
    let token = app.login("alice", PASSWORD).await.unwrap().access_token;
    app.create_post(&token, "Hello", "from gRPC").await.unwrap();

    for mode in [Mode::Binary, Mode::Text] {
        let login = auth_pb::LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        let reply = web_call(app.auth_addr(), "/auth.v1.AuthService/Login", login, mode, &[]).await;
        assert_eq!(
            (reply.http_status, reply.grpc_status.as_deref()),
            (200, Some("0")),
            "{reply:?}"
        );
        let expected_type = match mode {
            Mode::Binary => "application/grpc-web+proto",
            Mode::Text => "application/grpc-web-text+proto",
        };
        assert_eq!(reply.headers["content-type"], expected_type);
        let login = auth_pb::LoginResponse::decode(reply.messages[0].clone()).unwrap();
        assert!(!login.access_token.is_empty());

        let bearer = format!("Bearer {}", login.access_token);
        let reply = web_call(
            app.posts_addr(),
            "/posts.v1.PostsService/ListPosts",
            posts_pb::ListPostsRequest::default(),
            mode,
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(reply.grpc_status.as_deref(), Some("0"), "{reply:?}");
        let page = posts_pb::ListPostsResponse::decode(reply.messages[0].clone()).unwrap();
        assert_eq!(page.posts[0].title, "Hello");
    }
}

#[tokio::test]
async fn a_refused_grpc_web_call_carries_its_status_and_error_info_reason() {
    let app = spawn_app().await;
    for mode in [Mode::Binary, Mode::Text] {
        let reply = web_call(
            app.posts_addr(),
            "/posts.v1.PostsService/ListPosts",
            posts_pb::ListPostsRequest::default(),
            mode,
            &[],
        )
        .await;
        assert_eq!(reply.grpc_status.as_deref(), Some("16"), "{reply:?}");
        assert_eq!(reason(&details_bin(&reply)), "TOKEN_MISSING");

        let login = auth_pb::LoginRequest {
            username: "nobody".into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        let reply = web_call(app.auth_addr(), "/auth.v1.AuthService/Login", login, mode, &[]).await;
        assert_eq!(reply.grpc_status.as_deref(), Some("16"), "{reply:?}");
        assert_eq!(reason(&details_bin(&reply)), "INVALID_CREDENTIALS");
    }
}

async fn preflight(addr: SocketAddr, origin: &str) -> http::response::Parts {
    let request = http::Request::options(format!("http://{addr}/auth.v1.AuthService/Login"))
        .header("host", addr.to_string())
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,authorization",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    http1(addr, request).await.0
}

#[tokio::test]
async fn cors_allows_the_listed_origins_only_and_exposes_the_status_headers() {
    let app = TestApp::builder()
        .auth(|s| s.cors_allowed_origins = vec!["http://app.test:8080".parse().unwrap()])
        .posts(|s| s.cors_allowed_origins = vec!["http://app.test:8080".parse().unwrap()])
        .start()
        .await;
    for addr in [app.auth_addr(), app.posts_addr()] {
        let allowed = preflight(addr, "http://app.test:8080").await;
        assert_eq!(
            allowed.headers["access-control-allow-origin"],
            "http://app.test:8080"
        );
        let methods = allowed.headers["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("POST"), "{methods}");
        let headers = allowed.headers["access-control-allow-headers"].to_str().unwrap();
        for name in ["authorization", "content-type", "x-grpc-web"] {
            assert!(headers.contains(name), "{headers}");
        }

        let refused = preflight(addr, "http://evil.test").await;
        assert!(
            !refused.headers.contains_key("access-control-allow-origin"),
            "{:?}",
            refused.headers
        );
    }

    let reply = web_call(
        app.posts_addr(),
        "/posts.v1.PostsService/ListPosts",
        posts_pb::ListPostsRequest::default(),
        Mode::Binary,
        &[("origin", "http://app.test:8080")],
    )
    .await;
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "http://app.test:8080"
    );
    let exposed = reply.headers["access-control-expose-headers"].to_str().unwrap();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(name), "{exposed}");
    }

    // By default no origin is allowed: same-origin pages only.
    let app = spawn_app().await;
    let refused = preflight(app.auth_addr(), "http://app.test:8080").await;
    assert!(!refused.headers.contains_key("access-control-allow-origin"));
}

#[test]
fn an_origin_is_scheme_host_and_port_only() {
    use watchword::web::Origin;
    for good in [
        "https://app.example.com",
        "http://127.0.0.1:8080",
        "HTTPS://App.Example.com/",
    ] {
        assert!(good.parse::<Origin>().is_ok(), "{good}");
    }
    assert_eq!(
        "HTTPS://App.Example.com/".parse::<Origin>().unwrap().to_string(),
        "https://app.example.com"
    );
    for bad in [
        "*",
        "app.example.com",
        "ftp://a.test",
        "https://a.test/app",
        "https://u@a.test",
        "null",
    ] {
        assert!(bad.parse::<Origin>().is_err(), "{bad}");
    }
}
