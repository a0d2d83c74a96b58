//! The pingora sidecar that enforces ApiTokens and counts their usage.
