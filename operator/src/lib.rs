//! The Prodgy operator: reconciles `ApiToken`s into hashed Secrets (what the
//! proxy verifies against), delivery Secrets (the plaintext for the owner) and
//! status (phase, prefix, usage, a `Ready` condition).
//!
//! * [`plan`] decides, purely, what one reconcile must write;
//! * [`usage`] folds proxy usage reports into `status.usage`;
//! * [`controller`] is the kube-runtime shell that observes and executes plans;
//! * [`lease`] elects one leader among replicas;
//! * [`leaks`] takes tokens a secret scanner reports leaked out of service;
//! * [`metrics`] serves `/metrics`, `/healthz` and `/readyz`;
//! * [`offline`] issues a token into a file, for the no-cluster quickstart;
//! * [`release`] lets every ApiToken go when the chart is uninstalled;
//! * [`config`] turns flags into one validated [`config::Config`];
//! * [`app`] wires it all into a process.

pub mod app;
pub mod config;
pub mod controller;
mod error;
pub mod leaks;
pub mod lease;
pub mod metrics;
pub mod offline;
pub mod plan;
pub mod release;
pub mod telemetry;
pub mod usage;

pub use error::{Error, Result};
