//! Validated domain values for posts; request fields are parsed into these at the handler boundary.

use std::time::SystemTime;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;
use watchword::pagination;

use crate::error::PostsError;

pub const TITLE_MAX_CHARS: usize = 200;
pub const BODY_MAX_CHARS: usize = 10_000;

pub const REQUEST_ID_MAX_CHARS: usize = 128;

/// A post's content, checked, with the client's idempotency key if it sent one.
#[derive(Debug, Clone)]
pub struct NewPost {
    pub title: String,
    pub body: String,
    pub request_id: Option<String>,
}

impl NewPost {
    pub fn parse(title: String, body: String, request_id: String) -> Result<Self, PostsError> {
        check_text("title", &title, TITLE_MAX_CHARS)?;
        check_text("body", &body, BODY_MAX_CHARS)?;
        let request_id = match request_id.as_str() {
            "" => None,
            id if id.len() <= REQUEST_ID_MAX_CHARS && id.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(request_id)
            }
            _ => {
                return Err(PostsError::invalid(
                    "request_id",
                    format!("must be at most {REQUEST_ID_MAX_CHARS} printable ASCII characters"),
                ));
            }
        };
        Ok(Self {
            title,
            body,
            request_id,
        })
    }
}

fn check_text(field: &'static str, value: &str, max_chars: usize) -> Result<(), PostsError> {
    if value.trim().is_empty() {
        return Err(PostsError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(PostsError::invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    Ok(())
}

/// A well-formed post or user id (a UUID), in canonical lowercase hyphenated form.
pub fn parse_id(field: &'static str, raw: &str) -> Result<String, PostsError> {
    Uuid::parse_str(raw)
        .map(|id| id.hyphenated().to_string())
        .map_err(|_| PostsError::invalid(field, "must be a UUID"))
}

/// A stored post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub id: String,
    pub author_id: String,
    pub author_username: String,
    pub title: String,
    pub body: String,
    pub create_time: SystemTime,
}

/// One page of a listing, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: usize,
    /// Only posts older than this position (exclusive); `None` for the first page.
    pub before: Option<i64>,
    pub author_id: Option<String>,
}

impl PageRequest {
    /// AIP-158: 0 means the default, above the maximum is coerced down, negative is an error; the token
    /// must have been issued for the same filter.
    pub fn parse(page_size: i32, page_token: &str, author_id: Option<String>) -> Result<Self, PostsError> {
        let size = pagination::page_size(page_size)
            .ok_or_else(|| PostsError::invalid("page_size", "must not be negative"))?;
        let author_id = author_id.map(|id| parse_id("author_id", &id)).transpose()?;
        let before = if page_token.is_empty() {
            None
        } else {
            let token = PageToken::decode(page_token)?;
            if token.author_id != author_id {
                return Err(PostsError::invalid(
                    "page_token",
                    "was issued for a different author_id filter",
                ));
            }
            Some(token.before)
        };
        Ok(Self {
            size,
            before,
            author_id,
        })
    }
}

/// The position after which the next page starts, with the filter it belongs to.
///
/// Keyset pagination on the post's insertion sequence: inserts never shift later pages, unlike OFFSET.
/// The encoding is private; clients treat it as an opaque string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub before: i64,
    pub author_id: Option<String>,
}

const PAGE_TOKEN_VERSION: u8 = 1;

impl PageToken {
    pub fn encode(&self) -> String {
        let mut bytes = vec![PAGE_TOKEN_VERSION];
        bytes.extend_from_slice(&self.before.to_be_bytes());
        if let Some(author) = &self.author_id {
            bytes.extend_from_slice(author.as_bytes());
        }
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(token: &str) -> Result<Self, PostsError> {
        let invalid = || PostsError::invalid("page_token", "is not a token this service issued");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let (&version, rest) = bytes.split_first().ok_or_else(invalid)?;
        if version != PAGE_TOKEN_VERSION || rest.len() < 8 {
            return Err(invalid());
        }
        let (position, author) = rest.split_at(8);
        let before = i64::from_be_bytes(position.try_into().map_err(|_| invalid())?);
        let author_id = match author {
            [] => None,
            bytes => Some(String::from_utf8(bytes.to_vec()).map_err(|_| invalid())?),
        };
        Ok(Self { before, author_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_follows_aip_158() {
        use watchword::pagination::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
        assert_eq!(PageRequest::parse(0, "", None).unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(5, "", None).unwrap().size, 5);
        assert_eq!(PageRequest::parse(1000, "", None).unwrap().size, MAX_PAGE_SIZE);
        assert!(PageRequest::parse(-1, "", None).is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_are_bound_to_their_filter() {
        let author = "0195f3a4-0000-7000-8000-000000000001".to_owned();
        let token = PageToken {
            before: 42,
            author_id: Some(author.clone()),
        }
        .encode();
        let page = PageRequest::parse(10, &token, Some(author)).unwrap();
        assert_eq!(page.before, Some(42));
        assert!(PageRequest::parse(10, &token, None).is_err());
        for garbage in ["x", "!!!", "AAAA", "AgAAAAAAAAAq"] {
            assert!(PageRequest::parse(10, garbage, None).is_err(), "{garbage}");
        }
    }

    #[test]
    fn content_limits_name_the_field() {
        assert!(NewPost::parse("t".into(), "b".into(), String::new()).is_ok());
        let err = NewPost::parse("  ".into(), "b".into(), String::new()).unwrap_err();
        assert!(err.to_string().starts_with("title:"));
        let err = NewPost::parse("t".into(), "\n".into(), String::new()).unwrap_err();
        assert!(err.to_string().starts_with("body:"));
        assert!(NewPost::parse("é".repeat(200), "b".repeat(10_000), String::new()).is_ok());
        assert!(NewPost::parse("é".repeat(201), "b".into(), String::new()).is_err());
        assert!(NewPost::parse("t".into(), "b".repeat(10_001), String::new()).is_err());
        assert!(NewPost::parse("t".into(), "b".into(), "r".repeat(129)).is_err());
        assert!(NewPost::parse("t".into(), "b".into(), "has space".into()).is_err());
        assert!(parse_id("id", "nope").is_err());
        assert_eq!(
            parse_id("id", "0195F3A4-0000-7000-8000-000000000001").unwrap(),
            "0195f3a4-0000-7000-8000-000000000001"
        );
    }
}
