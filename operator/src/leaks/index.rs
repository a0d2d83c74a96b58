//! Which ApiToken a digest belongs to: every hash of every hashed record,
//! current and superseded, kept up to date from a watch on the hashed-Secret
//! namespace. Each replica keeps its own, so any replica can answer a report
//! (standbys included) without asking the leader.

use std::{
    collections::HashMap,
    sync::{
        RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use prodgy_crds::{HashedRecord, TokenHash, hashed};
use tracing::{info, warn};

use super::lock_read;

/// The ApiToken a digest belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// ApiToken namespace.
    pub namespace: String,
    /// ApiToken name.
    pub name: String,
    /// ApiToken UID (a precondition of the patch: a token deleted and
    /// re-created under the same name is not touched).
    pub uid: String,
    /// Set for a superseded token: the end of its grace period.
    pub not_after: Option<DateTime<Utc>>,
}

/// Digests to tokens, and hashed Secrets to the digests they hold.
#[derive(Debug, Default)]
pub struct Index {
    by_digest: HashMap<[u8; 32], Known>,
    by_secret: HashMap<String, Vec<[u8; 32]>>,
}

impl Index {
    /// Records (or replaces) what the hashed Secret `secret` holds.
    pub fn put(&mut self, secret: &str, record: &HashedRecord) {
        self.remove(secret);
        let mut digests = Vec::with_capacity(record.hashes.len());
        for entry in &record.hashes {
            let Ok(digest) = TokenHash::from_hex(&entry.sha256) else {
                continue;
            };
            let known = Known {
                namespace: record.namespace.clone(),
                name: record.name.clone(),
                uid: record.uid.clone(),
                not_after: entry.not_after,
            };
            self.by_digest.insert(digest.0, known);
            digests.push(digest.0);
        }
        self.by_secret.insert(secret.to_owned(), digests);
    }

    /// Forgets the hashed Secret `secret`.
    pub fn remove(&mut self, secret: &str) {
        for digest in self.by_secret.remove(secret).unwrap_or_default() {
            self.by_digest.remove(&digest);
        }
    }

    /// The token a digest belongs to.
    pub fn get(&self, digest: &TokenHash) -> Option<&Known> {
        self.by_digest.get(&digest.0)
    }

    /// Number of digests held.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no digest is held.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    fn apply(&mut self, secret: &Secret) {
        let name = secret.name_any();
        match HashedRecord::from_secret(secret) {
            Ok(record) => self.put(&name, &record),
            Err(_) => self.remove(&name),
        }
    }
}

/// The index shared by the watch and the request handlers.
#[derive(Debug, Default)]
pub struct Shared {
    index: RwLock<Index>,
    synced: AtomicBool,
}

impl Shared {
    /// Whether the first full list has been loaded. Before it, an absent
    /// digest means nothing, so reports are refused with 503.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Runs `f` on the index under a read lock.
    pub fn read<T>(&self, f: impl FnOnce(&Index) -> T) -> T {
        f(&lock_read(&self.index))
    }

    fn write(&self, f: impl FnOnce(&mut Index)) {
        let mut guard = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard);
    }
}

/// Keeps `shared` equal to the hashed Secrets of `namespace`, forever. A
/// re-list builds a fresh index and swaps it in whole, so Secrets deleted
/// while the watch was down disappear too.
pub async fn watch(client: Client, namespace: String, shared: std::sync::Arc<Shared>) {
    let api = Api::<Secret>::namespaced(client, &namespace);
    let stream =
        watcher(api, watcher::Config::default().labels(hashed::SELECTOR)).default_backoff();
    futures::pin_mut!(stream);
    let mut building = Index::default();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => building = Index::default(),
            Ok(Event::InitApply(s)) => building.apply(&s),
            Ok(Event::InitDone) => {
                let fresh = std::mem::take(&mut building);
                let n = fresh.len();
                shared.write(|index| *index = fresh);
                if !shared.synced.swap(true, Ordering::SeqCst) {
                    info!(digests = n, "leak reports: hashed records loaded");
                }
            }
            Ok(Event::Apply(s)) => shared.write(|index| index.apply(&s)),
            Ok(Event::Delete(s)) => shared.write(|index| index.remove(&s.name_any())),
            Err(e) => warn!(error = %e, "leak reports: hashed-Secret watch failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use prodgy_crds::{HashEntry, Token};

    use super::*;

    #[test]
    fn the_index_follows_puts_replacements_and_removals() {
        let (cur, old, other) = (
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
        );
        let until = Utc::now();
        let mut rec = HashedRecord::active("team-a", "ci", "uid-1", "acme", &cur.hash());
        rec.hashes.push(HashEntry {
            not_after: Some(until),
            ..HashEntry::current(&old.hash(), 0)
        });
        let mut index = Index::default();
        index.put("apitoken-uid-1", &rec);
        index.put(
            "apitoken-uid-2",
            &HashedRecord::active("team-b", "web", "uid-2", "acme", &other.hash()),
        );
        assert_eq!(index.len(), 3);
        let k = index.get(&cur.hash()).unwrap();
        assert_eq!(
            (k.name.as_str(), k.uid.as_str(), k.not_after),
            ("ci", "uid-1", None)
        );
        assert_eq!(index.get(&old.hash()).unwrap().not_after, Some(until));
        // The grace period ended: the record drops the old hash.
        rec.hashes.truncate(1);
        index.put("apitoken-uid-1", &rec);
        assert!(index.get(&old.hash()).is_none());
        assert!(index.get(&cur.hash()).is_some());
        index.remove("apitoken-uid-1");
        assert!(index.get(&cur.hash()).is_none());
        assert_eq!(index.get(&other.hash()).unwrap().namespace, "team-b");
        index.remove("apitoken-uid-2");
        assert!(index.is_empty());
    }

    #[test]
    fn an_unreadable_hashed_secret_holds_nothing() {
        let t = Token::generate("prod").unwrap();
        let rec = HashedRecord::active("team-a", "ci", "uid-1", "acme", &t.hash());
        let mut secret = rec.to_secret("prodgy-tokens").unwrap();
        let mut index = Index::default();
        index.apply(&secret);
        assert!(index.get(&t.hash()).is_some());
        secret.data = None;
        index.apply(&secret);
        assert!(index.is_empty());
    }
}
