//! Results: the Markdown table, the JSON document and the SVG chart.

use std::{fmt::Write as _, time::Duration};

use serde_json::{Value, json};

use crate::{
    Params,
    load::{keep_error_samples, quantile},
};

/// The machine the run happened on.
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub loadavg_at_start: String,
}

impl Machine {
    pub fn read(cores: usize) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let loadavg_at_start = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            cores,
            cpu_model,
            mem_total_mib,
            loadavg_at_start,
        }
    }
}

/// One scenario's result.
pub struct Outcome {
    pub name: &'static str,
    pub concurrency: usize,
    pub background_concurrency: Option<usize>,
    pub connections: usize,
    pub window: Duration,
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub latencies_us: Vec<u32>,
    /// Throughput of each slice, in the order they ran: how much the machine moved under this scenario.
    pub slice_rps: Vec<f64>,
    /// Calls of the background load (the login flood) completed OK in the window.
    pub background_ok: u64,
    pub background_latencies_us: Vec<u32>,
    pub auth_cpu: Option<Duration>,
    pub posts_label: Option<&'static str>,
    pub posts_cpu: Option<Duration>,
    pub client_cpu: Option<Duration>,
}

impl Outcome {
    /// Adds a later slice of the same scenario: counts, windows, CPU times and latencies add up.
    pub fn absorb(&mut self, slice: Outcome) {
        let sum = |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a + b);
        self.window += slice.window;
        self.ok += slice.ok;
        self.errors += slice.errors;
        keep_error_samples(&mut self.error_samples, slice.error_samples);
        // Quantiles are read from sorted latencies.
        self.latencies_us.extend(slice.latencies_us);
        self.latencies_us.sort_unstable();
        self.slice_rps.extend(slice.slice_rps);
        self.background_ok += slice.background_ok;
        self.background_latencies_us.extend(slice.background_latencies_us);
        self.background_latencies_us.sort_unstable();
        self.auth_cpu = sum(self.auth_cpu, slice.auth_cpu);
        self.posts_cpu = sum(self.posts_cpu, slice.posts_cpu);
        self.client_cpu = sum(self.client_cpu, slice.client_cpu);
    }

    pub fn failed(&self) -> bool {
        self.errors > 0 || self.ok == 0
    }

    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// Latency quantile in milliseconds.
    pub fn p(&self, q: f64) -> Option<f64> {
        quantile(&self.latencies_us, q).map(|us| f64::from(us) / 1000.0)
    }

    /// CPU microseconds per completed call (measured and background calls alike).
    fn per_call(&self, cpu: Option<Duration>) -> Option<f64> {
        let calls = self.ok + self.background_ok;
        cpu.filter(|_| calls > 0)
            .map(|c| c.as_secs_f64() * 1e6 / calls as f64)
    }

    /// Numbers only when the scenario had no errors.
    fn valid<T>(&self, v: Option<T>) -> Option<T> {
        if self.failed() { None } else { v }
    }
}

/// What one argon2id hash costs on this machine.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Timing {
    /// Hashes timed, and whether beside the login slices (else once, before the servers started).
    pub hashes: usize,
    pub beside_logins: bool,
    /// Mean CPU time per hash, when the kernel reports per-thread CPU time.
    pub cpu_ms: Option<f64>,
    pub wall_min_ms: f64,
    pub wall_median_ms: f64,
}

impl Argon2Timing {
    /// The cost used for the login ceiling: CPU time, else the fastest wall time.
    pub fn per_hash_ms(&self) -> f64 {
        self.cpu_ms.unwrap_or(self.wall_min_ms)
    }
}

/// A server's memory and start-up.
pub struct ServerReport {
    pub label: &'static str,
    pub pid: Option<u32>,
    pub first_start_ms: Option<f64>,
    pub restart_ms: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub rss_mib: Option<f64>,
}

pub struct Report {
    pub params: Params,
    pub machine: Machine,
    pub argon2: Argon2Timing,
    pub outcomes: Vec<Outcome>,
    pub servers: Vec<ServerReport>,
    pub harness_peak_rss_mib: Option<f64>,
}

/// A ratio with its target: `at_least` or, when false, `at_most`.
pub struct Ratio {
    pub name: &'static str,
    pub value: Option<f64>,
    /// None: reported for information, with no target to meet.
    pub target: Option<f64>,
    pub at_least: bool,
}

impl Ratio {
    fn met(&self) -> Option<bool> {
        let target = self.target?;
        self.value
            .map(|v| if self.at_least { v >= target } else { v <= target })
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"))
}

impl Report {
    fn get(&self, name: &str) -> Option<&Outcome> {
        self.outcomes.iter().find(|o| o.name == name && !o.failed())
    }

    fn rate(&self, name: &str) -> Option<f64> {
        self.get(name).map(Outcome::throughput)
    }

    fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }

    /// Logins per second the machine's cores could do if they only hashed.
    pub fn login_ceiling(&self) -> f64 {
        self.machine.cores as f64 * 1000.0 / self.argon2.per_hash_ms()
    }

    pub fn ratios(&self) -> Vec<Ratio> {
        let health = self.rate("health");
        let noauth = self.rate("list-noauth");
        let flood_p99 = self.get("validate-under-login-flood").and_then(|o| o.p(0.99));
        let rest_p99 = self.get("validate").and_then(|o| o.p(0.99));
        vec![
            Ratio {
                name: "validate / health",
                value: Self::div(self.rate("validate"), health),
                target: Some(0.6),
                at_least: true,
            },
            Ratio {
                name: "list-noauth / health",
                value: Self::div(noauth, health),
                target: Some(0.3),
                at_least: true,
            },
            Ratio {
                name: "list-cached / list-noauth",
                value: Self::div(self.rate("list-cached"), noauth),
                target: Some(0.9),
                at_least: true,
            },
            Ratio {
                name: "list-remote / list-noauth",
                value: Self::div(self.rate("list-remote"), noauth),
                target: Some(0.5),
                at_least: true,
            },
            Ratio {
                name: "create / health",
                value: Self::div(self.rate("create"), health),
                target: Some(0.1),
                at_least: true,
            },
            Ratio {
                name: "login / (cores ÷ argon2 time)",
                value: Self::div(self.rate("login"), Some(self.login_ceiling())),
                target: Some(0.8),
                at_least: true,
            },
            Ratio {
                name: "list-cached-tls / list-cached (what TLS costs)",
                value: Self::div(self.rate("list-cached-tls"), self.rate("list-cached")),
                target: None,
                at_least: true,
            },
            // Issue 18: local mode, and the Envoy sidecar people deploy instead.
            Ratio {
                name: "list-local / list-noauth",
                value: Self::div(self.rate("list-local"), noauth),
                target: Some(0.9),
                at_least: true,
            },
            Ratio {
                name: "list-cached / list-envoy-jwt",
                value: Self::div(self.rate("list-cached"), self.rate("list-envoy-jwt")),
                target: Some(2.0),
                at_least: true,
            },
            Ratio {
                name: "list-local / list-envoy-jwt",
                value: Self::div(self.rate("list-local"), self.rate("list-envoy-jwt")),
                target: Some(2.0),
                at_least: true,
            },
            Ratio {
                name: "list-envoy-extauthz / list-envoy-jwt (what revocation costs at the gateway)",
                value: Self::div(self.rate("list-envoy-extauthz"), self.rate("list-envoy-jwt")),
                target: None,
                at_least: true,
            },
            Ratio {
                name: "validate p99 under login flood / at rest",
                value: Self::div(flood_p99, rest_p99),
                target: Some(3.0),
                at_least: false,
            },
            // Issue 15: metrics and tracing on against both off.
            Ratio {
                name: "validate-observed / validate",
                value: Self::div(self.rate("validate-observed"), self.rate("validate")),
                target: Some(0.95),
                at_least: true,
            },
            Ratio {
                name: "list-cached-observed / list-cached",
                value: Self::div(self.rate("list-cached-observed"), self.rate("list-cached")),
                target: Some(0.95),
                at_least: true,
            },
        ]
    }

    pub fn markdown(&self) -> String {
        let p = &self.params;
        let m = &self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Machine: {} cores, {}, {} MiB RAM, load average at start {}. Mode: {}{}.",
            m.cores,
            m.cpu_model,
            m.mem_total_mib,
            m.loadavg_at_start,
            p.mode,
            if p.smoke { ", smoke" } else { "" }
        );
        let _ = writeln!(
            s,
            "Per scenario: {:?} measured in {} slice(s), the scenarios taking turns slice by slice, each slice \
             after {:?} of warm-up; concurrency {} (logins {}), {} connections; {} tokens over {} users; \
             {} posts, page size {}.\n",
            p.duration,
            p.slices,
            p.warmup,
            p.concurrency,
            p.login_concurrency,
            p.connections,
            p.tokens,
            p.users,
            p.posts,
            p.page_size
        );
        if self.outcomes.iter().any(|o| o.name.ends_with("-observed")) {
            let observed = if p.calibrate {
                "calibration (--calibrate): the *-observed servers run with metrics and tracing off, like the \
                 others"
                    .to_owned()
            } else if p.trace_sampling < 1.0 {
                format!(
                    "metrics counted, spans exported to the harness's OTLP receiver, traces sampled at {} \
                     (parentbased_traceidratio)",
                    p.trace_sampling
                )
            } else {
                "metrics counted, every span exported to the harness's OTLP receiver (the default sampler)"
                    .to_owned()
            };
            let _ = writeln!(s, "Observed servers: {observed}.\n");
        }
        s.push_str(
            "| scenario | tasks | req/s | slices req/s (min–max) | p50 ms | p90 ms | p99 ms | auth CPU µs/call | posts CPU µs/call | harness CPU µs/call | errors |\n",
        );
        s.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for o in &self.outcomes {
            let tasks = match o.background_concurrency {
                Some(b) => format!("{} + {b} logins", o.concurrency),
                None => o.concurrency.to_string(),
            };
            if o.failed() {
                let _ = writeln!(
                    s,
                    "| {} | {tasks} | FAILED | | | | | | | | {} ({}) |",
                    o.name,
                    o.errors,
                    o.error_samples.join("; ").replace('|', "/")
                );
                continue;
            }
            let posts_cpu = match (o.posts_label, o.per_call(o.posts_cpu)) {
                (Some(label), Some(v)) => format!("{v:.0} ({label})"),
                (Some(label), None) => format!("— ({label})"),
                _ => "—".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {} | {tasks} | {:.0}{} | {} | {} | {} | {} | {} | {posts_cpu} | {} | 0 |",
                o.name,
                o.throughput(),
                if o.background_ok > 0 {
                    format!(
                        " (+{:.0} logins/s)",
                        o.background_ok as f64 / o.window.as_secs_f64()
                    )
                } else {
                    String::new()
                },
                spread(&o.slice_rps),
                opt(o.p(0.5), 2),
                opt(o.p(0.9), 2),
                opt(o.p(0.99), 2),
                opt(o.per_call(o.auth_cpu), 0),
                opt(o.per_call(o.client_cpu), 0),
            );
        }
        s.push_str("\nCPU per call divides the server's CPU time in the window by the calls completed in it (in the flood, validations and logins together).\n\n");
        s.push_str("| ratio | value | target | met |\n| --- | ---: | ---: | --- |\n");
        for r in self.ratios() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                r.name,
                opt(r.value, 3),
                match r.target {
                    Some(target) => format!("{} {target}", if r.at_least { "≥" } else { "≤" }),
                    None => "(none)".to_owned(),
                },
                match r.met() {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                }
            );
        }
        let _ = writeln!(
            s,
            "\nargon2id (m=19456 KiB, t=2, p=1), {} hashes on one thread {}: {} ms of CPU \
             per hash (mean; wall time fastest {:.1} ms, median {:.1} ms), so {} cores could do {:.1} logins/s.\n",
            self.argon2.hashes,
            if self.argon2.beside_logins {
                "just before each login slice, the servers idle"
            } else {
                "before the servers started"
            },
            opt(self.argon2.cpu_ms, 1),
            self.argon2.wall_min_ms,
            self.argon2.wall_median_ms,
            m.cores,
            self.login_ceiling()
        );
        s.push_str("| server | peak RSS MiB (VmHWM) | RSS at end MiB | first start → SERVING ms | restart → SERVING ms |\n");
        s.push_str("| --- | ---: | ---: | ---: | ---: |\n");
        for r in &self.servers {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.label,
                opt(r.peak_rss_mib, 1),
                opt(r.rss_mib, 1),
                opt(r.first_start_ms, 0),
                opt(r.restart_ms, 0)
            );
        }
        if self.servers.iter().all(|r| r.pid.is_none()) {
            let _ = writeln!(
                s,
                "\nServers ran in the harness process (or externally): harness peak RSS {} MiB.",
                opt(self.harness_peak_rss_mib, 1)
            );
        }
        s
    }

    pub fn json(&self) -> Value {
        let p = &self.params;
        let scenarios: Vec<Value> = self
            .outcomes
            .iter()
            .map(|o| {
                json!({
                    "name": o.name,
                    "failed": o.failed(),
                    "concurrency": o.concurrency,
                    "background_login_concurrency": o.background_concurrency,
                    "connections": o.connections,
                    "window_s": o.window.as_secs_f64(),
                    "ok": o.ok,
                    "errors": o.errors,
                    "error_samples": o.error_samples,
                    "throughput_rps": o.valid(Some(o.throughput())),
                    "slice_throughput_rps": o.valid(Some(&o.slice_rps)),
                    "p50_ms": o.valid(o.p(0.5)),
                    "p90_ms": o.valid(o.p(0.9)),
                    "p99_ms": o.valid(o.p(0.99)),
                    "max_ms": o.valid(o.p(1.0)),
                    "background_logins_rps": o.valid(o.background_concurrency.map(|_| o.background_ok as f64 / o.window.as_secs_f64())),
                    "background_login_p99_ms": o.valid(o.background_concurrency.and_then(|_| quantile(&o.background_latencies_us, 0.99)).map(|us| f64::from(us) / 1000.0)),
                    "auth_cpu_us_per_call": o.valid(o.per_call(o.auth_cpu)),
                    "posts_server": o.posts_label,
                    "posts_cpu_us_per_call": o.valid(o.per_call(o.posts_cpu)),
                    "harness_cpu_us_per_call": o.valid(o.per_call(o.client_cpu)),
                })
            })
            .collect();
        let ratios: Vec<Value> = self
            .ratios()
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "value": r.value,
                    "target": r.target,
                    "at_least": r.at_least,
                    "met": r.met(),
                })
            })
            .collect();
        let servers: Vec<Value> = self
            .servers
            .iter()
            .map(|r| {
                json!({
                    "label": r.label,
                    "peak_rss_mib": r.peak_rss_mib,
                    "rss_at_end_mib": r.rss_mib,
                    "first_start_ms": r.first_start_ms,
                    "restart_ms": r.restart_ms,
                })
            })
            .collect();
        json!({
            "machine": {
                "cores": self.machine.cores,
                "cpu_model": self.machine.cpu_model,
                "mem_total_mib": self.machine.mem_total_mib,
                "loadavg_at_start": self.machine.loadavg_at_start,
            },
            "params": {
                "mode": p.mode,
                "smoke": p.smoke,
                "warmup_s_per_slice": p.warmup.as_secs_f64(),
                "slices": p.slices,
                "duration_s": p.duration.as_secs_f64(),
                "concurrency": p.concurrency,
                "login_concurrency": p.login_concurrency,
                "connections": p.connections,
                "tokens": p.tokens,
                "users": p.users,
                "posts": p.posts,
                "page_size": p.page_size,
                "trace_sampling": p.trace_sampling,
                "calibrate": p.calibrate,
            },
            "argon2_ms_per_hash": self.argon2.per_hash_ms(),
            "argon2_hashes": self.argon2.hashes,
            "argon2_beside_logins": self.argon2.beside_logins,
            "argon2_cpu_ms_mean": self.argon2.cpu_ms,
            "argon2_wall_ms_min": self.argon2.wall_min_ms,
            "argon2_wall_ms_median": self.argon2.wall_median_ms,
            "login_ceiling_rps": self.login_ceiling(),
            "scenarios": scenarios,
            "ratios": ratios,
            "servers": servers,
            "harness_peak_rss_mib": self.harness_peak_rss_mib,
        })
    }

    /// Two horizontal bar charts: throughput and p99 latency per scenario.
    pub fn svg(&self) -> String {
        let rows: Vec<(&str, Option<f64>, Option<f64>)> = self
            .outcomes
            .iter()
            .map(|o| (o.name, o.valid(Some(o.throughput())), o.valid(o.p(0.99))))
            .collect();
        let (label_w, bar_w, row_h, top) = (210.0, 330.0, 24.0, 50.0);
        let panel_w = label_w + bar_w + 90.0;
        let height = top + rows.len() as f64 * row_h + 30.0;
        let width = panel_w * 2.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (panel, (title, color, unit)) in [
            ("Throughput (req/s)", "#3b7dd8", ""),
            ("p99 latency (ms)", "#d8703b", " ms"),
        ]
        .iter()
        .enumerate()
        {
            let x0 = panel as f64 * panel_w;
            let max = rows
                .iter()
                .filter_map(|r| if panel == 0 { r.1 } else { r.2 })
                .fold(0.0_f64, f64::max)
                .max(1e-9);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="25" font-weight="bold" font-size="15">{title}</text>"#,
                x0 + 10.0
            );
            for (i, row) in rows.iter().enumerate() {
                let y = top + i as f64 * row_h;
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                    x0 + label_w - 8.0,
                    y + 16.0,
                    row.0
                );
                match if panel == 0 { row.1 } else { row.2 } {
                    Some(v) => {
                        let w = (v / max * bar_w).max(1.0);
                        let _ = writeln!(
                            s,
                            r#"<rect x="{}" y="{}" width="{w:.1}" height="{}" fill="{color}"/>"#,
                            x0 + label_w,
                            y + 3.0,
                            row_h - 6.0
                        );
                        let text = if panel == 0 {
                            format!("{v:.0}")
                        } else {
                            format!("{v:.2}{unit}")
                        };
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{}">{text}</text>"#,
                            x0 + label_w + w + 5.0,
                            y + 16.0
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            r##"<text x="{}" y="{}" fill="#c00">failed</text>"##,
                            x0 + label_w + 5.0,
                            y + 16.0
                        );
                    }
                }
            }
        }
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" font-size="11" fill="#555">{} cores ({}), concurrency {}, {:?} per scenario</text>"##,
            height - 8.0,
            self.machine.cores,
            self.machine.cpu_model.replace('&', "&amp;").replace('<', "&lt;"),
            self.params.concurrency,
            self.params.duration
        );
        s.push_str("</svg>\n");
        s
    }
}

/// `min–max` of per-slice throughputs, or `—` for a single slice.
fn spread(rps: &[f64]) -> String {
    let min = rps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = rps.iter().copied().fold(0.0, f64::max);
    if rps.len() < 2 {
        "—".to_owned()
    } else {
        format!("{min:.0}–{max:.0}")
    }
}
