//! The leak stage: an ApiToken whose leak-report annotation holds a report
//! gets the `Leaked` condition (True, the report in its message) and, when
//! the report is new, a Warning event. The leak-report endpoint only writes
//! the annotation and the action; the status stays the reconciler's alone.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prodgy_crds::{
    ApiToken, ApiTokenStatus,
    leak::{LEAK_ANNOTATION, LEAKED, LeakNote, REASON_LEAK_REPORTED},
};

use crate::plan::{PlannedEvent, to_time};

/// `desired` with the `Leaked` condition of the token's latest report, and
/// the event announcing that report if the status did not show it yet.
pub(in crate::plan) fn mark(
    token: &ApiToken,
    mut desired: ApiTokenStatus,
    generation: i64,
) -> (ApiTokenStatus, Option<PlannedEvent>) {
    let Some(note) = token
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEAK_ANNOTATION))
        .and_then(|v| LeakNote::from_json(v))
    else {
        return (desired, None);
    };
    let message = note.message();
    let previous = desired.conditions.iter().position(|c| c.type_ == LEAKED);
    let since: DateTime<Utc> = note.reported_at;
    let condition = Condition {
        type_: LEAKED.to_owned(),
        status: "True".to_owned(),
        reason: REASON_LEAK_REPORTED.to_owned(),
        message: message.clone(),
        observed_generation: Some(generation),
        last_transition_time: to_time(since),
    };
    let event = match previous {
        Some(i) => {
            let old = std::mem::replace(&mut desired.conditions[i], condition);
            // Leaked since the first report.
            desired.conditions[i].last_transition_time = old.last_transition_time;
            (old.message != message).then_some(message)
        }
        None => {
            desired.conditions.push(condition);
            Some(message)
        }
    };
    let event = event.map(|note| PlannedEvent {
        warning: true,
        reason: REASON_LEAK_REPORTED,
        note,
    });
    (desired, event)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeDelta;
    use prodgy_crds::ApiTokenSpec;

    use super::*;

    fn token(note: Option<&LeakNote>) -> ApiToken {
        let spec: ApiTokenSpec = serde_json::from_str(r#"{"product":"acme"}"#).unwrap();
        let mut t = ApiToken::new("ci", spec);
        t.metadata.annotations =
            note.map(|n| BTreeMap::from([(LEAK_ANNOTATION.to_owned(), n.to_json())]));
        t
    }

    fn leaked(s: &ApiTokenStatus) -> Option<&Condition> {
        s.conditions.iter().find(|c| c.type_ == LEAKED)
    }

    #[test]
    fn no_report_no_condition() {
        let (s, e) = mark(&token(None), ApiTokenStatus::default(), 1);
        assert!(s.conditions.is_empty() && e.is_none());
        let mut t = token(None);
        t.metadata.annotations = Some(BTreeMap::from([(LEAK_ANNOTATION.into(), "garbage".into())]));
        assert!(mark(&t, ApiTokenStatus::default(), 1).1.is_none());
    }

    #[test]
    fn a_report_sets_the_condition_once_and_a_new_report_updates_it() {
        let at = Utc::now() - TimeDelta::minutes(5);
        let first = LeakNote::new("https://example.com/a", "prodgy_api_token", "content", at);
        let (s, e) = mark(&token(Some(&first)), ApiTokenStatus::default(), 3);
        let c = leaked(&s).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", REASON_LEAK_REPORTED)
        );
        assert!(c.message.contains("https://example.com/a"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(3));
        assert_eq!(c.last_transition_time, to_time(at));
        let e = e.unwrap();
        assert!(
            e.warning && e.note.contains("https://example.com/a") && e.note.contains("content")
        );
        // Planned again from the status it led to: nothing new.
        let (again, e) = mark(&token(Some(&first)), s.clone(), 3);
        assert_eq!(again, s);
        assert!(e.is_none());
        // A second report: new message and event, same transition time.
        let second = LeakNote::new(
            "https://example.com/b",
            "prodgy_api_token",
            "commit",
            Utc::now(),
        );
        let (s2, e) = mark(&token(Some(&second)), s, 4);
        let c = leaked(&s2).unwrap();
        assert!(c.message.contains("https://example.com/b"));
        assert_eq!(c.last_transition_time, to_time(at));
        assert_eq!(s2.conditions.len(), 1);
        assert!(e.unwrap().note.contains("/b"));
    }
}
