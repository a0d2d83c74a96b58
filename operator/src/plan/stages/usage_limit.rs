//! Stage: the usage cap (`spec.usageLimit`). Sums the calls of the current
//! window from the ledger and the live usage reports, puts them in the
//! hashed record (with each report epoch's part, so a proxy never counts its
//! own calls twice) and in `status.usageLimit`.
//!
//! Record writes stay bounded: a change of the summed usage alone is written
//! with the usage status write (at most one per `--usage-status-interval`
//! per token), except the change that exhausts the cap, which is written at
//! once so every replica starts refusing without waiting for the interval.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prodgy_crds::{
    ApiToken, HashedRecord, RecordLimit, UsageLedger, UsageLimitStatus, UsageReport, WindowCount,
    usage_limit::{Window, remaining},
};

use crate::usage::Folded;

/// A capped token's current window and its usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::plan) struct Capped {
    pub requests: u64,
    pub per_s: Option<u64>,
    pub anchor: DateTime<Utc>,
    pub window: Window,
    /// Calls in the window, over every replica.
    pub used: u64,
    /// Per report epoch, its part of `used`.
    pub reported: BTreeMap<String, u64>,
    /// What retired reports counted in the window (the ledger's part).
    pub retired: Option<WindowCount>,
}

/// The cap of `token` at `now`, or `None` without one. A `per` the API
/// server should have refused (older objects) fails closed: a lifetime cap.
pub(in crate::plan) fn capped(
    token: &ApiToken,
    ledger: &UsageLedger,
    folded: &Folded,
    reports: &[Arc<UsageReport>],
    now: DateTime<Utc>,
) -> Option<Capped> {
    let limit = token.spec.usage_limit.as_ref()?;
    let uid = token.metadata.uid.as_deref()?;
    let anchor = token
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let per_s = limit.period_secs().ok().flatten();
    let window = Window::at(anchor, per_s, now);
    let mut cap = Capped {
        requests: limit.requests(),
        per_s,
        anchor,
        window,
        used: 0,
        reported: BTreeMap::new(),
        retired: None,
    };
    let base = cap.sum_reports(uid, ledger, folded, reports);
    if per_s.is_some() {
        cap.used = cap.used.saturating_add(base);
        cap.retired = (base > 0).then(|| WindowCount {
            start: window.start,
            count: i64::try_from(base).unwrap_or(i64::MAX),
        });
    } else {
        // A lifetime cap counts every call the token ever made, also those
        // made before the cap was set.
        cap.used = count(folded.usage);
    }
    Some(cap)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Capped {
    /// Adds the live reports' counts of the window to `used` and
    /// `reported`; returns what the ledger holds of the window after this
    /// pass (its earlier part plus the reports retired by this pass).
    fn sum_reports(
        &mut self,
        uid: &str,
        ledger: &UsageLedger,
        folded: &Folded,
        reports: &[Arc<UsageReport>],
    ) -> u64 {
        let (start, lifetime) = (self.window.start, self.per_s.is_none());
        let mut base = ledger
            .window
            .filter(|w| w.start == start)
            .map_or(0, |w| count(w.count));
        for report in reports {
            let (Some(name), Some(entry)) =
                (report.metadata.name.as_deref(), report.spec.tokens.get(uid))
            else {
                continue;
            };
            let Some(w) = entry.window.filter(|w| lifetime || w.start == start) else {
                continue;
            };
            if folded.newly_folded.iter().any(|n| n == name) {
                base = base.saturating_add(count(w.count));
            } else if !ledger.folded.iter().any(|n| n == name) {
                self.used = self.used.saturating_add(count(w.count));
                let part = self.reported.entry(report.spec.epoch.clone()).or_default();
                *part = part.saturating_add(count(w.count));
            }
        }
        base
    }

    /// `status.usageLimit`.
    pub fn status(&self) -> UsageLimitStatus {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        UsageLimitStatus {
            requests: int(self.requests),
            used: int(self.used),
            remaining: int(remaining(self.requests, self.used)),
            window_start: self.per_s.map(|_| self.window.start),
            renews_at: self.window.end,
        }
    }

    /// The record's part.
    pub fn record(&self) -> RecordLimit {
        RecordLimit {
            requests: self.requests,
            per_seconds: self.per_s,
            anchor: self.anchor,
            window_start: self.window.start,
            used: self.used,
            reported: self.reported.clone(),
        }
    }
}

/// The record to want: the desired one with the cap's usage, except that a
/// change of usage alone waits for the usage status write (`status_planned`)
/// unless it exhausts the cap.
pub(in crate::plan) fn settle_record(
    desired: Option<HashedRecord>,
    observed: Option<&HashedRecord>,
    cap: Option<&Capped>,
    status_planned: bool,
) -> Option<HashedRecord> {
    let mut desired = desired?;
    desired.usage_limit = cap.map(|c| Box::new(c.record()));
    let (Some(want), Some(seen)) = (&desired.usage_limit, observed) else {
        return Some(desired);
    };
    let Some(had) = &seen.usage_limit else {
        return Some(desired);
    };
    let same_cap = (want.requests, want.per_seconds, want.anchor)
        == (had.requests, had.per_seconds, had.anchor);
    let exhausts = had.used < had.requests && want.used >= want.requests;
    let otherwise_same = HashedRecord {
        usage_limit: seen.usage_limit.clone(),
        ..desired.clone()
    } == *seen;
    if same_cap && otherwise_same && !status_planned && !exhausts {
        return Some(seen.clone());
    }
    Some(desired)
}

/// The requeue, moved to the window's end so the status renews on time.
pub(in crate::plan) fn wake(
    requeue_at: Option<DateTime<Utc>>,
    cap: Option<&Capped>,
) -> Option<DateTime<Utc>> {
    let end = cap.and_then(|c| c.window.end);
    [requeue_at, end].into_iter().flatten().min()
}

#[cfg(test)]
mod tests;
