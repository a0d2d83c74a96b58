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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use kube::api::{Api, Patch, PatchParams, PostParams};
use prodgy_crds::usage::{MAX_TOKENS_PER_REPORT, REPORT_LABEL, report_name};
use prodgy_crds::{TokenUsage, UsageReport, UsageReportSpec, WindowCount};

use crate::cells::TokenCell;
use crate::quota::Quota;
use crate::{Error, Result};

/// Value of [`REPORT_LABEL`] on reports written by the proxy.
pub const REPORT_LABEL_VALUE: &str = "true";
/// Field manager of report writes.
pub const FIELD_MANAGER: &str = "prodgy-proxy";

/// A fresh random epoch: 10 lowercase base36 characters.
pub fn new_epoch() -> Result<String> {
    const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes)?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

/// Builds and writes one process's reports.
///
/// Counts in a report are those of its epoch: the process-wide total minus
/// what earlier epochs of this process already reported. A new epoch starts
/// when a report this epoch had written is gone (the operator retired it
/// while the proxy could not write), and when the epoch's reports on the
/// server are older than `rotate_after` (the operator may be retiring them
/// right now), so counts the operator folded are never reported again.
///
/// A write whose answer did not come (a timeout, a cut connection) may have
/// landed, so a long gap without acknowledged writes is settled by reading
/// the reports back ([`Self::confirm`]), never by presuming them lost: what
/// they hold is acknowledged, and while they are fresh the epoch goes on.
#[derive(Debug)]
pub struct Reporter {
    replica: String,
    epoch: String,
    rotate_after: Duration,
    shards: HashMap<Box<str>, u32>,
    /// Per token: the process-wide count earlier epochs reported.
    base: HashMap<Box<str>, u64>,
    /// Per token: the process-wide count the last acknowledged write of
    /// this epoch carried.
    acked: HashMap<Box<str>, u64>,
    /// Per capped token: the `(window index, count)` the last acknowledged
    /// write of this epoch carried, and the token's counter (so a new epoch
    /// starts its window count where this one's report ended).
    window_acked: HashMap<Box<str>, (u64, u64)>,
    /// The usage-cap counter of every capped token built so far.
    quotas: HashMap<Box<str>, Arc<Quota>>,
    /// The `updatedAt` every report of this epoch is known to have at
    /// least (the epoch's start before any write): the operator retires
    /// reports by this time, so the proxy judges staleness by it too.
    confirmed: DateTime<Utc>,
}

impl Reporter {
    /// A reporter for `replica` in `epoch` that starts a new epoch after
    /// `rotate_after` without a successful write.
    pub fn new(replica: String, epoch: String, rotate_after: Duration) -> Self {
        Self {
            replica,
            epoch,
            rotate_after,
            shards: HashMap::new(),
            base: HashMap::new(),
            acked: HashMap::new(),
            window_acked: HashMap::new(),
            quotas: HashMap::new(),
            confirmed: Utc::now(),
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Starts `epoch`: what the current epoch's acknowledged writes carried
    /// becomes the base the new epoch's counts start from.
    pub fn rotate(&mut self, epoch: String) {
        for (uid, count) in self.acked.drain() {
            self.base.insert(uid, count);
        }
        for (uid, (index, count)) in self.window_acked.drain() {
            if let Some(quota) = self.quotas.get(&uid) {
                quota.rebase(index, count);
            }
        }
        self.epoch = epoch;
        self.shards.clear();
        self.confirmed = Utc::now();
    }

    /// How long one flush may wait for the API server. A flush still
    /// unanswered then is given up, so one stuck request never stops the
    /// heartbeat; what it sent may still land, which [`Self::confirm`]
    /// settles within the other half of the rotation window.
    pub fn write_limit(&self) -> Duration {
        self.rotate_after / 2
    }

    /// Whether the epoch's reports may be older than `rotate_after` on the
    /// server, so they must be read back before writing (pure).
    pub fn stale(&self, now: DateTime<Utc>) -> bool {
        (now - self.confirmed)
            .to_std()
            .is_ok_and(|gap| gap > self.rotate_after)
    }

    /// What reading back this epoch's reports decides: `found` holds the
    /// `updatedAt` of each shard found, and whether some were missing.
    /// `Some(time)`: the epoch goes on, its reports confirmed up to `time`;
    /// `None`: start a new epoch (pure).
    fn settle(
        &self,
        now: DateTime<Utc>,
        found: &[DateTime<Utc>],
        missing: bool,
    ) -> Option<DateTime<Utc>> {
        let oldest = found.iter().min().copied().unwrap_or(now);
        let fresh = (now - oldest)
            .to_std()
            .map_or(true, |age| age <= self.rotate_after);
        (fresh && !missing).then_some(oldest)
    }

    /// Reads this epoch's reports back after a long gap: what they hold is
    /// acknowledged; an old or missing one starts a new epoch.
    async fn confirm(&mut self, api: &Api<UsageReport>, now: DateTime<Utc>) -> Result<()> {
        tracing::info!(
            epoch = %self.epoch,
            "usage reports unconfirmed for too long; reading them back"
        );
        let shards: BTreeSet<u32> = self.shards.values().copied().collect();
        let (mut found, mut missing) = (Vec::new(), false);
        for shard in shards {
            let name = report_name(&self.replica, &self.epoch, shard);
            match api.get_opt(&name).await? {
                Some(r) if r.spec.epoch == self.epoch => {
                    self.ack(&r);
                    found.push(r.spec.updated_at);
                }
                _ => missing = true,
            }
        }
        match self.settle(now, &found, missing) {
            Some(t) => self.confirmed = t,
            None => {
                let epoch = new_epoch()?;
                tracing::info!(
                    old = %self.epoch,
                    new = %epoch,
                    "usage reports not written for too long; starting a new epoch"
                );
                self.rotate(epoch);
            }
        }
        Ok(())
    }

    /// Records that `report` is on the API server.
    fn ack(&mut self, report: &UsageReport) {
        for (uid, usage) in &report.spec.tokens {
            if let (Some(w), Some(quota)) = (usage.window, self.quotas.get(uid.as_str())) {
                let count = u64::try_from(w.count).unwrap_or(0);
                let index = quota.index_of(w.start.timestamp());
                self.window_acked
                    .insert(uid.as_str().into(), (index, count));
            }
            let base = self.base.get(uid.as_str()).copied().unwrap_or(0);
            let count = u64::try_from(usage.count).unwrap_or(0);
            self.acked
                .insert(uid.as_str().into(), base.saturating_add(count));
        }
    }

    /// Whether this epoch's report `shard` was written before (so a 404
    /// means the operator retired it).
    fn was_written(&self, shard: u32) -> bool {
        self.acked
            .keys()
            .any(|uid| self.shards.get(uid) == Some(&shard))
    }

    /// The reports for the current counts (no I/O). Tokens without use in
    /// this epoch are left out; a token's products are summed.
    pub fn build(&mut self, cells: &[Arc<TokenCell>], now: DateTime<Utc>) -> Vec<UsageReport> {
        let mut totals: BTreeMap<&str, (u64, i64, &TokenCell)> = BTreeMap::new();
        for cell in cells {
            let (count, last_ms) = cell.usage();
            let t = totals.entry(cell.uid()).or_insert((0, last_ms, cell));
            t.0 = t.0.saturating_add(count);
            t.1 = t.1.max(last_ms);
        }
        let mut per_shard: BTreeMap<u32, BTreeMap<String, TokenUsage>> = BTreeMap::new();
        for (uid, (total, last_ms, cell)) in totals {
            let count = total.saturating_sub(self.base.get(uid).copied().unwrap_or(0));
            if count == 0 {
                continue;
            }
            let next = self.shards.len();
            let shard = *self
                .shards
                .entry(uid.into())
                .or_insert_with(|| u32::try_from(next / MAX_TOKENS_PER_REPORT).unwrap_or(u32::MAX));
            let window = self.window_of(cell);
            per_shard.entry(shard).or_default().insert(
                uid.to_owned(),
                TokenUsage {
                    namespace: cell.namespace().to_owned(),
                    name: cell.name().to_owned(),
                    count: i64::try_from(count).unwrap_or(i64::MAX),
                    last_used_at: Utc.timestamp_millis_opt(last_ms).single().unwrap_or(now),
                    window,
                },
            );
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

    /// A capped token's count in its window, for its report (and its
    /// counter remembered for a rotation).
    fn window_of(&mut self, cell: &TokenCell) -> Option<WindowCount> {
        let (_, start, count) = cell.quota().window()?;
        self.quotas
            .entry(cell.uid().into())
            .or_insert_with(|| cell.quota().clone());
        Some(WindowCount {
            start: DateTime::from_timestamp(start, 0)?,
            count: i64::try_from(count).unwrap_or(i64::MAX),
        })
    }

    /// Writes every report: a merge patch, or a create for a shard new to
    /// this epoch. Returns how many were written. A report of this epoch
    /// found gone starts a new epoch; its counts go out with the next flush.
    pub async fn flush(
        &mut self,
        api: &Api<UsageReport>,
        cells: &[Arc<TokenCell>],
    ) -> Result<usize> {
        let now = Utc::now();
        if self.stale(now) {
            self.confirm(api, now).await?;
        }
        let reports = self.build(cells, now);
        for r in &reports {
            self.write(api, r).await?;
            self.ack(r);
        }
        self.confirmed = now;
        Ok(reports.len())
    }

    /// Writes one report (no acknowledgement).
    async fn write(&mut self, api: &Api<UsageReport>, r: &UsageReport) -> Result<()> {
        let name = r.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {"labels": r.metadata.labels},
            "spec": r.spec,
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 && self.was_written(r.spec.shard) => {
                let epoch = new_epoch()?;
                self.rotate(epoch);
                Err(Error::ReportRetired {
                    name,
                    epoch: self.epoch.clone(),
                })
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                Ok(api.create(&PostParams::default(), r).await.map(drop)?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use prodgy_crds::{HashedRecord, Token};

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
                    .compact(&HashedRecord::active(
                        "ns",
                        &format!("t{i}"),
                        &format!("uid-{i}"),
                        p,
                        &t.hash(),
                    ))
                    .unwrap();
                out.push(r.cell(&cells));
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
        let mut rep = Reporter::new("Pod_1".into(), "ep0ch".into(), Duration::from_secs(60));
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
        let mut rep = Reporter::new("p".into(), "e".into(), Duration::from_secs(60));
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
    fn a_new_epoch_reports_only_what_the_old_one_had_not_acknowledged() {
        let (_, cs) = cells(2, &["a"]);
        let mut rep = Reporter::new("p".into(), "one".into(), Duration::from_secs(60));
        for _ in 0..5 {
            cs[0].record_use(1);
        }
        cs[1].record_use(1);
        let first = rep.build(&cs, Utc::now());
        assert_eq!(count(&first, "uid-0"), 5);
        assert!(!rep.was_written(0));
        rep.ack(&first[0]);
        assert!(rep.was_written(0));
        // Two more uses that were built but never acknowledged (the write failed).
        cs[0].record_use(2);
        cs[0].record_use(2);
        let unacked = rep.build(&cs, Utc::now());
        assert_eq!(count(&unacked, "uid-0"), 7);
        rep.rotate("two".into());
        assert_eq!(rep.epoch(), "two");
        assert!(!rep.was_written(0), "a new epoch has written nothing");
        let next = rep.build(&cs, Utc::now());
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].metadata.name.as_deref(), Some("p-two-0"));
        assert_eq!(count(&next, "uid-0"), 2, "5 were reported in epoch one");
        assert!(
            !next[0].spec.tokens.contains_key("uid-1"),
            "no use since the acknowledged write"
        );
        // Old epoch + new epoch = every use, once.
        rep.ack(&next[0]);
        cs[1].record_use(3);
        rep.rotate("three".into());
        let third = rep.build(&cs, Utc::now());
        assert_eq!((count(&third, "uid-0"), count(&third, "uid-1")), (0, 1));
    }

    #[test]
    fn a_gap_longer_than_the_rotation_window_is_stale() {
        let mut rep = Reporter::new("p".into(), "e".into(), Duration::from_secs(60));
        let t = Utc::now();
        rep.confirmed = t;
        assert!(!rep.stale(t + TimeDelta::seconds(60)));
        assert!(rep.stale(t + TimeDelta::seconds(61)));
        assert!(!rep.stale(t - TimeDelta::seconds(5)), "a clock step back");
    }

    #[test]
    fn reports_read_back_keep_the_epoch_only_when_all_are_there_and_fresh() {
        let rep = Reporter::new("p".into(), "e".into(), Duration::from_secs(60));
        let now = Utc::now();
        let (fresh, older) = (now - TimeDelta::seconds(10), now - TimeDelta::seconds(30));
        assert_eq!(rep.settle(now, &[fresh, older], false), Some(older));
        assert_eq!(
            rep.settle(now, &[], false),
            Some(now),
            "nothing written yet"
        );
        assert_eq!(rep.settle(now, &[fresh], true), None, "one is gone");
        let old = now - TimeDelta::seconds(61);
        assert_eq!(
            rep.settle(now, &[fresh, old], false),
            None,
            "may be retiring"
        );
    }

    #[test]
    fn capped_tokens_report_their_window_and_a_new_epoch_starts_where_the_old_one_ended() {
        use prodgy_crds::RecordLimit;

        let (_, cs) = cells(2, &["a"]);
        let anchor = Utc::now() - TimeDelta::seconds(90);
        let anchor = DateTime::from_timestamp(anchor.timestamp(), 0).unwrap();
        let limit = crate::quota::Limit::new(&RecordLimit {
            requests: 100,
            per_seconds: Some(60),
            anchor,
            window_start: anchor,
            used: 0,
            reported: BTreeMap::new(),
        });
        let call = |c: &TokenCell| {
            let now = Utc::now();
            let ns = now.timestamp_nanos_opt().unwrap();
            assert!(crate::quota::admit(&limit, c.quota(), "one", ns).is_ok());
            c.record_use(now.timestamp_millis());
        };
        for _ in 0..3 {
            call(&cs[0]);
        }
        cs[1].record_use(1);
        let mut rep = Reporter::new("p".into(), "one".into(), Duration::from_secs(60));
        let first = rep.build(&cs, Utc::now());
        let w = first[0].spec.tokens["uid-0"].window.unwrap();
        assert_eq!((w.start, w.count), (anchor + TimeDelta::seconds(60), 3));
        assert_eq!(
            first[0].spec.tokens["uid-1"].window, None,
            "uncapped: no window"
        );
        rep.ack(&first[0]);
        // Two more calls not acknowledged, then a new epoch.
        call(&cs[0]);
        call(&cs[0]);
        rep.rotate("two".into());
        let next = rep.build(&cs, Utc::now());
        let t0 = &next[0].spec.tokens["uid-0"];
        assert_eq!((t0.count, t0.window.unwrap().count), (2, 2));
    }

    fn count(reports: &[UsageReport], uid: &str) -> i64 {
        reports
            .iter()
            .filter_map(|r| r.spec.tokens.get(uid))
            .map(|t| t.count)
            .sum()
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
