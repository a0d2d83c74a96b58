//! The verified identity the proxy injects into every upstream request.
//!
//! The proxy removes any client-sent header starting with [`HEADER_PREFIX`]
//! (any case, any count) before adding these, so the API can trust them. The
//! API listens on loopback only: the sidecar is its only door.

/// Every identity header starts with this; clients may never send one.
pub const HEADER_PREFIX: &str = "x-prodgy-";
/// The verified product.
pub const PRODUCT: &str = "x-prodgy-product";
/// The token as `<namespace>/<name>`.
pub const TOKEN: &str = "x-prodgy-token";
/// The ApiToken UID.
pub const TOKEN_UID: &str = "x-prodgy-token-uid";
/// Granted scopes, comma-separated; `*` when unrestricted.
pub const SCOPES: &str = "x-prodgy-scopes";
/// Value of [`SCOPES`] for a token without restrictions.
pub const ALL_SCOPES: &str = "*";

/// Whether a header name is reserved for the proxy (ASCII case-insensitive).
pub fn is_identity_header(name: &str) -> bool {
    name.len() >= HEADER_PREFIX.len()
        && name.as_bytes()[..HEADER_PREFIX.len()].eq_ignore_ascii_case(HEADER_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_matched_in_any_case() {
        for h in [
            PRODUCT,
            TOKEN,
            TOKEN_UID,
            SCOPES,
            "X-Prodgy-Product",
            "X-PRODGY-anything",
        ] {
            assert!(is_identity_header(h), "{h}");
        }
        for h in ["x-prodgy", "authorization", "x-prodgyproduct", ""] {
            assert!(!is_identity_header(h), "{h}");
        }
    }
}
