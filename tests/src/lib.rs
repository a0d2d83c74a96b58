//! Cross-component and end-to-end tests: the shared harness.
//!
//! The suites live in `tests/tests/`:
//! - `quickstart.rs` runs `hack/quickstart.sh` (the README's "run it") with
//!   the real binaries on free loopback ports;
//! - `local_cluster.rs` runs the end-to-end [`scenarios`] against the
//!   operator, proxy and API binaries and the Kubernetes API test server;
//! - `kind_e2e.rs` runs the same scenarios against the chart installed in
//!   kind by `hack/kind-e2e.sh`, through the ingress.
//!
//! This library holds what they share: an HTTP [`caller`], the [`tour`] of
//! every API resource group, a Prometheus text parser ([`metrics`]),
//! polling ([`wait`]), the [`cluster`] plumbing and the [`local`] processes.

pub mod caller;
pub mod cluster;
pub mod local;
pub mod metrics;
pub mod scenarios;
pub mod tour;
pub mod wait;
