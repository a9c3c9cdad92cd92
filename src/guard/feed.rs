//! The guard's view of revocations, kept current by auth-svc's `WatchRevocations` stream.
//!
//! A cache of validations (or local verification) is only as good as its knowledge of revocations. So:
//! - while the stream is down (or has not finished its snapshot), the feed is not *live*, and callers must
//!   not trust anything they cached: they ask auth-svc instead;
//! - every loss of the stream bumps an *epoch*, which invalidates everything cached before it;
//! - revoked sessions and users are kept in a denylist until no token they cover can still be valid.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use super::{GuardError, Identity, OwnedTask};
use crate::{
    metrics::Metrics,
    observe::ObservedChannel,
    pb::auth::v1::{
        WatchRevocationsRequest, WatchRevocationsResponse, auth_service_client::AuthServiceClient,
        watch_revocations_response::Target,
    },
    reason::Reason,
};

/// auth-svc sends a heartbeat every 5 s; three missed means the stream is as good as gone.
const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Denylist size above which expired entries are swept on insert.
const SWEEP_ABOVE: usize = 10_000;

/// Shared revocation state: liveness, epoch and the denylist.
#[derive(Debug, Default)]
pub(crate) struct RevocationFeed {
    live: AtomicBool,
    epoch: AtomicU64,
    denied: Mutex<Denylist>,
    metrics: FeedMetrics,
}

/// `watchword_revocation_stream_up` and `watchword_revocation_events_total{kind}`.
#[derive(Debug)]
struct FeedMetrics {
    up: metrics::Gauge,
    session: metrics::Counter,
    user: metrics::Counter,
    key: metrics::Counter,
}

impl Default for FeedMetrics {
    fn default() -> Self {
        Self::new(&Metrics::disabled())
    }
}

impl FeedMetrics {
    fn new(metrics: &Metrics) -> Self {
        let events = |kind| {
            metrics.counter(
                "watchword_revocation_events_total",
                "Revocations received on the revocation stream, by what they name (session, user or key); \
                 a reconnection receives the snapshot again.",
                &[("kind", kind)],
            )
        };
        let up = metrics.gauge(
            "watchword_revocation_stream_up",
            "1 while the revocation stream is connected and caught up (cached and local verdicts are \
             trusted only then), else 0.",
            &[],
        );
        up.set(0.0);
        Self {
            up,
            session: events("session"),
            user: events("user"),
            key: events("key"),
        }
    }
}

#[derive(Debug, Default)]
struct Denylist {
    /// Session id → (reason, forget after).
    sessions: HashMap<String, (Reason, SystemTime)>,
    /// User id → (reason, tokens issued at or before this are revoked, forget after).
    users: HashMap<String, (Reason, SystemTime, SystemTime)>,
    /// Key id → (reason, forget after): every token the key signed.
    keys: HashMap<String, (Reason, SystemTime)>,
}

impl RevocationFeed {
    /// Whether the stream is connected and caught up, so cached verdicts may be trusted.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Changes every time the stream is lost: anything cached under an older epoch is void.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Refuses `identity` if a revocation covers it, with the reason auth-svc would give.
    pub(crate) fn check(&self, identity: &Identity) -> Result<(), GuardError> {
        let denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        let session = denied
            .sessions
            .get(&identity.session_id)
            .map(|(reason, _)| *reason);
        // A disabled account covers every token, whatever its `iat` (a login racing the disabling may carry
        // a later one); other user-wide revocations cover the tokens issued up to them.
        let user = denied
            .users
            .get(&identity.user_id)
            .filter(|(reason, revoked_at, _)| {
                *reason == Reason::UserDisabled || identity.issue_time <= *revoked_at
            })
            .map(|(reason, _, _)| *reason);
        let key = denied.keys.get(&identity.key_id).map(|(reason, _)| *reason);
        // A disabled user outranks an ended session, as in auth-svc.
        match user.or(key).or(session) {
            None => Ok(()),
            Some(reason) => Err(GuardError::Rejected {
                reason,
                message: match reason {
                    Reason::UserDisabled => "account disabled".into(),
                    _ => "token revoked: log in again".into(),
                },
            }),
        }
    }

    pub(crate) fn apply(&self, event: WatchRevocationsResponse) {
        let Some(target) = event.target else { return };
        let reason = Reason::parse(&event.reason).unwrap_or(Reason::TokenRevoked);
        let time = |t: Option<prost_types::Timestamp>| t.and_then(|t| SystemTime::try_from(t).ok());
        let now = SystemTime::now();
        let revoked_at = time(event.revoke_time).unwrap_or(now);
        // Without an expiry, remember for a day: longer than any access token lives.
        let until = time(event.expire_time).unwrap_or(now + Duration::from_secs(86_400));
        match &target {
            Target::SessionId(_) => self.metrics.session.increment(1),
            Target::UserId(_) => self.metrics.user.increment(1),
            Target::KeyId(_) => self.metrics.key.increment(1),
        }
        let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        match target {
            Target::SessionId(id) => {
                denied.sessions.insert(id, (reason, until));
            }
            Target::UserId(id) => {
                let entry = denied.users.entry(id).or_insert((reason, revoked_at, until));
                // Keep the latest revocation: it covers more tokens.
                if revoked_at >= entry.1 {
                    *entry = (reason, revoked_at, until);
                }
            }
            Target::KeyId(kid) => {
                denied.keys.insert(kid, (reason, until));
            }
        }
        if denied.sessions.len() + denied.users.len() + denied.keys.len() > SWEEP_ABOVE {
            denied.sessions.retain(|_, (_, until)| *until > now);
            denied.users.retain(|_, (_, _, until)| *until > now);
            denied.keys.retain(|_, (_, until)| *until > now);
        }
    }

    pub(crate) fn went_live(&self) {
        self.live.store(true, Ordering::Release);
        self.metrics.up.set(1.0);
    }

    pub(crate) fn lost(&self) {
        // Order matters: stop trusting caches first, then void what they hold.
        self.live.store(false, Ordering::Release);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.metrics.up.set(0.0);
    }
}

impl RevocationFeed {
    /// Starts following auth-svc's revocation stream, reconnecting with backoff, until the returned task
    /// is dropped.
    pub(crate) fn spawn(channel: ObservedChannel, metrics: &Metrics) -> (Arc<Self>, OwnedTask) {
        let feed = Arc::new(Self {
            metrics: FeedMetrics::new(metrics),
            ..Self::default()
        });
        let task = tokio::spawn(follow(AuthServiceClient::new(channel), Arc::clone(&feed)));
        (feed, OwnedTask::new(task))
    }
}

async fn follow(mut client: AuthServiceClient<ObservedChannel>, revocations: Arc<RevocationFeed>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if let Ok(response) = client.watch_revocations(WatchRevocationsRequest {}).await {
            let mut stream = response.into_inner();
            loop {
                match tokio::time::timeout(HEARTBEAT_DEADLINE, stream.message()).await {
                    Ok(Ok(Some(event))) if event.target.is_none() => {
                        // A heartbeat; the first one marks the end of the snapshot.
                        if !revocations.is_live() {
                            tracing::info!("revocation stream live");
                            revocations.went_live();
                            backoff = BACKOFF_MIN;
                        }
                    }
                    Ok(Ok(Some(event))) => revocations.apply(event),
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        if revocations.is_live() {
            tracing::warn!("revocation stream lost: cached validations dropped until it is back");
        }
        revocations.lost();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(issued: SystemTime) -> Identity {
        Identity {
            user_id: "u1".into(),
            username: "alice".into(),
            roles: vec![],
            token_id: "t1".into(),
            session_id: "s1".into(),
            issue_time: issued,
            expire_time: issued + Duration::from_secs(900),
            key_id: "k1".into(),
        }
    }

    fn event(target: Target, reason: Reason, revoked: SystemTime) -> WatchRevocationsResponse {
        WatchRevocationsResponse {
            target: Some(target),
            revoke_time: Some(revoked.into()),
            expire_time: Some((revoked + Duration::from_secs(930)).into()),
            reason: reason.as_str().into(),
        }
    }

    #[test]
    fn sessions_and_users_are_denied_with_the_reason_auth_svc_gives() {
        let now = SystemTime::now();
        let revocations = RevocationFeed::default();
        revocations.check(&identity(now)).unwrap();

        revocations.apply(event(Target::SessionId("s1".into()), Reason::TokenRevoked, now));
        let err = revocations.check(&identity(now)).unwrap_err();
        assert!(matches!(
            err,
            GuardError::Rejected {
                reason: Reason::TokenRevoked,
                ..
            }
        ));

        revocations.apply(event(Target::UserId("u1".into()), Reason::UserDisabled, now));
        let err = revocations.check(&identity(now)).unwrap_err();
        assert!(matches!(
            err,
            GuardError::Rejected {
                reason: Reason::UserDisabled,
                ..
            }
        ));
    }

    #[test]
    fn a_user_revocation_spares_tokens_issued_after_it() {
        let now = SystemTime::now();
        let revocations = RevocationFeed::default();
        revocations.apply(event(Target::UserId("u1".into()), Reason::TokenRevoked, now));
        let mut later = identity(now + Duration::from_secs(5));
        later.session_id = "s2".into();
        revocations.check(&later).unwrap();
        assert!(
            revocations
                .check(&identity(now - Duration::from_secs(5)))
                .is_err()
        );
    }

    #[test]
    fn a_revoked_key_denies_every_token_it_signed_and_no_other() {
        let now = SystemTime::now();
        let revocations = RevocationFeed::default();
        revocations.apply(event(Target::KeyId("k1".into()), Reason::TokenRevoked, now));
        // Issued before and after the revocation, in any session: signed by k1, so refused.
        for issued in [now - Duration::from_secs(60), now + Duration::from_secs(60)] {
            let mut token = identity(issued);
            token.session_id = format!("s-{issued:?}");
            let err = revocations.check(&token).unwrap_err();
            assert!(matches!(
                err,
                GuardError::Rejected {
                    reason: Reason::TokenRevoked,
                    ..
                }
            ));
        }
        let mut other_key = identity(now);
        other_key.key_id = "k2".into();
        revocations.check(&other_key).unwrap();
    }

    #[test]
    fn a_disabled_user_is_denied_whatever_the_tokens_iat() {
        let now = SystemTime::now();
        let revocations = RevocationFeed::default();
        revocations.apply(event(Target::UserId("u1".into()), Reason::UserDisabled, now));
        // A login racing the disabling can carry an `iat` after it; it is refused all the same.
        for issued in [now - Duration::from_secs(60), now, now + Duration::from_secs(60)] {
            let mut token = identity(issued);
            token.session_id = format!("s-{issued:?}");
            let err = revocations.check(&token).unwrap_err();
            assert!(matches!(
                err,
                GuardError::Rejected {
                    reason: Reason::UserDisabled,
                    ..
                }
            ));
        }
        let mut other_user = identity(now);
        other_user.user_id = "u2".into();
        revocations.check(&other_user).unwrap();
    }

    #[test]
    fn losing_the_stream_stops_trust_and_changes_the_epoch() {
        let revocations = RevocationFeed::default();
        assert!(!revocations.is_live());
        revocations.went_live();
        let epoch = revocations.epoch();
        revocations.lost();
        assert!(!revocations.is_live());
        assert_ne!(revocations.epoch(), epoch);
    }
}
