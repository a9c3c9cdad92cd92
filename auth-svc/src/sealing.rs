//! Keys at rest: the private signing keys and the refresh-token pepper are stored sealed with the
//! key-encryption key (`--key-encryption-key-file`), so a copy of the database alone yields no key.
//!
//! A sealed value is ASCII, the same in a TEXT column (`signing_keys.private_key_pem`) and a BLOB one
//! (`secrets.value`):
//!
//! ```text
//! wwsealed:v1:<kek id, 16 hex digits>:<base64url without padding of: nonce (24 bytes) ‖ ciphertext ‖ tag (16 bytes)>
//! ```
//!
//! XChaCha20-Poly1305 with a random nonce per seal (24 bytes: random nonces never collide in practice).
//! The associated data is the header and the row's identity (`signing_keys/<kid>`, `secrets/<name>`), so
//! a sealed value opens only in the row it was sealed for: moved to another row, it is refused. The kek id
//! (the first 8 bytes of HMAC-SHA256(kek, a fixed label)) tells a wrong key-encryption key from a damaged
//! value without decrypting anything, so keys that no longer sign are never decrypted again. Anything not
//! starting with the `wwsealed:v1:` mark is an unsealed value (a PEM document, or the raw pepper) from
//! before the database was sealed.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::{
    KeyInit as _, XChaCha20Poly1305, XNonce,
    aead::{Aead as _, Payload},
};
use hmac::{Hmac, Mac as _};

use crate::keys::SigningKey;

/// What every sealed value starts with.
pub const SEALED_MARK: &str = "wwsealed:v1:";
const NONCE_BYTES: usize = 24;
const KEK_ID_LABEL: &[u8] = b"watchword key-encryption key id v1";
/// `head -c 32 /dev/urandom | base64 > kek && chmod 600 kek`
pub const MAKE_A_KEK: &str = "head -c 32 /dev/urandom | base64 > kek && chmod 600 kek";

/// The key-encryption key. Its bytes are never printed.
pub struct KeyEncryptionKey {
    cipher: XChaCha20Poly1305,
    id: String,
}

impl fmt::Debug for KeyEncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEncryptionKey(id {})", self.id)
    }
}

/// The row a sealed value belongs to (its associated data).
#[derive(Debug, Clone, Copy)]
pub enum Row<'a> {
    SigningKey(&'a str),
    Secret(&'a str),
}

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SigningKey(kid) => write!(f, "signing_keys/{kid}"),
            Self::Secret(name) => write!(f, "secrets/{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "the stored keys are sealed (key-encryption key {stored}): start auth-svc with the \
         --key-encryption-key-file that sealed them"
    )]
    NoKek { stored: String },
    #[error(
        "the key-encryption key does not open the stored keys: they were sealed with key-encryption key \
         {stored}, and this one is {given}. Nothing was changed"
    )]
    WrongKek { stored: String, given: String },
    #[error(
        "the key-encryption key does not open the stored {row}: the value was altered, or copied from \
         another row"
    )]
    Damaged { row: String },
    #[error("the stored {row} is not a usable key: {reason}")]
    Unusable { row: String, reason: String },
    #[error("no randomness available: {0}")]
    Random(String),
}

impl KeyEncryptionKey {
    /// A key from its file's text: 32 bytes in standard base64 (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let refuse =
            |why: &str| format!("{why}; a key-encryption key is 32 random bytes in base64: {MAKE_A_KEK}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| refuse("not base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| refuse(&format!("{} bytes, not 32", b.len())))?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(&bytes).expect("HMAC takes any key length");
        mac.update(KEK_ID_LABEL);
        let id = mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            cipher: XChaCha20Poly1305::new(&bytes.into()),
            id,
        }
    }

    /// A short public name for this key, stored with each value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn header(&self) -> String {
        format!("{SEALED_MARK}{}:", self.id)
    }

    fn aad(header: &str, row: Row<'_>) -> Vec<u8> {
        format!("{header}{row}").into_bytes()
    }

    /// `plaintext` sealed for `row`.
    pub fn seal(&self, row: Row<'_>, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| SealError::Random(e.to_string()))?;
        let header = self.header();
        let aad = Self::aad(&header, row);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Random("encryption failed".into()))?;
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        Ok(format!(
            "{header}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
        ))
    }

    /// The plaintext of `stored`, sealed for `row` with this key.
    pub fn open(&self, row: Row<'_>, stored: &[u8]) -> Result<Vec<u8>, SealError> {
        let damaged = || SealError::Damaged { row: row.to_string() };
        let (kek_id, body) = sealed_parts(stored).ok_or_else(damaged)?;
        if kek_id != self.id {
            return Err(SealError::WrongKek {
                stored: kek_id.to_owned(),
                given: self.id.clone(),
            });
        }
        let body = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| damaged())?;
        if body.len() < NONCE_BYTES {
            return Err(damaged());
        }
        let (nonce, ciphertext) = body.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| damaged())?;
        let aad = Self::aad(&self.header(), row);
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| damaged())
    }
}

/// Whether `stored` is a sealed value (else it is an unsealed one from before sealing).
pub fn is_sealed(stored: &[u8]) -> bool {
    stored.starts_with(SEALED_MARK.as_bytes())
}

/// The kek id and body of a sealed value; `None` if it is not one, or is malformed.
fn sealed_parts(stored: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(stored).ok()?.strip_prefix(SEALED_MARK)?;
    rest.split_once(':')
}

/// The kek id a stored value was sealed with; `None` for an unsealed value.
fn sealed_by(stored: &[u8]) -> Option<&str> {
    if !is_sealed(stored) {
        return None;
    }
    Some(sealed_parts(stored).map_or("(unreadable)", |(id, _)| id))
}

/// `plaintext` as it is to be stored: sealed with `kek` when there is one.
pub fn seal_if(kek: Option<&KeyEncryptionKey>, row: Row<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    match kek {
        Some(kek) => Ok(kek.seal(row, plaintext)?.into_bytes()),
        None => Ok(plaintext.to_vec()),
    }
}

/// The plaintext of a stored value: opened with `kek` if sealed; an unsealed value (written before the
/// database was sealed, or by a replica without a key-encryption key) as it is.
pub fn unseal(kek: Option<&KeyEncryptionKey>, row: Row<'_>, stored: &[u8]) -> Result<Vec<u8>, SealError> {
    match (sealed_by(stored), kek) {
        (None, _) => Ok(stored.to_vec()),
        (Some(id), None) => Err(SealError::NoKek {
            stored: id.to_owned(),
        }),
        (Some(_), Some(kek)) => kek.open(row, stored),
    }
}

/// A stored signing key, as the at-rest upgrade reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub kid: String,
    pub public_key: Option<Vec<u8>>,
    /// PKCS#8 PEM, or its sealed form.
    pub private_key: String,
}

/// A stored secret, as the at-rest upgrade reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRow {
    pub name: String,
    pub value: Vec<u8>,
}

/// A row the at-rest upgrade rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Key(KeyRow),
    Secret(SecretRow),
}

/// What the keys at rest must become at start-up, given the key-encryption key (if any): every unsealed
/// private key and secret sealed with it, and every key's public key in its own column. Refused, before
/// anything changes, when a stored value is sealed and there is no key-encryption key, or another one.
///
/// A sealed key is opened only when its public key is missing (written by a version that did not store
/// it); otherwise sealed values are checked by their kek id alone.
pub fn plan(
    keys: &[KeyRow],
    secrets: &[SecretRow],
    kek: Option<&KeyEncryptionKey>,
) -> Result<Vec<Change>, SealError> {
    let stored = keys
        .iter()
        .map(|k| k.private_key.as_bytes())
        .chain(secrets.iter().map(|s| s.value.as_slice()));
    for value in stored {
        match (sealed_by(value), kek) {
            (Some(id), None) => {
                return Err(SealError::NoKek {
                    stored: id.to_owned(),
                });
            }
            (Some(id), Some(kek)) if id != kek.id() => {
                return Err(SealError::WrongKek {
                    stored: id.to_owned(),
                    given: kek.id().to_owned(),
                });
            }
            _ => {}
        }
    }
    let mut changes = Vec::new();
    for key in keys {
        let row = Row::SigningKey(&key.kid);
        let sealed = is_sealed(key.private_key.as_bytes());
        if sealed && key.public_key.is_some() {
            continue;
        }
        let public_key = match &key.public_key {
            Some(public) => public.clone(),
            None => {
                let pem = unseal(kek, row, key.private_key.as_bytes())?;
                let pem = String::from_utf8(pem).map_err(|_| unusable(row, "not UTF-8".into()))?;
                let signing = SigningKey::from_pkcs8_pem(&pem).map_err(|e| unusable(row, e.to_string()))?;
                if signing.kid() != key.kid {
                    return Err(unusable(row, "its public key does not match its kid".into()));
                }
                signing.public_key().to_vec()
            }
        };
        let private_key = match (sealed, kek) {
            (false, Some(kek)) => kek.seal(row, key.private_key.as_bytes())?,
            _ => key.private_key.clone(),
        };
        changes.push(Change::Key(KeyRow {
            kid: key.kid.clone(),
            public_key: Some(public_key),
            private_key,
        }));
    }
    if let Some(kek) = kek {
        for secret in secrets.iter().filter(|s| !is_sealed(&s.value)) {
            changes.push(Change::Secret(SecretRow {
                name: secret.name.clone(),
                value: kek.seal(Row::Secret(&secret.name), &secret.value)?.into_bytes(),
            }));
        }
    }
    Ok(changes)
}

fn unusable(row: Row<'_>, reason: String) -> SealError {
    SealError::Unusable {
        row: row.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> KeyEncryptionKey {
        KeyEncryptionKey::from_bytes([byte; 32])
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_only_in_its_row() {
        let (kek, other) = (kek(1), kek(2));
        let pepper = [7u8; 32];
        let sealed = kek.seal(Row::Secret("refresh_token_pepper"), &pepper).unwrap();
        assert!(
            sealed.starts_with(&format!("{SEALED_MARK}{}:", kek.id())),
            "{sealed}"
        );
        assert!(is_sealed(sealed.as_bytes()));
        assert_ne!(
            sealed,
            kek.seal(Row::Secret("refresh_token_pepper"), &pepper).unwrap(),
            "a fresh nonce for every seal"
        );
        assert_eq!(
            kek.open(Row::Secret("refresh_token_pepper"), sealed.as_bytes())
                .unwrap(),
            pepper
        );
        assert!(matches!(
            kek.open(Row::Secret("another"), sealed.as_bytes()),
            Err(SealError::Damaged { .. })
        ));
        assert!(matches!(
            kek.open(Row::SigningKey("refresh_token_pepper"), sealed.as_bytes()),
            Err(SealError::Damaged { .. })
        ));
        assert_eq!(
            other.open(Row::Secret("refresh_token_pepper"), sealed.as_bytes()),
            Err(SealError::WrongKek {
                stored: kek.id().to_owned(),
                given: other.id().to_owned()
            })
        );
        // One changed character anywhere in the body.
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            kek.open(Row::Secret("refresh_token_pepper"), &tampered),
            Err(SealError::Damaged { .. })
        ));
        assert_eq!(
            unseal(None, Row::Secret("refresh_token_pepper"), sealed.as_bytes()),
            Err(SealError::NoKek {
                stored: kek.id().to_owned()
            })
        );
        assert_eq!(
            unseal(Some(&kek), Row::Secret("x"), b"legacy").unwrap(),
            b"legacy",
            "an unsealed value is read as it is"
        );
    }

    #[test]
    fn a_key_encryption_key_file_holds_32_bytes_in_base64() {
        let text = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let key = KeyEncryptionKey::from_base64(&format!("{text}\n")).unwrap();
        assert_eq!(key.id(), kek(9).id());
        assert_eq!(key.id().len(), 16);
        assert!(!format!("{key:?}").contains(&text));
        for bad in [
            base64::engine::general_purpose::STANDARD.encode([9u8; 31]),
            base64::engine::general_purpose::STANDARD.encode([9u8; 33]),
            "not base64!".to_owned(),
            String::new(),
        ] {
            let error = KeyEncryptionKey::from_base64(&bad).unwrap_err();
            assert!(error.contains("/dev/urandom"), "{error}");
        }
    }

    fn stored_key() -> (SigningKey, KeyRow) {
        let key = SigningKey::generate().unwrap();
        let row = KeyRow {
            kid: key.kid().to_owned(),
            public_key: None,
            private_key: key.to_pkcs8_pem().to_owned(),
        };
        (key, row)
    }

    #[test]
    fn the_upgrade_seals_what_is_unsealed_and_fills_in_public_keys() {
        let kek = kek(3);
        let (key, row) = stored_key();
        let pepper = SecretRow {
            name: "refresh_token_pepper".into(),
            value: vec![5; 32],
        };
        let changes = plan(
            std::slice::from_ref(&row),
            std::slice::from_ref(&pepper),
            Some(&kek),
        )
        .unwrap();
        let [Change::Key(sealed_key), Change::Secret(sealed_pepper)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        assert_eq!(sealed_key.public_key.as_deref(), Some(&key.public_key()[..]));
        assert!(!sealed_key.private_key.contains("PRIVATE KEY"));
        assert_eq!(
            kek.open(Row::SigningKey(key.kid()), sealed_key.private_key.as_bytes())
                .unwrap(),
            key.to_pkcs8_pem().as_bytes()
        );
        assert_eq!(
            kek.open(Row::Secret(&pepper.name), &sealed_pepper.value).unwrap(),
            pepper.value
        );
        // Sealed and complete: nothing more to do, with the same key; refused with another, or none.
        let done = [sealed_key.clone()];
        let done_secrets = [sealed_pepper.clone()];
        assert_eq!(plan(&done, &done_secrets, Some(&kek)).unwrap(), []);
        assert!(matches!(
            plan(&done, &done_secrets, Some(&self::kek(4))),
            Err(SealError::WrongKek { .. })
        ));
        assert!(matches!(
            plan(&done, &done_secrets, None),
            Err(SealError::NoKek { .. })
        ));
        // A sealed secret alone is enough to refuse.
        assert!(matches!(
            plan(std::slice::from_ref(&row), &done_secrets, None),
            Err(SealError::NoKek { .. })
        ));
        // Without a key-encryption key, only the public key is filled in.
        assert_eq!(
            plan(std::slice::from_ref(&row), &[pepper], None).unwrap(),
            [Change::Key(KeyRow {
                public_key: Some(key.public_key().to_vec()),
                ..row
            })]
        );
    }
}
