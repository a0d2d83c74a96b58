//! The HTTP side: routing Kubernetes REST paths to the store, streaming
//! watches, discovery documents, and the fault switches (outage, RBAC).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::error::{ApiError, json_response};
use crate::faults::WriteFault;
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::store::{DeleteOpts, PatchKind, Propagation, Store, WatchFrom, filter_event};
use crate::types::ResourceType;

/// The bearer token of the one user the server knows ([`crate::FakeApiServer::kubeconfig_yaml`]).
pub(crate) const USER_TOKEN: &str = "prodgy-kube-fake";

/// The largest request body the real server accepts (3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// State shared by the handle and every request.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// `false`: connections are dropped as soon as they are accepted.
    pub available: AtomicBool,
    /// `true`: every request is answered `503 Service Unavailable`.
    pub overloaded: AtomicBool,
    /// Bumped to drop every open connection (outage, shutdown).
    pub disconnect: watch::Sender<u64>,
    /// The last `disconnect` value fully carried out.
    pub disconnected: AtomicU64,
    pub denied: Mutex<HashSet<Denial>>,
    pub requests: Mutex<HashMap<(String, String), u64>>,
    /// Per qualified resource: how its writes are answered.
    pub write_faults: Mutex<HashMap<String, WriteFault>>,
    pub bookmark_interval: Duration,
    pub addr: SocketAddr,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves consistent data behind
        // (every mutation is a single insert/remove), so keep serving.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_denied(&self, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
        let denied = self
            .denied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        denied.iter().any(|d| {
            (d.verb == verb || d.verb == "*")
                && (d.resource == resource || d.resource == "*")
                && match (&d.scope, namespace) {
                    (DenyScope::Everywhere, _) => true,
                    (DenyScope::ClusterWide, ns) => ns.is_none(),
                    (DenyScope::Namespace(want), Some(ns)) => want == ns,
                    (DenyScope::Namespace(_), None) => false,
                }
        })
    }

    /// Drops every open connection and returns once they are closed.
    pub fn drop_connections(&self) {
        let mut target = 0;
        self.disconnect.send_modify(|n| {
            *n += 1;
            target = *n;
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.disconnected.load(Ordering::SeqCst) < target
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn count_request(&self, verb: &str, resource: &str) {
        let mut r = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *r.entry((verb.to_string(), resource.to_string()))
            .or_default() += 1;
    }
}

/// Where a [`Denial`] applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DenyScope {
    Everywhere,
    /// Requests not scoped to a namespace (all-namespace list/watch,
    /// cluster-scoped resources).
    ClusterWide,
    Namespace(String),
}

/// One simulated missing RBAC permission.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Denial {
    pub verb: String,
    pub resource: String,
    pub scope: DenyScope,
}

/// Accepts connections until the task is aborted; a `disconnect` bump
/// drops every open connection at once. With `tls`, every connection is a
/// TLS handshake first (one that fails just closes that connection).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<TlsAcceptor>) {
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    let mut disconnect = shared.disconnect.subscribe();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !shared.available.load(Ordering::SeqCst) {
                    // Down: reset the connection, as a dead server's host would.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                let tls = tls.clone();
                conns.spawn(async move {
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else { return };
                            let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
            changed = disconnect.changed() => {
                if changed.is_err() {
                    break;
                }
                let epoch = *disconnect.borrow_and_update();
                conns.abort_all();
                // Wait until every socket is really closed before saying so.
                while conns.join_next().await.is_some() {}
                shared.disconnected.store(epoch, Ordering::SeqCst);
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// What a request path names.
enum Route {
    Version,
    Api,
    Apis,
    Group(String),
    Resources(String, String),
    Health,
    Object(Target),
}

/// A resource request: type, version, namespace, name, subresource.
struct Target {
    ty: Arc<ResourceType>,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    /// The client asked for `PartialObjectMetadata` (metadata-only watches).
    metadata_only: bool,
}

fn unknown_path() -> ApiError {
    ApiError::not_found("the server could not find the requested resource")
}

fn route(path: &str, shared: &Shared) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "readyz" | "livez", ..] => return Ok(Route::Health),
        ["api"] => return Ok(Route::Api),
        ["apis"] => return Ok(Route::Apis),
        ["apis", g] => return Ok(Route::Group((*g).to_string())),
        ["api", v] => return Ok(Route::Resources(String::new(), (*v).to_string())),
        ["apis", g, v] => return Ok(Route::Resources((*g).to_string(), (*v).to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(unknown_path()),
    };
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && !(rest.len() == 3 && matches!(rest[2], "status" | "finalize"));
    let (namespace, rest) = if namespaced_path {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Err(unknown_path()),
    };
    let ty = shared
        .store()
        .registry
        .lookup(group, version, plural)
        .ok_or_else(unknown_path)?;
    if namespace.is_some() && !ty.namespaced {
        return Err(unknown_path());
    }
    if ty.namespaced && namespace.is_none() && name.is_some() {
        return Err(unknown_path());
    }
    let status = match sub {
        None => false,
        Some("status") if ty.version(version).is_some_and(|v| v.status) => true,
        Some(_) => return Err(unknown_path()),
    };
    Ok(Route::Object(Target {
        ty,
        version: version.to_string(),
        namespace,
        name: name.map(str::to_string),
        status,
        metadata_only: false,
    }))
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    if !shared.available.load(Ordering::SeqCst) || shared.overloaded.load(Ordering::SeqCst) {
        return ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
        .into_response();
    }
    // One user exists: the kubeconfig's. Other credentials are rejected as
    // a real server's authenticator would; none at all is anonymous.
    if req
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() != format!("Bearer {USER_TOKEN}").as_bytes())
    {
        return ApiError::new(401, "Unauthorized", "Unauthorized").into_response();
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let fault = write_fault(&shared, &method, uri.path());
    let response = match handle_inner(&shared, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let response = match fault {
        Some(f) => f.answer(response).await,
        None => response,
    };
    // Test logs show what a component under test asked for.
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "kube-fake request");
    response
}

/// The fault set for writes to the resource a request names, if it is a
/// write.
fn write_fault(shared: &Shared, method: &Method, path: &str) -> Option<WriteFault> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let none_set = shared
        .write_faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .is_empty();
    if none_set {
        return None;
    }
    let Ok(Route::Object(target)) = route(path, shared) else {
        return None;
    };
    shared
        .write_faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&target.ty.qualified())
        .copied()
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

async fn handle_inner(shared: &Arc<Shared>, req: Request) -> Result<Response, ApiError> {
    let query: HashMap<String, String> = Query::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut target = match route(req.uri().path(), shared)? {
        Route::Object(t) => t,
        other => return discovery(shared, other, req.method(), &accept),
    };
    target.metadata_only = accept.contains("as=PartialObjectMetadata");
    let method = req.method().clone();
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if flag(&query, "watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ));
        }
    };
    if target.status && !matches!(verb, "get" | "update" | "patch") {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let ty = Arc::clone(&target.ty);
    let resource = if target.status {
        format!("{}/status", ty.plural)
    } else {
        ty.plural.clone()
    };
    shared.count_request(verb, &ty.qualified());
    if shared.is_denied(verb, &resource, target.namespace.as_deref()) {
        let subject = match &target.name {
            Some(n) => format!("{} \"{n}\"", ty.qualified()),
            None => ty.qualified(),
        };
        let scope = match &target.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_string(),
        };
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "{subject} is forbidden: User \"system:serviceaccount:default:test\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
                ty.group
            ),
        )
        .with_details(target.name.as_deref().unwrap_or_default(), &ty.group, &ty.plural));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("request body too large or unreadable: {e}"),
            )
        })?;
    let ns = target.namespace.as_deref();
    let mode = WriteMode {
        dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
        strict: query.get("fieldValidation").is_some_and(|v| v == "Strict"),
    };
    match verb {
        "get" => {
            let name = target.name.as_deref().unwrap_or_default();
            let obj = shared.store().get(&ty, ns, name)?;
            Ok(object_response(StatusCode::OK, &target, obj))
        }
        "list" => list(shared, &target, &query),
        "watch" => watch_response(shared, &target, &query),
        "create" => {
            let obj = parse_json(&body)?;
            let created = write(shared, mode, |s| s.create(&ty, ns, obj))?;
            Ok(object_response(StatusCode::CREATED, &target, created))
        }
        "update" => {
            let obj = parse_json(&body)?;
            let name = target.name.as_deref().unwrap_or_default();
            let updated = write(shared, mode, |s| {
                s.replace(&ty, ns, name, obj, target.status)
            })?;
            Ok(object_response(StatusCode::OK, &target, updated))
        }
        "patch" => {
            let kind = match content_type.as_str() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/json-patch+json" => PatchKind::Json,
                "application/strategic-merge-patch+json" => PatchKind::Strategic,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, not {other:?}"
                        ),
                    ));
                }
            };
            if kind == PatchKind::Apply && query.get("fieldManager").is_none_or(String::is_empty) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let name = target.name.as_deref().unwrap_or_default();
            let (obj, created) = write(shared, mode, |s| {
                s.patch(&ty, ns, name, kind, &body, target.status)
            })?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(code, &target, obj))
        }
        "delete" => {
            let opts = delete_opts(&body, &query)?;
            let name = target.name.as_deref().unwrap_or_default();
            let (obj, gone) = write(shared, mode, |s| s.delete(&ty, ns, name, &opts))?;
            if gone && !ty.custom && ty.plural != "namespaces" {
                let status = json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": ty.group, "kind": ty.plural, "uid": obj["metadata"]["uid"]},
                });
                return Ok(json_response(StatusCode::OK, &status));
            }
            Ok(object_response(StatusCode::OK, &target, obj))
        }
        _ => {
            let opts = delete_opts(&body, &query)?;
            let sel = selectors(&ty, &query)?;
            let items = write(shared, mode, |s| s.delete_collection(&ty, ns, &sel, &opts))?;
            let rv = shared.store().resource_version();
            Ok(list_response(&target, items, rv, None, None))
        }
    }
}

/// Per-request write options from the query string.
#[derive(Clone, Copy, Debug)]
struct WriteMode {
    dry_run: bool,
    strict: bool,
}

/// Runs a write; a dry run works on a throw-away copy of the store.
fn write<T>(
    shared: &Shared,
    mode: WriteMode,
    f: impl FnOnce(&mut Store) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut store = shared.store();
    if mode.dry_run {
        let mut copy = store.detached_copy();
        drop(store);
        copy.strict_fields = mode.strict;
        return f(&mut copy);
    }
    store.strict_fields = mode.strict;
    let result = f(&mut store);
    store.strict_fields = false;
    result
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn delete_opts(body: &[u8], query: &HashMap<String, String>) -> Result<DeleteOpts, ApiError> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(body)?
    };
    let propagation = v["propagationPolicy"]
        .as_str()
        .or(query.get("propagationPolicy").map(String::as_str));
    let propagation = match propagation {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {other:?}"
            )));
        }
    };
    let propagation = if v["orphanDependents"].as_bool() == Some(true) {
        Propagation::Orphan
    } else {
        propagation
    };
    Ok(DeleteOpts {
        uid: v["preconditions"]["uid"].as_str().map(str::to_string),
        resource_version: v["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_string),
        propagation,
    })
}

fn selectors(ty: &ResourceType, query: &HashMap<String, String>) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(
            query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )?,
        fields: FieldSelector::parse(
            query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
            &ty.plural,
        )?,
    })
}

/// Sets `apiVersion` to the version the client asked for, or cuts the
/// object down to `PartialObjectMetadata` when that was asked for.
fn render(target: &Target, mut obj: Value) -> Value {
    if target.metadata_only {
        return json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"].take(),
        });
    }
    obj["apiVersion"] = json!(target.ty.api_version(&target.version));
    obj
}

fn object_response(code: StatusCode, target: &Target, obj: Value) -> Response {
    json_response(code, &render(target, obj))
}

fn list_response(
    target: &Target,
    items: Vec<Value>,
    rv: u64,
    cont: Option<String>,
    remaining: Option<usize>,
) -> Response {
    let items: Vec<Value> = items.into_iter().map(|o| render(target, o)).collect();
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    let (kind, api_version) = if target.metadata_only {
        (
            "PartialObjectMetadataList".to_string(),
            "meta.k8s.io/v1".to_string(),
        )
    } else {
        (
            target.ty.list_kind.clone(),
            target.ty.api_version(&target.version),
        )
    };
    let list = json!({
        "kind": kind,
        "apiVersion": api_version,
        "metadata": meta,
        "items": items,
    });
    json_response(StatusCode::OK, &list)
}

fn list(
    shared: &Shared,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let sel = selectors(&target.ty, query)?;
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    let page = shared.store().list(
        &target.ty,
        target.namespace.as_deref(),
        &sel,
        limit,
        query.get("continue").map(String::as_str),
    )?;
    Ok(list_response(
        target,
        page.items,
        page.rv,
        page.cont,
        page.remaining,
    ))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(target: &Target, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": target.ty.kind, "apiVersion": target.ty.api_version(&target.version), "metadata": meta});
    watch_line("BOOKMARK", &obj)
}

fn watch_response(
    shared: &Arc<Shared>,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let sel = selectors(&target.ty, query)?;
    let bookmarks = flag(query, "allowWatchBookmarks");
    let initial_events = flag(query, "sendInitialEvents");
    // 0 or absent: no timeout of our own.
    let timeout = match query
        .get("timeoutSeconds")
        .filter(|t| !t.is_empty() && t.as_str() != "0")
    {
        Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
            ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
        })?)),
        None => None,
    };
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let from = if initial_events {
        if query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
            return Err(ApiError::invalid(
                "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
            ));
        }
        WatchFrom::InitialEvents
    } else if rv.is_empty() || rv == "0" {
        WatchFrom::Now
    } else {
        WatchFrom::Version(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        )
    };
    let ns = target.namespace.clone();
    let started = shared.store().watch(&target.ty, ns.as_deref(), &sel, from);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    let start = match started {
        Ok(s) => s,
        Err(e) => {
            // Like the real server: 200, one ERROR event, end of stream.
            let _ = tx.try_send(Ok(watch_line("ERROR", &e.status())));
            return Ok(response);
        }
    };
    let target = Target {
        ty: Arc::clone(&target.ty),
        version: target.version.clone(),
        namespace: ns,
        name: None,
        status: false,
        metadata_only: target.metadata_only,
    };
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        stream_events(
            shared,
            target,
            sel,
            start,
            tx,
            bookmarks,
            initial_events,
            timeout,
        )
        .await;
    });
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
async fn stream_events(
    shared: Arc<Shared>,
    target: Target,
    sel: Selectors,
    start: crate::store::WatchStart,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    bookmarks: bool,
    initial_events: bool,
    timeout: Option<Duration>,
) {
    let crate::store::WatchStart {
        initial,
        mut rx,
        rv,
    } = start;
    let mut last_rv = 0u64;
    for (change, obj) in initial {
        last_rv = last_rv.max(obj_rv(&obj));
        if tx
            .send(Ok(watch_line(change.as_str(), &render(&target, obj))))
            .await
            .is_err()
        {
            return;
        }
    }
    if initial_events {
        last_rv = last_rv.max(rv);
        if tx.send(Ok(bookmark(&target, rv, true))).await.is_err() {
            return;
        }
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = tokio::time::interval(shared.bookmark_interval);
    ticker.reset();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else {
                    // The store dropped us (outage or shutdown): break the
                    // connection rather than end the watch cleanly.
                    let _ = tx.send(Err(std::io::Error::other("watch closed by server"))).await;
                    return;
                };
                last_rv = last_rv.max(ev.rv);
                if let Some((change, obj)) = filter_event(&ev, &target.ty, target.namespace.as_deref(), &sel)
                    && tx.send(Ok(watch_line(change.as_str(), &render(&target, obj)))).await.is_err()
                {
                    return;
                }
            }
            _ = ticker.tick(), if bookmarks => {
                let current = shared.store().resource_version();
                // Deliver anything already queued first, so a bookmark never
                // claims a version whose event the client has not seen.
                while let Ok(ev) = rx.try_recv() {
                    last_rv = last_rv.max(ev.rv);
                    if let Some((change, obj)) = filter_event(&ev, &target.ty, target.namespace.as_deref(), &sel)
                        && tx.send(Ok(watch_line(change.as_str(), &render(&target, obj)))).await.is_err()
                    {
                        return;
                    }
                }
                last_rv = last_rv.max(current);
                if tx.send(Ok(bookmark(&target, last_rv, false))).await.is_err() {
                    return;
                }
            }
            () = sleep_until(deadline) => return,
            () = tx.closed() => return,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn obj_rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn discovery(
    shared: &Shared,
    route: Route,
    method: &Method,
    accept: &str,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ));
    }
    let store = shared.store();
    let aggregated = accept.contains("as=APIGroupDiscoveryList");
    if aggregated && matches!(route, Route::Api | Route::Apis) {
        let doc = store.registry.aggregated(matches!(route, Route::Api));
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        return Ok((
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
            )],
            body,
        )
            .into_response());
    }
    let doc = match route {
        Route::Health => {
            return Ok((StatusCode::OK, "ok").into_response());
        }
        Route::Version => json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-prodgy-kube-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2025-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        }),
        Route::Api => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}],
        }),
        Route::Apis => store.registry.group_list(),
        Route::Group(g) => store.registry.group(&g).ok_or_else(unknown_path)?,
        Route::Resources(g, v) => store
            .registry
            .resource_list(&g, &v)
            .ok_or_else(unknown_path)?,
        Route::Object(_) => return Err(unknown_path()),
    };
    Ok(json_response(StatusCode::OK, &doc))
}
