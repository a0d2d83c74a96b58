#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The kind suite's scenarios without kind: the operator, proxy and API
//! binaries against the Kubernetes API test server on loopback (one stack
//! per test). The same `prodgy_tests::scenarios` run in kind through the
//! ingress; here they run in every CI build, so the suite itself is tested.

use anyhow::Result;
use prodgy_tests::cluster::Scenario;
use prodgy_tests::local::LocalCluster;

async fn run(name: &str, scenario: impl AsyncFnOnce(&Scenario) -> Result<()>) {
    let local = LocalCluster::start().await.unwrap();
    let s = local.cluster().unwrap().scenario(name).await.unwrap();
    let result = scenario(&s).await;
    s.finish(result).await;
}

prodgy_tests::scenario_tests!(run);
