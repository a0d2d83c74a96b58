//! Command-line flags (each with an environment variable) and the validated
//! configuration the server runs with. Bad values fail at start-up with a
//! message naming the flag.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, Result};

/// The product API served behind the token proxy.
#[derive(Parser)]
#[command(name = "prodgy-api", version, about)]
pub struct Args {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Data listener; loopback by default because the proxy is its only door.
    #[arg(
        long,
        global = true,
        env = "PRODGY_API_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: SocketAddr,
    /// Ops listener: /healthz, /readyz and /metrics only.
    #[arg(
        long,
        global = true,
        env = "PRODGY_API_OPS_LISTEN",
        default_value = "0.0.0.0:9091"
    )]
    pub ops_listen: SocketAddr,
    /// Directory for the SQLite file, local blobs and a generated key.
    #[arg(
        long,
        global = true,
        env = "PRODGY_DATA_DIR",
        default_value = "./.data"
    )]
    pub data_dir: PathBuf,
    /// `postgres://…` for shared state across replicas, or `sqlite://…`;
    /// default: `<data-dir>/prodgy.db`.
    #[arg(
        long,
        global = true,
        env = "PRODGY_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Largest number of database connections.
    #[arg(
        long,
        global = true,
        env = "PRODGY_DB_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub db_max_connections: u32,
    /// File with encryption keys (base64, 32 bytes each, one per line; the
    /// first encrypts, all decrypt).
    #[arg(long, global = true, env = "PRODGY_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Encryption keys inline (same format, comma-separated); wins over the file.
    #[arg(
        long,
        global = true,
        env = "PRODGY_ENCRYPTION_KEY",
        hide_env_values = true
    )]
    pub encryption_key: Option<String>,
    /// OpenAI-compatible base URL including `/v1`, e.g. `http://127.0.0.1:11434/v1`;
    /// without it the assistant answers from the knowledge base itself.
    #[arg(long, global = true, env = "PRODGY_OPENAI_BASE_URL")]
    pub openai_base_url: Option<String>,
    /// Bearer key for the OpenAI-compatible endpoint.
    #[arg(
        long,
        global = true,
        env = "PRODGY_OPENAI_API_KEY",
        hide_env_values = true
    )]
    pub openai_api_key: Option<String>,
    /// Model name sent to the OpenAI-compatible endpoint.
    #[arg(
        long,
        global = true,
        env = "PRODGY_OPENAI_MODEL",
        default_value = "gpt-4o-mini"
    )]
    pub openai_model: String,
    /// Where file contents live.
    #[arg(long, global = true, env = "PRODGY_OBJECT_STORE", value_enum, default_value_t = StoreKind::Local)]
    pub object_store: StoreKind,
    /// S3 bucket (with `--object-store s3`). Credentials come from the usual
    /// AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN variables.
    #[arg(long, global = true, env = "PRODGY_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3-compatible endpoint URL (MinIO, Ceph, R2…); default: AWS.
    #[arg(long, global = true, env = "PRODGY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(
        long,
        global = true,
        env = "PRODGY_S3_REGION",
        default_value = "us-east-1"
    )]
    pub s3_region: String,
    /// Key prefix inside the bucket.
    #[arg(long, global = true, env = "PRODGY_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
    /// S3 access key id (else the usual AWS credential chain).
    #[arg(long, global = true, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    /// S3 secret access key.
    #[arg(
        long,
        global = true,
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub s3_secret_access_key: Option<String>,
    /// Allow a plain-http S3 endpoint (local MinIO).
    #[arg(
        long,
        global = true,
        env = "PRODGY_S3_ALLOW_HTTP",
        default_value_t = false
    )]
    pub s3_allow_http: bool,
    /// Largest upload in bytes (413 beyond).
    #[arg(long, global = true, env = "PRODGY_MAX_UPLOAD_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// Largest JSON request body in bytes (413 beyond).
    #[arg(long, global = true, env = "PRODGY_MAX_JSON_BYTES", default_value_t = 1024 * 1024)]
    pub max_json_bytes: usize,
    /// Largest webhook event in bytes (413 beyond).
    #[arg(long, global = true, env = "PRODGY_MAX_WEBHOOK_BYTES", default_value_t = 1024 * 1024)]
    pub max_webhook_bytes: usize,
    /// How much of an uploaded text file is indexed for search.
    #[arg(long, global = true, env = "PRODGY_MAX_INDEX_BYTES", default_value_t = 256 * 1024)]
    pub max_index_bytes: usize,
    /// Execution workers in this process (0: this replica only serves HTTP).
    #[arg(long, global = true, env = "PRODGY_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// How long a worker's claim on an execution lasts without a heartbeat.
    #[arg(long, global = true, env = "PRODGY_EXECUTION_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub execution_lease: Duration,
    /// Attempts before an execution whose worker keeps dying is failed.
    #[arg(long, global = true, env = "PRODGY_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// How often idle workers look for work queued by other replicas.
    #[arg(long, global = true, env = "PRODGY_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long finished executions and received webhook events are kept
    /// (`0s`: forever). Replicas running workers delete older ones hourly.
    #[arg(long, global = true, env = "PRODGY_RETENTION", default_value = "30d", value_parser = parse_duration)]
    pub retention: Duration,
    /// Default timeout of an `http` agent's call.
    #[arg(long, global = true, env = "PRODGY_AGENT_HTTP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub agent_http_timeout: Duration,
    /// Let `http` agents call loopback, private and link-local addresses
    /// (off: only public addresses, so tokens cannot read internal services).
    #[arg(
        long,
        global = true,
        env = "PRODGY_AGENT_ALLOW_PRIVATE_NETWORKS",
        default_value_t = false
    )]
    pub agent_allow_private_networks: bool,
    /// Log format.
    #[arg(long, global = true, env = "PRODGY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets (keys, database passwords) are never printed.
        f.debug_struct("Args")
            .field("listen", &self.listen)
            .field("ops_listen", &self.ops_listen)
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Re-encrypt every stored credential with the first (newest) key, then exit.
    Reencrypt,
}

/// Object-store backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// `<data-dir>/blobs` on local disk.
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// Log formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON lines.
    Json,
    /// Human-readable.
    Text,
}

fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    prodgy_crds::duration::parse(s).map_err(|e| e.to_string())
}

/// Where blobs are stored.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// Local directory.
    Local(PathBuf),
    /// S3-compatible bucket.
    S3 {
        /// Bucket.
        bucket: String,
        /// Endpoint override.
        endpoint: Option<String>,
        /// Region.
        region: String,
        /// Key prefix.
        prefix: String,
        /// Plain HTTP allowed.
        allow_http: bool,
        /// Access key id and secret; `None`: the AWS credential chain.
        credentials: Option<(String, Secret)>,
    },
}

/// A string that never appears in Debug output (keys, database URLs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// The secret value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// An OpenAI-compatible chat backend.
#[derive(Clone, Debug)]
pub struct LlmConfig {
    /// Base URL including the version segment, without a trailing slash.
    pub base_url: String,
    /// Bearer key.
    pub api_key: Option<Secret>,
    /// Model.
    pub model: String,
}

/// Limits applied to requests.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest upload.
    pub max_upload_bytes: u64,
    /// Largest JSON body.
    pub max_json_bytes: usize,
    /// Largest webhook event.
    pub max_webhook_bytes: usize,
    /// Indexed prefix of text uploads.
    pub max_index_bytes: usize,
}

/// Execution-queue settings.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Worker tasks.
    pub workers: usize,
    /// Lease length; heartbeats renew it every third of it.
    pub lease: Duration,
    /// Attempts before failing.
    pub max_attempts: u32,
    /// Idle poll interval.
    pub poll_interval: Duration,
    /// Default timeout of an http agent call.
    pub http_timeout: Duration,
    /// Whether http agents may call non-public addresses.
    pub allow_private_networks: bool,
    /// How long finished executions and webhook events are kept (`None`:
    /// forever).
    pub retention: Option<Duration>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data listener.
    pub listen: SocketAddr,
    /// Ops listener.
    pub ops_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Database URL (may hold a password).
    pub database_url: Secret,
    /// Pool size.
    pub db_max_connections: u32,
    /// Inline keys.
    pub encryption_key: Option<Secret>,
    /// Key file.
    pub encryption_key_file: Option<PathBuf>,
    /// Chat backend.
    pub llm: Option<LlmConfig>,
    /// Blob store.
    pub store: StoreConfig,
    /// Request limits.
    pub limits: Limits,
    /// Queue settings.
    pub queue: QueueConfig,
}

impl Config {
    /// A configuration for `data_dir` with every other setting at its default.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let data_dir = data_dir.into();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ops_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: Secret(crate::db::Db::sqlite_url(&data_dir)),
            store: StoreConfig::Local(data_dir.join("blobs")),
            data_dir,
            db_max_connections: 10,
            encryption_key: None,
            encryption_key_file: None,
            llm: None,
            limits: Limits {
                max_upload_bytes: 2 * 1024 * 1024 * 1024,
                max_json_bytes: 1024 * 1024,
                max_webhook_bytes: 1024 * 1024,
                max_index_bytes: 256 * 1024,
            },
            queue: QueueConfig {
                workers: 4,
                lease: Duration::from_secs(30),
                max_attempts: 3,
                poll_interval: Duration::from_secs(1),
                http_timeout: Duration::from_secs(30),
                allow_private_networks: false,
                retention: Some(Duration::from_secs(30 * 24 * 3600)),
            },
        }
    }
}

impl Args {
    /// Validates the flags into a [`Config`].
    pub fn config(&self) -> Result<Config> {
        let mut c = Config::for_data_dir(&self.data_dir);
        c.listen = self.listen;
        c.ops_listen = self.ops_listen;
        if let Some(url) = self.database_url.as_deref().filter(|u| !u.is_empty()) {
            c.database_url = Secret(url.to_owned());
        }
        if self.db_max_connections == 0 {
            return Err(Error::Config(
                "--db-max-connections must be at least 1".into(),
            ));
        }
        c.db_max_connections = self.db_max_connections;
        c.encryption_key = self.encryption_key.clone().map(Secret);
        c.encryption_key_file = self.encryption_key_file.clone();
        c.llm = self.llm()?;
        if let Some(store) = self.s3()? {
            c.store = store;
        }
        if self.max_upload_bytes == 0 || self.max_json_bytes == 0 || self.max_webhook_bytes == 0 {
            return Err(Error::Config(
                "--max-upload-bytes, --max-json-bytes and --max-webhook-bytes must be positive"
                    .into(),
            ));
        }
        c.limits = Limits {
            max_upload_bytes: self.max_upload_bytes,
            max_json_bytes: self.max_json_bytes,
            max_webhook_bytes: self.max_webhook_bytes,
            max_index_bytes: self.max_index_bytes,
        };
        c.queue = self.queue()?;
        Ok(c)
    }

    /// The OpenAI-compatible endpoint, if one is configured.
    fn llm(&self) -> Result<Option<LlmConfig>> {
        let Some(base) = self.openai_base_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let parsed = reqwest::Url::parse(base)
            .map_err(|e| Error::Config(format!("--openai-base-url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config("--openai-base-url must be http(s)".into()));
        }
        Ok(Some(LlmConfig {
            base_url: base.trim_end_matches('/').to_owned(),
            api_key: self
                .openai_api_key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Secret),
            model: self.openai_model.clone(),
        }))
    }

    /// The S3 store, with `--object-store s3`.
    fn s3(&self) -> Result<Option<StoreConfig>> {
        if self.object_store != StoreKind::S3 {
            return Ok(None);
        }
        let bucket = self
            .s3_bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| {
                Error::Config("--s3-bucket is required with --object-store s3".into())
            })?;
        Ok(Some(StoreConfig::S3 {
            bucket,
            endpoint: self.s3_endpoint.clone().filter(|e| !e.is_empty()),
            region: self.s3_region.clone(),
            prefix: self.s3_prefix.trim_matches('/').to_owned(),
            allow_http: self.s3_allow_http,
            credentials: match (&self.s3_access_key_id, &self.s3_secret_access_key) {
                (Some(id), Some(secret)) if !id.is_empty() => {
                    Some((id.clone(), Secret(secret.clone())))
                }
                _ => None,
            },
        }))
    }

    /// The execution queue's settings.
    fn queue(&self) -> Result<QueueConfig> {
        if self.execution_lease < Duration::from_secs(1) {
            return Err(Error::Config(
                "--execution-lease must be at least 1s".into(),
            ));
        }
        if self.max_attempts == 0 {
            return Err(Error::Config("--max-attempts must be at least 1".into()));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config("--poll-interval must be positive".into()));
        }
        Ok(QueueConfig {
            workers: self.workers,
            lease: self.execution_lease,
            max_attempts: self.max_attempts,
            poll_interval: self.poll_interval,
            http_timeout: self.agent_http_timeout,
            allow_private_networks: self.agent_allow_private_networks,
            retention: Some(self.retention).filter(|r| !r.is_zero()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_sqlite_and_local_disk() {
        let args = Args::try_parse_from(["prodgy-api"]).unwrap();
        let c = args.config().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8081");
        assert_eq!(c.ops_listen.to_string(), "0.0.0.0:9091");
        assert!(c.database_url.expose().starts_with("sqlite://"));
        assert!(matches!(c.store, StoreConfig::Local(_)));
        assert!(c.llm.is_none());
        assert_eq!(c.queue.retention, Some(Duration::from_secs(30 * 24 * 3600)));
    }

    #[test]
    fn a_zero_retention_keeps_everything() {
        let retention = |v: &str| {
            Args::try_parse_from(["prodgy-api", "--retention", v])
                .map(|a| a.config().unwrap().queue.retention)
        };
        assert_eq!(retention("0s").unwrap(), None);
        assert_eq!(
            retention("12h").unwrap(),
            Some(Duration::from_secs(12 * 3600))
        );
        assert!(retention("a while").is_err());
    }

    #[test]
    fn bad_flags_name_themselves() {
        let args = Args::try_parse_from(["prodgy-api", "--object-store", "s3"]).unwrap();
        assert!(
            args.config()
                .unwrap_err()
                .to_string()
                .contains("--s3-bucket")
        );
        let args = Args::try_parse_from(["prodgy-api", "--openai-base-url", "ftp://x"]).unwrap();
        assert!(
            args.config()
                .unwrap_err()
                .to_string()
                .contains("--openai-base-url")
        );
        assert!(Args::try_parse_from(["prodgy-api", "--execution-lease", "soon"]).is_err());
        let args = Args::try_parse_from(["prodgy-api", "--max-attempts", "0"]).unwrap();
        assert!(
            args.config()
                .unwrap_err()
                .to_string()
                .contains("--max-attempts")
        );
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let args = Args::try_parse_from([
            "prodgy-api",
            "--encryption-key",
            "c2VjcmV0",
            "--openai-api-key",
            "sk-secret",
        ])
        .unwrap();
        let text = format!("{args:?} {:?}", args.config().unwrap());
        assert!(
            !text.contains("c2VjcmV0") && !text.contains("sk-secret"),
            "{text}"
        );
    }
}
