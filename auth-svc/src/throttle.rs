//! Per-client rate limiting for Login and Register: a token bucket per client network, in memory. (The same
//! buckets, keyed by the key, limit ExchangeApiKey per API key.)
//!
//! In memory on purpose: it is a first line against floods from one place, not an accounting system; the
//! per-account lockout (in storage, shared by replicas) is the line that matters for guessing.
//! - A client is its IPv4 address, or its IPv6 /64: a single host usually holds a whole /64, so counting
//!   IPv6 addresses one by one would give it unlimited buckets.
//! - Behind a load balancer every TCP peer is the balancer. `--trusted-proxies` names the balancers whose
//!   `x-forwarded-for` may be believed; a peer outside those ranges is the client, whatever it claims.
//! - At most [`MAX_TRACKED`] clients are tracked; past that the least recently seen are forgotten one by
//!   one, so a spray of source addresses cannot grow memory.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use quick_cache::sync::{Cache, EntryAction, EntryResult};

/// Clients tracked at once.
const MAX_TRACKED: usize = 10_000;

/// Who may set the client address of a call.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(ranges: Vec<IpNet>) -> Self {
        Self(ranges)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client of a call from TCP peer `peer` carrying the `x-forwarded-for` values `forwarded` (in
    /// order). Hops are read from the right (the nearest first); trusted proxies are skipped, and the first
    /// address that is not one is the client. A hop that does not parse ends the walk at the last trusted
    /// address, so no client can choose its own bucket.
    pub fn client(&self, peer: IpAddr, forwarded: &[&str]) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = forwarded.iter().rev().flat_map(|value| value.rsplit(','));
        for hop in hops {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.contains(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 clients they map.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// The bucket a client draws from: its IPv4 address, or its IPv6 /64.
fn bucket_key(client: IpAddr) -> IpAddr {
    match canonical(client) {
        IpAddr::V6(v6) => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(network))
        }
        v4 => v4,
    }
}

/// Token buckets per key (a client network, an API key), at most [`MAX_TRACKED`] of them.
pub struct RateLimiter<K> {
    /// Tokens added per second; 0 disables the limiter.
    rate: f64,
    burst: f64,
    buckets: Cache<K, Bucket>,
}

/// The per-client limit of Login and Register.
pub type PeerLimiter = RateLimiter<IpAddr>;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// Refills for the time since it was last used, then takes a token if there is one.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

impl PeerLimiter {
    /// Takes one token for `client`, or says how long until one is available.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        self.take(bucket_key(client), now)
    }
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        Self {
            rate: rate_per_second,
            burst: f64::from(burst.max(1)),
            buckets: Cache::new(MAX_TRACKED),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is available.
    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let (rate, burst) = (self.rate, self.burst);
        match self.buckets.entry(&key, None, |_, bucket| {
            EntryAction::Retain(bucket.take(now, rate, burst))
        }) {
            EntryResult::Retained(taken) => taken,
            EntryResult::Vacant(guard) => {
                let mut bucket = Bucket {
                    tokens: burst,
                    updated: now,
                };
                let taken = bucket.take(now, rate, burst);
                let _ = guard.insert(bucket);
                taken
            }
            // Not reachable with these actions and no timeout; never refuse a client because of it.
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allows_a_burst_then_the_rate_and_keeps_clients_apart() {
        let limiter = PeerLimiter::new(2.0, 3);
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        let t0 = Instant::now();
        for _ in 0..3 {
            limiter.check(a, t0).unwrap();
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        limiter.check(b, t0).expect("another client has its own bucket");
        limiter
            .check(a, t0 + Duration::from_millis(500))
            .expect("refilled");
        assert!(PeerLimiter::new(0.0, 1).check(a, t0).is_ok(), "rate 0 disables");
    }

    #[test]
    fn an_ipv6_64_is_one_client() {
        let limiter = PeerLimiter::new(1.0, 2);
        let t0 = Instant::now();
        limiter.check(ip("2001:db8:1:2::1"), t0).unwrap();
        limiter.check(ip("2001:db8:1:2:ffff::9"), t0).unwrap();
        assert!(
            limiter.check(ip("2001:db8:1:2:abcd::1"), t0).is_err(),
            "same /64, same bucket"
        );
        limiter.check(ip("2001:db8:1:3::1"), t0).expect("another /64");
        assert_eq!(bucket_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn the_tracked_clients_are_bounded_and_the_oldest_go_first() {
        let limiter = PeerLimiter::new(1.0, 1);
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 * 3) {
            let _ = limiter.check(IpAddr::V4(i.into()), t0);
        }
        assert!(limiter.buckets.len() <= MAX_TRACKED, "{}", limiter.buckets.len());
        assert!(
            limiter.buckets.len() > MAX_TRACKED / 2,
            "evicted one by one, not all at once"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]);
        let stranger = ip("203.0.113.9");
        // A peer that is not a trusted proxy is the client, whatever it says.
        assert_eq!(trusted.client(stranger, &["198.51.100.1"]), stranger);
        // Through one trusted balancer: the address it saw.
        assert_eq!(
            trusted.client(ip("10.1.1.1"), &["198.51.100.1"]),
            ip("198.51.100.1")
        );
        // A client-supplied header in front of it is ignored: the balancer appends what it saw.
        assert_eq!(
            trusted.client(ip("10.1.1.1"), &["6.6.6.6, 198.51.100.1", "10.2.2.2"]),
            ip("198.51.100.1")
        );
        // Garbage stops the walk at the last trusted hop; a missing header leaves the peer.
        assert_eq!(trusted.client(ip("10.1.1.1"), &["nonsense"]), ip("10.1.1.1"));
        assert_eq!(trusted.client(ip("10.1.1.1"), &[]), ip("10.1.1.1"));
        assert_eq!(trusted.client(ip("fd00::1"), &["2001:db8::7"]), ip("2001:db8::7"));
        // Nothing trusted: the peer, always.
        assert_eq!(
            TrustedProxies::default().client(ip("10.1.1.1"), &["1.2.3.4"]),
            ip("10.1.1.1")
        );
    }
}
