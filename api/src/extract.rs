//! Request extractors whose failures are the API's JSON errors.
//!
//! axum's own extractors answer bad input in plain text; these wrap them so
//! a wrong type, bad JSON, an oversized body or a bad query string gets the
//! usual `{"error":{…}}` with 400, 413, 415 or 422.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::state::AppState;

/// A JSON body, limited to `--max-json-bytes`.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(CONTENT_TYPE)) {
            return Err(Error::UnsupportedMediaType(
                "send the body as application/json".into(),
            ));
        }
        let limit = state.config.limits.max_json_bytes;
        let bytes = read_limited(req.into_body(), limit).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Whether a content type is JSON (`application/json` or `…+json`).
pub fn is_json(value: Option<&http::HeaderValue>) -> bool {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a whole body of at most `limit` bytes (413 beyond).
pub async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Error::PayloadTooLarge(limit as u64)
        } else {
            Error::BadJson(format!("could not read the body: {e}"))
        }
    })
}

/// Parses JSON, naming the path of a wrongly-typed field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => Error::Unprocessable(if path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            }),
            _ => Error::BadJson(format!("body is not valid JSON: {inner}")),
        }
    })
}

/// A query string.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| Error::invalid("query", e.body_text()))
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| Error::invalid("path", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn wrong_types_are_422_and_name_the_path() {
        let e = parse_json::<Shape>(br#"{"name":"x","inner":{"n":"five"}}"#).unwrap_err();
        assert_eq!(e.code(), "unprocessable_entity");
        assert!(e.to_string().starts_with("inner.n:"), "{e}");
        let e = parse_json::<Shape>(br#"{"name":"x""#).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
    }

    #[test]
    fn json_content_types() {
        let ok = |s: &'static str| is_json(Some(&http::HeaderValue::from_static(s)));
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!is_json(None));
    }
}
