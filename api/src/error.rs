//! The one error type of the API and its JSON rendering.
//!
//! Every failure leaves as `{"error":{"code","message"}}` (plus `field` when a
//! single input field is to blame). Internal failures are logged with their
//! cause and answered with a generic message, so database or storage details
//! never reach a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Errors of the API crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The proxy's identity headers are missing or malformed.
    #[error("missing or malformed identity: requests must come through the token proxy")]
    Unauthenticated,
    /// The token does not hold the scope the route needs.
    #[error("this token lacks the {0} scope")]
    InsufficientScope(&'static str),
    /// A resource does not exist for this product (or at all: the two are
    /// indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// No route matches the path.
    #[error("no such endpoint: {method} {path}")]
    RouteNotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// One input field is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, e.g. `config.url`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The body is not valid JSON.
    #[error("{0}")]
    BadJson(String),
    /// The body is valid JSON of the wrong shape.
    #[error("{0}")]
    Unprocessable(String),
    /// A request conflicts with the current state.
    #[error("{message}")]
    Conflict {
        /// Machine-readable code, e.g. `integration_in_use`.
        code: &'static str,
        /// Human explanation.
        message: String,
    },
    /// The body exceeds a configured limit.
    #[error("body exceeds the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// The body has an unsupported media type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A byte range outside the object.
    #[error("range not satisfiable for an object of {0} bytes")]
    RangeNotSatisfiable(u64),
    /// A database failure.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A schema migration failure.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An object-store failure.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// A local I/O failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Encryption or decryption failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// Invalid start-up configuration; the message names the flag.
    #[error("configuration: {0}")]
    Config(String),
    /// Anything else that is our fault.
    #[error("internal: {0}")]
    Internal(String),
}

/// Result alias of the API crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error body every endpoint returns: the contract crate's envelope,
/// the same shape the proxy's refusals have.
pub use prodgy_crds::envelope::{ErrorBody, ErrorDetail};

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthenticated => StatusCode::UNAUTHORIZED,
            Error::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) | Error::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Invalid { .. } | Error::BadJson(_) => StatusCode::BAD_REQUEST,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::RangeNotSatisfiable(_) => StatusCode::RANGE_NOT_SATISFIABLE,
            Error::Database(_)
            | Error::Migrate(_)
            | Error::Store(_)
            | Error::Io(_)
            | Error::Crypto(_)
            | Error::Config(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code; also the `error` label of metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthenticated => "unauthenticated",
            Error::InsufficientScope(_) => "insufficient_scope",
            Error::NotFound(_) => "not_found",
            Error::RouteNotFound { .. } => "route_not_found",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::Invalid { .. } => "invalid_request",
            Error::BadJson(_) => "invalid_json",
            Error::Unprocessable(_) => "unprocessable_entity",
            Error::Conflict { code, .. } => code,
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::RangeNotSatisfiable(_) => "range_not_satisfiable",
            Error::Database(_) | Error::Migrate(_) => "database_error",
            Error::Store(_) | Error::Io(_) => "storage_error",
            Error::Crypto(_) | Error::Config(_) | Error::Internal(_) => "internal_error",
        }
    }

    /// The body a client sees: internal causes are replaced by a generic
    /// message (the cause goes to the log).
    pub fn body(&self) -> ErrorBody {
        let message = if self.status().is_server_error() {
            "internal error; see the server log for the request id".to_owned()
        } else {
            self.to_string()
        };
        let field = match self {
            Error::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        ErrorBody::new(self.code(), message).with_field(field)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, code = self.code(), "request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
        if let Error::RangeNotSatisfiable(size) = self
            && let Ok(v) = http::HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response
                .headers_mut()
                .insert(http::header::CONTENT_RANGE, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let e = Error::Internal("secret path /var/lib/x".into());
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["code"], "internal_error");
        assert!(!body.to_string().contains("/var/lib"));
    }

    #[test]
    fn invalid_names_its_field() {
        let e = Error::invalid("config.url", "must be absolute");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = serde_json::to_value(e.body()).unwrap();
        assert_eq!(body["error"]["field"], "config.url");
        assert_eq!(body["error"]["message"], "config.url: must be absolute");
    }
}
