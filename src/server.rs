//! Server plumbing shared by both services: explicit transport limits, one log line per call, and a
//! graceful shutdown whose drain is bounded. How connections are accepted (TLS, connection limits and
//! age) is [`crate::transport`].

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tower::{Layer, Service, layer::util::Stack};

use crate::observe::{ObserveLayer, grpc_status};
use crate::transport::Transport;
use crate::web::{GrpcWebLayer, Origin};
use tower_http::cors::CorsLayer;

/// Largest request message a service decodes. Our messages are small (a post body is at most 10 000
/// characters, i.e. at most 40 KB of UTF-8); tonic's default of 4 MiB would let one call buffer 4 MiB.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 64 * 1024;
/// HTTP/2 header list limit: a bearer token is capped at 8 KiB, and gRPC metadata is otherwise small.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Concurrent HTTP/2 streams per connection. hyper's default is unlimited when unset.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a client may make us reset (bad requests) before the connection is closed: blunts
/// rapid-reset style abuse. hyper leaves it unlimited through tonic unless set.
pub const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// Calls in flight per connection before further ones are shed with RESOURCE_EXHAUSTED (instead of
/// queueing while their deadlines run out). Below `MAX_CONCURRENT_STREAMS`, so shedding answers quickly.
pub const CONCURRENCY_LIMIT_PER_CONNECTION: usize = 128;
/// Upper bound on any one call; a client deadline shorter than this wins.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Ping idle connections so dead peers are noticed and their resources freed.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The layers [`builder`] installs around every service, outermost first: CORS, [`GrpcWebLayer`],
/// [`ObserveLayer`], [`CallLogLayer`].
pub type Layers = Stack<
    CallLogLayer,
    Stack<ObserveLayer, Stack<GrpcWebLayer, Stack<CorsLayer, tower::layer::util::Identity>>>,
>;

/// A router built from [`builder`].
pub type ServiceRouter = Router<Layers>;

/// A tonic server builder with every limit above set explicitly, per-call logging installed, and calls
/// traced but not counted; [`observed_builder`] counts them too.
pub fn builder() -> tonic::transport::Server<Layers> {
    observed_builder(ObserveLayer::disabled(), &[])
}

/// [`builder`], with `observe` counting and tracing every call, and browsers from `cors_origins` allowed.
///
/// gRPC-Web calls become gRPC calls before anything else sees them (see [`crate::web`]); CORS answers
/// preflights before that. `observe` is outermost of the rest: its span is current while the layers inside run (so the call log line joins
/// the trace), and calls refused by the guard, shed or timed out are counted like any other. tonic's own
/// load shedding, concurrency limit and timeout sit outside every custom layer: a shed call is never
/// counted, and one the timeout drops is counted as `Cancelled`.
pub fn observed_builder(observe: ObserveLayer, cors_origins: &[Origin]) -> tonic::transport::Server<Layers> {
    tonic::transport::Server::builder()
        // HTTP/1.1 too, for gRPC-Web from browsers and auth-svc's `/.well-known/*` documents; gRPC
        // clients speak HTTP/2.
        .accept_http1(true)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .concurrency_limit_per_connection(CONCURRENCY_LIMIT_PER_CONNECTION)
        .load_shed(true)
        .timeout(REQUEST_TIMEOUT)
        .layer(crate::web::cors(cors_origins))
        .layer(GrpcWebLayer)
        .layer(observe)
        .layer(CallLogLayer)
}

/// [`observed_builder`] for a service served with `transport`: connections get HTTP/2 GOAWAY at its
/// maximum connection age (the transport closes those that linger past the drain). Serve the router with
/// the same transport.
pub fn builder_for(
    transport: &Transport,
    observe: ObserveLayer,
    cors_origins: &[Origin],
) -> tonic::transport::Server<Layers> {
    observed_builder(observe, cors_origins).max_connection_age(transport.connection_age())
}

/// Serves `router` on `listener` over `transport` until `shutdown` completes, then stops accepting, lets
/// in-flight calls finish, and gives up on stragglers after `grace` (a stalled client must not hold the
/// process open).
pub async fn serve(
    router: ServiceRouter,
    listener: TcpListener,
    transport: &Transport,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), tonic::transport::Error> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = transport.is_tls(), "serving");
    }
    if transport.is_tls() {
        let incoming = transport.tls_incoming(listener);
        drain(router, incoming, shutdown, grace).await
    } else {
        let incoming = transport.plaintext_incoming(listener);
        drain(router, incoming, shutdown, grace).await
    }
}

/// Serves `incoming` until `shutdown`, then drains for at most `grace`.
async fn drain<IO>(
    router: ServiceRouter,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>>,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(?grace, "shutting down: draining in-flight calls");
        let _ = draining_tx.send(());
    };
    let server = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    let drain_deadline = async move {
        match draining_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            // The server ended by itself: no deadline to enforce.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = &mut server => result,
        () = drain_deadline => {
            tracing::warn!("grace period over; abandoning calls still in flight");
            Ok(())
        }
    }
}

/// The body of a service's `main`: bind `listen`, run `serve` until SIGINT/SIGTERM, and turn the outcome
/// into an exit code (errors logged). Signal handlers are installed before the listener is handed over.
pub async fn run_main<F, Fut, E>(name: &str, listen: std::net::SocketAddr, serve: F) -> std::process::ExitCode
where
    F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let shutdown = Box::pin(shutdown_signal());
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(addr = %listen, %error, "cannot listen");
            return std::process::ExitCode::FAILURE;
        }
    };
    match serve(listener, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "{name} failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are registered when this is *called*, not when the future is first polled: a signal that
/// arrives while the server is still starting must start a graceful shutdown, not kill the process.
/// Call it from inside the runtime, before serving.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = recv(interrupt) => {},
                () = recv(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs one line per call when its response finishes: method, gRPC status code and latency.
///
/// It sits outermost, so calls refused by the guard, timed out or shed are logged too. Only the path and
/// the status are read: metadata (where tokens and credentials travel) is never logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallLogLayer;

impl<S> Layer<S> for CallLogLayer {
    type Service = CallLog<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallLog { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if crate::observe::is_plain_http(&request) {
            // Plain HTTP (auth-svc's `/.well-known/*`): a line with the HTTP status, no gRPC status to wait for.
            let (method, path, start) = (
                request.method().clone(),
                request.uri().path().to_owned(),
                Instant::now(),
            );
            let response = self.inner.call(request);
            return Box::pin(async move {
                let response = response.await?;
                let latency_us = start.elapsed().as_micros() as u64;
                tracing::info!(%method, %path, status = response.status().as_u16(), latency_us, "http request");
                Ok(response.map(|inner| LoggedBody { inner, record: None }))
            });
        }
        let mut record = CallRecord {
            method: request.uri().path().to_owned(),
            start: Instant::now(),
            code: None,
            trace: crate::telemetry::tracer().map(|_| opentelemetry::Context::current()),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // A trailers-only response (every error) carries grpc-status in the headers.
            record.code = grpc_status(response.headers());
            Ok(response.map(|body| LoggedBody {
                inner: body,
                record: Some(record),
            }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the gRPC status from trailers and logs the call when it ends.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        record: Option<CallRecord>,
    }
}

impl<B: Body> Body for LoggedBody<B> {
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
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), this.record.as_mut()) {
                    record.code = grpc_status(trailers).or(record.code.take());
                }
            }
            // End of stream: log now rather than whenever the body happens to be dropped.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => drop(this.record.take()),
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

/// What is known of a call so far; logs itself when dropped, so cancelled calls are logged too.
#[derive(Debug)]
pub struct CallRecord {
    method: String,
    start: Instant,
    code: Option<tonic::Code>,
    /// The call's trace context (from [`ObserveLayer`]) while traces are exported, so the line joins the
    /// call's trace wherever it is logged.
    trace: Option<opentelemetry::Context>,
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let _in_call = self.trace.take().map(opentelemetry::Context::attach);
        let latency_us = self.start.elapsed().as_micros() as u64;
        match self.code {
            Some(code) => tracing::info!(method = %self.method, code = ?code, latency_us, "call"),
            None => tracing::info!(method = %self.method, code = "Cancelled", latency_us, "call"),
        }
    }
}

/// Server reflection (v1 and v1alpha: grpcurl 1.8 only speaks v1alpha, newer tools prefer v1) for the
/// given encoded descriptor sets plus the health service's.
pub fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let configure = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // So reflection clients (grpcurl) can decode ErrorInfo/RetryInfo details.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((configure().build_v1()?, configure().build_v1alpha()?))
}

/// How often storage is probed for the health service.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The standard `grpc.health.v1` service for `service`, kept truthful by a task that reports it (and the
/// server as a whole, `""`) SERVING only while `probe` succeeds.
///
/// The first probe completes before this returns, so a health check can never see the service unknown or
/// stale once the server accepts calls. Abort the returned task when the server stops. The returned
/// [`Readiness`] follows the same status (the admin server's `/readyz`).
pub async fn health_service<F, Fut>(
    service: &'static str,
    probe: F,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tokio::task::JoinHandle<()>,
    Readiness,
)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let (reporter, server) = tonic_health::server::health_reporter();
    let mut last = report(&reporter, service, probe().await).await;
    let (ready_tx, ready) = tokio::sync::watch::channel(last == tonic_health::ServingStatus::Serving);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEALTH_PROBE_INTERVAL).await;
            let status = report(&reporter, service, probe().await).await;
            if status != last {
                tracing::warn!(service, ?status, "health changed");
                // Set right after the health service's status, from the same probe.
                ready_tx.send_replace(status == tonic_health::ServingStatus::Serving);
                last = status;
            }
        }
    });
    (server, task, Readiness(ready))
}

/// Whether the gRPC health status is SERVING, as [`health_service`] last reported it.
#[derive(Debug, Clone)]
pub struct Readiness(tokio::sync::watch::Receiver<bool>);

impl Readiness {
    /// Always ready: for a server without a health probe.
    pub fn always() -> Self {
        Self(tokio::sync::watch::channel(true).1)
    }

    /// Follows `status` (true: SERVING).
    pub fn from_watch(status: tokio::sync::watch::Receiver<bool>) -> Self {
        Self(status)
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }
}

async fn report(
    reporter: &tonic_health::server::HealthReporter,
    service: &'static str,
    ok: bool,
) -> tonic_health::ServingStatus {
    let status = if ok {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status(service, status).await;
    reporter.set_service_status("", status).await;
    status
}
