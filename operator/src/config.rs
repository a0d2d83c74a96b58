//! Command line and environment, validated into one [`Config`]. A bad value
//! fails at start-up with a message naming the flag.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chrono::TimeDelta;
use clap::{Args, Parser, Subcommand};
use prodgy_crds::DeliveryMode;

use crate::{Error, Result, plan::PlanConfig, telemetry::LogFormat};

/// `prodgy-operator`: reconciles ApiTokens into hashed Secrets and status.
#[derive(Debug, Parser)]
#[command(name = "prodgy-operator", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// Run the operator (default) or a one-off command.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Operator settings.
    #[command(flatten)]
    pub run: RunArgs,
}

/// One-off commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Issue a token without a cluster: print the plaintext once and write a
    /// hashed record the proxy's file source can read.
    IssueOffline(IssueOfflineArgs),
    /// Once the operator is stopped (helm uninstall's post-delete hook): delete
    /// every hashed Secret and remove the cleanup finalizer from every
    /// ApiToken. Reads the operator's own flags (namespaces, tokens
    /// namespace, Lease).
    Release(ReleaseArgs),
}

/// Flags of `release`.
#[derive(Debug, Clone, Args)]
pub struct ReleaseArgs {
    /// How long to wait for the operator's replicas to give up the Lease.
    #[arg(long, default_value = "2m", value_parser = humantime_secs)]
    pub wait: Duration,
}

fn humantime_secs(s: &str) -> std::result::Result<Duration, String> {
    prodgy_crds::duration::parse(s).map_err(|e| e.to_string())
}

/// Flags of `issue-offline`.
#[derive(Debug, Clone, Args)]
pub struct IssueOfflineArgs {
    /// The ApiToken manifest (YAML or JSON).
    #[arg(long)]
    pub file: PathBuf,
    /// Where `<namespace>-<name>.json` is written.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Prefix of issued tokens.
    #[arg(long, env = "PRODGY_TOKEN_PREFIX", default_value = "prod")]
    pub token_prefix: String,
}

/// Flags of the operator itself.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Namespaces to reconcile ApiTokens in, comma separated; empty: all.
    #[arg(long, env = "PRODGY_NAMESPACES", default_value = "")]
    pub namespaces: String,
    /// Prefix of issued tokens (1-16 ASCII letters or digits).
    #[arg(long, env = "PRODGY_TOKEN_PREFIX", default_value = "prod")]
    pub token_prefix: String,
    /// Namespace of hashed Secrets and usage reports (holds nothing else).
    #[arg(
        long,
        env = "PRODGY_HASHED_SECRET_NAMESPACE",
        default_value = prodgy_crds::hashed::DEFAULT_NAMESPACE
    )]
    pub hashed_secret_namespace: String,
    /// `Secret` keeps the plaintext in the delivery Secret; `RevealOnce`
    /// deletes it after the reveal window. A token's spec.delivery.mode wins.
    #[arg(long, env = "PRODGY_DELIVERY_MODE", default_value = "Secret")]
    pub delivery_mode: String,
    /// How long a RevealOnce delivery Secret lives (e.g. 10m).
    #[arg(long, env = "PRODGY_REVEAL_WINDOW", default_value = "10m")]
    pub reveal_window: String,
    /// A usage report not updated for this long is folded and deleted.
    #[arg(long, env = "PRODGY_USAGE_REPORT_RETENTION", default_value = "2m")]
    pub usage_report_retention: String,
    /// Least time between two usage-only status writes of one token.
    #[arg(long, env = "PRODGY_USAGE_STATUS_INTERVAL", default_value = "15s")]
    pub usage_status_interval: String,
    /// Switch tokens off (spec.active: false) after this long unused, e.g.
    /// 90d; a token's spec.deactivateAfterUnused wins. Empty or 0s: never.
    #[arg(long, env = "PRODGY_DEACTIVATE_AFTER_UNUSED", default_value = "")]
    pub deactivate_after_unused: String,
    /// Warning Events this long before a token's expiresAt, comma
    /// separated (one Event each). Empty: none.
    #[arg(long, env = "PRODGY_EXPIRY_NOTICE", default_value = "7d,1d")]
    pub expiry_notice: String,
    /// Most usage-only status writes per second, over all tokens.
    #[arg(long, env = "PRODGY_STATUS_WRITE_QPS", default_value_t = 100)]
    pub status_write_qps: u32,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "PRODGY_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// Elect one active replica through a Lease.
    #[arg(
        long,
        env = "PRODGY_LEADER_ELECTION",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "PRODGY_LEASE_NAME", default_value = "prodgy-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease stays valid without renewal.
    #[arg(long, env = "PRODGY_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: String,
    /// This replica's identity in the Lease and in Events. Default: hostname.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format: `json` or `text`.
    #[arg(long, env = "PRODGY_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// The leak-report endpoint.
    #[command(flatten)]
    pub leaks: crate::leaks::LeakArgs,
}

/// Leader election settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// How long the Lease is valid without renewal.
    pub duration: Duration,
    /// The leader renews this often.
    pub renew_every: Duration,
    /// The leader steps down when it could not renew for this long (less
    /// than `duration`, so it stops before anyone else may start).
    pub renew_deadline: Duration,
    /// A candidate retries this often.
    pub retry_every: Duration,
}

impl LeaseConfig {
    /// Timings derived from the Lease duration, in client-go's proportions.
    pub fn with_duration(name: &str, namespace: &str, duration: Duration) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            duration,
            renew_every: duration / 5,
            renew_deadline: duration * 2 / 3,
            retry_every: duration / 5,
        }
    }
}

/// The validated operator configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespaces reconciled; empty means all.
    pub namespaces: Vec<String>,
    /// Prefix of issued tokens.
    pub token_prefix: String,
    /// What the planner needs.
    pub plan: PlanConfig,
    /// Usage-only status writes per second, over all tokens.
    pub status_write_qps: u32,
    /// Address of the metrics server.
    pub metrics_addr: SocketAddr,
    /// Leader election, if on.
    pub leader_election: Option<LeaseConfig>,
    /// This replica's identity.
    pub identity: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The leak-report endpoint, when on.
    pub leaks: Option<crate::leaks::LeakConfig>,
}

impl RunArgs {
    /// Validates every flag, naming the first bad one.
    pub fn validate(&self) -> Result<Config> {
        let namespaces = self
            .namespaces
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| check_name("namespaces", s))
            .collect::<Result<Vec<_>>>()?;
        prodgy_crds::token::validate_prefix(&self.token_prefix).map_err(|e| Error::Config {
            flag: "token-prefix",
            message: e.to_string(),
        })?;
        let hashed_namespace =
            check_name("hashed-secret-namespace", &self.hashed_secret_namespace)?;
        let delivery_mode = parse_mode(&self.delivery_mode)?;
        let reveal_window = positive("reveal-window", &self.reveal_window)?;
        let retention = positive("usage-report-retention", &self.usage_report_retention)?;
        let interval = positive("usage-status-interval", &self.usage_status_interval)?;
        let (deactivate_after_unused, expiry_notices) = self.notices()?;
        if self.status_write_qps == 0 {
            return Err(Error::Config {
                flag: "status-write-qps",
                message: "must be at least 1".into(),
            });
        }
        let metrics_addr = self.metrics_addr.parse().map_err(|e| Error::Config {
            flag: "metrics-addr",
            message: format!("{:?} is not host:port ({e})", self.metrics_addr),
        })?;
        let identity = self.identity()?;
        let leader_election = self.leader_election()?;
        let log_format = match self.log_format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(Error::Config {
                    flag: "log-format",
                    message: format!("{other:?}: use json or text"),
                });
            }
        };
        Ok(Config {
            namespaces,
            token_prefix: self.token_prefix.clone(),
            plan: PlanConfig {
                hashed_namespace,
                delivery_mode,
                reveal_window,
                usage_report_retention: retention,
                usage_status_interval: interval,
                deactivate_after_unused,
                expiry_notices,
            },
            status_write_qps: self.status_write_qps,
            metrics_addr,
            leader_election,
            identity,
            log_format,
            leaks: self.leaks.validate()?,
        })
    }

    /// The unused limit (off when empty or `0s`) and the expiry notices.
    fn notices(&self) -> Result<(Option<TimeDelta>, Vec<TimeDelta>)> {
        let text = self.deactivate_after_unused.trim();
        let off = text.is_empty() || prodgy_crds::duration::parse(text).is_ok_and(|d| d.is_zero());
        let unused = if off {
            None
        } else {
            Some(positive("deactivate-after-unused", text)?)
        };
        let notices = self
            .expiry_notice
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| positive("expiry-notice", s))
            .collect::<Result<Vec<_>>>()?;
        Ok((unused, notices))
    }

    /// This replica's name in the Lease.
    fn identity(&self) -> Result<String> {
        match self.identity.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => Ok(id.to_owned()),
            _ => host_name().ok_or_else(|| Error::Config {
                flag: "identity",
                message: "not set and the hostname is unavailable; set POD_NAME".into(),
            }),
        }
    }

    /// The leader-election Lease, when leader election is on.
    fn leader_election(&self) -> Result<Option<LeaseConfig>> {
        if !self.leader_election {
            return Ok(None);
        }
        let namespace = self
            .lease_namespace
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| Error::Config {
                flag: "lease-namespace",
                message: "required with leader election (set POD_NAMESPACE, or pass \
                          --leader-election=false)"
                    .into(),
            })?;
        let namespace = check_name("lease-namespace", namespace)?;
        let name = check_name("lease-name", &self.lease_name)?;
        let duration = positive_std("lease-duration", &self.lease_duration)?;
        if duration < Duration::from_secs(2) {
            return Err(Error::Config {
                flag: "lease-duration",
                message: "must be at least 2s".into(),
            });
        }
        Ok(Some(LeaseConfig::with_duration(
            &name, &namespace, duration,
        )))
    }
}

/// The machine's host name, from the environment or the kernel.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

fn parse_mode(s: &str) -> Result<DeliveryMode> {
    match s {
        "Secret" => Ok(DeliveryMode::Secret),
        "RevealOnce" => Ok(DeliveryMode::RevealOnce),
        other => Err(Error::Config {
            flag: "delivery-mode",
            message: format!("{other:?}: use Secret or RevealOnce"),
        }),
    }
}

fn positive_std(flag: &'static str, text: &str) -> Result<Duration> {
    let d = prodgy_crds::duration::parse(text).map_err(|e| Error::Config {
        flag,
        message: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(Error::Config {
            flag,
            message: "must be longer than 0s".into(),
        });
    }
    // Beyond ten years a value is surely a typo (and would overflow dates).
    if d > Duration::from_secs(3650 * 86_400) {
        return Err(Error::Config {
            flag,
            message: format!("{text:?} is too long (at most 3650d)"),
        });
    }
    Ok(d)
}

fn positive(flag: &'static str, text: &str) -> Result<TimeDelta> {
    TimeDelta::from_std(positive_std(flag, text)?).map_err(|_| Error::Config {
        flag,
        message: format!("{text:?} is too long"),
    })
}

/// Namespace and object names: DNS-1123 labels.
fn check_name(flag: &'static str, s: &str) -> Result<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(Error::Config {
            flag,
            message: format!(
                "{s:?} is not a valid Kubernetes name (lower-case letters, digits, '-')"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config> {
        let mut all = vec![
            "prodgy-operator",
            "--lease-namespace",
            "ops",
            "--identity",
            "op-0",
        ];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().run.validate()
    }

    fn flag_of(r: Result<Config>) -> &'static str {
        match r {
            Err(Error::Config { flag, .. }) => flag,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).unwrap();
        assert!(c.namespaces.is_empty());
        assert_eq!(c.token_prefix, "prod");
        assert_eq!(c.plan.hashed_namespace, "prodgy-tokens");
        assert_eq!(c.plan.delivery_mode, DeliveryMode::Secret);
        assert_eq!(c.plan.reveal_window, TimeDelta::minutes(10));
        assert_eq!(c.plan.usage_report_retention, TimeDelta::minutes(2));
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:8080");
        let lease = c.leader_election.unwrap();
        assert_eq!(
            (lease.name.as_str(), lease.namespace.as_str()),
            ("prodgy-operator", "ops")
        );
        assert!(lease.renew_deadline < lease.duration);
        assert_eq!(c.identity, "op-0");
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn values_are_parsed() {
        let c = parse(&[
            "--namespaces",
            "team-a, team-b",
            "--delivery-mode",
            "RevealOnce",
            "--reveal-window",
            "30s",
            "--leader-election=false",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(c.namespaces, ["team-a", "team-b"]);
        assert_eq!(c.plan.delivery_mode, DeliveryMode::RevealOnce);
        assert_eq!(c.plan.reveal_window, TimeDelta::seconds(30));
        assert!(c.leader_election.is_none());
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert_eq!(flag_of(parse(&["--namespaces", "Team_A"])), "namespaces");
        assert_eq!(flag_of(parse(&["--token-prefix", "pr_d"])), "token-prefix");
        assert_eq!(
            flag_of(parse(&["--delivery-mode", "email"])),
            "delivery-mode"
        );
        assert_eq!(flag_of(parse(&["--reveal-window", "ten"])), "reveal-window");
        assert_eq!(flag_of(parse(&["--reveal-window", "0s"])), "reveal-window");
        assert_eq!(
            flag_of(parse(&["--reveal-window", "3651d"])),
            "reveal-window"
        );
        assert_eq!(
            flag_of(parse(&["--usage-report-retention", "2x"])),
            "usage-report-retention"
        );
        assert_eq!(flag_of(parse(&["--metrics-addr", "8080"])), "metrics-addr");
        assert_eq!(flag_of(parse(&["--log-format", "xml"])), "log-format");
        assert_eq!(
            flag_of(parse(&["--lease-duration", "1s"])),
            "lease-duration"
        );
        assert_eq!(
            flag_of(parse(&["--status-write-qps", "0"])),
            "status-write-qps"
        );
        let no_ns = Cli::try_parse_from(["prodgy-operator", "--identity", "x"])
            .unwrap()
            .run
            .validate();
        assert_eq!(flag_of(no_ns), "lease-namespace");
    }

    #[test]
    fn lifecycle_notice_flags_default_off_and_weekly_daily() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.plan.deactivate_after_unused, None);
        assert_eq!(
            c.plan.expiry_notices,
            [TimeDelta::days(7), TimeDelta::days(1)]
        );
        let c = parse(&[
            "--deactivate-after-unused",
            "90d",
            "--expiry-notice",
            "3d, 12h",
        ])
        .unwrap();
        assert_eq!(c.plan.deactivate_after_unused, Some(TimeDelta::days(90)));
        assert_eq!(
            c.plan.expiry_notices,
            [TimeDelta::days(3), TimeDelta::hours(12)]
        );
        let off = parse(&["--deactivate-after-unused", "0s", "--expiry-notice", ""]).unwrap();
        assert_eq!(off.plan.deactivate_after_unused, None);
        assert!(off.plan.expiry_notices.is_empty());
        for (flag, bad) in [
            ("deactivate-after-unused", "90 days"),
            ("deactivate-after-unused", "3651d"),
            ("expiry-notice", "7d,x"),
            ("expiry-notice", "0s"),
        ] {
            assert_eq!(flag_of(parse(&[&format!("--{flag}"), bad])), flag, "{bad}");
        }
    }

    #[test]
    fn issue_offline_parses_its_own_flags() {
        let cli = Cli::try_parse_from([
            "prodgy-operator",
            "issue-offline",
            "--file",
            "t.yaml",
            "--out-dir",
            "out",
            "--token-prefix",
            "acme",
        ])
        .unwrap();
        match cli.command {
            Some(Command::IssueOffline(a)) => {
                assert_eq!(a.token_prefix, "acme");
                assert_eq!(a.out_dir, PathBuf::from("out"));
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn release_reads_the_operators_flags_and_its_wait() {
        let cli = Cli::try_parse_from([
            "prodgy-operator",
            "--hashed-secret-namespace",
            "vault",
            "--leader-election=false",
            "release",
            "--wait",
            "30s",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Release(a)) => assert_eq!(a.wait, Duration::from_secs(30)),
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(cli.run.validate().unwrap().plan.hashed_namespace, "vault");
        assert!(Cli::try_parse_from(["prodgy-operator", "release", "--wait", "soon"]).is_err());
    }
}
