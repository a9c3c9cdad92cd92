//! Per-peer-address rate limiting for Login and Register: a token bucket per IP address, in memory.
//!
//! In memory on purpose: it is a first line against floods from one address, not an accounting system.
//! Behind a load balancer every peer is the balancer, so raise or disable it there (`--peer-rate 0`) and
//! rely on per-account lockout, which lives in storage and is shared by replicas.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Addresses tracked before idle buckets are swept, so a spray of source addresses cannot grow memory
/// without bound.
const MAX_TRACKED: usize = 10_000;

pub struct PeerLimiter {
    /// Tokens added per second; 0 disables the limiter.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl PeerLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self {
            rate: rate_per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `peer`, or says how long until one is available.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&peer) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(*b, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(peer).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = refill(*bucket, now, self.rate, self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }
}

fn refill(bucket: Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate_and_keeps_peers_apart() {
        let limiter = PeerLimiter::new(2.0, 3);
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(a, t0).unwrap();
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        limiter.check(b, t0).expect("another peer has its own bucket");
        limiter
            .check(a, t0 + Duration::from_millis(500))
            .expect("refilled");
        assert!(PeerLimiter::new(0.0, 1).check(a, t0).is_ok(), "rate 0 disables");
    }
}
