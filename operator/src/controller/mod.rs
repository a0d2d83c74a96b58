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

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::{
    FutureExt, StreamExt,
    channel::mpsc::{UnboundedSender, unbounded},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Client, Resource, ResourceExt,
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher::{self, Event, watcher},
    },
};
use prodgy_crds::{
    ApiToken, ApiTokenStatus, HashedRecord, Token, UsageReport, apitoken::condition, hashed,
    usage::REPORT_LABEL,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    Error, Result,
    config::Config,
    metrics::Metrics,
    plan::{
        self, DeliveryObs, FIELD_MANAGER, FINALIZER, HashedObs, Inputs, Plan, PlannedEvent,
        TokenId, reason,
    },
    usage::{self, Mentioned},
};

/// Without any other reason to look again, each token is reconciled this
/// often (a safety net under the watches).
const RESYNC: Duration = Duration::from_secs(30 * 60);
/// Added to every timed requeue so the timer never fires a hair early.
const REQUEUE_SLACK: Duration = Duration::from_millis(5);
/// Reconciles running at once.
const CONCURRENCY: u16 = 16;
/// One cached attempt plus up to this many uncached re-plans on conflicts.
const ATTEMPTS: usize = 4;

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

/// A token bucket bounding usage-only status writes across all tokens.
#[derive(Debug)]
pub struct Bucket {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket allowing `per_second` writes per second.
    pub fn new(per_second: u32, now: Instant) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self {
            per_second,
            tokens: per_second,
            at: now,
        }
    }

    /// Takes one write, or says how long to wait for one.
    pub fn take(&mut self, now: Instant) -> std::result::Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
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
    let hashed_ns = cfg.plan.hashed_namespace.clone();
    let scopes: Vec<Option<String>> = if cfg.namespaces.is_empty() {
        vec![None]
    } else {
        cfg.namespaces.iter().cloned().map(Some).collect()
    };

    let mut router = Router::default();
    let mut receivers = Vec::new();
    for scope in &scopes {
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

    let mut tasks = Vec::new();
    let mut synced = Vec::new();
    let (hashed, writer) = reflector::store();
    let (ready, rx) = watch::channel(false);
    synced.push(rx);
    tasks.push(tokio::spawn(reflect(
        Api::<Secret>::namespaced(client.clone(), &hashed_ns),
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
        Api::<UsageReport>::namespaced(client.clone(), &hashed_ns),
        watcher::Config::default().labels(REPORT_LABEL),
        writer,
        ready,
        router.clone(),
        move |r: &UsageReport, change| report_index.refs(r, change),
    )));
    let delivery_selector = hashed::delivery_selector(None);
    let mut delivery = Vec::new();
    for scope in &scopes {
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

    // Usage folding must never see a half-loaded report cache: a report
    // missing from it would look deleted (step 3).
    // (Our own flags rather than `Store::wait_until_ready`, which wakes only
    // one of several waiters, and the controller waits on its store too.)
    if !all_synced(&mut synced, &term).await {
        abort_all(&tasks);
        return Ok(());
    }
    info!("caches synced; reconciling ApiTokens");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(cfg.identity.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        cfg: cfg.clone(),
        hashed,
        delivery,
        reports,
        recorder,
        metrics: metrics.clone(),
        usage_writes: Mutex::default(),
        failures: Mutex::default(),
        bucket: Mutex::new(Bucket::new(cfg.status_write_qps, Instant::now())),
    });

    let mut runs = Vec::new();
    let mut token_stores = Vec::new();
    let mut tokens_synced = Vec::new();
    for (scope, rx, all_rx) in receivers {
        let api = match &scope {
            None => Api::<ApiToken>::all(client.clone()),
            Some(ns) => Api::<ApiToken>::namespaced(client.clone(), ns),
        };
        let (store, writer) = reflector::store();
        let (ready, ready_rx) = watch::channel(false);
        tokens_synced.push(ready_rx);
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
        let controller = Controller::for_stream(stream, store.clone())
            .with_config(controller::Config::default().concurrency(CONCURRENCY))
            .reconcile_on(rx)
            .reconcile_all_on(all_rx)
            .graceful_shutdown_on(term.clone().cancelled_owned());
        token_stores.push((scope, store));
        runs.push(
            controller
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|res| async move {
                    match res {
                        Ok(_) => {}
                        Err(controller::Error::ReconcilerFailed(e, obj)) => {
                            debug!(error = %e, object = %obj, "reconcile failed");
                        }
                        Err(e) => warn!(error = %e, "controller"),
                    }
                })
                .boxed(),
        );
    }
    metrics.set_sources(token_stores.iter().map(|(_, s)| s.clone()).collect());
    tasks.push(tokio::spawn(retire_reports(
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

async fn reconcile(token: Arc<ApiToken>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_token(&token, &ctx).await;
    ctx.metrics
        .reconciled(result.as_ref().map(|_| ()), started.elapsed());
    if result.is_ok()
        && let Some(uid) = token.uid()
    {
        lock(&ctx.failures).remove(&uid);
    }
    result
}

// The signature is kube-runtime's.
#[allow(clippy::needless_pass_by_value)]
fn error_policy(token: Arc<ApiToken>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = token.uid().unwrap_or_default();
    let n = {
        let mut failures = lock(&ctx.failures);
        let n = failures.entry(uid).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = if err.is_conflict() {
        Duration::from_millis(200)
    } else {
        // 0.5 s, 1 s, 2 s … up to 5 minutes.
        Duration::from_millis(500)
            .saturating_mul(1 << n.saturating_sub(1).min(10))
            .min(Duration::from_secs(300))
    };
    warn!(
        apitoken = %format!("{}/{}", token.namespace().unwrap_or_default(), token.name_any()),
        error = %err,
        retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// The Secrets a plan was made from, with the versions to write against.
struct Observed {
    token: Arc<ApiToken>,
    hashed: Option<Arc<Secret>>,
    delivery: Option<Arc<Secret>>,
}

async fn reconcile_token(token: &Arc<ApiToken>, ctx: &Context) -> Result<Action> {
    let id = TokenId::of(token)?;
    let tokens: Api<ApiToken> = Api::namespaced(ctx.client.clone(), &id.namespace);
    if token.meta().deletion_timestamp.is_some() {
        return cleanup(ctx, &tokens, token, &id).await;
    }
    let mut current = token.clone();
    if !current.finalizers().iter().any(|f| f == FINALIZER) {
        current = Arc::new(add_finalizer(&tokens, &current).await?);
    }

    let mut fresh = false;
    for _ in 0..ATTEMPTS {
        let observed = if fresh {
            match read_uncached(ctx, &tokens, &id).await? {
                Some(o) if o.token.meta().deletion_timestamp.is_some() => {
                    return cleanup(ctx, &tokens, &o.token, &id).await;
                }
                Some(o) => o,
                None => return Ok(Action::await_change()),
            }
        } else {
            read_cached(ctx, &current, &id)
        };
        let now = Utc::now();
        let candidate = Token::generate(&ctx.cfg.token_prefix)?;
        let hashed = HashedObs::observe(observed.hashed.as_deref(), &id.uid);
        let delivery = DeliveryObs::observe(observed.delivery.as_deref(), &id.uid);
        let reports = ctx.reports.state();
        let last_usage_write = lock(&ctx.usage_writes).get(&id.uid).copied();
        let plan = plan::plan(
            &ctx.cfg.plan,
            &Inputs {
                token: &observed.token,
                hashed: &hashed,
                delivery: &delivery,
                reports: &reports,
                last_usage_write,
                now,
                fresh_token: &candidate,
            },
        )?;
        if plan.needs_fresh_read && !fresh {
            fresh = true;
            continue;
        }
        if plan.has_writes() {
            debug!(apitoken = %id.name, fresh, ?plan, "planned writes");
        }
        match execute(ctx, &tokens, &observed, &id, &plan, now).await {
            Ok(deferred) => {
                publish(ctx, &observed.token, &plan.events).await;
                return Ok(requeue(plan.requeue_at, deferred, now));
            }
            Err(e) if e.is_conflict() => {
                debug!(apitoken = %id.name, "conflict; re-reading");
                fresh = true;
            }
            Err(e) => {
                mark_error(&tokens, &observed.token, &e).await;
                return Err(e);
            }
        }
    }
    Err(Error::Conflict(format!(
        "ApiToken {}/{}",
        id.namespace, id.name
    )))
}

fn read_cached(ctx: &Context, token: &Arc<ApiToken>, id: &TokenId) -> Observed {
    let hashed_ns = &ctx.cfg.plan.hashed_namespace;
    let hashed = ctx
        .hashed
        .get(&ObjectRef::new(&HashedRecord::secret_name(&id.uid)).within(hashed_ns));
    let delivery = ctx.delivery_store(&id.namespace).and_then(|s| {
        s.get(&ObjectRef::new(&plan::delivery_secret_name(token)).within(&id.namespace))
    });
    Observed {
        token: token.clone(),
        hashed,
        delivery,
    }
}

async fn read_uncached(
    ctx: &Context,
    tokens: &Api<ApiToken>,
    id: &TokenId,
) -> Result<Option<Observed>> {
    let Some(token) = tokens.get_opt(&id.name).await? else {
        return Ok(None);
    };
    if token.uid().as_deref() != Some(id.uid.as_str()) {
        // Deleted and recreated under the same name: the new one gets its own reconcile.
        return Ok(None);
    }
    let hashed = ctx
        .secrets(&ctx.cfg.plan.hashed_namespace)
        .get_opt(&HashedRecord::secret_name(&id.uid))
        .await?;
    let delivery = ctx
        .secrets(&id.namespace)
        .get_opt(&plan::delivery_secret_name(&token))
        .await?;
    Ok(Some(Observed {
        token: Arc::new(token),
        hashed: hashed.map(Arc::new),
        delivery: delivery.map(Arc::new),
    }))
}

/// Executes a plan in its order. Returns how long a usage-only status write
/// was deferred by the global write budget, if it was.
async fn execute(
    ctx: &Context,
    tokens: &Api<ApiToken>,
    observed: &Observed,
    id: &TokenId,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Option<Duration>> {
    if let Some(secret) = &plan.put_delivery {
        put_secret(
            ctx,
            &ctx.secrets(&id.namespace),
            secret.clone(),
            observed.delivery.as_deref(),
            "delivery",
        )
        .await?;
    }
    if let Some(record) = &plan.put_hashed {
        let hashed_ns = &ctx.cfg.plan.hashed_namespace;
        put_secret(
            ctx,
            &ctx.secrets(hashed_ns),
            record.to_secret(hashed_ns)?,
            observed.hashed.as_deref(),
            "hashed",
        )
        .await?;
    }
    let mut deferred = None;
    if let Some(write) = &plan.status {
        if write.usage_only {
            deferred = lock(&ctx.bucket).take(Instant::now()).err();
        }
        if deferred.is_none() {
            patch_status(tokens, &observed.token, &write.status).await?;
            ctx.metrics.status_written(write.usage_only);
            ctx.metrics.folded(plan.newly_folded.len());
            let before = observed.token.status.clone().unwrap_or_default();
            if before.usage != write.status.usage
                || before.last_used_at != write.status.last_used_at
            {
                lock(&ctx.usage_writes).insert(id.uid.clone(), now);
            }
        }
    }
    if let Some(name) = &plan.delete_delivery {
        match ctx
            .secrets(&id.namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => ctx.metrics.secret_written("delivery", "delete"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deferred)
}

/// Creates the Secret, or replaces the observed one at its resourceVersion.
async fn put_secret(
    ctx: &Context,
    api: &Api<Secret>,
    mut secret: Secret,
    observed: Option<&Secret>,
    which: &str,
) -> Result<()> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let name = secret.name_any();
    match observed.and_then(|o| o.resource_version()) {
        None => {
            api.create(&pp, &secret).await?;
            ctx.metrics.secret_written(which, "create");
        }
        Some(rv) => {
            secret.metadata.resource_version = Some(rv);
            api.replace(&name, &pp, &secret).await?;
            ctx.metrics.secret_written(which, "replace");
        }
    }
    Ok(())
}

/// Patches the status subresource as a merge patch carrying the
/// resourceVersion it was planned from (a precondition: 409 if stale).
async fn patch_status(
    api: &Api<ApiToken>,
    token: &ApiToken,
    status: &ApiTokenStatus,
) -> Result<ApiToken> {
    let mut body = serde_json::to_value(status)?;
    clear_dropped(&mut body, &serde_json::to_value(&token.status)?);
    let patch = json!({
        "metadata": {"resourceVersion": token.resource_version()},
        "status": body,
    });
    Ok(api
        .patch_status(&token.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?)
}

/// A merge patch keeps every key it does not mention, at any depth: turn
/// keys the new value dropped (e.g. an emptied `usageLedger.folded`, which
/// is omitted when empty) into explicit nulls. Lists are replaced whole.
fn clear_dropped(new: &mut Value, old: &Value) {
    if let (Value::Object(new), Value::Object(old)) = (new, old) {
        for (key, old_value) in old {
            match new.get_mut(key) {
                None => {
                    new.insert(key.clone(), Value::Null);
                }
                Some(new_value) => clear_dropped(new_value, old_value),
            }
        }
    }
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

async fn add_finalizer(api: &Api<ApiToken>, token: &ApiToken) -> Result<ApiToken> {
    let mut finalizers = token.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch = json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": token.resource_version()},
    });
    Ok(api
        .patch(&token.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?)
}

/// Deletes both Secrets, then lets the ApiToken go. The hashed Secret lives
/// in another namespace, so an owner reference cannot collect it; the
/// delivery Secret has one, but is deleted here too so cleanup does not
/// depend on the garbage collector's timing.
async fn cleanup(
    ctx: &Context,
    tokens: &Api<ApiToken>,
    token: &ApiToken,
    id: &TokenId,
) -> Result<Action> {
    if !token.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let hashed = ctx.secrets(&ctx.cfg.plan.hashed_namespace);
    match hashed
        .delete(
            &HashedRecord::secret_name(&id.uid),
            &DeleteParams::default(),
        )
        .await
    {
        Ok(_) => ctx.metrics.secret_written("hashed", "delete"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let delivery = ctx.secrets(&id.namespace);
    let ours = ListParams::default().labels(&hashed::delivery_selector(Some(&id.uid)));
    for secret in delivery.list(&ours).await? {
        match delivery
            .delete(&secret.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => ctx.metrics.secret_written("delivery", "delete"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let finalizers: Vec<String> = token
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    let patch = json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": token.resource_version()},
    });
    match tokens
        .patch(&id.name, &patch_params(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    lock(&ctx.usage_writes).remove(&id.uid);
    lock(&ctx.failures).remove(&id.uid);
    info!(apitoken = %format!("{}/{}", id.namespace, id.name), "deleted its Secrets");
    Ok(Action::await_change())
}

/// Best effort: say `Ready=False ReconcileError` so `kubectl get` shows the
/// problem; the error itself is retried with backoff.
async fn mark_error(tokens: &Api<ApiToken>, token: &ApiToken, err: &Error) {
    let status = token.status.clone().unwrap_or_default();
    let mut message = format!("Reconcile failed; retrying with backoff: {err}");
    if message.len() > 512 {
        let mut cut = 512;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let prev = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY);
    if prev.is_some_and(|c| c.reason == condition::REASON_RECONCILE_ERROR && c.message == message) {
        return;
    }
    let conditions = plan::with_ready(
        &status.conditions,
        false,
        condition::REASON_RECONCILE_ERROR,
        message,
        token.meta().generation,
        Utc::now(),
    );
    let patch = json!({"status": {"conditions": conditions}});
    if let Err(e) = tokens
        .patch_status(&token.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await
    {
        debug!(error = %e, "could not record the reconcile error in status");
    }
}

async fn publish(ctx: &Context, token: &ApiToken, events: &[PlannedEvent]) {
    if events.is_empty() {
        return;
    }
    let reference = token.object_ref(&());
    for e in events {
        info!(
            apitoken = %format!("{}/{}", token.namespace().unwrap_or_default(), token.name_any()),
            reason = e.reason,
            note = %e.note,
            "event"
        );
        let event = KubeEvent {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.to_owned(),
            note: Some(e.note.clone()),
            action: action_of(e.reason).to_owned(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %err, reason = e.reason, "could not publish an event");
        }
    }
}

fn action_of(why: &str) -> &'static str {
    match why {
        reason::ISSUED => "Issue",
        reason::REGENERATED => "Regenerate",
        reason::DEACTIVATED => "Deactivate",
        reason::ACTIVATED => "Activate",
        reason::REVOKED => "Revoke",
        reason::EXPIRED => "Expire",
        reason::REVEAL_WINDOW_CLOSED => "DeleteDeliverySecret",
        reason::HASHED_SECRET_LOST => "RebuildHashedSecret",
        _ => "Reconcile",
    }
}

fn requeue(at: Option<DateTime<Utc>>, deferred: Option<Duration>, now: DateTime<Utc>) -> Action {
    let timed = at.map(|at| (at - now).to_std().unwrap_or(Duration::ZERO) + REQUEUE_SLACK);
    let next = [timed, deferred, Some(RESYNC)].into_iter().flatten().min();
    Action::requeue(next.unwrap_or(RESYNC))
}

/// Step 2 of usage retirement: deletes reports every mentioned token has
/// folded. Runs on the leader only, once the ApiToken caches are loaded
/// (an unloaded cache would make every token look deleted).
async fn retire_reports(
    ctx: Arc<Context>,
    token_stores: Vec<(Option<String>, Store<ApiToken>)>,
    mut synced: Vec<watch::Receiver<bool>>,
    term: CancellationToken,
) {
    if !all_synced(&mut synced, &term).await {
        return;
    }
    let retention = ctx.cfg.plan.usage_report_retention;
    let every = retention
        .to_std()
        .map(|d| d / 4)
        .unwrap_or(Duration::from_secs(15))
        .clamp(Duration::from_millis(250), Duration::from_secs(15));
    let api: Api<UsageReport> = Api::namespaced(ctx.client.clone(), &ctx.cfg.plan.hashed_namespace);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = term.cancelled() => return,
        }
        let reports = ctx.reports.state();
        let lookup = |report: &str, ns: &str, name: &str, uid: &str| {
            if !ctx.cfg.namespaces.is_empty() && !ctx.cfg.namespaces.iter().any(|n| n == ns) {
                return Mentioned::Unwatched;
            }
            let store = token_stores
                .iter()
                .find(|(scope, _)| scope.as_deref().is_none_or(|s| s == ns))
                .map(|(_, s)| s);
            match store.and_then(|s| s.get(&ObjectRef::new(name).within(ns))) {
                Some(t) if t.uid().as_deref() == Some(uid) => Mentioned::Present {
                    folded: usage::has_folded(
                        t.status.as_ref().and_then(|s| s.usage_ledger.as_ref()),
                        report,
                    ),
                },
                _ => Mentioned::Gone,
            }
        };
        for report in usage::retirable(&reports, Utc::now(), retention, lookup) {
            let name = report.name_any();
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: report.resource_version(),
                    uid: report.uid(),
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    ctx.metrics.retired();
                    info!(report = %name, "retired a usage report");
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => warn!(report = %name, error = %e, "could not retire a usage report"),
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
    fn dropped_keys_become_nulls_at_any_depth() {
        let mut new = json!({"usage": 3, "usageLedger": {"base": 3}, "conditions": [1]});
        let old = json!({
            "usage": 2,
            "prefix": "prod_abc",
            "usageLedger": {"base": 0, "folded": ["r"]},
            "conditions": [1, 2]
        });
        clear_dropped(&mut new, &old);
        assert_eq!(
            new,
            json!({
                "usage": 3,
                "prefix": null,
                "usageLedger": {"base": 3, "folded": null},
                "conditions": [1]
            })
        );
    }

    #[test]
    fn bucket_allows_its_rate_and_says_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(500)).is_ok());
        // Never more than one second's worth at once.
        let later = t0 + Duration::from_secs(60);
        assert!(b.take(later).is_ok() && b.take(later).is_ok());
        assert!(b.take(later).is_err());
    }

    #[test]
    fn requeue_picks_the_earliest_reason_with_a_small_slack() {
        let now = Utc::now();
        let in_2s = now + chrono::TimeDelta::seconds(2);
        assert_eq!(
            requeue(Some(in_2s), None, now),
            Action::requeue(Duration::from_secs(2) + REQUEUE_SLACK)
        );
        assert_eq!(
            requeue(Some(in_2s), Some(Duration::from_millis(100)), now),
            Action::requeue(Duration::from_millis(100))
        );
        assert_eq!(requeue(None, None, now), Action::requeue(RESYNC));
        // A deadline already passed: at once.
        let past = now - chrono::TimeDelta::seconds(5);
        assert_eq!(
            requeue(Some(past), None, now),
            Action::requeue(REQUEUE_SLACK)
        );
    }

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
