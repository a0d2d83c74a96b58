//! The leak-report flags, validated into one [`LeakConfig`] (or none: the
//! endpoint is off unless `--leak-reports-addr` is set).

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use clap::Args;

use super::{decide::LeakAction, verify::Verifier};
use crate::{Error, Result};

/// Flags of the leak-report endpoint.
#[derive(Debug, Clone, Args)]
pub struct LeakArgs {
    /// Address of the leak-report endpoint (`POST /leak-reports`), e.g.
    /// `0.0.0.0:8090`. Empty: off.
    #[arg(long, env = "PRODGY_LEAK_REPORTS_ADDR", default_value = "")]
    pub leak_reports_addr: String,
    /// JSON key list of the scanner (`{"public_keys":[{"key_identifier",
    /// "key"}]}`, keys in PEM) whose ECDSA signatures are accepted.
    #[arg(long, env = "PRODGY_LEAK_PUBLIC_KEYS_FILE")]
    pub leak_public_keys_file: Option<PathBuf>,
    /// File holding the shared secret of in-house scanners (HMAC-SHA256 of
    /// the body in `X-Prodgy-Signature-256`).
    #[arg(long, env = "PRODGY_LEAK_SHARED_SECRET_FILE")]
    pub leak_shared_secret_file: Option<PathBuf>,
    /// What a reported token of ours gets: `revoke` (permanent) or `deactivate`.
    #[arg(long, env = "PRODGY_LEAK_ACTION", default_value = "revoke")]
    pub leak_action: String,
    /// Largest accepted report body, in bytes.
    #[arg(long, env = "PRODGY_LEAK_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub leak_max_body_bytes: usize,
    /// Most tokens accepted in one report.
    #[arg(long, env = "PRODGY_LEAK_MAX_TOKENS", default_value_t = 1000)]
    pub leak_max_tokens: usize,
    /// Reports accepted per second (and burst), over all senders.
    #[arg(long, env = "PRODGY_LEAK_REPORTS_PER_SECOND", default_value_t = 10)]
    pub leak_reports_per_second: u32,
}

/// The validated settings of the leak-report endpoint.
#[derive(Clone, Debug)]
pub struct LeakConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Accepted keys and secret.
    pub verifier: Arc<Verifier>,
    /// What a match gets.
    pub action: LeakAction,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Most tokens per report.
    pub max_tokens: usize,
    /// Reports per second.
    pub per_second: u32,
}

impl LeakArgs {
    /// Validates the flags; `None` when the endpoint is off.
    pub fn validate(&self) -> Result<Option<LeakConfig>> {
        let bad = |flag, message: String| Error::Config { flag, message };
        let action = LeakAction::parse(&self.leak_action).ok_or_else(|| {
            bad(
                "leak-action",
                format!("{:?}: use revoke or deactivate", self.leak_action),
            )
        })?;
        if self.leak_reports_addr.trim().is_empty() {
            if self.leak_public_keys_file.is_some() || self.leak_shared_secret_file.is_some() {
                return Err(bad(
                    "leak-reports-addr",
                    "required with --leak-public-keys-file or --leak-shared-secret-file".into(),
                ));
            }
            return Ok(None);
        }
        let addr = self.leak_reports_addr.parse().map_err(|e| {
            bad(
                "leak-reports-addr",
                format!("{:?} is not host:port ({e})", self.leak_reports_addr),
            )
        })?;
        for (flag, value) in [
            ("leak-max-body-bytes", self.leak_max_body_bytes),
            ("leak-max-tokens", self.leak_max_tokens),
            (
                "leak-reports-per-second",
                self.leak_reports_per_second as usize,
            ),
        ] {
            if value == 0 {
                return Err(bad(flag, "must be at least 1".into()));
            }
        }
        Ok(Some(LeakConfig {
            addr,
            verifier: Arc::new(self.verifier()?),
            action,
            max_body_bytes: self.leak_max_body_bytes,
            max_tokens: self.leak_max_tokens,
            per_second: self.leak_reports_per_second,
        }))
    }

    fn verifier(&self) -> Result<Verifier> {
        let read = |flag: &'static str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
            path.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| Error::Config {
                        flag,
                        message: format!("{}: {e}", p.display()),
                    })
                })
                .transpose()
        };
        let keys = read("leak-public-keys-file", &self.leak_public_keys_file)?;
        let secret = read("leak-shared-secret-file", &self.leak_shared_secret_file)?;
        if keys.is_none() && secret.is_none() {
            return Err(Error::Config {
                flag: "leak-public-keys-file",
                message: "the leak-report endpoint needs --leak-public-keys-file, \
                          --leak-shared-secret-file or both"
                    .into(),
            });
        }
        // Which file is at fault: the keys are parsed first, on their own.
        Verifier::new(keys.as_deref(), None).map_err(|message| Error::Config {
            flag: "leak-public-keys-file",
            message,
        })?;
        Verifier::new(keys.as_deref(), secret.as_deref()).map_err(|message| Error::Config {
            flag: "leak-shared-secret-file",
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::leaks::verify::testing::{TestKey, key_list};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        leaks: LeakArgs,
    }

    fn parse(args: &[&str]) -> Result<Option<LeakConfig>> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().leaks.validate()
    }

    fn flag_of(r: Result<Option<LeakConfig>>) -> &'static str {
        match r {
            Err(Error::Config { flag, .. }) => flag,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn off_by_default_and_validated_when_on() {
        assert!(parse(&[]).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, key_list(&[("k1", &TestKey::generate())])).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let (k, s) = (keys.to_str().unwrap(), secret.to_str().unwrap());
        let on = [
            "--leak-reports-addr",
            "127.0.0.1:0",
            "--leak-public-keys-file",
            k,
        ];
        let c = parse(&on).unwrap().unwrap();
        assert_eq!(c.action, LeakAction::Revoke);
        assert_eq!(
            (c.max_body_bytes, c.max_tokens, c.per_second),
            (1 << 20, 1000, 10)
        );
        assert_eq!(c.verifier.key_ids().collect::<Vec<_>>(), ["k1"]);
        let both = [
            &on[..],
            &[
                "--leak-shared-secret-file",
                s,
                "--leak-action",
                "deactivate",
            ],
        ]
        .concat();
        assert_eq!(
            parse(&both).unwrap().unwrap().action,
            LeakAction::Deactivate
        );

        assert_eq!(
            flag_of(parse(&["--leak-public-keys-file", k])),
            "leak-reports-addr"
        );
        assert_eq!(
            flag_of(parse(&["--leak-reports-addr", "8090"])),
            "leak-reports-addr"
        );
        assert_eq!(
            flag_of(parse(&["--leak-reports-addr", "127.0.0.1:0"])),
            "leak-public-keys-file"
        );
        let with = |extra: &[&str]| parse(&[&on[..], extra].concat());
        assert_eq!(flag_of(with(&["--leak-action", "delete"])), "leak-action");
        assert_eq!(
            flag_of(with(&["--leak-max-tokens", "0"])),
            "leak-max-tokens"
        );
        assert_eq!(
            flag_of(with(&["--leak-reports-per-second", "0"])),
            "leak-reports-per-second"
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let short = ["--leak-shared-secret-file", short.to_str().unwrap()];
        assert_eq!(flag_of(with(&short)), "leak-shared-secret-file");
        std::fs::write(&keys, "{}").unwrap();
        assert_eq!(flag_of(parse(&on)), "leak-public-keys-file");
        let missing = [
            "--leak-reports-addr",
            "127.0.0.1:0",
            "--leak-shared-secret-file",
            "/nope",
        ];
        assert_eq!(flag_of(parse(&missing)), "leak-shared-secret-file");
    }
}
