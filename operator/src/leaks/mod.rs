//! Leak reports: a secret scanner posts the tokens it found in public (the
//! partner-program shape: a JSON array of `{"token","type","url","source"}`,
//! signed), and every one of ours is taken out of service at once.
//!
//! * [`parse`] reads the body, [`verify`] checks who signed it;
//! * [`decide`] classifies each candidate (pure: shape, checksum, digest
//!   lookup) and plans the answer and the patches;
//! * [`index`] maps digests to ApiTokens from a watch on hashed Secrets;
//! * [`server`] is the thin HTTP shell on its own port, with the body, token
//!   and rate limits;
//! * [`metrics`] counts reports and tokens.
//!
//! Every replica serves the endpoint with its own index and patches the
//! ApiToken itself: the patch is idempotent, so two replicas (or a scanner's
//! retry) acting on the same report do no harm, and a report is not lost
//! while leadership changes hands. What follows — the hashed record's state,
//! the `Leaked` condition, the events — is the leader's reconcile.

pub mod config;
pub mod decide;
pub mod index;
pub mod metrics;
pub mod parse;
pub mod server;
pub mod verify;

pub use config::{LeakArgs, LeakConfig};
pub use decide::LeakAction;
pub use metrics::LeakMetrics;
pub use server::{PATH, bind};

fn lock_read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}
