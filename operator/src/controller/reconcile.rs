//! One reconcile of a live ApiToken: observe (cached, then uncached when a
//! plan asks for it), [`plan::plan`], execute the writes in the plan's
//! order, publish its events, and say when to look again.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Resource, ResourceExt,
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType},
        reflector::ObjectRef,
    },
};
use prodgy_crds::{ApiToken, ApiTokenStatus, HashedRecord, Token, apitoken::condition, lifecycle};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::{Context, finalizer, lock};
use crate::{
    Error, Result,
    plan::{
        self, DeliveryObs, FIELD_MANAGER, HashedObs, Inputs, Plan, PlannedEvent, TokenId, reason,
    },
};

/// Without any other reason to look again, each token is reconciled this
/// often (a safety net under the watches).
const RESYNC: Duration = Duration::from_secs(30 * 60);
/// Added to every timed requeue so the timer never fires a hair early.
const REQUEUE_SLACK: Duration = Duration::from_millis(5);
/// One cached attempt plus up to this many uncached re-plans on conflicts.
const ATTEMPTS: usize = 4;

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

pub(super) async fn reconcile(token: Arc<ApiToken>, ctx: Arc<Context>) -> Result<Action> {
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
pub(super) fn error_policy(token: Arc<ApiToken>, err: &Error, ctx: Arc<Context>) -> Action {
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
    finalizer::guarded(ctx, &tokens, token, &id).await
}

/// Plans and executes one pass for a live ApiToken (its finalizer in place):
/// from the caches first, uncached when the plan asks for it or a write
/// conflicts.
pub(super) async fn apply(
    ctx: &Context,
    tokens: &Api<ApiToken>,
    token: &Arc<ApiToken>,
    id: &TokenId,
) -> Result<Action> {
    let current = token.clone();
    let mut fresh = false;
    for _ in 0..ATTEMPTS {
        let observed = if fresh {
            match read_uncached(ctx, tokens, id).await? {
                // Being deleted: the deletion's own event runs the cleanup.
                Some(o) if o.token.meta().deletion_timestamp.is_some() => {
                    return Ok(Action::await_change());
                }
                Some(o) => o,
                None => return Ok(Action::await_change()),
            }
        } else {
            read_cached(ctx, &current, id)
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
        match execute(ctx, tokens, &observed, id, &plan, now).await {
            Ok(deferred) => {
                publish(ctx, &observed.token, &plan.events).await;
                return Ok(requeue(plan.requeue_at, deferred, now));
            }
            Err(e) if e.is_conflict() => {
                debug!(apitoken = %id.name, "conflict; re-reading");
                fresh = true;
            }
            Err(e) => {
                mark_error(tokens, &observed.token, &e).await;
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
    let switched = switch_off(tokens, &observed.token, plan.switch_off.as_deref()).await?;
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
            let token = switched.as_ref().unwrap_or(&observed.token);
            patch_status(tokens, token, &write.status).await?;
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

/// Switches an unused token off: `spec.active: false` and the unused mark in
/// one merge patch, at the resourceVersion planned from (409 if stale).
/// Returns the token as written, whose resourceVersion the status write
/// then carries.
async fn switch_off(
    api: &Api<ApiToken>,
    token: &ApiToken,
    mark: Option<&str>,
) -> Result<Option<ApiToken>> {
    let Some(mark) = mark else {
        return Ok(None);
    };
    let patch = json!({
        "metadata": {
            "resourceVersion": token.resource_version(),
            "annotations": {lifecycle::DEACTIVATED_UNUSED_ANNOTATION: mark},
        },
        "spec": {"active": false},
    });
    let written = api
        .patch(&token.name_any(), &patch_params(), &Patch::Merge(&patch))
        .await?;
    Ok(Some(written))
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

pub(super) fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
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
        lifecycle::event::DEACTIVATED_UNUSED => "Deactivate",
        _ => "Reconcile",
    }
}

fn requeue(at: Option<DateTime<Utc>>, deferred: Option<Duration>, now: DateTime<Utc>) -> Action {
    let timed = at.map(|at| (at - now).to_std().unwrap_or(Duration::ZERO) + REQUEUE_SLACK);
    let next = [timed, deferred, Some(RESYNC)].into_iter().flatten().min();
    Action::requeue(next.unwrap_or(RESYNC))
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
}
