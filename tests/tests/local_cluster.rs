#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The kind suite's scenarios without kind: the operator, proxy and API
//! binaries against the Kubernetes API test server on loopback (one stack
//! per test). The same `prodgy_tests::scenarios` run in kind through the
//! ingress; here they run in every CI build, so the suite itself is tested.

use anyhow::Result;
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::LocalCluster;
use prodgy_tests::scenarios;

async fn run(name: &str, scenario: impl AsyncFnOnce(&Scenario) -> Result<()>) {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario(name).await.unwrap();
    let result = scenario(&s).await;
    s.finish(result).await;
}

#[tokio::test]
async fn token_opens_every_resource_group() {
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
