//! The harness's OTLP receiver: what a collector would be for the `*-observed` scenarios. It decodes every
//! export (so the servers pay the full cost of sending spans) and only counts them.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
pub struct Receiver {
    addr: Option<SocketAddr>,
    spans: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

impl Receiver {
    /// Serves on a free loopback port in the background, for as long as the harness runs.
    pub async fn start() -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("OTLP receiver: {e}"))?;
        let receiver = Self {
            addr: listener.local_addr().ok(),
            ..Self::default()
        };
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver.clone()))
                .serve_with_incoming(incoming),
        );
        Ok(receiver)
    }

    /// `--otlp-endpoint` for the servers.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("started"))
    }

    pub fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}
