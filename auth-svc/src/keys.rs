//! Signing keys and access tokens: Ed25519-signed JWTs (RFC 9068 profile), issued on login and checked by
//! Validate, and the key use cases (rotation, revocation, the JWKS).
//!
//! auth-svc keeps a key *set*: the newest key signs; keys it replaced keep verifying until every token they
//! signed has expired; a revoked key verifies nothing from the moment it is revoked. Verification itself is
//! [`watchword::token::Verifier`], the same code the guard's local mode runs.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use watchword::token::{ACCESS_TOKEN_TYP, CLOCK_LEEWAY, JwtClaims, Verifier, jwk_thumbprint, unix_seconds};
pub use watchword::token::{Claims, TokenError};

use crate::{
    admin::AdminCaller,
    audit::Origin,
    domain::User,
    error::AuthError,
    revocations::RevocationHub,
    sealing::{self, KeyEncryptionKey, Row},
    store::{NewKey, Store, StoredKey},
};
/// An Ed25519 key pair with its key id.
pub struct SigningKey {
    kid: String,
    pem: String,
    public: [u8; 32],
    encoding: EncodingKey,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an Ed25519 PKCS#8 private key in PEM form: {0}")]
    Parse(String),
    #[error("no randomness available: {0}")]
    Random(String),
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Self::from_dalek(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// A key from a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`), as written by
    /// `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Parse(e.to_string()))?;
        Self::from_dalek(key)
    }

    fn from_dalek(key: ed25519_dalek::SigningKey) -> Result<Self, KeyError> {
        let der = key.to_pkcs8_der().map_err(|e| KeyError::Parse(e.to_string()))?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Parse(e.to_string()))?
            .to_string();
        let public = key.verifying_key().to_bytes();
        Ok(Self {
            kid: jwk_thumbprint(&public),
            pem,
            public,
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
        })
    }

    /// RFC 7638 thumbprint of the public key: stable, and derived rather than assigned.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM, for persisting.
    pub fn to_pkcs8_pem(&self) -> &str {
        &self.pem
    }

    /// The raw Ed25519 public key (the JWK `x`).
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }
}

/// A freshly signed token and what it says.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

/// A public key as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub x: [u8; 32],
}

/// What a verifier needs: the keys, and the claims to check besides the signature.
#[derive(Debug, Clone)]
pub struct Jwks {
    /// The signing key first.
    pub keys: Vec<PublicKey>,
    pub issuer: String,
    pub audience: String,
    pub max_token_lifetime: Duration,
}

impl PublicKey {
    /// The key as an RFC 8037 JWK (`OKP`, `Ed25519`), as GetJwks and `/.well-known/jwks.json` publish it.
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.x),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

impl Jwks {
    /// The RFC 7517 JWK Set document: `{"keys": [...]}`, the signing key first.
    pub fn json_document(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.keys.iter().map(PublicKey::jwk).collect::<Vec<_>>() })
    }
}

/// What tokens say and how long they live.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    /// The signing key comes from this file and is never rotated or revoked over gRPC.
    pub signing_key_file: Option<PathBuf>,
    /// Private keys are stored sealed with this key (see `sealing.rs`); without one, unsealed.
    pub kek: Option<Arc<KeyEncryptionKey>>,
    /// How long a rotated-in key is published before it signs (`--key-publish-lead`).
    pub publish_lead: Duration,
}

/// How often the key set is reloaded from storage regardless (a rotation through another replica).
const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// Least time between reloads prompted by a token naming a key we do not hold.
const RELOAD_ON_UNKNOWN_KID_EVERY: Duration = Duration::from_secs(1);

struct KeySet {
    /// The key that signed last time the set was loaded.
    signing: Arc<SigningKey>,
    /// Keys rotated in with a publish lead, by the time each starts signing, earliest first: at its time
    /// each takes over from the one before, with no reload needed.
    upcoming: Vec<(SystemTime, Arc<SigningKey>)>,
    verifier: Verifier,
    /// Every published key: the signing key, the upcoming ones, then those that only verify.
    public: Vec<PublicKey>,
    /// Keys revoked within the last token lifetime: their tokens are refused as revoked, not as unknown.
    revoked: HashSet<String>,
}

impl KeySet {
    fn new(
        config: &KeyConfig,
        signing: Arc<SigningKey>,
        upcoming: Vec<(SystemTime, Arc<SigningKey>)>,
        verifying: Vec<[u8; 32]>,
        revoked: HashSet<String>,
    ) -> Self {
        let mut verifier = Verifier::new(&config.issuer, &config.audience, config.access_token_ttl);
        let mut public = Vec::new();
        let signers = std::iter::once(&signing).chain(upcoming.iter().map(|(_, key)| key));
        for x in signers.map(|key| key.public).chain(verifying) {
            let kid = jwk_thumbprint(&x);
            if !verifier.has_key(&kid) {
                verifier.insert_key(&x);
                public.push(PublicKey { kid, x });
            }
        }
        Self {
            signing,
            upcoming,
            verifier,
            public,
            revoked,
        }
    }

    /// The key that signs at `now`: the latest upcoming key whose time has come, else the signing key.
    fn signer(&self, now: SystemTime) -> &Arc<SigningKey> {
        self.upcoming
            .iter()
            .rev()
            .find(|(sign_time, _)| *sign_time <= now)
            .map_or(&self.signing, |(_, key)| key)
    }
}

/// The key set in use, kept in step with storage.
pub struct KeyRing {
    set: RwLock<KeySet>,
    config: KeyConfig,
    store: Store,
    last_unknown_kid_reload: Mutex<Option<Instant>>,
}

impl KeyRing {
    /// The key set as stored, with the signing key from `--signing-key-file` or, without one, the stored
    /// signing key (generated and stored on first start).
    pub async fn open(store: Store, config: KeyConfig) -> Result<Self, AuthError> {
        let signing = match &config.signing_key_file {
            Some(path) => {
                let pem = crate::settings::read_signing_key_file(path).map_err(|e| {
                    AuthError::Internal(format!("reading signing key file {}: {e}", path.display()))
                })?;
                SigningKey::from_pkcs8_pem(&pem)?
            }
            None => {
                let candidate = to_store(config.kek.as_deref(), &SigningKey::generate()?)?;
                let (kid, private_key) = store.signing_key_or_insert(candidate, SystemTime::now()).await?;
                from_store(config.kek.as_deref(), &kid, &private_key)?
            }
        };
        let set = KeySet::new(&config, Arc::new(signing), vec![], vec![], HashSet::new());
        let ring = Self {
            set: RwLock::new(set),
            config,
            store,
            last_unknown_kid_reload: Mutex::new(None),
        };
        // Older keys that still verify live tokens join the set (a no-op with --signing-key-file).
        ring.reload().await?;
        Ok(ring)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.set.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn ttl(&self) -> Duration {
        self.config.access_token_ttl
    }

    /// How long a revocation matters: after this, every token it covers has expired.
    pub fn revocation_window(&self) -> Duration {
        self.config.access_token_ttl + CLOCK_LEEWAY
    }

    pub fn signing_kid(&self) -> String {
        self.read().signer(SystemTime::now()).kid.clone()
    }

    /// How long a client may cache the published key set: half the publish lead, so that a verifier
    /// which refetches only when its copy expires learns a new key before it signs.
    pub fn cache_max_age(&self) -> Duration {
        Duration::from_secs((self.config.publish_lead / 2).as_secs().max(1))
    }

    /// The keys a verifier should trust now (the key signing now first, keys yet to sign included), and
    /// what else it must check.
    pub fn jwks(&self) -> Jwks {
        let set = self.read();
        let mut keys = set.public.clone();
        let signing = &set.signer(SystemTime::now()).kid;
        if let Some(at) = keys.iter().position(|key| &key.kid == signing) {
            let key = keys.remove(at);
            keys.insert(0, key);
        }
        Jwks {
            keys,
            issuer: self.config.issuer.clone(),
            audience: self.config.audience.clone(),
            max_token_lifetime: self.config.access_token_ttl,
        }
    }

    /// Signs an access token for `user` in `session_id`, valid from now for the configured lifetime.
    pub fn issue(&self, user: &User, session_id: &str, now: SystemTime) -> Result<IssuedToken, AuthError> {
        let iat = unix_seconds(now);
        let claims = JwtClaims {
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: user.id.clone(),
            exp: iat + self.config.access_token_ttl.as_secs(),
            nbf: iat,
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: session_id.to_owned(),
            username: user.username.clone(),
            roles: user.roles.clone(),
        };
        let signing = Arc::clone(self.read().signer(now));
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(signing.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signing.encoding)
            .map_err(|e| AuthError::Internal(format!("signing: {e}")))?;
        Ok(IssuedToken {
            token,
            claims: Claims::new(claims, signing.kid.clone()),
        })
    }

    /// Verifies signature, header and claims of `token` as of `now`. A token naming a key we do not hold
    /// prompts a reload (at most once a second: another replica may have rotated); one naming a revoked key
    /// is refused as revoked.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        match self.verify_with_current_keys(token, now) {
            Err(AuthError::Token(TokenError::UnknownKey)) if self.may_reload_for_unknown_kid() => {
                self.reload().await?;
                self.verify_with_current_keys(token, now)
            }
            other => other,
        }
    }

    fn verify_with_current_keys(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let set = self.read();
        match set.verifier.verify(token, now) {
            Err(TokenError::UnknownKey)
                if Verifier::kid_of(token).is_some_and(|kid| set.revoked.contains(&kid)) =>
            {
                Err(AuthError::Revoked)
            }
            other => Ok(other?),
        }
    }

    fn may_reload_for_unknown_kid(&self) -> bool {
        let mut last = self
            .last_unknown_kid_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let due = last.is_none_or(|at| at.elapsed() >= RELOAD_ON_UNKNOWN_KID_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Reloads the key set from storage: picks up a rotation or revocation made here or by another
    /// replica, and drops keys whose tokens have all expired. A key from --signing-key-file is never
    /// replaced.
    pub async fn reload(&self) -> Result<(), AuthError> {
        if self.config.signing_key_file.is_some() {
            return Ok(());
        }
        let (stored, revoked) = self
            .store
            .load_keys(self.revocation_window(), SystemTime::now())
            .await?;
        let kek = self.config.kek.as_deref();
        let now = SystemTime::now();
        // Keys in memory stay there: a key is decrypted again only when it first signs or waits to.
        let held: Vec<Arc<SigningKey>> = {
            let set = self.read();
            std::iter::once(&set.signing)
                .chain(set.upcoming.iter().map(|(_, key)| key))
                .cloned()
                .collect()
        };
        let (mut signers, mut verifying) = (Vec::new(), Vec::new());
        for key in stored {
            if key.signs_now_or_later(now) {
                let signer = match held.iter().find(|held| held.kid == key.kid) {
                    Some(held) => Arc::clone(held),
                    None => {
                        let private_key = key.private_key.as_deref().ok_or_else(|| {
                            AuthError::Internal(format!(
                                "signing key {} loaded without its private key",
                                key.kid
                            ))
                        })?;
                        Arc::new(from_store(kek, &key.kid, private_key)?)
                    }
                };
                signers.push((key.sign_time, key.signs_at(now), signer));
            } else {
                verifying.push(public_key_of(kek, &key)?);
            }
        }
        // The key signing now (the latest whose time has come), then those waiting, earliest first.
        signers.sort_by_key(|(sign_time, ..)| *sign_time);
        let at = signers
            .iter()
            .rposition(|(_, signs_now, _)| *signs_now)
            .ok_or_else(|| AuthError::Internal("no active signing key stored".into()))?;
        let signing = Arc::clone(&signers[at].2);
        let upcoming = signers
            .into_iter()
            .skip(at + 1)
            .map(|(sign_time, _, key)| (sign_time, key))
            .collect();
        let mut set = KeySet::new(
            &self.config,
            signing,
            upcoming,
            verifying,
            revoked.into_iter().collect(),
        );
        // Holding the write lock while swapping: a verdict recorded under the old set's read lock is either
        // carried over (every key it trusted is still trusted) or dropped with it.
        let mut current = self.set.write().unwrap_or_else(PoisonError::into_inner);
        set.verifier.keep_verified_from(&current.verifier);
        *current = set;
        Ok(())
    }

    /// Reloads the key set every few seconds, for as long as the task runs.
    pub async fn keep_reloading(self: Arc<Self>) {
        let mut interval = tokio::time::interval(RELOAD_EVERY);
        interval.tick().await;
        loop {
            interval.tick().await;
            if let Err(error) = self.reload().await {
                tracing::warn!(%error, "reloading signing keys failed");
            }
        }
    }

    /// Publishes a new key now, to sign after the publish lead (or at once, when `immediate`); older
    /// keys keep verifying until their tokens have expired. Returns its kid and when it signs.
    pub async fn rotate(
        &self,
        admin: &AdminCaller,
        immediate: bool,
        origin: Origin,
    ) -> Result<(String, SystemTime), AuthError> {
        if self.config.signing_key_file.is_some() {
            return Err(AuthError::KeyManagedByFile);
        }
        let key = SigningKey::generate()?;
        let stored = to_store(self.config.kek.as_deref(), &key)?;
        let now = SystemTime::now();
        let sign_time = match immediate {
            true => now,
            false => now + self.config.publish_lead,
        };
        self.store
            .rotate_key(stored, now, sign_time, admin.user_id(), origin)
            .await?;
        self.reload().await?;
        tracing::info!(admin = %admin.user_id(), kid = key.kid(), immediate, "rotated signing key");
        Ok((key.kid().to_owned(), sign_time))
    }

    /// Revokes key `kid`: every token it signed is refused from now on, here, and (through the revocation
    /// stream) by every guard. When it was signing, a new key signs from now on; its kid is returned.
    pub async fn revoke(
        self: &Arc<Self>,
        admin: &AdminCaller,
        hub: &Arc<RevocationHub>,
        kid: &str,
        origin: Origin,
    ) -> Result<String, AuthError> {
        if self.config.signing_key_file.is_some() {
            return Err(if kid == self.signing_kid() {
                AuthError::KeyManagedByFile
            } else {
                AuthError::KeyNotFound
            });
        }
        let replacement = to_store(self.config.kek.as_deref(), &SigningKey::generate()?)?;
        let (ring, kid_owned, actor) = (Arc::clone(self), kid.to_owned(), admin.user_id().to_owned());
        let revoked = hub
            .record(async move {
                let revocation = ring
                    .store
                    .revoke_key(&kid_owned, replacement, SystemTime::now(), &actor, origin)
                    .await?
                    .ok_or(AuthError::KeyNotFound)?;
                // Validate here refuses the key's tokens before the call returns; other replicas reload
                // when their relay sees the revocation.
                ring.reload().await?;
                Ok::<_, AuthError>(((), vec![revocation]))
            })
            .await;
        revoked?;
        tracing::info!(admin = %admin.user_id(), kid, "revoked signing key");
        Ok(self.signing_kid())
    }
}

/// `key` as it is stored: its private key sealed with `kek` when there is one.
fn to_store(kek: Option<&KeyEncryptionKey>, key: &SigningKey) -> Result<NewKey, AuthError> {
    let private_key = sealing::seal_if(kek, Row::SigningKey(key.kid()), key.to_pkcs8_pem().as_bytes())?;
    Ok(NewKey {
        kid: key.kid().to_owned(),
        public_key: key.public_key().to_vec(),
        private_key: String::from_utf8(private_key)
            .map_err(|_| AuthError::Internal("a sealed key is not ASCII".into()))?,
    })
}

/// The signing key stored as `private_key` (sealed or not) in the row of `kid`.
fn from_store(kek: Option<&KeyEncryptionKey>, kid: &str, private_key: &str) -> Result<SigningKey, AuthError> {
    let pem = sealing::unseal(kek, Row::SigningKey(kid), private_key.as_bytes())?;
    let pem =
        String::from_utf8(pem).map_err(|_| AuthError::Internal(format!("signing key {kid} is not UTF-8")))?;
    let key = SigningKey::from_pkcs8_pem(&pem)?;
    // A sealed key cannot have been moved between rows (its row is sealed in); an unsealed one could.
    if key.kid() != kid {
        return Err(AuthError::Internal(format!(
            "the key stored as {kid} is another key ({})",
            key.kid()
        )));
    }
    Ok(key)
}

/// A verifying key's public key: from its own column, or, for a key stored before public keys were (and
/// not yet upgraded at a start), from its private key.
fn public_key_of(kek: Option<&KeyEncryptionKey>, key: &StoredKey) -> Result<[u8; 32], AuthError> {
    match (&key.public_key, &key.private_key) {
        (Some(public), _) => public
            .as_slice()
            .try_into()
            .map_err(|_| AuthError::Internal(format!("stored public key of {} is not 32 bytes", key.kid))),
        (None, Some(private_key)) => Ok(from_store(kek, &key.kid, private_key)?.public_key()),
        (None, None) => Err(AuthError::Internal(format!("key {} has no stored key", key.kid))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocations::HubConfig;

    fn user() -> User {
        User {
            id: "0195f3a4-0000-7000-8000-000000000001".into(),
            username: "alice".into(),
            roles: vec!["user".into()],
            create_time: SystemTime::now(),
            disabled: false,
        }
    }

    const LEAD: Duration = Duration::from_secs(600);

    async fn ring(dir: &tempfile::TempDir) -> Arc<KeyRing> {
        let url = watchword_db::DatabaseUrl::Sqlite(dir.path().join("auth.db"));
        let store = Store::open(&url, &Default::default()).await.unwrap();
        let config = KeyConfig {
            issuer: "iss".into(),
            audience: "aud".into(),
            access_token_ttl: Duration::from_secs(900),
            signing_key_file: None,
            kek: None,
            publish_lead: LEAD,
        };
        Arc::new(KeyRing::open(store, config).await.unwrap())
    }

    fn remembered(ring: &KeyRing) -> usize {
        ring.read().verifier.remembered()
    }

    #[tokio::test]
    async fn issued_tokens_verify_exactly_until_exp_and_only_with_our_keys() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ring, other) = (ring(&a).await, ring(&b).await);
        let now = SystemTime::now();
        let issued = ring.issue(&user(), "s1", now).unwrap();
        let claims = ring.verify(&issued.token, now).await.unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(
            (claims.subject.as_str(), claims.audience.as_str()),
            (user().id.as_str(), "aud")
        );
        assert_eq!(claims.key_id, ring.signing_kid());
        let exp = issued.claims.expire_time;
        assert!(
            ring.verify(&issued.token, exp - Duration::from_secs(1))
                .await
                .is_ok()
        );
        assert!(matches!(
            ring.verify(&issued.token, exp).await,
            Err(AuthError::Token(TokenError::Expired))
        ));
        assert!(matches!(
            other.verify(&issued.token, now).await,
            Err(AuthError::Token(TokenError::UnknownKey))
        ));
    }

    #[tokio::test]
    async fn rotation_keeps_old_tokens_and_what_was_verified() {
        let dir = tempfile::tempdir().unwrap();
        let ring = ring(&dir).await;
        let admin = AdminCaller::for_tests();
        let now = SystemTime::now();
        let old = ring.issue(&user(), "s1", now).unwrap().token;
        ring.verify(&old, now).await.unwrap();
        ring.reload().await.unwrap();
        assert_eq!(remembered(&ring), 1, "a reload with the same keys keeps verdicts");
        let old_kid = ring.signing_kid();
        let (new_kid, _) = ring.rotate(&admin, true, Origin::operator()).await.unwrap();
        assert_ne!(new_kid, old_kid);
        assert_eq!(remembered(&ring), 1, "a rotation adds a key and keeps verdicts");
        let new = ring.issue(&user(), "s1", now).unwrap();
        assert_eq!(new.claims.key_id, new_kid);
        ring.verify(&old, now).await.unwrap();
        ring.verify(&new.token, now).await.unwrap();
        assert_eq!(
            ring.jwks().keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            [&new_kid, &old_kid]
        );
    }

    fn kids(ring: &KeyRing) -> Vec<String> {
        ring.jwks().keys.into_iter().map(|k| k.kid).collect()
    }

    #[tokio::test]
    async fn a_rotated_in_key_is_published_at_once_and_signs_only_after_the_lead() {
        let dir = tempfile::tempdir().unwrap();
        let ring = ring(&dir).await;
        let admin = AdminCaller::for_tests();
        let old_kid = ring.signing_kid();
        let before = SystemTime::now();
        let (new_kid, sign_time) = ring.rotate(&admin, false, Origin::operator()).await.unwrap();
        assert!(sign_time >= before + LEAD && sign_time <= SystemTime::now() + LEAD);
        assert_eq!(
            kids(&ring),
            [old_kid.clone(), new_kid.clone()],
            "published at once, the signing key first"
        );
        assert_eq!(ring.signing_kid(), old_kid);
        let just_before = sign_time - Duration::from_millis(1);
        assert_eq!(
            ring.issue(&user(), "s1", just_before).unwrap().claims.key_id,
            old_kid
        );
        // At its time the new key signs, with no reload in between.
        let new = ring.issue(&user(), "s1", sign_time).unwrap();
        assert_eq!(new.claims.key_id, new_kid);
        // And a reload (another replica's view) agrees.
        ring.reload().await.unwrap();
        assert_eq!(ring.signing_kid(), old_kid);
        assert_eq!(
            ring.issue(&user(), "s1", sign_time).unwrap().claims.key_id,
            new_kid
        );
        assert_eq!(ring.cache_max_age(), LEAD / 2);
    }

    #[tokio::test]
    async fn an_immediate_rotation_or_revoking_a_waiting_key_leaves_exactly_one_signer() {
        let dir = tempfile::tempdir().unwrap();
        let ring = ring(&dir).await;
        let (admin, hub) = (
            AdminCaller::for_tests(),
            Arc::new(RevocationHub::new(HubConfig::default())),
        );
        let first = ring.signing_kid();
        let (waiting, later) = ring.rotate(&admin, false, Origin::operator()).await.unwrap();
        // An emergency rotation signs at once, and the key that was waiting never will.
        let (urgent, now) = ring.rotate(&admin, true, Origin::operator()).await.unwrap();
        assert_eq!(ring.signing_kid(), urgent);
        assert_eq!(
            ring.issue(&user(), "s1", later + LEAD).unwrap().claims.key_id,
            urgent
        );
        assert!(
            kids(&ring).contains(&waiting) && kids(&ring).contains(&first),
            "still verifying"
        );

        // Revoking a key that waits to sign: the signing key keeps signing past that key's time.
        let (doomed, its_time) = ring.rotate(&admin, false, Origin::operator()).await.unwrap();
        assert!(its_time > now);
        let signing = ring
            .revoke(&admin, &hub, &doomed, Origin::operator())
            .await
            .unwrap();
        assert!(!kids(&ring).contains(&doomed));
        assert_eq!(
            ring.issue(&user(), "s1", its_time + LEAD).unwrap().claims.key_id,
            signing
        );
        ring.reload().await.unwrap();
        assert_eq!(
            ring.issue(&user(), "s1", its_time + LEAD).unwrap().claims.key_id,
            signing
        );
    }

    #[tokio::test]
    async fn a_revoked_key_verifies_nothing_and_a_revoked_signing_key_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let ring = ring(&dir).await;
        let (admin, hub) = (
            AdminCaller::for_tests(),
            Arc::new(RevocationHub::new(HubConfig::default())),
        );
        let now = SystemTime::now();
        let token = ring.issue(&user(), "s1", now).unwrap().token;
        ring.verify(&token, now).await.unwrap();
        let old_kid = ring.signing_kid();
        let signing = ring
            .revoke(&admin, &hub, &old_kid, Origin::operator())
            .await
            .unwrap();
        assert_ne!(signing, old_kid);
        assert_eq!(remembered(&ring), 0, "a removed key takes its verdicts with it");
        assert!(matches!(ring.verify(&token, now).await, Err(AuthError::Revoked)));
        assert!(ring.jwks().keys.iter().all(|k| k.kid != old_kid));
        ring.verify(&ring.issue(&user(), "s1", now).unwrap().token, now)
            .await
            .unwrap();
        assert!(matches!(
            ring.revoke(&admin, &hub, "no-such-kid", Origin::operator()).await,
            Err(AuthError::KeyNotFound)
        ));
        // Idempotent.
        assert_eq!(
            ring.revoke(&admin, &hub, &old_kid, Origin::operator())
                .await
                .unwrap(),
            signing
        );
    }

    #[test]
    fn pem_round_trip_keeps_the_key_id() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8_pem(key.to_pkcs8_pem()).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert!(
            SigningKey::from_pkcs8_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
