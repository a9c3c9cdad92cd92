//! Logs and traces, set up once by each binary. Libraries only emit `tracing` events and OpenTelemetry spans
//! through [`tracer`]; the binary decides where they go.
//!
//! - Logs go to stderr, filtered by `RUST_LOG` (default `info`), as compact text or as JSON lines
//!   (`--log-format json`: `timestamp`, `level`, `target`, `message`, the event's fields, and `trace_id` /
//!   `span_id` while a trace is active, so a log line and its trace can be joined).
//! - Traces (`--otlp-endpoint`) go over OTLP/gRPC to a collector, batched, from a background thread. The
//!   spans are the RPC spans ([`crate::observe`]) and the guard's, built directly with the OpenTelemetry API
//!   rather than converted from `tracing` spans: a span the sampler drops costs almost nothing, and one it
//!   keeps costs what the SDK needs and no more. WARN and ERROR events are attached to the current span as
//!   span events. The standard `OTEL_*` variables the SDK reads (`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`, ...)
//!   apply.

use std::{io::IsTerminal as _, sync::OnceLock};

use opentelemetry::{
    KeyValue,
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracer;
use tracing::{Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::LevelFilter,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::Writer, time::FormatTime as _},
    layer::SubscriberExt as _,
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

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
    let log_filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
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
            .event_format(JsonLines)
            .with_filter(log_filter())
            .boxed(),
    };
    let provider = match &options.otlp_endpoint {
        None => None,
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
            // The first binary-wide tracer wins; a second `init_with` fails below (subscriber already set).
            let _ = TRACER.set(provider.tracer("watchword"));
            Some(provider)
        }
    };
    let span_events = provider
        .is_some()
        .then(|| SpanEvents.with_filter(LevelFilter::WARN));
    tracing_subscriber::registry()
        .with(logs)
        .with(span_events)
        .try_init()?;
    Ok(Telemetry { provider })
}

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer of the RPC and guard spans while traces are exported ([`init_with`] with an endpoint); `None`
/// otherwise, and then no span is built at all.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Attaches WARN and ERROR events (filtered by the caller) to the current OpenTelemetry span as span
/// events, when that span is recorded: a trace shows why its call failed without a trip to the logs.
struct SpanEvents;

impl<S: Subscriber> Layer<S> for SpanEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            if !span.is_recording() {
                return;
            }
            let mut fields = SpanEventFields::default();
            event.record(&mut fields);
            fields
                .attributes
                .push(KeyValue::new("level", event.metadata().level().as_str()));
            span.add_event(fields.message, fields.attributes);
        });
    }
}

/// An event's message and its other fields as span-event attributes.
#[derive(Default)]
struct SpanEventFields {
    message: String,
    attributes: Vec<KeyValue>,
}

impl tracing::field::Visit for SpanEventFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        match field.name() {
            "message" => self.message = value,
            name => self.attributes.push(KeyValue::new(name, value)),
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            name => self.attributes.push(KeyValue::new(name, value.to_owned())),
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.attributes.push(KeyValue::new(
            field.name(),
            i64::try_from(value).unwrap_or(i64::MAX),
        ));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }
}

/// The JSON line format: see the module documentation.
struct JsonLines;

/// The trace and span ids of the current OpenTelemetry context, if it holds a valid span: the call's
/// (the observe layer makes it current while the call runs, and the call log makes it current to log).
fn trace_ids() -> Option<(String, String)> {
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let ids = span.span_context();
        ids.is_valid()
            .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
    })
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
        if let Some((trace_id, span_id)) = trace_ids() {
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
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::Tracer as _;

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
    fn json_lines_carry_the_fields_and_the_trace_of_the_current_context() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = provider.tracer("test");
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .event_format(JsonLines)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, who = "alice", "outside");
            let span = tracer.start("work");
            let _attached = opentelemetry::Context::current_with_span(span).attach();
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

    /// Keeps every ended span.
    #[derive(Debug, Default, Clone)]
    struct Collect(Arc<Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanProcessor for Collect {
        fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}
        fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(
            &self,
            _timeout: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn warnings_and_errors_become_events_of_the_current_span_and_nothing_else_does() {
        let spans = Collect::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(spans.clone())
            .build();
        let tracer = provider.tracer("test");
        let subscriber = tracing_subscriber::registry().with(SpanEvents.with_filter(LevelFilter::WARN));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("outside any span: dropped");
            let span = tracer.start("call");
            let call = opentelemetry::Context::current_with_span(span);
            {
                let _attached = call.clone().attach();
                tracing::info!("an info line stays in the logs");
                tracing::warn!(code = "Unavailable", attempt = 2_u64, "auth-svc Validate failed");
                tracing::error!(ok = false, "broke");
            }
            call.span().end();
        });
        let spans = spans.0.lock().unwrap();
        assert_eq!(spans.len(), 1);
        let events: Vec<_> = spans[0].events.iter().collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].name, "auth-svc Validate failed");
        let attribute = |event: &opentelemetry::trace::Event, key: &str| {
            event
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute(events[0], "code").as_deref(), Some("Unavailable"));
        assert_eq!(attribute(events[0], "attempt").as_deref(), Some("2"));
        assert_eq!(attribute(events[0], "level").as_deref(), Some("WARN"));
        assert_eq!(events[1].name, "broke");
        assert_eq!(attribute(events[1], "level").as_deref(), Some("ERROR"));
    }
}
