//! Revocations as events: published by the handlers that end sessions, fanned out to every
//! WatchRevocations stream, so caching or self-verifying services honour them at once.

use std::time::SystemTime;

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
}

impl RevocationHub {
    pub fn new() -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
        }
    }

    /// Tells every current subscriber. Nobody listening is fine: the store is the record.
    pub fn publish(&self, revocation: Revocation) {
        let _ = self.sender.send(revocation);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.sender.subscribe()
    }
}
