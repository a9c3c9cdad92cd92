//! Reading credentials from `authorization` metadata.
//!
//! Parsing is strict on purpose: exactly one `authorization` entry, a known scheme, and a bounded,
//! token68-shaped value. Anything else is refused before any cryptography or network call happens.

use base64::Engine as _;
use http::{HeaderMap, header::AUTHORIZATION};

/// Largest bearer token accepted, checked before any decoding. Our tokens are well under 1 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why `authorization` metadata could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("missing authorization metadata")]
    Missing,
    #[error("more than one authorization metadata entry")]
    Duplicate,
    #[error("authorization metadata uses an unsupported scheme")]
    WrongScheme,
    #[error("malformed authorization metadata")]
    Malformed,
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
}

/// The token of an `authorization: Bearer <token>` entry (scheme case-insensitive, RFC 6750).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, CredentialsError> {
    let token = scheme_value(headers, "bearer")?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(CredentialsError::TooLarge);
    }
    if !is_token68(token) {
        return Err(CredentialsError::Malformed);
    }
    Ok(token)
}

/// Username and password from an `authorization: Basic <base64(user:password)>` entry (RFC 7617).
pub fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), CredentialsError> {
    let encoded = scheme_value(headers, "basic")?;
    if encoded.len() > MAX_TOKEN_BYTES {
        return Err(CredentialsError::TooLarge);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| CredentialsError::Malformed)?;
    let decoded = String::from_utf8(decoded).map_err(|_| CredentialsError::Malformed)?;
    let (user, password) = decoded.split_once(':').ok_or(CredentialsError::Malformed)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// The value after `<scheme> ` of the single `authorization` entry.
fn scheme_value<'a>(headers: &'a HeaderMap, scheme: &str) -> Result<&'a str, CredentialsError> {
    let mut entries = headers.get_all(AUTHORIZATION).iter();
    let entry = entries.next().ok_or(CredentialsError::Missing)?;
    if entries.next().is_some() {
        return Err(CredentialsError::Duplicate);
    }
    // UTF-8, nearly free on ASCII, rather than `HeaderValue::to_str`'s check of every byte: each scheme's
    // value check (token68, base64) refuses anything but visible ASCII anyway, and a guarded call pays for
    // every byte of its token (BENCHMARKS.md, "Where ListPosts' time goes").
    let text = std::str::from_utf8(entry.as_bytes()).map_err(|_| CredentialsError::Malformed)?;
    let (given, value) = text.split_once(' ').unwrap_or((text, ""));
    if !given.eq_ignore_ascii_case(scheme) {
        // Non-visible-ASCII bytes can never form a valid credential, whatever its scheme.
        return Err(match entry.to_str() {
            Ok(_) => CredentialsError::WrongScheme,
            Err(_) => CredentialsError::Malformed,
        });
    }
    let value = value.trim_matches(' ');
    if value.is_empty() {
        return Err(CredentialsError::Malformed);
    }
    Ok(value)
}

/// The bytes RFC 7235's token68 is made of, besides its trailing `=` padding.
const TOKEN68: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// RFC 7235 token68: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_token68(value: &str) -> bool {
    let body = value.trim_end_matches('=');
    !body.is_empty() && body.bytes().all(|b| TOKEN68[usize::from(b)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, parsing returns (never panics), and anything accepted is a bounded token68.
        #[test]
        fn arbitrary_authorization_values_never_panic(values in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..200), 0..3)) {
            let mut map = HeaderMap::new();
            for v in &values {
                if let Ok(value) = HeaderValue::from_bytes(v) {
                    map.append(AUTHORIZATION, value);
                }
            }
            if let Ok(token) = bearer_token(&map) {
                prop_assert!(token.len() <= MAX_TOKEN_BYTES && is_token68(token));
            }
            let _ = basic_credentials(&map);
        }

        #[test]
        fn bearer_round_trips_any_token68(token in "[A-Za-z0-9._~+/-]{1,64}=?") {
            let map = headers(&[format!("Bearer {token}").as_bytes()]);
            prop_assert_eq!(bearer_token(&map), Ok(token.as_str()));
        }
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn bearer_accepts_one_well_formed_entry_in_any_scheme_case() {
        assert_eq!(bearer_token(&headers(&[b"Bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&[b"bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&[b"BEARER  a.b.c "])), Ok("a.b.c"));
    }

    #[test]
    fn bearer_refuses_everything_else() {
        use CredentialsError::*;
        assert_eq!(bearer_token(&headers(&[])), Err(Missing));
        assert_eq!(
            bearer_token(&headers(&[b"Bearer a", b"Bearer b"])),
            Err(Duplicate)
        );
        assert_eq!(bearer_token(&headers(&[b"Basic YTpi"])), Err(WrongScheme));
        assert_eq!(bearer_token(&headers(&[b"Bearer"])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"Bearer "])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"Bearer a b"])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"Bearer \xc3\xa9"])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"Bearer a\"b"])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"Bearer a\tb"])), Err(Malformed));
        // Not visible ASCII, whatever the scheme: malformed rather than merely another scheme.
        assert_eq!(bearer_token(&headers(&[b"B\xc3\xa9arer a.b.c"])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"\xffBearer a.b.c"])), Err(Malformed));
        assert_eq!(bearer_token(&headers(&[b"Basic\ta.b.c"])), Err(WrongScheme));
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token(&headers(&[huge.as_bytes()])), Err(TooLarge));
    }

    #[test]
    fn basic_decodes_user_and_password_with_colons_in_password() {
        // base64("alice:pa:ss")
        assert_eq!(
            basic_credentials(&headers(&[b"Basic YWxpY2U6cGE6c3M="])),
            Ok(("alice".to_owned(), "pa:ss".to_owned()))
        );
        assert_eq!(
            basic_credentials(&headers(&[b"Basic !!!"])),
            Err(CredentialsError::Malformed)
        );
        assert_eq!(
            basic_credentials(&headers(&[b"Basic bm9jb2xvbg=="])),
            Err(CredentialsError::Malformed)
        );
    }
}
