//! Local mode: check signatures with auth-svc's published keys (JWKS) instead of calling Validate, while
//! still honouring the revocation feed.
//!
//! Decisions and reasons match remote mode because the checks are the same code
//! ([`crate::token::Verifier`]) and revocations carry the reason auth-svc would give. When the revocation
//! feed is not live, or no key set has been fetched yet, it falls back to asking auth-svc, so it never
//! accepts a token it could not fully check.
//!
//! The key set is fetched at start and then every `refetch_interval` by a background task, and each
//! successful fetch *replaces* it: a key auth-svc no longer publishes (retired, or revoked as leaked)
//! stops verifying within one interval. A token naming a key not in the set prompts a fetch too (at most
//! one per interval), so a rotated-in key is trusted at once. A failed fetch keeps the last good set.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use tokio::time::{Instant, MissedTickBehavior};

use super::{GuardError, Identity, OwnedTask, RemoteValidator, Validator, feed::RevocationFeed};
use crate::{
    observe::ObservedChannel,
    pb::auth::v1::{GetJwksRequest, GetJwksResponse, auth_service_client::AuthServiceClient},
    token::{TokenError, Verifier},
};

/// Shortest period of the background refresh, so `refetch_interval` 0 ("fetch on every unknown kid")
/// does not make the periodic fetch a busy loop.
const MIN_REFRESH_PERIOD: Duration = Duration::from_secs(1);

/// Where the key set comes from: auth-svc's `GetJwks`, or a stand-in in tests.
pub(crate) trait KeySource: Send + Sync + 'static {
    /// The published key set, or why it could not be had.
    fn fetch(&self) -> impl Future<Output = Result<GetJwksResponse, String>> + Send;
}

/// auth-svc's `GetJwks`, each call bounded by the guard's timeout.
pub(crate) struct Jwks {
    client: AuthServiceClient<ObservedChannel>,
    timeout: Duration,
}

impl Jwks {
    pub(crate) fn new(channel: ObservedChannel, timeout: Duration) -> Self {
        Self {
            client: AuthServiceClient::new(channel),
            timeout,
        }
    }
}

impl KeySource for Jwks {
    async fn fetch(&self) -> Result<GetJwksResponse, String> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.get_jwks(GetJwksRequest {})).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("auth-svc answered {:?}", status.code())),
            Err(_elapsed) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// The keys local verification trusts, as of the last successful fetch.
struct KeySet<K> {
    source: K,
    verifier: RwLock<Option<Arc<Verifier>>>,
    /// Held for the length of a fetch: fetches never overlap, so an older answer cannot replace a newer one.
    fetching: tokio::sync::Mutex<()>,
    last_fetch: Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl<K: KeySource> KeySet<K> {
    fn current(&self) -> Option<Arc<Verifier>> {
        self.verifier
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Fetches now (after any fetch under way).
    async fn refresh(&self) {
        let _fetching = self.fetching.lock().await;
        self.fetch().await;
    }

    /// For a token whose key is not in `seen` (the set it was checked against): fetches, unless the set has
    /// changed meanwhile or the last fetch began less than `refetch_interval` ago.
    async fn refresh_for_unknown_key(&self, seen: Option<&Arc<Verifier>>) {
        let _fetching = self.fetching.lock().await;
        let changed = match (seen, self.current()) {
            (Some(seen), Some(current)) => !Arc::ptr_eq(seen, &current),
            (seen, current) => seen.is_some() != current.is_some(),
        };
        let recent = self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < self.refetch_interval);
        if !changed && !recent {
            self.fetch().await;
        }
    }

    /// Replaces the key set with a fresh fetch; keeps the last good one if the fetch fails.
    async fn fetch(&self) {
        *self.last_fetch.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let verifier = match self.source.fetch().await {
            Ok(response) => verifier_from(response),
            Err(error) => {
                tracing::warn!(%error, "fetching JWKS failed; keeping the previous key set");
                return;
            }
        };
        let Some(mut verifier) = verifier else {
            tracing::warn!("JWKS response unusable; keeping the previous key set");
            return;
        };
        // The tokens the old set verified stay verified if the new set trusts every key the old one did
        // (the usual refetch: nothing changed); a key that is gone takes its verdicts with it.
        if let Some(current) = self.current() {
            verifier.keep_verified_from(&current);
        }
        let keys = verifier.key_count();
        let previous = self
            .verifier
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(Arc::new(verifier));
        if previous.is_none_or(|previous| previous.key_count() != keys) {
            tracing::info!(keys, "fetched JWKS");
        }
    }
}

/// Refreshes `keys` now and then every `period` (at least [`MIN_REFRESH_PERIOD`]), for as long as it runs.
async fn refresh_periodically<K: KeySource>(keys: Arc<KeySet<K>>, period: Duration) {
    let mut ticks = tokio::time::interval(period.max(MIN_REFRESH_PERIOD));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        keys.refresh().await;
    }
}

/// A verifier for the keys and claims in a JWKS response; `None` if it names nothing we can use.
fn verifier_from(response: GetJwksResponse) -> Option<Verifier> {
    let lifetime = response
        .max_token_lifetime
        .and_then(|d| Duration::try_from(d).ok())?;
    let mut verifier = Verifier::new(&response.issuer, &response.audience, lifetime);
    for key in response.keys {
        let usable = key.kty == "OKP" && key.crv == "Ed25519" && key.alg == "EdDSA" && key.r#use == "sig";
        let x = URL_SAFE_NO_PAD
            .decode(&key.x)
            .ok()
            .and_then(|x| <[u8; 32]>::try_from(x).ok());
        match x {
            // The kid is recomputed from the key itself, never taken on trust.
            Some(x) if usable => verifier.insert_key(&x),
            _ => tracing::warn!(kid = %key.kid, "ignoring unusable JWK"),
        }
    }
    (verifier.key_count() > 0).then_some(verifier)
}

/// Verifies tokens with the published keys; asks `remote` whenever it cannot decide alone.
pub(crate) struct LocalValidator<R = RemoteValidator, K = Jwks> {
    remote: R,
    feed: Arc<RevocationFeed>,
    keys: Arc<KeySet<K>>,
    /// Held, not read: dropping the validator stops the refresh.
    _refresh: OwnedTask,
}

impl<R: Validator, K: KeySource> LocalValidator<R, K> {
    /// Starts fetching keys from `source` in the background, at once and then every `refetch_interval`.
    /// Until the first fetch succeeds, every token goes to `remote`. Must be called within a Tokio runtime.
    pub(crate) fn new(remote: R, feed: Arc<RevocationFeed>, source: K, refetch_interval: Duration) -> Self {
        let keys = Arc::new(KeySet {
            source,
            verifier: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(()),
            last_fetch: Mutex::new(None),
            refetch_interval,
        });
        let refresh = tokio::spawn(refresh_periodically(Arc::clone(&keys), refetch_interval));
        Self {
            remote,
            feed,
            keys,
            _refresh: OwnedTask::new(refresh),
        }
    }
}

impl<R, K> LocalValidator<R, K> {
    /// The background key refresh.
    #[cfg(test)]
    pub(super) fn refresh_task(&self) -> &OwnedTask {
        &self._refresh
    }
}

impl<R: Validator, K: KeySource> Validator for LocalValidator<R, K> {
    async fn validate(&self, token: &str) -> Result<Identity, GuardError> {
        if !self.feed.is_live() {
            return self.remote.validate(token).await;
        }
        let verify = |keys: &Option<Arc<Verifier>>| {
            keys.as_ref()
                .map(|keys| keys.verify(token, SystemTime::now()).map(Identity::from))
        };
        let keys = self.keys.current();
        let mut verdict = verify(&keys);
        if matches!(verdict, None | Some(Err(TokenError::UnknownKey))) {
            // A key we have not seen: perhaps a rotation. Refetch (rate limited) and try once more.
            self.keys.refresh_for_unknown_key(keys.as_ref()).await;
            verdict = verify(&self.keys.current());
        }
        let identity = match verdict {
            // Still no key for it (or none at all): let auth-svc decide rather than guess. Forged kids cost a
            // remote call, never a wrong answer.
            None | Some(Err(TokenError::UnknownKey)) => return self.remote.validate(token).await,
            Some(Ok(identity)) => identity,
            Some(Err(error)) => {
                return Err(GuardError::Rejected {
                    reason: error.reason(),
                    message: error.client_message().to_owned(),
                });
            }
        };
        self.feed.check(&identity)?;
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey as _};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;
    use crate::{
        pb::auth::v1::Jwk,
        token::{ACCESS_TOKEN_TYP, JwtClaims, jwk_thumbprint, unix_seconds},
    };

    const ISSUER: &str = "watchword-test";
    const AUDIENCE: &str = "watchword";
    const REFETCH: Duration = Duration::from_secs(10);

    /// A key pair of the test, from a fixed seed.
    struct Key(SigningKey);

    impl Key {
        fn new(seed: u8) -> Self {
            Self(SigningKey::from_bytes(&[seed; 32]))
        }

        fn jwk(&self) -> Jwk {
            let public = self.0.verifying_key().to_bytes();
            Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
                kid: jwk_thumbprint(&public),
                x: URL_SAFE_NO_PAD.encode(public),
            }
        }

        fn token(&self) -> String {
            let mut header = Header::new(Algorithm::EdDSA);
            header.typ = Some(ACCESS_TOKEN_TYP.into());
            header.kid = Some(jwk_thumbprint(&self.0.verifying_key().to_bytes()));
            let now = unix_seconds(SystemTime::now());
            let claims = JwtClaims {
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                sub: "u1".into(),
                exp: now + 900,
                nbf: now,
                iat: now,
                jti: "t1".into(),
                sid: "s1".into(),
                username: "alice".into(),
                roles: vec!["user".into()],
            };
            let der = self.0.to_pkcs8_der().unwrap();
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
        }
    }

    /// Publishes what the test says, counting fetches.
    struct FakeJwks {
        published: Mutex<Result<Vec<Jwk>, String>>,
        fetches: AtomicUsize,
    }

    impl FakeJwks {
        fn publish(&self, keys: Result<Vec<Jwk>, &str>) {
            *self.published.lock().unwrap() = keys.map_err(str::to_owned);
        }
    }

    impl KeySource for Arc<FakeJwks> {
        async fn fetch(&self) -> Result<GetJwksResponse, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let keys = self.published.lock().unwrap().clone()?;
            Ok(GetJwksResponse {
                keys,
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                max_token_lifetime: Some(Duration::from_secs(900).try_into().unwrap()),
                ..Default::default()
            })
        }
    }

    /// Stands in for auth-svc's Validate: counts the tokens local mode could not decide.
    #[derive(Default)]
    struct CountingRemote(AtomicUsize);

    impl Validator for Arc<CountingRemote> {
        async fn validate(&self, _token: &str) -> Result<Identity, GuardError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Err(GuardError::Unavailable)
        }
    }

    struct Fixture {
        jwks: Arc<FakeJwks>,
        remote: Arc<CountingRemote>,
        local: LocalValidator<Arc<CountingRemote>, Arc<FakeJwks>>,
    }

    impl Fixture {
        fn new(published: Vec<Jwk>) -> Self {
            Self::with_interval(published, REFETCH)
        }

        fn with_interval(published: Vec<Jwk>, refetch_interval: Duration) -> Self {
            let jwks = Arc::new(FakeJwks {
                published: Mutex::new(Ok(published)),
                fetches: AtomicUsize::new(0),
            });
            let remote = Arc::new(CountingRemote::default());
            let feed = Arc::new(RevocationFeed::default());
            feed.went_live();
            let local = LocalValidator::new(Arc::clone(&remote), feed, Arc::clone(&jwks), refetch_interval);
            Self { jwks, remote, local }
        }

        fn fetches(&self) -> usize {
            self.jwks.fetches.load(Ordering::SeqCst)
        }

        fn remote_calls(&self) -> usize {
            self.remote.0.load(Ordering::SeqCst)
        }

        /// Waits (in paused time: no real waiting) for fetch number `n`, returning how long it took.
        async fn fetch_number(&self, n: usize) -> Duration {
            let started = Instant::now();
            for _ in 0..1_000 {
                if self.fetches() >= n {
                    return started.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("fetch {n} never happened");
        }

        /// Validates `token`, telling whether it was decided locally.
        async fn decided_locally(&self, token: &str) -> bool {
            let before = self.remote_calls();
            let verdict = self.local.validate(token).await;
            let local = self.remote_calls() == before;
            assert_eq!(local, verdict.is_ok(), "{verdict:?}");
            local
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_no_longer_published_stops_verifying_within_one_interval() {
        let (old, new) = (Key::new(1), Key::new(2));
        let f = Fixture::new(vec![old.jwk(), new.jwk()]);
        f.fetch_number(1).await;
        assert!(f.decided_locally(&old.token()).await);
        assert!(f.decided_locally(&new.token()).await);

        f.jwks.publish(Ok(vec![new.jwk()]));
        let took = f.fetch_number(2).await;
        assert!(took <= REFETCH, "the periodic fetch came after {took:?}");
        assert!(
            !f.decided_locally(&old.token()).await,
            "a key auth-svc stopped publishing still verified"
        );
        assert!(f.decided_locally(&new.token()).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_keeps_the_last_good_key_set() {
        let key = Key::new(1);
        let f = Fixture::new(vec![key.jwk()]);
        f.fetch_number(1).await;
        f.jwks.publish(Err("auth-svc unreachable"));
        f.fetch_number(2).await;
        assert!(f.decided_locally(&key.token()).await);
        f.jwks.publish(Ok(vec![]));
        f.fetch_number(3).await;
        assert!(f.decided_locally(&key.token()).await, "an empty set is no set");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_key_prompts_a_fetch_at_most_once_per_interval() {
        let (old, new, forged) = (Key::new(1), Key::new(2), Key::new(3));
        let f = Fixture::with_interval(vec![old.jwk()], Duration::ZERO);
        f.fetch_number(1).await;
        // Rotated in after the fetch: the first token naming it is fetched for, at once.
        f.jwks.publish(Ok(vec![old.jwk(), new.jwk()]));
        assert!(f.decided_locally(&new.token()).await);
        assert_eq!(f.fetches(), 2);

        // Tokens naming a key nobody publishes go to auth-svc, without a fetch each.
        let f = Fixture::new(vec![old.jwk()]);
        f.fetch_number(1).await;
        tokio::time::advance(REFETCH / 2).await;
        for _ in 0..10 {
            assert!(!f.decided_locally(&forged.token()).await);
        }
        assert_eq!(f.fetches(), 1);
    }

    /// Local mode verifies a signature once per token, not once per call: the tokens a key set verified
    /// stay remembered across refetches of the same keys, and go with a key that stops being published.
    #[tokio::test(start_paused = true)]
    async fn verified_tokens_are_remembered_across_refetches_until_their_key_goes() {
        let (old, new) = (Key::new(1), Key::new(2));
        let f = Fixture::new(vec![old.jwk(), new.jwk()]);
        f.fetch_number(1).await;
        let remembered = || f.local.keys.current().map_or(0, |keys| keys.remembered());
        assert!(f.decided_locally(&old.token()).await);
        assert!(f.decided_locally(&new.token()).await);
        assert_eq!(remembered(), 2);
        f.fetch_number(2).await;
        assert_eq!(
            remembered(),
            2,
            "a refetch of the same keys keeps what was verified"
        );
        f.jwks.publish(Ok(vec![new.jwk()]));
        f.fetch_number(3).await;
        assert_eq!(remembered(), 0, "a key that is gone takes its verdicts with it");
        assert!(!f.decided_locally(&old.token()).await);
    }
}
