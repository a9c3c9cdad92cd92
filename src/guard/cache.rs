//! Remote mode with a cache: remote validation without a network hop per call, and without giving up
//! revocation.
//!
//! - Keyed by SHA-256 of the *whole* token, so a tampered token can never hit another token's entry.
//! - Verdicts live `ttl` at most, and never past the token's `exp`, in a bounded map (`quick_cache`) that
//!   evicts one entry at a time, favouring entries in use, when full.
//! - Concurrent misses for one token share a single Validate call (single flight). Waiters of a failed
//!   flight get that failure: an outage costs each caller one timeout, never a chain of them.
//! - Only successes are cached; `UNAVAILABLE` and friends never are.
//! - Used only while the revocation feed is live; every hit is checked against the denylist, and losing
//!   the feed voids every entry (see [`super::feed`]).
//!
//! # Cancellation
//!
//! A call can be dropped at any await (client reset, deadline, closed connection). A flight in progress is
//! an `Arc` held by the calls waiting on it; the map of flights holds only a `Weak`. When the last waiter
//! goes away the flight is dropped, and its `Drop` removes its map entry, so an abandoned validation leaves
//! nothing behind, at once. (The alternative, a spawned task per flight that always settles, would keep
//! the Validate call, and its entry, alive up to the timeout for nobody; dropping it instead also resets
//! the Validate stream, so auth-svc stops working on it too.) A flight that still has waiters ends at its
//! deadline, `timeout` after it started, with `UNAVAILABLE`; and there are at most `max_flights` of them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, SystemTime},
};

use opentelemetry::trace::TraceContextExt as _;
use sha2::{Digest as _, Sha256};
use tokio::{sync::OnceCell, time::Instant};

use super::{GuardError, Identity, Validator, feed::RevocationFeed};
use crate::metrics::Metrics;

type Key = [u8; 32];

/// Most validations in flight at once that callers can share. Each is held by live calls (the transport
/// limits bound those), so this is a second line: beyond it calls still get a correct verdict, each by its
/// own Validate call, and their successes are still cached.
pub(crate) const MAX_FLIGHTS: usize = 10_000;

/// Bounds of a [`CachingValidator`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheLimits {
    /// How long a successful validation is reused (never past the token's `exp`).
    pub(crate) ttl: Duration,
    /// Most verdicts kept.
    pub(crate) max_entries: usize,
    /// Most shared validations in flight; see [`MAX_FLIGHTS`].
    pub(crate) max_flights: usize,
    /// Longest a validation may take, whoever waits for it (the guard's auth-svc timeout).
    pub(crate) timeout: Duration,
}

/// A verdict auth-svc gave, reusable until `expires`, and only under the feed epoch it was given in.
#[derive(Clone)]
struct Verdict {
    identity: Identity,
    expires: Instant,
    epoch: u64,
}

/// Wraps a validator (normally [`super::RemoteValidator`]) with the cache described above.
pub(crate) struct CachingValidator<V> {
    inner: V,
    feed: Arc<RevocationFeed>,
    limits: CacheLimits,
    verdicts: Arc<quick_cache::sync::Cache<Key, Verdict>>,
    flights: Arc<Flights>,
    requests: Requests,
}

/// `watchword_validation_cache_requests_total{result}`.
struct Requests {
    /// A verdict reused.
    hit: metrics::Counter,
    /// Asked auth-svc (including every call while the revocation feed is down).
    miss: metrics::Counter,
    /// Waited for another call's question to auth-svc about the same token.
    shared: metrics::Counter,
}

impl Requests {
    fn new(metrics: &Metrics) -> Self {
        let result = |result| {
            metrics.counter(
                "watchword_validation_cache_requests_total",
                "Validations through the guard's cache: hit (a cached verdict), miss (auth-svc asked; every \
                 call while the revocation stream is down), shared (waited for another call's question).",
                &[("result", result)],
            )
        };
        Self {
            hit: result("hit"),
            miss: result("miss"),
            shared: result("shared"),
        }
    }

    /// Counts `result` and marks it on the guard's span (the current one, if traces are exported).
    fn count(&self, result: &'static str) {
        match result {
            "hit" => self.hit.increment(1),
            "shared" => self.shared.increment(1),
            _ => self.miss.increment(1),
        }
        if crate::telemetry::tracer().is_some() {
            opentelemetry::Context::map_current(|trace| {
                let attribute = opentelemetry::KeyValue::new("watchword.guard.cache", result);
                trace.span().set_attribute(attribute);
            });
        }
    }
}

/// The validations in flight, by token hash. Entries are `Weak`: the waiting calls own the flight.
struct Flights {
    by_key: Mutex<HashMap<Key, Weak<Flight>>>,
    max: usize,
}

/// One Validate call, shared by every call that waits for the same token meanwhile.
struct Flight {
    key: Key,
    /// The feed epoch when the flight started: its verdict may be cached only if the epoch is unchanged.
    epoch: u64,
    deadline: Instant,
    outcome: OnceCell<Result<Identity, GuardError>>,
    flights: Arc<Flights>,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Weak<Flight>>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The flight for `key` to join, starting one if there is none (or only one past its deadline);
    /// `None` when `max` flights are already under way.
    /// The flight comes with whether it was joined (true) or started (false).
    fn join(self: &Arc<Self>, key: Key, epoch: u64, timeout: Duration) -> Option<(Arc<Flight>, bool)> {
        let now = Instant::now();
        let mut by_key = self.lock();
        let current = by_key.get(&key).and_then(Weak::upgrade);
        let joined = match current {
            Some(flight) if flight.deadline > now => Some((flight, true)),
            _ if by_key.len() >= self.max && !by_key.contains_key(&key) => None,
            _ => {
                let flight = Arc::new(Flight {
                    key,
                    epoch,
                    deadline: now + timeout,
                    outcome: OnceCell::new(),
                    flights: Arc::clone(self),
                });
                by_key.insert(key, Arc::downgrade(&flight));
                Some((flight, false))
            }
        };
        // Drop the lock before any `Arc<Flight>` can be dropped: a flight's `Drop` takes it.
        drop(by_key);
        joined
    }

    /// Removes `flight`'s entry if it is still the current one; true for the one caller that did.
    fn finish(&self, flight: &Flight) -> bool {
        let mut by_key = self.lock();
        let current = by_key
            .get(&flight.key)
            .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), flight));
        if current {
            by_key.remove(&flight.key);
        }
        current
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Flight {
    /// The last waiter is gone (finished or cancelled): forget the flight unless a newer one took its place.
    fn drop(&mut self) {
        let mut by_key = self.flights.lock();
        if by_key.get(&self.key).is_some_and(|weak| weak.strong_count() == 0) {
            by_key.remove(&self.key);
        }
    }
}

impl<V> CachingValidator<V> {
    pub(crate) fn new(inner: V, feed: Arc<RevocationFeed>, limits: CacheLimits) -> Self {
        Self {
            inner,
            feed,
            verdicts: Arc::new(quick_cache::sync::Cache::new(limits.max_entries.max(1))),
            flights: Arc::new(Flights {
                by_key: Mutex::new(HashMap::new()),
                max: limits.max_flights.max(1),
            }),
            limits,
            requests: Requests::new(&Metrics::disabled()),
        }
    }

    /// Counts requests in `metrics`, and reports the verdicts held (`watchword_validation_cache_entries`)
    /// at each render.
    pub(crate) fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.requests = Requests::new(metrics);
        let entries = metrics.gauge(
            "watchword_validation_cache_entries",
            "Validation verdicts the guard's cache holds.",
            &[],
        );
        let verdicts = Arc::downgrade(&self.verdicts);
        metrics.on_render(move || {
            if let Some(verdicts) = verdicts.upgrade() {
                entries.set(verdicts.len() as f64);
            }
        });
        self
    }

    /// A verdict given under the current epoch and not yet expired. Stale ones are removed on sight.
    fn hit(&self, key: &Key, epoch: u64) -> Option<Identity> {
        let verdict = self.verdicts.get(key)?;
        let fresh = |v: &Verdict| v.expires > Instant::now() && v.epoch == epoch;
        if fresh(&verdict) {
            return Some(verdict.identity);
        }
        self.verdicts.remove_if(key, |v| !fresh(v));
        None
    }

    /// Caches `result` if it is a success given under `epoch` that is still good now.
    fn remember(&self, key: Key, result: &Result<Identity, GuardError>, epoch: u64) {
        let Ok(identity) = result else { return };
        if !self.feed.is_live() || self.feed.epoch() != epoch || self.feed.check(identity).is_err() {
            return;
        }
        let remaining = identity
            .expire_time
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let lifetime = self.limits.ttl.min(remaining);
        if lifetime.is_zero() {
            return;
        }
        let verdict = Verdict {
            identity: identity.clone(),
            expires: Instant::now() + lifetime,
            epoch,
        };
        self.verdicts.insert(key, verdict);
    }

    /// Verdicts and flights held: what abandoned or finished calls could leave behind.
    #[cfg(test)]
    fn entry_count(&self) -> usize {
        self.verdicts.len() + self.flights.len()
    }
}

impl<V: Validator> CachingValidator<V> {
    /// `inner`'s verdict, or `UNAVAILABLE` at `deadline`.
    async fn ask(&self, token: &str, deadline: Instant) -> Result<Identity, GuardError> {
        tokio::time::timeout_at(deadline, self.inner.validate(token))
            .await
            .unwrap_or_else(|_elapsed| {
                tracing::warn!(timeout = ?self.limits.timeout, "validation timed out");
                Err(GuardError::Unavailable)
            })
    }
}

impl<V: Validator> Validator for CachingValidator<V> {
    async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
        if !self.feed.is_live() {
            // Revocations may be passing us by: cached verdicts cannot be trusted, so ask every time.
            self.requests.count("miss");
            return self.inner.validate(token).await;
        }
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let epoch = self.feed.epoch();
        if let Some(identity) = self.hit(&key, epoch) {
            self.requests.count("hit");
            self.feed.check(&identity)?;
            return Ok(identity);
        }
        let result = match self.flights.join(key, epoch, self.limits.timeout) {
            Some((flight, joined)) => {
                self.requests.count(if joined { "shared" } else { "miss" });
                // If the call driving the flight is dropped, the next waiter carries on from here with
                // the same deadline.
                let result = flight
                    .outcome
                    .get_or_init(|| self.ask(token, flight.deadline))
                    .await
                    .clone();
                if self.flights.finish(&flight) {
                    self.remember(key, &result, flight.epoch);
                }
                result
            }
            None => {
                self.requests.count("miss");
                let result = self.ask(token, Instant::now() + self.limits.timeout).await;
                self.remember(key, &result, epoch);
                result
            }
        };
        let identity = result?;
        self.feed.check(&identity)?;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::Future,
        pin::Pin,
        sync::atomic::{AtomicUsize, Ordering},
        task::{Context, Poll, Waker},
    };

    use super::*;
    use crate::{
        pb::auth::v1::{WatchRevocationsResponse, watch_revocations_response::Target},
        reason::Reason,
    };

    /// Answers OK for tokens starting with "ok" at once and for those starting with "slow" after a second,
    /// fails those starting with "fail" after a second, and never answers any other; counts its calls.
    #[derive(Default)]
    struct Scripted {
        calls: AtomicUsize,
    }

    impl Validator for Scripted {
        async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if token.starts_with("ok") {
                Ok(identity(token))
            } else if token.starts_with("slow") {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(identity(token))
            } else if token.starts_with("fail") {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err(GuardError::Unavailable)
            } else {
                std::future::pending().await
            }
        }
    }

    fn identity(token: &str) -> Identity {
        let now = SystemTime::now();
        Identity {
            user_id: "u1".into(),
            username: "alice".into(),
            roles: vec!["user".into()],
            token_id: token.into(),
            session_id: "s1".into(),
            issue_time: now,
            expire_time: now + Duration::from_secs(900),
            key_id: "k1".into(),
        }
    }

    fn cache(max_entries: usize, max_flights: usize) -> Arc<CachingValidator<Scripted>> {
        let feed = Arc::new(RevocationFeed::default());
        feed.went_live();
        let limits = CacheLimits {
            ttl: Duration::from_secs(60),
            max_entries,
            max_flights,
            timeout: Duration::from_secs(2),
        };
        Arc::new(CachingValidator::new(Scripted::default(), feed, limits))
    }

    fn calls(cache: &CachingValidator<Scripted>) -> usize {
        cache.inner.calls.load(Ordering::SeqCst)
    }

    /// Starts `validate(token)` and polls it once (it is then waiting on its flight), returning it.
    fn started<'a>(
        cache: &'a CachingValidator<Scripted>,
        token: &'static str,
    ) -> Pin<Box<impl Future<Output = Result<Identity, GuardError>> + 'a>> {
        let mut call = Box::pin(cache.validate(token));
        let polled = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Pending));
        call
    }

    #[tokio::test]
    async fn abandoned_validations_leave_nothing_behind() {
        let cache = cache(100_000, MAX_FLIGHTS);
        for i in 0..1_000 {
            let token = format!("never-{i}");
            if i % 2 == 0 {
                // Polled once, then dropped: a call whose client reset the stream.
                let mut call = std::pin::pin!(cache.validate(&token));
                let polled = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                assert!(polled.is_pending());
            } else {
                // Two calls sharing one flight, both aborted: deadlines that ran out.
                let tasks = [(); 2].map(|()| {
                    let (cache, token) = (Arc::clone(&cache), token.clone());
                    tokio::spawn(async move { cache.validate(&token).await })
                });
                tokio::task::yield_now().await;
                for task in tasks {
                    task.abort();
                    assert!(task.await.unwrap_err().is_cancelled());
                }
            }
        }
        assert_eq!(cache.entry_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_validation_nobody_answers_ends_at_the_timeout_and_leaves_nothing() {
        let cache = cache(100, MAX_FLIGHTS);
        let started = Instant::now();
        let both = async { tokio::join!(cache.validate("never"), cache.validate("never")) };
        let (first, second) = tokio::time::timeout(Duration::from_secs(60), both)
            .await
            .expect("the validation ended by itself");
        assert!(matches!(first, Err(GuardError::Unavailable)));
        assert!(matches!(second, Err(GuardError::Unavailable)));
        assert_eq!(started.elapsed(), cache.limits.timeout);
        assert_eq!(calls(&cache), 1);
        assert_eq!(cache.entry_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_of_a_failed_validation_share_its_failure() {
        let cache = cache(100, MAX_FLIGHTS);
        let started = Instant::now();
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.validate("fail").await })
            })
            .collect();
        for caller in callers {
            assert!(matches!(caller.await.unwrap(), Err(GuardError::Unavailable)));
        }
        assert_eq!(calls(&cache), 1, "one Validate call for 50 concurrent callers");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1),
            "no caller waited twice"
        );
        // Failures are not cached: the next call asks again.
        assert!(cache.validate("fail").await.is_err());
        assert_eq!(calls(&cache), 2);
        assert_eq!(cache.entry_count(), 0);
    }

    #[tokio::test]
    async fn a_full_cache_evicts_one_entry_at_a_time_and_keeps_the_one_in_use() {
        const CAPACITY: usize = 100;
        let cache = cache(CAPACITY, MAX_FLIGHTS);
        cache.validate("ok-in-use").await.unwrap();
        for i in 0..3 * CAPACITY {
            cache.validate(&format!("ok-{i}")).await.unwrap();
            cache.validate("ok-in-use").await.unwrap();
            let held = cache.entry_count();
            assert!(
                i < CAPACITY || (CAPACITY * 8 / 10..=CAPACITY).contains(&held),
                "{held} verdicts held after {} distinct tokens",
                i + 2
            );
        }
        assert_eq!(
            calls(&cache),
            3 * CAPACITY + 1,
            "the token in use was validated once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flights_beyond_the_cap_validate_alone_and_are_still_answered() {
        let cache = cache(100, 3);
        let pending = [
            started(&cache, "never-1"),
            started(&cache, "never-2"),
            started(&cache, "never-3"),
        ];
        assert_eq!(cache.flights.len(), 3);
        // No flight to share: both calls ask, both get the right verdict, and no flight entry grows.
        let (first, second) = tokio::join!(cache.validate("slow-a"), cache.validate("slow-a"));
        assert_eq!(first.unwrap().token_id, "slow-a");
        assert_eq!(second.unwrap().token_id, "slow-a");
        assert_eq!(calls(&cache), 5);
        assert_eq!(cache.flights.len(), 3);
        // The verdict was still cached.
        cache.validate("slow-a").await.unwrap();
        assert_eq!(calls(&cache), 5);
        drop(pending);
        assert_eq!(cache.flights.len(), 0);
    }

    #[tokio::test]
    async fn concurrent_first_calls_share_one_validation_and_later_ones_hit() {
        let cache = cache(100, MAX_FLIGHTS);
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.validate("ok").await })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap().unwrap();
        }
        cache.validate("ok").await.unwrap();
        assert_eq!(calls(&cache), 1);
    }

    #[tokio::test]
    async fn a_lost_feed_voids_cached_verdicts_and_a_revocation_refuses_a_hit() {
        let cache = cache(100, MAX_FLIGHTS);
        cache.validate("ok").await.unwrap();
        cache.feed.lost();
        cache.feed.went_live();
        cache.validate("ok").await.unwrap();
        assert_eq!(calls(&cache), 2, "the verdict from the old epoch was not used");

        cache.feed.apply(WatchRevocationsResponse {
            target: Some(Target::SessionId("s1".into())),
            reason: Reason::TokenRevoked.as_str().into(),
            ..Default::default()
        });
        assert!(matches!(
            cache.validate("ok").await,
            Err(GuardError::Rejected { .. })
        ));
        assert_eq!(calls(&cache), 2, "refused from the denylist, without asking");
    }
}
