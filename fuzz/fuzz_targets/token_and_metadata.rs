//! Fuzzes what a hostile client controls on the auth path: the `authorization` metadata value and the token
//! inside it, through the same functions the guard and Validate use. Neither may panic, and random input
//! must never verify.

#![no_main]

use std::{
    sync::LazyLock,
    time::{Duration, SystemTime},
};

use libfuzzer_sys::fuzz_target;
use watchword::token::Verifier;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    let mut verifier = Verifier::new("watchword-auth", "watchword", Duration::from_secs(900));
    // Any valid Ed25519 point will do: without its private key, nothing the fuzzer makes can verify.
    verifier.insert_key(&[
        0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e,
        0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
    ]);
    verifier
});

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    if let Ok(token) = watchword::credentials::bearer_token(&headers) {
        assert!(VERIFIER.verify(token, SystemTime::now()).is_err());
    }
    let _ = watchword::credentials::basic_credentials(&headers);
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(VERIFIER.verify(text, SystemTime::now()).is_err());
    }
});
