//! Reconciles ApiTokens into hashed Secrets, delivery Secrets and status.
