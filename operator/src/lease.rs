//! Leader election through a `coordination.k8s.io/v1` Lease, so that two
//! replicas never reconcile at once.
//!
//! Every write is a replace carrying the Lease's `resourceVersion`, so two
//! candidates racing for it cannot both win (the loser gets 409). A
//! candidate judges expiry by its own monotonic clock: the Lease is free once
//! its record has not changed for `leaseDurationSeconds` (no trust in other
//! machines' wall clocks, as client-go does). The leader renews every
//! `renew_every`; if it cannot renew for `renew_deadline` (< the duration) or
//! finds another holder, it stops reconciling at once, before anyone else
//! may take over.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Client,
    api::{Api, PostParams},
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Error, Result, config::LeaseConfig, metrics::Metrics, plan::FIELD_MANAGER};

/// When a candidate last saw the Lease record change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    resource_version: String,
    at: Instant,
}

/// What to do with the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by us.
    Create,
    /// Free or expired: take it over.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Someone else holds it.
    Wait,
}

/// Decides from the Lease as read, our identity, when we last saw its
/// record change and the current instant. Pure.
pub fn decide(
    lease: Option<&Lease>,
    me: &str,
    seen: &mut Option<Seen>,
    now: Instant,
    fallback: Duration,
) -> Decision {
    let Some(lease) = lease else {
        *seen = None;
        return Decision::Create;
    };
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    if seen.as_ref().is_none_or(|s| s.resource_version != rv) {
        *seen = Some(Seen {
            resource_version: rv,
            at: now,
        });
    }
    let spec = lease.spec.as_ref();
    let holder = spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    match holder {
        Some(h) if h == me => Decision::Renew,
        None => Decision::Acquire,
        Some(_) => {
            let duration = spec
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(fallback, Duration::from_secs);
            let since = seen.as_ref().map_or(now, |s| s.at);
            if now.saturating_duration_since(since) >= duration {
                Decision::Acquire
            } else {
                Decision::Wait
            }
        }
    }
}

/// One replica's view of the Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    identity: String,
    seen: Option<Seen>,
}

impl Elector {
    /// An elector for `identity` on the configured Lease.
    pub fn new(client: Client, cfg: LeaseConfig, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            identity,
            seen: None,
        }
    }

    /// Acquires or renews the Lease; `true` when we hold it afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        let decision = decide(
            current.as_ref(),
            &self.identity,
            &mut self.seen,
            Instant::now(),
            self.cfg.duration,
        );
        let now = MicroTime(Timestamp::now());
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let duration = i32::try_from(self.cfg.duration.as_secs()).unwrap_or(i32::MAX);
        let result = match (decision, current) {
            (Decision::Wait, _) => return Ok(false),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(duration),
                        acquire_time: Some(now.clone()),
                        renew_time: Some(now),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&pp, &lease).await
            }
            (Decision::Acquire, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some(self.identity.clone());
                spec.lease_duration_seconds = Some(duration);
                spec.acquire_time = Some(now.clone());
                spec.renew_time = Some(now);
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                self.api.replace(&self.cfg.name, &pp, &lease).await
            }
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.renew_time = Some(now);
                spec.lease_duration_seconds = Some(duration);
                self.api.replace(&self.cfg.name, &pp, &lease).await
            }
            (Decision::Acquire | Decision::Renew, None) => return Ok(false),
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote first: they won this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up (if held) so a standby takes over without waiting
    /// for it to expire.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match self.api.replace(&self.cfg.name, &pp, &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

enum StepDown {
    Shutdown,
    Lost(String),
    WorkEnded(Result<()>),
}

/// Runs `work` only while this replica holds the Lease: waits as a
/// candidate, runs `work(term)` once elected, cancels it on losing the Lease
/// and competes again. Returns when `shutdown` fires (releasing the Lease)
/// or when `work` fails.
pub async fn run<F, Fut>(
    client: Client,
    cfg: LeaseConfig,
    identity: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    work: F,
) -> Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut elector = Elector::new(client, cfg.clone(), identity.clone());
    loop {
        if !campaign(&mut elector, &cfg, &metrics, &shutdown).await {
            return Ok(());
        }
        info!(lease = %cfg.name, %identity, "acquired the leader Lease; reconciling");
        metrics.set_leader(true);
        let term = shutdown.child_token();
        let mut task = tokio::spawn(work(term.clone()));
        let outcome = hold(&mut elector, &cfg, &mut task, &shutdown).await;
        term.cancel();
        if let StepDown::Lost(why) = &outcome {
            // Stop now, not gracefully: the Lease may soon be someone else's.
            task.abort();
            let _ = task.await;
            metrics.set_leader(false);
            metrics.set_sources(Vec::new());
            warn!(%why, "stepped down as leader; reconciling stopped");
            continue;
        }
        if matches!(outcome, StepDown::Shutdown) {
            let _ = tokio::time::timeout(cfg.renew_deadline, &mut task).await;
            task.abort();
        }
        metrics.set_leader(false);
        metrics.set_sources(Vec::new());
        if let Err(e) = elector.release().await {
            warn!(error = %e, "could not release the Lease; it will expire");
        }
        return match outcome {
            StepDown::WorkEnded(result) => result,
            _ => Ok(()),
        };
    }
}

/// Waits as a candidate until elected (true) or shut down (false).
async fn campaign(
    elector: &mut Elector,
    cfg: &LeaseConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => return true,
            // A standby is ready: it is healthy and will take over.
            Ok(false) => metrics.set_ready(true),
            Err(e) => warn!(error = %e, "cannot read the leader Lease"),
        }
        tokio::select! {
            () = tokio::time::sleep(cfg.retry_every) => {}
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Renews the Lease while `task` runs; says why leadership ended.
async fn hold(
    elector: &mut Elector,
    cfg: &LeaseConfig,
    task: &mut tokio::task::JoinHandle<Result<()>>,
    shutdown: &CancellationToken,
) -> StepDown {
    let mut last_renew = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(cfg.renew_every) => {
                match elector.try_acquire_or_renew().await {
                    Ok(true) => last_renew = Instant::now(),
                    Ok(false) => return StepDown::Lost("another replica holds the Lease".into()),
                    Err(e) if last_renew.elapsed() >= cfg.renew_deadline => {
                        return StepDown::Lost(format!("cannot renew: {e}"));
                    }
                    Err(e) => warn!(error = %e, "Lease renewal failed; retrying"),
                }
            }
            joined = &mut *task => {
                return StepDown::WorkEnded(joined.unwrap_or_else(|e| {
                    Err(Error::Leadership(format!("reconciler task failed: {e}")))
                }));
            }
            () = shutdown.cancelled() => return StepDown::Shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, rv: &str, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    const FALLBACK: Duration = Duration::from_secs(15);

    #[tokio::test]
    async fn missing_free_or_own_leases_are_taken() {
        let now = Instant::now();
        let mut seen = None;
        assert_eq!(
            decide(None, "a", &mut seen, now, FALLBACK),
            Decision::Create
        );
        let free = lease(None, "1", 15);
        assert_eq!(
            decide(Some(&free), "a", &mut seen, now, FALLBACK),
            Decision::Acquire
        );
        let empty = lease(Some(""), "2", 15);
        assert_eq!(
            decide(Some(&empty), "a", &mut seen, now, FALLBACK),
            Decision::Acquire
        );
        let mine = lease(Some("a"), "3", 15);
        assert_eq!(
            decide(Some(&mine), "a", &mut seen, now, FALLBACK),
            Decision::Renew
        );
    }

    #[tokio::test]
    async fn a_held_lease_is_taken_only_after_it_stops_changing_for_its_duration() {
        let t0 = Instant::now();
        let mut seen = None;
        let held = lease(Some("b"), "7", 10);
        assert_eq!(
            decide(Some(&held), "a", &mut seen, t0, FALLBACK),
            Decision::Wait
        );
        let nine = t0 + Duration::from_secs(9);
        assert_eq!(
            decide(Some(&held), "a", &mut seen, nine, FALLBACK),
            Decision::Wait
        );
        // A renewal (new resourceVersion) restarts the clock.
        let renewed = lease(Some("b"), "8", 10);
        assert_eq!(
            decide(Some(&renewed), "a", &mut seen, nine, FALLBACK),
            Decision::Wait
        );
        let at_old_expiry = t0 + Duration::from_secs(10);
        assert_eq!(
            decide(Some(&renewed), "a", &mut seen, at_old_expiry, FALLBACK),
            Decision::Wait
        );
        let expired = nine + Duration::from_secs(10);
        assert_eq!(
            decide(Some(&renewed), "a", &mut seen, expired, FALLBACK),
            Decision::Acquire
        );
    }

    #[tokio::test]
    async fn a_missing_duration_falls_back_to_ours() {
        let t0 = Instant::now();
        let mut seen = None;
        let mut held = lease(Some("b"), "1", 0);
        held.spec.as_mut().unwrap().lease_duration_seconds = None;
        assert_eq!(
            decide(Some(&held), "a", &mut seen, t0, FALLBACK),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held), "a", &mut seen, t0 + FALLBACK, FALLBACK),
            Decision::Acquire
        );
    }
}
