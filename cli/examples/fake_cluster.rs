//! A throw-away cluster for trying the plugin (and for the session in
//! docs/cli.md): the Kubernetes API test server with the ApiToken CRD, plus
//! the tests' stand-in for the operator's issuing. Not an operator.
//!
//! `cargo run -p kubectl-apitoken --example fake_cluster -- /tmp/kubeconfig`,
//! then `KUBECONFIG=/tmp/kubeconfig kubectl apitoken …`; Ctrl-C stops it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write;

use anyhow::Context;
use prodgy_kube_fake::FakeApiServer;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: fake_cluster <kubeconfig path to write>")?;
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds()?;
    server.write_kubeconfig(&path)?;
    let _operator = support::spawn_operator(server.client(), support::Mode::Issue);
    writeln!(
        std::io::stdout(),
        "API server on {}; export KUBECONFIG={path}",
        server.url()
    )?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
