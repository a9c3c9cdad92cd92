//! Opaque tokens (refresh tokens and device tokens): high-entropy strings, stored only as a keyed hash.
//!
//! Refresh-token rotation derives the successor from the presented token with a keyed hash instead of drawing fresh
//! randomness. That makes a repeat of the same Refresh call (a client racing itself, or retrying after a
//! lost response) get the *same* successor within the grace window, without ever storing a usable token.
//! The key (pepper) lives in auth-svc's database, apart from the hashes, and never leaves the service.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// 32 random bytes, base64url without padding.
const BODY_CHARS: usize = 43;

/// The kinds of opaque token. Each has its own prefix, so secret scanners (and people) can recognise one
/// and one kind is never accepted as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exchanged for access tokens by Refresh; rotates on every use.
    Refresh,
    /// Marks a device the account holder logged in from (see `Store::begin_login_attempt`).
    Device,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Refresh => "wwrt_",
            Self::Device => "wwdt_",
        }
    }

    /// Domain separation of the stored hashes.
    fn store_domain(self) -> &'static [u8] {
        match self {
            Self::Refresh => b"store\0",
            Self::Device => b"device\0",
        }
    }
}

/// Why a string is not a token of the expected kind we could have issued.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[derive(Clone)]
pub struct OpaqueTokens {
    pepper: [u8; 32],
}

impl OpaqueTokens {
    pub fn new(pepper: [u8; 32]) -> Self {
        Self { pepper }
    }

    /// A new random token.
    pub fn generate(kind: Kind) -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// What is stored for `token`: `HMAC(pepper, domain || token)`.
    pub fn hash(&self, kind: Kind, token: &str) -> Result<Vec<u8>, Malformed> {
        check_shape(kind, token)?;
        Ok(self.mac(kind.store_domain(), token).to_vec())
    }

    /// The refresh token that replaces `token` on rotation: `HMAC(pepper, "rotate" || token)`, as a token.
    pub fn successor(&self, token: &str) -> Result<String, Malformed> {
        check_shape(Kind::Refresh, token)?;
        let mac = self.mac(b"rotate\0", token);
        Ok(format!(
            "{}{}",
            Kind::Refresh.prefix(),
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    fn mac(&self, domain: &[u8], token: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.pepper).expect("HMAC accepts any key length");
        mac.update(domain);
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

fn check_shape(kind: Kind, token: &str) -> Result<(), Malformed> {
    let body = token.strip_prefix(kind.prefix()).ok_or(Malformed)?;
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
        let tokens = OpaqueTokens::new([7; 32]);
        let first = OpaqueTokens::generate(Kind::Refresh).unwrap();
        let next = tokens.successor(&first).unwrap();
        assert_eq!(next, tokens.successor(&first).unwrap());
        assert_ne!(next, first);
        let hash = |t: &str| tokens.hash(Kind::Refresh, t).unwrap();
        assert_ne!(hash(&first), hash(&next));
        assert!(tokens.successor(&next).is_ok());
        let other_pepper = OpaqueTokens::new([8; 32]);
        assert_ne!(other_pepper.successor(&first).unwrap(), next);
    }

    #[test]
    fn one_kind_is_never_taken_for_the_other() {
        let tokens = OpaqueTokens::new([7; 32]);
        let device = OpaqueTokens::generate(Kind::Device).unwrap();
        assert!(device.starts_with("wwdt_"));
        assert!(tokens.hash(Kind::Device, &device).is_ok());
        assert_eq!(tokens.hash(Kind::Refresh, &device), Err(Malformed));
        assert_eq!(tokens.successor(&device), Err(Malformed));
    }

    #[test]
    fn anything_else_is_malformed() {
        let tokens = OpaqueTokens::new([7; 32]);
        for bad in [
            "",
            "wwrt_",
            "wwrt_short",
            "eyJhbGciOi.eyJzdWIiOi.sig",
            &format!("wwrt_{}", "+".repeat(43)),
        ] {
            assert_eq!(tokens.hash(Kind::Refresh, bad), Err(Malformed), "{bad}");
        }
    }
}
