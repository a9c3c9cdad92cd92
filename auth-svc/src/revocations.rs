//! Revocations as events: stored first, then published to every WatchRevocations stream so guards that
//! cache or verify locally honour them at once, and remembered by Validate's live-session memory.
//!
//! - [`RevocationHub::record`] makes "store, then publish" one unit that a cancelled call cannot split.
//! - Subscribers share one snapshot of the revocations that still matter, and their number is capped.
//! - With a shared database, [`relay`] reads the other replicas' revocations from the commit-ordered log.
//!   When it cannot read the log, this replica stops vouching: its streams end and new ones are refused,
//!   so the guards behind it drop what they cached and fail closed until it has caught up.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_stream::{
    Stream, StreamExt as _,
    wrappers::{BroadcastStream, IntervalStream, ReceiverStream},
};

use crate::{
    domain::{Revocation, Target},
    error::AuthError,
    store::Store,
};

/// Events buffered per subscriber. A subscriber that falls further behind is cut off and must reconnect
/// (and drop its cache), which is the safe way to miss events.
const BUFFER: usize = 1024;
/// How often a stream says "still here" when nothing happens.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often the relay reads the log, how long one read may take, and how long it may go without a
/// successful read before this replica stops vouching for what its streams carry.
const RELAY_EVERY: Duration = Duration::from_millis(100);
const RELAY_READ_TIMEOUT: Duration = Duration::from_millis(400);
const RELAY_STALE_AFTER: Duration = Duration::from_millis(500);
/// Most sessions remembered live (~150 bytes each, so ~7 MiB); past it the least recently used go.
const MAX_LIVE_SESSIONS: usize = 50_000;

/// How the hub is set up.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Most WatchRevocations streams at once (`--max-revocation-subscribers`).
    pub max_subscribers: usize,
    /// Whether Validate may remember live sessions: only when every revocation passes through this
    /// process as it is stored (one auth-svc per SQLite file; see [`LiveSessions`]).
    pub remember_live: bool,
    /// How long a revocation matters (a token lifetime plus clock leeway).
    pub window: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_subscribers: 1000,
            remember_live: false,
            window: Duration::from_secs(930),
        }
    }
}

/// A WatchRevocations stream, as the use case sees it.
pub type Events = Pin<Box<dyn Stream<Item = Result<Event, AuthError>> + Send>>;

/// One event of a WatchRevocations stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Revoked(Revocation),
    /// "Still here"; the first one marks the end of the snapshot.
    Heartbeat,
}

pub struct RevocationHub {
    sender: broadcast::Sender<Revocation>,
    recent: Mutex<Recent>,
    live: LiveSessions,
    subscribers: Arc<Semaphore>,
    /// `false` while the relay cannot read the log: streams end and new ones are refused.
    vouching: watch::Sender<bool>,
    window: Duration,
}

/// The revocations that still matter, and the snapshot built from them for new subscribers (shared by
/// all of them until the next revocation).
#[derive(Default)]
struct Recent {
    by_target: HashMap<Target, Revocation>,
    snapshot: Option<Arc<[Revocation]>>,
}

impl RevocationHub {
    pub fn new(config: HubConfig) -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
            recent: Mutex::default(),
            live: LiveSessions::new(config.remember_live),
            subscribers: Arc::new(Semaphore::new(config.max_subscribers)),
            vouching: watch::channel(true).0,
            window: config.window,
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fills the snapshot with what storage holds from before this process started.
    pub async fn load(&self, store: &Store) -> Result<(), AuthError> {
        let since = SystemTime::now() - self.window;
        let loaded = store.recent_revocations(since).await?;
        let mut recent = self.recent();
        for revocation in loaded {
            self.remember(&mut recent, revocation);
        }
        Ok(())
    }

    /// Adds to the revocations that still matter, dropping those that no longer do.
    fn remember(&self, recent: &mut Recent, revocation: Revocation) {
        let (now, window) = (SystemTime::now(), self.window);
        recent
            .by_target
            .retain(|_, r| now.duration_since(r.revoke_time).unwrap_or_default() < window);
        recent.by_target.insert(revocation.target.clone(), revocation);
        recent.snapshot = None;
    }

    /// Stores and publishes as one unit: `store` runs to completion in its own task, and what it returns
    /// as revoked is published before this returns, even if the caller has gone meanwhile.
    pub async fn record<T, E, F>(self: &Arc<Self>, store: F) -> Result<T, E>
    where
        F: Future<Output = Result<(T, Vec<Revocation>), E>> + Send + 'static,
        T: Send + 'static,
        E: From<AuthError> + Send + 'static,
    {
        let hub = Arc::clone(self);
        let unit = tokio::spawn(async move {
            let (value, revocations) = store.await?;
            for revocation in revocations {
                hub.publish(revocation);
            }
            Ok(value)
        });
        unit.await
            .map_err(|e| AuthError::Internal(format!("revocation task: {e}")))?
    }

    /// Tells Validate's memory and every subscriber about a stored revocation. Call only after storing it
    /// (through [`RevocationHub::record`], or from the relay).
    pub fn publish(&self, revocation: Revocation) {
        self.live.forget(&revocation.target);
        // Under the snapshot's lock: a subscriber gets each revocation from its snapshot or its stream.
        let mut recent = self.recent();
        self.remember(&mut recent, revocation.clone());
        let _ = self.sender.send(revocation);
    }

    /// The sessions Validate found live and nothing has revoked since.
    pub fn live_sessions(&self) -> &LiveSessions {
        &self.live
    }

    /// Whether this replica can vouch for what it streams; called by the relay.
    fn set_vouching(&self, vouching: bool) {
        self.vouching.send_if_modified(|current| {
            let changed = *current != vouching;
            *current = vouching;
            changed
        });
        if !vouching {
            // A revocation may be passing us by: Validate must not answer from memory either.
            self.live.forget_all();
        }
    }

    /// A WatchRevocations stream: the snapshot, a heartbeat, then live events and a heartbeat every
    /// [`HEARTBEAT`], until the client goes away, `stopping` turns true, or this replica stops vouching.
    pub fn subscribe(&self, stopping: watch::Receiver<bool>) -> Result<Events, AuthError> {
        if !*self.vouching.borrow() {
            return Err(AuthError::RevocationsUnavailable);
        }
        let permit = Arc::clone(&self.subscribers)
            .try_acquire_owned()
            .map_err(|_| AuthError::TooManySubscribers)?;
        let (live, snapshot) = {
            let mut guard = self.recent();
            let recent = &mut *guard;
            let live = self.sender.subscribe();
            let snapshot = recent
                .snapshot
                .get_or_insert_with(|| recent.by_target.values().cloned().collect())
                .clone();
            (live, snapshot)
        };
        let snapshot =
            tokio_stream::iter((0..snapshot.len()).map(move |i| Ok(Event::Revoked(snapshot[i].clone()))));
        // The first tick is immediate: it marks the end of the snapshot.
        let heartbeats = IntervalStream::new(tokio::time::interval(HEARTBEAT)).map(|_| Ok(Event::Heartbeat));
        let live = BroadcastStream::new(live).map(|event| match event {
            Ok(revocation) => Ok(Event::Revoked(revocation)),
            // Too slow to keep up: end the stream so the client drops its cache and reconnects.
            Err(_lagged) => Err(AuthError::RevocationsUnavailable),
        });
        let events = snapshot.chain(heartbeats.merge(live));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(forward(events, tx, stopping, self.vouching.subscribe(), permit));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// Forwards `events` to a subscriber until it goes away, the server stops, or the replica stops vouching
/// (then the stream ends with an error, so the guard drops its cache). The permit is held until then.
async fn forward(
    events: impl Stream<Item = Result<Event, AuthError>>,
    tx: tokio::sync::mpsc::Sender<Result<Event, AuthError>>,
    mut stopping: watch::Receiver<bool>,
    mut vouching: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    tokio::pin!(events);
    loop {
        tokio::select! {
            // The client went away (its stream was reset or its connection closed): free its place now,
            // not at the next heartbeat.
            () = tx.closed() => return,
            _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => return,
            _ = async { vouching.wait_for(|vouching| !*vouching).await.is_ok() } => {
                let _ = tx.send(Err(AuthError::RevocationsUnavailable)).await;
                return;
            }
            event = events.next() => {
                let Some(event) = event else { return };
                let failed = event.is_err();
                if tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        }
    }
}

/// Reads the other replicas' revocations from the shared log (rows after the last id seen, in commit
/// order) and publishes them here, for as long as the task runs. `on_key_revoked` runs for each revoked
/// key before it is published, so this replica's Validate refuses the key's tokens too.
///
/// Polling rather than LISTEN/NOTIFY: no dedicated connection or reconnect logic, and it survives a
/// database restart by itself. A poll every 100 ms keeps end-to-end enforcement well under a second.
pub async fn relay<F, Fut>(store: Store, hub: Arc<RevocationHub>, mut last_id: i64, mut on_key_revoked: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut interval = tokio::time::interval(RELAY_EVERY);
    let mut last_read = Instant::now();
    let mut failures = 0u64;
    loop {
        interval.tick().await;
        match tokio::time::timeout(RELAY_READ_TIMEOUT, store.revocations_after(last_id)).await {
            Ok(Ok(rows)) => {
                for (id, revocation) in rows {
                    last_id = id;
                    if matches!(revocation.target, Target::Key(_)) {
                        on_key_revoked().await;
                    }
                    hub.publish(revocation);
                }
                last_read = Instant::now();
                if failures > 0 {
                    tracing::info!(failures, "reading the revocation log again");
                    failures = 0;
                }
                hub.set_vouching(true);
            }
            outcome => {
                failures += 1;
                // Once, and then now and then: a database outage must not flood the log.
                if failures == 1 || failures.is_multiple_of(100) {
                    match outcome {
                        Ok(Err(error)) => {
                            tracing::warn!(%error, failures, "reading the revocation log failed")
                        }
                        _ => tracing::warn!(failures, "reading the revocation log timed out"),
                    }
                }
            }
        }
        if last_read.elapsed() > RELAY_STALE_AFTER && *hub.vouching.borrow() {
            tracing::warn!("revocation log unreadable: ending revocation streams until it is read again");
            hub.set_vouching(false);
        }
    }
}

/// Sessions that Validate read from storage as live (not revoked, user enabled), so the next Validate for
/// the same session can skip the storage read.
///
/// Exact, not a TTL cache, because of two facts:
/// - session state only ever moves one way (a revoked session or a disabled user never comes back), and
///   every such move is stored first and then [`RevocationHub::publish`]ed, which forgets the session here;
/// - an epoch closes the race with a Validate that read storage just before a revocation committed: it may
///   remember what it read only if no revocation was published since it started reading.
///
/// It is enabled only when every revocation passes through this process's hub as it is stored, i.e. on
/// SQLite, which one auth-svc process owns. On a shared PostgreSQL database another replica's revocation
/// arrives here only with the relay's next read, so there every Validate reads storage.
pub struct LiveSessions {
    enabled: bool,
    /// Session id → the user it belongs to; bounded, least recently used out.
    sessions: quick_cache::sync::Cache<String, String>,
    /// Bumped by every revocation. Held while remembering and forgetting, so a remember cannot slip in
    /// between a forget's epoch bump and its removal.
    epoch: Mutex<u64>,
    /// The epoch, readable without the lock for lookups.
    current: AtomicU64,
}

/// What [`LiveSessions::lookup`] knows of a session.
pub enum Liveness {
    /// Storage showed it live and nothing has revoked it since.
    Live,
    /// Not known: read storage, and if it is live, [`LiveSessions::remember`] it with this epoch.
    Unknown(Epoch),
}

/// The revocation count when a lookup missed. Only [`LiveSessions::lookup`] makes one, so a storage read
/// can only be remembered against the epoch taken before it.
pub struct Epoch(u64);

impl LiveSessions {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            sessions: quick_cache::sync::Cache::new(if enabled { MAX_LIVE_SESSIONS } else { 1 }),
            epoch: Mutex::new(0),
            current: AtomicU64::new(0),
        }
    }

    fn epoch(&self) -> std::sync::MutexGuard<'_, u64> {
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `session_id` of `user_id` is known to be live.
    pub fn lookup(&self, session_id: &str, user_id: &str) -> Liveness {
        let epoch = self.current.load(Ordering::Acquire);
        let known = self.enabled && self.sessions.get(session_id).is_some_and(|u| u == user_id);
        if known {
            Liveness::Live
        } else {
            Liveness::Unknown(Epoch(epoch))
        }
    }

    /// Remembers a session storage showed live, unless a revocation was published after `epoch` was taken.
    pub fn remember(&self, session_id: &str, user_id: &str, Epoch(epoch): Epoch) {
        if !self.enabled {
            return;
        }
        let current = self.epoch();
        if *current == epoch {
            self.sessions.insert(session_id.to_owned(), user_id.to_owned());
        }
    }

    fn bump(&self) -> std::sync::MutexGuard<'_, u64> {
        let mut epoch = self.epoch();
        *epoch += 1;
        self.current.store(*epoch, Ordering::Release);
        epoch
    }

    fn forget(&self, target: &Target) {
        let _epoch = self.bump();
        match target {
            Target::Session(id) => {
                self.sessions.remove(id);
            }
            Target::User(user) => self.sessions.retain(|_, owner| owner != user),
            // A key's tokens are refused by the key set; the sessions themselves are still live.
            Target::Key(_) => {}
        }
    }

    fn forget_all(&self) {
        let _epoch = self.bump();
        self.sessions.clear();
    }
}

#[cfg(test)]
mod tests {
    use watchword::reason::Reason;

    use super::*;

    fn hub(remember_live: bool) -> Arc<RevocationHub> {
        Arc::new(RevocationHub::new(HubConfig {
            remember_live,
            max_subscribers: 2,
            ..HubConfig::default()
        }))
    }

    fn contains(live: &LiveSessions, session_id: &str, user_id: &str) -> bool {
        matches!(live.lookup(session_id, user_id), Liveness::Live)
    }

    /// The epoch a Validate would take now (a lookup that misses).
    fn epoch(live: &LiveSessions) -> Epoch {
        match live.lookup("", "") {
            Liveness::Unknown(epoch) => epoch,
            Liveness::Live => unreachable!("no session has an empty id"),
        }
    }

    fn revoked(target: Target) -> Revocation {
        Revocation::new(target, SystemTime::now(), Reason::TokenRevoked)
    }

    #[test]
    fn revocations_forget_live_sessions_and_void_reads_in_flight() {
        let hub = hub(true);
        let live = hub.live_sessions();
        live.remember("s1", "u1", epoch(live));
        live.remember("s2", "u1", epoch(live));
        live.remember("s3", "u2", epoch(live));
        assert!(contains(live, "s1", "u1"));
        assert!(
            !contains(live, "s1", "u2"),
            "a session is live only for its own user"
        );

        hub.publish(revoked(Target::Session("s1".into())));
        assert!(!contains(live, "s1", "u1"));
        assert!(contains(live, "s2", "u1"));

        hub.publish(revoked(Target::User("u1".into())));
        assert!(!contains(live, "s2", "u1"));
        assert!(contains(live, "s3", "u2"));

        // A Validate read storage (live), then a revocation was published before it remembered: it must not.
        let before = epoch(live);
        hub.publish(revoked(Target::Session("s4".into())));
        live.remember("s4", "u2", before);
        assert!(!contains(live, "s4", "u2"));

        // A replica that stops vouching forgets everything.
        hub.set_vouching(false);
        assert!(!contains(live, "s3", "u2"));
    }

    #[test]
    fn nothing_is_remembered_when_disabled() {
        let hub = hub(false);
        let live = hub.live_sessions();
        live.remember("s1", "u1", epoch(live));
        assert!(!contains(live, "s1", "u1"));
    }

    #[tokio::test]
    async fn subscribers_share_one_snapshot_are_capped_and_end_when_the_replica_stops_vouching() {
        let hub = hub(false);
        hub.publish(revoked(Target::Session("s1".into())));
        let (_stop_tx, stopping) = watch::channel(false);
        let mut first = hub.subscribe(stopping.clone()).unwrap();
        let mut second = hub.subscribe(stopping.clone()).unwrap();
        assert!(matches!(
            hub.subscribe(stopping.clone()),
            Err(AuthError::TooManySubscribers)
        ));
        for stream in [&mut first, &mut second] {
            assert!(
                matches!(stream.next().await, Some(Ok(Event::Revoked(r))) if r.target == Target::Session("s1".into()))
            );
            assert_eq!(stream.next().await.unwrap().unwrap(), Event::Heartbeat);
        }
        hub.publish(revoked(Target::Key("k1".into())));
        assert!(
            matches!(first.next().await, Some(Ok(Event::Revoked(r))) if r.target == Target::Key("k1".into()))
        );

        hub.set_vouching(false);
        assert!(matches!(
            first.next().await,
            Some(Err(AuthError::RevocationsUnavailable))
        ));
        assert!(first.next().await.is_none());
        drop((first, second));
        // Their permits are back once the forwarding tasks have ended; new streams wait for the log.
        assert!(matches!(
            hub.subscribe(stopping.clone()),
            Err(AuthError::RevocationsUnavailable)
        ));
        hub.set_vouching(true);
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.subscribers.available_permits() < 2 {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let mut again = hub.subscribe(stopping).unwrap();
        let mut snapshot = Vec::new();
        while let Some(Ok(Event::Revoked(r))) = again.next().await {
            snapshot.push(r.target);
        }
        snapshot.sort_by_key(|t| format!("{t:?}"));
        assert_eq!(snapshot, [Target::Key("k1".into()), Target::Session("s1".into())]);
    }

    /// Storing and publishing are one unit: a caller that goes away after the store has begun (a cancelled
    /// call) cannot leave a stored revocation unpublished.
    #[tokio::test]
    async fn a_revocation_is_published_even_when_its_caller_has_gone() {
        let hub = hub(true);
        let live = hub.live_sessions();
        live.remember("s1", "u1", epoch(live));
        let (commit, committed) = tokio::sync::oneshot::channel::<()>();
        let caller = tokio::spawn({
            let hub = Arc::clone(&hub);
            async move {
                hub.record(async move {
                    // The store's commit, still under way when the caller is cancelled.
                    let _ = committed.await;
                    Ok::<_, AuthError>(((), vec![revoked(Target::Session("s1".into()))]))
                })
                .await
            }
        });
        tokio::task::yield_now().await;
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert!(contains(live, "s1", "u1"), "not yet committed");
        commit.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while contains(live, "s1", "u1") {
            assert!(
                Instant::now() < deadline,
                "the stored revocation was never published"
            );
            tokio::task::yield_now().await;
        }
    }
}
