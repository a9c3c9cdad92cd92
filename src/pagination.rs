//! AIP-158 page sizes, shared by every list RPC.

/// Page size when the client sends 0.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Larger requests are coerced down to this.
pub const MAX_PAGE_SIZE: usize = 100;

/// 0 means the default, above the maximum is coerced down; `None` for a negative size (INVALID_ARGUMENT).
pub fn page_size(requested: i32) -> Option<usize> {
    match usize::try_from(requested).ok()? {
        0 => Some(DEFAULT_PAGE_SIZE),
        n => Some(n.min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_aip_158() {
        assert_eq!(page_size(0), Some(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Some(7));
        assert_eq!(page_size(1000), Some(MAX_PAGE_SIZE));
        assert_eq!(page_size(-1), None);
    }
}
