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

async fn run(name: &str, scenario: impl AsyncFnOnce(&Scenario) -> Result<()>) {
    let Some(cluster) = Cluster::from_env().await else {
        return;
    };
    let s = cluster.scenario(name).await.unwrap();
    let result = scenario(&s).await;
    s.finish(result).await;
}

prodgy_tests::scenario_tests!(run);
