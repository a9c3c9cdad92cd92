//! The admin server: plain HTTP/1.1 beside the gRPC port, for Prometheus and orchestrators.
//!
//! - `GET /metrics`: the service's [`Metrics`] in the Prometheus text format;
//! - `GET /livez`: 200 while the process runs;
//! - `GET /readyz`: 200 while the gRPC health status is SERVING ([`Readiness`]), else 503.
//!
//! It shares nothing with the gRPC server but the process: its own listener (`--admin-listen`, `off` to
//! have none), its own connections, a handful of them at once.

use std::{convert::Infallible, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

use crate::{metrics::Metrics, server::Readiness};

/// Connections served at once; more wait in the listen backlog. Scrapers and probes need a few.
const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request headers: a stalled one does not hold a slot.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often recorded histogram samples are folded into buckets. Until then the exporter keeps every
/// sample (~8 bytes each), so the interval bounds that backlog, and the peak memory it leaves behind: at
/// ~90 000 Validates/s, auth-svc's peak RSS with metrics on was 62.5 MiB with 5 s, 59.0 with 1 s and 57.5
/// with 250 ms, against 57.1 with metrics off (BENCHMARKS.md, "What metrics hold in memory"). Folding costs
/// the same per sample whenever it runs; four ticks a second cost nothing measurable.
const UPKEEP_EVERY: Duration = Duration::from_millis(250);

/// `--admin-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    Off,
    At(SocketAddr),
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value == "off" {
            return Ok(Self::Off);
        }
        value.parse().map(Self::At).map_err(|_| {
            "must be an address such as 127.0.0.1:9051 (port 0: any free port), or off".to_owned()
        })
    }
}

impl std::fmt::Display for AdminListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::At(addr) => write!(f, "{addr}"),
        }
    }
}

impl AdminListen {
    /// Binds the listener (`None` when off).
    pub async fn bind(self) -> std::io::Result<Option<TcpListener>> {
        match self {
            Self::Off => Ok(None),
            Self::At(addr) => TcpListener::bind(addr).await.map(Some),
        }
    }
}

/// A running admin server; stops (with its connections) when dropped.
pub struct AdminServer {
    addr: Option<SocketAddr>,
    _tasks: JoinSet<()>,
}

impl AdminServer {
    /// Serves `metrics` and `ready` on `listener` until dropped. Must be called within a Tokio runtime.
    pub fn start(listener: TcpListener, metrics: Metrics, ready: Readiness) -> Self {
        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            tracing::info!(%addr, "admin serving");
        }
        let mut tasks = JoinSet::new();
        let upkeep = metrics.clone();
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(UPKEEP_EVERY);
            loop {
                ticks.tick().await;
                upkeep.run_upkeep();
            }
        });
        tasks.spawn(accept(listener, Arc::new(State { metrics, ready })));
        Self { addr, _tasks: tasks }
    }

    /// Where it listens.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

struct State {
    metrics: Metrics,
    ready: Readiness,
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Owned here: when the server is dropped (this task aborted), its connections go too.
    let mut connections = JoinSet::new();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin: accept failed");
                // Out of file descriptors, typically: give the process a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(state: &State, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let text = |status: http::StatusCode, content_type: &'static str, body: String| {
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    };
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != http::Method::GET {
        return text(http::StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => text(
            http::StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics.render(),
        ),
        "/livez" => text(http::StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" if state.ready.is_ready() => text(http::StatusCode::OK, PLAIN, "ready\n".into()),
        "/readyz" => text(
            http::StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "not serving\n".into(),
        ),
        _ => text(
            http::StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /livez or /readyz\n".into(),
        ),
    }
}

/// `GET path` from an admin server at `addr`: the status code and the body. A minimal HTTP/1.1 client
/// (one request per connection) for tests, `watchword-dev` and the benchmark harness.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1.1 response");
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(invalid)?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_an_address_or_off() {
        assert_eq!("off".parse(), Ok(AdminListen::Off));
        assert_eq!(
            "127.0.0.1:0".parse(),
            Ok(AdminListen::At("127.0.0.1:0".parse().unwrap()))
        );
        assert!("9051".parse::<AdminListen>().is_err());
        assert!("OFF".parse::<AdminListen>().is_err());
        assert_eq!(AdminListen::Off.to_string(), "off");
    }

    #[tokio::test]
    async fn it_serves_metrics_liveness_and_readiness_and_nothing_else() {
        let metrics = Metrics::new();
        metrics.counter("served_total", "Help.", &[]).increment(3);
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(true);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = AdminServer::start(listener, metrics, Readiness::from_watch(ready_rx));
        let addr = server.local_addr().unwrap();
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("served_total 3\n"), "{body}");
        assert_eq!(get(addr, "/livez").await.unwrap().0, 200);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
        ready_tx.send_replace(false);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 503);
        assert_eq!(get(addr, "/livez").await.unwrap().0, 200);
        assert_eq!(get(addr, "/").await.unwrap().0, 404);
        drop(server);
        // Stopping aborts its tasks; the port closes once they are gone.
        let mut refused = false;
        for _ in 0..1000 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "the admin server still accepts after being dropped");
    }
}
