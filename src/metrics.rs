//! Prometheus metrics: one registry per service instance, rendered as the Prometheus text format by the
//! admin server's `GET /metrics` (see [`crate::admin`]).
//!
//! The registry is a [`metrics_exporter_prometheus::PrometheusRecorder`] used directly, never installed as
//! the process-wide `metrics` recorder: two services in one process (`watchword-dev`, the tests) each keep
//! their own numbers, and nothing reaches a global. Code that counts takes a [`Metrics`] and registers its
//! handles once (a registered counter is an atomic; incrementing it takes no lock and no lookup).
//!
//! [`Metrics::disabled`] hands out no-op handles: with `--admin-listen off` nothing is counted.
//!
//! Every histogram has explicit buckets (without them the exporter would emit summaries), and the three
//! `process_*` series of the Prometheus process collector are read from `/proc` at each scrape.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, PoisonError},
};

pub use metrics::{Counter, Gauge, Histogram};
use metrics::{Key, Label, Level, Metadata, Recorder as _};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets of the gRPC latency histograms, in seconds: from 100 µs (a cached guarded call on loopback)
/// to 10 s (past the guard's longest auth timeout); the upper half is Prometheus' default buckets, which
/// gRPC dashboards assume.
pub const RPC_SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `watchword_password_hash_seconds`: one argon2id hash takes ~15–40 ms of CPU here, and
/// more when the hashing threads are shared with a busy machine.
pub const HASH_SECONDS_BUCKETS: &[f64] = &[0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The metadata every handle is registered with; the Prometheus recorder ignores it.
static METADATA: Metadata<'static> = Metadata::new("watchword", Level::INFO, None);

/// Where a service's metrics live; cheap to clone. See the module documentation.
#[derive(Clone, Default)]
pub struct Metrics(Option<Arc<Registry>>);

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Run before each render, to set gauges whose value is read rather than counted.
    collectors: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Metrics")
            .field(&if self.is_enabled() { "enabled" } else { "disabled" })
            .finish()
    }
}

impl Metrics {
    /// An empty registry.
    ///
    /// Histogram samples are held one by one until [`Metrics::render`] or [`Metrics::run_upkeep`] folds
    /// them into buckets, so memory follows the call rate until then: serve the registry with
    /// [`crate::admin::AdminServer`], which folds four times a second, or call one of the two as often.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new()
            .set_buckets(RPC_SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("watchword_password_hash_seconds".into()),
                    HASH_SECONDS_BUCKETS,
                )
            })
            .expect("the bucket lists are not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        Self(Some(Arc::new(Registry {
            recorder,
            handle,
            collectors: Mutex::default(),
        })))
    }

    /// Counts nothing: every handle it gives is a no-op, and it renders nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The counter `name` with `labels`, described by `help` (the first description of a name wins).
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        let Some(registry) = &self.0 else {
            return Counter::noop();
        };
        registry.recorder.describe_counter(name.into(), None, help.into());
        registry.recorder.register_counter(&key(name, labels), &METADATA)
    }

    /// The gauge `name` with `labels`, described by `help`.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        let Some(registry) = &self.0 else {
            return Gauge::noop();
        };
        registry.recorder.describe_gauge(name.into(), None, help.into());
        registry.recorder.register_gauge(&key(name, labels), &METADATA)
    }

    /// The histogram `name` with `labels`, described by `help`, with the buckets configured above.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        let Some(registry) = &self.0 else {
            return Histogram::noop();
        };
        registry
            .recorder
            .describe_histogram(name.into(), None, help.into());
        registry
            .recorder
            .register_histogram(&key(name, labels), &METADATA)
    }

    /// Runs `collect` before every render: for gauges that are read (pool sizes, cache entries) rather
    /// than counted as things happen.
    pub fn on_render(&self, collect: impl Fn() + Send + Sync + 'static) {
        if let Some(registry) = &self.0 {
            registry
                .collectors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Box::new(collect));
        }
    }

    /// Everything in the Prometheus text exposition format (version 0.0.4), followed by the process
    /// collector's series; empty when disabled.
    pub fn render(&self) -> String {
        let Some(registry) = &self.0 else {
            return String::new();
        };
        for collect in registry
            .collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            collect();
        }
        let mut text = registry.handle.render();
        process::render(&mut text);
        text
    }

    /// Folds recorded histogram samples into their buckets. The exporter keeps samples until a render or
    /// this, so something must call it periodically when nobody scrapes (the admin server does).
    pub fn run_upkeep(&self) {
        if let Some(registry) = &self.0 {
            registry.handle.run_upkeep();
        }
    }
}

/// `watchword_db_connections{state="idle|busy"}`, read from `connections` (idle, busy) at each render.
pub fn report_db_connections(
    metrics: &Metrics,
    connections: impl Fn() -> (usize, usize) + Send + Sync + 'static,
) {
    const HELP: &str = "Database connections held, by state: for SQLite the writer and the readers opened so \
         far, for PostgreSQL the pool's connections.";
    let idle = metrics.gauge("watchword_db_connections", HELP, &[("state", "idle")]);
    let busy = metrics.gauge("watchword_db_connections", HELP, &[("state", "busy")]);
    metrics.on_render(move || {
        let (now_idle, now_busy) = connections();
        idle.set(now_idle as f64);
        busy.set(now_busy as f64);
    });
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(key, value)| Label::new(*key, (*value).to_owned()))
        .collect();
    Key::from_parts(name, labels)
}

/// The Prometheus process collector's standard series, from `/proc/self` (Linux; elsewhere nothing).
///
/// Written by hand because the exporter's counters are integers and CPU seconds are not.
mod process {
    use super::*;

    /// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 for user space.
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn render(text: &mut String) {
        if let Some(seconds) = cpu_seconds() {
            write_series(
                text,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                seconds,
            );
        }
        if let Some(bytes) = resident_bytes() {
            write_series(
                text,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                bytes,
            );
        }
        if let Some(fds) = open_fds() {
            write_series(
                text,
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                fds,
            );
        }
    }

    fn write_series(text: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        );
    }

    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may hold spaces and parentheses) start at field 3, `state`;
        // utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / TICKS_PER_SECOND)
    }

    fn resident_bytes() -> Option<f64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((kib * 1024) as f64)
    }

    fn open_fds() -> Option<f64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_with_help_and_buckets() {
        let metrics = Metrics::new();
        let counter = metrics.counter("demo_total", "Things done.", &[("kind", "a")]);
        counter.increment(2);
        metrics.gauge("demo_level", "A level.", &[]).set(1.5);
        metrics
            .histogram("demo_seconds", "How long.", &[("kind", "a")])
            .record(0.003);
        let text = metrics.render();
        assert!(
            text.contains("# HELP demo_total Things done.\n# TYPE demo_total counter\n"),
            "{text}"
        );
        assert!(text.contains("demo_total{kind=\"a\"} 2\n"), "{text}");
        assert!(text.contains("demo_level 1.5\n"), "{text}");
        assert!(text.contains("# TYPE demo_seconds histogram\n"), "{text}");
        assert!(
            text.contains("demo_seconds_bucket{kind=\"a\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("demo_seconds_bucket{kind=\"a\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("demo_seconds_count{kind=\"a\"} 1\n"), "{text}");
        for series in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
        ] {
            assert!(text.contains(series), "{series} missing from {text}");
        }
    }

    #[test]
    fn registering_twice_gives_the_same_series_and_collectors_run_at_render() {
        let metrics = Metrics::new();
        metrics.counter("twice_total", "Help.", &[]).increment(1);
        metrics.counter("twice_total", "Help.", &[]).increment(1);
        let gauge = metrics.gauge("read_at_render", "Help.", &[]);
        metrics.on_render(move || gauge.set(7.0));
        let text = metrics.render();
        assert!(text.contains("twice_total 2\n"), "{text}");
        assert!(text.contains("read_at_render 7\n"), "{text}");
    }

    #[test]
    fn disabled_metrics_count_nothing_and_render_nothing() {
        let metrics = Metrics::disabled();
        metrics.counter("x_total", "Help.", &[]).increment(1);
        metrics.on_render(|| panic!("collectors never run when disabled"));
        assert_eq!(metrics.render(), "");
    }
}
