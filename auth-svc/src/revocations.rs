//! Revocations as events: published by the handlers that end sessions, fanned out to every
//! WatchRevocations stream, so caching or self-verifying services honour them at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use tokio::sync::broadcast;
use watchword::reason::Reason;

/// Events buffered per subscriber. A subscriber that falls further behind is cut off and must reconnect
/// (and drop its cache), which is the safe way to miss events.
const BUFFER: usize = 1024;

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every token of this session.
    Session(String),
    /// Every token of this user issued at or before the revocation.
    User(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub target: Target,
    pub revoke_time: SystemTime,
    /// The reason a verifier should give for an affected token.
    pub reason: Reason,
}

#[derive(Clone)]
pub struct RevocationHub {
    sender: broadcast::Sender<Revocation>,
    live: Arc<LiveSessions>,
}

impl RevocationHub {
    /// `remember_live`: whether Validate may remember sessions it found live (see [`LiveSessions`]).
    pub fn new(remember_live: bool) -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
            live: Arc::new(LiveSessions {
                enabled: remember_live,
                state: Mutex::default(),
            }),
        }
    }

    /// Records that a revocation has been stored: forgets the sessions it ends, then tells every current
    /// subscriber. Nobody listening is fine: the store is the record.
    pub fn publish(&self, revocation: Revocation) {
        self.live.forget(&revocation.target);
        let _ = self.sender.send(revocation);
    }

    /// The sessions Validate found live and nothing has revoked since.
    pub fn live_sessions(&self) -> &LiveSessions {
        &self.live
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.sender.subscribe()
    }
}

/// Most sessions remembered (~150 bytes each, so ~7 MiB); past it the memory starts over and Validate reads
/// storage again.
const MAX_LIVE_SESSIONS: usize = 50_000;

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
/// arrives here only with the relay's next poll, so there every Validate reads storage.
pub struct LiveSessions {
    enabled: bool,
    state: Mutex<LiveState>,
}

#[derive(Default)]
struct LiveState {
    /// Session id → the user it belongs to.
    sessions: HashMap<String, String>,
    /// Bumped by every revocation.
    epoch: u64,
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
    fn state(&self) -> std::sync::MutexGuard<'_, LiveState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `session_id` of `user_id` is known to be live.
    pub fn lookup(&self, session_id: &str, user_id: &str) -> Liveness {
        let state = self.state();
        let known = self.enabled && state.sessions.get(session_id).is_some_and(|u| u == user_id);
        if known {
            Liveness::Live
        } else {
            Liveness::Unknown(Epoch(state.epoch))
        }
    }

    /// Remembers a session storage showed live, unless a revocation was published after `epoch` was taken.
    pub fn remember(&self, session_id: &str, user_id: &str, Epoch(epoch): Epoch) {
        if !self.enabled {
            return;
        }
        let mut state = self.state();
        if state.epoch != epoch {
            return;
        }
        if state.sessions.len() >= MAX_LIVE_SESSIONS {
            state.sessions.clear();
        }
        state.sessions.insert(session_id.to_owned(), user_id.to_owned());
    }

    fn forget(&self, target: &Target) {
        let mut state = self.state();
        state.epoch += 1;
        match target {
            Target::Session(id) => {
                state.sessions.remove(id);
            }
            Target::User(user) => state.sessions.retain(|_, owner| owner != user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn revoke(hub: &RevocationHub, target: Target) {
        hub.publish(Revocation {
            target,
            revoke_time: SystemTime::now(),
            reason: watchword::reason::Reason::TokenRevoked,
        });
    }

    #[test]
    fn revocations_forget_live_sessions_and_void_reads_in_flight() {
        let hub = RevocationHub::new(true);
        let live = hub.live_sessions();
        live.remember("s1", "u1", epoch(live));
        live.remember("s2", "u1", epoch(live));
        live.remember("s3", "u2", epoch(live));
        assert!(contains(live, "s1", "u1"));
        assert!(
            !contains(live, "s1", "u2"),
            "a session is live only for its own user"
        );

        revoke(&hub, Target::Session("s1".into()));
        assert!(!contains(live, "s1", "u1"));
        assert!(contains(live, "s2", "u1"));

        revoke(&hub, Target::User("u1".into()));
        assert!(!contains(live, "s2", "u1"));
        assert!(contains(live, "s3", "u2"));

        // A Validate read storage (live), then a revocation was published before it remembered: it must not.
        let before = epoch(live);
        revoke(&hub, Target::Session("s4".into()));
        live.remember("s4", "u2", before);
        assert!(!contains(live, "s4", "u2"));
    }

    #[test]
    fn nothing_is_remembered_when_disabled() {
        let hub = RevocationHub::new(false);
        let live = hub.live_sessions();
        live.remember("s1", "u1", epoch(live));
        assert!(!contains(live, "s1", "u1"));
    }
}
