//! Shared state handed to every handler and worker.

use std::ops::Deref;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::blobs::Blobs;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::db::Db;
use crate::metrics::Metrics;

/// Cheap-to-clone handle on [`Shared`].
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// Everything a request or a worker needs.
#[derive(Debug)]
pub struct Shared {
    /// The database.
    pub db: Db,
    /// Credential keys.
    pub keyring: Keyring,
    /// File contents.
    pub blobs: Blobs,
    /// Validated configuration.
    pub config: Config,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Wakes local workers when work is queued (other replicas poll).
    pub queue_wake: Notify,
    /// Outbound HTTP to the chat backend (an address the operator chose).
    pub http: reqwest::Client,
    /// Outbound HTTP of `http` agents (public addresses only, by default).
    pub agent_http: reqwest::Client,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
