//! Access-token verification, shared by auth-svc (Validate) and the guard's local mode, so both make the
//! same decision for the same token. Whether the token's *session* is still live is not decided here: that
//! is auth-svc's (and the revocation feed's) business.
//!
//! Deliberately stricter than jsonwebtoken's defaults: the algorithm is pinned to EdDSA, `typ` must be
//! `at+jwt`, every registered claim is required, `iss`/`aud` must match exactly, header parameters that
//! point at other keys (`jku`, `jwk`, `x5u`, `x5c`) or demand extensions (`crit`) are refused, `exp` has no
//! leeway, and a token may not claim a lifetime longer than the issuer would ever grant.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{credentials::MAX_TOKEN_BYTES, reason::Reason};

/// The JOSE `typ` of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Clock-skew allowance for `nbf` and `iat`. Small, because tokens are short-lived.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(30);

/// Claims as they travel in the JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwtClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub sid: String,
    pub username: String,
    pub roles: Vec<String>,
}

/// Verified claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub username: String,
    pub roles: Vec<String>,
    pub token_id: String,
    pub issue_time: SystemTime,
    pub expire_time: SystemTime,
    pub issuer: String,
    pub audience: String,
    pub session_id: String,
    /// The `kid` of the key that signed the token.
    pub key_id: String,
}

impl Claims {
    /// The claims of a token signed by the key `key_id`.
    pub fn new(c: JwtClaims, key_id: String) -> Self {
        Self {
            subject: c.sub,
            username: c.username,
            roles: c.roles,
            token_id: c.jti,
            issue_time: UNIX_EPOCH + Duration::from_secs(c.iat),
            expire_time: UNIX_EPOCH + Duration::from_secs(c.exp),
            issuer: c.iss,
            audience: c.aud,
            session_id: c.sid,
            key_id,
        }
    }
}

/// Why a token was refused. The variant is for logs; clients get [`TokenError::reason`] and a coarse message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token given")]
    Missing,
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("header not accepted: {0}")]
    Header(&'static str),
    #[error("unknown key id")]
    UnknownKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("claims not accepted: {0}")]
    Claims(&'static str),
}

impl TokenError {
    /// What the client is told: only what it can act on, never which check failed.
    pub fn client_message(&self) -> &'static str {
        match self.reason() {
            Reason::TokenMissing => "missing token: set `token` or `authorization: Bearer <token>` metadata",
            Reason::TokenMalformed => "malformed token",
            Reason::TokenExpired => "token expired",
            _ => "invalid token",
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Self::Missing => Reason::TokenMissing,
            Self::Malformed | Self::Header(_) => Reason::TokenMalformed,
            Self::Expired => Reason::TokenExpired,
            Self::UnknownKey | Self::BadSignature | Self::NotYetValid | Self::Claims(_) => {
                Reason::TokenInvalid
            }
        }
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key: the `kid` of that key everywhere in Watchword.
pub fn jwk_thumbprint(public: &[u8; 32]) -> String {
    // Members in lexicographic order, no whitespace, as RFC 7638 §3 requires.
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// Most tokens a [`Verifier`] remembers as verified. Each costs about a kilobyte (token and claims), so
/// this bounds the memory near 10 MiB; past it the least recently used are forgotten one by one.
pub const REMEMBERED_TOKENS: usize = 10_000;

/// Checks access tokens against a set of Ed25519 public keys.
///
/// It remembers the tokens it has verified, with their claims, so a repeat of the same token skips the
/// Ed25519 check (~44 µs) and the JSON parse. Sound because verification is a function of the token, the
/// keys and the time, and time matters only through `exp` once a token has passed (`nbf` and `iat` only get
/// more acceptable): a remembered verdict counts until the token's `exp`, exactly when verifying would
/// start saying `Expired`. A verifier only ever gains keys, so what it remembers stays true; a key set that
/// drops a key is a new verifier, which starts with an empty memory ([`Verifier::keep_verified_from`]).
#[derive(Clone)]
pub struct Verifier {
    keys: HashMap<String, DecodingKey>,
    /// What the claims must say (`iss`, `aud`) and the longest lifetime, kept to compare key sets.
    issuer: String,
    audience: String,
    max_lifetime: Duration,
    validation: Validation,
    verified: Arc<quick_cache::sync::Cache<Box<str>, Claims>>,
}

impl Verifier {
    /// A verifier for tokens from `issuer` meant for `audience`, refusing any that claims a lifetime over
    /// `max_lifetime`. It trusts no key until [`Verifier::insert_key`].
    pub fn new(issuer: &str, audience: &str, max_lifetime: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = CLOCK_LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self {
            keys: HashMap::new(),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            max_lifetime,
            validation,
            verified: Arc::new(quick_cache::sync::Cache::new(REMEMBERED_TOKENS)),
        }
    }

    /// Takes over what `old` remembers if this verifier checks the same claims and trusts every key `old`
    /// did (the usual case: the same keys reloaded, or a key added). A key that is gone takes its verdicts
    /// with it.
    pub fn keep_verified_from(&mut self, old: &Verifier) {
        let same_claims = (&self.issuer, &self.audience, self.max_lifetime)
            == (&old.issuer, &old.audience, old.max_lifetime);
        if same_claims && old.keys.keys().all(|kid| self.keys.contains_key(kid)) {
            self.verified = Arc::clone(&old.verified);
        }
    }

    /// How many verified tokens are remembered.
    pub fn remembered(&self) -> usize {
        self.verified.len()
    }

    /// Trusts the Ed25519 public key `public`, under its thumbprint as `kid`.
    pub fn insert_key(&mut self, public: &[u8; 32]) {
        self.keys
            .insert(jwk_thumbprint(public), DecodingKey::from_ed_der(public));
    }

    pub fn has_key(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The `kid` of `token`'s header if the token is shaped like one of ours, without verifying anything.
    pub fn kid_of(token: &str) -> Option<String> {
        jsonwebtoken::decode_header(token).ok()?.kid
    }

    /// Verifies signature, header and claims of `token` as of `now`; a token verified before answers from
    /// memory.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if let Some(claims) = self.verified.get(token) {
            if claims.expire_time > now {
                return Ok(claims);
            }
            self.verified.remove(token);
            return Err(TokenError::Expired);
        }
        let claims = self.check(token, now)?;
        self.verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    fn check(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // Cheap shape checks first, so hostile input never reaches base64 or JSON decoding.
        if token.len() > MAX_TOKEN_BYTES
            || token.split('.').count() != 3
            || token.split('.').any(str::is_empty)
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Header("alg"));
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(TokenError::Header("typ"));
        }
        if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some() {
            return Err(TokenError::Header("key reference"));
        }
        if header.crit.is_some() {
            return Err(TokenError::Header("crit"));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(&kid).ok_or(TokenError::UnknownKey)?;

        let data =
            jsonwebtoken::decode::<JwtClaims>(token, key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidIssuer => TokenError::Claims("iss"),
                ErrorKind::InvalidAudience => TokenError::Claims("aud"),
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    TokenError::Claims("format")
                }
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;

        // Checks jsonwebtoken leaves to us.
        let now = unix_seconds(now);
        let leeway = CLOCK_LEEWAY.as_secs();
        if claims.sub.is_empty() || claims.jti.is_empty() || claims.sid.is_empty() {
            return Err(TokenError::Claims("empty sub, jti or sid"));
        }
        if claims.iat > now + leeway {
            return Err(TokenError::Claims("iat in the future"));
        }
        if claims.exp <= claims.iat || claims.exp - claims.iat > self.max_lifetime.as_secs() {
            return Err(TokenError::Claims("lifetime"));
        }
        // jsonwebtoken checks `exp` with leeway; without it a token is dead the second it says it is.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(Claims::new(claims, kid))
    }
}

pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
