//! The pingora service: HTTP/1 sessions read and written with pingora's
//! codec, one request after the other on each client connection.
//!
//! Per request: read the head, decide ([`crate::verdict::verdict`]), then either
//! answer the refusal or forward — the upstream head rebuilt without the
//! credential and with the verified identity, the body streamed up while the
//! response head is awaited, the response streamed back — and count once at
//! the end.
//!
//! The API may answer before it has read the body (a 413 by
//! `Content-Length`, a 415 or 400 on the head). That answer is relayed as
//! soon as its head arrives and the rest of the body is not sent. The
//! upstream connection is kept only when it is in step: the whole body went
//! up before the answer came, the answer allows keep-alive (the API says
//! `Connection: close` whenever it has not read the body to its end) and
//! the response was read to its end. The client connection goes on when
//! the proxy had read the client's whole body; otherwise it is closed after
//! the answer, discarding what the client still sends of the body for at
//! most [`LINGER`] / [`LINGER_BYTES`] so that the close does not turn into
//! a reset that destroys the answer before the client reads it.
//! `Expect: 100-continue` goes to the API, whose own `100` (or final
//! answer) is relayed: the API, not the proxy, knows whether it wants the
//! body.
//!
//! Each client connection keeps the upstream connection it last used, so a
//! keep-alive client costs no pool lookup per request; when the client
//! leaves, that connection goes back to pingora's pool for the next one. A
//! request without a body that fails on a reused upstream connection before
//! any response byte (the upstream closed it while idle) is retried once on a
//! fresh connection. The accepted path takes no lock.
//!
//! pingora errors are logged by kind only: their context can quote the raw
//! request head, credential included.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderName, HeaderValue, StatusCode, Version, header};
use pingora::apps::ServerApp;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::{Error as PError, ErrorType};
use prodgy_crds::envelope::ErrorBody;
use prodgy_crds::scope;
use prodgy_crds::{Scope, ScopeSet, SourceRange, identity};
use tokio::io::AsyncReadExt;

use crate::auth::{self, Reason};
use crate::cells::TokenCell;
use crate::client_addr::Peer as ClientPeer;
use crate::clock;
use crate::config::HeadLimits;
use crate::index::Record;
use crate::metrics::{InFlight, Outcome, UpstreamError};
use crate::state::State;
use crate::verdict::{Clock, Head, Refused, verdict};

/// The proxy service.
pub struct AuthProxy {
    state: Arc<State>,
    peer: HttpPeer,
    connector: TransportConnector,
    limits: HeadLimits,
    /// `--trusted-proxies`.
    trusted: Box<[SourceRange]>,
}

impl std::fmt::Debug for AuthProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthProxy")
            .field("peer", &self.peer)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// How long a client connection may sit idle between requests (seconds).
const KEEPALIVE_SECS: u64 = 60;
/// How long an upstream connection may sit idle in the pool.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// How long a closing client connection is read (and discarded) after an
/// answer sent before its request body was read: long enough for a client
/// that reads only after sending to see the answer, as nginx's
/// `lingering_timeout` (5 s).
pub const LINGER: Duration = Duration::from_secs(5);
/// How much of an unread request body is discarded before closing anyway.
pub const LINGER_BYTES: usize = 1 << 20;
/// The largest `Content-Length` body of a refused request that is read and
/// discarded to keep the connection, and the requests pipelined behind it;
/// a larger, chunked or `Expect` body closes the connection instead.
pub const REFUSED_BODY_DRAIN: usize = 64 * 1024;

/// Request headers that describe the client's connection, not the request:
/// never forwarded.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// The identity headers, in the order they are sent.
static IDENTITY: [HeaderName; 4] = [
    HeaderName::from_static(identity::PRODUCT),
    HeaderName::from_static(identity::TOKEN),
    HeaderName::from_static(identity::TOKEN_UID),
    HeaderName::from_static(identity::SCOPES),
];

/// Where a forwarded request failed.
#[derive(Debug)]
enum Failure {
    /// Reading the client's request (body) failed.
    Downstream(Box<PError>),
    /// Talking to the upstream failed.
    Upstream(Box<PError>),
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
    pub fn new(
        state: Arc<State>,
        upstream: SocketAddr,
        keepalive_pool: usize,
        limits: HeadLimits,
    ) -> Self {
        let mut peer = HttpPeer::new(upstream, false, String::new());
        peer.options.connection_timeout = Some(Duration::from_secs(2));
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
        let connector = TransportConnector::new(Some(ConnectorOptions::new(keepalive_pool)));
        Self {
            state,
            peer,
            connector,
            limits,
            trusted: Box::default(),
        }
    }

    /// Believes the forwarding headers of these peers (`--trusted-proxies`).
    #[must_use]
    pub fn with_trusted_proxies(mut self, trusted: Vec<SourceRange>) -> Self {
        self.trusted = trusted.into_boxed_slice();
        self
    }

    /// The upstream request head: the client's, as HTTP/1.1, without the
    /// credential, client-sent identity headers or hop-by-hop headers, with
    /// the verified identity.
    ///
    /// Built on `http`'s header map rather than pingora's header API, which
    /// re-parses every name it is given and keeps a second map for the
    /// client's spelling of each name: the upstream gets lower-case names.
    fn upstream_head(
        req: &RequestHeader,
        record: &Record,
        cell: &TokenCell,
    ) -> pingora::Result<Box<RequestHeader>> {
        let too_many = |_| PError::explain(ErrorType::InvalidHTTPHeader, "too many headers");
        let mut parts = req.as_owned_parts();
        parts.version = Version::HTTP_11;
        let headers = &mut parts.headers;
        headers.remove(header::AUTHORIZATION);
        let dropped: Vec<HeaderName> = headers
            .keys()
            .filter(|n| HOP_BY_HOP.contains(n) || identity::is_identity_header(n.as_str()))
            .cloned()
            .collect();
        for name in &dropped {
            headers.remove(name);
        }
        // An HTTP/1.0 client cannot take a 100 (RFC 9110 §10.1.1).
        if req.version != Version::HTTP_11 {
            headers.remove(header::EXPECT);
        }
        headers.try_reserve(IDENTITY.len()).map_err(too_many)?;
        let values = [
            record.product().header().clone(),
            cell.token_header().clone(),
            cell.uid_header().clone(),
            scopes_header(record.scopes()),
        ];
        for (name, value) in IDENTITY.iter().zip(values) {
            headers.try_append(name.clone(), value).map_err(too_many)?;
        }
        let mut head = Box::new(RequestHeader::from(parts));
        // The converted head serializes its URI; keep the client's exact
        // target where the two differ.
        if head.raw_path() != req.raw_path() {
            head.set_raw_path(req.raw_path())?;
        }
        Ok(head)
    }

    /// Sends the request head on `stream` and, for a body-less request,
    /// reads the final response head.
    async fn send_head(
        &self,
        stream: Stream,
        head: Box<RequestHeader>,
        bodyless: bool,
    ) -> (Http1Session, pingora::Result<()>) {
        let mut up = Http1Session::new_with_options(stream, &self.peer);
        let sent = async {
            up.write_request_header(head).await?;
            if bodyless {
                up.finish_body().await?;
                read_final_head(&mut up).await?;
            }
            Ok(())
        }
        .await;
        (up, sent)
    }

    /// Opens the upstream exchange: the kept connection if there is one,
    /// else one from the pool. A body-less request that fails on a reused
    /// connection before any response byte is sent once more on a fresh one.
    async fn open(
        &self,
        down: &ServerSession,
        kept: &mut Option<Stream>,
        record: &Record,
        cell: &TokenCell,
        bodyless: bool,
    ) -> pingora::Result<Http1Session> {
        let mut kept = kept.take();
        // A request with a body cannot be sent twice: check first that the
        // upstream has not closed the connection meanwhile.
        if !bodyless && kept.as_mut().is_some_and(|s| !still_open(s)) {
            kept = None;
        }
        let (stream, reused) = match kept {
            Some(s) => (s, true),
            None => self.connector.get_stream(&self.peer).await?,
        };
        let head = Self::upstream_head(down.req_header(), record, cell)?;
        let (up, sent) = self.send_head(stream, head, bodyless).await;
        match sent {
            Ok(()) => Ok(up),
            Err(e) if reused && bodyless && up.body_bytes_received() == 0 => {
                tracing::debug!(
                    error = e.etype().as_str(),
                    "reused upstream connection failed; retrying on a fresh one"
                );
                let stream = self.connector.new_stream(&self.peer).await?;
                let head = Self::upstream_head(down.req_header(), record, cell)?;
                let (up, sent) = self.send_head(stream, head, bodyless).await;
                sent.map(|()| up)
            }
            Err(e) => Err(e),
        }
    }

    /// Forwards an accepted request and streams the response back. Returns
    /// the status sent to the client.
    async fn forward(
        &self,
        down: &mut ServerSession,
        kept: &mut Option<Stream>,
        record: &Record,
        cell: &TokenCell,
    ) -> Result<u16, Failure> {
        let bodyless = down.is_body_done();
        let mut up = self
            .open(down, kept, record, cell, bodyless)
            .await
            .map_err(Failure::Upstream)?;
        let early = !bodyless && send_body(down, &mut up).await?;
        let resp = up
            .resp_header()
            .cloned()
            .ok_or_else(|| PError::explain(ErrorType::InvalidHTTPHeader, "no response head"))
            .map_err(Failure::Upstream)?;
        let status = resp.status.as_u16();
        down.write_response_header(Box::new(resp))
            .await
            .map_err(Failure::Downstream)?;
        while !up.is_body_done() {
            match up.read_body_bytes().await.map_err(Failure::Upstream)? {
                Some(chunk) => down
                    .write_response_body(chunk, false)
                    .await
                    .map_err(Failure::Downstream)?,
                None => break,
            }
        }
        down.finish_body().await.map_err(Failure::Downstream)?;
        // After an early answer the upstream connection holds an unsent
        // body: never reused. Otherwise it is only if the answer allows
        // keep-alive (the API's does only when it read the whole body) and
        // was read to its end (`reuse` checks).
        if !early {
            up.respect_keepalive();
            *kept = up.reuse().await;
        }
        Ok(status)
    }

    /// Answers a failed forward, if nothing was sent yet, and counts it.
    async fn fail(&self, down: &mut ServerSession, failure: &Failure) -> u16 {
        let (status, code, message) = match failure {
            Failure::Downstream(e) => {
                tracing::debug!(error = e.etype().as_str(), "reading the request failed");
                (400, "bad_request", "the request could not be read")
            }
            Failure::Upstream(e) => {
                tracing::warn!(error = e.etype().as_str(), "forwarding to the API failed");
                match e.etype() {
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
                    _ => {
                        self.state.metrics.upstream_error(UpstreamError::Other);
                        (502, "upstream_error", "the API connection failed")
                    }
                }
            }
        };
        if let Some(sent) = down
            .response_written()
            .filter(|r| !r.status.is_informational())
        {
            // Mid-response: the client sees the connection end.
            return sent.status.as_u16();
        }
        let body = Bytes::from(ErrorBody::new(code, message).to_json());
        let sent = async {
            down.set_keepalive(None);
            down.write_response_header(Box::new(json_head(status, body.len())?))
                .await?;
            down.write_response_body(body, true).await
        }
        .await;
        if let Err(err) = sent {
            tracing::debug!(
                error = err.etype().as_str(),
                "could not send the error response"
            );
        }
        status
    }

    /// Handles one request whose head (`head_len` bytes) has been read;
    /// returns whether the client connection may carry another.
    async fn handle(
        &self,
        down: &mut ServerSession,
        kept: &mut Option<Stream>,
        head_len: usize,
        peer: Option<IpAddr>,
    ) -> bool {
        let _in_flight = InFlight::start();
        let start = Instant::now();
        let now = clock::unix_nanos();
        let req = down.req_header();
        let route = scope::route(req.method.as_str(), req.uri.path());
        let conflicting_framing = req.headers.contains_key(header::TRANSFER_ENCODING)
            && down
                .as_http1()
                .is_some_and(|h1| raw_has_content_length(&h1.get_headers_raw_bytes()));
        let head = Head {
            req,
            len: head_len,
            conflicting_framing,
            peer: ClientPeer {
                addr: peer,
                trusted: &self.trusted,
            },
        };
        let clock = Clock {
            unix_ns: now,
            mono_ns: clock::mono_nanos_at(start),
        };
        let state = &self.state;
        let decision = verdict(head, route, self.limits, &state.index, &state.cells, clock);
        let (status, cell, rejected, reusable) = match decision {
            Ok((record, cell)) => {
                cell.record_use(now / 1_000_000);
                match self.forward(down, kept, &record, &cell).await {
                    Ok(status) => (status, Some(cell), None, true),
                    Err(failure) => (self.fail(down, &failure).await, Some(cell), None, false),
                }
            }
            Err(refused) => {
                let status = refused.reason.status();
                let sent = respond(down, &refused).await;
                if let Err(e) = &sent {
                    tracing::debug!(error = e.etype().as_str(), "could not send the refusal");
                }
                (status, refused.cell, Some(refused.reason), sent.is_ok())
            }
        };
        if let Some(cell) = &cell {
            cell.record_request(route.group, status);
        }
        self.state.metrics.request_finished(
            route.group,
            status,
            cell.is_some(),
            if rejected.is_none() {
                Outcome::Forwarded
            } else {
                Outcome::Rejected
            },
            rejected,
            start.elapsed(),
        );
        reusable
    }
}

/// Answers a refusal. A small declared body is read first, so the
/// connection and what is pipelined behind it go on; any other body
/// closes the connection after the answer.
async fn respond(session: &mut ServerSession, refused: &Refused) -> pingora::Result<()> {
    let keep = match after_refusal(session.req_header(), refused.reason) {
        AfterRefusal::Keep => true,
        AfterRefusal::Drain => matches!(
            tokio::time::timeout(LINGER, session.drain_request_body()).await,
            Ok(Ok(()))
        ),
        AfterRefusal::Close => false,
    };
    if !keep {
        session.set_keepalive(None);
    }
    send_refusal(session, refused).await
}

/// What happens to the client connection after a refusal, by the body
/// the refused request declares.
#[derive(Debug, PartialEq, Eq)]
enum AfterRefusal {
    /// No body: the connection goes on.
    Keep,
    /// A small `Content-Length` body: read and discarded first.
    Drain,
    /// Chunked, large, `Expect`ed or ambiguous: closed after the answer.
    Close,
}

fn after_refusal(req: &RequestHeader, reason: Reason) -> AfterRefusal {
    if reason == Reason::AmbiguousFraming || req.headers.contains_key(header::TRANSFER_ENCODING) {
        return AfterRefusal::Close;
    }
    let Some(len) = req.headers.get(header::CONTENT_LENGTH) else {
        return AfterRefusal::Keep;
    };
    match std::str::from_utf8(len.as_bytes())
        .ok()
        .and_then(|l| l.parse::<usize>().ok())
    {
        Some(0) => AfterRefusal::Keep,
        // A client waiting for a 100 may never send the body.
        Some(n) if n <= REFUSED_BODY_DRAIN && !is_expect_continue(req) => AfterRefusal::Drain,
        _ => AfterRefusal::Close,
    }
}

/// Writes a refusal: its status, JSON body and headers.
async fn send_refusal(session: &mut ServerSession, refused: &Refused) -> pingora::Result<()> {
    let r = refused.reason;
    let body = BODIES.get(r.index()).cloned().unwrap_or_default();
    let mut resp = json_head(r.status(), body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(scope) = refused.scope {
        resp.insert_header(header::WWW_AUTHENTICATE, auth::scope_challenge(scope))?;
    } else if let Some(c) = r.challenge() {
        resp.insert_header(header::WWW_AUTHENTICATE, c)?;
    }
    if let Some(secs) = refused.retry_after {
        resp.insert_header(header::RETRY_AFTER, secs)?;
    }
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await
}

/// The head of a JSON response the proxy writes itself.
fn json_head(status: u16, len: usize) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(6))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, len)?;
    Ok(resp)
}

/// Reads response heads until the final one (skipping `1xx` other than 101).
async fn read_final_head(up: &mut Http1Session) -> pingora::Result<()> {
    loop {
        up.read_response().await?;
        if !is_interim(up) {
            return Ok(());
        }
    }
}

/// Streams the request body up while waiting for the response head, and
/// relays the API's `100 Continue` to a client that asked for it. Returns
/// with the final response head read; `true` when it came before the whole
/// body was sent (an early answer: the upstream connection is out of step).
async fn send_body(down: &mut ServerSession, up: &mut Http1Session) -> Result<bool, Failure> {
    let expect = is_expect_continue(down.req_header());
    loop {
        tokio::select! {
            // The answer first: once it is there, the rest of the body is
            // not wanted.
            biased;
            head = up.read_response() => {
                head.map_err(Failure::Upstream)?;
                if !is_interim(up) {
                    return Ok(true);
                }
                if expect && up.resp_header().is_some_and(|r| r.status == StatusCode::CONTINUE) {
                    continue_client(down).await?;
                }
            }
            chunk = down.read_request_body() => {
                let sent = match chunk.map_err(Failure::Downstream)? {
                    // pingora's reader returns empty pieces (a read that
                    // ended after a chunk-size line, a terminator split in
                    // two); written up, one would be `0\r\n\r\n`, the end
                    // of a chunked body, and the API would take a cut-off
                    // body for the whole one.
                    Some(chunk) if chunk.is_empty() => Ok(false),
                    Some(chunk) => up.write_body(&chunk).await.map(|_| false),
                    None => up.finish_body().await.map(|_| true),
                };
                match sent {
                    Ok(true) => break,
                    Ok(false) => {}
                    // The API may have answered and closed: its answer
                    // wins over the failed write.
                    Err(e) => return answer_after_write_error(up, e).await,
                }
            }
        }
    }
    read_final_head(up).await.map_err(Failure::Upstream)?;
    Ok(false)
}

/// Writes `100 Continue` to the client, keeping the connection's keep-alive
/// state: pingora turns keep-alive off for any response written before the
/// body was read, which is right for a final answer but not for a 100.
async fn continue_client(down: &mut ServerSession) -> Result<(), Failure> {
    let keepalive = down.get_keepalive();
    down.write_continue_response()
        .await
        .map_err(Failure::Downstream)?;
    down.set_keepalive(keepalive);
    Ok(())
}

/// After a failed body write: the final head the API sent before closing,
/// if it is there within [`LINGER`], else the write's error.
async fn answer_after_write_error(
    up: &mut Http1Session,
    write_error: Box<PError>,
) -> Result<bool, Failure> {
    match tokio::time::timeout(LINGER, read_final_head(up)).await {
        Ok(Ok(())) => Ok(true),
        _ => Err(Failure::Upstream(write_error)),
    }
}

/// Whether the response head just read is an interim one (`1xx` but 101).
fn is_interim(up: &Http1Session) -> bool {
    up.resp_header()
        .is_some_and(|r| r.status.is_informational() && r.status != StatusCode::SWITCHING_PROTOCOLS)
}

/// Closes a client connection after its last answer. When the request body
/// was not read (an early answer, a refusal), the write side is shut first
/// so the client sees the end of the answer, then what it still sends of
/// the body is discarded for at most [`LINGER`] and [`LINGER_BYTES`]:
/// closing with unread bytes would send a reset, which can destroy the
/// answer in the client's receive buffer before it is read.
async fn close(down: &mut ServerSession) {
    down.shutdown().await;
    if down.is_body_done() {
        return;
    }
    let discard = async {
        let mut seen = 0;
        while let Ok(Some(chunk)) = down.read_request_body().await {
            seen += chunk.len();
            if seen > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

/// Whether an idle upstream connection can still be used: nothing to read
/// (no close, no stray bytes) without waiting.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

/// Reads the next request head; its length in bytes, or `None` when the
/// client closed the connection between requests.
async fn read_head(down: &mut ServerSession) -> pingora::Result<Option<usize>> {
    match down {
        ServerSession::H1(h1) => h1.read_request().await,
        _ => Ok(None),
    }
}

/// Answers a head that could not be parsed and closes: 431 when pingora's
/// own ceiling on size or header count refused it, else 400.
async fn unreadable(down: &mut ServerSession, e: &PError) {
    if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
        tracing::debug!(error = e.etype().as_str(), "unreadable request head");
        let sent = match over_ceiling(e) {
            Some(reason) => {
                down.set_keepalive(None);
                send_refusal(down, &reason.into()).await
            }
            None => down.respond_error(400).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = e.etype().as_str(), "could not send the refusal");
        }
    }
    down.shutdown().await;
}

/// Which bound a parse error is pingora's refusal of, if any: its head
/// size limit (the context names it) or httparse's header count.
fn over_ceiling(e: &PError) -> Option<Reason> {
    if e.context
        .as_ref()
        .is_some_and(|c| c.as_str().starts_with("Request header larger than"))
    {
        Some(Reason::HeadTooLarge)
    } else if e
        .cause
        .as_ref()
        .is_some_and(|c| c.to_string() == "too many headers")
    {
        Some(Reason::TooManyHeaders)
    } else {
        None
    }
}

fn is_expect_continue(req: &RequestHeader) -> bool {
    req.headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

#[async_trait]
impl ServerApp for AuthProxy {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut shutdown = shutdown.clone();
        // Once per connection: the address source ranges are checked against.
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let mut down = ServerSession::new_http1(stream);
        down.set_pipelining_enabled(true);
        // The upstream connection this client connection last used.
        let mut kept: Option<Stream> = None;
        loop {
            let stopping = *shutdown.borrow_and_update();
            down.set_keepalive((!stopping).then_some(KEEPALIVE_SECS));
            let read = tokio::select! {
                biased;
                r = read_head(&mut down) => r,
                // Idle keep-alive connections close when shutdown starts.
                _ = shutdown.changed(), if !stopping => break,
            };
            let head_len = match read {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    unreadable(&mut down, &e).await;
                    break;
                }
            };
            if !self.handle(&mut down, &mut kept, head_len, peer).await
                || down.get_keepalive().is_none()
            {
                close(&mut down).await;
                break;
            }
            match down.finish().await {
                Ok(Some(reusable)) => {
                    let (stream, prefix) = reusable.into_parts();
                    down = ServerSession::new_http1(stream);
                    // Bytes read past this request are the next ones
                    // (RFC 9112 §9.3): without this pingora drops them and
                    // the connection.
                    down.set_pipelining_enabled(true);
                    if let Some(prefix) = prefix {
                        down.set_pipelined_prefix(prefix);
                    }
                }
                _ => break,
            }
        }
        if let Some(stream) = kept {
            self.connector
                .release_stream(stream, self.peer.reuse_hash(), Some(UPSTREAM_IDLE));
        }
        None
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
    fn only_small_declared_bodies_are_read_after_a_refusal() {
        let req = |headers: &[(&str, &str)]| {
            let mut r = RequestHeader::build("POST", b"/api/agent-base", None).unwrap();
            for (n, v) in headers {
                r.insert_header(n.to_string(), *v).unwrap();
            }
            r
        };
        let small = REFUSED_BODY_DRAIN.to_string();
        let large = (REFUSED_BODY_DRAIN + 1).to_string();
        let cases: [(&[(&str, &str)], AfterRefusal); 7] = [
            (&[], AfterRefusal::Keep),
            (&[("content-length", "0")], AfterRefusal::Keep),
            (&[("content-length", &small)], AfterRefusal::Drain),
            (&[("content-length", &large)], AfterRefusal::Close),
            (
                &[("content-length", "5"), ("expect", "100-continue")],
                AfterRefusal::Close,
            ),
            (&[("transfer-encoding", "chunked")], AfterRefusal::Close),
            (&[("content-length", "x")], AfterRefusal::Close),
        ];
        for (headers, want) in cases {
            assert_eq!(
                after_refusal(&req(headers), Reason::MissingToken),
                want,
                "{headers:?}"
            );
        }
        assert_eq!(
            after_refusal(&req(&[]), Reason::AmbiguousFraming),
            AfterRefusal::Close
        );
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
