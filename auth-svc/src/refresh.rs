//! Refresh tokens: opaque, high-entropy strings, stored only as a keyed hash.
//!
//! Rotation derives the successor from the presented token with a keyed hash instead of drawing fresh
//! randomness. That makes a repeat of the same Refresh call (a client racing itself, or retrying after a
//! lost response) get the *same* successor within the grace window, without ever storing a usable token.
//! The key (pepper) lives in auth-svc's database, apart from the hashes, and never leaves the service.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Marks our refresh tokens, so secret scanners (and people) can recognise one.
const PREFIX: &str = "wwrt_";
/// 32 random bytes, base64url without padding.
const BODY_CHARS: usize = 43;

/// Why a string is not a refresh token we could have issued.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[derive(Clone)]
pub struct RefreshTokens {
    pepper: [u8; 32],
}

impl RefreshTokens {
    pub fn new(pepper: [u8; 32]) -> Self {
        Self { pepper }
    }

    /// A new random token (the first of a session).
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// What is stored for `token`: `HMAC(pepper, "store" || token)`.
    pub fn hash(&self, token: &str) -> Result<Vec<u8>, Malformed> {
        check_shape(token)?;
        Ok(self.mac(b"store\0", token).to_vec())
    }

    /// The token that replaces `token` on rotation: `HMAC(pepper, "rotate" || token)`, as a token.
    pub fn successor(&self, token: &str) -> Result<String, Malformed> {
        check_shape(token)?;
        Ok(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.mac(b"rotate\0", token))
        ))
    }

    fn mac(&self, domain: &[u8], token: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.pepper).expect("HMAC accepts any key length");
        mac.update(domain);
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn check_shape(token: &str) -> Result<(), Malformed> {
    let body = token.strip_prefix(PREFIX).ok_or(Malformed)?;
    let well_formed = body.len() == BODY_CHARS
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if well_formed { Ok(()) } else { Err(Malformed) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_are_deterministic_distinct_and_well_formed() {
        let tokens = RefreshTokens::new([7; 32]);
        let first = RefreshTokens::generate().unwrap();
        let next = tokens.successor(&first).unwrap();
        assert_eq!(next, tokens.successor(&first).unwrap());
        assert_ne!(next, first);
        assert_ne!(tokens.hash(&first).unwrap(), tokens.hash(&next).unwrap());
        assert!(tokens.successor(&next).is_ok());
        let other_pepper = RefreshTokens::new([8; 32]);
        assert_ne!(other_pepper.successor(&first).unwrap(), next);
    }

    #[test]
    fn anything_else_is_malformed() {
        let tokens = RefreshTokens::new([7; 32]);
        for bad in [
            "",
            "wwrt_",
            "wwrt_short",
            "eyJhbGciOi.eyJzdWIiOi.sig",
            &format!("wwrt_{}", "+".repeat(43)),
        ] {
            assert_eq!(tokens.hash(bad), Err(Malformed), "{bad}");
        }
    }
}
