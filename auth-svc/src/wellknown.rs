//! The HTTP documents a JWT verifier outside gRPC reads (a gateway's `jwt_authn`, a JOSE library):
//! `GET /.well-known/jwks.json` (RFC 7517, the same keys as GetJwks) and
//! `GET /.well-known/openid-configuration` (the discovery fields a verifier reads), on the gRPC port.
//!
//! tonic routes `/{NAME}/*` to a service named `NAME`, so naming this one `.well-known` gives it that
//! prefix on the same router, behind the same transport (TLS, connection limits) as the RPCs. Both
//! documents are built per request from the key ring, which is in memory: no storage read.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tonic::body::Body;

use crate::keys::KeyRing;

pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Serves the two documents; see the module documentation.
#[derive(Clone)]
pub struct WellKnown {
    keys: Arc<KeyRing>,
    /// `--public-url` without a trailing slash: the base of `jwks_uri`. Without it, the base is the
    /// scheme and authority the request was made to.
    public_url: Option<Arc<str>>,
    /// Whether the port speaks TLS: the scheme of a `jwks_uri` taken from the request.
    tls: bool,
}

impl WellKnown {
    pub fn new(keys: Arc<KeyRing>, public_url: Option<String>, tls: bool) -> Self {
        Self {
            keys,
            public_url: public_url.map(|url| url.trim_end_matches('/').into()),
            tls,
        }
    }

    fn respond<B>(&self, request: &Request<B>) -> Response<Body> {
        let path = request.uri().path();
        if path != JWKS_PATH && path != DISCOVERY_PATH {
            return plain(StatusCode::NOT_FOUND, "not found\n");
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let document = match path {
            JWKS_PATH => self.keys.jwks().json_document(),
            _ => {
                let Some(base) = self.base_url(request) else {
                    return plain(StatusCode::BAD_REQUEST, "no Host: give auth-svc --public-url\n");
                };
                serde_json::json!({
                    "issuer": self.keys.jwks().issuer,
                    "jwks_uri": format!("{base}{JWKS_PATH}"),
                    "id_token_signing_alg_values_supported": ["EdDSA"],
                })
            }
        };
        let body = match request.method() == Method::HEAD {
            true => Bytes::new(),
            false => Bytes::from(document.to_string()),
        };
        let mut response = Response::new(Body::new(Full::new(body)));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            header::CACHE_CONTROL,
            // Half the key publish lead: a verifier that refetches only when its copy expires still learns
            // a rotated-in key before the key signs.
            HeaderValue::from_str(&format!(
                "public, max-age={}",
                self.keys.cache_max_age().as_secs()
            ))
            .expect("a number is a valid header value"),
        );
        response
    }

    /// `--public-url`, or `scheme://authority` of the request (`:authority` over HTTP/2, `Host` over
    /// HTTP/1.1), if it names one that is a valid authority.
    fn base_url<B>(&self, request: &Request<B>) -> Option<String> {
        if let Some(url) = &self.public_url {
            return Some(url.to_string());
        }
        let authority = match request.uri().authority() {
            Some(authority) => authority.clone(),
            None => request
                .headers()
                .get(header::HOST)?
                .to_str()
                .ok()?
                .parse::<http::uri::Authority>()
                .ok()?,
        };
        // An authority with userinfo (`user@host`) is not a base URL we would publish.
        if authority.as_str().contains('@') {
            return None;
        }
        let scheme = if self.tls { "https" } else { "http" };
        Some(format!("{scheme}://{authority}"))
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(Bytes::from_static(text.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<B> tower::Service<Request<B>> for WellKnown {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&request)))
    }
}

impl tonic::server::NamedService for WellKnown {
    const NAME: &'static str = ".well-known";
}
