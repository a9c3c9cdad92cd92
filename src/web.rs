//! Browsers on the same ports as gRPC: gRPC-Web (binary and text, by tonic-web) and CORS for the origins
//! a deployment names (`--cors-allowed-origins`).
//!
//! [`GrpcWebLayer`] sits outside the call log and the metrics ([`crate::server::builder_for`] installs it
//! there), so those see an ordinary gRPC call with its status in trailers: inside them, a gRPC-Web
//! response carries its trailers in the body and every call would end without a status. It hands only
//! gRPC-Web requests to tonic-web; tonic-web would refuse anything else over HTTP/1.1, such as auth-svc's
//! `/.well-known/*` documents.

use std::{
    future::Future,
    pin::Pin,
    str::FromStr,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use tonic::body::Body;
use tower::{Layer, Service};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// An origin a browser may call from: `scheme://host[:port]`, exactly as browsers send it in `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin(HeaderValue);

impl FromStr for Origin {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let invalid = || {
            format!("`{value}` is not an origin: give scheme://host[:port], such as https://app.example.com")
        };
        let value = value.trim().trim_end_matches('/');
        let uri: http::Uri = value.parse().map_err(|_| invalid())?;
        let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
        let authority_ok = uri
            .authority()
            .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'));
        // `Uri` gives a bare origin the path "/": anything longer is a path, and an origin has none.
        if !scheme_ok || !authority_ok || uri.path() != "/" || uri.query().is_some() {
            return Err(invalid());
        }
        // Browsers send scheme and host in lower case.
        let origin = value.to_ascii_lowercase();
        HeaderValue::from_str(&origin).map(Origin).map_err(|_| invalid())
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

/// The CORS policy for `origins`: preflights answered from the list (none: same-origin only), the
/// headers a gRPC-Web client sends allowed, and the status headers exposed so a browser can read the
/// status and the ErrorInfo reason of a failed call.
pub fn cors(origins: &[Origin]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().map(|o| o.0.clone())))
        .allow_methods([Method::POST, Method::GET])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-grpc-web"),
            HeaderName::from_static("x-user-agent"),
            HeaderName::from_static("grpc-timeout"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// Translates gRPC-Web calls to gRPC for the services inside; see the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcWebLayer;

impl<S> Layer<S> for GrpcWebLayer {
    type Service = GrpcWeb<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcWeb { inner }
    }
}

/// See [`GrpcWebLayer`].
#[derive(Debug, Clone)]
pub struct GrpcWeb<S> {
    inner: S,
}

/// Whether `request` is gRPC-Web (`application/grpc-web`, `+proto`, `-text`, `-text+proto`).
fn is_grpc_web<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc-web"))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcWeb<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Take the service that was made ready, leaving a clone for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        if is_grpc_web(&request) {
            let mut web = tonic_web::GrpcWebLayer::new().layer(ready);
            Box::pin(web.call(request))
        } else {
            let mut plain = ready;
            let response = plain.call(request.map(Body::new));
            Box::pin(async move { Ok(response.await?.map(Body::new)) })
        }
    }
}
