//! Step 2 of usage retirement, on the leader: deletes the usage reports
//! every token they mention has folded into its ledger.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use kube::{
    ResourceExt,
    api::{Api, DeleteParams, Preconditions},
    runtime::reflector::{ObjectRef, Store},
};
use prodgy_crds::{ApiToken, UsageReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, all_synced};
use crate::usage::{self, Mentioned};

/// Step 2 of usage retirement: deletes reports every mentioned token has
/// folded. Runs on the leader only, once the ApiToken caches are loaded
/// (an unloaded cache would make every token look deleted).
pub(super) async fn retire_reports(
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
