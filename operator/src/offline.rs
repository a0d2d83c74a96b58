//! `issue-offline`: the planner without a cluster, for the no-cluster
//! quickstart. It reads an ApiToken manifest, plans against the record file
//! of an earlier run (if any) and writes `<out-dir>/<namespace>-<name>.json`,
//! a [`HashedRecord`] the proxy's file source reads. The same rules hold as in
//! the cluster: a second run re-issues nothing unless `spec.regeneration`
//! grew, and spec edits (revoke, deactivate, expiry) update the record.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use prodgy_crds::{ApiToken, ApiTokenStatus, HashedRecord, Token};

use crate::{
    Error, Result,
    config::IssueOfflineArgs,
    plan::{self, DeliveryObs, HashedObs, Inputs, PlanConfig},
};

/// What one `issue-offline` run did.
#[derive(Debug)]
pub struct Issued {
    /// The record file written (or left as it was).
    pub path: PathBuf,
    /// The new plaintext, when this run issued one.
    pub token: Option<Token>,
    /// Whether the record file changed.
    pub written: bool,
    /// The regeneration of the current token.
    pub regeneration: i64,
}

/// Issues (or updates) the token of a manifest into `args.out_dir`.
pub fn issue(args: &IssueOfflineArgs, now: DateTime<Utc>) -> Result<Issued> {
    prodgy_crds::token::validate_prefix(&args.token_prefix).map_err(|e| Error::Config {
        flag: "token-prefix",
        message: e.to_string(),
    })?;
    let manifest_path = args.file.display().to_string();
    let bad = |message: String| Error::Manifest {
        path: manifest_path.clone(),
        message,
    };
    let (token, path, existing) = read_manifest(args)?;
    let cfg = PlanConfig {
        hashed_namespace: "offline".into(),
        delivery_mode: prodgy_crds::DeliveryMode::Secret,
        reveal_window: chrono::TimeDelta::minutes(10),
        usage_report_retention: chrono::TimeDelta::minutes(2),
        usage_status_interval: chrono::TimeDelta::zero(),
        deactivate_after_unused: None,
        expiry_notices: Vec::new(),
    };
    let hashed = existing
        .clone()
        .map_or(HashedObs::Missing, HashedObs::Present);
    let fresh = Token::generate(&args.token_prefix)?;
    let plan = plan::plan(
        &cfg,
        &Inputs {
            token: &token,
            hashed: &hashed,
            delivery: &DeliveryObs::Missing,
            reports: &[],
            last_usage_write: None,
            now,
            fresh_token: &fresh,
        },
    )?;
    let record = match (&plan.put_hashed, &existing) {
        (Some(r), _) | (None, Some(r)) => r.clone(),
        (None, None) => {
            return Err(bad(
                "nothing to issue: the token is revoked (or its spec is invalid)".into(),
            ));
        }
    };
    if let Some(r) = &plan.put_hashed {
        std::fs::create_dir_all(&args.out_dir).map_err(|source| Error::Io {
            path: args.out_dir.display().to_string(),
            source,
        })?;
        write_atomically(&path, &serde_json::to_vec_pretty(r)?)?;
    }
    Ok(Issued {
        path,
        token: plan.put_delivery.is_some().then_some(fresh),
        written: plan.put_hashed.is_some(),
        regeneration: record.hashes.first().map_or(0, |h| h.regeneration),
    })
}

/// The manifest's ApiToken with the identity a cluster would give it, the
/// path of its record file, and the record already there. Offline, the
/// record file is the only memory: it stands in for the status.
fn read_manifest(args: &IssueOfflineArgs) -> Result<(ApiToken, PathBuf, Option<HashedRecord>)> {
    let manifest_path = args.file.display().to_string();
    let bad = |message: String| Error::Manifest {
        path: manifest_path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&args.file).map_err(|source| Error::Io {
        path: manifest_path.clone(),
        source,
    })?;
    let mut token: ApiToken =
        serde_yaml::from_str(&text).map_err(|e| bad(format!("not an ApiToken: {e}")))?;
    let name = token
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| bad("metadata.name is required".into()))?;
    let namespace = token
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    let path = args.out_dir.join(format!("{namespace}-{name}.json"));
    let existing = read_record(&path)?;
    let uid = token
        .metadata
        .uid
        .clone()
        .or_else(|| existing.as_ref().map(|r| r.uid.clone()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    token.metadata.namespace = Some(namespace);
    token.metadata.uid = Some(uid);
    token.metadata.generation = Some(token.metadata.generation.unwrap_or(1));
    token.status = existing.as_ref().map(|r| ApiTokenStatus {
        issued_regeneration: r.hashes.first().map(|h| h.regeneration),
        ..Default::default()
    });
    Ok((token, path, existing))
}

/// Runs `issue-offline`: the plaintext (only) goes to `out`, once; a human
/// summary goes to `log`.
pub fn run(args: &IssueOfflineArgs, out: &mut impl Write, log: &mut impl Write) -> Result<()> {
    let issued = issue(args, Utc::now())?;
    let io = |source| Error::Io {
        path: "stdout".into(),
        source,
    };
    match &issued.token {
        Some(token) => {
            writeln!(out, "{}", token.expose()).map_err(io)?;
            writeln!(
                log,
                "issued {}… (regeneration {}); wrote {}. The plaintext above is shown once.",
                token.display_prefix(),
                issued.regeneration,
                issued.path.display()
            )
            .map_err(io)?;
        }
        None => writeln!(
            log,
            "already issued for regeneration {}; {} {}. Increase spec.regeneration to issue a \
             new token.",
            issued.regeneration,
            if issued.written {
                "updated"
            } else {
                "unchanged:"
            },
            issued.path.display()
        )
        .map_err(io)?,
    }
    Ok(())
}

fn read_record(path: &Path) -> Result<Option<HashedRecord>> {
    match std::fs::read(path) {
        Ok(bytes) => HashedRecord::from_json(&bytes)
            .map(Some)
            .map_err(|e| Error::Manifest {
                path: path.display().to_string(),
                message: format!("existing record is unusable ({e}); remove it to start over"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Write-then-rename, so a proxy watching the directory never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use prodgy_crds::{RecordState, TokenHash};

    use super::*;

    fn args(dir: &Path, manifest: &str) -> IssueOfflineArgs {
        let file = dir.join("token.yaml");
        std::fs::write(&file, manifest).unwrap();
        IssueOfflineArgs {
            file,
            out_dir: dir.join("out"),
            token_prefix: "prod".into(),
        }
    }

    const MANIFEST: &str = "apiVersion: prodgy.io/v1
kind: ApiToken
metadata:
  name: ci-bot
  namespace: team-a
spec:
  product: acme
  regenerationGracePeriod: 1h
";

    #[test]
    fn issues_once_prints_the_plaintext_and_writes_only_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), MANIFEST);
        let (mut out, mut log) = (Vec::new(), Vec::new());
        run(&a, &mut out, &mut log).unwrap();
        let plaintext = String::from_utf8(out).unwrap().trim().to_owned();
        assert!(prodgy_crds::token::check_format(&plaintext).is_ok());
        let log = String::from_utf8(log).unwrap();
        assert!(!log.contains(&plaintext[8..]));
        let path = dir.path().join("out/team-a-ci-bot.json");
        let file = std::fs::read_to_string(&path).unwrap();
        assert!(
            !file.contains(&plaintext[5..]),
            "plaintext in the record file"
        );
        let record = HashedRecord::from_json(file.as_bytes()).unwrap();
        assert_eq!(record.hashes[0].sha256, TokenHash::of(&plaintext).to_hex());
        assert_eq!(
            (record.namespace.as_str(), record.product.as_str()),
            ("team-a", "acme")
        );

        // A second run re-issues nothing and keeps the file.
        let (mut out, mut log) = (Vec::new(), Vec::new());
        run(&a, &mut out, &mut log).unwrap();
        assert!(out.is_empty());
        assert!(String::from_utf8(log).unwrap().contains("already issued"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), file);
    }

    #[test]
    fn regeneration_and_revocation_follow_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), MANIFEST);
        let first = issue(&a, Utc::now()).unwrap().token.unwrap();
        let uid =
            HashedRecord::from_json(&std::fs::read(&issue(&a, Utc::now()).unwrap().path).unwrap())
                .unwrap()
                .uid;
        let a = args(
            dir.path(),
            &MANIFEST.replace("product: acme", "product: acme\n  regeneration: 1"),
        );
        let second = issue(&a, Utc::now()).unwrap();
        let record = HashedRecord::from_json(&std::fs::read(&second.path).unwrap()).unwrap();
        assert_eq!(record.uid, uid, "the identity is kept across runs");
        assert_eq!(record.hashes.len(), 2, "previous token in its grace period");
        assert_eq!(record.hashes[1].sha256, first.hash().to_hex());
        assert_eq!(second.regeneration, 1);

        let a = args(
            dir.path(),
            &MANIFEST.replace(
                "product: acme",
                "product: acme\n  regeneration: 1\n  revoked: true",
            ),
        );
        let revoked = issue(&a, Utc::now()).unwrap();
        assert!(revoked.token.is_none() && revoked.written);
        let record = HashedRecord::from_json(&std::fs::read(&revoked.path).unwrap()).unwrap();
        assert_eq!(record.state, RecordState::Revoked);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let no_name = args(
            dir.path(),
            "kind: ApiToken\nmetadata: {}\nspec: {product: acme}\n",
        );
        assert!(
            issue(&no_name, Utc::now())
                .unwrap_err()
                .to_string()
                .contains("metadata.name")
        );
        let not_a_token = args(dir.path(), "just text");
        assert!(matches!(
            issue(&not_a_token, Utc::now()),
            Err(Error::Manifest { .. })
        ));
        let mut bad_prefix = args(dir.path(), MANIFEST);
        bad_prefix.token_prefix = "no_pe".into();
        assert!(matches!(
            issue(&bad_prefix, Utc::now()),
            Err(Error::Config {
                flag: "token-prefix",
                ..
            })
        ));
        let revoked = args(
            dir.path(),
            &MANIFEST.replace("product: acme", "product: acme\n  revoked: true"),
        );
        assert!(
            issue(&revoked, Utc::now())
                .unwrap_err()
                .to_string()
                .contains("revoked")
        );
        let missing = IssueOfflineArgs {
            file: dir.path().join("nope.yaml"),
            out_dir: dir.path().into(),
            token_prefix: "prod".into(),
        };
        assert!(matches!(issue(&missing, Utc::now()), Err(Error::Io { .. })));
        // A corrupt record file is not silently replaced.
        let a = args(dir.path(), MANIFEST);
        std::fs::create_dir_all(&a.out_dir).unwrap();
        std::fs::write(a.out_dir.join("team-a-ci-bot.json"), "{").unwrap();
        assert!(
            issue(&a, Utc::now())
                .unwrap_err()
                .to_string()
                .contains("remove it")
        );
    }
}
