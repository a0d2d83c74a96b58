//! Process wiring: the ops server, leader election and the reconcilers,
//! started from a validated [`Config`] and stopped by a signal or a test.

use std::{net::SocketAddr, sync::Arc};

use kube::Client;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    Error, Result,
    config::{Cli, Command, Config},
    controller, leaks, lease,
    metrics::{self, Metrics},
    offline, release, telemetry,
};

/// A running operator.
#[derive(Debug)]
pub struct Running {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Where leak reports are accepted, when the endpoint is on.
    pub leaks_addr: Option<SocketAddr>,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// Stops gracefully: in-flight reconciles finish, the Lease is released.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.join().await
    }

    /// Waits for the operator to end by itself (it only does on error or
    /// after [`Running::shutdown_token`] fires).
    pub async fn join(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::Leadership(format!("operator task failed: {e}")))?
    }

    /// Ends the operator at once, as a crash would (nothing is released).
    pub fn kill(self) {
        self.task.abort();
    }

    /// Cancelling it stops the operator.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the operator on the current Tokio runtime.
pub async fn start(client: Client, cfg: Config) -> Result<Running> {
    let metrics = Metrics::new()?;
    let shutdown = CancellationToken::new();
    let (metrics_addr, serve) =
        metrics::bind(cfg.metrics_addr, metrics.clone(), shutdown.clone()).await?;
    let (leaks_addr, leaks) = match cfg.leaks.clone() {
        Some(l) => {
            let ns = &cfg.plan.hashed_namespace;
            let (addr, serve) =
                leaks::bind(client.clone(), l, ns, metrics.clone(), shutdown.clone()).await?;
            (Some(addr), Some(serve))
        }
        None => (None, None),
    };
    let cfg = Arc::new(cfg);
    let m = metrics.clone();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let server = tokio::spawn(serve);
        let leak_server = leaks.map(tokio::spawn);
        let result = match cfg.leader_election.clone() {
            Some(lease_cfg) => {
                let (client, cfg2, m2) = (client.clone(), cfg.clone(), m.clone());
                lease::run(
                    client.clone(),
                    lease_cfg,
                    cfg.identity.clone(),
                    m.clone(),
                    stop.clone(),
                    move |term| controller::run(client.clone(), cfg2.clone(), m2.clone(), term),
                )
                .await
            }
            None => {
                m.set_leader(true);
                let r = controller::run(client, cfg.clone(), m.clone(), stop.clone()).await;
                m.set_leader(false);
                r
            }
        };
        stop.cancel();
        let _ = server.await;
        if let Some(s) = leak_server {
            let _ = s.await;
        }
        result
    });
    info!(%metrics_addr, "operator started");
    Ok(Running {
        metrics_addr,
        leaks_addr,
        metrics,
        shutdown,
        task,
    })
}

/// The binary's body: `issue-offline`, or the operator until SIGTERM/SIGINT.
pub async fn run_cli(cli: Cli) -> Result<()> {
    match &cli.command {
        Some(Command::IssueOffline(args)) => {
            return offline::run(
                args,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            );
        }
        Some(Command::Release(args)) => {
            let cfg = cli.run.validate()?;
            telemetry::init(cfg.log_format);
            let client = Client::try_default().await?;
            release::run(client, &cfg, args.wait).await?;
            return Ok(());
        }
        None => {}
    }
    let cfg = cli.run.validate()?;
    telemetry::init(cfg.log_format);
    let client = Client::try_default().await?;
    let running = start(client, cfg).await?;
    let shutdown = running.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received; shutting down");
        shutdown.cancel();
    });
    let result = running.join().await;
    if let Err(e) = &result {
        error!(error = %e, "operator stopped");
    }
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
