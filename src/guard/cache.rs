//! A validation cache for the guard: remote validation without a network hop per call, and without
//! giving up revocation.
//!
//! - Keyed by SHA-256 of the *whole* token, so a tampered token can never hit another token's entry.
//! - Entries live `ttl` at most, and never past the token's `exp`.
//! - Concurrent misses for one token share a single Validate call (single flight).
//! - Only successes are cached; `UNAVAILABLE` and friends never are.
//! - Used only while the revocation feed is live; every hit is checked against the denylist, and losing
//!   the feed voids every entry (see [`super::feed`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest as _, Sha256};
use tokio::sync::OnceCell;

use super::{GuardError, Identity, Validator, feed::RevocationFeed};

type Key = [u8; 32];
type Flight = Arc<OnceCell<Result<Identity, GuardError>>>;

enum Slot {
    Ready {
        identity: Identity,
        expires: Instant,
        epoch: u64,
    },
    Pending(Flight),
}

/// Wraps a validator (normally [`super::RemoteValidator`]) with the cache described above.
pub struct CachingValidator<V> {
    inner: V,
    revocations: Arc<RevocationFeed>,
    ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<Key, Slot>>,
}

impl<V> CachingValidator<V> {
    pub fn new(inner: V, revocations: Arc<RevocationFeed>, ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner,
            revocations,
            ttl,
            max_entries: max_entries.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh hit, or the flight to join (starting one if there is none).
    fn lookup(&self, key: Key) -> Result<Identity, Flight> {
        let epoch = self.revocations.epoch();
        let mut slots = self.slots();
        match slots.get(&key) {
            Some(Slot::Ready {
                identity,
                expires,
                epoch: cached_in,
            }) if *expires > Instant::now() && *cached_in == epoch => Ok(identity.clone()),
            Some(Slot::Pending(flight)) => Err(Arc::clone(flight)),
            _ => {
                let flight = Flight::default();
                slots.insert(key, Slot::Pending(Arc::clone(&flight)));
                Err(flight)
            }
        }
    }

    /// Records the outcome of `flight` for `key`: a success is cached if nothing has changed meanwhile.
    fn settle(&self, key: Key, flight: &Flight, result: &Result<Identity, GuardError>, epoch_before: u64) {
        let mut slots = self.slots();
        let ours = matches!(slots.get(&key), Some(Slot::Pending(f)) if Arc::ptr_eq(f, flight));
        if !ours {
            return;
        }
        let lifetime = match result {
            Ok(identity)
                if self.revocations.is_live()
                    && self.revocations.epoch() == epoch_before
                    && self.revocations.check(identity).is_ok() =>
            {
                let remaining = identity
                    .expire_time
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                self.ttl.min(remaining)
            }
            _ => Duration::ZERO,
        };
        slots.remove(&key);
        if lifetime.is_zero() {
            return;
        }
        if slots.len() >= self.max_entries {
            let now = Instant::now();
            slots.retain(|_, slot| {
                matches!(slot, Slot::Ready { expires, .. } if *expires > now)
                    || matches!(slot, Slot::Pending(_))
            });
            if slots.len() >= self.max_entries {
                // Full of live entries: start over rather than scan on every insert.
                slots.retain(|_, slot| matches!(slot, Slot::Pending(_)));
            }
        }
        if let Ok(identity) = result {
            slots.insert(
                key,
                Slot::Ready {
                    identity: identity.clone(),
                    expires: Instant::now() + lifetime,
                    epoch: epoch_before,
                },
            );
        }
    }
}

impl<V: Validator> Validator for CachingValidator<V> {
    async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
        if !self.revocations.is_live() {
            // Revocations may be passing us by: cached verdicts cannot be trusted, so ask every time.
            return self.inner.validate(token).await;
        }
        let key: Key = Sha256::digest(token.as_bytes()).into();
        let epoch_before = self.revocations.epoch();
        let flight = match self.lookup(key) {
            Ok(identity) => {
                self.revocations.check(&identity)?;
                return Ok(identity);
            }
            Err(flight) => flight,
        };
        let result = flight.get_or_init(|| self.inner.validate(token)).await.clone();
        self.settle(key, &flight, &result, epoch_before);
        let identity = result?;
        self.revocations.check(&identity)?;
        Ok(identity)
    }
}
