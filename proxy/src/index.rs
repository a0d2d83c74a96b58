//! The token index: SHA-256 digest → compact record, read on every request
//! without a contended lock.
//!
//! Layout, chosen for 1,000,000 tokens in under 200 MB:
//! * one [`Record`] per ApiToken (namespace and name in one allocation, a
//!   UUID as 16 bytes, the current digest inline, product interned, scopes a
//!   bit set, expiry and the digest's own end folded into one `i64`), shared
//!   by every digest that points at it;
//! * 64 to 127 shards, picked by the first digest bytes, each two
//!   `hashbrown::HashTable`s: current digests as 8-byte record pointers,
//!   superseded ones (rare) as 16-byte slots that add the digest's number.
//!   The digest is uniformly random, so its bytes are the hash: no
//!   hashing work, and no attacker-chosen keys (a SHA-256 preimage would be
//!   needed). A hash table's bucket count is a power of two at most 7/8 full,
//!   so a fixed shard count can leave half the buckets empty (a million
//!   digests in 64 shards: 2^21 buckets); a full rebuild picks the count
//!   that needs the fewest buckets ([`shard_count`]).
//!
//! Readers `load()` the shard list once (no shared write); the single writer
//! clones the one or two shards an update touches and swaps in a new list
//! sharing the others, so a watch event costs a few tens of microseconds
//! even at a million tokens. A full rebuild (first sync, relist, file
//! reload) builds fresh shards beside the old ones and swaps them: the old
//! state keeps enforcing until then.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use chrono::{DateTime, Utc};
use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use http::HeaderValue;
use prodgy_crds::{HashedRecord, RecordState, Refusal, ScopeSet, SourceRange, TokenHash};

use crate::cells::{Cells, TokenCell};
use crate::quota::Limit;
use crate::uid::{self, UidKey};
use crate::{Error, Result};

/// Shard counts a full rebuild chooses from.
const SHARDS: std::ops::Range<usize> = 64..128;

/// "Never" for expiry instants.
pub const NEVER: i64 = i64::MAX;

/// A product name, interned: records share one copy and its header value.
#[derive(Debug)]
pub struct Product {
    name: Box<str>,
    header: HeaderValue,
    served: bool,
}

impl Product {
    /// The product name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The `x-prodgy-product` value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
    /// Whether this proxy serves the product (`--products`).
    pub fn served(&self) -> bool {
        self.served
    }
}

/// One accepted digest of a record.
#[derive(Clone, Copy, Debug)]
pub struct HashSlot {
    digest: TokenHash,
    /// Unix nanoseconds from which this digest is refused as expired: the
    /// earlier of the token's expiry and, for a superseded digest, the end
    /// of its grace period. [`NEVER`] for a current digest of a token
    /// without expiry.
    until: i64,
}

/// What the proxy knows about one ApiToken: everything needed to decide
/// and to build the identity headers, nothing secret.
#[derive(Debug)]
pub struct Record {
    /// Set on first use; an `ArcSwapOption` is one pointer wide, half an
    /// `OnceLock`'s size, which counts at a million records.
    cell: ArcSwapOption<TokenCell>,
    /// `<namespace>/<name>`, followed by the UID when it is not a UUID.
    text: Box<str>,
    ns_len: u16,
    label_len: u16,
    /// The UID's 16 bytes when it is a UUID (as the API server makes them);
    /// 16 bytes instead of 36 characters, a million times.
    uuid: [u8; 16],
    first: HashSlot,
    /// Superseded digests in their grace period, source ranges and the
    /// usage cap (all rare): one thin pointer, 8 bytes instead of a boxed
    /// slice's 16, times a million records.
    rare: Option<Box<Rare>>,
    /// `(requests per second, burst)`; `rps == 0` means unlimited.
    rate: (u32, u32),
    product: Arc<Product>,
    scopes: ScopeSet,
    state: RecordState,
}

/// The parts of a record few records have, behind one pointer.
#[derive(Debug)]
struct Rare {
    /// Superseded digests in their grace period.
    more: Vec<HashSlot>,
    /// Source ranges; empty for any source.
    sources: Vec<SourceRange>,
    /// The usage cap.
    limit: Option<Limit>,
}

impl Record {
    /// ApiToken namespace.
    pub fn namespace(&self) -> &str {
        &self.text[..usize::from(self.ns_len)]
    }
    /// ApiToken name.
    pub fn name(&self) -> &str {
        &self.text[usize::from(self.ns_len) + 1..usize::from(self.label_len)]
    }
    /// `<namespace>/<name>`, the `x-prodgy-token` value.
    pub fn label(&self) -> &str {
        &self.text[..usize::from(self.label_len)]
    }
    /// ApiToken UID, exactly as the source gave it.
    pub fn uid(&self) -> Cow<'_, str> {
        match self.uid_key() {
            UidKey::Text(t) => Cow::Borrowed(t),
            UidKey::Uuid(b) => Cow::Owned(uid::format(&b)),
        }
    }
    /// The UID as the writer's table compares it.
    fn uid_key(&self) -> UidKey<'_> {
        match &self.text[usize::from(self.label_len)..] {
            "" => UidKey::Uuid(self.uuid),
            text => UidKey::Text(text),
        }
    }
    /// The product.
    pub fn product(&self) -> &Arc<Product> {
        &self.product
    }
    /// The granted scopes (empty = unrestricted).
    pub fn scopes(&self) -> ScopeSet {
        self.scopes
    }
    /// The source ranges, when the token is restricted to some.
    pub fn sources(&self) -> Option<&[SourceRange]> {
        self.rare
            .as_ref()
            .map(|r| r.sources.as_slice())
            .filter(|s| !s.is_empty())
    }

    /// The usage cap, when the token has one.
    pub fn limit(&self) -> Option<&Limit> {
        self.rare.as_ref().and_then(|r| r.limit.as_ref())
    }

    /// `(requests per second, burst)` when rate-limited.
    pub fn rate(&self) -> Option<(u32, u32)> {
        (self.rate.0 > 0).then_some(self.rate)
    }

    fn slots(&self) -> impl Iterator<Item = &HashSlot> {
        std::iter::once(&self.first).chain(self.rare.iter().flat_map(|r| r.more.iter()))
    }

    fn slot(&self, i: u32) -> &HashSlot {
        match i {
            0 => &self.first,
            n => self
                .rare
                .as_ref()
                .and_then(|r| r.more.get(n as usize - 1))
                .unwrap_or(&self.first),
        }
    }

    /// The decision for digest number `slot` at `now` (unix nanoseconds),
    /// with [`HashedRecord::check`]'s precedence: Revoked > Expired > Inactive.
    pub fn check(&self, slot: u32, now: i64) -> std::result::Result<(), Refusal> {
        self.state.verdict(now >= self.slot(slot).until)
    }

    /// The usage and metrics cell of this token, created on first use.
    /// Racing first uses resolve the same cell from the registry.
    pub fn cell(&self, cells: &Cells) -> Arc<TokenCell> {
        if let Some(c) = self.cell.load_full() {
            return c;
        }
        let c = cells.resolve(self);
        self.cell.store(Some(c.clone()));
        c
    }
}

/// A digest found in the index.
#[derive(Debug)]
pub struct Found {
    /// The record the digest belongs to.
    pub record: Arc<Record>,
    /// Which of the record's digests matched.
    pub slot: u32,
}

/// A superseded digest: its record and which of the record's digests it is.
#[derive(Clone)]
struct Slot {
    record: Arc<Record>,
    idx: u32,
}

impl Slot {
    fn digest(&self) -> &TokenHash {
        &self.record.slot(self.idx).digest
    }
}

/// One shard. A current digest points straight at its record (8 bytes a
/// token: nearly every digest is one); the few superseded digests in their
/// grace period carry their number. A digest is in one of the two only.
#[derive(Clone, Default)]
struct Table {
    current: HashTable<Arc<Record>>,
    superseded: HashTable<Slot>,
}

impl Table {
    fn with_capacity(current: usize, superseded: usize) -> Self {
        Self {
            current: HashTable::with_capacity(current),
            superseded: HashTable::with_capacity(superseded),
        }
    }

    fn find(&self, d: &TokenHash) -> Option<Found> {
        let h = hash_of(d);
        if let Some(r) = self.current.find(h, |r| r.first.digest.ct_eq(d)) {
            return Some(Found {
                record: r.clone(),
                slot: 0,
            });
        }
        self.superseded
            .find(h, |s| s.digest().ct_eq(d))
            .map(|s| Found {
                record: s.record.clone(),
                slot: s.idx,
            })
    }

    /// Adds digest `idx` of `r`, taking the digest from any record that held
    /// it (two tokens sharing a digest: the one added last wins). Returns
    /// the record it was taken from. One probe of each table.
    fn insert(&mut self, r: &Arc<Record>, idx: u32) -> Option<Arc<Record>> {
        let d = r.slot(idx).digest;
        let h = hash_of(&d);
        if idx == 0 {
            let taken = self.take_superseded(h, &d, |_, _| true);
            let e = self.current.entry(
                h,
                |o| o.first.digest.ct_eq(&d),
                |o| hash_of(&o.first.digest),
            );
            replace(e, r.clone()).or(taken)
        } else {
            let taken = self.take_current(h, &d, |_| true);
            let e = self
                .superseded
                .entry(h, |s| s.digest().ct_eq(&d), |s| hash_of(s.digest()));
            let slot = Slot {
                record: r.clone(),
                idx,
            };
            replace(e, slot).map(|s| s.record).or(taken)
        }
    }

    /// Removes digest `d` where `owns(record, idx)` holds for its entry.
    fn take(
        &mut self,
        d: &TokenHash,
        owns: impl Fn(&Arc<Record>, u32) -> bool,
    ) -> Option<Arc<Record>> {
        let h = hash_of(d);
        self.take_current(h, d, |r| owns(r, 0))
            .or_else(|| self.take_superseded(h, d, owns))
    }

    fn take_current(
        &mut self,
        h: u64,
        d: &TokenHash,
        owns: impl Fn(&Arc<Record>) -> bool,
    ) -> Option<Arc<Record>> {
        let e = self
            .current
            .find_entry(h, |r| r.first.digest.ct_eq(d) && owns(r));
        e.ok().map(|e| e.remove().0)
    }

    fn take_superseded(
        &mut self,
        h: u64,
        d: &TokenHash,
        owns: impl Fn(&Arc<Record>, u32) -> bool,
    ) -> Option<Arc<Record>> {
        let e = self
            .superseded
            .find_entry(h, |s| s.digest().ct_eq(d) && owns(&s.record, s.idx));
        e.ok().map(|e| e.remove().0.record)
    }
}

/// Puts `v` in the entry; returns what it held.
fn replace<T>(e: Entry<'_, T>, v: T) -> Option<T> {
    match e {
        Entry::Occupied(mut e) => Some(std::mem::replace(e.get_mut(), v)),
        Entry::Vacant(e) => {
            e.insert(v);
            None
        }
    }
}

/// Source health, shared with `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct SyncStatus {
    ready: AtomicBool,
    /// Unix milliseconds of the last moment the index was known to match
    /// its source; 0 before the first sync.
    last_sync_ms: AtomicI64,
    invalid_total: AtomicU64,
    invalid_now: AtomicUsize,
    source_errors: AtomicU64,
    full_syncs: AtomicU64,
}

impl SyncStatus {
    /// Whether the first full sync happened.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
    /// Records a complete load of the source.
    pub fn full_sync(&self, now_ms: i64) {
        self.full_syncs.fetch_add(1, Ordering::Relaxed);
        self.touch(now_ms);
        self.ready.store(true, Ordering::Release);
    }
    /// Records that the source was reachable and the index matches it.
    pub fn touch(&self, now_ms: i64) {
        self.last_sync_ms.fetch_max(now_ms, Ordering::Relaxed);
    }
    /// Unix milliseconds of the last sync, if any.
    pub fn last_sync_ms(&self) -> Option<i64> {
        Some(self.last_sync_ms.load(Ordering::Relaxed)).filter(|&v| v > 0)
    }
    /// Seconds since the last sync, if any.
    pub fn staleness_secs(&self, now_ms: i64) -> Option<f64> {
        self.last_sync_ms()
            .map(|t| (now_ms.saturating_sub(t)).max(0) as f64 / 1000.0)
    }
    /// Counts one record skipped as invalid.
    pub fn invalid_record(&self) {
        self.invalid_total.fetch_add(1, Ordering::Relaxed);
    }
    /// Sets how many source objects are currently skipped as invalid.
    pub fn set_invalid_now(&self, n: usize) {
        self.invalid_now.store(n, Ordering::Relaxed);
    }
    /// Counts a failed read of the source (watch error, unreadable file).
    pub fn source_error(&self) {
        self.source_errors.fetch_add(1, Ordering::Relaxed);
    }
    /// `(invalid total, invalid now, source errors, full syncs)`.
    pub fn counters(&self) -> (u64, usize, u64, u64) {
        (
            self.invalid_total.load(Ordering::Relaxed),
            self.invalid_now.load(Ordering::Relaxed),
            self.source_errors.load(Ordering::Relaxed),
            self.full_syncs.load(Ordering::Relaxed),
        )
    }
}

/// The shard tables of one moment; an update shares the untouched ones.
#[derive(Clone)]
struct Shards(Box<[Arc<Table>]>);

/// The read side, shared by every worker thread.
pub struct Index {
    shards: ArcSwap<Shards>,
    records: AtomicUsize,
    digests: AtomicUsize,
    /// Health of the source feeding the index.
    pub sync: SyncStatus,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("records", &self.records())
            .field("digests", &self.digests())
            .field("sync", &self.sync)
            .finish()
    }
}

impl Default for Index {
    fn default() -> Self {
        Self {
            shards: ArcSwap::from_pointee(Shards(
                (0..SHARDS.start).map(|_| Arc::default()).collect(),
            )),
            records: AtomicUsize::new(0),
            digests: AtomicUsize::new(0),
            sync: SyncStatus::default(),
        }
    }
}

/// Which of `n` shards a 32-bit value falls in (multiply-shift: no
/// division on the request path).
fn fast_range(x: u32, n: usize) -> usize {
    ((u64::from(x) * n as u64) >> 32) as usize
}

fn shard_of(d: &TokenHash, n: usize) -> usize {
    fast_range(u32::from_le_bytes([d.0[0], d.0[1], d.0[2], d.0[3]]), n)
}

fn hash_of(d: &TokenHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.0[8..16]);
    u64::from_le_bytes(b)
}

/// Buckets hashbrown allocates for `capacity` entries (its rule above 8;
/// tiny tables get a few more).
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..4 => 4,
        4..8 => 8,
        _ => (capacity * 8 / 7).next_power_of_two(),
    }
}

/// The shard count in [`SHARDS`] whose tables need the fewest buckets for
/// `n` uniformly spread entries, with headroom for the spread (four
/// standard deviations above the mean shard). The smallest count wins ties.
pub fn shard_count(n: usize) -> usize {
    SHARDS
        .min_by_key(|&shards| {
            let mean = n.div_ceil(shards);
            let fullest = mean + 4 * mean.isqrt() + 1;
            shards * buckets(fullest)
        })
        .unwrap_or(SHARDS.start)
}

impl Index {
    /// Finds a digest. The final comparison is constant-time.
    pub fn lookup(&self, digest: &TokenHash) -> Option<Found> {
        let shards = self.shards.load();
        shards.0[shard_of(digest, shards.0.len())].find(digest)
    }
    /// Number of tokens loaded.
    pub fn records(&self) -> usize {
        self.records.load(Ordering::Relaxed)
    }
    /// Number of accepted digests (current plus superseded in grace).
    pub fn digests(&self) -> usize {
        self.digests.load(Ordering::Relaxed)
    }
    /// Number of shards (chosen by the last full rebuild).
    pub fn shards(&self) -> usize {
        self.shards.load().0.len()
    }
}

/// Which products this proxy serves; empty means all.
#[derive(Clone, Debug, Default)]
pub struct ProductFilter(Option<HashSet<String>>);

impl ProductFilter {
    /// From `--products`; an empty list serves every product.
    pub fn new<I: IntoIterator<Item = String>>(products: I) -> Self {
        let set: HashSet<String> = products
            .into_iter()
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Self((!set.is_empty()).then_some(set))
    }
    /// Whether `product` is served.
    pub fn serves(&self, product: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.contains(product))
    }
}

/// The writer's records by UID, sharded like the digest tables and for the
/// same reason (a million records in one table: 2^21 buckets).
struct Objects {
    shards: Vec<HashTable<Arc<Record>>>,
    /// hashbrown's seeded default (foldhash): a fraction of SipHash's cost
    /// per UID, which counts a million times at start-up.
    hasher: DefaultHashBuilder,
    len: usize,
}

impl Objects {
    fn with_capacity(n: usize, hasher: DefaultHashBuilder) -> Self {
        let count = shard_count(n);
        let each = n.div_ceil(count);
        Self {
            shards: (0..count)
                .map(|_| HashTable::with_capacity(each + 4 * each.isqrt()))
                .collect(),
            hasher,
            len: 0,
        }
    }

    fn locate(&self, key: UidKey<'_>) -> (u64, usize) {
        let h = self.hasher.hash_one(key);
        (h, fast_range((h >> 32) as u32, self.shards.len()))
    }

    /// Adds `r`, returning the record it replaces (same UID).
    fn insert(&mut self, r: Arc<Record>) -> Option<Arc<Record>> {
        let key = r.uid_key();
        let (h, i) = self.locate(key);
        let hasher = &self.hasher;
        let e = self.shards[i].entry(h, |o| o.uid_key() == key, |o| hasher.hash_one(o.uid_key()));
        let old = replace(e, r);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, uid: &str) -> Option<Arc<Record>> {
        let key = UidKey::of(uid);
        let (h, i) = self.locate(key);
        let old = self.shards[i]
            .find_entry(h, |r| r.uid_key() == key)
            .ok()?
            .remove()
            .0;
        self.len -= 1;
        Some(old)
    }

    fn contains(&self, uid: &str) -> bool {
        let key = UidKey::of(uid);
        let (h, i) = self.locate(key);
        self.shards[i].find(h, |r| r.uid_key() == key).is_some()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Record>> {
        self.shards.iter().flat_map(|t| t.iter())
    }
}

/// The single writer: turns [`HashedRecord`]s into records and publishes them.
pub struct IndexWriter {
    index: Arc<Index>,
    filter: ProductFilter,
    products: HashMap<Box<str>, Arc<Product>>,
    objects: Objects,
}

impl std::fmt::Debug for IndexWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexWriter")
            .field("objects", &self.objects.len)
            .finish_non_exhaustive()
    }
}

fn nanos(at: Option<DateTime<Utc>>) -> i64 {
    match at {
        None => NEVER,
        // Instants beyond 2262 are "never"; before 1677, long past.
        Some(t) => {
            t.timestamp_nanos_opt()
                .unwrap_or(if t.timestamp() > 0 { NEVER } else { i64::MIN })
        }
    }
}

impl IndexWriter {
    /// A writer for `index`, serving the products of `filter`.
    pub fn new(index: Arc<Index>, filter: ProductFilter) -> Self {
        Self {
            index,
            filter,
            products: HashMap::new(),
            objects: Objects::with_capacity(0, DefaultHashBuilder::default()),
        }
    }

    /// The index this writer publishes to.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    fn product(&mut self, name: &str) -> Result<Arc<Product>> {
        if let Some(p) = self.products.get(name) {
            return Ok(p.clone());
        }
        let header = HeaderValue::from_str(name)
            .map_err(|_| Error::InvalidRecord("product is not a valid header value"))?;
        let p = Arc::new(Product {
            name: name.into(),
            header,
            served: self.filter.serves(name),
        });
        self.products.insert(name.into(), p.clone());
        Ok(p)
    }

    /// Validates and compacts one record.
    pub fn compact(&mut self, r: &HashedRecord) -> Result<Arc<Record>> {
        // The digests and source ranges are checked as they are decoded below.
        r.validate_fields()?;
        let label_len = r.namespace.len() + 1 + r.name.len();
        let (Ok(ns_len), Ok(label_len16)) =
            (u16::try_from(r.namespace.len()), u16::try_from(label_len))
        else {
            return Err(Error::InvalidRecord("namespace or name too long"));
        };
        if r.namespace.contains('/') || label_len + r.uid.len() > usize::from(u16::MAX) {
            return Err(Error::InvalidRecord(
                "namespace holds '/' or identity too long",
            ));
        }
        for s in [&r.namespace, &r.name, &r.uid] {
            if HeaderValue::from_str(s).is_err() {
                return Err(Error::InvalidRecord("identity is not a valid header value"));
            }
        }
        let expires_at = nanos(r.expires_at);
        let mut slots = Vec::with_capacity(r.hashes.len());
        for h in &r.hashes {
            let digest = TokenHash::from_hex(&h.sha256)?;
            slots.push(HashSlot {
                digest,
                until: expires_at.min(nanos(h.not_after)),
            });
        }
        let mut slots = slots.into_iter();
        let first = slots.next().ok_or(Error::InvalidRecord("no hash"))?;
        let more: Vec<HashSlot> = slots.collect();
        let sources = r.source_ranges()?;
        let limit = r.usage_limit.as_deref().map(Limit::new);
        let uuid = uid::parse(&r.uid);
        let tail = if uuid.is_some() { "" } else { r.uid.as_str() };
        let mut text = String::with_capacity(label_len + tail.len());
        text.push_str(&r.namespace);
        text.push('/');
        text.push_str(&r.name);
        text.push_str(tail);
        Ok(Arc::new(Record {
            cell: ArcSwapOption::empty(),
            text: text.into_boxed_str(),
            ns_len,
            label_len: label_len16,
            uuid: uuid.unwrap_or_default(),
            first,
            rare: (!more.is_empty() || !sources.is_empty() || limit.is_some()).then(|| {
                Box::new(Rare {
                    more,
                    sources,
                    limit,
                })
            }),
            rate: r
                .rate_limit
                .as_ref()
                .map_or((0, 0), |l| (l.requests_per_second.max(1), l.burst().max(1))),
            product: self.product(&r.product)?,
            scopes: r.scope_set(),
            state: r.state,
        }))
    }

    /// Adds or replaces the record with `record.uid()`.
    pub fn upsert(&mut self, record: &Arc<Record>) {
        let old = self.objects.insert(record.clone());
        self.publish(old.as_ref(), Some(record));
    }

    /// Removes the record with this UID; returns whether one was there.
    pub fn remove(&mut self, uid: &str) -> bool {
        let Some(old) = self.objects.remove(uid) else {
            return false;
        };
        self.publish(Some(&old), None);
        true
    }

    /// Whether a record with this UID is loaded.
    pub fn contains(&self, uid: &str) -> bool {
        self.objects.contains(uid)
    }

    /// Rewrites the shards one changed record touches: each is copied on
    /// its first change, and the new list shares the others.
    fn publish(&mut self, old: Option<&Arc<Record>>, new: Option<&Arc<Record>>) {
        let mut tables = self.index.shards.load().0.to_vec();
        let n = tables.len();
        let mut digests = self.index.digests() as isize;
        if let Some(old) = old {
            for (idx, slot) in old.slots().enumerate() {
                let table = Arc::make_mut(&mut tables[shard_of(&slot.digest, n)]);
                let owned = |r: &Arc<Record>, i: u32| Arc::ptr_eq(r, old) && i as usize == idx;
                if table.take(&slot.digest, owned).is_some() {
                    digests -= 1;
                }
            }
        }
        if let Some(new) = new {
            for (idx, slot) in new.slots().enumerate() {
                let table = Arc::make_mut(&mut tables[shard_of(&slot.digest, n)]);
                match table.insert(new, idx as u32) {
                    Some(other) => tracing::warn!(
                        uid = %new.uid(),
                        other_uid = %other.uid(),
                        "two tokens share a digest; the newer record wins"
                    ),
                    None => digests += 1,
                }
            }
        }
        self.index
            .shards
            .store(Arc::new(Shards(tables.into_boxed_slice())));
        self.index
            .digests
            .store(digests.max(0) as usize, Ordering::Relaxed);
        self.index
            .records
            .store(self.objects.len, Ordering::Relaxed);
    }

    /// Replaces the whole content with `records` (first sync, relist, file
    /// reload). Later records win over earlier ones with the same UID.
    pub fn replace_all(&mut self, records: Vec<Arc<Record>>) {
        let mut objects = Objects::with_capacity(records.len(), self.objects.hasher.clone());
        for r in records {
            if let Some(old) = objects.insert(r) {
                tracing::warn!(
                    uid = %old.uid(),
                    "the same token UID appears twice; the later record wins"
                );
            }
        }
        let total: usize = objects.iter().map(|r| r.slots().count()).sum();
        let n = shard_count(total);
        let mut sizes = vec![(0usize, 0usize); n];
        for r in objects.iter() {
            for (idx, s) in r.slots().enumerate() {
                let size = &mut sizes[shard_of(&s.digest, n)];
                if idx == 0 { size.0 += 1 } else { size.1 += 1 }
            }
        }
        let mut tables: Vec<Table> = sizes
            .iter()
            .map(|&(current, superseded)| Table::with_capacity(current, superseded))
            .collect();
        let mut digests = 0;
        for r in objects.iter() {
            for (idx, s) in r.slots().enumerate() {
                match tables[shard_of(&s.digest, n)].insert(r, idx as u32) {
                    Some(_) => {
                        tracing::warn!(uid = %r.uid(), "two tokens share a digest; one wins");
                    }
                    None => digests += 1,
                }
            }
        }
        self.index
            .shards
            .store(Arc::new(Shards(tables.into_iter().map(Arc::new).collect())));
        self.objects = objects;
        // Drop products nothing refers to any more.
        self.products.retain(|_, p| Arc::strong_count(p) > 1);
        self.index.digests.store(digests, Ordering::Relaxed);
        self.index
            .records
            .store(self.objects.len, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use prodgy_crds::{HashEntry, RateLimit, Scope, Token};

    use super::*;

    fn record(uid: &str, token: &Token) -> HashedRecord {
        HashedRecord {
            scopes: vec![Scope::AgentsRead],
            rate_limit: Some(RateLimit {
                requests_per_second: 5,
                burst: None,
            }),
            ..HashedRecord::active("team-a", &format!("tok-{uid}"), uid, "acme", &token.hash())
        }
    }

    fn writer() -> IndexWriter {
        IndexWriter::new(Arc::new(Index::default()), ProductFilter::default())
    }

    #[test]
    fn records_keep_their_identity_and_settings() {
        let mut w = writer();
        let t = Token::generate("prod").unwrap();
        let r = w.compact(&record("u-1", &t)).unwrap();
        assert_eq!(r.namespace(), "team-a");
        assert_eq!(r.name(), "tok-u-1");
        assert_eq!(r.label(), "team-a/tok-u-1");
        assert_eq!(r.uid(), "u-1");
        assert_eq!(r.product().name(), "acme");
        assert!(r.scopes().allows(Scope::AgentsRead) && !r.scopes().allows(Scope::AgentsWrite));
        assert_eq!(r.rate(), Some((5, 5)));
        w.upsert(&r);
        let found = w.index().lookup(&t.hash()).unwrap();
        assert_eq!(found.record.uid(), "u-1");
        assert!(
            w.index()
                .lookup(&Token::generate("prod").unwrap().hash())
                .is_none()
        );
    }

    #[test]
    fn check_agrees_with_the_contract_on_every_combination() {
        let t = Token::generate("prod").unwrap();
        let at = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let mut w = writer();
        for state in [
            RecordState::Active,
            RecordState::Inactive,
            RecordState::Revoked,
        ] {
            for expires in [None, Some(at)] {
                for not_after in [None, Some(at - chrono::Duration::seconds(5))] {
                    let mut hr = record("u", &t);
                    hr.state = state;
                    hr.expires_at = expires;
                    hr.hashes[0].not_after = not_after;
                    let r = w.compact(&hr).unwrap();
                    for dt in [-10, -5, -1, 0, 1] {
                        let now = at + chrono::Duration::seconds(dt);
                        let want = hr.check(&hr.hashes[0], now);
                        let got = r.check(0, now.timestamp_nanos_opt().unwrap());
                        assert_eq!(got, want, "{state:?} {expires:?} {not_after:?} {dt}");
                    }
                }
            }
        }
    }

    #[test]
    fn regeneration_replaces_digests_and_grace_keeps_the_old_one() {
        let mut w = writer();
        let old = Token::generate("prod").unwrap();
        let new = Token::generate("prod").unwrap();
        let hr = record("u-1", &old);
        let r = w.compact(&hr).unwrap();
        w.upsert(&r);
        assert_eq!((w.index().records(), w.index().digests()), (1, 1));

        // Regenerated with a grace period: both digests resolve, the old one
        // to its own slot with its own end.
        let mut hr2 = hr.clone();
        let until = Utc::now() + chrono::Duration::hours(1);
        hr2.hashes = vec![
            HashEntry::current(&new.hash(), 1),
            HashEntry {
                sha256: old.hash().to_hex(),
                regeneration: 0,
                not_after: Some(until),
            },
        ];
        let r = w.compact(&hr2).unwrap();
        w.upsert(&r);
        assert_eq!((w.index().records(), w.index().digests()), (1, 2));
        let f = w.index().lookup(&old.hash()).unwrap();
        assert_eq!(f.slot, 1);
        let now = Utc::now().timestamp_nanos_opt().unwrap();
        assert_eq!(f.record.check(f.slot, now), Ok(()));
        assert_eq!(
            f.record.check(f.slot, nanos(Some(until))),
            Err(Refusal::Expired)
        );

        // Without grace: the old digest is gone at once.
        let mut hr3 = hr2.clone();
        hr3.hashes.truncate(1);
        let r = w.compact(&hr3).unwrap();
        w.upsert(&r);
        assert!(w.index().lookup(&old.hash()).is_none());
        assert!(w.index().lookup(&new.hash()).is_some());
        assert_eq!(w.index().digests(), 1);

        assert!(w.remove("u-1"));
        assert!(!w.remove("u-1"));
        assert!(w.index().lookup(&new.hash()).is_none());
        assert_eq!((w.index().records(), w.index().digests()), (0, 0));
    }

    #[test]
    fn uuid_uids_are_kept_as_bytes_and_read_back_as_given() {
        let mut w = writer();
        let t = Token::generate("prod").unwrap();
        for uid in [
            "0f8e4c1a-92b3-4d5e-a6f7-0123456789ab",
            "0F8E4C1A-92B3-4D5E-A6F7-0123456789AB",
            "u-2",
        ] {
            let r = w.compact(&record(uid, &t)).unwrap();
            assert_eq!(r.uid(), uid);
            assert_eq!(r.label(), format!("team-a/tok-{uid}"));
            w.upsert(&r);
            assert!(w.contains(uid));
            assert_eq!(w.index().lookup(&t.hash()).unwrap().record.uid(), uid);
            assert!(w.remove(uid), "{uid}");
            assert!(!w.contains(uid));
        }
        let r = w
            .compact(&record("0f8e4c1a-92b3-4d5e-a6f7-0123456789ab", &t))
            .unwrap();
        assert_eq!(r.text.len(), r.label().len(), "a UUID is not kept as text");
    }

    #[test]
    fn a_digest_shared_by_two_tokens_goes_to_the_one_written_last() {
        let mut w = writer();
        let (a, b) = (
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
        );
        let mut hr = record("u-1", &a);
        let until = Utc::now() + chrono::Duration::hours(1);
        hr.hashes.push(HashEntry {
            sha256: b.hash().to_hex(),
            regeneration: 0,
            not_after: Some(until),
        });
        let first = w.compact(&hr).unwrap();
        w.upsert(&first);
        // u-2's current digest is u-1's superseded one, and the other way.
        let second = w.compact(&record("u-2", &b)).unwrap();
        w.upsert(&second);
        let found = w.index().lookup(&b.hash()).unwrap();
        assert_eq!((found.record.uid(), found.slot), ("u-2".into(), 0));
        assert_eq!(w.index().digests(), 2);
        let again = w.compact(&hr).unwrap();
        w.upsert(&again);
        let found = w.index().lookup(&b.hash()).unwrap();
        assert_eq!((found.record.uid(), found.slot), ("u-1".into(), 1));
        assert!(w.remove("u-2"));
        assert!(
            w.index().lookup(&b.hash()).is_some(),
            "u-1 keeps its digest"
        );
        assert!(w.remove("u-1"));
        assert_eq!(w.index().digests(), 0);
    }

    #[test]
    fn replace_all_drops_what_is_not_listed() {
        let mut w = writer();
        let tokens: Vec<Token> = (0..200).map(|_| Token::generate("prod").unwrap()).collect();
        let recs: Vec<_> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| w.compact(&record(&format!("u{i}"), t)).unwrap())
            .collect();
        w.replace_all(recs);
        assert_eq!(w.index().records(), 200);
        for t in &tokens {
            assert!(w.index().lookup(&t.hash()).is_some());
        }
        let keep: Vec<_> = tokens[..50]
            .iter()
            .enumerate()
            .map(|(i, t)| w.compact(&record(&format!("u{i}"), t)).unwrap())
            .collect();
        w.replace_all(keep);
        assert_eq!((w.index().records(), w.index().digests()), (50, 50));
        assert!(w.index().lookup(&tokens[10].hash()).is_some());
        assert!(w.index().lookup(&tokens[150].hash()).is_none());
        assert!(w.contains("u49") && !w.contains("u50"));
    }

    #[test]
    fn invalid_records_are_refused_with_a_reason() {
        let mut w = writer();
        let t = Token::generate("prod").unwrap();
        let mut bad = record("u", &t);
        bad.hashes[0].sha256 = "zz".into();
        assert!(w.compact(&bad).is_err());
        let mut bad = record("u", &t);
        bad.namespace = "a/b".into();
        assert!(w.compact(&bad).is_err());
        let mut bad = record("u", &t);
        bad.product = "bad\nproduct".into();
        assert!(w.compact(&bad).is_err());
    }

    #[test]
    fn products_outside_the_filter_are_marked_unserved() {
        let mut w = IndexWriter::new(
            Arc::new(Index::default()),
            ProductFilter::new(["acme".to_owned()]),
        );
        let t = Token::generate("prod").unwrap();
        let mut hr = record("u", &t);
        assert!(w.compact(&hr).unwrap().product().served());
        hr.product = "other".into();
        assert!(!w.compact(&hr).unwrap().product().served());
        assert!(ProductFilter::new([String::new()]).serves("anything"));
    }

    #[test]
    fn records_and_slots_stay_compact() {
        // A million of each: every 8 bytes here is 8 MB of RSS.
        assert!(
            size_of::<Record>() <= 112,
            "Record is {} bytes",
            size_of::<Record>()
        );
        assert_eq!(size_of::<Arc<Record>>(), 8);
        assert_eq!(size_of::<Slot>(), 16);
    }

    #[test]
    fn shard_counts_keep_the_tables_mostly_full() {
        // 64 shards would take 2^21 buckets for a million digests.
        let n = 1_000_000;
        let shards = shard_count(n);
        let total = shards * buckets(n.div_ceil(shards) + 4 * n.div_ceil(shards).isqrt() + 1);
        assert!(total < 1_300_000, "{shards} shards, {total} buckets");
        for n in [0, 1, 7, 1_000, 917_504, 3_000_000] {
            assert!(SHARDS.contains(&shard_count(n)), "{n}");
        }
        assert_eq!(buckets(0), 0);
        assert_eq!(buckets(7), 8);
        assert_eq!(buckets(14_336), 16_384);
        assert_eq!(buckets(14_337), 32_768);
        for x in [0, 1, u32::MAX / 2, u32::MAX] {
            assert!(fast_range(x, 70) < 70);
        }
    }

    #[test]
    fn far_future_and_far_past_instants_do_not_overflow() {
        let far = Utc.with_ymd_and_hms(9999, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(nanos(Some(far)), NEVER);
        let past = Utc.with_ymd_and_hms(1000, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(nanos(Some(past)), i64::MIN);
    }
}
