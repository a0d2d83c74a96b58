//! Wiring: builds the state, binds both listeners, starts the workers and
//! the scheduler, and shuts them down.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::config::{Config, LogFormat};
use crate::crypto::{KeySource, Keyring};
use crate::db::{Db, Dialect};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::state::{AppState, Shared};
use crate::{integrations, ops, queue, router, triggers};

/// How long open connections (e.g. chat streams) may take to finish after
/// a shutdown signal.
const DRAIN: Duration = Duration::from_secs(10);

/// Builds the shared state: database (migrated), keys, blob store.
pub async fn build_state(config: Config) -> Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Config(format!("--data-dir {}: {e}", config.data_dir.display())))?;
    let db = Db::connect(config.database_url.expose(), config.db_max_connections).await?;
    // With PostgreSQL several replicas share the data, so they must share a
    // key: generating one per replica would make credentials unreadable.
    let generate = db.dialect == Dialect::Sqlite;
    let (keyring, source) = Keyring::load(
        config.encryption_key.as_ref().map(|s| s.expose()),
        config.encryption_key_file.as_deref(),
        &config.data_dir,
        generate,
    )?;
    match &source {
        KeySource::Generated(path) => tracing::warn!(
            path = %path.display(),
            key_id = keyring.primary_id(),
            "generated a new encryption key for integration credentials; back this file up"
        ),
        other => {
            tracing::info!(source = ?other, key_ids = ?keyring.key_ids(), "encryption keys loaded");
        }
    }
    let blobs = Blobs::open(&config.store)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("prodgy-api/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Internal(format!("http client: {e}")))?;
    let agent_http = crate::egress::agent_client(config.queue.allow_private_networks)?;
    Ok(AppState::new(Shared {
        db,
        keyring,
        blobs,
        config,
        metrics: Metrics::new()?,
        agent_http,
        queue_wake: tokio::sync::Notify::new(),
        http,
    }))
}

/// A running API.
#[derive(Debug)]
pub struct Server {
    /// Where the data listener is bound.
    pub addr: SocketAddr,
    /// Where the ops listener is bound.
    pub ops_addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    servers: JoinSet<()>,
    background: JoinSet<()>,
}

impl Server {
    /// Builds the state and starts serving.
    pub async fn start(config: Config) -> Result<Server> {
        let state = build_state(config).await?;
        Server::start_with(state).await
    }

    /// Starts serving with a ready state.
    pub async fn start_with(state: AppState) -> Result<Server> {
        let config = &state.config;
        let bind = |addr: SocketAddr, flag: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Config(format!("{flag} {addr}: {e}")))
        };
        let data = bind(config.listen, "--listen").await?;
        let ops = bind(config.ops_listen, "--ops-listen").await?;
        let addr = data.local_addr()?;
        let ops_addr = ops.local_addr()?;
        let shutdown = CancellationToken::new();
        let mut servers = JoinSet::new();
        for (listener, router) in [
            (data, router::app(state.clone())),
            (ops, ops::router(state.clone())),
        ] {
            let stop = shutdown.clone();
            servers.spawn(async move {
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "listener failed");
                }
            });
        }
        let mut background = queue::spawn_workers(&state, config.queue.workers, &shutdown);
        background.spawn(triggers::scheduler(state.clone(), shutdown.clone()));
        background.spawn(sweep_blobs(state.clone(), shutdown.clone()));
        if let (Some(retention), 1..) = (config.queue.retention, config.queue.workers) {
            background.spawn(queue::retention_loop(
                state.clone(),
                retention,
                shutdown.clone(),
            ));
        }
        tracing::info!(
            %addr,
            %ops_addr,
            database = ?state.db.dialect,
            store = state.blobs.kind(),
            workers = config.queue.workers,
            assistant = if config.llm.is_some() { "openai-compatible" } else { "built-in" },
            "prodgy-api listening"
        );
        Ok(Server {
            addr,
            ops_addr,
            state,
            shutdown,
            servers,
            background,
        })
    }

    /// The shared state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops gracefully: no new work is claimed, running executions get a
    /// grace period (then go back to the queue), connections drain.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        let drain = async {
            while self.background.join_next().await.is_some() {}
            while self.servers.join_next().await.is_some() {}
        };
        if tokio::time::timeout(DRAIN, drain).await.is_err() {
            tracing::warn!("connections still open after the drain period; closing them");
        }
        self.servers.abort_all();
        self.background.abort_all();
    }

    /// Stops at once, as a crash would: running executions keep their
    /// `running` row and lease (tests use this to prove recovery).
    pub fn kill(mut self) {
        self.background.abort_all();
        self.servers.abort_all();
    }
}

/// Blobs younger than this are never swept (an upload may be committing).
const ORPHAN_MIN_AGE: Duration = Duration::from_secs(3600);

/// Sweeps orphan blobs at start, then daily.
async fn sweep_blobs(state: AppState, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match state.blobs.sweep_orphans(&state.db, ORPHAN_MIN_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted orphan blobs"),
            Err(e) => tracing::warn!(error = %e, "orphan blob sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Installs the global tracing subscriber (`RUST_LOG` filters; default info).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<()> {
    let server = Server::start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Re-encrypts every stored credential with the primary key.
pub async fn reencrypt(config: Config) -> Result<u64> {
    let state = build_state(config).await?;
    let n = integrations::reencrypt(&state).await?;
    tracing::info!(
        rewritten = n,
        key_id = state.keyring.primary_id(),
        "credentials re-encrypted"
    );
    Ok(n)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
