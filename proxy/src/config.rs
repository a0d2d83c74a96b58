//! Command-line flags (each with an environment variable) and their
//! validation into one [`Config`]. Bad values fail at start-up with a message
//! naming the flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::auth::Reason;
use crate::{Error, Result};

/// Where hashed token records come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// Watch hashed Secrets in `--hashed-secret-namespace`.
    Kubernetes,
    /// Read HashedRecord JSON from `--tokens-path`, reloaded on change.
    File,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The pingora sidecar that enforces ApiTokens in front of the product API.
#[derive(Debug, Parser)]
#[command(name = "prodgy-proxy", version, about)]
pub struct Args {
    /// Address the proxy listens on.
    #[arg(long, env = "PRODGY_PROXY_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: String,
    /// The API, `host:port` (plain HTTP, normally on loopback).
    #[arg(long, env = "PRODGY_UPSTREAM", default_value = "127.0.0.1:8081")]
    pub upstream: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "PRODGY_PROXY_METRICS_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_addr: String,
    /// Token source.
    #[arg(long, env = "PRODGY_SOURCE", value_enum, default_value = "kubernetes")]
    pub source: SourceKind,
    /// Namespace of the hashed Secrets (and of the UsageReports written).
    #[arg(long, env = "PRODGY_HASHED_SECRET_NAMESPACE", default_value = prodgy_crds::hashed::DEFAULT_NAMESPACE)]
    pub hashed_secret_namespace: String,
    /// File source: a JSON file (one HashedRecord or an array) or a directory of `*.json`.
    #[arg(long, env = "PRODGY_TOKENS_PATH")]
    pub tokens_path: Option<PathBuf>,
    /// Products served, comma-separated; empty serves every product.
    #[arg(long, env = "PRODGY_PRODUCTS", value_delimiter = ',')]
    pub products: Vec<String>,
    /// Write UsageReport objects (kubernetes source only).
    #[arg(long, env = "PRODGY_USAGE_REPORTS")]
    pub usage_reports: bool,
    /// How often usage reports are written (e.g. `10s`).
    #[arg(long, env = "PRODGY_USAGE_FLUSH_INTERVAL", default_value = "10s")]
    pub usage_flush_interval: String,
    /// The operator's `--usage-report-retention`: after half of it without
    /// an acknowledged write, the proxy reads its reports back and reports
    /// under a new epoch if one is gone or that old, so counts the operator
    /// may have folded meanwhile are not reported twice. A flush waits for
    /// the API at most a quarter of it.
    #[arg(long, env = "PRODGY_USAGE_REPORT_RETENTION", default_value = "2m")]
    pub usage_report_retention: String,
    /// This replica's name, used in usage report names (default: hostname).
    #[arg(long, env = "POD_NAME")]
    pub replica: Option<String>,
    /// Proxy worker threads (default: available cores).
    #[arg(long, env = "PRODGY_PROXY_THREADS")]
    pub threads: Option<usize>,
    /// Log format.
    #[arg(long, env = "PRODGY_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// File source: how often the path is checked for changes (`500ms`, `1s`).
    #[arg(long, env = "PRODGY_RELOAD_INTERVAL", default_value = "1s")]
    pub reload_interval: String,
    /// Kubernetes source: how often API reachability is probed between
    /// watch events (feeds the staleness metric).
    #[arg(long, env = "PRODGY_SYNC_PROBE_INTERVAL", default_value = "5s")]
    pub sync_probe_interval: String,
    /// Longest wait for in-flight requests on SIGTERM before exiting.
    #[arg(long, env = "PRODGY_SHUTDOWN_TIMEOUT", default_value = "25s")]
    pub shutdown_timeout: String,
    /// Let idle worker threads take over other threads' connections. `false`
    /// runs one single-threaded runtime per thread (less cross-thread work,
    /// more throughput when the load is even).
    #[arg(long, env = "PRODGY_PROXY_WORK_STEALING", default_value_t = true, action = ArgAction::Set)]
    pub work_stealing: bool,
    /// Idle keep-alive connections kept to the upstream.
    #[arg(long, env = "PRODGY_UPSTREAM_KEEPALIVE_POOL", default_value_t = 1024)]
    pub upstream_keepalive_pool: usize,
    /// Largest request head (request line, header lines and their line
    /// ends) in bytes; beyond it, 431. Envoy's default.
    #[arg(long, env = "PRODGY_PROXY_MAX_REQUEST_HEAD_BYTES", default_value_t = HeadLimits::DEFAULT.bytes)]
    pub max_request_head_bytes: usize,
    /// Most header fields in a request (repeats counted); beyond it, 431.
    /// Envoy's 100 less the identity headers the proxy adds.
    #[arg(long, env = "PRODGY_PROXY_MAX_REQUEST_HEADERS", default_value_t = HeadLimits::DEFAULT.headers)]
    pub max_request_headers: usize,
    /// Proxies in front of this one (CIDRs, comma-separated) whose
    /// `X-Forwarded-For` / `Forwarded` headers name the client for source
    /// ranges. Empty: the TCP peer is the client.
    #[arg(long, env = "PRODGY_PROXY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

/// Bounds on a request head, answered with 431 beyond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes from the request line's first byte to the blank line's end.
    pub bytes: usize,
    /// Header fields, repeats counted.
    pub headers: usize,
}

impl HeadLimits {
    /// Envoy's head size (`max_request_headers_kb` 60). For the count,
    /// Envoy's `max_headers_count` (100) less 4: the proxy adds four
    /// identity headers (and drops `Authorization`), and the API's HTTP
    /// server (hyper) answers more than 100 with an empty 431 of its own.
    pub const DEFAULT: Self = Self {
        bytes: 60 * 1024,
        headers: 96,
    };
    /// The largest values pingora's parser can honour: it refuses heads over
    /// 1 MiB and more than 256 headers itself (also answered with 431).
    pub const CEILING: Self = Self {
        bytes: 1_048_575,
        headers: 256,
    };

    /// The bound a head of `bytes` with `headers` fields is over, if any.
    pub fn exceeded(self, bytes: usize, headers: usize) -> Option<Reason> {
        if bytes > self.bytes {
            Some(Reason::HeadTooLarge)
        } else if headers > self.headers {
            Some(Reason::TooManyHeaders)
        } else {
            None
        }
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Proxy listen address.
    pub listen: SocketAddr,
    /// Upstream address, resolved once at start.
    pub upstream: SocketAddr,
    /// Metrics listen address.
    pub metrics_addr: SocketAddr,
    /// Token source.
    pub source: Source,
    /// Products served (empty: all).
    pub products: Vec<String>,
    /// Usage reporting, when enabled.
    pub usage: Option<UsageConfig>,
    /// Worker threads.
    pub threads: usize,
    /// Log format.
    pub log_format: LogFormat,
    /// Drain limit on SIGTERM.
    pub shutdown_timeout: Duration,
    /// Upstream keep-alive pool size.
    pub upstream_keepalive_pool: usize,
    /// Work-stealing runtime.
    pub work_stealing: bool,
    /// Request head bounds.
    pub head_limits: HeadLimits,
    /// Peers whose forwarding headers are believed (`--trusted-proxies`).
    pub trusted_proxies: Vec<prodgy_crds::SourceRange>,
}

/// The validated token source.
#[derive(Clone, Debug)]
pub enum Source {
    /// Watch hashed Secrets.
    Kubernetes {
        /// Their namespace.
        namespace: String,
        /// Reachability probe interval.
        probe_interval: Duration,
    },
    /// Read JSON files.
    File {
        /// File or directory.
        path: PathBuf,
        /// Poll interval.
        interval: Duration,
    },
}

/// Usage reporting settings.
#[derive(Clone, Debug)]
pub struct UsageConfig {
    /// Namespace the reports are written to.
    pub namespace: String,
    /// Replica name.
    pub replica: String,
    /// Flush interval.
    pub interval: Duration,
    /// Gap without a successful write after which a new epoch starts.
    pub rotate_after: Duration,
}

/// Parses `500ms` or a Go-style duration (`10s`, `1m30s`).
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    let bad = || {
        Error::Config(format!(
            "--{flag}: {s:?} is not a duration (e.g. 500ms, 10s, 1m)"
        ))
    };
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| bad());
    }
    prodgy_crds::duration::parse(s).map_err(|_| bad())
}

fn addr(flag: &str, s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::Config(format!("--{flag}: {s:?} is not a host:port that resolves")))
}

/// Refuses `--{flag}` when it names the socket `--listen` binds: two
/// listeners there cannot both bind (the ops port would answer the proxy's
/// traffic while the other one retries), and an upstream there is a loop.
fn apart(flag: &str, a: SocketAddr, listen: SocketAddr) -> Result<()> {
    let same_ip = a.ip() == listen.ip() || a.ip().is_unspecified() || listen.ip().is_unspecified();
    if a.port() == listen.port() && same_ip {
        return Err(Error::Config(format!(
            "--{flag} {a} is the socket --listen {listen} binds; give it another port"
        )));
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "proxy".to_owned())
}

impl Args {
    /// Validates the flags.
    pub fn validate(self) -> Result<Config> {
        let source = self.source()?;
        let usage = self.usage()?;
        let threads = match self.threads {
            Some(0) => return Err(Error::Config("--threads must be at least 1".into())),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        let head_limits = HeadLimits {
            bytes: bounded(
                "max-request-head-bytes",
                self.max_request_head_bytes,
                1024,
                HeadLimits::CEILING.bytes,
            )?,
            headers: bounded(
                "max-request-headers",
                self.max_request_headers,
                1,
                HeadLimits::CEILING.headers,
            )?,
        };
        let listen = addr("listen", &self.listen)?;
        let upstream = addr("upstream", &self.upstream)?;
        let metrics_addr = addr("metrics-addr", &self.metrics_addr)?;
        apart("metrics-addr", metrics_addr, listen)?;
        apart("upstream", upstream, listen)?;
        Ok(Config {
            listen,
            upstream,
            metrics_addr,
            source,
            products: self
                .products
                .into_iter()
                .filter(|p| !p.trim().is_empty())
                .collect(),
            usage,
            threads,
            log_format: self.log_format,
            shutdown_timeout: parse_duration("shutdown-timeout", &self.shutdown_timeout)?,
            upstream_keepalive_pool: self.upstream_keepalive_pool,
            work_stealing: self.work_stealing,
            head_limits,
            trusted_proxies: trusted_proxies(&self.trusted_proxies)?,
        })
    }

    /// Where tokens come from.
    fn source(&self) -> Result<Source> {
        Ok(match self.source {
            SourceKind::Kubernetes => {
                if self.hashed_secret_namespace.is_empty() {
                    return Err(Error::Config(
                        "--hashed-secret-namespace must not be empty".into(),
                    ));
                }
                Source::Kubernetes {
                    namespace: self.hashed_secret_namespace.clone(),
                    probe_interval: parse_duration(
                        "sync-probe-interval",
                        &self.sync_probe_interval,
                    )?,
                }
            }
            SourceKind::File => Source::File {
                path: self.tokens_path.clone().ok_or_else(|| {
                    Error::Config("--tokens-path is required with --source file".into())
                })?,
                interval: parse_duration("reload-interval", &self.reload_interval)?,
            },
        })
    }

    /// The usage reporter, with `--usage-reports`.
    fn usage(&self) -> Result<Option<UsageConfig>> {
        Ok(if self.usage_reports {
            if self.source != SourceKind::Kubernetes {
                return Err(Error::Config(
                    "--usage-reports needs --source kubernetes".into(),
                ));
            }
            let interval = parse_duration("usage-flush-interval", &self.usage_flush_interval)?;
            if interval.is_zero() {
                return Err(Error::Config(
                    "--usage-flush-interval must be above zero".into(),
                ));
            }
            let retention = parse_duration("usage-report-retention", &self.usage_report_retention)?;
            if retention / 2 <= interval {
                return Err(Error::Config(format!(
                    "--usage-report-retention ({}) must be more than twice --usage-flush-interval ({}), or live reports would be retired",
                    self.usage_report_retention, self.usage_flush_interval
                )));
            }
            Some(UsageConfig {
                rotate_after: retention / 2,
                namespace: self.hashed_secret_namespace.clone(),
                replica: self
                    .replica
                    .clone()
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(hostname),
                interval,
            })
        } else {
            None
        })
    }
}

/// `--trusted-proxies`: canonical CIDRs, blanks between commas ignored.
fn trusted_proxies(list: &[String]) -> Result<Vec<prodgy_crds::SourceRange>> {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| {
            prodgy_crds::SourceRange::parse(s)
                .map_err(|e| Error::Config(format!("--trusted-proxies: {e}")))
        })
        .collect()
}

fn bounded(flag: &str, value: usize, min: usize, max: usize) -> Result<usize> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Error::Config(format!(
            "--{flag}: {value} is outside {min}..={max}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["prodgy-proxy"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = args(&[]).validate().unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(c.upstream.to_string(), "127.0.0.1:8081");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9090");
        assert!(
            matches!(c.source, Source::Kubernetes { ref namespace, .. } if namespace == "prodgy-tokens")
        );
        assert!(c.usage.is_none() && c.products.is_empty() && c.threads >= 1);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(
            c.head_limits,
            HeadLimits {
                bytes: 61_440,
                headers: 96
            }
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: [(&[&str], &str); 15] = [
            (&["--metrics-addr", "127.0.0.1:8000"], "--metrics-addr"),
            (
                &["--listen", "127.0.0.1:9090", "--metrics-addr", "[::]:9090"],
                "--metrics-addr",
            ),
            (&["--upstream", "127.0.0.1:8000"], "--upstream"),
            (
                &["--trusted-proxies", "10.0.0.0/8,10.0.0.1"],
                "--trusted-proxies",
            ),
            (&["--trusted-proxies", "10.1.0.0/8"], "--trusted-proxies"),
            (
                &["--max-request-head-bytes", "100"],
                "--max-request-head-bytes",
            ),
            (
                &["--max-request-head-bytes", "2000000"],
                "--max-request-head-bytes",
            ),
            (&["--max-request-headers", "257"], "--max-request-headers"),
            (&["--source", "file"], "--tokens-path"),
            (
                &["--source", "file", "--tokens-path", "/x", "--usage-reports"],
                "--usage-reports",
            ),
            (
                &["--usage-reports", "--usage-flush-interval", "soon"],
                "--usage-flush-interval",
            ),
            (
                &["--usage-reports", "--usage-report-retention", "20s"],
                "--usage-report-retention",
            ),
            (&["--threads", "0"], "--threads"),
            (&["--upstream", "nowhere"], "--upstream"),
            (&["--shutdown-timeout=-1s"], "--shutdown-timeout"),
        ];
        for (a, flag) in cases {
            let e = args(a).validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{a:?}: {e}");
        }
    }

    #[test]
    fn head_limits_refuse_one_past_each_bound() {
        let l = HeadLimits {
            bytes: 2048,
            headers: 10,
        };
        assert_eq!(l.exceeded(2048, 10), None);
        assert_eq!(l.exceeded(2049, 10), Some(Reason::HeadTooLarge));
        assert_eq!(l.exceeded(2048, 11), Some(Reason::TooManyHeaders));
        assert_eq!(l.exceeded(4096, 20), Some(Reason::HeadTooLarge));
    }

    #[test]
    fn durations_accept_milliseconds_and_go_style() {
        assert_eq!(
            parse_duration("x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            parse_duration("x", "1m30s").unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_duration("x", "1.5s").is_err());
    }

    #[test]
    fn trusted_proxies_are_canonical_cidrs() {
        let c = args(&["--trusted-proxies", "10.0.0.0/8, ,2001:db8::/32"])
            .validate()
            .unwrap();
        let shown: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "2001:db8::/32"]);
    }

    #[test]
    fn products_and_usage_are_parsed() {
        let c = args(&[
            "--products",
            "acme,beta",
            "--usage-reports",
            "--replica",
            "pod-1",
        ])
        .validate()
        .unwrap();
        assert_eq!(c.products, ["acme", "beta"]);
        let u = c.usage.unwrap();
        assert_eq!(u.rotate_after, Duration::from_secs(60));
        assert_eq!(
            (u.replica.as_str(), u.interval),
            ("pod-1", Duration::from_secs(10))
        );
    }
}
