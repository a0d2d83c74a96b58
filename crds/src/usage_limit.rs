//! Usage caps: `spec.usageLimit`, the windows a cap counts in, and what the
//! operator tells the proxies about a capped token's usage.
//!
//! **Windows** are fixed, back to back, of length `per`, anchored at the
//! ApiToken's `metadata.creationTimestamp`: window `k` is
//! `[anchor + k·per, anchor + (k+1)·per)`. A regeneration does not move
//! them (a new token does not get a new quota). Without `per` there is one
//! window, the token's whole life, and it never ends. Everything here is a
//! pure function of the anchor, the period and an instant, so the operator
//! and every proxy agree on the window of any instant to the second (each by
//! its own clock: skew moves a boundary by the skew, no more).
//!
//! **Counting** in windows: a proxy attributes each call it accepts to the
//! window of its own clock at acceptance, and its usage report carries, per
//! capped token, the window start and this epoch's count in it
//! ([`WindowCount`]). The operator sums, for the current window, the
//! counts of live reports naming that window plus what retired reports of it
//! left in the ledger; that sum and each report's part of it travel in the
//! hashed record ([`RecordLimit`]), so a proxy adds only its own calls the
//! operator has not seen yet.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Error, Result, duration};

/// Shortest period (`per`) of a cap.
pub const MIN_PERIOD_SECS: u64 = 60;
/// Longest period: beyond ten years a period is surely a typo.
pub const MAX_PERIOD_SECS: u64 = 3650 * 86_400;
/// Largest `requests` (the proxy packs a window count in 40 bits).
pub const MAX_REQUESTS: i64 = 1_000_000_000_000;

/// A cap on the calls a token may make, per window or in its whole life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.per) || self.per.matches('^.*[1-9][0-9]*[mhd].*$')",
        "message": "per must be at least 1m, written with an m, h or d unit (e.g. 1m30s rather than 90s)"
    }
]))]
pub struct UsageLimit {
    /// Calls accepted per window; the next one is refused with 429
    /// `usage_limit_reached`.
    #[schemars(range(min = 1, max = 1_000_000_000_000_i64))]
    pub requests: i64,
    /// Window length as a Go-style duration (`1h`, `30d`, `1h30m`), at
    /// least `1m`. Absent: the cap is for the token's whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub per: Option<String>,
}

impl UsageLimit {
    /// The period in seconds (`None`: lifetime), or why it is unusable.
    pub fn period_secs(&self) -> Result<Option<u64>> {
        let Some(per) = &self.per else {
            return Ok(None);
        };
        let secs = duration::parse(per)?.as_secs();
        if !(MIN_PERIOD_SECS..=MAX_PERIOD_SECS).contains(&secs) {
            return Err(Error::InvalidDuration(per.clone()));
        }
        Ok(Some(secs))
    }

    /// `requests` as the proxy counts it (at least 1).
    pub fn requests(&self) -> u64 {
        u64::try_from(self.requests.clamp(1, MAX_REQUESTS)).unwrap_or(1)
    }
}

/// The index of the window holding `now_s` (Unix seconds), for windows of
/// `per_s` seconds anchored at `anchor_s`; `per_s == 0` is the lifetime
/// window, index 0. An instant before the anchor (clock skew) is in window 0.
pub const fn window_index(anchor_s: i64, per_s: u64, now_s: i64) -> u64 {
    if per_s == 0 || now_s <= anchor_s {
        return 0;
    }
    now_s.abs_diff(anchor_s) / per_s
}

/// Start of window `index` in Unix seconds (saturating).
pub const fn window_start_s(anchor_s: i64, per_s: u64, index: u64) -> i64 {
    let offset = index.saturating_mul(per_s);
    if offset > i64::MAX as u64 {
        return i64::MAX;
    }
    anchor_s.saturating_add(offset as i64)
}

/// One window: its start and, unless it is the lifetime window, its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First instant of the window.
    pub start: DateTime<Utc>,
    /// First instant after it; `None` for a lifetime cap.
    pub end: Option<DateTime<Utc>>,
}

impl Window {
    /// The window holding `now` (see the module docs).
    pub fn at(anchor: DateTime<Utc>, per_s: Option<u64>, now: DateTime<Utc>) -> Self {
        let anchor_s = anchor.timestamp();
        let Some(per) = per_s.filter(|p| *p > 0) else {
            return Self {
                start: secs(anchor_s),
                end: None,
            };
        };
        let k = window_index(anchor_s, per, now.timestamp());
        Self {
            start: secs(window_start_s(anchor_s, per, k)),
            end: Some(secs(window_start_s(anchor_s, per, k.saturating_add(1)))),
        }
    }

    /// Whole seconds from `now` to the end, at least 1 (`None`: never ends):
    /// the `Retry-After` of a refused call.
    pub fn retry_after(&self, now: DateTime<Utc>) -> Option<u64> {
        let left = self.end? - now;
        let ms = u64::try_from(left.num_milliseconds()).unwrap_or(0);
        Some(ms.div_ceil(1000).max(1))
    }
}

fn secs(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(s, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Calls left in a window: `requests - used`, never below zero.
pub const fn remaining(requests: u64, used: u64) -> u64 {
    requests.saturating_sub(used)
}

/// One epoch's count of a capped token in one window, as a usage report
/// carries it beside the lifetime count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowCount {
    /// Start of the window (by the proxy's clock).
    pub start: DateTime<Utc>,
    /// Calls this epoch accepted in it.
    pub count: i64,
}

/// What the hashed record says about a capped token: the cap, its windows,
/// and the usage the operator has summed for one window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordLimit {
    /// Calls allowed per window.
    pub requests: u64,
    /// Window length in seconds; absent: lifetime cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_seconds: Option<u64>,
    /// What windows are anchored at (the ApiToken's creation).
    pub anchor: DateTime<Utc>,
    /// The window `used` was summed for.
    pub window_start: DateTime<Utc>,
    /// Calls in that window the operator knows of, over every replica.
    pub used: u64,
    /// Per usage-report epoch: the window count of that epoch's report that
    /// `used` includes (a proxy subtracts its own from its live count).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reported: BTreeMap<String, u64>,
}

impl RecordLimit {
    /// The window of `now` under this record's cap.
    pub fn window(&self, now: DateTime<Utc>) -> Window {
        Window::at(self.anchor, self.per_seconds, now)
    }

    /// Same cap, windows and summed usage, ignoring the per-epoch detail.
    pub fn same_usage(&self, other: &Self) -> bool {
        (self.requests, self.per_seconds, self.anchor)
            == (other.requests, other.per_seconds, other.anchor)
            && (self.window_start, self.used) == (other.window_start, other.used)
    }
}

/// `status.usageLimit`: the cap as the operator last summed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageLimitStatus {
    /// Calls allowed per window (a copy of `spec.usageLimit.requests`).
    pub requests: i64,
    /// Calls counted in the current window, over every proxy replica.
    pub used: i64,
    /// Calls left in the current window.
    pub remaining: i64,
    /// Start of the current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<DateTime<Utc>>,
    /// When the quota renews (end of the current window); absent for a
    /// lifetime cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews_at: Option<DateTime<Utc>>,
}

/// The period of a cap as a `TimeDelta` (for requeues).
pub fn period(per_s: u64) -> TimeDelta {
    TimeDelta::try_seconds(i64::try_from(per_s).unwrap_or(i64::MAX)).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000 + s, 0).unwrap()
    }

    #[test]
    fn windows_are_fixed_and_anchored_at_creation() {
        let anchor = t(0);
        let day = Some(86_400);
        for (now, start, end) in [
            (0, 0, 86_400),
            (1, 0, 86_400),
            (86_399, 0, 86_400),
            (86_400, 86_400, 172_800),
            (200_000, 172_800, 259_200),
            (-5, 0, 86_400),
        ] {
            let w = Window::at(anchor, day, t(now));
            assert_eq!((w.start, w.end), (t(start), Some(t(end))), "at {now}");
        }
        let life = Window::at(anchor, None, t(10_000_000));
        assert_eq!((life.start, life.end), (anchor, None));
    }

    #[test]
    fn index_and_start_agree_and_saturate() {
        for now in [0, 59, 60, 61, 3_599, 3_600, 1_000_000] {
            let k = window_index(100, 60, 100 + now);
            let start = window_start_s(100, 60, k);
            assert!(start <= 100 + now && 100 + now < start + 60, "{now}");
            assert_eq!(window_index(100, 60, start), k);
        }
        assert_eq!(window_index(100, 0, 1_000), 0);
        assert_eq!(window_start_s(0, u64::MAX, u64::MAX), i64::MAX);
    }

    #[test]
    fn retry_after_rounds_up_and_lifetime_never_renews() {
        let w = Window::at(t(0), Some(60), t(30));
        assert_eq!(w.retry_after(t(30)), Some(30));
        let almost = t(59) + TimeDelta::milliseconds(999);
        assert_eq!(w.retry_after(almost), Some(1));
        assert_eq!(w.retry_after(t(29) + TimeDelta::milliseconds(1)), Some(31));
        assert_eq!(Window::at(t(0), None, t(30)).retry_after(t(30)), None);
    }

    #[test]
    fn remaining_never_goes_below_zero() {
        assert_eq!(remaining(10, 3), 7);
        assert_eq!(remaining(10, 10), 0);
        assert_eq!(remaining(10, 12), 0);
    }

    #[test]
    fn periods_parse_within_bounds() {
        let limit = |per: Option<&str>| UsageLimit {
            requests: 5,
            per: per.map(str::to_owned),
        };
        assert_eq!(limit(None).period_secs().unwrap(), None);
        assert_eq!(limit(Some("30d")).period_secs().unwrap(), Some(2_592_000));
        assert_eq!(limit(Some("1m")).period_secs().unwrap(), Some(60));
        assert_eq!(limit(Some("1h30m")).period_secs().unwrap(), Some(5_400));
        for bad in ["59s", "0m", "3651d", "x"] {
            assert!(limit(Some(bad)).period_secs().is_err(), "{bad}");
        }
        let huge = UsageLimit {
            requests: i64::MAX,
            per: None,
        };
        assert_eq!(huge.requests(), 1_000_000_000_000);
    }

    #[test]
    fn record_limit_round_trips_and_old_records_have_none() {
        let r = RecordLimit {
            requests: 100,
            per_seconds: Some(60),
            anchor: t(0),
            window_start: t(60),
            used: 7,
            reported: BTreeMap::from([("ep0ch".to_owned(), 3)]),
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["perSeconds"], 60);
        assert_eq!(json["reported"]["ep0ch"], 3);
        assert_eq!(serde_json::from_value::<RecordLimit>(json).unwrap(), r);
        let mut other = r.clone();
        other.reported.clear();
        assert!(r.same_usage(&other));
        other.used = 8;
        assert!(!r.same_usage(&other));
    }
}
