//! The pingora sidecar that enforces ApiTokens and counts their usage.
//!
//! A request's path: [`auth`] reads the bearer token (shape and checksum, no
//! lookup), [`index`] finds its SHA-256 digest (constant-time compare) and
//! the record decides state, expiry, source ranges ([`client_addr`] names
//! the client), product and scope, [`cells`] holds the
//! token's rate bucket and counters, [`proxy`] strips the credential and any
//! client-sent identity headers and injects the verified identity. The index
//! is fed by [`source`] (a Kubernetes watch of hashed Secrets, or JSON files,
//! streamed by [`array`]);
//! [`usage`] writes UsageReports; [`ops`] serves `/metrics`, `/healthz` and
//! `/readyz`; [`server`] wires it all into one pingora server.

pub mod array;
pub mod auth;
pub mod cells;
pub mod client_addr;
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
pub mod uid;
pub mod usage;
pub mod verdict;

pub use config::{Args, Config};

/// Errors of the proxy: each keeps its cause as its `source()`. Messages
/// never contain a plaintext token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag has an unusable value; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// A listening address given by a flag cannot be bound.
    #[error("--{flag}: cannot listen on {addr}: {source}")]
    Listen {
        /// The flag, without the dashes.
        flag: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A token record breaks a rule of the proxy's own.
    #[error("invalid token record: {0}")]
    InvalidRecord(&'static str),
    /// The contract crate refused a record or digest.
    #[error(transparent)]
    Contract(#[from] prodgy_crds::Error),
    /// A token file or directory could not be read.
    #[error("token source {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A token file is not JSON (one record) or not a JSON array.
    #[error("token source {}: {source}", path.display())]
    Json {
        /// The file.
        path: std::path::PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A token file's array is cut short or followed by something.
    #[error("token source {}: {message}", path.display())]
    Array {
        /// The file.
        path: std::path::PathBuf,
        /// What the scanner found.
        message: String,
    },
    /// The blocking task that loads the token files failed.
    #[error("token source: load task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A Kubernetes API call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A usage report was deleted while this process still wrote it.
    #[error("usage report {name} was retired while in use; its counts go out in epoch {epoch}")]
    ReportRetired {
        /// The report.
        name: String,
        /// The epoch the counts move to.
        epoch: String,
    },
    /// The OS random source failed.
    #[error("random source failed: {0}")]
    Random(#[from] getrandom::Error),
    /// A built-in log filter directive does not parse.
    #[error("logging: {directive}: {source}")]
    LogFilter {
        /// The directive.
        directive: &'static str,
        /// The parser's error.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global logger was already installed.
    #[error("logging: {0}")]
    LogInit(#[source] Box<dyn std::error::Error + Send + Sync>),
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
        let directive = cap.parse().map_err(|source| Error::LogFilter {
            directive: cap,
            source,
        })?;
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match format {
        config::LogFormat::Json => builder.json().flatten_event(true).try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
    res.map_err(Error::LogInit)
}

/// Validates the flags, sets up logging and runs the proxy until shutdown.
pub fn run(args: Args) -> Result<()> {
    let config = args.validate()?;
    init_logging(config.log_format)?;
    server::run(config)
}
