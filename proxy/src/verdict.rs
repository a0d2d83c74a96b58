//! The verdict on one request: a function of the request head, the index
//! snapshot and the clock, and of nothing else but the token's rate bucket,
//! which an accepted request draws from. [`crate::proxy`] is the wiring
//! around it (reading heads, answering, forwarding); a table of cases tests
//! the verdict in-process, the HTTP tests the wiring.

use std::sync::Arc;

use http::{HeaderValue, header};
use pingora::http::RequestHeader;
use prodgy_crds::{Scope, TokenHash, scope::Route};

use crate::auth::{self, Reason};
use crate::cells::{Cells, TokenCell};
use crate::client_addr::Peer;
use crate::config::HeadLimits;
use crate::index::{Index, Record};
use crate::quota;

/// A refusal with what its response needs.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: Reason,
    /// For a scope refusal: the scope needed (`None`: unrestricted only).
    pub scope: Option<Option<Scope>>,
    /// For a rate-limit or renewing usage-cap refusal: seconds to wait.
    pub retry_after: Option<u64>,
    /// The token's cell, when the token is known.
    pub cell: Option<Arc<TokenCell>>,
}

impl From<Reason> for Refused {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            scope: None,
            retry_after: None,
            cell: None,
        }
    }
}

/// What the verdict reads of a request.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// The parsed head.
    pub req: &'a RequestHeader,
    /// Its size as read, request line to blank line.
    pub len: usize,
    /// `Transfer-Encoding` beside a `Content-Length` line in the raw head
    /// (pingora drops the latter, RFC 9112 §6.3; this proxy refuses both).
    pub conflicting_framing: bool,
    /// The connection's peer, for tokens with source ranges.
    pub peer: Peer<'a>,
}

/// The instant of the decision, on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall clock, Unix nanoseconds (expiry).
    pub unix_ns: i64,
    /// Monotonic nanoseconds (rate buckets).
    pub mono_ns: u64,
}

/// Decides about a request: bounds and framing, then the credential, the
/// token's state and expiry, its source ranges, product, scope, rate and
/// usage cap, in that order. Source ranges come before product and scope: a
/// client outside them learns nothing more about the token than that it is
/// refused here. The cap comes last: a call refused earlier does not use it up.
pub fn verdict(
    head: Head<'_>,
    route: Route,
    limits: HeadLimits,
    index: &Index,
    cells: &Cells,
    clock: Clock,
) -> Result<(Arc<Record>, Arc<TokenCell>), Refused> {
    let token = credential(head, limits)?;
    let found = index
        .lookup(&TokenHash::of(token))
        .ok_or(Reason::UnknownToken)?;
    let record = found.record;
    let cell = record.cell(cells);
    match policies(&record, found.slot, &cell, head, route, cells, clock) {
        Ok(()) => Ok((record, cell)),
        Err(refused) => Err(Refused {
            cell: Some(cell),
            ..refused
        }),
    }
}

/// The bearer token of a well-formed, bounded request head.
fn credential(head: Head<'_>, limits: HeadLimits) -> Result<&str, Refused> {
    let req = head.req;
    if let Some(r) = limits.exceeded(head.len, req.headers.len()) {
        return Err(r.into());
    }
    if head.conflicting_framing {
        return Err(Reason::AmbiguousFraming.into());
    }
    if auth::has_dot_segment(req.raw_path()) {
        return Err(Reason::InvalidPath.into());
    }
    Ok(auth::bearer_token(
        req.headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes),
    )?)
}

/// A known token's policies, in the order [`verdict`] gives. An accepted
/// call draws from the token's rate bucket and usage cap.
fn policies(
    record: &Record,
    slot: u32,
    cell: &TokenCell,
    head: Head<'_>,
    route: Route,
    cells: &Cells,
    clock: Clock,
) -> Result<(), Refused> {
    record.check(slot, clock.unix_ns).map_err(Reason::from)?;
    if !allowed_from(record, head) {
        return Err(Reason::SourceNotAllowed.into());
    }
    if !record.product().served() {
        return Err(Reason::WrongProduct.into());
    }
    let scopes = record.scopes();
    let allowed = match route.scope {
        Some(s) => scopes.allows(s),
        None => scopes.is_unrestricted(),
    };
    if !allowed {
        return Err(Refused {
            scope: Some(route.scope),
            ..Reason::InsufficientScope.into()
        });
    }
    if let Some((rps, burst)) = record.rate()
        && let Err(wait) = cell.acquire(clock.mono_ns, rps, burst)
    {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(Refused {
            retry_after: Some(secs.max(1)),
            ..Reason::RateLimited.into()
        });
    }
    if let Some(limit) = record.limit()
        && let Err(retry_after) = quota::admit(limit, cell.quota(), &cells.epoch(), clock.unix_ns)
    {
        return Err(Refused {
            retry_after,
            ..Reason::UsageLimitReached.into()
        });
    }
    Ok(())
}

/// Whether the token may be used from the request's client address. Only a
/// token with source ranges reads it.
fn allowed_from(record: &Record, head: Head<'_>) -> bool {
    record.sources().is_none_or(|ranges| {
        prodgy_crds::sources::allows(ranges, head.peer.client(&head.req.headers))
    })
}

#[cfg(test)]
mod tests;
