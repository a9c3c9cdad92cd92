//! Logs and traces, set up once by each binary. Libraries only emit `tracing` events and spans; the binary
//! decides where they go.
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`), as compact text or as JSON lines
//!   (`--log-format json`: `timestamp`, `level`, `target`, `message`, the event's fields, and `trace_id` /
//!   `span_id` while a trace is active, so a log line and its trace can be joined).
//! - Traces (`--otlp-endpoint`) go over OTLP/gRPC to a collector, batched, from a background thread:
//!   every span at INFO or above, whatever `RUST_LOG` says, with WARN and ERROR events attached to their
//!   span. The RPC spans ([`crate::observe::SPAN_TARGET`]) are for traces only and never printed.
//!   The standard `OTEL_*` variables the SDK reads (`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, ...) apply.

use std::{
    io::IsTerminal as _,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use tracing::{Dispatch, Level, Subscriber, dispatcher::WeakDispatch, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, LevelFilter, Targets, filter_fn},
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::Writer, time::FormatTime as _},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

use crate::observe::SPAN_TARGET;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One compact, human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("must be text or json".to_owned()),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// `--otlp-endpoint`: an `http://` URL with a host (this build has no TLS client for OTLP).
pub fn otlp_endpoint(value: &str) -> Result<String, String> {
    const EXPECTED: &str = "must be an http:// URL with a host, e.g. http://127.0.0.1:4317";
    let uri: http::Uri = value.parse().map_err(|_| EXPECTED)?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(EXPECTED.to_owned());
    }
    Ok(value.to_owned())
}

/// How a binary wants its logs and traces.
#[derive(Debug, Clone)]
pub struct Options {
    pub log_format: LogFormat,
    /// Where to export spans (OTLP/gRPC); none: no traces.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Options {
    /// For a service binary: the endpoint from its flag, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// the service name from `OTEL_SERVICE_NAME`, else `default_service_name`. The only place these
    /// variables are read.
    pub fn from_env(
        log_format: LogFormat,
        otlp_endpoint: Option<String>,
        default_service_name: &str,
    ) -> Self {
        let from_env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self {
            log_format,
            otlp_endpoint: otlp_endpoint.or_else(|| from_env("OTEL_EXPORTER_OTLP_ENDPOINT")),
            service_name: from_env("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service_name.to_owned()),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a global subscriber is already installed: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline running; dropping it flushes the spans not yet exported.
#[must_use = "dropping it stops exporting traces"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {error}");
        }
    }
}

/// Installs compact text logs on stderr filtered by `RUST_LOG` (default `info`), and no traces. Call once,
/// from `main`.
pub fn init() {
    let options = Options {
        log_format: LogFormat::Text,
        otlp_endpoint: None,
        service_name: String::new(),
    };
    // Without an exporter the only failure is a subscriber installed already, which then stays.
    let _ = init_with(&options);
}

/// Installs logging and, with an endpoint, trace export, as `options` say. Call once, from `main`, within
/// a Tokio runtime (the exporter's connection lives on it); keep the returned value until exit.
pub fn init_with(options: &Options) -> Result<Telemetry, TelemetryError> {
    // The RPC spans are for traces; the logs keep the lines they always had. A static filter, so that
    // without a trace exporter those spans are never even created.
    let not_rpc_spans = Targets::new()
        .with_target(SPAN_TARGET, LevelFilter::OFF)
        .with_default(LevelFilter::TRACE);
    let log_filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .and(not_rpc_spans.clone())
    };
    let dispatch_cell = Arc::new(OnceLock::new());
    let logs = match options.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .compact()
            .with_filter(log_filter())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(JsonLines {
                dispatch: Arc::clone(&dispatch_cell),
            })
            .with_filter(log_filter())
            .boxed(),
    };
    let (traces, provider) = match &options.otlp_endpoint {
        None => (None, None),
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(options.service_name.clone())
                        .build(),
                )
                .with_batch_exporter(exporter)
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("watchword"))
                // Attributes nobody queries by, each a string per span.
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                // Busy/idle times would cost two clock reads on every poll of every span.
                .with_tracked_inactivity(false)
                // Nothing here reads OpenTelemetry's current context: entering a span need not set it.
                .with_context_activation(false)
                .with_filter(filter_fn(|meta| {
                    let floor = if meta.is_span() { Level::INFO } else { Level::WARN };
                    *meta.level() <= floor
                }));
            (Some(layer), Some(provider))
        }
    };
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(logs).with(traces));
    let _ = dispatch_cell.set(dispatch.downgrade());
    dispatch.try_init()?;
    Ok(Telemetry { provider })
}

/// The JSON line format: see the module documentation.
struct JsonLines {
    /// The dispatcher it is installed in, set once that exists: the trace ids are read through it (inside
    /// an event, `tracing`'s own "current dispatcher" is not available).
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonLines {
    /// The trace and span ids of the event's span (its explicit parent, else the current span, whether or
    /// not logs show it: the RPC spans are where traces live).
    fn trace_ids(&self, event: &tracing::Event<'_>) -> Option<(String, String)> {
        let dispatch = self.dispatch.get()?.upgrade()?;
        let current = dispatch.current_span();
        let id = event.parent().or(current.id())?;
        let context = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
        let span = context.span();
        let ids = span.span_context();
        ids.is_valid()
            .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut timestamp = String::new();
        fmt::time::SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        line.insert(
            "message".into(),
            fields.remove("message").unwrap_or_else(|| "".into()),
        );
        if let Some((trace_id, span_id)) = self.trace_ids(event) {
            line.insert("trace_id".into(), trace_id.into());
            line.insert("span_id".into(), span_id.into());
        }
        for (name, value) in fields {
            line.entry(name).or_insert(value);
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields as JSON values: numbers and booleans as such, everything else as its text.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn flags_parse_and_refuse_what_they_cannot_use() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
        assert!(otlp_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(otlp_endpoint("https://collector:4317").is_err());
        assert!(otlp_endpoint("http://").is_err());
        assert!(otlp_endpoint("collector:4317").is_err());
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_fields_and_the_trace_of_the_current_span() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let cell = Arc::new(OnceLock::new());
        let json = JsonLines {
            dispatch: Arc::clone(&cell),
        };
        let dispatch = Dispatch::new(
            tracing_subscriber::registry()
                .with(
                    fmt::layer()
                        .event_format(json)
                        .with_writer(move || writer.clone()),
                )
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
        );
        cell.set(dispatch.downgrade()).unwrap();
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(answer = 42, who = "alice", "outside");
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::warn!(ok = true, "inside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["answer"], 42);
        assert_eq!(lines[0]["who"], "alice");
        assert!(lines[0]["target"].as_str().unwrap().contains("telemetry"));
        assert!(lines[0]["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(lines[0].get("trace_id").is_none(), "no trace outside a span");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["ok"], true);
        assert_eq!(lines[1]["trace_id"].as_str().unwrap().len(), 32, "{text}");
        assert_eq!(lines[1]["span_id"].as_str().unwrap().len(), 16, "{text}");
    }
}
