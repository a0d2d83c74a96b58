//! The planner's stages, in the order [`super::plan`] runs them: where the
//! current token comes from ([`source`], [`issued`]), the hashed record it
//! should have ([`desired_record`]), the delivery Secret ([`delivery`]), the
//! `Ready` condition ([`readiness`]), the status ([`desired_status`],
//! [`status_write`]) and the events ([`events`]). Each takes the [`Frame`]
//! and the small results of the stages before it; none does I/O.

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::api::core::v1::Secret;
use prodgy_crds::{
    ApiTokenSpec, ApiTokenStatus, DeliveryMode, HashEntry, HashedRecord, Phase, RecordState, Token,
    apitoken::condition, hashed::RECORD_VERSION,
};

use super::{
    DeliveryObs, Inputs, PlanConfig, PlannedEvent, StatusWrite, TokenId, delivery_mode,
    delivery_secret, delivery_secret_name, later, reason, rfc3339, with_ready,
};
use crate::{Result, usage::Folded};

pub(super) mod leaked;
pub(super) mod lifecycle_notices;
pub(super) mod usage_limit;

/// Longest accepted grace period: beyond it a spec is surely a typo.
const MAX_GRACE: TimeDelta = TimeDelta::days(3650);

/// What every stage reads: the token, what was observed of its Secrets, and
/// the instant.
pub(super) struct Frame<'a> {
    pub cfg: &'a PlanConfig,
    pub id: TokenId,
    pub spec: &'a ApiTokenSpec,
    /// The status as last read (empty before the first write).
    pub current: ApiTokenStatus,
    pub now: DateTime<Utc>,
    pub mode: DeliveryMode,
    pub delivery_name: String,
    /// The observed hashed record, when it is this token's.
    pub observed: Option<&'a HashedRecord>,
    pub delivery: &'a DeliveryObs,
    pub fresh_token: &'a Token,
}

impl<'a> Frame<'a> {
    pub fn new(cfg: &'a PlanConfig, input: &Inputs<'a>) -> Result<Self> {
        Ok(Self {
            cfg,
            id: TokenId::of(input.token)?,
            spec: &input.token.spec,
            current: input.token.status.clone().unwrap_or_default(),
            now: input.now,
            mode: delivery_mode(input.token, cfg.delivery_mode),
            delivery_name: delivery_secret_name(input.token),
            observed: input.hashed.record(),
            delivery: input.delivery,
            fresh_token: input.fresh_token,
        })
    }

    fn expired(&self) -> bool {
        self.spec.expires_at.is_some_and(|at| self.now >= at)
    }

    /// The reason of the `Ready` condition as last written.
    fn previous_ready_reason(&self) -> Option<&str> {
        self.current
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .map(|c| c.reason.as_str())
    }
}

/// Where the current token comes from in this pass.
#[derive(Debug, PartialEq)]
pub(super) enum Source<'a> {
    /// The observed record already holds it.
    Recorded(&'a HashedRecord),
    /// The delivery Secret holds it; the record must be (re)built.
    Delivered(&'a Token, DateTime<Utc>),
    /// A new token is issued now.
    Fresh,
    /// No token and none to be had (see the reason).
    None(Gap),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gap {
    /// Revoked before any token existed: nothing to issue.
    RevokedUnissued,
    /// The hashed Secret and the plaintext are both gone.
    Lost,
    /// The spec blocks issuing (see the InvalidSpec message).
    Blocked,
}

/// Stage 1: the source of the current token, and what in the spec blocks it.
#[derive(Debug)]
pub(super) struct Sourced<'a> {
    pub source: Source<'a>,
    /// Why the spec cannot be acted on, if it cannot.
    pub invalid: Option<String>,
    /// The regeneration grace period, when one is set and usable.
    pub grace: Option<TimeDelta>,
}

impl Sourced<'_> {
    pub fn lost(&self) -> bool {
        matches!(self.source, Source::None(Gap::Lost))
    }
}

/// `spec.regenerationGracePeriod`, or why it is unusable.
fn grace_period(spec: &ApiTokenSpec) -> std::result::Result<Option<TimeDelta>, String> {
    let Some(text) = spec.regeneration_grace_period.as_deref() else {
        return Ok(None);
    };
    prodgy_crds::duration::parse(text)
        .ok()
        .and_then(|d| TimeDelta::from_std(d).ok())
        .filter(|d| *d <= MAX_GRACE)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "spec.regenerationGracePeriod {text:?} is not a usable duration (at most 3650d)"
            )
        })
}

pub(super) fn source<'a>(f: &Frame<'a>) -> Sourced<'a> {
    let regen = f.spec.regeneration;
    let grace = grace_period(f.spec);
    let mut invalid = None;
    let source = match f.observed {
        Some(rec) if rec.hashes.first().is_some_and(|h| h.regeneration >= regen) => {
            Source::Recorded(rec)
        }
        // Revoked tokens are never (re)issued; an older record stays as is.
        Some(rec) if f.spec.revoked => Source::Recorded(rec),
        None if f.spec.revoked => Source::None(Gap::RevokedUnissued),
        _ => {
            // The grace period only matters when a previous token exists.
            if let (Err(why), Some(_)) = (&grace, f.observed) {
                invalid = Some(why.clone());
            }
            let blocked = || {
                f.observed
                    .map_or(Source::None(Gap::Blocked), Source::Recorded)
            };
            if let Some((token, issued_at)) = f.delivery.holds(regen) {
                Source::Delivered(token, issued_at.unwrap_or(f.now))
            } else if f.observed.is_none() && f.current.issued_regeneration == Some(regen) {
                Source::None(Gap::Lost)
            } else if invalid.is_some() {
                blocked()
            } else if *f.delivery == DeliveryObs::Foreign {
                invalid = Some(format!(
                    "Secret {}/{} exists and is not managed by the operator; \
                     choose another spec.delivery.secretName",
                    f.id.namespace, f.delivery_name
                ));
                blocked()
            } else {
                Source::Fresh
            }
        }
    };
    Sourced {
        source,
        invalid,
        grace: grace.ok().flatten(),
    }
}

/// Stage 2: the current token as this pass leaves it.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Issued<'a> {
    /// Its hash entry.
    pub entry: Option<HashEntry>,
    /// When it was issued.
    pub issued_at: Option<DateTime<Utc>>,
    /// Its display prefix.
    pub prefix: Option<String>,
    /// When this pass (re)issues: the token and its issue time.
    pub new_token: Option<(&'a Token, DateTime<Utc>)>,
}

impl Issued<'_> {
    pub fn regeneration(&self) -> Option<i64> {
        self.entry.as_ref().map(|e| e.regeneration)
    }
}

pub(super) fn issued<'a>(f: &Frame<'a>, source: &Source<'a>) -> Issued<'a> {
    let regen = f.spec.regeneration;
    let new = |token: &'a Token, at: DateTime<Utc>| Issued {
        entry: Some(HashEntry::current(&token.hash(), regen)),
        issued_at: Some(at),
        prefix: Some(token.display_prefix().to_owned()),
        new_token: Some((token, at)),
    };
    match source {
        Source::Recorded(rec) => recorded(f, rec),
        Source::Delivered(token, at) => new(token, *at),
        Source::Fresh => new(f.fresh_token, f.now),
        Source::None(_) => Issued::default(),
    }
}

/// The current token of an existing record. The status is the best witness
/// of when it was issued and its prefix; after a crash before the status
/// write, the delivery Secret is.
fn recorded<'a>(f: &Frame<'_>, rec: &HashedRecord) -> Issued<'a> {
    let current = &f.current;
    let entry = rec.hashes.first().cloned();
    let r = entry.as_ref().map(|e| e.regeneration);
    let same = r.is_some() && current.issued_regeneration == r;
    let held = r.and_then(|r| f.delivery.holds(r));
    let issued_at = current
        .created_at
        .filter(|_| same)
        .or_else(|| held.and_then(|(_, at)| at))
        .or(current.created_at);
    let prefix = current
        .prefix
        .clone()
        .filter(|_| same)
        .or_else(|| held.map(|(t, _)| t.display_prefix().to_owned()))
        .or_else(|| current.prefix.clone());
    Issued {
        entry,
        issued_at,
        prefix,
        new_token: None,
    }
}

/// Stage 3: the hashed record this token should have (none before issue).
pub(super) fn desired_record(
    f: &Frame<'_>,
    grace: Option<TimeDelta>,
    issued: &Issued<'_>,
) -> Option<HashedRecord> {
    let entry = issued.entry.clone()?;
    let mut hashes = vec![entry];
    hashes.extend(still_accepted(f, grace, issued));
    Some(HashedRecord {
        version: RECORD_VERSION,
        namespace: f.id.namespace.clone(),
        name: f.id.name.clone(),
        uid: f.id.uid.clone(),
        product: f.spec.product.clone(),
        state: RecordState::of(f.spec.revoked, f.spec.active),
        expires_at: f.spec.expires_at,
        scopes: f.spec.scopes.clone(),
        rate_limit: f.spec.rate_limit,
        allowed_source_ranges: f.spec.allowed_source_ranges.clone(),
        hashes,
        usage_limit: None, // the usage-limit stage fills it in
    })
}

/// Hashes still accepted besides the current one: those inside their grace
/// period, plus the token this pass supersedes when a grace period is set.
fn still_accepted(f: &Frame<'_>, grace: Option<TimeDelta>, issued: &Issued<'_>) -> Vec<HashEntry> {
    let Some(rec) = f.observed else {
        return Vec::new();
    };
    let mut previous: Vec<HashEntry> = rec
        .hashes
        .iter()
        .skip(1)
        .filter(|h| h.not_after.is_some_and(|t| t > f.now))
        .cloned()
        .collect();
    if let (Some((_, at)), Some(old)) = (issued.new_token, rec.hashes.first()) {
        // The grace is counted from the new token's issue time, so a retried
        // pass computes the same instant.
        let until = grace
            .filter(|g| *g > TimeDelta::zero())
            .map(|g| later(at, g));
        if let Some(until) = until.filter(|u| *u > f.now) {
            let superseded = HashEntry {
                not_after: Some(until),
                ..old.clone()
            };
            previous.insert(0, superseded);
        }
    }
    previous
}

/// Stage 4: the delivery Secret after this pass, and the reveal window.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Delivery {
    /// Create or replace the delivery Secret (a fresh token).
    pub put: Option<Secret>,
    /// Delete it: the reveal window closed.
    pub delete: Option<String>,
    /// After this pass it exists and holds the current plaintext.
    pub holds_current: bool,
    /// When a RevealOnce Secret is to be deleted.
    pub reveal_deadline: Option<DateTime<Utc>>,
}

pub(super) fn delivery(f: &Frame<'_>, source: &Source<'_>, issued: &Issued<'_>) -> Delivery {
    let put = matches!(source, Source::Fresh).then(|| {
        let regen = f.spec.regeneration;
        delivery_secret(&f.id, &f.delivery_name, f.fresh_token, regen, f.now)
    });
    let current_regen = issued.regeneration();
    let (mut kept, delivered_at) = match (&put, f.delivery) {
        (Some(_), _) => (true, Some(f.now)),
        (None, DeliveryObs::Ours { issued_at, .. }) => (true, *issued_at),
        _ => (false, None),
    };
    let holds = put.is_some() || current_regen.is_some_and(|r| f.delivery.holds(r).is_some());
    let mut delete = None;
    let mut reveal_deadline = None;
    if f.mode == DeliveryMode::RevealOnce && kept {
        let deadline = later(delivered_at.unwrap_or(f.now), f.cfg.reveal_window);
        // Only once the status durably records the issue, so that a lost
        // hashed Secret can still be rebuilt until then.
        let durable = current_regen.is_some() && f.current.issued_regeneration == current_regen;
        if f.now >= deadline && durable && put.is_none() {
            delete = Some(f.delivery_name.clone());
            kept = false;
        } else {
            reveal_deadline = Some(deadline);
        }
    }
    Delivery {
        put,
        delete,
        holds_current: kept && holds,
        reveal_deadline,
    }
}

/// The phase, by the one precedence of states.
pub(super) fn phase(f: &Frame<'_>, record: Option<&HashedRecord>) -> Phase {
    Phase::of(f.spec.revoked, f.expired(), record.is_some(), f.spec.active)
}

/// Stage 5: the `Ready` condition.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Readiness {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

pub(super) fn readiness(
    f: &Frame<'_>,
    phase: Phase,
    sourced: &Sourced<'_>,
    issued: bool,
    delivery: &Delivery,
) -> Readiness {
    let (ready, reason) = match (&sourced.invalid, sourced.lost()) {
        _ if phase == Phase::Revoked => phase.ready(),
        (Some(_), _) => (false, condition::REASON_INVALID_SPEC),
        (None, true) => (false, condition::REASON_HASHED_SECRET_LOST),
        (None, false) => phase.ready(),
    };
    let mut message = match reason {
        condition::REASON_REVOKED => "The token is revoked permanently.".to_owned(),
        condition::REASON_INVALID_SPEC => format!("{}.", sourced.invalid.as_deref().unwrap_or("")),
        condition::REASON_HASHED_SECRET_LOST => format!(
            "The hashed Secret {}/{} is gone and the plaintext is no longer stored, so the \
             token cannot be verified. Increase spec.regeneration to issue a new token.",
            f.cfg.hashed_namespace,
            HashedRecord::secret_name(&f.id.uid)
        ),
        condition::REASON_EXPIRED => format!(
            "The token expired at {}.",
            f.spec.expires_at.map(rfc3339).unwrap_or_default()
        ),
        condition::REASON_INACTIVE => "The token is deactivated (spec.active is false).".to_owned(),
        condition::REASON_ACTIVE => "The token is accepted.".to_owned(),
        // Pending: no record without a gap, so not reached; said plainly.
        _ => "The token is not issued yet.".to_owned(),
    };
    if issued && phase != Phase::Revoked {
        message.push(' ');
        message.push_str(&delivery_note(f, delivery));
    }
    Readiness {
        ready,
        reason,
        message,
    }
}

/// Where the plaintext is, for the `Ready` message.
fn delivery_note(f: &Frame<'_>, delivery: &Delivery) -> String {
    let (namespace, name) = (&f.id.namespace, &f.delivery_name);
    match (f.mode, delivery.holds_current) {
        (DeliveryMode::Secret, true) => format!("The plaintext is in Secret {namespace}/{name}."),
        (DeliveryMode::RevealOnce, true) => format!(
            "The plaintext is in Secret {namespace}/{name} until {} (RevealOnce).",
            delivery.reveal_deadline.map(rfc3339).unwrap_or_default()
        ),
        (DeliveryMode::RevealOnce, false) => {
            "The reveal window has closed; the plaintext is no longer stored anywhere.".to_owned()
        }
        (DeliveryMode::Secret, false) => format!(
            "The delivery Secret {namespace}/{name} is gone; the plaintext is no longer stored."
        ),
    }
}

/// Until when a superseded token is still accepted.
pub(super) fn previous_valid_until(record: Option<&HashedRecord>) -> Option<DateTime<Utc>> {
    record.and_then(|r| r.hashes.iter().skip(1).filter_map(|h| h.not_after).max())
}

/// What the status stage needs from the stages before it.
pub(super) struct Outcome<'p> {
    pub phase: Phase,
    pub sourced: &'p Sourced<'p>,
    pub issued: &'p Issued<'p>,
    pub record: Option<&'p HashedRecord>,
    pub delivery: &'p Delivery,
    pub readiness: Readiness,
    pub folded: &'p Folded,
}

/// Stage 6a: the status this pass leads to.
pub(super) fn desired_status(f: &Frame<'_>, o: Outcome<'_>) -> ApiTokenStatus {
    let current = &f.current;
    let has_record = o.record.is_some();
    let Readiness {
        ready,
        reason,
        message,
    } = o.readiness;
    let conditions = with_ready(
        &current.conditions,
        ready,
        reason,
        message,
        Some(f.id.generation),
        f.now,
    );
    // A lost token keeps its regeneration on record: that is what tells a
    // later pass it was issued once.
    let kept_regeneration = current.issued_regeneration.filter(|_| o.sourced.lost());
    ApiTokenStatus {
        phase: Some(o.phase),
        prefix: o.issued.prefix.clone(),
        created_at: o.issued.issued_at,
        expires_at: f.spec.expires_at,
        usage: o.folded.usage,
        last_used_at: o.folded.last_used_at,
        issued_regeneration: o.issued.regeneration().or(kept_regeneration),
        previous_valid_until: previous_valid_until(o.record),
        hashed_secret_name: has_record.then(|| HashedRecord::secret_name(&f.id.uid)),
        hashed_secret_namespace: has_record.then(|| f.cfg.hashed_namespace.clone()),
        delivery_secret_name: o.delivery.holds_current.then(|| f.delivery_name.clone()),
        usage_ledger: (o.folded.ledger != Default::default()).then(|| o.folded.ledger.clone()),
        unused: current.unused.clone(),
        usage_limit: None, // the usage-limit stage fills it in
        observed_generation: Some(f.id.generation),
        conditions,
    }
}

/// When to look again: expiry, the end of a grace period, the reveal window,
/// the next report retirement.
pub(super) fn wake_at(
    f: &Frame<'_>,
    record: Option<&HashedRecord>,
    delivery: &Delivery,
    folded: &Folded,
) -> Option<DateTime<Utc>> {
    let next_grace_end =
        record.and_then(|r| r.hashes.iter().skip(1).filter_map(|h| h.not_after).min());
    [
        f.spec.expires_at.filter(|at| *at > f.now),
        next_grace_end,
        // Not filtered: a deadline already passed but held back (status not
        // yet durable) asks for an immediate retry.
        delivery.reveal_deadline,
        folded.next_retirement,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Stage 6b: whether to write `desired` now. A write that only moves usage
/// waits for the usage interval; then the wake-up moves to its end.
pub(super) fn status_write(
    f: &Frame<'_>,
    last_usage_write: Option<DateTime<Utc>>,
    desired: ApiTokenStatus,
    wake: Option<DateTime<Utc>>,
) -> (Option<StatusWrite>, Option<DateTime<Utc>>) {
    let current = &f.current;
    if desired == *current {
        return (None, wake);
    }
    let same_but_usage = ApiTokenStatus {
        usage: current.usage,
        last_used_at: current.last_used_at,
        usage_limit: current.usage_limit.clone(),
        ..desired.clone()
    };
    let usage_only = same_but_usage == *current;
    let next_allowed = last_usage_write.map(|last| later(last, f.cfg.usage_status_interval));
    match next_allowed {
        Some(at) if usage_only && f.now < at => (None, Some(wake.map_or(at, |w| w.min(at)))),
        _ => {
            let write = StatusWrite {
                status: desired,
                usage_only,
            };
            (Some(write), wake)
        }
    }
}

/// Stage 7: the events of this pass, in order: issue, spec, phase, delivery.
pub(super) fn events(
    f: &Frame<'_>,
    sourced: &Sourced<'_>,
    issued: &Issued<'_>,
    phase: Phase,
    record: Option<&HashedRecord>,
    delivery: &Delivery,
) -> Vec<PlannedEvent> {
    let mut events: Vec<PlannedEvent> = issue_event(f, sourced, issued, record)
        .into_iter()
        .collect();
    if let Some(why) = &sourced.invalid
        && f.previous_ready_reason() != Some(condition::REASON_INVALID_SPEC)
    {
        events.push(warning(reason::INVALID_SPEC, why.clone()));
    }
    events.extend(phase_event(f, phase));
    if let Some(name) = &delivery.delete {
        events.push(normal(
            reason::REVEAL_WINDOW_CLOSED,
            format!(
                "Deleted the delivery Secret {name}: the reveal window closed; the plaintext is \
                 no longer stored anywhere."
            ),
        ));
    }
    events
}

/// The event of an issue, a regeneration, a rebuilt or a lost record.
fn issue_event(
    f: &Frame<'_>,
    sourced: &Sourced<'_>,
    issued: &Issued<'_>,
    record: Option<&HashedRecord>,
) -> Option<PlannedEvent> {
    let current = &f.current;
    let regen = f.spec.regeneration;
    let shown = issued.prefix.as_deref().unwrap_or("");
    let name = &f.delivery_name;
    let announce = |regenerated: bool| {
        if !regenerated {
            return normal(
                reason::ISSUED,
                format!("Issued token {shown}…; plaintext in Secret {name}."),
            );
        }
        let previous = match previous_valid_until(record) {
            Some(until) => format!("the previous token is accepted until {}", rfc3339(until)),
            None => "the previous token is rejected from now on".to_owned(),
        };
        normal(
            reason::REGENERATED,
            format!(
                "Issued token {shown}… for regeneration {}; {previous}. Plaintext in Secret \
                 {name}.",
                issued.regeneration().unwrap_or(regen)
            ),
        )
    };
    match &sourced.source {
        Source::Delivered(..)
            if f.observed.is_none() && current.issued_regeneration == Some(regen) =>
        {
            Some(warning(
                reason::HASHED_SECRET_LOST,
                format!(
                    "The hashed Secret was missing; rebuilt it from the delivery Secret {name}. \
                     The token ({shown}…) is unchanged."
                ),
            ))
        }
        Source::Fresh | Source::Delivered(..) => Some(announce(
            f.observed.is_some() || current.issued_regeneration.is_some(),
        )),
        // The record was written but the status not (a crash in between):
        // announce the issue now, once.
        Source::Recorded(_) if current.issued_regeneration != issued.regeneration() => {
            Some(announce(current.issued_regeneration.is_some()))
        }
        Source::None(Gap::Lost)
            if f.previous_ready_reason() != Some(condition::REASON_HASHED_SECRET_LOST) =>
        {
            Some(warning(
                reason::HASHED_SECRET_LOST,
                "The hashed Secret is gone and the plaintext is no longer stored; the token \
                 cannot be verified. Increase spec.regeneration to issue a new token."
                    .to_owned(),
            ))
        }
        _ => None,
    }
}

/// The event of a phase change the owner should hear about.
fn phase_event(f: &Frame<'_>, phase: Phase) -> Option<PlannedEvent> {
    let prev = f.current.phase;
    let (reason, note) = match phase {
        Phase::Revoked if prev != Some(Phase::Revoked) => (
            reason::REVOKED,
            "The token is revoked permanently.".to_owned(),
        ),
        Phase::Expired if matches!(prev, Some(Phase::Active | Phase::Inactive)) => (
            reason::EXPIRED,
            format!(
                "The token expired at {}.",
                f.spec.expires_at.map(rfc3339).unwrap_or_default()
            ),
        ),
        Phase::Inactive if prev == Some(Phase::Active) => {
            (reason::DEACTIVATED, "The token is deactivated.".to_owned())
        }
        Phase::Active if prev == Some(Phase::Inactive) => {
            (reason::ACTIVATED, "The token is active again.".to_owned())
        }
        _ => return None,
    };
    Some(normal(reason, note))
}

fn normal(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning: false,
        reason,
        note,
    }
}

fn warning(reason: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning: true,
        reason,
        note,
    }
}

#[cfg(test)]
mod tests;
