//! The two feeds of the index: a Kubernetes watch of hashed Secrets and a
//! polled file or directory of HashedRecord JSON.
//!
//! Both follow the same rules: not ready until one complete load; a complete
//! load (first sync, relist, file reload) replaces the index wholesale so
//! deleted tokens disappear; while the source is unreachable the last known
//! state keeps being enforced and the staleness metric grows; an invalid
//! record is skipped with a logged reason and counted, never loaded.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use prodgy_crds::HashedRecord;
use prodgy_crds::hashed;

use crate::array::{self, Element};
use crate::clock;
use crate::index::{IndexWriter, Record};
use crate::{Error, Result};

/// The writer, shared with blocking tasks for bulk loads.
pub type SharedWriter = Arc<Mutex<IndexWriter>>;

fn lock(w: &SharedWriter) -> std::sync::MutexGuard<'_, IndexWriter> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Most invalid-record log lines per load; the rest are only counted.
const MAX_INVALID_LOGS: usize = 20;

/// Records read from files, ready to replace the index.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Valid records.
    pub records: Vec<Arc<Record>>,
    /// Records skipped as invalid.
    pub invalid: usize,
}

impl Loaded {
    fn skip(
        &mut self,
        writer: &IndexWriter,
        file: &Path,
        position: usize,
        why: &dyn std::fmt::Display,
    ) {
        self.invalid += 1;
        writer.index().sync.invalid_record();
        if self.invalid <= MAX_INVALID_LOGS {
            tracing::warn!(file = %file.display(), position, reason = %why, "skipping invalid token record");
        }
    }

    fn take(&mut self, writer: &mut IndexWriter, file: &Path, position: usize, json: &[u8]) {
        match HashedRecord::parse_json(json) {
            Ok(r) => self.take_parsed(writer, file, position, &r),
            Err(e) => self.skip(writer, file, position, &Error::from(e)),
        }
    }

    fn take_parsed(
        &mut self,
        writer: &mut IndexWriter,
        file: &Path,
        position: usize,
        r: &HashedRecord,
    ) {
        match writer.compact(r) {
            Ok(rec) => self.records.push(rec),
            Err(e) => self.skip(writer, file, position, &e),
        }
    }
}

/// The files behind a path: the file itself, or a directory's `*.json`
/// files in name order.
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e == "json") && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// What a change check compares: every file with its length and mtime.
pub type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The current fingerprint of a path.
pub fn fingerprint(path: &Path) -> Result<Fingerprint> {
    files(path)?
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).map_err(|source| Error::Io {
                path: f.clone(),
                source,
            })?;
            Ok((f, m.len(), m.modified().ok()))
        })
        .collect()
}

/// Reads every record under `path`. A file that is not valid JSON fails the
/// whole load (the previous state stays); an invalid record is skipped.
pub fn load_path(writer: &mut IndexWriter, path: &Path) -> Result<Loaded> {
    let mut loaded = Loaded::default();
    for f in files(path)? {
        load_file(writer, &f, &mut loaded)?;
    }
    Ok(loaded)
}

fn load_file(writer: &mut IndexWriter, file: &Path, loaded: &mut Loaded) -> Result<()> {
    let path = || file.to_owned();
    let io = |source| Error::Io {
        path: path(),
        source,
    };
    let f = File::open(file).map_err(io)?;
    let mut reader = BufReader::with_capacity(256 * 1024, f);
    let first = loop {
        let buf = reader.fill_buf().map_err(io)?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let b = buf[i];
                reader.consume(i);
                break Some(b);
            }
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    match first {
        // An empty file holds no records.
        None => Ok(()),
        Some(b'[') => {
            // Stream the array: a million records never sit in memory as
            // parsed JSON, only as compact records.
            reader.consume(1);
            let mut position = 0;
            array::for_each_element(reader, |element| {
                match element {
                    Element::Parsed(r) => loaded.take_parsed(writer, file, position, &r),
                    Element::Raw(json) => loaded.take(writer, file, position, json),
                }
                position += 1;
            })
            .map_err(|message| Error::Array {
                path: path(),
                message,
            })
        }
        Some(_) => {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).map_err(io)?;
            // One record: syntax errors fail the file, a bad record is skipped.
            if let Err(source) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                return Err(Error::Json {
                    path: path(),
                    source,
                });
            }
            loaded.take(writer, file, 0, &bytes);
            Ok(())
        }
    }
}

/// Loads `path` into the index if it changed since `last`; returns the new
/// fingerprint on success.
pub async fn reload_if_changed(
    writer: &SharedWriter,
    path: &Path,
    last: Option<&Fingerprint>,
) -> Result<Option<Fingerprint>> {
    let fp = fingerprint(path)?;
    if Some(&fp) == last {
        return Ok(None);
    }
    let started = Instant::now();
    let (w, p) = (writer.clone(), path.to_owned());
    let loaded = tokio::task::spawn_blocking(move || -> Result<(usize, usize)> {
        let mut w = lock(&w);
        let loaded = load_path(&mut w, &p)?;
        let counts = (loaded.records.len(), loaded.invalid);
        w.replace_all(loaded.records);
        Ok(counts)
    })
    .await??;
    let w = lock(writer);
    let sync = &w.index().sync;
    sync.set_invalid_now(loaded.1);
    sync.full_sync(clock::unix_ms());
    tracing::info!(
        path = %path.display(),
        tokens = w.index().records(),
        valid_records = loaded.0,
        invalid_records = loaded.1,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "token file loaded"
    );
    Ok(Some(fp))
}

/// Polls `path` every `interval` and reloads it when it changes. Runs until
/// the process ends.
pub async fn run_file(writer: SharedWriter, path: PathBuf, interval: Duration) {
    let mut last: Option<Fingerprint> = None;
    let mut failing = false;
    loop {
        match reload_if_changed(&writer, &path, last.as_ref()).await {
            Ok(Some(fp)) => {
                last = Some(fp);
                failing = false;
            }
            Ok(None) => lock(&writer).index().sync.touch(clock::unix_ms()),
            Err(e) => {
                lock(&writer).index().sync.source_error();
                // Log a failure once, not on every poll.
                if !failing {
                    tracing::error!(error = %e, "cannot load the token file; enforcing the last loaded state");
                }
                failing = true;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Reads the record of a hashed Secret and checks that it belongs there.
pub fn record_of_secret(writer: &mut IndexWriter, s: &Secret) -> Result<Arc<Record>> {
    let name = s.metadata.name.as_deref().unwrap_or_default();
    let uid = HashedRecord::uid_of_secret_name(name)
        .ok_or(Error::InvalidRecord("Secret name is not apitoken-<uid>"))?;
    let r = HashedRecord::parse_json(HashedRecord::json_of_secret(s)?)?;
    if r.uid != uid {
        return Err(Error::InvalidRecord(
            "Secret name does not match the record's uid",
        ));
    }
    writer.compact(&r)
}

/// State of the watch between events.
#[derive(Debug, Default)]
pub struct WatchState {
    relist: Option<(Vec<Arc<Record>>, HashSet<String>)>,
    invalid: HashSet<String>,
}

fn secret_name(s: &Secret) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// Applies one watch event. Pure apart from the index it publishes to, so
/// tests can feed events directly.
pub async fn apply_event(writer: &SharedWriter, st: &mut WatchState, event: Event<Secret>) {
    let now = clock::unix_ms();
    match event {
        Event::Init => st.relist = Some((Vec::new(), HashSet::new())),
        Event::InitApply(s) => {
            let mut w = lock(writer);
            let parsed = record_of_secret(&mut w, &s);
            if let Some((records, invalid)) = st.relist.as_mut() {
                match parsed {
                    Ok(r) => records.push(r),
                    Err(e) => {
                        w.index().sync.invalid_record();
                        tracing::warn!(secret = %secret_name(&s), reason = %e, "skipping invalid hashed Secret");
                        invalid.insert(secret_name(&s));
                    }
                }
            }
        }
        Event::InitDone => {
            let Some((records, invalid)) = st.relist.take() else {
                return;
            };
            let n = records.len();
            let w = writer.clone();
            let replaced = tokio::task::spawn_blocking(move || lock(&w).replace_all(records)).await;
            if let Err(e) = replaced {
                tracing::error!(error = %e, "applying the token list failed");
                return;
            }
            let w = lock(writer);
            w.index().sync.set_invalid_now(invalid.len());
            st.invalid = invalid;
            w.index().sync.full_sync(now);
            tracing::info!(
                tokens = n,
                invalid = st.invalid.len(),
                "hashed Secrets listed; index replaced"
            );
        }
        Event::Apply(s) => {
            let name = secret_name(&s);
            let mut w = lock(writer);
            match record_of_secret(&mut w, &s) {
                Ok(r) => {
                    tracing::debug!(secret = %name, "hashed Secret applied");
                    w.upsert(&r);
                    st.invalid.remove(&name);
                }
                Err(e) => {
                    // Fail closed: an unreadable update removes the token
                    // rather than keeping a state the owner moved away from.
                    w.index().sync.invalid_record();
                    tracing::warn!(secret = %name, reason = %e, "skipping invalid hashed Secret");
                    if let Some(uid) = HashedRecord::uid_of_secret_name(&name) {
                        w.remove(uid);
                    }
                    st.invalid.insert(name);
                }
            }
            w.index().sync.set_invalid_now(st.invalid.len());
            w.index().sync.touch(now);
        }
        Event::Delete(s) => {
            let name = secret_name(&s);
            let mut w = lock(writer);
            if let Some(uid) = HashedRecord::uid_of_secret_name(&name) {
                w.remove(uid);
            }
            st.invalid.remove(&name);
            w.index().sync.set_invalid_now(st.invalid.len());
            w.index().sync.touch(now);
            tracing::debug!(secret = %name, "hashed Secret deleted");
        }
    }
}

/// Reconnect delays of the watch: 100 ms doubling to 1 s. The cap keeps a
/// revocation made just after an API outage from waiting out a long backoff
/// (kube's default grows to 30 s).
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(BACKOFF_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}

/// Watches hashed Secrets in `namespace` and keeps the index in step; probes
/// the API every `probe_interval` so staleness stays meaningful while no
/// events arrive. Runs until the process ends.
pub async fn run_kube(
    writer: SharedWriter,
    client: kube::Client,
    namespace: String,
    probe_interval: Duration,
) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().labels(hashed::SELECTOR);
    let mut events = watcher::watcher(api.clone(), cfg)
        .backoff(WatchBackoff::default())
        .boxed();
    let mut st = WatchState::default();
    let mut probe = tokio::time::interval(probe_interval.max(Duration::from_millis(100)));
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(ev)) => {
                    if failing {
                        tracing::info!("Kubernetes API reachable again");
                        failing = false;
                    }
                    apply_event(&writer, &mut st, ev).await;
                }
                Some(Err(e)) => {
                    lock(&writer).index().sync.source_error();
                    if !failing {
                        tracing::error!(error = %e, "watching hashed Secrets failed; enforcing the last known state");
                    }
                    failing = true;
                }
                None => {
                    tracing::error!("the hashed Secret watch ended");
                    return;
                }
            },
            _ = probe.tick() => {
                if !lock(&writer).index().sync.ready() {
                    continue;
                }
                match api.list_metadata(&ListParams::default().labels(hashed::SELECTOR).limit(1)).await {
                    Ok(_) => {
                        if failing {
                            tracing::info!("Kubernetes API reachable again");
                            failing = false;
                        }
                        lock(&writer).index().sync.touch(clock::unix_ms());
                    }
                    Err(e) => {
                        lock(&writer).index().sync.source_error();
                        if !failing {
                            tracing::error!(error = %e, "Kubernetes API unreachable; enforcing the last known state");
                        }
                        failing = true;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use prodgy_crds::{RecordState, Token};

    use super::*;
    use crate::index::{Index, ProductFilter};

    fn hashed(uid: &str, t: &Token) -> HashedRecord {
        HashedRecord::active("ns", &format!("n-{uid}"), uid, "acme", &t.hash())
    }

    fn writer() -> SharedWriter {
        Arc::new(Mutex::new(IndexWriter::new(
            Arc::new(Index::default()),
            ProductFilter::default(),
        )))
    }

    #[test]
    fn load_errors_keep_their_causes() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = load_path(&mut lock(&writer()), &missing).unwrap_err();
        let io = e.source().and_then(|c| c.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert!(e.to_string().contains("missing.json"), "{e}");

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{\"version\": ").unwrap();
        let e = load_path(&mut lock(&writer()), &broken).unwrap_err();
        assert!(
            e.source().is_some_and(|c| c.is::<serde_json::Error>()),
            "{e:?}"
        );

        let t = Token::generate("prod").unwrap();
        let mut r = hashed("u1", &t);
        r.hashes[0].sha256 = "not-hex".into();
        let e = lock(&writer()).compact(&r).unwrap_err();
        assert!(matches!(e, Error::Contract(_)), "{e:?}");
    }

    #[test]
    fn watch_backoff_doubles_to_a_one_second_cap_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let first: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(100)));
    }

    #[test]
    fn arrays_single_records_and_directories_load_and_bad_records_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
        );
        let mut bad = hashed("bad", &c);
        bad.hashes[0].sha256 = "nothex".into();
        let array = serde_json::to_string(&vec![
            serde_json::to_value(hashed("a", &a)).unwrap(),
            serde_json::to_value(&bad).unwrap(),
            serde_json::json!({"not": "a record"}),
        ])
        .unwrap();
        std::fs::write(dir.path().join("1.json"), array).unwrap();
        std::fs::write(
            dir.path().join("2.json"),
            serde_json::to_vec_pretty(&hashed("b", &b)).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("ignored.txt"), "not json").unwrap();
        std::fs::write(dir.path().join("3.json"), "  \n").unwrap();
        let w = writer();
        let loaded = load_path(&mut lock(&w), dir.path()).unwrap();
        assert_eq!((loaded.records.len(), loaded.invalid), (2, 2));
        assert_eq!(lock(&w).index().sync.counters().0, 2);

        let mut f = File::create(dir.path().join("4.json")).unwrap();
        f.write_all(b"[{\"version\":1,").unwrap();
        assert!(
            load_path(&mut lock(&w), dir.path()).is_err(),
            "truncated JSON fails the load"
        );
    }

    #[tokio::test]
    async fn reload_happens_only_on_change_and_replaces_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let (a, b) = (
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
        );
        std::fs::write(&path, serde_json::to_vec(&vec![hashed("a", &a)]).unwrap()).unwrap();
        let w = writer();
        let index = lock(&w).index().clone();
        assert!(!index.sync.ready());
        let fp = reload_if_changed(&w, &path, None).await.unwrap().unwrap();
        assert!(index.sync.ready() && index.lookup(&a.hash()).is_some());
        assert!(
            reload_if_changed(&w, &path, Some(&fp))
                .await
                .unwrap()
                .is_none()
        );
        std::fs::write(
            &path,
            serde_json::to_vec(&vec![hashed("b", &b), hashed("b2", &b)]).unwrap(),
        )
        .unwrap();
        reload_if_changed(&w, &path, Some(&fp))
            .await
            .unwrap()
            .unwrap();
        assert!(index.lookup(&a.hash()).is_none());
        assert!(index.lookup(&b.hash()).is_some());
        // A file that disappears keeps the last state.
        std::fs::remove_file(&path).unwrap();
        assert!(reload_if_changed(&w, &path, None).await.is_err());
        assert!(index.lookup(&b.hash()).is_some());
    }

    fn secret(uid: &str, t: &Token) -> Secret {
        hashed(uid, t).to_secret("prodgy-tokens").unwrap()
    }

    #[tokio::test]
    async fn watch_events_update_the_index_and_relists_drop_missing_tokens() {
        let w = writer();
        let index = lock(&w).index().clone();
        let mut st = WatchState::default();
        let (a, b, c) = (
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
        );
        apply_event(&w, &mut st, Event::Init).await;
        apply_event(&w, &mut st, Event::InitApply(secret("a", &a))).await;
        apply_event(&w, &mut st, Event::InitApply(secret("b", &b))).await;
        assert!(!index.sync.ready(), "not ready before InitDone");
        apply_event(&w, &mut st, Event::InitDone).await;
        assert!(index.sync.ready() && index.records() == 2);

        // Revocation through an update.
        let mut rev = hashed("a", &a);
        rev.state = RecordState::Revoked;
        apply_event(
            &w,
            &mut st,
            Event::Apply(rev.to_secret("prodgy-tokens").unwrap()),
        )
        .await;
        let f = index.lookup(&a.hash()).unwrap();
        assert!(f.record.check(f.slot, clock::unix_nanos()).is_err());

        // A Secret whose name does not match its record is refused and removes
        // nothing else.
        let mut wrong = secret("c", &c);
        wrong.metadata.name = Some("apitoken-zzz".into());
        apply_event(&w, &mut st, Event::Apply(wrong)).await;
        assert!(index.lookup(&c.hash()).is_none());
        assert_eq!(index.sync.counters().1, 1);

        // Relist without b: b is gone.
        apply_event(&w, &mut st, Event::Init).await;
        apply_event(&w, &mut st, Event::InitApply(secret("a", &a))).await;
        apply_event(&w, &mut st, Event::InitApply(secret("c", &c))).await;
        assert!(
            index.lookup(&b.hash()).is_some(),
            "old state enforced during a relist"
        );
        apply_event(&w, &mut st, Event::InitDone).await;
        assert!(index.lookup(&b.hash()).is_none());
        assert!(index.lookup(&c.hash()).is_some());
        assert_eq!(index.sync.counters().1, 0);

        apply_event(&w, &mut st, Event::Delete(secret("c", &c))).await;
        assert!(index.lookup(&c.hash()).is_none());
        assert_eq!(index.records(), 1);
    }
}
