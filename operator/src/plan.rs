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
    ApiToken, ApiTokenStatus, DeliveryMode, HashEntry, HashedRecord, Phase, RecordState, Token,
    UsageReport,
    apitoken::condition,
    hashed::{
        MANAGED_BY, MANAGED_BY_LABEL, RECORD_VERSION, TOKEN_NAME_LABEL, TOKEN_UID_LABEL,
        label_value,
    },
};

use crate::{Error, Result, usage};

/// Data key of the plaintext in the delivery Secret.
pub const DELIVERY_TOKEN_KEY: &str = "token";
/// Data key of the display prefix in the delivery Secret.
pub const DELIVERY_PREFIX_KEY: &str = "prefix";
/// Annotation: the `spec.regeneration` the delivered token belongs to.
pub const REGENERATION_ANNOTATION: &str = "prodgy.io/regeneration";
/// Annotation: when the delivered token was issued (RFC 3339).
pub const ISSUED_AT_ANNOTATION: &str = "prodgy.io/issued-at";
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

/// Longest accepted grace period: beyond it a spec is surely a typo.
const MAX_GRACE: TimeDelta = TimeDelta::days(3650);

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
            .and_then(|d| d.get(DELIVERY_TOKEN_KEY))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .and_then(|s| Token::parse(s).ok());
        Self::Ours {
            regeneration: annotation(REGENERATION_ANNOTATION).and_then(|v| v.parse().ok()),
            issued_at: annotation(ISSUED_AT_ANNOTATION)
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
        self.put_delivery.is_some()
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

/// Where the current token comes from in this pass.
enum Source<'a> {
    /// The observed record already holds it.
    Recorded(&'a HashedRecord),
    /// The delivery Secret holds it; the record must be (re)built.
    Delivered(&'a Token, DateTime<Utc>),
    /// A new token is issued now.
    Fresh,
    /// No token and none to be had (see the reason).
    None(Gap),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Gap {
    /// Revoked before any token existed: nothing to issue.
    RevokedUnissued,
    /// The hashed Secret and the plaintext are both gone.
    Lost,
    /// The spec blocks issuing (see the InvalidSpec message).
    Blocked,
}

/// The current hash entry, its issue time, its display prefix and, when this
/// pass (re)issues, the token and its issue time.
type Current<'a> = (
    Option<HashEntry>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<(&'a Token, DateTime<Utc>)>,
);

/// Decides one pass. Pure: the same inputs always give the same plan.
pub fn plan(cfg: &PlanConfig, input: &Inputs<'_>) -> Result<Plan> {
    let id = TokenId::of(input.token)?;
    let spec = &input.token.spec;
    let current = input.token.status.clone().unwrap_or_default();
    let now = input.now;
    let regen = spec.regeneration;
    let mode = delivery_mode(input.token, cfg.delivery_mode);
    let delivery_name = delivery_secret_name(input.token);
    let observed = input.hashed.record();
    let delivered = input.delivery.holds(regen);

    let mut invalid: Option<String> = None;
    let grace = match spec.regeneration_grace_period.as_deref() {
        None => Ok(None),
        Some(text) => prodgy_crds::duration::parse(text)
            .ok()
            .and_then(|d| TimeDelta::from_std(d).ok())
            .filter(|d| *d <= MAX_GRACE)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "spec.regenerationGracePeriod {text:?} is not a usable duration \
                     (at most 3650d)"
                )
            }),
    };

    let source = match observed {
        Some(rec) if rec.hashes.first().is_some_and(|h| h.regeneration >= regen) => {
            Source::Recorded(rec)
        }
        // Revoked tokens are never (re)issued; an older record stays as is.
        Some(rec) if spec.revoked => Source::Recorded(rec),
        None if spec.revoked => Source::None(Gap::RevokedUnissued),
        _ => {
            // The grace period only matters when a previous token exists.
            if let (Err(why), Some(_)) = (&grace, observed) {
                invalid = Some(why.clone());
            }
            if let Some((token, issued_at)) = delivered {
                Source::Delivered(token, issued_at.unwrap_or(now))
            } else if observed.is_none() && current.issued_regeneration == Some(regen) {
                Source::None(Gap::Lost)
            } else if invalid.is_some() {
                observed.map_or(Source::None(Gap::Blocked), Source::Recorded)
            } else if *input.delivery == DeliveryObs::Foreign {
                invalid = Some(format!(
                    "Secret {}/{delivery_name} exists and is not managed by the operator; \
                     choose another spec.delivery.secretName",
                    id.namespace
                ));
                observed.map_or(Source::None(Gap::Blocked), Source::Recorded)
            } else {
                Source::Fresh
            }
        }
    };
    let grace = grace.ok().flatten();

    // The current hash entry, the token's issue time and its display prefix.
    let (current_entry, issued_at, prefix, new_token): Current<'_> = match &source {
        Source::Recorded(rec) => {
            let entry = rec.hashes.first().cloned();
            let r = entry.as_ref().map(|e| e.regeneration);
            let same = current.issued_regeneration == r && r.is_some();
            let held = r.and_then(|r| input.delivery.holds(r));
            // The status is the best witness of the current token; after a
            // crash before the status write, the delivery Secret is.
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
            (entry, issued_at, prefix, None)
        }
        Source::Delivered(token, at) => (
            Some(entry_for(token, regen)),
            Some(*at),
            Some(token.display_prefix().to_owned()),
            Some((*token, *at)),
        ),
        Source::Fresh => (
            Some(entry_for(input.fresh_token, regen)),
            Some(now),
            Some(input.fresh_token.display_prefix().to_owned()),
            Some((input.fresh_token, now)),
        ),
        Source::None(_) => (None, None, None, None),
    };

    // Hashes still accepted besides the current one.
    let mut previous: Vec<HashEntry> = observed
        .map(|rec| {
            rec.hashes
                .iter()
                .skip(1)
                .filter(|h| h.not_after.is_some_and(|t| t > now))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let (Some((_, at)), Some(old)) = (new_token, observed.and_then(|r| r.hashes.first())) {
        // A regeneration: the superseded token lives on through the grace
        // period, counted from the new token's issue time (so a retried
        // pass computes the same instant).
        let until = grace
            .filter(|g| *g > TimeDelta::zero())
            .map(|g| later(at, g));
        if let Some(until) = until.filter(|u| *u > now) {
            previous.insert(
                0,
                HashEntry {
                    not_after: Some(until),
                    ..old.clone()
                },
            );
        }
    }

    let desired_record = current_entry.as_ref().map(|entry| {
        let mut hashes = Vec::with_capacity(1 + previous.len());
        hashes.push(entry.clone());
        hashes.extend(previous.iter().cloned());
        HashedRecord {
            version: RECORD_VERSION,
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            uid: id.uid.clone(),
            product: spec.product.clone(),
            state: if spec.revoked {
                RecordState::Revoked
            } else if spec.active {
                RecordState::Active
            } else {
                RecordState::Inactive
            },
            expires_at: spec.expires_at,
            scopes: spec.scopes.clone(),
            rate_limit: spec.rate_limit,
            hashes,
        }
    });
    let put_hashed = desired_record
        .as_ref()
        .filter(|d| observed != Some(*d))
        .cloned();

    let put_delivery = match &source {
        Source::Fresh => Some(delivery_secret(
            &id,
            &delivery_name,
            input.fresh_token,
            regen,
            now,
        )),
        _ => None,
    };

    // The delivery Secret after this pass, and the reveal window.
    let current_regen = current_entry.as_ref().map(|e| e.regeneration);
    let status_durable = current_regen.is_some() && current.issued_regeneration == current_regen;
    let (mut delivery_kept, delivery_issued_at) = match (&put_delivery, input.delivery) {
        (Some(_), _) => (true, Some(now)),
        (None, DeliveryObs::Ours { issued_at, .. }) => (true, *issued_at),
        _ => (false, None),
    };
    let holds_current =
        put_delivery.is_some() || current_regen.is_some_and(|r| input.delivery.holds(r).is_some());
    let mut delete_delivery = None;
    let mut reveal_deadline = None;
    if mode == DeliveryMode::RevealOnce && delivery_kept {
        let deadline = later(delivery_issued_at.unwrap_or(now), cfg.reveal_window);
        // Only once the status durably records the issue, so that a lost
        // hashed Secret can still be rebuilt until then.
        if now >= deadline && status_durable && put_delivery.is_none() {
            delete_delivery = Some(delivery_name.clone());
            delivery_kept = false;
        } else {
            reveal_deadline = Some(deadline);
        }
    }

    // Phase, by precedence.
    let expired = spec.expires_at.is_some_and(|at| now >= at);
    let phase = if spec.revoked {
        Phase::Revoked
    } else if expired {
        Phase::Expired
    } else if desired_record.is_none() {
        Phase::Pending
    } else if !spec.active {
        Phase::Inactive
    } else {
        Phase::Active
    };
    let lost = matches!(source, Source::None(Gap::Lost));

    // Usage.
    let folded = usage::fold(
        &id.uid,
        &current.usage_ledger.clone().unwrap_or_default(),
        input.reports,
        now,
        cfg.usage_report_retention,
    );

    // The Ready condition.
    let (ready, reason, mut message) = if phase == Phase::Revoked {
        (
            false,
            condition::REASON_REVOKED,
            "The token is revoked permanently.".to_owned(),
        )
    } else if let Some(why) = &invalid {
        (false, condition::REASON_INVALID_SPEC, format!("{why}."))
    } else if lost {
        (
            false,
            condition::REASON_HASHED_SECRET_LOST,
            format!(
                "The hashed Secret {}/{} is gone and the plaintext is no longer stored, so the \
                 token cannot be verified. Increase spec.regeneration to issue a new token.",
                cfg.hashed_namespace,
                HashedRecord::secret_name(&id.uid)
            ),
        )
    } else {
        match phase {
            Phase::Expired => (
                false,
                condition::REASON_EXPIRED,
                format!(
                    "The token expired at {}.",
                    spec.expires_at.map(rfc3339).unwrap_or_default()
                ),
            ),
            Phase::Inactive => (
                false,
                condition::REASON_INACTIVE,
                "The token is deactivated (spec.active is false).".to_owned(),
            ),
            Phase::Active => (
                true,
                condition::REASON_ACTIVE,
                "The token is accepted.".to_owned(),
            ),
            // Unreachable by construction (no record without a gap); say so plainly.
            Phase::Pending | Phase::Revoked => (
                false,
                condition::REASON_RECONCILE_ERROR,
                "The token is not issued yet.".to_owned(),
            ),
        }
    };
    if desired_record.is_some() && phase != Phase::Revoked {
        message.push(' ');
        message.push_str(&delivery_note(
            mode,
            &id.namespace,
            &delivery_name,
            delivery_kept && holds_current,
            reveal_deadline,
        ));
    }
    let prev_ready = current
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY);
    let conditions = with_ready(
        &current.conditions,
        ready,
        reason,
        message,
        Some(id.generation),
        now,
    );

    let previous_valid_until = desired_record
        .as_ref()
        .and_then(|r| r.hashes.iter().skip(1).filter_map(|h| h.not_after).max());
    let desired_status = ApiTokenStatus {
        phase: Some(phase),
        prefix: prefix.clone(),
        created_at: issued_at,
        expires_at: spec.expires_at,
        usage: folded.usage,
        last_used_at: folded.last_used_at,
        issued_regeneration: current_regen.or(if lost {
            current.issued_regeneration
        } else {
            None
        }),
        previous_valid_until,
        hashed_secret_name: desired_record
            .as_ref()
            .map(|_| HashedRecord::secret_name(&id.uid)),
        hashed_secret_namespace: desired_record
            .as_ref()
            .map(|_| cfg.hashed_namespace.clone()),
        delivery_secret_name: (delivery_kept && holds_current).then(|| delivery_name.clone()),
        usage_ledger: (folded.ledger != Default::default()).then(|| folded.ledger.clone()),
        observed_generation: Some(id.generation),
        conditions,
    };

    let next_grace_end = desired_record
        .as_ref()
        .and_then(|r| r.hashes.iter().skip(1).filter_map(|h| h.not_after).min());
    let mut requeue_at = [
        spec.expires_at.filter(|at| *at > now),
        next_grace_end,
        // Not filtered: a deadline already passed but held back (status not
        // yet durable) asks for an immediate retry.
        reveal_deadline,
        folded.next_retirement,
    ]
    .into_iter()
    .flatten()
    .min();

    let status = if desired_status == current {
        None
    } else {
        let mut same_but_usage = desired_status.clone();
        same_but_usage.usage = current.usage;
        same_but_usage.last_used_at = current.last_used_at;
        let usage_only = same_but_usage == current;
        let next_allowed = input
            .last_usage_write
            .map(|last| later(last, cfg.usage_status_interval));
        match next_allowed {
            Some(at) if usage_only && now < at => {
                requeue_at = Some(requeue_at.map_or(at, |r| r.min(at)));
                None
            }
            _ => Some(StatusWrite {
                status: desired_status,
                usage_only,
            }),
        }
    };

    // Events.
    let mut events = Vec::new();
    let shown = prefix.as_deref().unwrap_or("");
    let previous_note = match previous_valid_until {
        Some(until) => format!("the previous token is accepted until {}", rfc3339(until)),
        None => "the previous token is rejected from now on".to_owned(),
    };
    let issued_event = |regenerated: bool| {
        if regenerated {
            normal(
                reason::REGENERATED,
                format!(
                    "Issued token {shown}… for regeneration {}; {previous_note}. \
                     Plaintext in Secret {delivery_name}.",
                    current_regen.unwrap_or(regen)
                ),
            )
        } else {
            normal(
                reason::ISSUED,
                format!("Issued token {shown}…; plaintext in Secret {delivery_name}."),
            )
        }
    };
    match &source {
        Source::Fresh | Source::Delivered(..) => {
            let restored = matches!(source, Source::Delivered(..))
                && observed.is_none()
                && current.issued_regeneration == Some(regen);
            if restored {
                events.push(warning(
                    reason::HASHED_SECRET_LOST,
                    format!(
                        "The hashed Secret was missing; rebuilt it from the delivery Secret \
                         {delivery_name}. The token ({shown}…) is unchanged."
                    ),
                ));
            } else {
                events.push(issued_event(
                    observed.is_some() || current.issued_regeneration.is_some(),
                ));
            }
        }
        // The record was written but the status not (a crash in between):
        // announce the issue now, once.
        Source::Recorded(_) if current.issued_regeneration != current_regen => {
            events.push(issued_event(current.issued_regeneration.is_some()));
        }
        Source::None(Gap::Lost)
            if prev_ready.map(|c| c.reason.as_str())
                != Some(condition::REASON_HASHED_SECRET_LOST) =>
        {
            events.push(warning(
                reason::HASHED_SECRET_LOST,
                "The hashed Secret is gone and the plaintext is no longer stored; the token \
                 cannot be verified. Increase spec.regeneration to issue a new token."
                    .to_owned(),
            ));
        }
        _ => {}
    }
    if let Some(why) = invalid
        && prev_ready.map(|c| c.reason.as_str()) != Some(condition::REASON_INVALID_SPEC)
    {
        events.push(warning(reason::INVALID_SPEC, why));
    }
    let prev_phase = current.phase;
    match phase {
        Phase::Revoked if prev_phase != Some(Phase::Revoked) => {
            events.push(normal(
                reason::REVOKED,
                "The token is revoked permanently.".into(),
            ));
        }
        Phase::Expired if matches!(prev_phase, Some(Phase::Active | Phase::Inactive)) => {
            events.push(normal(
                reason::EXPIRED,
                format!(
                    "The token expired at {}.",
                    spec.expires_at.map(rfc3339).unwrap_or_default()
                ),
            ));
        }
        Phase::Inactive if prev_phase == Some(Phase::Active) => {
            events.push(normal(
                reason::DEACTIVATED,
                "The token is deactivated.".into(),
            ));
        }
        Phase::Active if prev_phase == Some(Phase::Inactive) => {
            events.push(normal(
                reason::ACTIVATED,
                "The token is active again.".into(),
            ));
        }
        _ => {}
    }
    if let Some(name) = &delete_delivery {
        events.push(normal(
            reason::REVEAL_WINDOW_CLOSED,
            format!(
                "Deleted the delivery Secret {name}: the reveal window closed; the plaintext is \
                 no longer stored anywhere."
            ),
        ));
    }

    let needs_fresh_read = put_delivery.is_some()
        || put_hashed.is_some()
        || delete_delivery.is_some()
        || (desired_record.is_none() && !spec.revoked);

    Ok(Plan {
        put_delivery,
        put_hashed,
        status,
        delete_delivery,
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

fn entry_for(token: &Token, regeneration: i64) -> HashEntry {
    HashEntry::current(&token.hash(), regeneration)
}

fn delivery_note(
    mode: DeliveryMode,
    namespace: &str,
    name: &str,
    kept: bool,
    reveal_deadline: Option<DateTime<Utc>>,
) -> String {
    match (mode, kept) {
        (DeliveryMode::Secret, true) => format!("The plaintext is in Secret {namespace}/{name}."),
        (DeliveryMode::RevealOnce, true) => format!(
            "The plaintext is in Secret {namespace}/{name} until {} (RevealOnce).",
            reveal_deadline.map(rfc3339).unwrap_or_default()
        ),
        (DeliveryMode::RevealOnce, false) => {
            "The reveal window has closed; the plaintext is no longer stored anywhere.".to_owned()
        }
        (DeliveryMode::Secret, false) => format!(
            "The delivery Secret {namespace}/{name} is gone; the plaintext is no longer stored."
        ),
    }
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
        (REGENERATION_ANNOTATION.to_owned(), regeneration.to_string()),
        (
            ISSUED_AT_ANNOTATION.to_owned(),
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
                DELIVERY_TOKEN_KEY.to_owned(),
                ByteString(token.expose().as_bytes().to_vec()),
            ),
            (
                DELIVERY_PREFIX_KEY.to_owned(),
                ByteString(token.display_prefix().as_bytes().to_vec()),
            ),
        ])),
        immutable: None,
        string_data: None,
    }
}

#[cfg(test)]
mod tests;
