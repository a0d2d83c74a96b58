//! The stack the console's browser tests drive: the operator, proxy and
//! API binaries on the Kubernetes API test server (tests/src/local.rs),
//! and `kubectl apitoken ui` connected through a written kubeconfig, as a
//! user's would be. Prints one JSON line, `{"url": the console's login URL,
//! "proxy": the proxy's base URL}`, then serves until Ctrl-C (SIGINT).
//!
//! `cargo run -p kubectl-apitoken --example console_stack`

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use kubectl_apitoken::args::GlobalArgs;
use kubectl_apitoken::ui::Bound;
use prodgy_tests::local::LocalCluster;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = LocalCluster::start()
        .await
        .context("starting the operator, proxy and API")?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    cluster.server.write_kubeconfig(&kubeconfig)?;
    let global = GlobalArgs {
        namespace: Some("default".into()),
        context: None,
        kubeconfig: Some(kubeconfig.display().to_string()),
        timeout: Duration::from_secs(30),
    };
    let session = kubectl_apitoken::connect::session(&global).await?;
    let console = Bound::bind(session, false, 0).await?;
    let line = serde_json::json!({ "url": console.url(), "proxy": cluster.proxy });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    drop(out);
    console
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
