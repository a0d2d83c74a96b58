//! The pure part of a report: each candidate classified, the answer the
//! scanner gets, and the patches that take the leaked tokens out of service.
//!
//! Every candidate is hashed and looked up whatever its shape, so a
//! malformed token costs the same as an unknown one; and every match is
//! patched, already revoked or not, so the time taken says no more than the
//! answer does (whether each token was ours).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prodgy_crds::{FormatError, TokenHash, leak::LEAK_ANNOTATION, leak::LeakNote, token};
use serde::Serialize;
use serde_json::{Value, json};

use super::{index::Known, parse::Reported};

/// What happens to a leaked token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakAction {
    /// `spec.revoked: true`: permanent (the CRD forbids un-revoking).
    Revoke,
    /// `spec.active: false`: the owner can turn it back on.
    Deactivate,
}

impl LeakAction {
    /// The flag value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke" => Some(Self::Revoke),
            "deactivate" => Some(Self::Deactivate),
            _ => None,
        }
    }
}

/// How one candidate was classified (the metric's `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// One of our tokens.
    Matched,
    /// Well-formed, but not a token we issued (or no longer hold).
    Unknown,
    /// Not of the token format, or its checksum does not match.
    Malformed,
}

impl Outcome {
    /// Every outcome, for metrics.
    pub const ALL: [Outcome; 3] = [Outcome::Matched, Outcome::Unknown, Outcome::Malformed];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Unknown => "unknown",
            Outcome::Malformed => "malformed",
        }
    }
}

/// The scanner's verdict label: the only thing an answer says per token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// Ours.
    TruePositive,
    /// Not ours (unknown, malformed or a bad checksum alike).
    FalsePositive,
}

/// One element of the answer, in the partner program's feedback shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// SHA-256 (lower-case hex) of the reported string: the scanner can
    /// match it to its own report without the token travelling back.
    pub token_hash: String,
    /// The reported type, echoed.
    pub token_type: String,
    /// Ours or not.
    pub label: Label,
}

/// Classifies one candidate: its shape check and the token its digest
/// belongs to. A match acts unless it is a superseded token whose grace
/// period has ended (every proxy already refuses it; taking the current
/// token down for it would punish a rotation that worked).
pub fn classify(
    format: Result<(), FormatError>,
    known: Option<&Known>,
    now: DateTime<Utc>,
) -> (Outcome, bool) {
    match (format, known) {
        (Err(_), _) => (Outcome::Malformed, false),
        (Ok(()), None) => (Outcome::Unknown, false),
        (Ok(()), Some(k)) => (Outcome::Matched, k.not_after.is_none_or(|t| t > now)),
    }
}

/// A patch to send: which token, and the report it is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    /// The token.
    pub target: Known,
    /// Where it was found.
    pub note: LeakNote,
}

/// Everything a report leads to.
#[derive(Debug, Default, PartialEq)]
pub struct ReportPlan {
    /// The answer, one element per reported candidate, in order.
    pub answers: Vec<Answer>,
    /// One patch per token (a token reported twice is patched once, with
    /// its first report).
    pub patches: Vec<Patch>,
    /// Candidates per outcome.
    pub counts: BTreeMap<&'static str, u64>,
}

/// Plans a whole report against `lookup` (the digest index) at `now`.
pub fn plan_report<'k>(
    reports: &[Reported],
    lookup: impl Fn(&TokenHash) -> Option<&'k Known>,
    now: DateTime<Utc>,
) -> ReportPlan {
    let mut plan = ReportPlan::default();
    let mut patched = std::collections::HashSet::new();
    for r in reports {
        let digest = TokenHash::of(&r.token);
        let known = lookup(&digest);
        let (outcome, act) = classify(token::check_format(&r.token), known, now);
        *plan.counts.entry(outcome.as_str()).or_default() += 1;
        plan.answers.push(Answer {
            token_hash: digest.to_hex(),
            token_type: r.kind.clone(),
            label: if outcome == Outcome::Matched {
                Label::TruePositive
            } else {
                Label::FalsePositive
            },
        });
        if let Some(k) = known.filter(|k| act && patched.insert(k.uid.clone())) {
            plan.patches.push(Patch {
                target: k.clone(),
                note: LeakNote::new(&r.url, &r.kind, &r.source, now),
            });
        }
    }
    plan
}

/// The merge patch of the ApiToken: the action, the report as an
/// annotation (the operator turns it into the `Leaked` condition and a
/// Warning event) and the UID as a precondition.
pub fn patch_body(action: LeakAction, patch: &Patch) -> Value {
    let spec = match action {
        LeakAction::Revoke => json!({ "revoked": true }),
        LeakAction::Deactivate => json!({ "active": false }),
    };
    json!({
        "metadata": {
            "uid": patch.target.uid,
            "annotations": { LEAK_ANNOTATION: patch.note.to_json() },
        },
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use prodgy_crds::Token;

    use super::*;

    fn known(uid: &str, not_after: Option<DateTime<Utc>>) -> Known {
        Known {
            namespace: "team-a".into(),
            name: format!("tok-{uid}"),
            uid: uid.into(),
            not_after,
        }
    }

    #[test]
    fn the_decision_table() {
        let now = Utc::now();
        let later = Some(now + TimeDelta::seconds(60));
        let ended = Some(now);
        let bad = Err(FormatError::BadChecksum);
        let shape = Err(FormatError::Malformed);
        let cases = [
            (Ok(()), Some(known("u", None)), Outcome::Matched, true),
            (Ok(()), Some(known("u", later)), Outcome::Matched, true),
            (Ok(()), Some(known("u", ended)), Outcome::Matched, false),
            (Ok(()), None, Outcome::Unknown, false),
            (bad, None, Outcome::Malformed, false),
            (shape, None, Outcome::Malformed, false),
            // Cannot happen (stored digests are of valid tokens), and would
            // still not act.
            (bad, Some(known("u", None)), Outcome::Malformed, false),
        ];
        for (format, k, outcome, act) in cases {
            assert_eq!(
                classify(format, k.as_ref(), now),
                (outcome, act),
                "{format:?} {k:?}"
            );
        }
    }

    fn reported(token: &str, url: &str) -> Reported {
        Reported {
            token: token.into(),
            kind: "prodgy_api_token".into(),
            url: url.into(),
            source: "content".into(),
        }
    }

    #[test]
    fn a_report_answers_each_candidate_and_patches_each_token_once() {
        let now = Utc::now();
        let (ours, old, stranger) = (
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
            Token::generate("prod").unwrap(),
        );
        let mut bad_sum = ours.expose().to_owned();
        let last = bad_sum.pop().unwrap();
        bad_sum.push(if last == '0' { '1' } else { '0' });
        let index = std::collections::HashMap::from([
            (ours.hash().to_hex(), known("u1", None)),
            (
                old.hash().to_hex(),
                known("u1", Some(now + TimeDelta::hours(1))),
            ),
        ]);
        let reports = [
            reported(ours.expose(), "https://example.com/a"),
            reported(stranger.expose(), "https://example.com/b"),
            reported(&bad_sum, "https://example.com/c"),
            reported("not a token", "https://example.com/d"),
            reported(old.expose(), "https://example.com/e"),
        ];
        let plan = plan_report(&reports, |d| index.get(&d.to_hex()), now);
        let labels: Vec<Label> = plan.answers.iter().map(|a| a.label).collect();
        use Label::{FalsePositive as F, TruePositive as T};
        assert_eq!(labels, [T, F, F, F, T]);
        assert_eq!(plan.answers[0].token_hash, ours.hash().to_hex());
        assert_eq!(
            plan.answers[3].token_hash,
            TokenHash::of("not a token").to_hex()
        );
        // The old token inside its grace period belongs to the same
        // ApiToken: one patch, for the first report.
        assert_eq!(plan.patches.len(), 1);
        assert_eq!(plan.patches[0].target.uid, "u1");
        assert_eq!(plan.patches[0].note.url, "https://example.com/a");
        let counts: Vec<(&str, u64)> = plan.counts.into_iter().collect();
        assert_eq!(counts, [("malformed", 2), ("matched", 2), ("unknown", 1)]);
    }

    #[test]
    fn the_answer_has_the_feedback_shape_and_nothing_else() {
        let now = Utc::now();
        let plan = plan_report(&[reported("x", "u")], |_| None, now);
        let v = serde_json::to_value(&plan.answers).unwrap();
        assert_eq!(
            v,
            json!([{
                "token_hash": TokenHash::of("x").to_hex(),
                "token_type": "prodgy_api_token",
                "label": "false_positive"
            }])
        );
    }

    #[test]
    fn the_patch_carries_the_action_the_note_and_the_uid() {
        let now = Utc::now();
        let p = Patch {
            target: known("u9", None),
            note: LeakNote::new("https://example.com/f", "t", "content", now),
        };
        let revoke = patch_body(LeakAction::Revoke, &p);
        assert_eq!(revoke["spec"], json!({"revoked": true}));
        assert_eq!(revoke["metadata"]["uid"], "u9");
        let note = revoke["metadata"]["annotations"][LEAK_ANNOTATION]
            .as_str()
            .unwrap();
        assert_eq!(LeakNote::from_json(note), Some(p.note.clone()));
        let deactivate = patch_body(LeakAction::Deactivate, &p);
        assert_eq!(deactivate["spec"], json!({"active": false}));
        assert_eq!(LeakAction::parse("revoke"), Some(LeakAction::Revoke));
        assert_eq!(
            LeakAction::parse("deactivate"),
            Some(LeakAction::Deactivate)
        );
        assert_eq!(LeakAction::parse("delete"), None);
    }
}
