//! Errors: [`Error`] for the harness API, [`ApiError`] for what the server
//! answers over HTTP as a Kubernetes `Status`.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

/// Errors of the harness API (starting the server, registering types).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving the loopback socket failed.
    #[error("cannot serve on loopback: {0}")]
    Io(#[from] std::io::Error),
    /// A CRD cannot be served.
    #[error("invalid CustomResourceDefinition: {0}")]
    InvalidCrd(String),
    /// A CEL rule in a CRD does not compile.
    #[error("invalid CEL rule: {0}")]
    InvalidRule(String),
    /// A value could not be (de)serialized.
    #[error("serialization failed: {0}")]
    Json(#[from] serde_json::Error),
    /// Building the kubeconfig or client failed.
    #[error("client configuration failed: {0}")]
    Client(String),
    /// The TLS certificate or key cannot be served.
    #[error("TLS: {0}")]
    Tls(String),
    /// A direct store operation was refused, with the server's reason.
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure answered as a Kubernetes `Status` object.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `Status.reason`, e.g. `NotFound`, `Conflict`, `Invalid`.
    pub reason: &'static str,
    /// Human message, phrased like the real API server's.
    pub message: String,
    /// `Status.details`, when the error concerns one object.
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub(crate) fn with_details(mut self, name: &str, group: &str, kind: &str) -> Self {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "NotFound", message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "Conflict", message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub(crate) fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// The `Status` object the server writes.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response(code, &self.status())
    }
}

/// A JSON response with the content type the Kubernetes API uses.
pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}
