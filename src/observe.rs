//! Per-RPC metrics and spans, on both ends of a call.
//!
//! - [`ObserveLayer`] (server): counts every call (`grpc_server_started_total`, `grpc_server_handled_total`,
//!   `grpc_server_handling_seconds`, the go-grpc-prometheus names and labels) and opens the call's server span,
//!   continuing the caller's W3C `traceparent`.
//! - [`ObservedChannel`] (client): a `Channel` that does the same for the calls made through it
//!   (`grpc_client_*`), opening a client span and sending its context as `traceparent`.
//!
//! Labels come from the services' descriptors: a path that names no known method is counted as
//! `grpc_method="unknown"` (and `grpc_service="unknown"` when the service is unknown too), so a client cannot
//! grow the label set. A call ends when its response body ends (the trailers carry the status), not at its
//! headers; a call dropped before that (client reset, deadline) ends as `Cancelled`.
//!
//! Spans use the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`). They are OpenTelemetry spans made with [`crate::telemetry::tracer`], not
//! `tracing` spans: none is built while traces are off, and one the sampler drops is a span context and
//! nothing more. The call's [`opentelemetry::Context`] is current while the call is polled (and while its
//! log line is written), so the guard's span, the client span of Validate and the JSON log lines all find
//! it. Nothing from the metadata (where tokens travel) is ever read, except `traceparent`/`tracestate`.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    Context as TraceContext, KeyValue, Value,
    context::FutureExt as _,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message as _;
use tonic::Code;
use tower::{Layer, Service};

use crate::metrics::Metrics;

/// Which end of a call is observed: it names the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn started(self) -> &'static str {
        match self {
            Self::Server => "grpc_server_started_total",
            Self::Client => "grpc_client_started_total",
        }
    }
    fn handled(self) -> &'static str {
        match self {
            Self::Server => "grpc_server_handled_total",
            Self::Client => "grpc_client_handled_total",
        }
    }
    fn handling(self) -> &'static str {
        match self {
            Self::Server => "grpc_server_handling_seconds",
            Self::Client => "grpc_client_handling_seconds",
        }
    }
}

/// The name of a gRPC status code, as label value (`OK`, `Unauthenticated`, ...; `Cancelled` as tonic
/// spells it).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Label value for anything not in the descriptors.
pub const UNKNOWN: &str = "unknown";

/// The gRPC methods in a set of encoded `FileDescriptorSet`s, by path (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct Methods {
    by_path: HashMap<String, Method>,
}

#[derive(Debug, Clone)]
struct Method {
    service: String,
    name: String,
    /// go-grpc-prometheus' `grpc_type`: `unary`, `client_stream`, `server_stream` or `bidi_stream`.
    kind: &'static str,
}

impl Methods {
    /// The methods of every service in `descriptor_sets`; a set that does not decode is skipped.
    pub fn from_descriptor_sets(descriptor_sets: &[&[u8]]) -> Self {
        let mut by_path = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("a descriptor set does not decode; its methods count as unknown");
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let service_name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        by_path.insert(
                            format!("/{service_name}/{}", method.name()),
                            Method {
                                service: service_name.clone(),
                                name: method.name().to_owned(),
                                kind,
                            },
                        );
                    }
                }
            }
        }
        Self { by_path }
    }

    /// Every service and its methods, tonic-health's, and both reflection versions': what a
    /// [`crate::server`] serves besides `own`.
    pub fn served_with(own: &[&[u8]]) -> Self {
        let mut sets: Vec<&[u8]> = own.to_vec();
        sets.extend([
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        Self::from_descriptor_sets(&sets)
    }
}

/// The metric series of one method (or of "unknown"), registered once; the per-code series on first use.
struct Series {
    metrics: Metrics,
    side: Side,
    kind: &'static str,
    service: String,
    method: String,
    /// `service/method`, the span name the conventions ask for.
    span_name: String,
    /// `rpc.service` and `rpc.method` as attribute values: shared, so a span's attributes copy no text.
    rpc_service: Value,
    rpc_method: Value,
    started: metrics::Counter,
    ended: [OnceLock<(metrics::Counter, metrics::Histogram)>; 17],
}

impl Series {
    fn new(metrics: &Metrics, side: Side, kind: &'static str, service: &str, method: &str) -> Self {
        let started = metrics.counter(
            side.started(),
            match side {
                Side::Server => "RPCs started on the server.",
                Side::Client => "RPCs started by the client.",
            },
            &[
                ("grpc_type", kind),
                ("grpc_service", service),
                ("grpc_method", method),
            ],
        );
        Self {
            metrics: metrics.clone(),
            side,
            kind,
            service: service.to_owned(),
            method: method.to_owned(),
            span_name: format!("{service}/{method}"),
            rpc_service: Value::String(Arc::<str>::from(service).into()),
            rpc_method: Value::String(Arc::<str>::from(method).into()),
            started,
            ended: Default::default(),
        }
    }

    fn ended(&self, code: Code) -> &(metrics::Counter, metrics::Histogram) {
        let index = usize::try_from(code as i32).unwrap_or(2).min(16);
        self.ended[index].get_or_init(|| {
            let labels = [
                ("grpc_type", self.kind),
                ("grpc_service", self.service.as_str()),
                ("grpc_method", self.method.as_str()),
                ("grpc_code", code_name(code)),
            ];
            let (handled, handling) = match self.side {
                Side::Server => (
                    "RPCs completed on the server, by status code (Cancelled: the call ended before its response did).",
                    "Time from the start of an RPC to the end of its response, on the server.",
                ),
                Side::Client => (
                    "RPCs completed by the client, by status code (Cancelled: the caller gave up first).",
                    "Time from the start of an RPC to the end of its response, at the client.",
                ),
            };
            (
                self.metrics.counter(self.side.handled(), handled, &labels),
                self.metrics.histogram(self.side.handling(), handling, &labels),
            )
        })
    }
}

/// The series of every known method of one side, plus the "unknown" ones.
struct Observer {
    side: Side,
    by_path: HashMap<String, Arc<Series>>,
    /// Known services' unknown methods, by service name.
    unknown_method: HashMap<String, Arc<Series>>,
    unknown: Arc<Series>,
}

impl Observer {
    fn new(metrics: &Metrics, side: Side, methods: &Methods) -> Self {
        let mut unknown_method = HashMap::new();
        let by_path = methods
            .by_path
            .iter()
            .map(|(path, m)| {
                unknown_method
                    .entry(m.service.clone())
                    .or_insert_with(|| Arc::new(Series::new(metrics, side, UNKNOWN, &m.service, UNKNOWN)));
                let series = Series::new(metrics, side, m.kind, &m.service, &m.name);
                (path.clone(), Arc::new(series))
            })
            .collect();
        Self {
            side,
            by_path,
            unknown_method,
            unknown: Arc::new(Series::new(metrics, side, UNKNOWN, UNKNOWN, UNKNOWN)),
        }
    }

    fn series(&self, path: &str) -> Arc<Series> {
        if let Some(series) = self.by_path.get(path) {
            return Arc::clone(series);
        }
        let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
        Arc::clone(self.unknown_method.get(service).unwrap_or(&self.unknown))
    }

    /// A span for a call of `series` under `parent()`, while traces are exported (`parent` is not even
    /// asked otherwise): named `service/method`, as the conventions ask.
    fn span(&self, series: &Series, parent: impl FnOnce() -> TraceContext) -> Option<TraceContext> {
        let tracer = crate::telemetry::tracer()?;
        let parent = parent();
        let span = tracer
            .span_builder(series.span_name.clone())
            .with_kind(match self.side {
                Side::Server => SpanKind::Server,
                Side::Client => SpanKind::Client,
            })
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", series.rpc_service.clone()),
                KeyValue::new("rpc.method", series.rpc_method.clone()),
            ])
            .start_with_context(tracer, &parent);
        Some(parent.with_span(span))
    }
}

/// Installs [`Observe`] around a server's services; see the module documentation.
#[derive(Clone)]
pub struct ObserveLayer {
    observer: Arc<Observer>,
}

impl ObserveLayer {
    /// Counts into `metrics` (labels from `methods`, normally [`Methods::served_with`]) and opens server
    /// spans.
    pub fn new(metrics: &Metrics, methods: &Methods) -> Self {
        Self {
            observer: Arc::new(Observer::new(metrics, Side::Server, methods)),
        }
    }

    /// Counts nothing (spans are still made while traces are exported).
    pub fn disabled() -> Self {
        Self::new(&Metrics::disabled(), &Methods::default())
    }
}

impl std::fmt::Debug for ObserveLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObserveLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            observer: Arc::clone(&self.observer),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    observer: Arc<Observer>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if is_plain_http(&request) {
            // Not an RPC (auth-svc's `/.well-known/*` documents): no gRPC series, span or status.
            let response = self.inner.call(request);
            return Box::pin(async move { Ok(response.await?.map(ObservedBody::unobserved)) });
        }
        let series = self.observer.series(request.uri().path());
        series.started.increment(1);
        let trace = self.observer.span(&series, || {
            TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()))
        });
        let mut end = CallEnd::new(series, trace.clone());
        // Current while the layers below are called and while the call is polled: the call log, the guard
        // and the client of Validate find the call's span there.
        let response = {
            let _current = trace.clone().map(TraceContext::attach);
            self.inner.call(request)
        };
        let call = async move {
            let response = response.await.inspect_err(|_| end.code = Some(Code::Unknown))?;
            // A trailers-only response (every error) carries grpc-status in the headers.
            end.code = grpc_status(response.headers());
            Ok(response.map(|inner| ObservedBody {
                inner,
                end: Some(end),
            }))
        };
        match trace {
            Some(trace) => Box::pin(call.with_context(trace)),
            None => Box::pin(call),
        }
    }
}

/// A [`tonic::transport::Channel`] whose calls are counted (`grpc_client_*`) and traced: each gets a
/// client span, and its context is sent as `traceparent`, so the server's span continues the trace.
#[derive(Clone)]
pub struct ObservedChannel {
    channel: tonic::transport::Channel,
    observer: Arc<Observer>,
}

impl ObservedChannel {
    /// `channel`, counting into `metrics` with labels from `methods` (the services it calls).
    pub fn new(channel: tonic::transport::Channel, metrics: &Metrics, methods: &Methods) -> Self {
        Self {
            channel,
            observer: Arc::new(Observer::new(metrics, Side::Client, methods)),
        }
    }

    /// `channel`, traced but not counted.
    pub fn unmetered(channel: tonic::transport::Channel) -> Self {
        Self::new(channel, &Metrics::disabled(), &Methods::default())
    }
}

impl std::fmt::Debug for ObservedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedChannel").finish_non_exhaustive()
    }
}

impl Service<http::Request<tonic::body::Body>> for ObservedChannel {
    type Response = http::Response<ObservedBody<tonic::body::Body>>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.channel.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let series = self.observer.series(request.uri().path());
        series.started.increment(1);
        let trace = self.observer.span(&series, TraceContext::current);
        if let Some(trace) = &trace {
            TraceContextPropagator::new().inject_context(trace, &mut HeaderInjector(request.headers_mut()));
        }
        let mut end = CallEnd::new(series, trace);
        let response = self.channel.call(request);
        Box::pin(async move {
            // A transport error (no connection, reset) is what tonic reports as UNAVAILABLE.
            let response = response
                .await
                .inspect_err(|_| end.code = Some(Code::Unavailable))?;
            end.code = grpc_status(response.headers());
            Ok(response.map(|inner| ObservedBody {
                inner,
                end: Some(end),
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that takes the gRPC status from the trailers and ends its call when it ends.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        end: Option<CallEnd>,
    }
}

impl<B> ObservedBody<B> {
    fn unobserved(inner: B) -> Self {
        Self { inner, end: None }
    }
}

/// Whether `request` is plain HTTP rather than a gRPC call: a GET or HEAD (gRPC always POSTs) without a
/// gRPC content type. Anything else is observed as a call, so nothing that could reach a gRPC handler
/// escapes the metrics and the call log.
pub fn is_plain_http<B>(request: &http::Request<B>) -> bool {
    let grpc_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    matches!(*request.method(), http::Method::GET | http::Method::HEAD) && !grpc_type
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(end)) = (frame.trailers_ref(), this.end.as_mut()) {
                    end.code = grpc_status(trailers).or(end.code);
                }
            }
            Poll::Ready(None) => drop(this.end.take()),
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = this.end.as_mut() {
                    // The stream broke after the headers: no status will come.
                    end.code = end.code.filter(|code| *code != Code::Ok).or(Some(Code::Unknown));
                }
                drop(this.end.take());
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A call in progress; records its end when dropped, so a call abandoned anywhere is counted too.
pub struct CallEnd {
    series: Arc<Series>,
    /// The call's span, while traces are exported.
    trace: Option<TraceContext>,
    start: Instant,
    code: Option<Code>,
}

impl CallEnd {
    fn new(series: Arc<Series>, trace: Option<TraceContext>) -> Self {
        Self {
            series,
            trace,
            start: Instant::now(),
            code: None,
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let (handled, handling) = self.series.ended(code);
        handled.increment(1);
        handling.record(self.start.elapsed().as_secs_f64());
        if let Some(trace) = &self.trace {
            let span = trace.span();
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            // The conventions' rule: a client call failed unless OK; a server call failed only when the
            // server is at fault, not when it refused the caller.
            let failed = match self.series.side {
                Side::Client => code != Code::Ok,
                Side::Server => matches!(
                    code,
                    Code::Unknown
                        | Code::DeadlineExceeded
                        | Code::Unimplemented
                        | Code::Internal
                        | Code::Unavailable
                        | Code::DataLoss
                ),
            };
            if failed {
                span.set_status(Status::error(code_name(code)));
            }
            span.end();
        }
    }
}

/// The gRPC status in `headers` (a trailers-only response's headers, or the trailers), if any.
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes W3C trace context into request headers.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;

    fn methods() -> Methods {
        Methods::served_with(&[crate::pb::posts::v1::FILE_DESCRIPTOR_SET])
    }

    #[test]
    fn methods_come_from_the_descriptors_with_their_streaming_kind() {
        let methods = methods();
        let list = &methods.by_path["/posts.v1.PostsService/ListPosts"];
        assert_eq!(
            (list.service.as_str(), list.name.as_str(), list.kind),
            ("posts.v1.PostsService", "ListPosts", "unary")
        );
        assert_eq!(
            methods.by_path["/grpc.health.v1.Health/Watch"].kind,
            "server_stream"
        );
        assert_eq!(
            methods.by_path["/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"].kind,
            "bidi_stream"
        );
        let auth = Methods::from_descriptor_sets(&[crate::pb::auth::v1::FILE_DESCRIPTOR_SET]);
        assert_eq!(
            auth.by_path["/auth.v1.AuthService/WatchRevocations"].kind,
            "server_stream"
        );
    }

    /// Answers every call with `grpc-status` in the trailers-only headers: `code`.
    fn answering(
        code: Code,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| async move {
            Ok(tonic::Status::new(code, "m").into_http())
        })
    }

    async fn call(
        service: &mut Observe<
            impl Service<
                http::Request<()>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
                Future = impl Send + 'static,
            > + Clone,
        >,
        path: &str,
    ) {
        let request = http::Request::post(path).body(()).unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame.unwrap();
        }
    }

    #[tokio::test]
    async fn calls_are_counted_by_method_and_code_and_strangers_are_unknown() {
        let metrics = Metrics::new();
        let mut service = ObserveLayer::new(&metrics, &methods()).layer(answering(Code::Unauthenticated));
        call(&mut service, "/posts.v1.PostsService/ListPosts").await;
        call(&mut service, "/posts.v1.PostsService/ListPosts").await;
        call(&mut service, "/posts.v1.PostsService/Nope").await;
        call(&mut service, "/evil.Service/x1").await;
        call(&mut service, "/evil.Service/x2").await;
        let text = metrics.render();
        let list = r#"grpc_type="unary",grpc_service="posts.v1.PostsService",grpc_method="ListPosts""#;
        assert!(
            text.contains(&format!("grpc_server_started_total{{{list}}} 2\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "grpc_server_handled_total{{{list},grpc_code=\"Unauthenticated\"}} 2\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "grpc_server_handling_seconds_count{{{list},grpc_code=\"Unauthenticated\"}} 2\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(r#"grpc_server_started_total{grpc_type="unknown",grpc_service="posts.v1.PostsService",grpc_method="unknown"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"grpc_server_started_total{grpc_type="unknown",grpc_service="unknown",grpc_method="unknown"} 2"#),
            "{text}"
        );
        assert!(!text.contains("evil") && !text.contains("Nope"), "{text}");
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_body_ends_is_cancelled() {
        let metrics = Metrics::new();
        // Headers without a status: it would come in the trailers, which nobody waits for.
        let streaming = tower::service_fn(|_request: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let mut service = ObserveLayer::new(&metrics, &methods()).layer(streaming);
        let get = || {
            http::Request::post("/posts.v1.PostsService/GetPost")
                .body(())
                .unwrap()
        };
        let response = service.ready().await.unwrap().call(get()).await.unwrap();
        drop(response);
        let never_polled = service.ready().await.unwrap().call(get());
        drop(never_polled);
        let text = metrics.render();
        assert!(
            text.contains(r#"grpc_server_handled_total{grpc_type="unary",grpc_service="posts.v1.PostsService",grpc_method="GetPost",grpc_code="Cancelled"} 2"#),
            "{text}"
        );
    }
}
