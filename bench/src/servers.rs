//! Starting the servers under test (child processes or in-process) and reading their CPU time and RSS
//! from `/proc`.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use watchword::transport::ClientTls;
use watchword_db::DatabaseUrl;

/// How long a server may take to report SERVING before the harness gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One server under test.
pub struct Server {
    /// Short label used in reports: `auth`, `posts`, `posts-remote`, `posts-noauth`.
    pub label: &'static str,
    pub addr: SocketAddr,
    /// Its process id when it runs as a child process (so its CPU and RSS can be read).
    pub pid: Option<u32>,
    /// From spawn to the first SERVING health check.
    pub startup: Option<Duration>,
    kind: Kind,
}

enum Kind {
    Child(Child),
    InProcess {
        shutdown: Option<oneshot::Sender<()>>,
        task: JoinHandle<Result<(), String>>,
    },
    External,
}

impl Server {
    pub fn external(label: &'static str, addr: SocketAddr) -> Self {
        Self {
            label,
            addr,
            pid: None,
            startup: None,
            kind: Kind::External,
        }
    }

    /// Stops the server: SIGKILL for children (nothing of theirs is kept), graceful for in-process ones.
    pub async fn stop(self) {
        match self.kind {
            Kind::Child(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Kind::InProcess { mut shutdown, task } => {
                if let Some(tx) = shutdown.take() {
                    let _ = tx.send(());
                }
                let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
            }
            Kind::External => {}
        }
    }
}

/// A child process to start: program, arguments, and the health service name that says it is ready.
pub struct ChildSpec {
    pub label: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub rust_log: String,
    /// More environment for the child (`RUST_LOG` is set from `rust_log`).
    pub env: Vec<(&'static str, String)>,
    pub health_service: &'static str,
    /// How to reach it if it serves TLS.
    pub tls: Option<ClientTls>,
}

/// Spawns `spec`, reads the `serving addr=IP:PORT` line from its stderr (then discards the rest of its
/// log on a thread, so per-call logging never blocks it), and waits until its health check says SERVING.
pub async fn spawn_child(spec: ChildSpec) -> Result<Server, String> {
    let started = Instant::now();
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .env("RUST_LOG", &spec.rust_log)
        .envs(spec.env.iter().map(|(name, value)| (name, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: cannot start {}: {e}", spec.label, spec.program.display()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let label = spec.label;
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        let mut seen = Vec::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Err(format!("{label} exited before serving:\n{}", seen.join(""))));
                    return;
                }
                Ok(_) => {}
            }
            if let Some(addr) = serving_addr(&line) {
                let _ = tx.send(Ok(addr));
                break;
            }
            if seen.len() < 50 {
                seen.push(line.clone());
            }
        }
        let mut sink = [0u8; 64 * 1024];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|_| format!("{label} did not log `serving` within {START_TIMEOUT:?}"))
        .and_then(|r| r);
    let addr = match addr {
        Ok(addr) => addr,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    if let Some(tls) = spec.tls {
        register_tls(addr, tls);
    }
    serving_child(label, addr, child, spec.health_service, started).await
}

/// `child`, listening on `addr`, once a health check of `health_service` says SERVING; killed if it never
/// does.
async fn serving_child(
    label: &'static str,
    addr: SocketAddr,
    mut child: Child,
    health_service: &'static str,
    started: Instant,
) -> Result<Server, String> {
    if let Err(e) = wait_serving(addr, health_service).await {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{label}: {e}"));
    }
    Ok(Server {
        label,
        addr,
        pid: Some(child.id()),
        startup: Some(started.elapsed()),
        kind: Kind::Child(child),
    })
}

/// Starts Envoy (`envoy`, with two workers) on a free loopback port with the configuration `config` makes
/// for that port and a free admin port, and waits until a health check through it says SERVING (health
/// checks pass through the example configurations without a token).
pub async fn spawn_envoy(
    label: &'static str,
    envoy: &Path,
    dir: &Path,
    health_service: &'static str,
    config: impl FnOnce(u16, u16) -> String,
) -> Result<Server, String> {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("{label}: no free port: {e}"))
    };
    let (port, admin) = (free_port()?, free_port()?);
    let path = dir.join(format!("{label}.yaml"));
    std::fs::write(&path, config(port, admin)).map_err(|e| format!("{label}: {e}"))?;
    let started = Instant::now();
    let child = Command::new(envoy)
        .arg("-c")
        .arg(&path)
        .args(["--concurrency", "2", "-l", "error", "--use-dynamic-base-id"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{label}: cannot start {}: {e}", envoy.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    serving_child(label, addr, child, health_service, started).await
}

/// Parses `... serving addr=127.0.0.1:1234` (the compact log format of `watchword::telemetry`).
fn serving_addr(line: &str) -> Option<SocketAddr> {
    // The gRPC address, not the admin server's (`admin serving addr=...`).
    if !line.contains("serving") || line.contains("admin serving") {
        return None;
    }
    let rest = &line[line.find("addr=")? + "addr=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Starts a server future in-process on a fresh port-0 listener and waits until it is SERVING.
pub async fn start_in_process<F, Fut, E>(
    label: &'static str,
    health_service: &'static str,
    tls: Option<ClientTls>,
    serve: F,
) -> Result<Server, String>
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let started = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("{label}: bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = oneshot::channel();
    let fut = serve(listener, rx);
    let task = tokio::spawn(async move { fut.await.map_err(|e| e.to_string()) });
    if let Some(tls) = tls {
        register_tls(addr, tls);
    }
    wait_serving(addr, health_service)
        .await
        .map_err(|e| format!("{label}: {e}"))?;
    Ok(Server {
        label,
        addr,
        pid: None,
        startup: Some(started.elapsed()),
        kind: Kind::InProcess {
            shutdown: Some(tx),
            task,
        },
    })
}

/// Polls grpc.health.v1 Check for `service` until SERVING.
pub async fn wait_serving(addr: SocketAddr, service: &str) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(channel) = connect(addr).await {
            let mut health = HealthClient::new(channel);
            match health
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
            {
                Ok(r) if r.get_ref().status() == ServingStatus::Serving => return Ok(()),
                Ok(r) => last = format!("{:?}", r.get_ref().status()),
                Err(s) => last = format!("{:?}: {}", s.code(), s.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("not SERVING within {START_TIMEOUT:?} (last: {last})"))
}

/// The servers under test that serve TLS, and how to reach each.
static TLS_SERVERS: Mutex<Vec<(SocketAddr, ClientTls)>> = Mutex::new(Vec::new());

/// From now on [`connect`] reaches `addr` over TLS with `tls`.
pub fn register_tls(addr: SocketAddr, tls: ClientTls) {
    TLS_SERVERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((addr, tls));
}

/// One HTTP/2 connection to `addr`: over TLS if it was registered as a TLS server (connected on first
/// use: each channel is one connection either way).
pub async fn connect(addr: SocketAddr) -> Result<Channel, String> {
    let configure = |endpoint: Endpoint| endpoint.tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
    let tls = TLS_SERVERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, tls)| tls.clone());
    match tls {
        Some(tls) => tls
            .connect_lazy(&format!("https://localhost:{}", addr.port()), configure)
            .map_err(|e| e.to_string()),
        None => configure(Endpoint::from_shared(format!("http://{addr}")).expect("valid uri"))
            .connect()
            .await
            .map_err(|e| e.to_string()),
    }
}

pub fn sqlite_url(path: &Path) -> DatabaseUrl {
    DatabaseUrl::Sqlite(path.to_owned())
}

/// CPU time (user + system) and memory of one process, from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Reads `pid`'s counters (`None` for this process). `ticks_per_sec` is `getconf CLK_TCK`.
pub fn sample(pid: Option<u32>, ticks_per_sec: u64) -> Option<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start with field 3, `state`.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = utime + stime;
    let cpu = Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64);
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l[key.len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// CPU time of the calling thread (`/proc/thread-self/schedstat`, nanoseconds on CPU).
pub fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    (ns > 0).then(|| Duration::from_nanos(ns))
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on every Linux we know of).
pub fn ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_serving_line() {
        let line = "2026-11-22T15:00:00.000000Z  INFO serving addr=127.0.0.1:40123\n";
        assert_eq!(serving_addr(line), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(serving_addr("INFO call method=/x code=Ok"), None);
        assert_eq!(serving_addr("INFO admin serving addr=127.0.0.1:9051"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(None, ticks_per_sec()).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
