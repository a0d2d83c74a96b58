//! The stack the console's browser tests drive: the operator, proxy and
//! API binaries on the Kubernetes API test server (tests/src/local.rs),
//! and `kubectl apitoken ui` connected through a written kubeconfig, as a
//! user's would be. Prints one JSON line, `{"url": the console's login URL,
//! "proxy": the proxy's base URL}`, then serves until Ctrl-C (SIGINT).
//! A line `down` on standard input makes the Kubernetes API unreachable
//! (connections reset), `up` brings it back.
//!
//! `cargo run -p kubectl-apitoken --example console_stack`

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use kubectl_apitoken::args::GlobalArgs;
use kubectl_apitoken::ui::Bound;
use prodgy_kube_fake::FakeApiServer;
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
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = switch_on_stdin(&cluster.server) => {}
            }
        })
        .await?;
    Ok(())
}

/// Turns the Kubernetes API off and on as standard input says; never
/// returns, also not once the input has ended.
///
/// Standard input is read on a thread of its own: a read blocked in
/// tokio's blocking pool would keep the runtime, and so the process, from
/// ending after Ctrl-C until the input closed.
async fn switch_on_stdin(server: &FakeApiServer) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match line.trim() {
            "down" => server.set_available(false),
            "up" => server.set_available(true),
            _ => {}
        }
    }
    std::future::pending::<()>().await;
}
