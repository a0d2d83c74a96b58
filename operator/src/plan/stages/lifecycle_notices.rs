//! Lifecycle notices: the unused switch-off and the expiry notice.
//!
//! * [`unused`] runs before the other stages: a token unused for its limit
//!   (`spec.deactivateAfterUnused`, else the operator's default) is switched
//!   off in this pass, so the rest of the planner plans it as deactivated
//!   (record state, phase, `Ready`). The shell writes `spec.active: false`
//!   and [`DEACTIVATED_UNUSED_ANNOTATION`] in one patch, first.
//! * [`Notices`] runs after them: the `ExpiringSoon` and `UnusedSoon`
//!   conditions, `status.unused`, the `Ready` reason `Unused`, the Warning
//!   Events (each once: an event is planned only when the status as last
//!   written does not show its condition yet) and the instants to wake up.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use prodgy_crds::{
    ApiToken, ApiTokenSpec, ApiTokenStatus, Phase,
    apitoken::condition,
    duration,
    lifecycle::{
        self, DEACTIVATED_UNUSED_ANNOTATION, EXPIRING_SOON, REASON_NOT_USED, REASON_UNUSED,
        UNUSED_SOON, UnusedStatus, event,
    },
};

use super::{Frame, warning};
use crate::{
    plan::{Inputs, PlanConfig, PlannedEvent, later, reason, rfc3339, to_time},
    usage,
};

/// Longest usable unused limit: beyond it a spec is surely a typo.
const MAX_LIMIT: TimeDelta = TimeDelta::days(3650);
/// The longest warning before an unused switch-off.
const UNUSED_LEAD: TimeDelta = TimeDelta::days(7);

/// The unused limit in force: the spec's, else the operator's default.
/// `0s`, or a spec value beyond 3650d, switches the rule off.
pub fn unused_limit(spec: &ApiTokenSpec, default: Option<TimeDelta>) -> Option<TimeDelta> {
    let limit = match spec.deactivate_after_unused.as_deref() {
        Some(text) => duration::parse(text)
            .ok()
            .and_then(|d| TimeDelta::from_std(d).ok())
            .filter(|d| *d <= MAX_LIMIT)?,
        None => default?,
    };
    (limit > TimeDelta::zero()).then_some(limit)
}

/// How long before the unused deadline the owner is warned: 7 days, or a
/// quarter of a limit shorter than 28 days (so a `3s` limit still warns,
/// 750 ms before).
pub fn unused_lead(limit: TimeDelta) -> TimeDelta {
    UNUSED_LEAD.min(limit / 4)
}

/// The unused switch-off as this pass decides it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unused {
    /// The limit in force.
    pub limit: Option<TimeDelta>,
    /// Where the unused clock starts: the latest of last use, issue and
    /// reactivation.
    pub since: Option<DateTime<Utc>>,
    /// When an active, issued token is switched off if still unused.
    pub deadline: Option<DateTime<Utc>>,
    /// This pass switches the token off (at `now`).
    pub switch_off: bool,
    /// Off for being unused, since this instant (before or by this pass).
    pub off_since: Option<DateTime<Utc>>,
    /// When the token was last switched on again.
    pub reactivated_at: Option<DateTime<Utc>>,
}

/// Stage 0: the unused switch-off, from the spec, the status as last
/// written, the operator's mark, the freshest last use and the instant.
pub fn unused(
    token: &ApiToken,
    limit: Option<TimeDelta>,
    last_used: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Unused {
    let spec = &token.spec;
    let status = token.status.clone().unwrap_or_default();
    let recorded = status.unused.clone().unwrap_or_default();
    // The mark not yet answered by a reactivation: the switch-off in force.
    let mark = token
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DEACTIVATED_UNUSED_ANNOTATION))
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|d| d.with_timezone(&Utc))
        .filter(|at| recorded.reactivated_at.is_none_or(|r| r < *at));
    let expired = spec.expires_at.is_some_and(|at| now >= at);
    let live = spec.active && !spec.revoked && !expired && status.created_at.is_some();
    // Switched on again (by the owner) after being off: the clock restarts.
    let reactivated_at = if live && (status.phase == Some(Phase::Inactive) || mark.is_some()) {
        Some(now)
    } else {
        recorded.reactivated_at
    };
    let since = [last_used, status.created_at, reactivated_at]
        .into_iter()
        .flatten()
        .max();
    let deadline = limit
        .filter(|_| live)
        .zip(since)
        .map(|(limit, since)| later(since, limit));
    let switch_off = deadline.is_some_and(|d| now >= d);
    Unused {
        limit,
        since,
        deadline,
        switch_off,
        off_since: if switch_off {
            Some(now)
        } else {
            mark.filter(|_| !spec.active)
        },
        reactivated_at,
    }
}

/// The last use of the token, counting the reports this pass folds in.
fn last_used(input: &Inputs<'_>, cfg: &PlanConfig) -> Option<DateTime<Utc>> {
    let status = input.token.status.as_ref();
    let ledger = status
        .and_then(|s| s.usage_ledger.clone())
        .unwrap_or_default();
    let uid = input.token.metadata.uid.as_deref().unwrap_or_default();
    let folded = usage::fold(
        uid,
        &ledger,
        input.reports,
        input.now,
        cfg.usage_report_retention,
    );
    folded.last_used_at.max(status.and_then(|s| s.last_used_at))
}

impl Unused {
    /// [`unused`] for the planner's inputs.
    pub fn of(cfg: &PlanConfig, input: &Inputs<'_>) -> Self {
        let limit = unused_limit(&input.token.spec, cfg.deactivate_after_unused);
        unused(input.token, limit, last_used(input, cfg), input.now)
    }

    /// The token as the rest of the planner sees it: switched off when this
    /// pass switches it off.
    pub fn applied(&self, token: &ApiToken) -> Option<ApiToken> {
        self.switch_off.then(|| {
            let mut off = token.clone();
            off.spec.active = false;
            off
        })
    }

    /// The value of [`DEACTIVATED_UNUSED_ANNOTATION`] this pass writes.
    pub fn mark(&self, now: DateTime<Utc>) -> Option<String> {
        self.switch_off
            .then(|| now.to_rfc3339_opts(SecondsFormat::Nanos, true))
    }
}

/// Stage 8: the notices of this pass, from the phase it leads to.
#[derive(Debug, PartialEq, Eq)]
pub struct Notices {
    unused: Unused,
    /// The expiry notice in force: its lead.
    expiry: Option<TimeDelta>,
    /// Inside the warning window before the unused deadline.
    unused_soon: bool,
}

impl Notices {
    pub fn new(f: &Frame<'_>, phase: Phase, unused: Unused) -> Self {
        let active = phase == Phase::Active;
        let expiry = f
            .spec
            .expires_at
            .filter(|_| active)
            .and_then(|at| expiry_notice(&f.cfg.expiry_notices, at, f.now));
        let unused_soon = active
            && unused
                .deadline
                .zip(unused.limit)
                .is_some_and(|(d, limit)| f.now >= d - unused_lead(limit));
        Self {
            unused,
            expiry,
            unused_soon,
        }
    }

    /// The events of the notices, after the other stages' `events`; a
    /// switch-off replaces their plain `Deactivated`.
    pub fn events(&self, f: &Frame<'_>, mut events: Vec<PlannedEvent>) -> Vec<PlannedEvent> {
        let current = &f.current;
        if let Some(lead) = self.expiry
            && condition_reason(current, EXPIRING_SOON) != Some(&expiring_reason(lead))
        {
            let at = f.spec.expires_at.map(rfc3339).unwrap_or_default();
            events.push(warning(
                event::EXPIRING_SOON,
                format!(
                    "The token expires at {at} (within {}). Move spec.expiresAt to keep it.",
                    format_delta(lead)
                ),
            ));
        }
        if self.unused_soon && condition_reason(current, UNUSED_SOON).is_none() {
            events.push(warning(event::UNUSED_SOON, self.soon_message()));
        }
        let recorded = current.unused.as_ref().and_then(|u| u.deactivated_at);
        if let Some(at) = self.unused.off_since
            && recorded != Some(at)
        {
            events.retain(|e| e.reason != reason::DEACTIVATED);
            events.push(warning(event::DEACTIVATED_UNUSED, self.off_message(at)));
        }
        events
    }

    /// `desired` with the notices' conditions, `status.unused` and the
    /// `Ready` reason of a switch-off.
    pub fn status(&self, f: &Frame<'_>, mut desired: ApiTokenStatus) -> ApiTokenStatus {
        let unused = UnusedStatus {
            after: self.unused.limit.map(format_delta),
            deactivated_at: self.unused.off_since,
            reactivated_at: self.unused.reactivated_at,
        };
        desired.unused = (!unused.is_empty()).then_some(unused);
        if let Some(at) = self.unused.off_since
            && desired.phase == Some(Phase::Inactive)
            && let Some(ready) = desired
                .conditions
                .iter_mut()
                .find(|c| c.type_ == condition::READY)
        {
            ready.reason = REASON_UNUSED.to_owned();
            ready.message = format!("{} {}", self.off_message(at), ready.message);
        }
        let expiring = self.expiry.map(|lead| {
            let at = f.spec.expires_at.map(rfc3339).unwrap_or_default();
            (expiring_reason(lead), format!("The token expires at {at}."))
        });
        let soon = self
            .unused_soon
            .then(|| (REASON_NOT_USED.to_owned(), self.soon_message()));
        let conditions = &mut desired.conditions;
        set_condition(f, conditions, EXPIRING_SOON, expiring);
        set_condition(f, conditions, UNUSED_SOON, soon);
        desired
    }

    /// `wake` or an earlier instant of the notices: each expiry notice, the
    /// unused warning and the unused deadline still ahead.
    pub fn wake(&self, f: &Frame<'_>, wake: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let expiry = f
            .spec
            .expires_at
            .filter(|_| f.spec.active && !f.spec.revoked);
        let notices = f
            .cfg
            .expiry_notices
            .iter()
            .filter_map(move |lead| expiry.map(|at| at - *lead));
        let unused = self.unused.deadline.zip(self.unused.limit);
        let warn = unused.map(|(d, limit)| d - unused_lead(limit));
        notices
            .chain(warn)
            .chain(self.unused.deadline)
            .filter(|at| *at > f.now)
            .chain(wake)
            .min()
    }

    fn soon_message(&self) -> String {
        format!(
            "Not used since {}: the token will be deactivated at {} unless it is used \
             (unused limit {}).",
            self.unused.since.map(rfc3339).unwrap_or_default(),
            self.unused.deadline.map(rfc3339).unwrap_or_default(),
            self.unused.limit.map(format_delta).unwrap_or_default()
        )
    }

    fn off_message(&self, at: DateTime<Utc>) -> String {
        let limit = self.unused.limit.map(format_delta);
        format!(
            "Deactivated at {} after {} unused (spec.active set to false); set spec.active to \
             true to switch it on again.",
            rfc3339(at),
            limit.as_deref().unwrap_or("its limit")
        )
    }
}

/// The notice in force `at - now` before expiry: the shortest configured
/// lead that has been reached.
pub fn expiry_notice(
    leads: &[TimeDelta],
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<TimeDelta> {
    let left = at - now;
    leads
        .iter()
        .copied()
        .filter(|lead| left > TimeDelta::zero() && left <= *lead)
        .min()
}

fn expiring_reason(lead: TimeDelta) -> String {
    lifecycle::expiring_reason(lead.to_std().unwrap_or_default())
}

fn format_delta(d: TimeDelta) -> String {
    duration::format(d.to_std().unwrap_or_default())
}

/// The reason of the True condition of `type_`, as last written.
fn condition_reason<'s>(status: &'s ApiTokenStatus, type_: &str) -> Option<&'s String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| &c.reason)
}

/// Sets the True condition `type_` (keeping its transition time while it
/// stays True), or removes it.
fn set_condition(
    f: &Frame<'_>,
    conditions: &mut Vec<Condition>,
    type_: &str,
    value: Option<(String, String)>,
) {
    let since = conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != type_);
    if let Some((reason, message)) = value {
        conditions.push(Condition {
            type_: type_.to_owned(),
            status: "True".to_owned(),
            reason,
            message,
            observed_generation: Some(f.id.generation),
            last_transition_time: since.unwrap_or_else(|| to_time(f.now)),
        });
    }
}

#[cfg(test)]
mod tests;
