//! The load generator: N tasks over M connections calling one operation in a loop for a fixed window
//! after a warm-up, checking every response.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tonic::{
    Request,
    metadata::{AsciiMetadataValue, MetadataValue},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use watchword::pb::{
    auth::v1::{LoginRequest, ValidateRequest, auth_service_client::AuthServiceClient},
    posts::v1::{CreatePostRequest, ListPostsRequest, posts_service_client::PostsServiceClient},
};

use crate::servers::connect;

/// Password of every user the harness registers.
pub const PASSWORD: &str = "correct horse battery staple";
/// Longest a single call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What one call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// grpc.health.v1 Check for posts.v1.PostsService; must answer SERVING.
    Health,
    /// auth Validate of a pool token; must return claims.
    Validate,
    /// ListPosts without a bearer token (unguarded server); must return a full page.
    ListNoAuth,
    /// ListPosts with a pool token; must return a full page.
    List,
    /// CreatePost with a pool token; must return the post.
    Create,
    /// Login of a pool user with the right password; must return an access token.
    Login,
}

/// Shared inputs of the calls: the token pool and the users.
pub struct Pools {
    pub tokens: Vec<String>,
    pub bearers: Vec<AsciiMetadataValue>,
    pub users: Vec<String>,
    pub page_size: i32,
    next: AtomicUsize,
}

impl Pools {
    pub fn new(tokens: Vec<String>, users: Vec<String>, page_size: i32) -> Self {
        let bearers = tokens
            .iter()
            .map(|t| {
                let mut value = MetadataValue::try_from(format!("Bearer {t}")).expect("token is ASCII");
                // As a client should mark a credential: no HPACK table on the way may keep it. (h2 never
                // indexes `authorization` values anyway, so this costs nothing.)
                value.set_sensitive(true);
                value
            })
            .collect();
        Self {
            tokens,
            bearers,
            users,
            page_size,
            next: AtomicUsize::new(0),
        }
    }

    fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

/// The clients of one task, all on one connection.
struct Clients {
    health: HealthClient<Channel>,
    auth: AuthServiceClient<Channel>,
    posts: PostsServiceClient<Channel>,
}

impl Clients {
    fn new(channel: Channel) -> Self {
        Self {
            health: HealthClient::new(channel.clone()),
            auth: AuthServiceClient::new(channel.clone()),
            posts: PostsServiceClient::new(channel),
        }
    }
}

fn request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn bearer<T>(message: T, pools: &Pools, i: usize) -> Request<T> {
    let mut request = request(message);
    let value = pools.bearers[i % pools.bearers.len()].clone();
    request.metadata_mut().insert("authorization", value);
    request
}

fn status(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// Makes one call of `op` and checks its answer.
async fn call(op: Op, clients: &mut Clients, pools: &Pools, seq: u64) -> Result<(), String> {
    let i = pools.next();
    match op {
        Op::Health => {
            let r = clients
                .health
                .check(request(HealthCheckRequest {
                    service: "posts.v1.PostsService".to_owned(),
                }))
                .await
                .map_err(status)?;
            if r.get_ref().status() != ServingStatus::Serving {
                return Err(format!("health: {:?}", r.get_ref().status()));
            }
        }
        Op::Validate => {
            let token = pools.tokens[i % pools.tokens.len()].clone();
            let r = clients
                .auth
                .validate(request(ValidateRequest { token }))
                .await
                .map_err(status)?;
            if r.get_ref().claims.is_none() {
                return Err("validate: no claims".to_owned());
            }
        }
        Op::ListNoAuth | Op::List => {
            let message = ListPostsRequest {
                page_size: pools.page_size,
                ..Default::default()
            };
            let req = if op == Op::List {
                bearer(message, pools, i)
            } else {
                request(message)
            };
            let r = clients.posts.list_posts(req).await.map_err(status)?;
            let n = r.get_ref().posts.len();
            if n != pools.page_size as usize {
                return Err(format!("list: {n} posts, expected {}", pools.page_size));
            }
        }
        Op::Create => {
            let message = CreatePostRequest {
                title: format!("bench post {seq}"),
                body: "A post written by the benchmark harness; its size is about that of a short comment."
                    .to_owned(),
                ..Default::default()
            };
            let r = clients
                .posts
                .create_post(bearer(message, pools, i))
                .await
                .map_err(status)?;
            if r.get_ref().post.is_none() {
                return Err("create: no post".to_owned());
            }
        }
        Op::Login => {
            let username = pools.users[i % pools.users.len()].clone();
            let r = clients
                .auth
                .login(request(LoginRequest {
                    username,
                    password: PASSWORD.to_owned(),
                    ..Default::default()
                }))
                .await
                .map_err(status)?;
            if r.get_ref().access_token.is_empty() {
                return Err("login: empty token".to_owned());
            }
        }
    }
    Ok(())
}

/// A load: `concurrency` tasks calling `op` on `addr` over `connections` connections.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub op: Op,
    pub addr: SocketAddr,
    pub concurrency: usize,
    pub connections: usize,
}

/// What one load did inside the measured window (errors: anywhere, warm-up included).
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Latency of each call completed OK inside the window, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

/// Runs `load` from now: calls made during `warmup` are checked but not measured; calls completing in
/// `[start + warmup, start + warmup + window]` are measured; no call starts after the window.
pub async fn run(
    load: Load,
    pools: Arc<Pools>,
    start: Instant,
    warmup: Duration,
    window: Duration,
) -> Result<Tally, String> {
    let mut channels = Vec::with_capacity(load.connections);
    for _ in 0..load.connections.max(1) {
        channels.push(
            connect(load.addr)
                .await
                .map_err(|e| format!("connect {}: {e}", load.addr))?,
        );
    }
    let measure_from = start + warmup;
    let end = measure_from + window;
    let mut tasks = Vec::with_capacity(load.concurrency);
    for t in 0..load.concurrency {
        let mut clients = Clients::new(channels[t % channels.len()].clone());
        let pools = pools.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut seq = (t as u64) << 32;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                seq += 1;
                let result = call(load.op, &mut clients, &pools, seq).await;
                let t1 = Instant::now();
                match result {
                    Ok(()) => {
                        if t1 >= measure_from && t1 <= end {
                            tally.ok += 1;
                            let us = (t1 - t0).as_micros().min(u128::from(u32::MAX)) as u32;
                            tally.latencies_us.push(us);
                        }
                    }
                    Err(e) => {
                        tally.errors += 1;
                        if tally.error_samples.len() < 3 {
                            tally.error_samples.push(e);
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.map_err(|e| format!("load task panicked: {e}"))?;
        total.ok += tally.ok;
        total.errors += tally.errors;
        keep_error_samples(&mut total.error_samples, tally.error_samples);
        total.latencies_us.extend(tally.latencies_us);
    }
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// Distinct error messages kept per scenario, for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// Adds `more` to `kept`: distinct messages only, at most [`MAX_ERROR_SAMPLES`].
pub fn keep_error_samples(kept: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for e in more {
        if kept.len() < MAX_ERROR_SAMPLES && !kept.contains(&e) {
            kept.push(e);
        }
    }
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
pub fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Runs `f` for items `0..n` with at most `concurrency` in flight; the first error aborts.
pub async fn for_each_concurrent<F, Fut, T>(n: usize, concurrency: usize, f: F) -> Result<Vec<T>, String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, String>(out);
                }
                out.push((i, f(i).await?));
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for task in tasks {
        all.extend(task.await.map_err(|e| e.to_string())??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), Some(50));
        assert_eq!(quantile(&v, 0.99), Some(99));
        assert_eq!(quantile(&v, 1.0), Some(100));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
