//! Password hashing with argon2id.
//!
//! Hashing costs ~35 ms of CPU and 19 MiB of memory by design. It runs on a few dedicated threads, one per
//! core: never on an async worker (that would stall every other call on it, Validate included), and not on
//! tokio's blocking pool either, whose many short-lived threads each left an allocator arena holding
//! argon2's buffers (auth-svc grew past 2 GiB under a login benchmark).

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, Version,
    password_hash::{self, SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::{error::AuthError, metrics::AuthMetrics};

/// OWASP's argon2id recommendation: 19 MiB of memory, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// Hashing requests allowed to wait for a worker, per core. Beyond this a request is refused at once
/// (RESOURCE_EXHAUSTED) instead of queueing without bound while its client times out. The permit lives with
/// the job, so this bounds the queue itself, whatever happens to the callers.
const QUEUE_PER_CORE: usize = 8;

#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// The hashing threads: one per core, so argon2 never takes more CPUs than there are.
    threads: HashingThreads,
    /// Admission: hashing work running or waiting.
    admitted: Arc<Semaphore>,
    /// Verified against when the username is unknown, so that case costs the same as a wrong password.
    dummy_hash: Arc<str>,
    /// Hashes computed so far (skipped jobs not counted).
    computed: Arc<AtomicU64>,
    metrics: AuthMetrics,
}

impl PasswordHasher {
    pub async fn new() -> Result<Self, AuthError> {
        let params = Params::new(MEMORY_KIB, PASSES, LANES, None)
            .map_err(|e| AuthError::Internal(format!("argon2 params: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut hasher = Self {
            argon2,
            threads: HashingThreads::start(cores),
            admitted: Arc::new(Semaphore::new(cores * (QUEUE_PER_CORE + 1))),
            dummy_hash: Arc::from(""),
            computed: Arc::default(),
            metrics: AuthMetrics::default(),
        };
        let admission = hasher.admit()?;
        hasher.dummy_hash = hasher
            .hash(
                admission,
                "not a real password, only here to spend time".to_owned(),
            )
            .await?
            .into();
        Ok(hasher)
    }

    /// Counts hashing work in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: AuthMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a fresh random salt.
    pub async fn hash(&self, admission: Admission, password: String) -> Result<String, AuthError> {
        let argon2 = self.argon2.clone();
        self.run(admission, move || {
            let salt = SaltString::generate(&mut OsRng);
            hash_phc(&argon2, password.as_bytes(), &salt)
                .map_err(|e| AuthError::Internal(format!("argon2 hash: {e}")))
        })
        .instrument(tracing::debug_span!("argon2_hash"))
        .await
    }

    /// Whether `password` matches `stored`. With `stored = None` (no such user) it does the same work
    /// against a dummy hash and returns `false`.
    pub async fn verify(
        &self,
        admission: Admission,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, AuthError> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        self.run(admission, move || {
            let matches = verify_phc(password.as_bytes(), &stored)
                .map_err(|e| AuthError::Internal(format!("stored hash: {e}")))?;
            Ok(matches && known)
        })
        .instrument(tracing::debug_span!("argon2_verify"))
        .await
    }
}

thread_local! {
    /// argon2's working memory (19 MiB), allocated once per hashing thread and reused for every hash, so
    /// memory stays flat however many logins come (allocating it per hash fragmented the heap).
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `argon2` of `password` and `salt` into `out`, in this thread's reusable memory.
fn argon2_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> argon2::Result<()> {
    BLOCKS.with_borrow_mut(|blocks| {
        blocks.resize(params.block_count(), argon2::Block::default());
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..])
    })
}

/// A PHC string for `password` with `salt`, as `PasswordHasher::hash_password` would make it.
fn hash_phc(argon2: &Argon2<'_>, password: &[u8], salt: &SaltString) -> password_hash::Result<String> {
    let params = argon2.params().clone();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf)?;
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    argon2_into(argon2, &params, password, salt_bytes, &mut out)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: password_hash::ParamsString::try_from(&params)?,
        salt: Some(salt.as_salt()),
        hash: Some(password_hash::Output::new(&out)?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `stored` (any argon2 variant and parameters it names).
fn verify_phc(password: &[u8], stored: &str) -> password_hash::Result<bool> {
    let parsed = PasswordHash::new(stored)?;
    let params = Params::try_from(&parsed)?;
    let argon2 = Argon2::new(
        Algorithm::try_from(parsed.algorithm)?,
        Version::try_from(parsed.version.unwrap_or(0x13))?,
        params.clone(),
    );
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(password_hash::Error::Password);
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let mut out = vec![0u8; expected.len()];
    argon2_into(&argon2, &params, password, salt_bytes, &mut out)?;
    // `Output`'s equality is constant-time.
    Ok(password_hash::Output::new(&out)? == expected)
}

/// Permission to do password work, taken when a Login or Register *starts* (before it touches storage),
/// so excess calls are refused at once instead of piling up on the database and hashing queues.
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl PasswordHasher {
    /// Admits one more call that will hash, or refuses if as many are running or waiting as the cores can
    /// clear promptly.
    pub fn admit(&self) -> Result<Admission, AuthError> {
        Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map(|permit| Admission { _permit: permit })
            .map_err(|_| AuthError::Overloaded)
    }

    /// Hashes computed so far: jobs whose caller had gone before they started are not.
    #[cfg(test)]
    fn computed(&self) -> u64 {
        self.computed.load(Ordering::Relaxed)
    }

    /// Runs `f` on a hashing thread. The admission permit goes with the job, so however the caller ends
    /// (a cancelled call drops this future), the job counts against the queue until it has run or been
    /// skipped, and a job whose caller has gone is skipped rather than hashed for nobody.
    async fn run<T: Send + 'static>(
        &self,
        admission: Admission,
        f: impl FnOnce() -> Result<T, AuthError> + Send + 'static,
    ) -> Result<T, AuthError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let computed = Arc::clone(&self.computed);
        let in_flight = InFlight::start(self.metrics.clone());
        let job: Job = Box::new(move || {
            let _admission = admission;
            let in_flight = in_flight;
            if done.is_closed() {
                return;
            }
            computed.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let outcome = f();
            in_flight
                .metrics
                .hash_seconds()
                .record(started.elapsed().as_secs_f64());
            let _ = done.send(outcome);
        });
        self.threads
            .jobs
            .send(job)
            .map_err(|_| AuthError::Internal("hashing threads gone".into()))?;
        result
            .await
            .map_err(|_| AuthError::Internal("hashing job dropped".into()))?
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One job counted in `watchword_password_hashes_in_flight` from submission until it has run, been skipped
/// or been dropped with the queue.
struct InFlight {
    metrics: AuthMetrics,
}

impl InFlight {
    fn start(metrics: AuthMetrics) -> Self {
        metrics.hashes_in_flight().increment(1.0);
        Self { metrics }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.hashes_in_flight().decrement(1.0);
    }
}

/// A fixed set of threads running hashing jobs from one queue; they exit when the last sender is dropped.
#[derive(Clone)]
struct HashingThreads {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl HashingThreads {
    fn start(count: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..count.max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // Hold the lock only to take a job, not while running it.
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a hashing thread");
            }
        }
        Self { jobs }
    }
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    /// Hashing into reused memory must give exactly what the argon2 crate gives, both ways.
    #[test]
    fn reused_memory_hashes_are_standard_phc_strings() {
        let argon2 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(MEMORY_KIB, PASSES, LANES, None).unwrap(),
        );
        let salt = SaltString::generate(&mut OsRng);
        let ours = hash_phc(&argon2, b"correct horse battery", &salt).unwrap();
        let theirs = argon2
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert_eq!(ours, theirs);
        assert!(
            argon2
                .verify_password(b"correct horse battery", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
        assert!(verify_phc(b"correct horse battery", &theirs).unwrap());
        assert!(!verify_phc(b"wrong horse battery", &theirs).unwrap());
        // Other stored parameters (e.g. from an older policy) still verify.
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        );
        let old = cheap.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(verify_phc(b"pw", &old).unwrap());
    }

    #[tokio::test]
    async fn hashes_verify_only_with_the_right_password_and_never_for_unknown_users() {
        let hasher = PasswordHasher::new().await.unwrap();
        let admit = || hasher.admit().unwrap();
        let hash = hasher
            .hash(admit(), "correct horse battery".into())
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(
            hasher
                .verify(admit(), "correct horse battery".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify(admit(), "wrong horse battery".into(), Some(hash))
                .await
                .unwrap()
        );
        let dummy = "not a real password, only here to spend time".to_owned();
        assert!(!hasher.verify(admit(), dummy, None).await.unwrap());
        // An unknown user costs what a known one does only if the dummy hash names the same parameters
        // (tests/api/abuse.rs measures the times; this pins the cause without a clock).
        let params = |phc: &str| phc.rsplitn(3, '$').nth(2).unwrap().to_owned();
        let real = hasher.hash(admit(), "any".into()).await.unwrap();
        assert_eq!(params(&hasher.dummy_hash), params(&real));
    }

    /// A job whose caller has gone is skipped, and its permit comes back only when the job has left the
    /// queue: cancelled logins cannot make argon2 work for nobody, nor queue more than admission allows.
    #[tokio::test]
    async fn jobs_of_callers_that_left_are_skipped_and_hold_their_permit_until_then() {
        let hasher = PasswordHasher::new().await.unwrap();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        // Every permit, once the start-up hash's job has let go of its own.
        let total = cores * (QUEUE_PER_CORE + 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hasher.admitted.available_permits() < total {
            assert!(
                std::time::Instant::now() < deadline,
                "the start-up hash never finished"
            );
            tokio::task::yield_now().await;
        }
        // Keep every hashing thread busy until released, so the jobs below wait in the queue.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(std::sync::Mutex::new(gate));
        let started = Arc::new(AtomicU64::new(0));
        let mut blockers = Vec::new();
        for _ in 0..cores {
            let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
            let admission = hasher.admit().unwrap();
            blockers.push(tokio::spawn({
                let hasher = hasher.clone();
                async move {
                    hasher
                        .run(admission, move || {
                            started.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.lock().unwrap().recv();
                            Ok(())
                        })
                        .await
                }
            }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while started.load(Ordering::SeqCst) < cores as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "hashing threads never started"
            );
            tokio::task::yield_now().await;
        }
        let before = hasher.computed();
        for _ in 0..5 {
            let admission = hasher.admit().unwrap();
            let mut call = Box::pin(hasher.verify(admission, "a password".into(), None));
            // One poll puts the job in the queue (a zero timeout polls the call once); then the caller leaves.
            let pending = tokio::time::timeout(std::time::Duration::ZERO, &mut call).await;
            assert!(pending.is_err(), "the hashing threads are all busy");
        }
        assert_eq!(
            hasher.admitted.available_permits(),
            total - cores - 5,
            "queued jobs keep their permits after their callers left"
        );
        for _ in 0..cores {
            release.send(()).unwrap();
        }
        for blocker in blockers {
            blocker.await.unwrap().unwrap();
        }
        // The skipped jobs leave the queue and give their permits back, without hashing.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hasher.admitted.available_permits() < total {
            assert!(std::time::Instant::now() < deadline, "permits not returned");
            tokio::task::yield_now().await;
        }
        assert_eq!(hasher.computed(), before, "the abandoned jobs hashed nothing");
    }
}
