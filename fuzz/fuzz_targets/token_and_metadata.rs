//! Fuzzes what a hostile client controls on the auth path: the `authorization` metadata value and the token
//! inside it, through the same functions the guard and Validate use. Neither may panic, and random input
//! must never verify.

#![no_main]

use std::{sync::LazyLock, time::{Duration, SystemTime}};

use auth_svc::tokens::{SigningKey, Tokens};
use libfuzzer_sys::fuzz_target;

static TOKENS: LazyLock<Tokens> = LazyLock::new(|| {
    let key = SigningKey::generate().expect("randomness");
    Tokens::new(key, "iss".into(), "aud".into(), Duration::from_secs(900))
});

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if let Ok(token) = watchword::credentials::bearer_token(&headers) {
        assert!(TOKENS.verify(token, SystemTime::now()).is_err());
    }
    let _ = watchword::credentials::basic_credentials(&headers);
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(TOKENS.verify(text, SystemTime::now()).is_err());
    }
});
