//! What the proxy, the ops endpoints and the background tasks share.

use std::sync::Arc;

use crate::cells::Cells;
use crate::index::Index;
use crate::metrics::Metrics;

/// Shared, process-wide state.
#[derive(Debug, Default)]
pub struct State {
    /// The token index (written only by the source task).
    pub index: Arc<Index>,
    /// Per-token counters.
    pub cells: Cells,
    /// Process-wide metrics.
    pub metrics: Metrics,
}
