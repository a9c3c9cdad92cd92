//! Access tokens: Ed25519-signed JWTs (RFC 9068 profile), issued on login and checked by Validate.
//!
//! auth-svc keeps a key *set*: the newest key signs; keys it replaced keep verifying until every token they
//! signed has expired. Verification itself is [`watchword::token::Verifier`], the same code the guard's
//! local mode runs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use watchword::token::{ACCESS_TOKEN_TYP, JwtClaims, Verifier, jwk_thumbprint, unix_seconds};
pub use watchword::token::{Claims, TokenError};

use crate::domain::User;

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

struct KeySet {
    signing: Arc<SigningKey>,
    verifier: Verifier,
    public: Vec<PublicKey>,
    verified: VerifiedTokens,
}

/// Most tokens remembered as verified. Each costs about a kilobyte (token and claims), so this bounds the
/// memo near 10 MiB; past it, expired entries are swept, and if all are live the memo starts over.
const MAX_VERIFIED: usize = 10_000;

/// Tokens a key set has already verified, with their claims, so a repeat Validate of the same token skips
/// the Ed25519 check (~44 µs) and the JSON parse, the bulk of a Validate's CPU.
///
/// Sound because verification is a function of the token, the keys and the time, and time only matters
/// through `exp` once a token has passed (`nbf` and `iat` only get more acceptable): an entry counts until
/// the token's `exp`, exactly when [`Verifier::verify`] would start saying `Expired`. Entries belong to the
/// key set that verified them, so retiring a key drops them. Whether the *session* is still live is not
/// remembered here: that is [`crate::revocations::LiveSessions`].
#[derive(Default)]
struct VerifiedTokens {
    entries: Mutex<HashMap<Box<str>, Claims>>,
}

impl VerifiedTokens {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Claims>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, token: &str, now: SystemTime) -> Option<Claims> {
        let mut entries = self.entries();
        let claims = entries.get(token)?;
        if claims.expire_time > now {
            return Some(claims.clone());
        }
        entries.remove(token);
        None
    }

    fn insert(&self, token: &str, claims: &Claims, now: SystemTime) {
        let mut entries = self.entries();
        if entries.len() >= MAX_VERIFIED {
            entries.retain(|_, claims| claims.expire_time > now);
            if entries.len() >= MAX_VERIFIED {
                entries.clear();
            }
        }
        entries.insert(token.into(), claims.clone());
    }
}

/// Issues and verifies access tokens with a set of keys that can change at run time (rotation).
pub struct Tokens {
    keys: RwLock<KeySet>,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl Tokens {
    /// `signing` signs; it and every key in `verifying` verify.
    pub fn new(
        signing: SigningKey,
        verifying: Vec<[u8; 32]>,
        issuer: String,
        audience: String,
        ttl: Duration,
    ) -> Self {
        let keys = RwLock::new(Self::key_set(&issuer, &audience, ttl, signing, verifying));
        Self {
            keys,
            issuer,
            audience,
            ttl,
        }
    }

    fn key_set(
        issuer: &str,
        audience: &str,
        ttl: Duration,
        signing: SigningKey,
        verifying: Vec<[u8; 32]>,
    ) -> KeySet {
        let mut verifier = Verifier::new(issuer, audience, ttl);
        let mut public = vec![PublicKey {
            kid: signing.kid.clone(),
            x: signing.public,
        }];
        verifier.insert_key(&signing.public);
        for x in verifying {
            let kid = jwk_thumbprint(&x);
            if !verifier.has_key(&kid) {
                verifier.insert_key(&x);
                public.push(PublicKey { kid, x });
            }
        }
        KeySet {
            signing: Arc::new(signing),
            verifier,
            public,
            verified: VerifiedTokens::default(),
        }
    }

    /// Swaps in a new key set (after a rotation here or in another replica, or the periodic reload).
    pub fn replace_keys(&self, signing: SigningKey, verifying: Vec<[u8; 32]>) {
        let set = Self::key_set(&self.issuer, &self.audience, self.ttl, signing, verifying);
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        // Tokens verified by the old set stay verified if the new one still trusts every key it did (the
        // usual case: nothing changed, or a key was added). A retired key takes its verdicts with it.
        if keys.public.iter().all(|key| set.verifier.has_key(&key.kid)) {
            *set.verified.entries() = std::mem::take(&mut *keys.verified.entries());
        }
        *keys = set;
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The keys a verifier should trust now: the signing key first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        self.read().public.clone()
    }

    pub fn signing_kid(&self) -> String {
        self.read().signing.kid.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signs an access token for `user` in `session_id`, valid from now for the configured lifetime.
    pub fn issue(
        &self,
        user: &User,
        session_id: &str,
        now: SystemTime,
    ) -> Result<IssuedToken, jsonwebtoken::errors::Error> {
        let iat = unix_seconds(now);
        let claims = JwtClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user.id.clone(),
            exp: iat + self.ttl.as_secs(),
            nbf: iat,
            iat,
            jti: uuid::Uuid::new_v4().to_string(),
            sid: session_id.to_owned(),
            username: user.username.clone(),
            roles: user.roles.clone(),
        };
        let signing = Arc::clone(&self.read().signing);
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(signing.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &signing.encoding)?;
        Ok(IssuedToken {
            token,
            claims: Claims::new(claims, signing.kid.clone()),
        })
    }

    /// Verifies signature, header and claims of `token` as of `now`.
    ///
    /// A token this key set verified before answers from memory (see [`VerifiedTokens`]).
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        // The read lock is held until the verdict is recorded, so a key retired meanwhile (which needs the
        // write lock) cannot be outrun by a verdict it should have voided.
        let keys = self.read();
        if let Some(claims) = keys.verified.get(token, now) {
            return Ok(claims);
        }
        let claims = keys.verifier.verify(token, now)?;
        keys.verified.insert(token, &claims, now);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The parse path a hostile client controls: arbitrary strings never panic and never verify.
        #[test]
        fn arbitrary_strings_never_verify(token in ".{0,300}") {
            let tokens = tokens();
            prop_assert!(tokens.verify(&token, SystemTime::now()).is_err());
        }

        /// JWT-shaped garbage: three base64url segments of arbitrary bytes.
        #[test]
        fn arbitrary_segments_never_verify(
            header in proptest::collection::vec(any::<u8>(), 0..120),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            signature in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(signature)
            );
            prop_assert!(tokens().verify(&token, SystemTime::now()).is_err());
        }

        /// A real token with any one byte changed never verifies.
        #[test]
        fn any_single_byte_change_is_refused(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let tokens = tokens();
            let now = SystemTime::now();
            let token = tokens.issue(&user(), "s1", now).unwrap().token;
            let mut bytes = token.clone().into_bytes();
            let i = index.index(bytes.len());
            prop_assume!(bytes[i] != byte);
            bytes[i] = byte;
            if let Ok(changed) = String::from_utf8(bytes) {
                prop_assert!(tokens.verify(&changed, now).is_err());
            }
        }
    }

    fn user() -> User {
        User {
            id: "0195f3a4-0000-7000-8000-000000000001".into(),
            username: "alice".into(),
            roles: vec!["user".into()],
            create_time: SystemTime::now(),
            disabled: false,
        }
    }

    fn tokens() -> Tokens {
        Tokens::new(
            SigningKey::generate().unwrap(),
            vec![],
            "iss".into(),
            "aud".into(),
            Duration::from_secs(900),
        )
    }

    #[test]
    fn issued_tokens_verify_and_round_trip_claims() {
        let tokens = tokens();
        let now = SystemTime::now();
        let issued = tokens.issue(&user(), "s1", now).unwrap();
        let claims = tokens.verify(&issued.token, now).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.subject, user().id);
        assert_eq!(claims.audience, "aud");
    }

    #[test]
    fn expiry_is_exact_and_other_keys_are_unknown() {
        let tokens = tokens();
        let now = SystemTime::now();
        let issued = tokens.issue(&user(), "s1", now).unwrap();
        let later = now + Duration::from_secs(900);
        assert_eq!(tokens.verify(&issued.token, later), Err(TokenError::Expired));
        let other = self::tokens();
        assert_eq!(other.verify(&issued.token, now), Err(TokenError::UnknownKey));
    }

    #[test]
    fn after_rotation_old_tokens_still_verify_and_new_ones_use_the_new_key() {
        let tokens = tokens();
        let now = SystemTime::now();
        let old_kid = tokens.signing_kid();
        let old = tokens.issue(&user(), "s1", now).unwrap().token;
        let old_public = tokens.public_keys()[0].x;
        tokens.replace_keys(SigningKey::generate().unwrap(), vec![old_public]);
        let new = tokens.issue(&user(), "s1", now).unwrap().token;
        assert_ne!(tokens.signing_kid(), old_kid);
        assert!(tokens.verify(&old, now).is_ok());
        assert!(tokens.verify(&new, now).is_ok());
        assert_eq!(tokens.public_keys().len(), 2);
        // Once the old key is retired, its tokens are unknown.
        tokens.replace_keys(SigningKey::from_pkcs8_pem(&pem_of(&tokens)).unwrap(), vec![]);
        assert_eq!(tokens.verify(&old, now), Err(TokenError::UnknownKey));
    }

    #[test]
    fn remembered_verdicts_end_at_exp_and_survive_only_key_additions() {
        let tokens = tokens();
        let now = SystemTime::now();
        let issued = tokens.issue(&user(), "s1", now).unwrap();
        let exp = issued.claims.expire_time;
        assert!(tokens.verify(&issued.token, now).is_ok());
        assert_eq!(tokens.read().verified.entries().len(), 1);
        // From memory now, and still exact about expiry.
        assert!(tokens.verify(&issued.token, exp - Duration::from_secs(1)).is_ok());
        assert_eq!(tokens.verify(&issued.token, exp), Err(TokenError::Expired));
        assert!(tokens.verify(&issued.token, now).is_ok());

        // The periodic reload (same keys) and a rotation that keeps the old key keep what was verified.
        let signing_pem = pem_of(&tokens);
        let public = tokens.public_keys()[0].x;
        tokens.replace_keys(SigningKey::from_pkcs8_pem(&signing_pem).unwrap(), vec![]);
        assert_eq!(tokens.read().verified.entries().len(), 1);
        tokens.replace_keys(SigningKey::generate().unwrap(), vec![public]);
        assert_eq!(tokens.read().verified.entries().len(), 1);
        // A signature check on a token the memo has not seen still happens: a forged twin is refused.
        let mut forged = issued.token.clone();
        forged.pop();
        forged.push(if issued.token.ends_with('A') { 'B' } else { 'A' });
        assert!(tokens.verify(&forged, now).is_err());
    }

    fn pem_of(tokens: &Tokens) -> String {
        tokens.read().signing.pem.clone()
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

    #[test]
    fn shape_checks_refuse_garbage_before_decoding() {
        let tokens = tokens();
        let now = SystemTime::now();
        for bad in ["a", "a.b", "a.b.c.d", "a..c", "a.b.c=", "a+b.c.d", "ey.ey.ey"] {
            assert!(tokens.verify(bad, now).is_err(), "{bad}");
        }
        assert_eq!(tokens.verify("", now), Err(TokenError::Missing));
    }
}
