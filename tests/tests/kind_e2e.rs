#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The kind end-to-end suite: the chart installed in a real cluster by
//! `hack/kind-e2e.sh`, driven through the ingress like a platform team and
//! an API consumer would (the scenarios are in `prodgy_tests::scenarios`).
//! Each test runs in its own namespace with its own product, and prints that
//! namespace's state when it fails.
//!
//! Without `PRODGY_E2E_KIND=1` and a reachable cluster every test prints
//! "skipped: set PRODGY_E2E_KIND=1 and run hack/kind-e2e.sh" and passes.

use anyhow::Result;
use prodgy_tests::cluster::{Cluster, Scenario};
use prodgy_tests::scenarios;

async fn run(name: &str, scenario: impl AsyncFnOnce(&Scenario) -> Result<()>) {
    let Some(cluster) = Cluster::from_env().await else {
        return;
    };
    let s = cluster.scenario(name).await.unwrap();
    let result = scenario(&s).await;
    s.finish(result).await;
}

#[tokio::test]
async fn token_opens_every_resource_group_through_the_ingress() {
    run("tour", scenarios::tour).await;
}

#[tokio::test]
async fn deactivate_activate_regenerate_revoke_take_effect_at_once() {
    run("lifecycle", scenarios::lifecycle).await;
}

#[tokio::test]
async fn a_token_stops_at_its_expiry_and_reads_expired() {
    run("expiry", scenarios::expiry).await;
}

#[tokio::test]
async fn usage_reaches_status_and_the_proxy_exports_it() {
    run("usage", scenarios::usage).await;
}
