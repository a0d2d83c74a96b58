//! The `ApiToken` custom resource: spec is the owner's intent, status is the
//! operator's truth.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::scope::Scope;
use crate::usage_limit::{UsageLimit, UsageLimitStatus};

/// An API token for one product, declared with `kubectl apply`.
///
/// The token's name in the product guide ("Token name") is the resource name.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "prodgy.io",
    version = "v1",
    kind = "ApiToken",
    plural = "apitokens",
    singular = "apitoken",
    shortname = "apit",
    category = "prodgy",
    namespaced,
    status = "ApiTokenStatus",
    printcolumn = r#"{"name":"Product","type":"string","jsonPath":".spec.product"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".status.prefix"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Usage","type":"integer","jsonPath":".status.usage"}"#,
    printcolumn = r#"{"name":"Expires","type":"string","format":"date-time","jsonPath":".spec.expiresAt"}"#,
    printcolumn = r#"{"name":"Remaining","type":"integer","jsonPath":".status.usageLimit.remaining","priority":1}"#,
    printcolumn = r#"{"name":"Last Used","type":"date","jsonPath":".status.lastUsedAt","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(oldSelf.revoked) || !oldSelf.revoked || (has(self.revoked) && self.revoked)",
        "message": "revoked is permanent: a revoked token cannot be un-revoked"
    },
    {
        "rule": "!has(oldSelf.regeneration) || (has(self.regeneration) && self.regeneration >= oldSelf.regeneration)",
        "message": "regeneration can only increase"
    }
]))]
pub struct ApiTokenSpec {
    /// The product (workspace) this token grants access to.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub product: String,

    /// Human description of the token's purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// When the token stops working (RFC 3339). Absent means "Never".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,

    /// Activate (true) or deactivate (false) the token.
    #[serde(default = "default_true")]
    #[schemars(default = "default_true")]
    pub active: bool,

    /// Revoke the token permanently. Once true it can never be set false.
    #[serde(default)]
    #[schemars(default)]
    pub revoked: bool,

    /// Bump to regenerate the token. Never decreases.
    #[serde(default)]
    #[schemars(default, range(min = 0))]
    pub regeneration: i64,

    /// How long the previous token keeps working after a regeneration, as a
    /// Go-style duration (`90s`, `15m`, `1h30m`, `7d`). Absent: it stops at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub regeneration_grace_period: Option<String>,

    /// Switch the token off (`active: false`, not revoked) once it has not
    /// been used for this long, counted from its last use, its issue or its
    /// last reactivation, whichever is latest (`90d`; `0s`: never, whatever
    /// the operator's default). Absent: the operator's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h|d))+$"))]
    pub deactivate_after_unused: Option<String>,

    /// Scopes the token is limited to. Empty: every resource of the product.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub scopes: Vec<Scope>,

    /// Source addresses the token may be used from, as CIDRs (`10.0.0.0/8`,
    /// `2001:db8::/32`, `192.0.2.7/32`). Empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::sources::crd_schema")]
    pub allowed_source_ranges: Vec<String>,

    /// Optional request rate limit, enforced by each proxy replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,

    /// How the plaintext reaches its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,

    /// Optional cap on the calls the token may make, per window of `per`
    /// or in its whole life, summed over every proxy replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<UsageLimit>,
}

fn default_true() -> bool {
    true
}

/// A token-bucket rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_second: u32,
    /// Burst size; defaults to `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// The effective burst.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// Where the plaintext goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `Secret` keeps the plaintext in a Secret in the token's namespace;
    /// `RevealOnce` removes that Secret after the operator's reveal window.
    /// Absent: the operator's default mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DeliveryMode>,
    /// Name of the delivery Secret. Default: `<token name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
}

/// Delivery modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeliveryMode {
    /// The plaintext stays in the delivery Secret for in-cluster consumers.
    Secret,
    /// The delivery Secret is deleted once the reveal window has passed.
    RevealOnce,
}

/// The lifecycle phase shown as "Status".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Not issued yet.
    Pending,
    /// Functional token, can be used for API calls.
    Active,
    /// Deactivated token, does not accept API calls.
    Inactive,
    /// Past its expiration date.
    Expired,
    /// Explicitly revoked; permanent.
    Revoked,
}

impl Phase {
    /// Every phase, in a stable order (for metrics).
    pub const ALL: [Phase; 5] = [
        Phase::Pending,
        Phase::Active,
        Phase::Inactive,
        Phase::Expired,
        Phase::Revoked,
    ];

    /// The phase of a token: the one precedence of states,
    /// Revoked > Expired > Pending (nothing issued yet) > Inactive > Active.
    /// Everything that derives a state from a token uses this function: the
    /// hashed record's verdict (and so the proxy), the operator's planner,
    /// error handling and metrics, and the CLI.
    pub const fn of(revoked: bool, expired: bool, issued: bool, active: bool) -> Phase {
        if revoked {
            Phase::Revoked
        } else if expired {
            Phase::Expired
        } else if !issued {
            Phase::Pending
        } else if !active {
            Phase::Inactive
        } else {
            Phase::Active
        }
    }

    /// Whether the `Ready` condition is True in this phase, and its reason.
    /// Reasons that are not phases (an invalid spec, a lost hashed Secret, a
    /// failed write) take precedence over these where they apply.
    pub const fn ready(self) -> (bool, &'static str) {
        match self {
            Phase::Active => (true, condition::REASON_ACTIVE),
            Phase::Inactive => (false, condition::REASON_INACTIVE),
            Phase::Expired => (false, condition::REASON_EXPIRED),
            Phase::Revoked => (false, condition::REASON_REVOKED),
            Phase::Pending => (false, condition::REASON_RECONCILE_ERROR),
        }
    }

    /// The name as written in status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Active => "Active",
            Phase::Inactive => "Inactive",
            Phase::Expired => "Expired",
            Phase::Revoked => "Revoked",
        }
    }
}

/// Observed state, written only by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenStatus {
    /// Active, Inactive, Expired, Revoked (or Pending before issue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// First 8 characters of the current token, e.g. `prod_abc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// When the current token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Copy of `spec.expiresAt` as enforced; absent means "Never".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// API calls made with the token, summed over every proxy replica.
    #[serde(default)]
    pub usage: i64,
    /// Last time a proxy accepted the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// The `spec.regeneration` the current token was issued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_regeneration: Option<i64>,
    /// Until when the previous token is still accepted (grace period).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// Name of the hashed Secret (in the operator's hashed-Secret namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_secret_name: Option<String>,
    /// Namespace of the hashed Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashed_secret_namespace: Option<String>,
    /// Name of the delivery Secret in the token's namespace, while it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_secret_name: Option<String>,
    /// Usage already folded in from retired usage reports (internal
    /// bookkeeping that makes folding idempotent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_ledger: Option<UsageLedger>,
    /// The unused switch-off: the limit in force, when it switched the
    /// token off, when the token was switched on again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused: Option<crate::lifecycle::UnusedStatus>,
    /// The usage cap's current window: used, remaining, renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<UsageLimitStatus>,
    /// The `metadata.generation` this status reflects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and friends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The part of usage that no longer lives in a usage report.
///
/// `status.usage = ledger.base + Σ live reports not in ledger.folded`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageLedger {
    /// Calls counted by reports that have been retired.
    #[serde(default)]
    pub base: i64,
    /// Retired reports already added to `base` but not yet deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folded: Vec<String>,
    /// Latest use seen in a retired report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// For a capped token: what retired reports counted in the current
    /// window (`start`, `count`), so the window's sum survives retirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<crate::usage_limit::WindowCount>,
}

/// Condition types and reasons (CamelCase, as Kubernetes conventions ask).
pub mod condition {
    /// The single summary condition.
    pub const READY: &str = "Ready";

    /// Ready=True: the token is issued and accepted.
    pub const REASON_ACTIVE: &str = "Active";
    /// Ready=False: deactivated.
    pub const REASON_INACTIVE: &str = "Inactive";
    /// Ready=False: past `expiresAt`.
    pub const REASON_EXPIRED: &str = "Expired";
    /// Ready=False: revoked.
    pub const REASON_REVOKED: &str = "Revoked";
    /// Ready=False: the spec cannot be acted on (e.g. bad grace period).
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
    /// Ready=False: the hashed Secret vanished and the plaintext is gone too.
    pub const REASON_HASHED_SECRET_LOST: &str = "HashedSecretLost";
    /// Ready=False: writing Secrets failed; retried with backoff.
    pub const REASON_RECONCILE_ERROR: &str = "ReconcileError";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_precedence_is_revoked_expired_pending_inactive_active() {
        for bits in 0..16u8 {
            let [revoked, expired, issued, active] = [0, 1, 2, 3].map(|i| bits & (1 << i) != 0);
            let want = match () {
                () if revoked => Phase::Revoked,
                () if expired => Phase::Expired,
                () if !issued => Phase::Pending,
                () if !active => Phase::Inactive,
                () => Phase::Active,
            };
            assert_eq!(
                Phase::of(revoked, expired, issued, active),
                want,
                "{bits:04b}"
            );
        }
    }

    #[test]
    fn only_an_active_token_is_ready() {
        for phase in Phase::ALL {
            let (ready, reason) = phase.ready();
            assert_eq!(ready, phase == Phase::Active, "{phase:?}");
            if phase != Phase::Pending {
                assert_eq!(reason, phase.as_str(), "{phase:?}");
            }
        }
    }

    #[test]
    fn minimal_manifest_gets_the_documented_defaults() {
        let spec: ApiTokenSpec = serde_json::from_str(r#"{"product":"acme"}"#).unwrap();
        assert!(spec.active);
        assert!(!spec.revoked);
        assert_eq!(spec.regeneration, 0);
        assert!(spec.scopes.is_empty());
        assert_eq!(spec.expires_at, None);
    }

    #[test]
    fn wrong_types_and_unknown_scopes_are_rejected() {
        for bad in [
            r#"{}"#,
            r#"{"product":"acme","active":"yes"}"#,
            r#"{"product":"acme","expiresAt":"tomorrow"}"#,
            r#"{"product":"acme","scopes":["agents:admin"]}"#,
            r#"{"product":"acme","regeneration":"1"}"#,
        ] {
            assert!(
                serde_json::from_str::<ApiTokenSpec>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn status_round_trips() {
        let status = ApiTokenStatus {
            phase: Some(Phase::Active),
            prefix: Some("prod_abc".into()),
            usage: 42,
            usage_ledger: Some(UsageLedger {
                base: 40,
                folded: vec!["r1".into()],
                last_used_at: None,
                window: None,
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Active");
        assert_eq!(json["usageLedger"]["folded"][0], "r1");
        assert_eq!(
            serde_json::from_value::<ApiTokenStatus>(json).unwrap(),
            status
        );
    }
}
