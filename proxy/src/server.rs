//! Process wiring: the pingora server with three services — the proxy, the
//! ops endpoints, and a control task that feeds the index, writes usage
//! reports and runs the shutdown sequence.
//!
//! Shutdown (SIGTERM): pingora stops accepting and closes idle keep-alive
//! connections; the control task waits until no request is in flight (or
//! `--shutdown-timeout` passes), writes the final usage reports, and exits.
//! Pingora's own grace period would otherwise sleep for its full length.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kube::Api;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use prodgy_crds::UsageReport;

use crate::config::{Config, Source, UsageConfig};
use crate::index::{IndexWriter, ProductFilter};
use crate::metrics::in_flight;
use crate::ops::Ops;
use crate::proxy::AuthProxy;
use crate::source::{self, SharedWriter};
use crate::state::State;
use crate::usage::{Reporter, new_epoch};
use crate::{Error, Result};

/// The background control task.
struct Control {
    state: Arc<State>,
    writer: SharedWriter,
    source: Source,
    usage: Option<(UsageConfig, String)>,
    shutdown_timeout: Duration,
}

async fn kube_client() -> kube::Client {
    let mut delay = Duration::from_millis(250);
    loop {
        match kube::Client::try_default().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::error!(error = %e, "no Kubernetes client configuration; retrying (not ready meanwhile)");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn flush(reporter: &mut Reporter, api: &Api<UsageReport>, state: &State) {
    let limit = reporter.write_limit();
    let cells = state.cells.snapshot();
    let result = tokio::time::timeout(limit, reporter.flush(api, &cells)).await;
    // A rotation inside the flush changes what the usage caps subtract.
    state.cells.set_epoch(reporter.epoch());
    match result {
        Ok(Ok(n)) => {
            for _ in 0..n {
                state.metrics.report_written(true);
            }
            tracing::debug!(reports = n, "usage reports written");
        }
        Ok(Err(e)) => {
            state.metrics.report_written(false);
            tracing::warn!(error = %e, "writing usage reports failed; counts are kept and retried");
        }
        Err(_) => {
            state.metrics.report_written(false);
            tracing::warn!(
                limit_ms = limit.as_millis() as u64,
                "usage report write not answered in time; it may have landed, counts are kept and retried"
            );
        }
    }
}

impl Control {
    async fn run(&self, mut shutdown: ShutdownWatch) {
        let needs_kube = matches!(self.source, Source::Kubernetes { .. }) || self.usage.is_some();
        let client = if needs_kube {
            tokio::select! {
                c = kube_client() => Some(c),
                _ = shutdown.changed() => None,
            }
        } else {
            None
        };
        match (&self.source, &client) {
            (Source::File { path, interval }, _) => {
                tokio::spawn(source::run_file(
                    self.writer.clone(),
                    path.clone(),
                    *interval,
                ));
            }
            (
                Source::Kubernetes {
                    namespace,
                    probe_interval,
                },
                Some(c),
            ) => {
                tokio::spawn(source::run_kube(
                    self.writer.clone(),
                    c.clone(),
                    namespace.clone(),
                    *probe_interval,
                ));
            }
            (Source::Kubernetes { .. }, None) => {}
        }
        let mut reporter = match (&self.usage, &client) {
            (Some((cfg, epoch)), Some(c)) => {
                tracing::info!(replica = %cfg.replica, epoch = %epoch, "usage reports enabled");
                Some((
                    Reporter::new(cfg.replica.clone(), epoch.clone(), cfg.rotate_after),
                    Api::<UsageReport>::namespaced(c.clone(), &cfg.namespace),
                    cfg.interval,
                ))
            }
            _ => None,
        };
        let mut tick = tokio::time::interval(
            reporter
                .as_ref()
                .map_or(Duration::from_secs(3600), |(_, _, i)| *i),
        );
        // After a slow flush, wait a full interval rather than catch up.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        while !*shutdown.borrow() {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some((rep, api, _)) = reporter.as_mut() {
                        // SIGTERM does not wait for a slow API: the final
                        // flush below writes the same counts.
                        tokio::select! {
                            () = flush(rep, api, &self.state) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
        self.drain().await;
        if let Some((rep, api, _)) = reporter.as_mut() {
            match tokio::time::timeout(Duration::from_secs(5), flush(rep, api, &self.state)).await {
                Ok(()) => tracing::info!("final usage reports written"),
                Err(_) => tracing::warn!("final usage report write timed out"),
            }
        }
        tracing::info!("shutdown complete");
        // Pingora would sleep out the rest of its grace period; everything is
        // drained and flushed, so end here.
        std::process::exit(0);
    }

    async fn drain(&self) {
        let started = Instant::now();
        let n = in_flight();
        tracing::info!(in_flight = n, "shutting down: draining in-flight requests");
        while in_flight() > 0 && started.elapsed() < self.shutdown_timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "shutdown timeout reached with requests still in flight"
            );
        } else {
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "drained");
        }
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.run(shutdown).await;
    }
}

fn check_bind(addr: SocketAddr, flag: &'static str) -> Result<()> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| Error::Listen { flag, addr, source })
}

/// Runs the proxy until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<()> {
    check_bind(config.listen, "listen")?;
    check_bind(config.metrics_addr, "metrics-addr")?;
    let state = Arc::new(State::default());
    let writer = Arc::new(Mutex::new(IndexWriter::new(
        state.index.clone(),
        ProductFilter::new(config.products),
    )));
    let usage = match config.usage {
        Some(u) => {
            let epoch = new_epoch()?;
            state.cells.set_epoch(&epoch);
            Some((u, epoch))
        }
        None => None,
    };

    let conf = ServerConf {
        threads: config.threads,
        work_stealing: config.work_stealing,
        // A backstop only: the control task exits once drained.
        grace_period_seconds: Some(config.shutdown_timeout.as_secs() + 10),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = Service::new(
        "prodgy proxy".to_owned(),
        AuthProxy::new(
            state.clone(),
            config.upstream,
            config.upstream_keepalive_pool,
            config.head_limits,
        )
        .with_trusted_proxies(config.trusted_proxies),
    );
    proxy.add_tcp(&config.listen.to_string());

    let mut ops = Service::new("prodgy ops".to_owned(), Ops::new(state.clone()));
    ops.threads = Some(1);
    ops.add_tcp(&config.metrics_addr.to_string());

    let control = background_service(
        "prodgy control",
        Control {
            state,
            writer,
            source: config.source,
            usage,
            shutdown_timeout: config.shutdown_timeout,
        },
    );

    server.add_service(proxy);
    server.add_service(ops);
    server.add_service(control);
    tracing::info!(
        listen = %config.listen,
        upstream = %config.upstream,
        metrics = %config.metrics_addr,
        threads = config.threads,
        "prodgy-proxy starting"
    );
    server.run(RunArgs::default());
    Ok(())
}
