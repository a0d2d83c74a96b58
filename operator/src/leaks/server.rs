//! The HTTP shell: `POST /leak-reports` on the leak-report port. In order:
//! hashed records loaded (503), rate limit (429), body size (413), signature
//! (401), body shape (400), then the plan of [`super::decide`] executed and
//! answered (200). Errors use the JSON error envelope.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use chrono::Utc;
use futures::StreamExt;
use kube::{
    Api, Client,
    api::{Patch as KubePatch, PatchParams},
};
use prodgy_crds::{ApiToken, envelope::ErrorBody};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    config::LeakConfig,
    decide::{self, Patch},
    index::{self, Shared},
    metrics::ReportResult,
    parse,
    verify::{HMAC_HEADER, KEY_ID_HEADER, Presented, SIGNATURE_HEADER},
};
use crate::{Error, Result, controller::Bucket, metrics::Metrics, plan::FIELD_MANAGER};

/// The path reports are posted to.
pub const PATH: &str = "/leak-reports";
/// Patches sent at once for one report.
const PATCH_CONCURRENCY: usize = 16;
/// Retry-After of a 503.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(5);

/// What every request reads.
pub struct LeakState {
    cfg: LeakConfig,
    client: Client,
    index: Arc<Shared>,
    bucket: Mutex<Bucket>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for LeakState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakState")
            .field("cfg", &self.cfg)
            .field("synced", &self.index.is_synced())
            .finish_non_exhaustive()
    }
}

/// The leak-report router.
pub fn router(state: Arc<LeakState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    Router::new()
        .route(PATH, post(report))
        .fallback(|| async {
            envelope(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("POST reports to {PATH}"),
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Binds the leak-report port and starts loading the digest index; returns
/// the bound address and the serving future.
pub async fn bind(
    client: Client,
    cfg: LeakConfig,
    hashed_namespace: &str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<()>> + use<>)> {
    let addr = cfg.addr;
    let fail = |source| Error::LeakServe {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    let index = Arc::new(Shared::default());
    let watch = tokio::spawn(index::watch(
        client.clone(),
        hashed_namespace.to_owned(),
        index.clone(),
    ));
    let state = Arc::new(LeakState {
        bucket: Mutex::new(Bucket::new(cfg.per_second, Instant::now())),
        cfg,
        client,
        index,
        metrics,
    });
    info!(%bound, keys = ?state.cfg.verifier, action = ?state.cfg.action, "leak-report endpoint listening");
    let serve = async move {
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        watch.abort();
        served.map_err(|source| Error::LeakServe {
            addr: bound.to_string(),
            source,
        })
    };
    Ok((bound, serve))
}

async fn report(State(s): State<Arc<LeakState>>, req: Request) -> Response {
    let (result, response) = answer(&s, req).await;
    s.metrics.leaks.report(result);
    response
}

/// A refused report: its metric label and its error answer.
#[derive(Debug)]
struct Refusal {
    result: ReportResult,
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(result: ReportResult, status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            result,
            status,
            code,
            message,
            retry_after: None,
        }
    }

    fn into_response(self) -> Response {
        let mut resp = envelope(self.status, self.code, self.message);
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

async fn answer(s: &Arc<LeakState>, req: Request) -> (ReportResult, Response) {
    match handle(s, req).await {
        Ok(response) => (ReportResult::Accepted, response),
        Err(refusal) => (refusal.result, refusal.into_response()),
    }
}

async fn handle(s: &Arc<LeakState>, req: Request) -> Result<Response, Refusal> {
    admit(s)?;
    let headers = req.headers().clone();
    let body = read_body(s, req).await?;
    let signer = s
        .cfg
        .verifier
        .verify(presented(&headers), &body)
        .map_err(|e| {
            let (status, code) = (StatusCode::UNAUTHORIZED, "invalid_signature");
            Refusal::new(ReportResult::Unauthorized, status, code, e.to_string())
        })?;
    let reports = parse::parse(&body, s.cfg.max_tokens).map_err(|e| {
        Refusal::new(
            ReportResult::Malformed,
            StatusCode::BAD_REQUEST,
            e.code(),
            e.to_string(),
        )
    })?;
    let now = Utc::now();
    let plan = s
        .index
        .read(|idx| decide::plan_report(&reports, |d| idx.get(d), now));
    let acted = plan.patches.len();
    if !execute(s, plan.patches).await {
        return Err(unavailable(
            "action_failed",
            "a reported token could not be taken out of service; retry",
        ));
    }
    for (outcome, n) in &plan.counts {
        s.metrics.leaks.tokens(outcome, *n);
    }
    info!(signer = ?signer, counts = ?plan.counts, acted, "leak report handled");
    Ok((StatusCode::OK, axum::Json(plan.answers)).into_response())
}

/// Readiness (an index still loading would call every token unknown), then
/// the rate limit.
fn admit(s: &LeakState) -> Result<(), Refusal> {
    if !s.index.is_synced() {
        return Err(unavailable(
            "not_ready",
            "the hashed records are still loading; retry shortly",
        ));
    }
    let taken = s
        .bucket
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take(Instant::now());
    taken.map_err(|wait| Refusal {
        retry_after: Some(wait),
        ..Refusal::new(
            ReportResult::RateLimited,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many leak reports; retry later".to_owned(),
        )
    })
}

/// The raw body (the signature covers its exact bytes), within the limit.
async fn read_body(s: &LeakState, req: Request) -> Result<Bytes, Refusal> {
    Bytes::from_request(req, &()).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let msg = format!("the report is larger than {} bytes", s.cfg.max_body_bytes);
            let status = StatusCode::PAYLOAD_TOO_LARGE;
            Refusal::new(ReportResult::TooLarge, status, "body_too_large", msg)
        } else {
            let msg = "the body could not be read".to_owned();
            Refusal::new(
                ReportResult::Malformed,
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                msg,
            )
        }
    })
}

fn presented(headers: &HeaderMap) -> Presented<'_> {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    Presented {
        key_id: get(KEY_ID_HEADER),
        signature: get(SIGNATURE_HEADER),
        hmac: get(HMAC_HEADER),
    }
}

/// Sends every patch; false if any failed for a reason a retry may fix.
async fn execute(s: &Arc<LeakState>, patches: Vec<Patch>) -> bool {
    let failures = futures::stream::iter(patches.into_iter().map(|p| patch_one(s.clone(), p)))
        .buffer_unordered(PATCH_CONCURRENCY)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    failures == 0
}

async fn patch_one(s: Arc<LeakState>, p: Patch) -> bool {
    let api: Api<ApiToken> = Api::namespaced(s.client.clone(), &p.target.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let body = decide::patch_body(s.cfg.action, &p);
    let (ns, name) = (&p.target.namespace, &p.target.name);
    match api.patch(name, &params, &KubePatch::Merge(&body)).await {
        Ok(_) => {
            warn!(namespace = %ns, name = %name, url = %p.note.url, action = ?s.cfg.action, "leaked token taken out of service");
            true
        }
        // Deleted, or replaced by another ApiToken of the same name (the
        // UID precondition): nothing of ours is left to act on.
        Err(kube::Error::Api(st)) if st.code == 404 || st.code == 409 => {
            info!(namespace = %ns, name = %name, "leaked token is gone already");
            true
        }
        Err(e) => {
            warn!(namespace = %ns, name = %name, error = %e, "cannot take a leaked token out of service");
            false
        }
    }
}

fn unavailable(code: &'static str, message: &str) -> Refusal {
    Refusal {
        retry_after: Some(RETRY_UNAVAILABLE),
        ..Refusal::new(
            ReportResult::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            message.to_owned(),
        )
    }
}

fn envelope(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody::new(code, message).to_json();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
