//! auth-svc's own metrics: login outcomes, password hashing and revoked sessions. Handles are registered
//! once here (every label value from a fixed list), so counting is an atomic add.

use std::{collections::HashMap, sync::Arc};

use watchword::metrics::{Counter, Gauge, Histogram, Metrics};

use crate::error::AuthError;

/// The `outcome` label values of `watchword_logins_total`.
pub const LOGIN_OUTCOMES: [&str; 5] = [
    "ok",
    "invalid_credentials",
    "locked",
    "rate_limited",
    "overloaded",
];

/// The `cause` label values of `watchword_sessions_revoked_total`.
pub const REVOCATION_CAUSES: [&str; 5] = [
    "logout",
    "refresh_reuse",
    "role_removed",
    "user_disabled",
    "key_revoked",
];

#[derive(Clone)]
pub struct AuthMetrics(Arc<Inner>);

struct Inner {
    logins: HashMap<&'static str, Counter>,
    revoked: HashMap<&'static str, Counter>,
    hashes_in_flight: Gauge,
    hash_seconds: Histogram,
}

impl AuthMetrics {
    pub fn new(metrics: &Metrics) -> Self {
        let logins = LOGIN_OUTCOMES
            .into_iter()
            .map(|outcome| {
                let counter = metrics.counter(
                    "watchword_logins_total",
                    "Login calls by outcome: ok, invalid_credentials (unknown user, wrong password or disabled \
                     account), locked, rate_limited, overloaded. Malformed requests and storage failures are \
                     counted only in grpc_server_handled_total.",
                    &[("outcome", outcome)],
                );
                (outcome, counter)
            })
            .collect();
        let revoked = REVOCATION_CAUSES
            .into_iter()
            .map(|cause| {
                let counter = metrics.counter(
                    "watchword_sessions_revoked_total",
                    "Revocations this replica stored, by cause: logout, refresh_reuse (a rotated refresh token \
                     presented again), role_removed (one per session ended), user_disabled (one per user: all \
                     of its sessions), key_revoked (one per key: every token it signed).",
                    &[("cause", cause)],
                );
                (cause, counter)
            })
            .collect();
        let hashes_in_flight = metrics.gauge(
            "watchword_password_hashes_in_flight",
            "argon2id hashes and verifications queued for or running on the hashing threads.",
            &[],
        );
        let hash_seconds = metrics.histogram(
            "watchword_password_hash_seconds",
            "Time one argon2id hash or verification took on a hashing thread.",
            &[],
        );
        Self(Arc::new(Inner {
            logins,
            revoked,
            hashes_in_flight,
            hash_seconds,
        }))
    }

    /// Counts a Login's outcome, if it is one of [`LOGIN_OUTCOMES`].
    pub fn login<T>(&self, result: &Result<T, AuthError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(AuthError::BadCredentials) => "invalid_credentials",
            Err(AuthError::AccountLocked { .. }) => "locked",
            Err(AuthError::RateLimited { .. }) => "rate_limited",
            Err(AuthError::Overloaded) => "overloaded",
            Err(_) => return,
        };
        self.0.logins[outcome].increment(1);
    }

    /// Counts `count` revocations for `cause`, one of [`REVOCATION_CAUSES`].
    pub fn revoked(&self, cause: &'static str, count: usize) {
        if let Some(counter) = self.0.revoked.get(cause) {
            counter.increment(count as u64);
        }
    }

    pub fn hashes_in_flight(&self) -> &Gauge {
        &self.0.hashes_in_flight
    }

    pub fn hash_seconds(&self) -> &Histogram {
        &self.0.hash_seconds
    }
}

impl Default for AuthMetrics {
    fn default() -> Self {
        Self::new(&Metrics::disabled())
    }
}
