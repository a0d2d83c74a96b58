//! `UsageReport`: how per-token call counts travel from the proxies to
//! `ApiToken.status.usage` without any proxy holding write access to ApiTokens.
//!
//! Each proxy process picks a random *epoch* at start and owns the reports
//! named after its replica and epoch. It writes cumulative counts (since its
//! epoch began) every flush interval and once more on SIGTERM. Counts only
//! grow within an epoch, so a report rewritten twice is never counted twice.
//! The operator computes
//!
//! ```text
//! status.usage = status.usageLedger.base + Σ count(report, token)
//!                                        over live reports not in usageLedger.folded
//! ```
//!
//! A report that stopped changing (its replica died or restarted) is retired:
//! its counts are added to `base` and its name recorded in `folded` in one
//! status write, then the report is deleted, then the name is dropped from
//! `folded`. A crash between any two steps repeats nothing.
//!
//! A proxy never writes to a report the operator may be retiring: when one
//! of its reports is gone, or is older than half the retention by its
//! `updatedAt`, it moves to a new epoch whose counts start where that report
//! ended (the proxy's `--usage-report-retention` is the operator's value).
//! After half the retention without an acknowledged write it reads its
//! reports back first, since a write whose answer was lost may have landed.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on every usage report, for the operator's watch.
pub const REPORT_LABEL: &str = "prodgy.io/usage-report";
/// Most tokens one report object holds; a proxy shards beyond this so an
/// object stays well below the API server's 1.5 MiB limit.
pub const MAX_TOKENS_PER_REPORT: usize = 5_000;

/// Cumulative usage seen by one proxy process (one epoch of one replica).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "prodgy.io",
    version = "v1",
    kind = "UsageReport",
    plural = "usagereports",
    singular = "usagereport",
    category = "prodgy",
    namespaced,
    printcolumn = r#"{"name":"Replica","type":"string","jsonPath":".spec.replica"}"#,
    printcolumn = r#"{"name":"Epoch","type":"string","jsonPath":".spec.epoch"}"#,
    printcolumn = r#"{"name":"Updated","type":"date","jsonPath":".spec.updatedAt"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UsageReportSpec {
    /// The proxy replica (pod name) that wrote the report.
    pub replica: String,
    /// Random identifier chosen when the proxy process started.
    pub epoch: String,
    /// Shard number when one epoch spans several objects.
    #[serde(default)]
    pub shard: u32,
    /// When the proxy last wrote this report.
    pub updated_at: DateTime<Utc>,
    /// Counts since the epoch began, keyed by the ApiToken's UID.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenUsage>,
}

/// One token's usage within one report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// Namespace of the ApiToken.
    pub namespace: String,
    /// Name of the ApiToken.
    pub name: String,
    /// Accepted requests since the epoch began.
    pub count: i64,
    /// Latest accepted request.
    pub last_used_at: DateTime<Utc>,
    /// For a capped token: this epoch's count in the cap's current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::usage_limit::WindowCount>,
}

/// The object name for a replica's epoch and shard: DNS-safe and unique.
pub fn report_name(replica: &str, epoch: &str, shard: u32) -> String {
    let replica: String = replica
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(200)
        .collect();
    let replica = replica.trim_matches('-');
    let replica = if replica.is_empty() { "proxy" } else { replica };
    format!("{replica}-{epoch}-{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_are_dns_safe() {
        assert_eq!(report_name("Proxy_Pod.1", "ab12", 0), "proxy-pod-1-ab12-0");
        assert_eq!(report_name("__", "ab12", 3), "proxy-ab12-3");
        assert!(report_name(&"x".repeat(400), "e", 0).len() < 253);
    }
}
