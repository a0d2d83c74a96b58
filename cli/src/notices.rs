//! The markers `list` shows beside a token's status for the operator's
//! lifecycle notices: switched off for being unused, about to be, about to
//! expire. Read from the status conditions the operator writes, so the CLI
//! decides nothing itself.

use prodgy_crds::{
    ApiTokenStatus,
    apitoken::condition,
    lifecycle::{EXPIRING_SOON, REASON_UNUSED, UNUSED_SOON},
};

/// The markers of a token, most important first.
pub fn markers(status: &ApiTokenStatus) -> Vec<String> {
    let is = |type_: &str, reason: Option<&str>| {
        status.conditions.iter().any(|c| {
            c.type_ == type_
                && reason.is_none_or(|r| c.reason == r)
                && (c.status == "True" || reason.is_some())
        })
    };
    let mut out = Vec::new();
    if is(condition::READY, Some(REASON_UNUSED)) {
        let after = status.unused.as_ref().and_then(|u| u.after.as_deref());
        out.push(match after {
            Some(after) => format!("deactivated: unused {after}"),
            None => "deactivated: unused".to_owned(),
        });
    }
    if is(UNUSED_SOON, None) {
        out.push("unused: deactivation soon".to_owned());
    }
    if is(EXPIRING_SOON, None) {
        out.push("expires soon".to_owned());
    }
    out
}

/// The STATUS cell: the phase, then the markers in parentheses.
pub fn status_cell(status: &str, markers: &[String]) -> String {
    if markers.is_empty() {
        status.to_owned()
    } else {
        format!("{status} ({})", markers.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use prodgy_crds::lifecycle::UnusedStatus;

    use super::*;

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        }
    }

    #[test]
    fn markers_follow_the_operators_conditions() {
        let off = vec![cond("Ready", "False", "Unused")];
        let soon = vec![
            cond("Ready", "True", "Active"),
            cond(UNUSED_SOON, "True", "NotUsed"),
        ];
        let expiring = vec![
            cond("Ready", "True", "Active"),
            cond(EXPIRING_SOON, "True", "Within1d"),
        ];
        let owner_off = vec![cond("Ready", "False", "Inactive")];
        let limit = Some(UnusedStatus {
            after: Some("90d".into()),
            ..Default::default()
        });
        let cases: [(Vec<Condition>, Option<UnusedStatus>, &[&str]); 6] = [
            (off.clone(), limit.clone(), &["deactivated: unused 90d"]),
            (off, None, &["deactivated: unused"]),
            (soon, limit.clone(), &["unused: deactivation soon"]),
            (expiring, None, &["expires soon"]),
            (owner_off, limit, &[]),
            (Vec::new(), None, &[]),
        ];
        for (conditions, unused, want) in cases {
            let status = ApiTokenStatus {
                conditions: conditions.clone(),
                unused,
                ..Default::default()
            };
            assert_eq!(markers(&status), want, "{conditions:?}");
        }
    }

    #[test]
    fn list_marks_a_token_switched_off_for_being_unused() {
        use prodgy_crds::{ApiToken, Phase};

        use crate::render::{TokenView, render_table};
        let mut token = ApiToken::new(
            "idle",
            serde_json::from_str(r#"{"product":"acme"}"#).unwrap(),
        );
        token.status = Some(ApiTokenStatus {
            phase: Some(Phase::Inactive),
            conditions: vec![cond("Ready", "False", "Unused")],
            unused: Some(UnusedStatus {
                after: Some("90d".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let view = TokenView::from_token(&token);
        let table = render_table(std::slice::from_ref(&view), false);
        assert!(
            table.contains("   Inactive (deactivated: unused 90d)   "),
            "{table}"
        );
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["notices"][0], "deactivated: unused 90d");
    }

    #[test]
    fn the_status_cell_carries_the_markers() {
        assert_eq!(status_cell("Active", &[]), "Active");
        let m = ["deactivated: unused 90d".to_owned()];
        assert_eq!(
            status_cell("Inactive", &m),
            "Inactive (deactivated: unused 90d)"
        );
    }
}
