//! The console's JSON API: each action of the guide is one request, done by
//! the same [`Session`] methods the terminal commands use. The page gets
//! either the result or `{"error":{"code","message"}}` with a message a user
//! can act on; a plaintext token appears only in the body of the create or
//! regenerate answer, which is never cached and never logged.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::ListParams;
use prodgy_crds::Scope;
use serde::Deserialize;
use serde_json::json;

use super::Console;
use crate::Error;
use crate::args::CreateArgs;
use crate::commands::{Issued, previous_valid_until};
use crate::parse::{
    parse_duration_flag, parse_scope, parse_source_range, validate_name, validate_product,
};
use crate::render::TokenView;

/// An error as the page receives it.
#[derive(Debug)]
pub struct Failure(pub Error);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code) = classify(&self.0);
        let body = json!({ "error": { "code": code, "message": self.0.to_string() } });
        (status, Json(body)).into_response()
    }
}

/// The HTTP status and a stable code the page can branch on.
pub fn classify(e: &Error) -> (StatusCode, &'static str) {
    match e {
        Error::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
        Error::CrdNotInstalled => (StatusCode::SERVICE_UNAVAILABLE, "crd_missing"),
        Error::NoCluster { .. } => (StatusCode::BAD_GATEWAY, "unreachable"),
        Error::Unauthorized { .. } | Error::Kubeconfig(_) => {
            (StatusCode::BAD_GATEWAY, "credentials")
        }
        Error::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
        Error::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
        Error::InvalidExpiry { .. } => (StatusCode::BAD_REQUEST, "invalid_expiry"),
        Error::InvalidArgument { .. } | Error::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        Error::Refused(_) | Error::Aborted => (StatusCode::CONFLICT, "refused"),
        Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Error::OperatorRejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
        Error::Undeliverable { .. } => (StatusCode::GONE, "undeliverable"),
        Error::Api { .. } | Error::Io(_) | Error::Render(_) | Error::Serve(_) => {
            (StatusCode::BAD_GATEWAY, "failed")
        }
    }
}

type Reply = Result<Response, Failure>;

/// `GET /api/context`: where the console acts and what a form may offer.
pub async fn context(State(console): State<Console>) -> Reply {
    let session = &console.session;
    let mut namespaces = vec![session.namespace().to_owned()];
    // Listing namespaces needs a permission many users lack; the selector
    // then offers the current namespace and accepts any typed one.
    if let Ok(list) = Api::<Namespace>::all(session.client().clone())
        .list(&ListParams::default())
        .await
    {
        namespaces.extend(list.items.into_iter().filter_map(|n| n.metadata.name));
    }
    namespaces.sort();
    namespaces.dedup();
    Ok(Json(json!({
        "namespace": session.namespace(),
        "allNamespaces": console.all_namespaces,
        "namespaces": namespaces,
        "scopes": Scope::ALL.map(Scope::as_str),
    }))
    .into_response())
}

/// The create form, as the page sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateForm {
    namespace: String,
    name: String,
    product: String,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    rate_limit: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    reveal_once: bool,
    #[serde(default)]
    allow_sources: Vec<String>,
    /// `N` or `N/PER`, as `--usage-limit` takes it.
    #[serde(default)]
    usage_limit: Option<String>,
}

impl CreateForm {
    /// The same checks the command line's flags get, then the same args.
    pub fn into_args(self) -> Result<(String, CreateArgs), Error> {
        let invalid =
            |flag: &'static str| move |reason: String| Error::InvalidArgument { flag, reason };
        check_namespace(&self.namespace)?;
        validate_name(&self.name).map_err(invalid("token name"))?;
        validate_product(&self.product).map_err(invalid("product"))?;
        let scopes = self
            .scopes
            .iter()
            .map(|s| parse_scope(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid("scope"))?;
        for (flag, value) in [("rate limit", self.rate_limit), ("burst", self.burst)] {
            if value.is_some_and(|v| !(1..=1_000_000).contains(&v)) {
                return Err(invalid(flag)("must be between 1 and 1000000".into()));
            }
        }
        if self.burst.is_some() && self.rate_limit.is_none() {
            return Err(invalid("burst")("needs a rate limit".into()));
        }
        let allow_sources = self
            .allow_sources
            .iter()
            .map(|s| parse_source_range(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid("allowed source"))?;
        let usage_limit = non_empty(self.usage_limit)
            .map(|l| crate::usage_limit::parse(&l))
            .transpose()
            .map_err(invalid("usage limit"))?;
        let args = CreateArgs {
            name: self.name,
            product: self.product,
            expires: non_empty(self.expires),
            scopes,
            description: non_empty(self.description),
            rate_limit: self.rate_limit,
            burst: self.burst,
            reveal_once: self.reveal_once,
            allow_sources,
            usage_limit,
        };
        Ok((self.namespace, args))
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn check_namespace(ns: &str) -> Result<(), Error> {
    validate_name(ns).map_err(|reason| Error::InvalidArgument {
        flag: "namespace",
        reason,
    })
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| Error::InvalidArgument {
        flag: "request",
        reason: e.to_string(),
    })
}

/// `POST /api/tokens`: create, wait for the operator, answer the token once.
pub async fn create(State(console): State<Console>, body: Bytes) -> Reply {
    let (namespace, args) = parse_body::<CreateForm>(&body)?.into_args()?;
    let session = console.session.in_namespace(&namespace);
    session.apply_new(&args).await?;
    let issued = session.wait_for_issue(&args.name, 0).await?;
    Ok(shown(&issued, args.reveal_once || issued.reveal_once()))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RegenerateForm {
    #[serde(default)]
    grace: Option<String>,
}

/// `POST /api/tokens/{ns}/{name}/regenerate`.
pub async fn regenerate(
    State(console): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let form: RegenerateForm = parse_body(&body)?;
    let grace: Option<Duration> = non_empty(form.grace)
        .map(|g| parse_duration_flag("grace period", &g))
        .transpose()?;
    check_namespace(&namespace)?;
    let session = console.session.in_namespace(&namespace);
    let requested = session.request_regeneration(&name, grace).await?;
    let issued = session.wait_for_issue(&name, requested.target).await?;
    Ok(shown(&issued, issued.reveal_once()))
}

/// The one answer that carries a plaintext token.
fn shown(issued: &Issued, reveal_once: bool) -> Response {
    let body = json!({
        "token": issued.token.expose(),
        "prefix": issued.token.display_prefix(),
        "deliverySecret": issued.secret,
        "revealOnce": reveal_once,
        "previousValidUntil": previous_valid_until(issued),
        "card": TokenView::from_token(&issued.resource),
    });
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `POST /api/tokens/{ns}/{name}/activate`.
pub async fn activate(console: State<Console>, path: Path<(String, String)>) -> Reply {
    toggle(console, path, true).await
}

/// `POST /api/tokens/{ns}/{name}/deactivate`.
pub async fn deactivate(console: State<Console>, path: Path<(String, String)>) -> Reply {
    toggle(console, path, false).await
}

async fn toggle(
    State(console): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
    active: bool,
) -> Reply {
    check_namespace(&namespace)?;
    let changed = console
        .session
        .in_namespace(&namespace)
        .set_active(&name, active)
        .await?;
    Ok(Json(json!({ "active": active, "changed": changed })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeForm {
    confirm: String,
}

/// `POST /api/tokens/{ns}/{name}/revoke`: only with the name typed again.
pub async fn revoke(
    State(console): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let form: RevokeForm = parse_body(&body)?;
    if form.confirm != name {
        return Err(Error::InvalidArgument {
            flag: "confirmation",
            reason: format!("type the token's name ({name}) to revoke it"),
        }
        .into());
    }
    check_namespace(&namespace)?;
    console
        .session
        .in_namespace(&namespace)
        .revoke_confirmed(&name)
        .await?;
    Ok(Json(json!({ "revoked": true })).into_response())
}

/// `DELETE /api/tokens/{ns}/{name}`: removes a revoked token's card.
pub async fn delete(
    State(console): State<Console>,
    Path((namespace, name)): Path<(String, String)>,
) -> Reply {
    check_namespace(&namespace)?;
    console
        .session
        .in_namespace(&namespace)
        .delete_revoked(&name)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What the page shows for a request it should not have made.
pub async fn not_found() -> Failure {
    Failure(Error::Refused("no such console endpoint".into()))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn form(v: Value) -> Result<(String, CreateArgs), Error> {
        serde_json::from_value::<CreateForm>(v).unwrap().into_args()
    }

    #[test]
    fn the_form_gets_the_flags_checks() {
        let (ns, args) = form(json!({
            "namespace": "team-a", "name": "ci", "product": "acme",
            "expires": " ", "description": "CI", "scopes": ["agents:read"],
            "rateLimit": 5, "burst": 10, "revealOnce": true
        }))
        .unwrap();
        assert_eq!(ns, "team-a");
        assert_eq!(args.expires, None);
        assert_eq!(args.scopes, [Scope::AgentsRead]);
        assert_eq!((args.rate_limit, args.burst), (Some(5), Some(10)));
        for (bad, word) in [
            (
                json!({"namespace": "a", "name": "CI", "product": "acme"}),
                "token name",
            ),
            (
                json!({"namespace": "a", "name": "ci", "product": "Acme!"}),
                "product",
            ),
            (
                json!({"namespace": "A", "name": "ci", "product": "acme"}),
                "namespace",
            ),
            (
                json!({"namespace": "a", "name": "ci", "product": "acme", "scopes": ["root"]}),
                "scope",
            ),
            (
                json!({"namespace": "a", "name": "ci", "product": "acme", "rateLimit": 0}),
                "rate limit",
            ),
            (
                json!({"namespace": "a", "name": "ci", "product": "acme", "burst": 3}),
                "burst",
            ),
        ] {
            let e = form(bad).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("invalid {word}:")),
                "{e}"
            );
            assert_eq!(classify(&e).0, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn errors_a_user_can_act_on_keep_their_meaning() {
        let forbidden = Error::Forbidden {
            verb: "patch",
            resource: "apitokens.prodgy.io",
            scope: "namespace \"a\"".into(),
        };
        assert_eq!(classify(&forbidden), (StatusCode::FORBIDDEN, "forbidden"));
        assert_eq!(classify(&Error::CrdNotInstalled).1, "crd_missing");
        let down = Error::NoCluster {
            server: "https://k".into(),
            cause: "refused".into(),
        };
        assert_eq!(classify(&down).1, "unreachable");
        let expiry = Error::InvalidExpiry {
            input: "x".into(),
            reason: "y".into(),
        };
        assert_eq!(classify(&expiry).1, "invalid_expiry");
    }
}
