//! The delivery Secret: the plaintext for the token's owner, in the token's
//! namespace (`<name>-token` unless `spec.delivery.secretName` says
//! otherwise). The operator writes it; the CLI, the console and in-cluster
//! consumers read it.

/// Data key of the plaintext.
pub const TOKEN_KEY: &str = "token";
/// Data key of the display prefix.
pub const PREFIX_KEY: &str = "prefix";
/// Annotation: the `spec.regeneration` the delivered token belongs to.
pub const REGENERATION_ANNOTATION: &str = "prodgy.io/regeneration";
/// Annotation: when the delivered token was issued (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "prodgy.io/issued-at";
