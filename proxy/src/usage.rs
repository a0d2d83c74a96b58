//! Usage reports: this process's cumulative per-token counts, written as
//! `UsageReport` objects the operator folds into `ApiToken.status.usage`.
//!
//! The process picks a random epoch at start; its reports are named
//! `report_name(replica, epoch, shard)`. Counts only grow within an epoch, so
//! rewriting a report never double counts. A token keeps the shard it was
//! first given (shards hold at most `MAX_TOKENS_PER_REPORT` tokens), so a
//! token never moves between objects. Every live shard is rewritten each
//! interval, even when idle: its `updatedAt` is the heartbeat that tells the
//! operator the epoch is still alive.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use kube::api::{Api, Patch, PatchParams, PostParams};
use prodgy_crds::usage::{MAX_TOKENS_PER_REPORT, REPORT_LABEL, report_name};
use prodgy_crds::{TokenUsage, UsageReport, UsageReportSpec};

use crate::cells::TokenCell;
use crate::{Error, Result};

/// Value of [`REPORT_LABEL`] on reports written by the proxy.
pub const REPORT_LABEL_VALUE: &str = "true";
/// Field manager of report writes.
pub const FIELD_MANAGER: &str = "prodgy-proxy";

/// A fresh random epoch: 10 lowercase base36 characters.
pub fn new_epoch() -> Result<String> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(|e| Error::Config(format!("random source failed: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// Builds and writes one process's reports.
#[derive(Debug)]
pub struct Reporter {
    replica: String,
    epoch: String,
    shards: HashMap<Box<str>, u32>,
}

impl Reporter {
    /// A reporter for `replica` in `epoch`.
    pub fn new(replica: String, epoch: String) -> Self {
        Self {
            replica,
            epoch,
            shards: HashMap::new(),
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The reports for the current counts (pure). Tokens never used are
    /// left out; a token's products are summed.
    pub fn build(&mut self, cells: &[Arc<TokenCell>], now: DateTime<Utc>) -> Vec<UsageReport> {
        let mut per_shard: BTreeMap<u32, BTreeMap<String, TokenUsage>> = BTreeMap::new();
        for cell in cells {
            let (count, last_ms) = cell.usage();
            if count == 0 {
                continue;
            }
            let next = self.shards.len();
            let shard = *self
                .shards
                .entry(cell.uid().into())
                .or_insert_with(|| u32::try_from(next / MAX_TOKENS_PER_REPORT).unwrap_or(u32::MAX));
            let last = Utc.timestamp_millis_opt(last_ms).single().unwrap_or(now);
            let entry = per_shard
                .entry(shard)
                .or_default()
                .entry(cell.uid().to_owned())
                .or_insert_with(|| TokenUsage {
                    namespace: cell.namespace().to_owned(),
                    name: cell.name().to_owned(),
                    count: 0,
                    last_used_at: last,
                });
            entry.count = entry
                .count
                .saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
            entry.last_used_at = entry.last_used_at.max(last);
        }
        per_shard
            .into_iter()
            .map(|(shard, tokens)| {
                let name = report_name(&self.replica, &self.epoch, shard);
                let mut r = UsageReport::new(
                    &name,
                    UsageReportSpec {
                        replica: self.replica.clone(),
                        epoch: self.epoch.clone(),
                        shard,
                        updated_at: now,
                        tokens,
                    },
                );
                r.metadata.labels = Some(BTreeMap::from([(
                    REPORT_LABEL.to_owned(),
                    REPORT_LABEL_VALUE.to_owned(),
                )]));
                r
            })
            .collect()
    }

    /// Writes every report: a merge patch, or a create when the object does
    /// not exist yet. Returns how many were written.
    pub async fn flush(
        &mut self,
        api: &Api<UsageReport>,
        cells: &[Arc<TokenCell>],
    ) -> Result<usize> {
        let reports = self.build(cells, Utc::now());
        let mut written = 0;
        for r in &reports {
            let name = r.metadata.name.clone().unwrap_or_default();
            let patch = serde_json::json!({
                "metadata": {"labels": r.metadata.labels},
                "spec": r.spec,
            });
            let res = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            match res {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    api.create(&PostParams::default(), r)
                        .await
                        .map_err(|e| Error::Kube(e.to_string()))?;
                }
                Err(e) => return Err(Error::Kube(e.to_string())),
            }
            written += 1;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use prodgy_crds::{HashEntry, HashedRecord, RecordState, Token, hashed::RECORD_VERSION};

    use super::*;
    use crate::cells::Cells;
    use crate::index::{Index, IndexWriter, ProductFilter};

    fn cells(n: usize, products: &[&str]) -> (Cells, Vec<Arc<TokenCell>>) {
        let cells = Cells::default();
        let mut w = IndexWriter::new(Arc::new(Index::default()), ProductFilter::default());
        let mut out = Vec::new();
        for i in 0..n {
            for p in products {
                let t = Token::generate("prod").unwrap();
                let r = w
                    .compact(&HashedRecord {
                        version: RECORD_VERSION,
                        namespace: "ns".into(),
                        name: format!("t{i}"),
                        uid: format!("uid-{i}"),
                        product: (*p).into(),
                        state: RecordState::Active,
                        expires_at: None,
                        scopes: vec![],
                        rate_limit: None,
                        hashes: vec![HashEntry {
                            sha256: t.hash().to_hex(),
                            regeneration: 0,
                            not_after: None,
                        }],
                    })
                    .unwrap();
                out.push(r.cell(&cells).clone());
            }
        }
        (cells, out)
    }

    #[test]
    fn reports_sum_products_skip_idle_tokens_and_name_themselves() {
        let (_, cs) = cells(3, &["a", "b"]);
        cs[0].record_use(1_000);
        cs[1].record_use(3_000);
        cs[1].record_use(2_000);
        cs[4].record_use(5_000);
        let mut rep = Reporter::new("Pod_1".into(), "ep0ch".into());
        let now = Utc::now();
        let reports = rep.build(&cs, now);
        assert_eq!(reports.len(), 1);
        let r = &reports[0];
        assert_eq!(r.metadata.name.as_deref(), Some("pod-1-ep0ch-0"));
        assert_eq!(
            r.metadata.labels.as_ref().unwrap()[REPORT_LABEL],
            REPORT_LABEL_VALUE
        );
        assert_eq!(r.spec.updated_at, now);
        let t0 = &r.spec.tokens["uid-0"];
        assert_eq!((t0.count, t0.name.as_str()), (3, "t0"));
        assert_eq!(t0.last_used_at.timestamp_millis(), 3_000);
        assert_eq!(r.spec.tokens["uid-2"].count, 1);
        assert!(
            !r.spec.tokens.contains_key("uid-1"),
            "idle tokens are left out"
        );
    }

    #[test]
    fn tokens_beyond_a_shard_spill_over_and_keep_their_shard() {
        let n = MAX_TOKENS_PER_REPORT + 10;
        let (_, cs) = cells(n, &["a"]);
        // Only the last 10 used at first: they fill shard 0.
        for c in &cs[MAX_TOKENS_PER_REPORT..] {
            c.record_use(1);
        }
        let mut rep = Reporter::new("p".into(), "e".into());
        let first = rep.build(&cs, Utc::now());
        assert_eq!(first.len(), 1);
        for c in &cs {
            c.record_use(2);
        }
        let second = rep.build(&cs, Utc::now());
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].spec.tokens.len(), MAX_TOKENS_PER_REPORT);
        assert_eq!(second[1].spec.tokens.len(), 10);
        assert_eq!(second[1].metadata.name.as_deref(), Some("p-e-1"));
        // The early tokens stayed in shard 0.
        let late = format!("uid-{}", MAX_TOKENS_PER_REPORT + 3);
        assert!(second[0].spec.tokens.contains_key(&late));
        assert_eq!(second[0].spec.tokens[&late].count, 2);
    }

    #[test]
    fn epochs_are_random_and_dns_safe() {
        let (a, b) = (new_epoch().unwrap(), new_epoch().unwrap());
        assert_ne!(a, b);
        assert!(
            a.len() == 10
                && a.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
