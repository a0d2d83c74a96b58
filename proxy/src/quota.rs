//! Usage caps on the hot path: a capped token's record says how many calls
//! the operator has summed for a window and how many of them came from each
//! report epoch; [`Quota`] counts this epoch's calls in the current window.
//! A call is admitted while
//!
//! ```text
//! record.used + (this epoch's calls in the window − this epoch's part of record.used) < requests
//! ```
//!
//! so calls this replica already reported and the operator already summed
//! are never counted twice, and calls it has not reported (or the operator
//! has not summed yet) are never missed. The count and the check are one
//! compare-and-swap, so concurrent requests on one replica never take more
//! than the cap. Tokens without a cap never reach this module.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use prodgy_crds::RecordLimit;
use prodgy_crds::usage_limit::{window_index, window_start_s};

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const INDEX_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

const NANOS: i64 = 1_000_000_000;

/// A capped record's cap and summed usage, compacted for the index.
#[derive(Debug, PartialEq, Eq)]
pub struct Limit {
    requests: u64,
    /// Window length; 0 for a lifetime cap.
    per_s: u64,
    anchor_s: i64,
    /// The window `used` belongs to.
    window: u64,
    used: u64,
    /// `(epoch, its part of used)`: a handful at most.
    reported: Box<[(Box<str>, u64)]>,
}

impl Limit {
    /// Compacts the record's part.
    pub fn new(r: &RecordLimit) -> Self {
        let per_s = r.per_seconds.unwrap_or(0);
        let anchor_s = r.anchor.timestamp();
        Self {
            requests: r.requests.max(1),
            per_s,
            anchor_s,
            window: window_index(anchor_s, per_s, r.window_start.timestamp()),
            used: r.used,
            reported: r
                .reported
                .iter()
                .map(|(e, n)| (e.as_str().into(), *n))
                .collect(),
        }
    }

    /// Calls allowed per window.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// The window of `unix_ns`.
    pub fn index(&self, unix_ns: i64) -> u64 {
        window_index(self.anchor_s, self.per_s, unix_ns.div_euclid(NANOS))
    }

    /// `(record.used, epoch's part of it)` for window `index`: nothing is
    /// known yet of a window the record was not summed for.
    pub fn seen(&self, index: u64, epoch: &str) -> (u64, u64) {
        if index != self.window {
            return (0, 0);
        }
        let part = self
            .reported
            .iter()
            .find(|(e, _)| &**e == epoch)
            .map_or(0, |(_, n)| *n);
        (self.used, part)
    }

    /// Whole seconds from `unix_ns` to the end of its window (at least 1);
    /// `None` for a lifetime cap, which never renews.
    pub fn retry_after(&self, unix_ns: i64) -> Option<u64> {
        if self.per_s == 0 {
            return None;
        }
        let end_s = window_start_s(self.anchor_s, self.per_s, self.index(unix_ns) + 1);
        let left = i128::from(end_s) * i128::from(NANOS) - i128::from(unix_ns);
        let secs = u64::try_from((left + i128::from(NANOS) - 1) / i128::from(NANOS)).unwrap_or(1);
        Some(secs.max(1))
    }
}

/// Whether one more call fits: the rule of the module docs (pure).
pub const fn admits(requests: u64, used: u64, reflected: u64, count: u64) -> bool {
    used.saturating_add(count.saturating_sub(reflected)) < requests
}

/// One token's calls in the current window in this epoch, and the window
/// definition the usage reporter needs to name the window.
#[derive(Debug, Default)]
pub struct Quota {
    /// Window index (high 24 bits) and count (low 40 bits), one word so a
    /// window change and a count are one atomic step.
    state: AtomicU64,
    capped: AtomicBool,
    anchor_s: AtomicI64,
    per_s: AtomicU64,
}

const fn pack(index: u64, count: u64) -> u64 {
    ((index & INDEX_MASK) << COUNT_BITS) | (count & COUNT_MASK)
}

const fn unpack(state: u64) -> (u64, u64) {
    (state >> COUNT_BITS, state & COUNT_MASK)
}

impl Quota {
    /// Counts one call in window `index` if `admit(count so far)` allows it.
    pub fn take(&self, index: u64, admit: impl Fn(u64) -> bool) -> bool {
        let index = index & INDEX_MASK;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (i, c) = unpack(cur);
            let count = if i == index { c } else { 0 };
            if !admit(count) {
                return false;
            }
            let next = pack(index, count.saturating_add(1).min(COUNT_MASK));
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(v) => cur = v,
            }
        }
    }

    /// `(window index, count)` now.
    pub fn current(&self) -> (u64, u64) {
        unpack(self.state.load(Ordering::Relaxed))
    }

    /// Takes `count` calls of window `index` off this epoch's count: a new
    /// epoch starts where the old one's acknowledged report ended.
    pub fn rebase(&self, index: u64, count: u64) {
        let index = index & INDEX_MASK;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (i, c) = unpack(cur);
            if i != index {
                return;
            }
            let next = pack(i, c.saturating_sub(count));
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(v) => cur = v,
            }
        }
    }

    /// Remembers the cap's windows (stores only on a change: the hot path
    /// mostly reads).
    fn set_windows(&self, limit: &Limit) {
        if !self.capped.load(Ordering::Relaxed)
            || self.anchor_s.load(Ordering::Relaxed) != limit.anchor_s
            || self.per_s.load(Ordering::Relaxed) != limit.per_s
        {
            self.anchor_s.store(limit.anchor_s, Ordering::Relaxed);
            self.per_s.store(limit.per_s, Ordering::Relaxed);
            self.capped.store(true, Ordering::Relaxed);
        }
    }

    /// The index of the window starting at `start_s` (Unix seconds).
    pub fn index_of(&self, start_s: i64) -> u64 {
        window_index(
            self.anchor_s.load(Ordering::Relaxed),
            self.per_s.load(Ordering::Relaxed),
            start_s,
        ) & INDEX_MASK
    }

    /// For the usage report: `(window index, its start in Unix seconds,
    /// count)` once the token was seen capped.
    pub fn window(&self) -> Option<(u64, i64, u64)> {
        if !self.capped.load(Ordering::Relaxed) {
            return None;
        }
        let (index, count) = self.current();
        let start = window_start_s(
            self.anchor_s.load(Ordering::Relaxed),
            self.per_s.load(Ordering::Relaxed),
            index,
        );
        Some((index, start, count))
    }
}

/// Admits one call of a capped token at `unix_ns` for this replica's
/// `epoch`, counting it; or refuses with the `Retry-After` seconds (none for
/// a lifetime cap).
pub fn admit(limit: &Limit, quota: &Quota, epoch: &str, unix_ns: i64) -> Result<(), Option<u64>> {
    quota.set_windows(limit);
    let index = limit.index(unix_ns);
    let (used, reflected) = limit.seen(index, epoch);
    if quota.take(index, |count| {
        admits(limit.requests, used, reflected, count)
    }) {
        Ok(())
    } else {
        Err(limit.retry_after(unix_ns))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};

    use super::*;

    const T0: i64 = 1_900_000_000;

    fn limit(requests: u64, per: Option<u64>, window_start: i64, used: u64, mine: u64) -> Limit {
        Limit::new(&RecordLimit {
            requests,
            per_seconds: per,
            anchor: DateTime::<Utc>::from_timestamp(T0, 0).unwrap(),
            window_start: DateTime::<Utc>::from_timestamp(T0 + window_start, 0).unwrap(),
            used,
            reported: BTreeMap::from([("me".to_owned(), mine), ("other".to_owned(), 1)]),
        })
    }

    fn ns(s: i64) -> i64 {
        (T0 + s) * NANOS
    }

    #[test]
    fn the_rule_counts_unreported_calls_once() {
        // (requests, used, reflected, count, admitted)
        for (r, u, refl, c, ok) in [
            (10, 0, 0, 0, true),
            (10, 0, 0, 9, true),
            (10, 0, 0, 10, false),
            (10, 7, 7, 9, true),   // 7 of mine summed, 2 new: 9 in all
            (10, 7, 7, 10, false), // 7 + 3 new
            (10, 7, 0, 2, true),   // 7 of others + 2 of mine unreported
            (10, 7, 0, 3, false),
            (10, 12, 0, 0, false), // over already (other replicas)
            (10, 5, 9, 3, true),   // a count below its reported part (rotated): no credit
            (1, 0, 0, 0, true),
        ] {
            assert_eq!(admits(r, u, refl, c), ok, "{r} {u} {refl} {c}");
        }
    }

    #[test]
    fn a_window_not_summed_yet_starts_from_this_epochs_count() {
        let l = limit(10, Some(60), 60, 8, 3);
        assert_eq!(l.seen(l.index(ns(61)), "me"), (8, 3));
        assert_eq!(l.seen(l.index(ns(61)), "stranger"), (8, 0));
        assert_eq!(l.seen(l.index(ns(120)), "me"), (0, 0), "renewed");
        assert_eq!(l.seen(l.index(ns(59)), "me"), (0, 0), "clock behind");
    }

    #[test]
    fn retry_after_is_the_time_to_renewal_and_absent_for_a_lifetime_cap() {
        let l = limit(1, Some(60), 0, 1, 0);
        assert_eq!(l.retry_after(ns(0)), Some(60));
        assert_eq!(l.retry_after(ns(59)), Some(1));
        assert_eq!(l.retry_after(ns(30) + 1), Some(30));
        assert_eq!(limit(1, None, 0, 1, 0).retry_after(ns(30)), None);
    }

    #[test]
    fn admit_counts_up_to_the_cap_and_renews_with_the_window() {
        let q = Quota::default();
        let l = limit(3, Some(60), 0, 1, 0);
        assert_eq!(admit(&l, &q, "me", ns(1)), Ok(()));
        assert_eq!(admit(&l, &q, "me", ns(2)), Ok(()));
        assert_eq!(admit(&l, &q, "me", ns(3)), Err(Some(57)));
        assert_eq!(q.current(), (0, 2));
        assert_eq!(q.window(), Some((0, T0, 2)));
        // The next window: the record's 1 was for the old one.
        for _ in 0..3 {
            assert_eq!(admit(&l, &q, "me", ns(61)), Ok(()));
        }
        assert_eq!(admit(&l, &q, "me", ns(62)), Err(Some(58)));
        assert_eq!(q.window(), Some((1, T0 + 60, 3)));
    }

    #[test]
    fn a_rebase_takes_the_old_epochs_acknowledged_calls_off() {
        let q = Quota::default();
        for _ in 0..5 {
            assert!(q.take(2, |_| true));
        }
        q.rebase(1, 5);
        assert_eq!(q.current(), (2, 5), "another window: untouched");
        q.rebase(2, 3);
        assert_eq!(q.current(), (2, 2));
        q.rebase(2, 9);
        assert_eq!(q.current(), (2, 0));
    }

    #[test]
    fn concurrent_calls_never_take_more_than_the_cap() {
        let q = std::sync::Arc::new(Quota::default());
        let l = std::sync::Arc::new(limit(1_000, None, 0, 0, 0));
        let admitted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (q, l) = (q.clone(), l.clone());
                    s.spawn(move || {
                        (0..600)
                            .filter(|_| admit(&l, &q, "me", ns(1)).is_ok())
                            .count() as u64
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1_000);
    }
}
