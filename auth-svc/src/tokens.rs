//! Access tokens: Ed25519-signed JWTs (RFC 9068 profile), issued on login and checked by Validate.
//!
//! Verification is deliberately stricter than jsonwebtoken's defaults: the algorithm is pinned to EdDSA,
//! `typ` must be `at+jwt`, every registered claim is required, `iss`/`aud` must match exactly, header
//! parameters that point at other keys (`jku`, `jwk`, `x5u`, `x5c`) or demand extensions (`crit`) are
//! refused, and a token may not claim a lifetime longer than we would ever issue.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use watchword::{credentials::MAX_TOKEN_BYTES, reason::Reason};

use crate::{domain::User, settings::CLOCK_LEEWAY};

/// The JOSE `typ` of our access tokens (RFC 9068).
const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// An Ed25519 key pair with its key id.
pub struct SigningKey {
    kid: String,
    pem: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
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
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&public),
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
}

fn jwk_thumbprint(public: &[u8; 32]) -> String {
    // Members in lexicographic order, no whitespace, as RFC 7638 §3 requires.
    let jwk = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()))
}

/// Claims as they travel in the JWT.
#[derive(Debug, Serialize, Deserialize)]
struct JwtClaims {
    iss: String,
    aud: String,
    sub: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    sid: String,
    username: String,
    roles: Vec<String>,
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
}

/// A freshly signed token and what it says.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

/// Why a token was refused. The variant is for logs; clients get a coarse message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
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
    #[error("session ended")]
    Revoked,
}

impl TokenError {
    /// What the client is told: only what it can act on, never which check failed.
    pub fn client_message(&self) -> &'static str {
        match self.reason() {
            Reason::TokenMissing => "missing token: set `token` or `authorization: Bearer <token>` metadata",
            Reason::TokenMalformed => "malformed token",
            Reason::TokenExpired => "token expired",
            Reason::TokenRevoked => "token revoked: log in again",
            _ => "invalid token",
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            Self::Missing => Reason::TokenMissing,
            Self::Malformed | Self::Header(_) => Reason::TokenMalformed,
            Self::Expired => Reason::TokenExpired,
            Self::Revoked => Reason::TokenRevoked,
            Self::UnknownKey | Self::BadSignature | Self::NotYetValid | Self::Claims(_) => {
                Reason::TokenInvalid
            }
        }
    }
}

/// Issues and verifies access tokens with one signing key.
pub struct Tokens {
    signing: SigningKey,
    verifying: HashMap<String, DecodingKey>,
    issuer: String,
    audience: String,
    ttl: Duration,
    validation: Validation,
}

impl Tokens {
    pub fn new(signing: SigningKey, issuer: String, audience: String, ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = CLOCK_LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let verifying = HashMap::from([(signing.kid.clone(), signing.decoding.clone())]);
        Self {
            signing,
            verifying,
            issuer,
            audience,
            ttl,
            validation,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
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
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.signing.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing.encoding)?;
        Ok(IssuedToken {
            token,
            claims: claims.into(),
        })
    }

    /// Verifies signature, header and claims of `token` as of `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        // Cheap shape checks first, so hostile input never reaches base64 or JSON decoding.
        if token.len() > MAX_TOKEN_BYTES
            || token.split('.').count() != 3
            || token.split('.').any(|part| part.is_empty())
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
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(TokenError::UnknownKey)?;

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
        if claims.exp <= claims.iat || claims.exp - claims.iat > self.ttl.as_secs() {
            return Err(TokenError::Claims("lifetime"));
        }
        // jsonwebtoken checks `exp` with leeway; without it a token is dead the second it says it is.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims.into())
    }
}

impl From<JwtClaims> for Claims {
    fn from(c: JwtClaims) -> Self {
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
        }
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
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
