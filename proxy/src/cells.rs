//! Per-token counters that outlive index updates: usage (count, last use),
//! request metrics and the rate-limit bucket.
//!
//! A [`TokenCell`] exists per (token UID, product) once the token is first
//! presented, so a million loaded but idle tokens cost nothing here. Records
//! are replaced on every update of their Secret; the cell is found again by
//! key, so counts and the bucket carry over and nothing is counted twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use http::HeaderValue;
use prodgy_crds::RouteGroup;

use crate::index::{Product, Record};
use crate::quota::Quota;

/// Status classes counted: 1xx … 5xx.
pub const STATUS_CLASSES: usize = 5;

/// Index of a status code's class (`0` = 1xx … `4` = 5xx).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, STATUS_CLASSES) - 1
}

/// Index of a route group in [`RouteGroup::ALL`].
pub fn group_index(g: RouteGroup) -> usize {
    RouteGroup::ALL
        .iter()
        .position(|x| *x == g)
        .unwrap_or(RouteGroup::ALL.len() - 1)
}

/// Request counts by route group and status class.
pub type RequestCounts = [[AtomicU64; STATUS_CLASSES]; RouteGroup::ALL.len()];

/// What one token (for one product) has done on this replica.
#[derive(Debug)]
pub struct TokenCell {
    uid: Box<str>,
    namespace: Box<str>,
    name: Box<str>,
    product: Arc<Product>,
    token_header: HeaderValue,
    uid_header: HeaderValue,
    count: AtomicU64,
    last_used_ms: AtomicI64,
    /// Theoretical arrival time of the rate limiter (GCRA), nanoseconds on
    /// the process clock.
    tat: AtomicU64,
    requests: RequestCounts,
    /// Calls in the usage cap's window, shared by the token's products.
    quota: Arc<Quota>,
}

impl TokenCell {
    /// ApiToken UID.
    pub fn uid(&self) -> &str {
        &self.uid
    }
    /// ApiToken namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// ApiToken name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The product the counts belong to.
    pub fn product(&self) -> &Product {
        &self.product
    }
    /// `x-prodgy-token` value.
    pub fn token_header(&self) -> &HeaderValue {
        &self.token_header
    }
    /// `x-prodgy-token-uid` value.
    pub fn uid_header(&self) -> &HeaderValue {
        &self.uid_header
    }
    /// `(accepted requests, last use in unix ms)` since this process started.
    pub fn usage(&self) -> (u64, i64) {
        (
            self.count.load(Ordering::Relaxed),
            self.last_used_ms.load(Ordering::Relaxed),
        )
    }
    /// Request counts by route group and status class.
    pub fn requests(&self) -> &RequestCounts {
        &self.requests
    }

    /// The usage cap's counter (idle unless the token is capped).
    pub fn quota(&self) -> &Arc<Quota> {
        &self.quota
    }

    /// Counts one accepted (forwarded) request.
    pub fn record_use(&self, now_ms: i64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        // Skip the store when another request already wrote a later value:
        // keeps a hot token's cache line mostly read-only.
        if self.last_used_ms.load(Ordering::Relaxed) < now_ms {
            self.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
    }

    /// Counts a finished request in the metrics.
    pub fn record_request(&self, group: RouteGroup, status: u16) {
        self.requests[group_index(group)][status_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one request from the token bucket (GCRA: `rps` per second,
    /// `burst` at once). On refusal returns how long until one is available.
    pub fn acquire(&self, now_ns: u64, rps: u32, burst: u32) -> Result<(), std::time::Duration> {
        let t = 1_000_000_000 / u64::from(rps.max(1));
        let tau = t.saturating_mul(u64::from(burst.max(1)));
        let mut cur = self.tat.load(Ordering::Relaxed);
        loop {
            let next = cur.max(now_ns).saturating_add(t);
            let ahead = next - now_ns;
            if ahead > tau {
                return Err(std::time::Duration::from_nanos(ahead - tau));
            }
            match self
                .tat
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }
}

/// Every cell created so far, in creation order (which also fixes the
/// usage-report shard of each token).
#[derive(Debug, Default)]
pub struct Cells {
    inner: Mutex<CellsInner>,
    /// The usage-report epoch counts are reported under (capped tokens
    /// subtract what the record says this epoch already reported).
    epoch: ArcSwap<String>,
}

#[derive(Debug, Default)]
struct CellsInner {
    by_key: HashMap<(Box<str>, Box<str>), Arc<TokenCell>>,
    all: Vec<Arc<TokenCell>>,
    quotas: HashMap<Box<str>, Arc<Quota>>,
}

impl Cells {
    /// The cell of a record's (UID, product), created if new. Called once
    /// per record version, never on the steady-state hot path.
    pub fn resolve(&self, r: &Record) -> Arc<TokenCell> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let uid: Box<str> = r.uid().into();
        let key = (uid.clone(), r.product().name().into());
        if let Some(c) = inner.by_key.get(&key) {
            return c.clone();
        }
        // The record validated these as header values when it was built.
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        let quota = inner.quotas.entry(uid.clone()).or_default().clone();
        let cell = Arc::new(TokenCell {
            uid_header: header(&uid),
            uid,
            namespace: r.namespace().into(),
            name: r.name().into(),
            product: r.product().clone(),
            token_header: header(r.label()),
            count: AtomicU64::new(0),
            last_used_ms: AtomicI64::new(0),
            tat: AtomicU64::new(0),
            requests: Default::default(),
            quota,
        });
        inner.by_key.insert(key, cell.clone());
        inner.all.push(cell.clone());
        cell
    }

    /// The current usage-report epoch.
    pub fn epoch(&self) -> arc_swap::Guard<Arc<String>> {
        self.epoch.load()
    }

    /// Sets the usage-report epoch (at start and after a rotation).
    pub fn set_epoch(&self, epoch: &str) {
        if self.epoch.load().as_str() != epoch {
            self.epoch.store(Arc::new(epoch.to_owned()));
        }
    }

    /// A snapshot of every cell, in creation order.
    pub fn snapshot(&self) -> Vec<Arc<TokenCell>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .all
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prodgy_crds::{HashedRecord, Token};

    use super::*;
    use crate::index::{Index, IndexWriter, ProductFilter};

    fn cell() -> (Cells, Arc<TokenCell>) {
        let t = Token::generate("prod").unwrap();
        let mut w = IndexWriter::new(Arc::new(Index::default()), ProductFilter::default());
        let r = w
            .compact(&HashedRecord::active("ns", "n", "u", "p", &t.hash()))
            .unwrap();
        let cells = Cells::default();
        let c = r.cell(&cells);
        (cells, c)
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let (_, c) = cell();
        let s = 1_000_000_000u64;
        // 2 per second, burst 3.
        for _ in 0..3 {
            assert!(c.acquire(10 * s, 2, 3).is_ok());
        }
        let wait = c.acquire(10 * s, 2, 3).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Half a second later exactly one more fits.
        assert!(c.acquire(10 * s + s / 2, 2, 3).is_ok());
        assert!(c.acquire(10 * s + s / 2, 2, 3).is_err());
        // After a long pause the full burst is back, not more.
        let later = 100 * s;
        for _ in 0..3 {
            assert!(c.acquire(later, 2, 3).is_ok());
        }
        assert!(c.acquire(later, 2, 3).is_err());
    }

    #[test]
    fn cells_are_shared_by_key_and_count_usage() {
        let (cells, c) = cell();
        assert_eq!(cells.snapshot().len(), 1);
        c.record_use(5_000);
        c.record_use(4_000);
        assert_eq!(c.usage(), (2, 5_000));
        c.record_request(RouteGroup::Agents, 200);
        c.record_request(RouteGroup::Agents, 204);
        c.record_request(RouteGroup::Other, 503);
        assert_eq!(c.requests()[0][1].load(Ordering::Relaxed), 2);
        assert_eq!(
            c.requests()[group_index(RouteGroup::Other)][4].load(Ordering::Relaxed),
            1
        );
        assert_eq!(c.token_header(), "ns/n");
        assert_eq!(c.uid_header(), "u");
    }

    #[test]
    fn status_classes_are_clamped() {
        assert_eq!(status_class(100), 0);
        assert_eq!(status_class(200), 1);
        assert_eq!(status_class(429), 3);
        assert_eq!(status_class(599), 4);
        assert_eq!(status_class(0), 0);
        assert_eq!(status_class(999), 4);
    }
}
