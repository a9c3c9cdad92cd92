//! Crash drills with the real binaries: auth-svc killed or frozen under load, posts-svc killed mid-burst.
//!
//! `auth-svc` is found beside `posts-svc` in the target directory; `cargo test --workspace` builds both.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};
use watchword::pb::{
    auth::v1::{LoginRequest, RegisterRequest, auth_service_client::AuthServiceClient},
    posts::v1::{CreatePostRequest, ListPostsRequest, posts_service_client::PostsServiceClient},
};
use watchword_testing::PrivatePostgres;

const PASSWORD: &str = "correct horse battery staple";

/// A spawned service; killed (and reaped) when dropped, so a failing test leaves nothing behind.
struct Service {
    child: Child,
    addr: SocketAddr,
    /// The admin server (`/metrics`, `/livez`, `/readyz`).
    admin: SocketAddr,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn auth_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_posts-svc")).with_file_name("auth-svc");
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p auth-svc` first)",
        path.display()
    );
    path
}

/// Starts `binary` with `args`, returning once it logs the address it serves on.
fn spawn(binary: &Path, args: &[String]) -> Service {
    spawn_with_env(binary, args, &[])
}

fn spawn_with_env(binary: &Path, args: &[String], env: &[(&str, &str)]) -> Service {
    let mut child = Command::new(binary)
        .args(args)
        // Many drills run at once: the default admin port would collide.
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn service");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Keep draining stderr for the life of the process so it never blocks on a full pipe.
        for line in stderr.lines().map_while(Result::ok) {
            // The admin address, then the gRPC one (in the order they are logged).
            if !sent && let Some(addr) = line.split("addr=").nth(1) {
                let admin = line.contains("admin serving");
                let _ = tx.send((
                    admin,
                    addr.split_whitespace().next().unwrap_or_default().to_owned(),
                ));
                sent = !admin;
            }
        }
    });
    let mut admin = None;
    let addr = loop {
        let (is_admin, addr) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("service logs its addresses");
        let addr: SocketAddr = addr.parse().unwrap();
        if !is_admin {
            break addr;
        }
        admin = Some(addr);
    };
    let admin = admin.expect("the admin server is logged before the gRPC server");
    Service { child, addr, admin }
}

fn start_auth(dir: &Path, listen: &str) -> Service {
    let db = format!("sqlite://{}", dir.join("auth.db").display());
    // Throttling is tested elsewhere; here many parallel logins for one account must not trip it.
    let args = [
        "--listen",
        listen,
        "--database-url",
        &db,
        "--peer-rate",
        "0",
        "--lockout-threshold",
        "1000",
    ];
    spawn(&auth_binary(), &args.map(str::to_owned))
}

fn start_posts(dir: &Path, auth: SocketAddr, auth_timeout: &str) -> Service {
    start_posts_with(dir, auth, auth_timeout, "5s")
}

fn start_posts_with(dir: &Path, auth: SocketAddr, auth_timeout: &str, cache_ttl: &str) -> Service {
    start_posts_with_env(dir, auth, auth_timeout, cache_ttl, &[])
}

fn start_posts_with_env(
    dir: &Path,
    auth: SocketAddr,
    auth_timeout: &str,
    cache_ttl: &str,
    env: &[(&str, &str)],
) -> Service {
    let db = format!("sqlite://{}", dir.join("posts.db").display());
    let auth_url = format!("http://{auth}");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--auth-url",
        &auth_url,
        "--auth-timeout",
        auth_timeout,
        "--validate-cache-ttl",
        cache_ttl,
    ];
    spawn_with_env(
        Path::new(env!("CARGO_BIN_EXE_posts-svc")),
        &args.map(str::to_owned),
        env,
    )
}

fn signal(service: &Service, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

async fn token(auth: SocketAddr) -> String {
    let mut client = AuthServiceClient::new(channel(auth));
    client
        .register(RegisterRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
    let login = LoginRequest {
        username: "alice".into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    client.login(login).await.unwrap().into_inner().access_token
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}")).unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// When the first call started after `killed` came back UNAVAILABLE: the guard had noticed the outage.
fn first_unavailable_end(outcomes: &[Outcome], killed: Instant) -> Option<Instant> {
    outcomes
        .iter()
        .filter(|o| o.started > killed && o.code == Code::Unavailable)
        .map(|o| o.started + o.took)
        .min()
}

/// One finished call of a load run.
struct Outcome {
    started: Instant,
    took: Duration,
    code: Code,
}

/// The drills that load both cores or measure memory take turns: run side by side on a 2-core machine, the
/// memory drill's frozen auth-svc outlived the revocation feed's heartbeat deadline, and the load drills
/// measured each other. Every other test still runs in parallel.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_svc_killed_under_load_means_unavailable_never_ok_then_recovery() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = start_auth(dir.path(), "127.0.0.1:0");
    let auth_addr = auth.addr;
    let posts = start_posts(dir.path(), auth_addr, "1s");
    let token = token(auth_addr).await;

    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let ok_calls = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..8 {
        let (client, token) = (PostsServiceClient::new(channel(posts.addr)), token.clone());
        let (outcomes, stop, ok_calls) = (outcomes.clone(), stop.clone(), ok_calls.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = if (worker + i) % 2 == 0 {
                    let request = CreatePostRequest {
                        title: format!("w{worker} #{i}"),
                        body: "load".into(),
                        ..Default::default()
                    };
                    client
                        .clone()
                        .create_post(bearer(request, &token))
                        .await
                        .map(drop)
                } else {
                    let request = ListPostsRequest::default();
                    client.clone().list_posts(bearer(request, &token)).await.map(drop)
                };
                let code = result.map_or_else(|s| s.code(), |()| Code::Ok);
                if code == Code::Ok {
                    ok_calls.fetch_add(1, Ordering::Relaxed);
                }
                outcomes.lock().unwrap().push(Outcome {
                    started,
                    took: started.elapsed(),
                    code,
                });
                i += 1;
            }
        }));
    }

    // Kill auth-svc once the load is clearly flowing.
    wait_until(|| ok_calls.load(Ordering::Relaxed) >= 40, "load to flow").await;
    let mut auth = auth;
    auth.child.kill().unwrap();
    auth.child.wait().unwrap();
    let killed = Instant::now();

    // Let calls fail for a while (measured in calls, not time), then restart on the same address. Counted
    // exactly as the outage is checked below: calls started after the first UNAVAILABLE came back (any
    // call recorded now has also finished before the restart).
    let outage_so_far = || {
        let outcomes = outcomes.lock().unwrap();
        let Some(detected) = first_unavailable_end(&outcomes, killed) else {
            return 0;
        };
        outcomes.iter().filter(|o| o.started > detected).count()
    };
    wait_until(|| outage_so_far() >= 40, "calls to fail after the kill").await;
    let restarted = start_auth(dir.path(), &auth_addr.to_string());
    let restart_time = Instant::now();
    let ok_before_recovery = ok_calls.load(Ordering::Relaxed);
    wait_until(
        || ok_calls.load(Ordering::Relaxed) > ok_before_recovery + 20,
        "recovery",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap();
    // The guard notices the dead process (its revocation stream breaks) and from then on fails closed.
    // Calls started in the instant before that may still be answered from the validation cache.
    let detected = first_unavailable_end(&outcomes, killed).expect("the outage was noticed");
    println!("outage noticed {:?} after the kill", detected - killed);
    assert!(
        detected - killed < Duration::from_secs(1),
        "took {:?} to notice",
        detected - killed
    );
    let outage: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.started > detected && o.started + o.took < restart_time)
        .collect();
    assert!(outage.len() >= 40);
    for o in &outage {
        assert_eq!(
            o.code,
            Code::Unavailable,
            "a call during the outage ended {:?}",
            o.code
        );
        assert!(
            o.took < Duration::from_secs(3),
            "a call during the outage took {:?}",
            o.took
        );
    }
    let slowest = outage.iter().map(|o| o.took).max().unwrap();
    println!(
        "outage: {} calls, all UNAVAILABLE, slowest {slowest:?}",
        outage.len()
    );
    drop(restarted);
    drop(posts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_auth_svc_fails_every_call_within_the_guard_timeout() {
    let _turn = HEAVY.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let auth = start_auth(dir.path(), "127.0.0.1:0");
    // Validation cache off: every call needs auth-svc, so every call must fail closed, in time.
    let posts = start_posts_with(dir.path(), auth.addr, "500ms", "0s");
    // Default cache: calls with an already validated token may still be answered from the cache (a frozen
    // auth-svc cannot revoke anything either), but a token it never saw must fail closed, in time.
    let cached_dir = tempfile::tempdir().unwrap();
    let cached_posts = start_posts_with(cached_dir.path(), auth.addr, "500ms", "5s");
    let token = token(auth.addr).await;
    let fresh = {
        let mut client = AuthServiceClient::new(channel(auth.addr));
        let login = LoginRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
            ..Default::default()
        };
        client.login(login).await.unwrap().into_inner().access_token
    };
    let client = PostsServiceClient::new(channel(posts.addr));
    client
        .clone()
        .list_posts(bearer(ListPostsRequest::default(), &token))
        .await
        .expect("works before the freeze");

    signal(&auth, "STOP");
    let calls = (0..20).map(|_| {
        let (client, token) = (client.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let result = client
                .clone()
                .list_posts(bearer(ListPostsRequest::default(), &token))
                .await;
            (result.map(drop).map_err(|s| s.code()), started.elapsed())
        })
    });
    let mut slowest = Duration::ZERO;
    for call in calls.collect::<Vec<_>>() {
        let (result, took) = call.await.unwrap();
        assert_eq!(result, Err(Code::Unavailable));
        assert!(
            took < Duration::from_millis(1500),
            "took {took:?} with a 500ms guard timeout"
        );
        slowest = slowest.max(took);
    }
    println!("frozen auth-svc: 20 calls UNAVAILABLE, slowest {slowest:?}");

    let started = Instant::now();
    let result = PostsServiceClient::new(channel(cached_posts.addr))
        .list_posts(bearer(ListPostsRequest::default(), &fresh))
        .await;
    assert_eq!(result.map(drop).map_err(|s| s.code()), Err(Code::Unavailable));
    assert!(started.elapsed() < Duration::from_millis(1500));
    signal(&auth, "CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_svc_killed_mid_burst_keeps_every_acknowledged_post_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let auth = start_auth(dir.path(), "127.0.0.1:0");
    let mut posts = start_posts(dir.path(), auth.addr, "2s");
    let token = token(auth.addr).await;

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut burst = Vec::new();
    for worker in 0..8 {
        let (client, token) = (PostsServiceClient::new(channel(posts.addr)), token.clone());
        let acknowledged = acknowledged.clone();
        burst.push(tokio::spawn(async move {
            for i in 0.. {
                let request = CreatePostRequest {
                    title: format!("w{worker} #{i}"),
                    body: "burst".into(),
                    ..Default::default()
                };
                match client.clone().create_post(bearer(request, &token)).await {
                    Ok(response) => acknowledged
                        .lock()
                        .unwrap()
                        .push(response.into_inner().post.unwrap().id),
                    Err(_) => break, // the server is gone
                }
            }
        }));
    }
    wait_until(
        || acknowledged.lock().unwrap().len() >= 100,
        "posts to be acknowledged",
    )
    .await;
    posts.child.kill().unwrap();
    posts.child.wait().unwrap();
    for task in burst {
        task.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let restarted = start_posts(dir.path(), auth.addr, "2s");
    let client = PostsServiceClient::new(channel(restarted.addr));
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListPostsRequest {
            page_size: 100,
            page_token,
            author_id: None,
        };
        let page = client
            .clone()
            .list_posts(bearer(request, &token))
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.posts.into_iter().map(|p| p.id));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    for id in &acknowledged {
        assert_eq!(listed.iter().filter(|l| *l == id).count(), 1, "post {id}");
    }
    let mut unique = listed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), listed.len(), "a post is listed twice");
    println!(
        "killed mid-burst: {} acknowledged, {} stored, none lost or doubled",
        acknowledged.len(),
        listed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut auth = start_auth(dir.path(), "127.0.0.1:0");
    token(auth.addr).await;
    let client = AuthServiceClient::new(channel(auth.addr));
    // Logins take tens of milliseconds of argon2 each and queue on two cores: plenty in flight.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let login = LoginRequest {
                    username: "alice".into(),
                    password: PASSWORD.into(),
                    ..Default::default()
                };
                client.clone().login(login).await.map(drop).map_err(|s| s.code())
            })
        })
        .collect();
    // Wait until the calls are on the wire (the server has accepted the streams), then ask it to stop.
    wait_until(
        || calls.iter().any(|c| c.is_finished()),
        "the first login to finish",
    )
    .await;
    signal(&auth, "TERM");
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(()), "an in-flight call did not finish");
    }
    let status = tokio::task::spawn_blocking(move || auth.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// posts-svc's resident memory, from `/proc/<pid>/status`.
fn rss_kib(service: &Service) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", service.child.id())).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// ListPosts with `token`, given up after `deadline`: by posts-svc (the client's `grpc-timeout`) when
/// `server_side`, else by the client dropping the call (RST_STREAM).
async fn list_within(
    client: &PostsServiceClient<Channel>,
    token: &str,
    deadline: Duration,
    server_side: bool,
) -> Result<(), Code> {
    let mut request = bearer(ListPostsRequest::default(), token);
    if server_side {
        request.set_timeout(deadline);
        client
            .clone()
            .list_posts(request)
            .await
            .map(drop)
            .map_err(|s| s.code())
    } else {
        match tokio::time::timeout(deadline, client.clone().list_posts(request)).await {
            Ok(result) => result.map(drop).map_err(|s| s.code()),
            Err(_elapsed) => Err(Code::Cancelled),
        }
    }
}

/// Whether posts-svc, with auth-svc frozen, still accepts `cached`: only from its validation cache, which
/// it uses only while the revocation feed is live. (Otherwise the guard answers UNAVAILABLE after its 1 s
/// timeout; the long deadline only keeps a slow machine from failing the call.)
async fn answered_from_cache(client: &PostsServiceClient<Channel>, cached: &str) -> Result<(), Code> {
    list_within(client, cached, Duration::from_secs(10), true).await
}

/// Freezes auth-svc at a moment the guard answers `cached` from its validation cache, i.e. while the
/// revocation feed is live (so the calls that follow go through the cache's single-flight path, not
/// straight to auth-svc). Bounded: a few attempts, each refreshing the cached verdict first.
async fn freeze_with_live_cache(auth: &Service, client: &PostsServiceClient<Channel>, cached: &str) {
    for _ in 0..20 {
        let answered = list_within(client, cached, Duration::from_secs(10), true).await;
        assert_eq!(answered, Ok(()), "auth-svc answers before the freeze");
        signal(auth, "STOP");
        if answered_from_cache(client, cached).await.is_ok() {
            return;
        }
        signal(auth, "CONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the guard never answered from its cache: is the revocation feed live?");
}

/// `calls` ListPosts calls while auth-svc is frozen, each with a bearer token never seen before and each
/// abandoned after 50 ms (by deadline or by the client), 384 at a time over the `clients` connections.
/// A freeze lasts at most [`LONGEST_FREEZE`] (so the revocation feed, whose heartbeat deadline is 15 s,
/// stays live on a slow machine): a round that needs longer thaws and freezes again. Ends with auth-svc
/// thawed and answering again.
async fn abandoned_calls_while_frozen(
    auth: &Service,
    probe: &PostsServiceClient<Channel>,
    clients: &[PostsServiceClient<Channel>],
    cached: &str,
    round: usize,
    calls: usize,
) {
    const PARALLEL: usize = 384;
    const LONGEST_FREEZE: Duration = Duration::from_secs(5);
    let padding = "A".repeat(300);
    let started = Instant::now();
    let (mut done, mut freezes) = (0, 0);
    while done < calls {
        freeze_with_live_cache(auth, probe, cached).await;
        freezes += 1;
        let frozen = Instant::now();
        while done < calls && frozen.elapsed() < LONGEST_FREEZE {
            let tasks: Vec<_> = (done..(done + PARALLEL).min(calls))
                .map(|i| {
                    let client = clients[i % clients.len()].clone();
                    // Shaped like a JWT, distinct per call, so each call is a cache miss with its own flight.
                    let token = format!("eyJhbGciOiJFZERTQSJ9.{round}x{i:07}.{padding}");
                    tokio::spawn(async move {
                        list_within(&client, &token, Duration::from_millis(50), i % 2 == 0).await
                    })
                })
                .collect();
            done += tasks.len();
            for task in tasks {
                let result = task.await.unwrap();
                assert!(result.is_err(), "a call with a bogus token succeeded");
            }
        }
        // The revocation feed must still have been live (three missed heartbeats end it): otherwise the
        // calls bypassed the cache and this drill proved nothing.
        let still_cached = answered_from_cache(probe, cached).await;
        assert_eq!(
            still_cached,
            Ok(()),
            "the cache was no longer in use after {:?} frozen (the feed missed three heartbeats?)",
            frozen.elapsed()
        );
        signal(auth, "CONT");
        // auth-svc answers again (a never-seen token is refused by auth-svc itself, not UNAVAILABLE).
        wait_until_async(
            || async {
                list_within(probe, "never.seen.before", Duration::from_secs(2), true).await
                    == Err(Code::Unauthenticated)
            },
            "auth-svc to answer again",
        )
        .await;
    }
    println!(
        "round {round}: {calls} abandoned calls in {:?}, over {freezes} freeze(s)",
        started.elapsed()
    );
}

/// Abandoned validations leave nothing behind (issue 12): with auth-svc frozen, so no verdict ever comes,
/// tens of thousands of calls with distinct tokens are each given up by their caller, and posts-svc's
/// memory stays where it was. (Before the fix every such call left a pending cache entry behind for good:
/// RSS grew 23 to 25 MiB over the measured rounds here; since, it moves by about 3 MiB at most.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_validations_leave_no_memory_behind() {
    let _turn = HEAVY.lock().await;
    const WARM_UP_ROUNDS: usize = 3;
    const ROUNDS: usize = 3;
    const CALLS_PER_ROUND: usize = 12_000;
    // Room for allocator noise (up to 3.7 MiB seen on a fixed build while the other drills ran); leaking
    // 0.2 KiB per call exceeds it.
    const SLACK_KIB: u64 = 6 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let auth = start_auth(dir.path(), "127.0.0.1:0");
    // A long cache TTL, so the verdict that shows the cache in use outlasts the drill. One malloc arena, so
    // RSS follows live memory rather than how many per-thread arenas this machine's cores give the process.
    let posts = start_posts_with_env(dir.path(), auth.addr, "1s", "60s", &[("MALLOC_ARENA_MAX", "1")]);
    let cached = token(auth.addr).await;
    let clients: Vec<_> = (0..4)
        .map(|_| PostsServiceClient::new(channel(posts.addr)))
        .collect();
    // The cache is probed on a connection of its own: the abandoned calls' connections may be busy
    // enough (streams not yet reset on the server) for the per-connection limit to shed the probe.
    let probe = PostsServiceClient::new(channel(posts.addr));

    // The same load first brings posts-svc's heap to its working size for it (connection buffers, tasks,
    // allocator free lists): measured here, that takes two or three rounds, then RSS stays flat.
    for round in 0..WARM_UP_ROUNDS {
        abandoned_calls_while_frozen(&auth, &probe, &clients, &cached, round, CALLS_PER_ROUND).await;
        println!(
            "posts-svc RSS after warm-up round {round}: {} KiB",
            rss_kib(&posts)
        );
    }
    let before = rss_kib(&posts);
    // Several freezes rather than one long one: each stays well inside the feed's heartbeat deadline.
    for round in WARM_UP_ROUNDS..WARM_UP_ROUNDS + ROUNDS {
        abandoned_calls_while_frozen(&auth, &probe, &clients, &cached, round, CALLS_PER_ROUND).await;
        println!("posts-svc RSS after round {round}: {} KiB", rss_kib(&posts));
    }
    let calls = ROUNDS * CALLS_PER_ROUND;
    // Anything still pending would expire within --auth-timeout (1 s): allow that, polling.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut after = rss_kib(&posts);
    while after > before + SLACK_KIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = rss_kib(&posts);
    }
    println!("posts-svc RSS: {before} KiB before {calls} abandoned calls, {after} KiB after");
    assert!(
        after <= before + SLACK_KIB,
        "posts-svc kept {} KiB after {calls} abandoned calls",
        after.saturating_sub(before)
    );
}

/// Polls `condition` every few milliseconds until it holds, failing the test after 30 s. (A poll interval,
/// not a spin: the services under test are separate processes competing for the same two cores.)
async fn wait_until(condition: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(5));
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        poll.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_not_serving_not_ready_and_recovers_with_nothing_lost() {
    let Some(pg) = PrivatePostgres::create() else {
        eprintln!("skipped: PostgreSQL server binaries not installed (.ci/postgres installs them)");
        return;
    };
    let (client, connection) = watchword_db::postgres::tokio_postgres::connect(
        &pg.url("public"),
        watchword_db::postgres::tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("CREATE SCHEMA auth; CREATE SCHEMA posts")
        .await
        .unwrap();
    let common = ["--db-acquire-timeout", "1s", "--listen", "127.0.0.1:0"];
    let auth_args: Vec<String> = common
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            "--database-url".into(),
            pg.url("auth"),
            "--peer-rate".into(),
            "0".into(),
        ])
        .collect();
    let auth = spawn(&auth_binary(), &auth_args);
    let posts_args: Vec<String> = common
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            "--database-url".into(),
            pg.url("posts"),
            "--auth-url".into(),
            format!("http://{}", auth.addr),
            "--validate-cache-ttl".into(),
            "0".into(),
        ])
        .collect();
    let posts = spawn(Path::new(env!("CARGO_BIN_EXE_posts-svc")), &posts_args);
    let token = token(auth.addr).await;
    let client = PostsServiceClient::new(channel(posts.addr));
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let request = CreatePostRequest {
            title: format!("before {i}"),
            body: "body".into(),
            ..Default::default()
        };
        let post = client.clone().create_post(bearer(request, &token)).await.unwrap();
        acknowledged.push(post.into_inner().post.unwrap().id);
    }

    assert_eq!(
        watchword::admin::get(posts.admin, "/readyz").await.unwrap().0,
        200
    );
    assert_eq!(watchword::admin::get(auth.admin, "/readyz").await.unwrap().0, 200);
    pg.kill();
    for i in 0..10 {
        let started = Instant::now();
        let request = CreatePostRequest {
            title: format!("during {i}"),
            body: "body".into(),
            ..Default::default()
        };
        let create = client.clone().create_post(bearer(request, &token)).await;
        let list = client
            .clone()
            .list_posts(bearer(ListPostsRequest::default(), &token))
            .await;
        assert_eq!(create.map(drop).map_err(|s| s.code()), Err(Code::Unavailable));
        assert_eq!(list.map(drop).map_err(|s| s.code()), Err(Code::Unavailable));
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "took {:?}",
            started.elapsed()
        );
    }
    let health = |addr| async move {
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        tonic_health::pb::health_client::HealthClient::new(channel(addr))
            .check(request)
            .await
            .map(|r| r.into_inner().status)
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    // The admin server's readiness follows the gRPC health status; liveness does not.
    let http = |addr, path| async move {
        watchword::admin::get(addr, path)
            .await
            .map(|(status, _)| status)
            .ok()
    };
    wait_until_async(
        || async { health(posts.addr).await.ok() == Some(not_serving) },
        "posts NOT_SERVING",
    )
    .await;
    wait_until_async(
        || async { http(posts.admin, "/readyz").await == Some(503) },
        "posts /readyz 503",
    )
    .await;
    wait_until_async(
        || async { health(auth.addr).await.ok() == Some(not_serving) },
        "auth NOT_SERVING",
    )
    .await;
    wait_until_async(
        || async { http(auth.admin, "/readyz").await == Some(503) },
        "auth /readyz 503",
    )
    .await;
    assert_eq!(http(posts.admin, "/livez").await, Some(200));
    assert_eq!(http(auth.admin, "/livez").await, Some(200));

    pg.start();
    let recovered = Instant::now();
    wait_until_async(
        || async {
            client
                .clone()
                .list_posts(bearer(ListPostsRequest::default(), &token))
                .await
                .is_ok()
        },
        "calls to succeed again",
    )
    .await;
    println!("recovered {:?} after PostgreSQL came back", recovered.elapsed());
    wait_until_async(
        || async { health(posts.addr).await.ok() == Some(serving) },
        "posts SERVING",
    )
    .await;
    wait_until_async(
        || async { health(auth.addr).await.ok() == Some(serving) },
        "auth SERVING",
    )
    .await;
    for (name, admin) in [("posts", posts.admin), ("auth", auth.admin)] {
        wait_until_async(
            || async { http(admin, "/readyz").await == Some(200) },
            &format!("{name} /readyz 200 again"),
        )
        .await;
    }

    let request = ListPostsRequest {
        page_size: 100,
        ..Default::default()
    };
    let listed: Vec<String> = client
        .clone()
        .list_posts(bearer(request, &token))
        .await
        .unwrap()
        .into_inner()
        .posts
        .into_iter()
        .map(|p| p.id)
        .collect();
    for id in &acknowledged {
        assert_eq!(listed.iter().filter(|l| *l == id).count(), 1, "post {id}");
    }
    assert_eq!(
        listed.len(),
        acknowledged.len(),
        "nothing from the outage was half-written"
    );
}

/// Like `wait_until`, for a condition that has to make calls.
async fn wait_until_async<F, Fut>(condition: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(100));
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        poll.tick().await;
    }
}
