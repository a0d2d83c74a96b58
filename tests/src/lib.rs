//! Cross-component and kind end-to-end tests: the shared harness.
//!
//! The suites live in `tests/tests/`: `quickstart.rs` runs the real binaries
//! on loopback the way `hack/quickstart.sh` does, `kind_e2e.rs` drives the
//! chart installed in a kind cluster by `hack/kind-e2e.sh`. This library holds
//! what both need: an HTTP caller, the tour of every API resource group, a
//! Prometheus text parser, polling, and the kind scenario plumbing.

pub mod caller;
pub mod kind;
pub mod local;
pub mod metrics;
pub mod tour;
pub mod wait;
