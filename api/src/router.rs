//! The data router and its OpenAPI document, built from the same handler
//! list so they cannot drift apart.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, ErrorBody};
use crate::state::AppState;
use crate::{agents, chat, integrations, knowledge, storage, triggers, webhooks};
use crate::{identity, unread};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Prodgy API",
        description = "The product API behind the token proxy. Call it with \
            `Authorization: Bearer prod_…`; the proxy verifies the token and the API \
            scopes every request to the token's product. Errors are \
            `{\"error\":{\"code\",\"message\"}}`."
    ),
    paths(webhooks::send, openapi_json),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "agents", description = "Install, update and delete agents"),
        (name = "executions", description = "Runs of an agent"),
        (name = "triggers", description = "Manual, webhook and schedule triggers"),
        (name = "webhooks", description = "Events that fire webhook triggers"),
        (name = "integrations", description = "Outside services and their encrypted credentials"),
        (name = "knowledge-base", description = "Documents and full-text search"),
        (name = "storage", description = "Streamed file upload and download"),
        (name = "assistant", description = "Chat over Server-Sent Events"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("prod_…")
                    .build(),
            ),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// The documented routes (everything under `/api`).
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(agents::list, agents::install))
        .routes(routes!(
            agents::get,
            agents::put,
            agents::patch,
            agents::delete
        ))
        .routes(routes!(agents::list_executions))
        .routes(routes!(agents::get_execution))
        .routes(routes!(triggers::list, triggers::create))
        .routes(routes!(triggers::get, triggers::patch, triggers::delete))
        .routes(routes!(triggers::execute))
        .routes(routes!(integrations::list, integrations::create))
        .routes(routes!(
            integrations::get,
            integrations::put,
            integrations::patch,
            integrations::delete
        ))
        .routes(routes!(knowledge::list))
        .routes(routes!(knowledge::search, knowledge::search_post))
        .routes(routes!(knowledge::get))
        .routes(routes!(storage::list, storage::upload))
        .routes(routes!(storage::download, storage::put, storage::delete))
        .routes(routes!(chat::chat, chat::list))
        .routes(routes!(chat::history, chat::delete))
        // A catch-all path segment is not expressible in OpenAPI; the
        // document lists it as `/api/webhook/{path}` (see ApiDoc).
        .route("/api/webhook/{*path}", post(webhooks::send))
}

/// The OpenAPI document (JSON).
pub fn openapi_document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let (_, doc) = documented().split_for_parts();
        doc.to_pretty_json().unwrap_or_else(|_| "{}".into())
    })
}

/// The OpenAPI document of this API.
#[utoipa::path(get, operation_id = "openapi", path = "/api/openapi.json", tag = "meta",
    security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

async fn route_not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound {
        method: method.to_string(),
        path: uri.path().chars().take(200).collect(),
    }
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// Records request metrics by route group (a bounded label).
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let group = prodgy_crds::scope::route(req.method().as_str(), req.uri().path())
        .group
        .as_str();
    let method = match *req.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE => req.method().as_str().to_owned(),
        _ => "OTHER".to_owned(),
    };
    let timer = state
        .metrics
        .latency
        .with_label_values(&[group])
        .start_timer();
    let resp = next.run(req).await;
    timer.observe_duration();
    state
        .metrics
        .requests
        .with_label_values(&[group, &method, resp.status().as_str()])
        .inc();
    resp
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    Error::Internal("handler panicked".into()).into_response()
}

/// The data router: `/api/…` behind identity, plus the OpenAPI document.
pub fn app(state: AppState) -> Router {
    let (api, _) = documented().split_for_parts();
    let api = api.layer(middleware::from_fn(identity::require_identity));
    Router::new()
        .merge(api)
        .route("/api/openapi.json", get(openapi_json))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Every body is read with an explicit limit by our own extractors.
        .layer(DefaultBodyLimit::disable())
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id
                    )
                }))
                .layer(CatchPanicLayer::custom(panicked))
                .layer(middleware::from_fn_with_state(state.clone(), track)),
        )
        // Outermost, so that every answer, a refusal of any layer included,
        // says whether the connection is still in step.
        .layer(middleware::from_fn(unread::close_unless_body_read))
        .with_state(state)
}
