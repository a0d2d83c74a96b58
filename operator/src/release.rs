//! `prodgy-operator release`: what `helm uninstall` runs (a post-delete
//! hook) once the operator is gone, so that nothing waits for it forever.
//!
//! 1. Wait until no replica holds the leader Lease: a leader still running
//!    would re-add finalizers and rebuild hashed Secrets behind our back.
//! 2. Delete every hashed Secret in the tokens namespace: the product is
//!    uninstalled, so no token keeps working, and a token deleted while the
//!    operator is gone cannot come back to life on a reinstall (a reinstall
//!    rebuilds the record of each token whose delivery Secret still holds its
//!    plaintext, by the lost-Secret rule).
//! 3. Remove the cleanup finalizer from every ApiToken, deleting the
//!    delivery Secrets of those already being deleted, so they go at once and
//!    so do their namespaces.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use prodgy_crds::ApiToken;
use prodgy_crds::hashed::{SELECTOR, delivery_selector};
use serde_json::json;
use tracing::info;

use crate::config::{Config, LeaseConfig};
use crate::plan::{FIELD_MANAGER, FINALIZER};
use crate::{Error, Result};

/// What a release did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Hashed Secrets deleted.
    pub hashed_deleted: usize,
    /// ApiTokens whose finalizer was removed.
    pub finalizers_removed: usize,
    /// Delivery Secrets deleted (of tokens already being deleted).
    pub delivery_deleted: usize,
}

/// Whether a Lease is held by a live replica at `now`: it names a holder
/// and its last renewal is younger than its duration.
pub fn held(lease: &Lease, now: chrono::DateTime<Utc>) -> bool {
    let Some(spec) = &lease.spec else {
        return false;
    };
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return false;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) => t.0.as_millisecond() + secs * 1000 > now.timestamp_millis(),
        None => false,
    }
}

/// Runs the release with the operator's own configuration; waits at most
/// `wait` for the Lease.
pub async fn run(client: Client, cfg: &Config, wait: Duration) -> Result<Released> {
    if let Some(lease) = &cfg.leader_election {
        wait_for_lease(&client, lease, wait).await?;
    }
    let mut done = Released::default();
    let hashed: Api<Secret> = Api::namespaced(client.clone(), &cfg.plan.hashed_namespace);
    for s in hashed.list(&ListParams::default().labels(SELECTOR)).await? {
        match hashed.delete(&s.name_any(), &DeleteParams::default()).await {
            Ok(_) => done.hashed_deleted += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let scopes: Vec<Api<ApiToken>> = if cfg.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        cfg.namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    for tokens in scopes {
        for token in tokens.list(&ListParams::default()).await? {
            release_token(&client, &token, &mut done).await?;
        }
    }
    info!(
        hashed_deleted = done.hashed_deleted,
        finalizers_removed = done.finalizers_removed,
        delivery_deleted = done.delivery_deleted,
        "released every ApiToken"
    );
    Ok(done)
}

async fn release_token(client: &Client, token: &ApiToken, done: &mut Released) -> Result<()> {
    if !token.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let ns = token.namespace().unwrap_or_default();
    if token.metadata.deletion_timestamp.is_some() {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let uid = token.uid().unwrap_or_default();
        let ours = ListParams::default().labels(&delivery_selector(Some(&uid)));
        for s in secrets.list(&ours).await? {
            match secrets
                .delete(&s.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => done.delivery_deleted += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let kept: Vec<&String> = token
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = json!({
        "metadata": {"finalizers": kept, "resourceVersion": token.resource_version()},
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let api: Api<ApiToken> = Api::namespaced(client.clone(), &ns);
    match api
        .patch(&token.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => done.finalizers_removed += 1,
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn wait_for_lease(client: &Client, cfg: &LeaseConfig, wait: Duration) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let lease = leases.get_opt(&cfg.name).await?;
        let holder = match &lease {
            Some(l) if held(l, Utc::now()) => {
                l.spec.as_ref().and_then(|s| s.holder_identity.clone())
            }
            _ => return Ok(()),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Leadership(format!(
                "operator replica {} still holds the Lease {}/{} after {wait:?}; stop the operator \
                 first (helm uninstall does)",
                holder.unwrap_or_default(),
                cfg.namespace,
                cfg.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(holder: Option<&str>, renewed_secs_ago: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::from_millisecond(
                        (Utc::now() - chrono::TimeDelta::seconds(renewed_secs_ago))
                            .timestamp_millis(),
                    )
                    .unwrap(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_held_only_by_a_named_holder_within_its_duration() {
        let now = Utc::now();
        assert!(held(&lease(Some("op-0"), 1), now));
        assert!(!held(&lease(Some("op-0"), 20), now), "expired");
        assert!(!held(&lease(None, 1), now), "released");
        assert!(!held(&lease(Some(""), 1), now), "released");
        assert!(!held(&Lease::default(), now));
    }
}
