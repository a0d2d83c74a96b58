//! The pingora sidecar that enforces ApiTokens and counts their usage.
//!
//! A request's path: [`auth`] reads the bearer token (shape and checksum, no
//! lookup), [`index`] finds its SHA-256 digest (constant-time compare) and
//! the record decides state, expiry, product and scope, [`cells`] holds the
//! token's rate bucket and counters, [`proxy`] strips the credential and any
//! client-sent identity headers and injects the verified identity. The index
//! is fed by [`source`] (a Kubernetes watch of hashed Secrets, or JSON files);
//! [`usage`] writes UsageReports; [`ops`] serves `/metrics`, `/healthz` and
//! `/readyz`; [`server`] wires it all into one pingora server.

pub mod auth;
pub mod cells;
pub mod clock;
pub mod config;
pub mod index;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod quota;
pub mod server;
pub mod source;
pub mod state;
pub mod usage;
pub mod verdict;

pub use config::{Args, Config};

/// Errors of the proxy. Messages never contain a plaintext token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has an unusable value; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// A token record cannot be used.
    #[error("invalid token record: {0}")]
    InvalidRecord(String),
    /// The token source could not be read.
    #[error("token source: {0}")]
    Source(String),
    /// A Kubernetes API call failed.
    #[error("kubernetes: {0}")]
    Kube(String),
    /// Logging could not be set up.
    #[error("logging: {0}")]
    Logging(String),
}

/// Result alias of the proxy crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Sets up logging to stderr. `RUST_LOG` picks levels (default `info`), but
/// the HTTP libraries are capped at `info`: at debug level they print raw
/// request heads, which would include bearer tokens.
pub fn init_logging(format: config::LogFormat) -> Result<()> {
    use tracing_subscriber::EnvFilter;
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for cap in [
        "pingora=info",
        "pingora_core=info",
        "pingora_proxy=info",
        "pingora_http=info",
        "h2=info",
        "hyper=info",
        "hyper_util=info",
    ] {
        let directive = cap
            .parse()
            .map_err(|e| Error::Logging(format!("{cap}: {e}")))?;
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
    res.map_err(|e| Error::Logging(e.to_string()))
}

/// Validates the flags, sets up logging and runs the proxy until shutdown.
pub fn run(args: Args) -> Result<()> {
    let config = args.validate()?;
    init_logging(config.log_format)?;
    server::run(config)
}
