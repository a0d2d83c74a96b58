//! The pingora service: decide in `request_filter`, rewrite headers in
//! `upstream_request_filter`, count once in `logging`.
//!
//! Shared state lives in [`AuthProxy`]; everything about one request lives in
//! [`RequestCtx`]. The accepted path allocates nothing of its own besides the
//! identity header names pingora copies, and takes no lock.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, header};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::{FailToProxy, ProxyHttp};
use pingora::{Error as PError, ErrorType};
use prodgy_crds::scope::{self, Route};
use prodgy_crds::{RouteGroup, Scope, ScopeSet, TokenHash, identity};

use crate::auth::{self, Reason};
use crate::cells::TokenCell;
use crate::clock;
use crate::index::Record;
use crate::metrics::{InFlight, Outcome, UpstreamError};
use crate::state::State;

/// Per-request state.
#[derive(Debug)]
pub struct RequestCtx {
    start: Instant,
    group: RouteGroup,
    rejected: Option<Reason>,
    /// The token's cell when the token is known (accepted or refused).
    cell: Option<Arc<TokenCell>>,
    /// The verified record when the request is allowed.
    grant: Option<Arc<Record>>,
    /// Wall clock at the decision, unix ms (the token's "last used").
    wall_ms: i64,
    _in_flight: InFlight,
}

/// A refusal with what its response needs.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub reason: Reason,
    /// For a scope refusal: the scope needed (`None`: unrestricted only).
    pub scope: Option<Option<Scope>>,
    /// For a rate-limit refusal: seconds to wait.
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

/// The proxy service.
#[derive(Debug)]
pub struct AuthProxy {
    state: Arc<State>,
    peer: HttpPeer,
}

static BODIES: LazyLock<Vec<Bytes>> =
    LazyLock::new(|| Reason::ALL.iter().map(|r| Bytes::from(r.body())).collect());

fn scopes_header(set: ScopeSet) -> HeaderValue {
    static CACHE: LazyLock<Box<[OnceLock<HeaderValue>]>> = LazyLock::new(|| {
        (0..1usize << Scope::ALL.len())
            .map(|_| OnceLock::new())
            .collect()
    });
    let bits = set.iter().fold(0usize, |acc, s| acc | 1 << (s as usize));
    CACHE
        .get(bits)
        .map(|slot| {
            slot.get_or_init(|| {
                let text = if set.is_unrestricted() {
                    identity::ALL_SCOPES.to_owned()
                } else {
                    set.iter().map(Scope::as_str).collect::<Vec<_>>().join(",")
                };
                HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""))
            })
            .clone()
        })
        .unwrap_or(HeaderValue::from_static(""))
}

/// Whether the raw request head holds a `Content-Length` line. Only called
/// when `Transfer-Encoding` is present: pingora drops `Content-Length` in that
/// case (RFC 9112 §6.3), and this proxy refuses such requests outright.
fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

impl AuthProxy {
    /// A proxy for `state`, forwarding to `upstream`.
    pub fn new(state: Arc<State>, upstream: SocketAddr) -> Self {
        let mut peer = HttpPeer::new(upstream, false, String::new());
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        Self { state, peer }
    }

    /// Decides about a request. Pure apart from the index read and the
    /// token's counters (rate bucket).
    pub fn decide(
        &self,
        req: &RequestHeader,
        route: Route,
        now_ns: i64,
        mono_ns: u64,
    ) -> Result<(Arc<Record>, Arc<TokenCell>), Refused> {
        if auth::has_dot_segment(req.raw_path()) {
            return Err(Reason::InvalidPath.into());
        }
        let token = auth::bearer_token(
            req.headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .map(HeaderValue::as_bytes),
        )?;
        let digest = TokenHash::of(token);
        let found = self
            .state
            .index
            .lookup(&digest)
            .ok_or(Reason::UnknownToken)?;
        let record = found.record;
        let cell = record.cell(&self.state.cells);
        let refuse = |reason: Reason| Refused {
            reason,
            scope: None,
            retry_after: None,
            cell: Some(cell.clone()),
        };
        if let Err(r) = record.check(found.slot, now_ns) {
            return Err(refuse(r.into()));
        }
        if !record.product().served() {
            return Err(refuse(Reason::WrongProduct));
        }
        let scopes = record.scopes();
        let allowed = match route.scope {
            Some(s) => scopes.allows(s),
            None => scopes.is_unrestricted(),
        };
        if !allowed {
            return Err(Refused {
                scope: Some(route.scope),
                ..refuse(Reason::InsufficientScope)
            });
        }
        if let Some((rps, burst)) = record.rate()
            && let Err(wait) = cell.acquire(mono_ns, rps, burst)
        {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(Refused {
                retry_after: Some(secs.max(1)),
                ..refuse(Reason::RateLimited)
            });
        }
        Ok((record, cell))
    }

    async fn respond(&self, session: &mut Session, refused: &Refused) -> pingora::Result<()> {
        let r = refused.reason;
        let body = BODIES.get(r.index()).cloned().unwrap_or_default();
        let mut resp = ResponseHeader::build(r.status(), Some(6))?;
        resp.insert_header(header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(header::CONTENT_LENGTH, body.len())?;
        resp.insert_header(header::CACHE_CONTROL, "no-store")?;
        if let Some(scope) = refused.scope {
            resp.insert_header(header::WWW_AUTHENTICATE, auth::scope_challenge(scope))?;
        } else if let Some(c) = r.challenge() {
            resp.insert_header(header::WWW_AUTHENTICATE, c)?;
        }
        if let Some(secs) = refused.retry_after {
            resp.insert_header(header::RETRY_AFTER, secs)?;
        }
        // Do not read an unauthenticated body just to keep the connection.
        let req = session.req_header();
        if req.headers.contains_key(header::TRANSFER_ENCODING)
            || req
                .headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0")
            || r == Reason::AmbiguousFraming
        {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await
    }
}

#[async_trait]
impl ProxyHttp for AuthProxy {
    type CTX = RequestCtx;

    /// No downstream modules: the default adds a (disabled) compression
    /// module whose per-request context costs an allocation and a filter
    /// pass, and this proxy never compresses.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            group: RouteGroup::Other,
            rejected: None,
            cell: None,
            grant: None,
            wall_ms: 0,
            _in_flight: InFlight::start(),
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let now = clock::unix_nanos();
        ctx.wall_ms = now / 1_000_000;
        let req = session.req_header();
        let route = scope::route(req.method.as_str(), req.uri.path());
        ctx.group = route.group;
        let ambiguous = req.headers.contains_key(header::TRANSFER_ENCODING)
            && session
                .as_downstream()
                .as_http1()
                .is_some_and(|h1| raw_has_content_length(&h1.get_headers_raw_bytes()));
        let decision = if ambiguous {
            Err(Reason::AmbiguousFraming.into())
        } else {
            self.decide(
                session.req_header(),
                route,
                now,
                clock::mono_nanos_at(ctx.start),
            )
        };
        match decision {
            Ok((record, cell)) => {
                ctx.cell = Some(cell);
                ctx.grant = Some(record);
                Ok(false)
            }
            Err(refused) => {
                ctx.rejected = Some(refused.reason);
                ctx.cell.clone_from(&refused.cell);
                self.respond(session, &refused).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // Fail closed: nothing reaches the upstream without a verified grant.
        let (Some(record), Some(cell)) = (ctx.grant.as_ref(), ctx.cell.as_ref()) else {
            return PError::e_explain(
                ErrorType::HTTPStatus(500),
                "no verified identity for an upstream request",
            );
        };
        upstream.remove_header(&header::AUTHORIZATION);
        let spoofed: Vec<HeaderName> = upstream
            .headers
            .keys()
            .filter(|n| identity::is_identity_header(n.as_str()))
            .cloned()
            .collect();
        for name in &spoofed {
            upstream.remove_header(name);
        }
        // Append, not insert: every identity header is gone by now, and an
        // append skips the search for an existing one.
        upstream.append_header(identity::PRODUCT, record.product().header().clone())?;
        upstream.append_header(identity::TOKEN, cell.token_header().clone())?;
        upstream.append_header(identity::TOKEN_UID, cell.uid_header().clone())?;
        upstream.append_header(identity::SCOPES, scopes_header(record.scopes()))?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &PError,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (status, code, message) = match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectError
            | ErrorType::ConnectNoRoute => {
                self.state.metrics.upstream_error(UpstreamError::Connect);
                (502, "upstream_unavailable", "the API is not reachable")
            }
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                self.state.metrics.upstream_error(UpstreamError::Timeout);
                (504, "upstream_timeout", "the API did not answer in time")
            }
            ErrorType::HTTPStatus(code) => {
                (*code, "internal", "the proxy could not handle the request")
            }
            _ if e.esource() == &pingora::ErrorSource::Downstream => {
                (400, "bad_request", "the request could not be read")
            }
            _ => {
                self.state.metrics.upstream_error(UpstreamError::Other);
                (502, "upstream_error", "the API connection failed")
            }
        };
        if session.response_written().is_none() {
            let body = Bytes::from(
                serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
            );
            let sent = async {
                let mut resp = ResponseHeader::build(status, Some(3))?;
                resp.insert_header(header::CONTENT_TYPE, "application/json")?;
                resp.insert_header(header::CONTENT_LENGTH, body.len())?;
                session.set_keepalive(None);
                session.write_response_header(Box::new(resp), false).await?;
                session.write_response_body(Some(body), true).await
            }
            .await;
            if let Err(err) = sent {
                tracing::debug!(error = %err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&PError>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let forwarded = ctx.grant.is_some();
        if let Some(cell) = &ctx.cell {
            cell.record_request(ctx.group, status);
            if forwarded {
                cell.record_use(ctx.wall_ms);
            }
        }
        self.state.metrics.request_finished(
            ctx.group,
            status,
            ctx.cell.is_some(),
            if forwarded {
                Outcome::Forwarded
            } else {
                Outcome::Rejected
            },
            ctx.rejected,
            ctx.start.elapsed(),
        );
    }

    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        // Method and path only: never header values.
        let req = session.req_header();
        format!("{} {}", req.method, req.uri.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_lines_are_found_in_any_case() {
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 4\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Content-Length: 4\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST /content-length: HTTP/1.1\r\n\r\n"
        ));
    }

    #[test]
    fn scope_headers_list_the_scopes_or_a_star() {
        assert_eq!(scopes_header(ScopeSet::UNRESTRICTED), "*");
        let set: ScopeSet = [Scope::StorageWrite, Scope::AgentsRead]
            .into_iter()
            .collect();
        assert_eq!(scopes_header(set), "agents:read,storage:write");
    }
}
