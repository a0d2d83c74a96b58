//! Lifecycle notices: the unused switch-off (`spec.deactivateAfterUnused`)
//! and the expiry notice. The names here are the contract between the
//! operator, which writes them, and the CLI, which shows them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Set by the operator, in the same write as `spec.active: false`, to the
/// instant it switched an unused token off (RFC 3339). One atomic write, so
/// a switch-off is never mistaken for the owner's own deactivation.
pub const DEACTIVATED_UNUSED_ANNOTATION: &str = "prodgy.io/deactivated-unused-at";

/// Condition type: True from the first expiry notice until `expiresAt`;
/// absent otherwise. Its reason names the notice (see [`expiring_reason`]).
pub const EXPIRING_SOON: &str = "ExpiringSoon";

/// Condition type: True while an active token is inside the warning window
/// before its unused deadline; absent otherwise.
pub const UNUSED_SOON: &str = "UnusedSoon";
/// `UnusedSoon` reason.
pub const REASON_NOT_USED: &str = "NotUsed";
/// `Ready=False` reason: the operator switched the token off for being
/// unused (`spec.active` is false, set by the operator).
pub const REASON_UNUSED: &str = "Unused";

/// Event reasons of the notices (Warning Events, each once per occurrence).
pub mod event {
    /// The token will be switched off for being unused soon.
    pub const UNUSED_SOON: &str = "UnusedSoon";
    /// The operator switched the token off for being unused.
    pub const DEACTIVATED_UNUSED: &str = "DeactivatedUnused";
    /// The token entered an expiry notice window.
    pub const EXPIRING_SOON: &str = "ExpiringSoon";
}

/// The `ExpiringSoon` reason of the notice `lead` before `expiresAt`, e.g.
/// `Within7d` (letters and digits, as condition reasons must be).
pub fn expiring_reason(lead: std::time::Duration) -> String {
    format!("Within{}", crate::duration::format(lead))
}

/// `status.unused`: what the operator keeps about the unused switch-off.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnusedStatus {
    /// The limit in force (`spec.deactivateAfterUnused` or the operator's
    /// default), e.g. `90d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// When the operator switched the token off for being unused; set while
    /// it stays off for that reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<DateTime<Utc>>,
    /// When the token was last switched on again after being inactive: the
    /// unused clock restarts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactivated_at: Option<DateTime<Utc>>,
}

impl UnusedStatus {
    /// Whether nothing is recorded (the field is then left out).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_status_uses_camel_case_and_omits_empty_fields() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = UnusedStatus {
            after: Some("90d".into()),
            deactivated_at: Some(at),
            reactivated_at: None,
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"after": "90d", "deactivatedAt": "2026-01-02T03:04:05Z"})
        );
        assert_eq!(serde_json::from_value::<UnusedStatus>(json).unwrap(), s);
        assert!(UnusedStatus::default().is_empty());
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(expiring_reason(day * 7), "Within7d");
        assert_eq!(expiring_reason(day / 2), "Within12h");
    }
}
