//! The pure planner: given an ApiToken, the Secrets observed for it, the usage
//! reports and the instant, decide every write, the status, the events and
//! when to look again. No I/O: the controller is a thin shell that observes,
//! calls [`plan`] and executes the [`Plan`] in its documented order
//! (delivery Secret, hashed Secret, status, then any delivery deletion).
//!
//! Rules that keep a token from ever being lost or silently replaced:
//! * the hashed record of the current `spec.regeneration` existing means
//!   "issued": nothing is generated again;
//! * before that record exists, the delivery Secret holding a token for the
//!   current regeneration is the token (a crash between the two writes, or a
//!   lost hashed Secret, is repaired from it);
//! * a hashed Secret lost after the plaintext is gone is reported
//!   (`HashedSecretLost`), never papered over with a new credential.

use std::{collections::BTreeMap, fmt, sync::Arc};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time},
    jiff::Timestamp,
};
use prodgy_crds::{
    ApiToken, ApiTokenStatus, DeliveryMode, HashedRecord, Phase, Token, UsageReport,
    apitoken::condition,
    delivery,
    hashed::{MANAGED_BY, MANAGED_BY_LABEL, TOKEN_NAME_LABEL, TOKEN_UID_LABEL, label_value},
};

use crate::{Error, Result, usage};

mod stages;

use stages::lifecycle_notices as notices;
use stages::usage_limit;

/// The finalizer that removes the hashed Secret (another namespace, so an
/// owner reference cannot).
pub const FINALIZER: &str = "prodgy.io/cleanup";
/// The single field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "prodgy-operator";

/// Event reasons (CamelCase). Notes carry at most the 8-character prefix.
pub mod reason {
    /// A token was issued for the first time.
    pub const ISSUED: &str = "Issued";
    /// A new token replaced the previous one.
    pub const REGENERATED: &str = "Regenerated";
    /// The token was deactivated.
    pub const DEACTIVATED: &str = "Deactivated";
    /// The token was activated again.
    pub const ACTIVATED: &str = "Activated";
    /// The token was revoked for good.
    pub const REVOKED: &str = "Revoked";
    /// The token passed `expiresAt`.
    pub const EXPIRED: &str = "Expired";
    /// A RevealOnce delivery Secret was removed.
    pub const REVEAL_WINDOW_CLOSED: &str = "RevealWindowClosed";
    /// The hashed Secret vanished (rebuilt, or waiting for a regeneration).
    pub const HASHED_SECRET_LOST: &str = "HashedSecretLost";
    /// The spec cannot be acted on.
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// Operator-wide settings the planner needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Namespace of hashed Secrets.
    pub hashed_namespace: String,
    /// Delivery mode for tokens that do not choose one.
    pub delivery_mode: DeliveryMode,
    /// How long a RevealOnce delivery Secret lives.
    pub reveal_window: TimeDelta,
    /// A usage report not updated for this long is retired.
    pub usage_report_retention: TimeDelta,
    /// Least time between two status writes that only change usage.
    pub usage_status_interval: TimeDelta,
    /// Switch a token off after this long unused, unless its spec says
    /// otherwise (None: never).
    pub deactivate_after_unused: Option<TimeDelta>,
    /// Warn this long before `expiresAt`, once per lead (e.g. 7d and 1d).
    pub expiry_notices: Vec<TimeDelta>,
}

/// The identity of an ApiToken, as the API server always sets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenId {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// `metadata.generation` (0 when the server did not set it).
    pub generation: i64,
}

impl TokenId {
    /// Reads the identity of an ApiToken, refusing one without name,
    /// namespace or UID.
    pub fn of(token: &ApiToken) -> Result<Self> {
        let missing = |field| Error::MissingField {
            kind: "ApiToken",
            field,
        };
        Ok(Self {
            namespace: token
                .metadata
                .namespace
                .clone()
                .ok_or_else(|| missing("metadata.namespace"))?,
            name: token
                .metadata
                .name
                .clone()
                .ok_or_else(|| missing("metadata.name"))?,
            uid: token
                .metadata
                .uid
                .clone()
                .ok_or_else(|| missing("metadata.uid"))?,
            generation: token.metadata.generation.unwrap_or(0),
        })
    }
}

/// What was observed of the hashed Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashedObs {
    /// No such Secret.
    Missing,
    /// The Secret exists but holds no usable record of this token.
    Invalid(String),
    /// The record in the Secret.
    Present(HashedRecord),
}

impl HashedObs {
    /// Classifies the hashed Secret of the token with `uid`.
    pub fn observe(secret: Option<&Secret>, uid: &str) -> Self {
        let Some(secret) = secret else {
            return Self::Missing;
        };
        match HashedRecord::from_secret(secret) {
            Ok(r) if r.uid == uid => Self::Present(r),
            Ok(_) => Self::Invalid("record belongs to another ApiToken UID".into()),
            Err(e) => Self::Invalid(e.to_string()),
        }
    }

    fn record(&self) -> Option<&HashedRecord> {
        match self {
            Self::Present(r) => Some(r),
            _ => None,
        }
    }
}

/// What was observed of the delivery Secret.
#[derive(Clone, PartialEq, Eq)]
pub enum DeliveryObs {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that the operator does not manage: never touched.
    Foreign,
    /// Ours, but made for an earlier ApiToken of the same name.
    Stale,
    /// Ours, for this ApiToken.
    Ours {
        /// The regeneration the plaintext belongs to.
        regeneration: Option<i64>,
        /// When it was issued.
        issued_at: Option<DateTime<Utc>>,
        /// The plaintext, if present and well-formed.
        token: Option<Token>,
    },
}

impl fmt::Debug for DeliveryObs {
    // The derived Debug would be safe (Token redacts itself); spelled out so
    // it stays safe if the fields change.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("Missing"),
            Self::Foreign => f.write_str("Foreign"),
            Self::Stale => f.write_str("Stale"),
            Self::Ours {
                regeneration,
                issued_at,
                token,
            } => f
                .debug_struct("Ours")
                .field("regeneration", regeneration)
                .field("issued_at", issued_at)
                .field("prefix", &token.as_ref().map(Token::display_prefix))
                .finish(),
        }
    }
}

impl DeliveryObs {
    /// Classifies the delivery Secret of the token with `uid`.
    pub fn observe(secret: Option<&Secret>, uid: &str) -> Self {
        let Some(secret) = secret else {
            return Self::Missing;
        };
        let labels = secret.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if label(MANAGED_BY_LABEL) != Some(MANAGED_BY) {
            return Self::Foreign;
        }
        if label(TOKEN_UID_LABEL) != Some(uid) {
            return Self::Stale;
        }
        let annotations = secret.metadata.annotations.as_ref();
        let annotation = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get(delivery::TOKEN_KEY))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .and_then(|s| Token::parse(s).ok());
        Self::Ours {
            regeneration: annotation(delivery::REGENERATION_ANNOTATION)
                .and_then(|v| v.parse().ok()),
            issued_at: annotation(delivery::ISSUED_AT_ANNOTATION)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|d| d.with_timezone(&Utc)),
            token,
        }
    }

    /// The plaintext and issue time if this Secret holds the token of
    /// `regeneration`.
    fn holds(&self, regeneration: i64) -> Option<(&Token, Option<DateTime<Utc>>)> {
        match self {
            Self::Ours {
                regeneration: Some(r),
                issued_at,
                token: Some(t),
            } if *r == regeneration => Some((t, *issued_at)),
            _ => None,
        }
    }
}

/// Everything the planner looks at.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The ApiToken as last read.
    pub token: &'a ApiToken,
    /// Its hashed Secret.
    pub hashed: &'a HashedObs,
    /// Its delivery Secret.
    pub delivery: &'a DeliveryObs,
    /// Every usage report in the hashed-Secret namespace.
    pub reports: &'a [Arc<UsageReport>],
    /// When this operator process last wrote a usage change for the token.
    pub last_usage_write: Option<DateTime<Utc>>,
    /// The instant of the decision.
    pub now: DateTime<Utc>,
    /// A freshly generated token, used only if this plan issues one.
    pub fresh_token: &'a Token,
}

/// A status write.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusWrite {
    /// The complete new status.
    pub status: ApiTokenStatus,
    /// Only usage numbers changed: the shell may delay it under load.
    pub usage_only: bool,
}

/// A Kubernetes Event to publish after the writes succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason (see [`reason`]).
    pub reason: &'static str,
    /// Human note; never a plaintext token.
    pub note: String,
}

/// The decisions of one pass, executed in field order.
#[derive(Clone, PartialEq)]
pub struct Plan {
    /// 0. Switch the token off for being unused: patch `spec.active: false`
    ///    and this value of the unused mark annotation, in one write.
    pub switch_off: Option<String>,
    /// 1. Create or replace the delivery Secret (holds the new plaintext).
    pub put_delivery: Option<Secret>,
    /// 2. Create or replace the hashed Secret with this record.
    pub put_hashed: Option<HashedRecord>,
    /// 3. Patch the status.
    pub status: Option<StatusWrite>,
    /// 4. Delete the delivery Secret of this name (reveal window closed).
    pub delete_delivery: Option<String>,
    /// Events, published after the writes.
    pub events: Vec<PlannedEvent>,
    /// Reconcile again at this instant (expiry, grace end, reveal window,
    /// usage debounce, report retirement).
    pub requeue_at: Option<DateTime<Utc>>,
    /// The decision rests on a Secret being absent or on writing one: the
    /// shell must re-read everything uncached and plan again before acting.
    pub needs_fresh_read: bool,
    /// The phase this plan leads to.
    pub phase: Phase,
    /// Usage reports folded into the ledger by this plan.
    pub newly_folded: Vec<String>,
}

impl fmt::Debug for Plan {
    // Never print the delivery Secret's data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("switch_off", &self.switch_off)
            .field(
                "put_delivery",
                &self.put_delivery.as_ref().map(|s| s.metadata.name.clone()),
            )
            .field("put_hashed", &self.put_hashed)
            .field("status", &self.status)
            .field("delete_delivery", &self.delete_delivery)
            .field("events", &self.events)
            .field("requeue_at", &self.requeue_at)
            .field("needs_fresh_read", &self.needs_fresh_read)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl Plan {
    /// Whether the plan writes anything to the API server.
    pub fn has_writes(&self) -> bool {
        self.switch_off.is_some()
            || self.put_delivery.is_some()
            || self.put_hashed.is_some()
            || self.status.is_some()
            || self.delete_delivery.is_some()
    }
}

/// Name of the delivery Secret of a token.
pub fn delivery_secret_name(token: &ApiToken) -> String {
    token
        .spec
        .delivery
        .as_ref()
        .and_then(|d| d.secret_name.clone())
        .unwrap_or_else(|| format!("{}-token", token.metadata.name.as_deref().unwrap_or("")))
}

/// The delivery mode in force for a token.
pub fn delivery_mode(token: &ApiToken, default: DeliveryMode) -> DeliveryMode {
    token
        .spec
        .delivery
        .as_ref()
        .and_then(|d| d.mode)
        .unwrap_or(default)
}

/// Decides one pass. Pure: the same inputs always give the same plan. Each
/// stage is a function of [`stages`] taking the results of the ones before.
pub fn plan(cfg: &PlanConfig, input: &Inputs<'_>) -> Result<Plan> {
    let unused = notices::Unused::of(cfg, input);
    let switched = unused.applied(input.token);
    let input = &Inputs {
        token: switched.as_ref().unwrap_or(input.token),
        ..*input
    };
    let f = stages::Frame::new(cfg, input)?;
    let sourced = stages::source(&f);
    let issued = stages::issued(&f, &sourced.source);
    let record = stages::desired_record(&f, sourced.grace, &issued);
    let delivery = stages::delivery(&f, &sourced.source, &issued);
    let phase = stages::phase(&f, record.as_ref());
    let readiness = stages::readiness(&f, phase, &sourced, record.is_some(), &delivery);
    let ledger = f.current.usage_ledger.clone().unwrap_or_default();
    let mut folded = usage::fold(
        &f.id.uid,
        &ledger,
        input.reports,
        f.now,
        cfg.usage_report_retention,
    );
    let cap = usage_limit::capped(input.token, &ledger, &folded, input.reports, f.now);
    folded.ledger.window = cap.as_ref().and_then(|c| c.retired);
    let events = stages::events(&f, &sourced, &issued, phase, record.as_ref(), &delivery);
    let switch_off = unused.mark(f.now);
    let notices = notices::Notices::new(&f, phase, unused);
    let mut events = notices.events(&f, events);
    let mut desired = stages::desired_status(
        &f,
        stages::Outcome {
            phase,
            sourced: &sourced,
            issued: &issued,
            record: record.as_ref(),
            delivery: &delivery,
            readiness,
            folded: &folded,
        },
    );
    desired.usage_limit = cap.as_ref().map(usage_limit::Capped::status);
    let desired = notices.status(&f, desired);
    let (desired, leak_event) = stages::leaked::mark(input.token, desired, f.id.generation);
    events.extend(leak_event);
    let wake = notices.wake(&f, stages::wake_at(&f, record.as_ref(), &delivery, &folded));
    let (status, requeue_at) = stages::status_write(&f, input.last_usage_write, desired, wake);
    let requeue_at = usage_limit::wake(requeue_at, cap.as_ref());
    let record = usage_limit::settle_record(record, f.observed, cap.as_ref(), status.is_some());
    let put_hashed = record.as_ref().filter(|d| f.observed != Some(*d)).cloned();
    let needs_fresh_read = delivery.put.is_some()
        || put_hashed.is_some()
        || delivery.delete.is_some()
        || switch_off.is_some()
        || (record.is_none() && !f.spec.revoked);
    Ok(Plan {
        switch_off,
        put_delivery: delivery.put,
        put_hashed,
        status,
        delete_delivery: delivery.delete,
        events,
        requeue_at,
        needs_fresh_read,
        phase,
        newly_folded: folded.newly_folded,
    })
}

/// `at + d`, saturating at the end of time instead of panicking: a huge
/// duration in a spec is bad input, not a reason to crash.
pub fn later(at: DateTime<Utc>, d: TimeDelta) -> DateTime<Utc> {
    at.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `conditions` with the `Ready` condition set (first in the list). The
/// transition time moves only when True/False flips, so re-planning the same
/// state changes nothing.
pub fn with_ready(
    conditions: &[Condition],
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let status = if ready { "True" } else { "False" };
    let since = conditions
        .iter()
        .find(|c| c.type_ == condition::READY && c.status == status)
        .map_or_else(|| to_time(now), |c| c.last_transition_time.clone());
    let mut out = Vec::with_capacity(conditions.len().max(1));
    out.push(Condition {
        type_: condition::READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    });
    out.extend(
        conditions
            .iter()
            .filter(|c| c.type_ != condition::READY)
            .cloned(),
    );
    out
}

/// RFC 3339 in UTC with whole seconds, for messages.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A Kubernetes `Time` (whole seconds, as the API server stores it).
pub fn to_time(at: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(at.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The delivery Secret for a freshly issued token.
pub fn delivery_secret(
    id: &TokenId,
    name: &str,
    token: &Token,
    regeneration: i64,
    issued_at: DateTime<Utc>,
) -> Secret {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (TOKEN_NAME_LABEL.to_owned(), label_value(&id.name)),
        (TOKEN_UID_LABEL.to_owned(), id.uid.clone()),
    ]);
    let annotations = BTreeMap::from([
        (
            delivery::REGENERATION_ANNOTATION.to_owned(),
            regeneration.to_string(),
        ),
        (
            delivery::ISSUED_AT_ANNOTATION.to_owned(),
            issued_at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(id.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: format!("{}/v1", prodgy_crds::GROUP),
                kind: "ApiToken".to_owned(),
                name: id.name.clone(),
                uid: id.uid.clone(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                delivery::TOKEN_KEY.to_owned(),
                ByteString(token.expose().as_bytes().to_vec()),
            ),
            (
                delivery::PREFIX_KEY.to_owned(),
                ByteString(token.display_prefix().as_bytes().to_vec()),
            ),
        ])),
        immutable: None,
        string_data: None,
    }
}

#[cfg(test)]
mod tests;
