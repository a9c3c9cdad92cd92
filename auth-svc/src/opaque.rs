//! Opaque tokens (refresh tokens, device tokens and API keys): high-entropy strings, stored only as a keyed
//! hash.
//!
//! Refresh-token rotation derives the successor from the presented token with a keyed hash instead of drawing fresh
//! randomness. That makes a repeat of the same Refresh call (a client racing itself, or retrying after a
//! lost response) get the *same* successor within the grace window, without ever storing a usable token.
//! The key (pepper) lives in auth-svc's database, apart from the hashes, and never leaves the service.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};

/// 32 random bytes, base64url without padding.
const BODY_CHARS: usize = 43;
/// An API key's checksum: the first 4 bytes of SHA-256 of the prefix and body, base64url.
const CHECKSUM_CHARS: usize = 6;

/// The kinds of opaque token. Each has its own prefix, so secret scanners (and people) can recognise one
/// and one kind is never accepted as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Exchanged for access tokens by Refresh; rotates on every use.
    Refresh,
    /// Marks a device the account holder logged in from (see `Store::begin_login_attempt`).
    Device,
    /// An API key: exchanged for access tokens by ExchangeApiKey. It ends with a checksum, so a mistyped
    /// or truncated key is told from an unknown one without a database read, and secret scanners can
    /// recognise a real one.
    ApiKey,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Self::Refresh => "wwrt_",
            Self::Device => "wwdt_",
            Self::ApiKey => "wwk_",
        }
    }

    /// Domain separation of the stored hashes.
    fn store_domain(self) -> &'static [u8] {
        match self {
            Self::Refresh => b"store\0",
            Self::Device => b"device\0",
            Self::ApiKey => b"apikey\0",
        }
    }

    fn has_checksum(self) -> bool {
        self == Self::ApiKey
    }
}

/// The checksum of `prefix || body`.
fn checksum(prefix: &str, body: &str) -> String {
    let digest = Sha256::new()
        .chain_update(prefix.as_bytes())
        .chain_update(body.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..4])
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
        let body = URL_SAFE_NO_PAD.encode(bytes);
        let checksum = match kind.has_checksum() {
            true => checksum(kind.prefix(), &body),
            false => String::new(),
        };
        Ok(format!("{}{body}{checksum}", kind.prefix()))
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
    let rest = token.strip_prefix(kind.prefix()).ok_or(Malformed)?;
    let checksum_chars = if kind.has_checksum() { CHECKSUM_CHARS } else { 0 };
    let well_formed = rest.len() == BODY_CHARS + checksum_chars
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(Malformed);
    }
    let (body, sum) = rest.split_at(BODY_CHARS);
    if kind.has_checksum() && sum != checksum(kind.prefix(), body) {
        return Err(Malformed);
    }
    Ok(())
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
    fn api_keys_carry_a_checksum_that_catches_any_change() {
        let tokens = OpaqueTokens::new([7; 32]);
        let key = OpaqueTokens::generate(Kind::ApiKey).unwrap();
        assert!(key.starts_with("wwk_"));
        assert_eq!(key.len(), 4 + 43 + 6);
        assert!(tokens.hash(Kind::ApiKey, &key).is_ok());
        // Any one character changed, or one dropped, fails the checksum (or the shape).
        for i in 4..key.len() {
            let mut changed = key.clone().into_bytes();
            changed[i] = if changed[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(changed).unwrap();
            assert_eq!(tokens.hash(Kind::ApiKey, &changed), Err(Malformed), "{changed}");
        }
        assert_eq!(tokens.hash(Kind::ApiKey, &key[..key.len() - 1]), Err(Malformed));
        assert_eq!(tokens.hash(Kind::Refresh, &key), Err(Malformed));
        let refresh = OpaqueTokens::generate(Kind::Refresh).unwrap();
        assert_eq!(tokens.hash(Kind::ApiKey, &refresh), Err(Malformed));
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
