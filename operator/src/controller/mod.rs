//! The kube-runtime shell around [`crate::plan`].
//!
//! One reflector per watched kind (hashed Secrets, delivery Secrets, usage
//! reports) keeps a cache and, after updating it, asks the ApiToken
//! controller to reconcile the tokens the change concerns; so a reconcile
//! always sees at least the state that triggered it. A reconcile plans from
//! the caches; when the plan would write a Secret or rests on a Secret being
//! absent, it re-reads the ApiToken and both Secrets uncached and plans
//! again, so no decision to issue or rebuild is ever made on a stale cache.
//! Writes carry the `resourceVersion` they were planned from; a 409 means
//! "re-read and re-plan". Writes go in the plan's order: delivery Secret,
//! hashed Secret, status, then a RevealOnce deletion.
//!
//! This module wires the caches and controllers; [`reconcile`] is one pass,
//! [`finalizer`] the cleanup of a deleted token, [`retire`] the deletion of
//! folded usage reports.

mod finalizer;
mod reconcile;
mod retire;

pub use reconcile::Bucket;

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use chrono::{DateTime, Utc};
use futures::{
    FutureExt, StreamExt,
    channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client, Resource, ResourceExt,
    api::Api,
    runtime::{
        Controller, WatchStreamExt, controller,
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher::{self, Event, watcher},
    },
};
use prodgy_crds::{ApiToken, HashedRecord, UsageReport, hashed, usage::REPORT_LABEL};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Result, config::Config, metrics::Metrics, plan::FIELD_MANAGER};

/// Reconciles running at once.
const CONCURRENCY: u16 = 16;

type Ref = ObjectRef<ApiToken>;

/// Routes reconcile requests to the controller of the token's namespace.
#[derive(Clone, Debug, Default)]
struct Router {
    all: Option<UnboundedSender<Ref>>,
    by_namespace: HashMap<String, UnboundedSender<Ref>>,
    resync: Vec<UnboundedSender<()>>,
}

impl Router {
    fn send(&self, r: Ref) {
        let target = match (&self.all, r.namespace.as_deref()) {
            (Some(all), _) => Some(all),
            (None, Some(ns)) => self.by_namespace.get(ns),
            (None, None) => None,
        };
        // A closed channel means the controller is stopping: nothing to do.
        if let Some(tx) = target {
            let _ = tx.unbounded_send(r);
        }
    }

    fn resync_all(&self) {
        for tx in &self.resync {
            let _ = tx.unbounded_send(());
        }
    }
}

/// How a watched object changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Seen while (re)listing: the controller reconciles everything anyway.
    Listed,
    Applied,
    Deleted,
}

/// Shared state of every reconcile.
struct Context {
    client: Client,
    cfg: Arc<Config>,
    hashed: Store<Secret>,
    delivery: Vec<(Option<String>, Store<Secret>)>,
    reports: Store<UsageReport>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// When this process last wrote a usage change, per token UID.
    usage_writes: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Consecutive failures per token UID, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    bucket: Mutex<Bucket>,
}

impl Context {
    fn delivery_store(&self, namespace: &str) -> Option<&Store<Secret>> {
        self.delivery
            .iter()
            .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == namespace))
            .map(|(_, store)| store)
    }

    fn secrets(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }
}

/// Runs the reconcilers until `term` fires. Call only while leader.
pub async fn run(
    client: Client,
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    term: CancellationToken,
) -> Result<()> {
    let scopes: Vec<Option<String>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().cloned().map(Some).collect()
    };
    let (router, receivers) = routes(&scopes);
    let mut caches = Caches::spawn(&client, &cfg.plan.hashed_namespace, &scopes, &router);
    // Usage folding must never see a half-loaded report cache: a report
    // missing from it would look deleted (step 3).
    // (Our own flags rather than `Store::wait_until_ready`, which wakes only
    // one of several waiters, and the controller waits on its store too.)
    if !all_synced(&mut caches.synced, &term).await {
        abort_all(&caches.tasks);
        return Ok(());
    }
    info!("caches synced; reconciling ApiTokens");
    let mut tasks = std::mem::take(&mut caches.tasks);
    let ctx = Arc::new(caches.into_context(client.clone(), &cfg, &metrics));

    let mut runs = Vec::new();
    let mut token_stores = Vec::new();
    let mut tokens_synced = Vec::new();
    for (scope, rx, all_rx) in receivers {
        let (store, ready, run) =
            controller_for(&client, scope.as_deref(), rx, all_rx, &ctx, &term);
        token_stores.push((scope, store));
        tokens_synced.push(ready);
        runs.push(run);
    }
    metrics.set_sources(token_stores.iter().map(|(_, s)| s.clone()).collect());
    tasks.push(tokio::spawn(retire::retire_reports(
        ctx.clone(),
        token_stores,
        tokens_synced,
        term.clone(),
    )));
    metrics.set_ready(true);

    futures::future::join_all(runs).await;
    abort_all(&tasks);
    Ok(())
}

/// One reconcile channel (and one resync channel) per watched scope.
type Receivers = Vec<(
    Option<String>,
    UnboundedReceiver<Ref>,
    UnboundedReceiver<()>,
)>;

fn routes(scopes: &[Option<String>]) -> (Router, Receivers) {
    let mut router = Router::default();
    let mut receivers = Vec::new();
    for scope in scopes {
        let (tx, rx) = unbounded();
        let (all_tx, all_rx) = unbounded();
        match scope {
            None => router.all = Some(tx),
            Some(ns) => {
                router.by_namespace.insert(ns.clone(), tx);
            }
        }
        router.resync.push(all_tx);
        receivers.push((scope.clone(), rx, all_rx));
    }
    (router, receivers)
}

/// The caches of hashed Secrets, usage reports and delivery Secrets, with
/// their reflector tasks and "first list done" flags.
struct Caches {
    hashed: Store<Secret>,
    reports: Store<UsageReport>,
    delivery: Vec<(Option<String>, Store<Secret>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    synced: Vec<watch::Receiver<bool>>,
}

impl Caches {
    fn spawn(client: &Client, hashed_ns: &str, scopes: &[Option<String>], router: &Router) -> Self {
        let mut tasks = Vec::new();
        let mut synced = Vec::new();
        let (hashed, writer) = reflector::store();
        let (ready, rx) = watch::channel(false);
        synced.push(rx);
        tasks.push(tokio::spawn(reflect(
            Api::<Secret>::namespaced(client.clone(), hashed_ns),
            watcher::Config::default().labels(hashed::SELECTOR),
            writer,
            ready,
            router.clone(),
            refs_of_hashed_secret,
        )));
        let (reports, writer) = reflector::store();
        let (ready, rx) = watch::channel(false);
        synced.push(rx);
        let mut report_index = ReportIndex::default();
        tasks.push(tokio::spawn(reflect(
            Api::<UsageReport>::namespaced(client.clone(), hashed_ns),
            watcher::Config::default().labels(REPORT_LABEL),
            writer,
            ready,
            router.clone(),
            move |r: &UsageReport, change| report_index.refs(r, change),
        )));
        let delivery_selector = hashed::delivery_selector(None);
        let mut delivery = Vec::new();
        for scope in scopes {
            let api = match scope {
                None => Api::<Secret>::all(client.clone()),
                Some(ns) => Api::<Secret>::namespaced(client.clone(), ns),
            };
            let (store, writer) = reflector::store();
            let (ready, rx) = watch::channel(false);
            synced.push(rx);
            tasks.push(tokio::spawn(reflect(
                api,
                watcher::Config::default().labels(&delivery_selector),
                writer,
                ready,
                router.clone(),
                refs_of_delivery_secret,
            )));
            delivery.push((scope.clone(), store));
        }
        Self {
            hashed,
            reports,
            delivery,
            tasks,
            synced,
        }
    }

    fn into_context(self, client: Client, cfg: &Arc<Config>, metrics: &Arc<Metrics>) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(cfg.identity.clone()),
            },
        );
        Context {
            client,
            cfg: cfg.clone(),
            hashed: self.hashed,
            delivery: self.delivery,
            reports: self.reports,
            recorder,
            metrics: metrics.clone(),
            usage_writes: Mutex::default(),
            failures: Mutex::default(),
            bucket: Mutex::new(Bucket::new(cfg.status_write_qps, Instant::now())),
        }
    }
}

/// The ApiToken controller of one scope: its store, its "first list done"
/// flag and the future that runs it.
fn controller_for(
    client: &Client,
    scope: Option<&str>,
    rx: UnboundedReceiver<Ref>,
    all_rx: UnboundedReceiver<()>,
    ctx: &Arc<Context>,
    term: &CancellationToken,
) -> (
    Store<ApiToken>,
    watch::Receiver<bool>,
    futures::future::BoxFuture<'static, ()>,
) {
    let api = match scope {
        None => Api::<ApiToken>::all(client.clone()),
        Some(ns) => Api::<ApiToken>::namespaced(client.clone(), ns),
    };
    let (store, writer) = reflector::store();
    let (ready, ready_rx) = watch::channel(false);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .inspect(move |event| {
        if matches!(event, Ok(Event::InitDone)) {
            ready.send_replace(true);
        }
    })
    .applied_objects();
    let run = Controller::for_stream(stream, store.clone())
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(rx)
        .reconcile_all_on(all_rx)
        .graceful_shutdown_on(term.clone().cancelled_owned())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok(_) => {}
                Err(controller::Error::ReconcilerFailed(e, obj)) => {
                    debug!(error = %e, object = %obj, "reconcile failed");
                }
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .boxed();
    (store, ready_rx, run)
}

/// Waits until every flag is up; false if cancelled first (or a flag's
/// sender is gone).
async fn all_synced(flags: &mut [watch::Receiver<bool>], term: &CancellationToken) -> bool {
    for flag in flags {
        tokio::select! {
            r = flag.wait_for(|up| *up) => if r.is_err() { return false },
            () = term.cancelled() => return false,
        }
    }
    true
}

fn abort_all(tasks: &[tokio::task::JoinHandle<()>]) {
    for t in tasks {
        t.abort();
    }
}

/// Keeps a cache of one kind and asks for the reconciles its changes imply.
async fn reflect<K>(
    api: Api<K>,
    wc: watcher::Config,
    writer: Writer<K>,
    ready: watch::Sender<bool>,
    router: Router,
    mut route: impl FnMut(&K, Change) -> Vec<Ref> + Send,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let stream = reflector::reflector(writer, watcher(api, wc).default_backoff());
    futures::pin_mut!(stream);
    let mut listed_once = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Apply(obj)) => route(&obj, Change::Applied)
                .into_iter()
                .for_each(|r| router.send(r)),
            Ok(Event::Delete(obj)) => route(&obj, Change::Deleted)
                .into_iter()
                .for_each(|r| router.send(r)),
            Ok(Event::InitApply(obj)) => {
                route(&obj, Change::Listed);
            }
            Ok(Event::Init) => {}
            Ok(Event::InitDone) => {
                // A re-list can hide deletions that happened while the watch
                // was down: look at every token again.
                if listed_once {
                    router.resync_all();
                }
                listed_once = true;
                ready.send_replace(true);
            }
            Err(e) => warn!(error = %e, "watch failed; retrying with backoff"),
        }
    }
}

fn refs_of_hashed_secret(secret: &Secret, _: Change) -> Vec<Ref> {
    // The record holds the full name (labels may be cut at 63 characters).
    match HashedRecord::from_secret(secret) {
        Ok(r) => vec![ObjectRef::new(&r.name).within(&r.namespace)],
        Err(_) => {
            let labels = secret.labels();
            match (
                labels.get(hashed::TOKEN_NAMESPACE_LABEL),
                labels.get(hashed::TOKEN_NAME_LABEL),
            ) {
                (Some(ns), Some(name)) => vec![ObjectRef::new(name).within(ns)],
                _ => Vec::new(),
            }
        }
    }
}

fn refs_of_delivery_secret(secret: &Secret, _: Change) -> Vec<Ref> {
    let ns = secret.namespace().unwrap_or_default();
    secret
        .owner_references()
        .iter()
        .filter(|o| o.kind == "ApiToken" && o.api_version.starts_with(prodgy_crds::GROUP))
        .map(|o| ObjectRef::new(&o.name).within(&ns))
        .collect()
}

/// Remembers each report's counts so a proxy's heartbeat rewrite (same
/// counts, new `updatedAt`) triggers nothing; only tokens whose count moved
/// are reconciled.
#[derive(Debug, Default)]
struct ReportIndex {
    seen: HashMap<String, BTreeMap<String, (i64, DateTime<Utc>)>>,
}

impl ReportIndex {
    fn refs(&mut self, report: &UsageReport, change: Change) -> Vec<Ref> {
        let name = report.name_any();
        let counts: BTreeMap<String, (i64, DateTime<Utc>)> = report
            .spec
            .tokens
            .iter()
            .map(|(uid, t)| (uid.clone(), (t.count, t.last_used_at)))
            .collect();
        let all = || {
            report
                .spec
                .tokens
                .values()
                .map(|t| ObjectRef::new(&t.name).within(&t.namespace))
                .collect()
        };
        match change {
            Change::Deleted => {
                self.seen.remove(&name);
                all()
            }
            Change::Listed => {
                self.seen.insert(name, counts);
                Vec::new()
            }
            Change::Applied => {
                let before = self.seen.insert(name, counts);
                let Some(before) = before else {
                    return all();
                };
                report
                    .spec
                    .tokens
                    .iter()
                    .filter(|(uid, t)| before.get(*uid) != Some(&(t.count, t.last_used_at)))
                    .map(|(_, t)| ObjectRef::new(&t.name).within(&t.namespace))
                    .collect()
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_index_triggers_only_moved_counts() {
        use crate::usage::tests::report;
        let mut idx = ReportIndex::default();
        let r1 = report("a", 10, &[("u1", 1), ("u2", 5)]);
        assert!(idx.refs(&r1, Change::Listed).is_empty());
        // Heartbeat: same counts, new updatedAt.
        let beat = report("a", 20, &[("u1", 1), ("u2", 5)]);
        let mut beat = (*beat).clone();
        beat.spec.tokens = r1.spec.tokens.clone();
        assert!(idx.refs(&beat, Change::Applied).is_empty());
        let moved = report("a", 30, &[("u1", 2), ("u2", 5)]);
        let mut moved = (*moved).clone();
        moved.spec.tokens.get_mut("u2").unwrap().last_used_at = r1.spec.tokens["u2"].last_used_at;
        let refs = idx.refs(&moved, Change::Applied);
        assert_eq!(refs, vec![ObjectRef::new("tok-u1").within("team-a")]);
        assert_eq!(idx.refs(&moved, Change::Deleted).len(), 2);
        // Unknown report applied: every token it names.
        assert_eq!(idx.refs(&r1, Change::Applied).len(), 2);
    }
}
