//! The caller, as verified by the proxy.
//!
//! The API trusts only the identity headers the proxy injects (see
//! `prodgy_crds::identity`): a request without them is 401. Every query is
//! then scoped to `Caller::product`. The route's scope is checked again here
//! (defence in depth: the proxy already enforced it).

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use prodgy_crds::identity::{ALL_SCOPES, PRODUCT, SCOPES, TOKEN, TOKEN_UID};
use prodgy_crds::{Scope, scope};

use crate::error::Error;

/// Scopes granted to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// `*`: every scope.
    All,
    /// Exactly these (possibly none).
    Only(Vec<Scope>),
}

impl Grant {
    /// Whether `scope` is granted.
    pub fn allows(&self, scope: Scope) -> bool {
        match self {
            Grant::All => true,
            Grant::Only(list) => list.contains(&scope),
        }
    }
}

/// The verified caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The product every query is scoped to.
    pub product: String,
    /// The token as `<namespace>/<name>`, when sent.
    pub token: Option<String>,
    /// The token's UID, when sent.
    pub token_uid: Option<String>,
    /// Granted scopes.
    pub grant: Grant,
}

impl Caller {
    /// Reads the identity headers; `None` when missing or malformed.
    pub fn from_headers(headers: &HeaderMap) -> Option<Caller> {
        let text = |name: &str| -> Option<String> {
            let v = headers.get(name)?.to_str().ok()?.trim();
            (!v.is_empty() && v.len() <= 253 && !v.chars().any(char::is_control))
                .then(|| v.to_owned())
        };
        let product = text(PRODUCT)?;
        let scopes = headers.get(SCOPES)?.to_str().ok()?.trim();
        let grant = if scopes == ALL_SCOPES {
            Grant::All
        } else {
            // Unknown scope names grant nothing; an empty list grants nothing.
            Grant::Only(
                scopes
                    .split(',')
                    .filter_map(|s| Scope::parse(s.trim()))
                    .collect(),
            )
        };
        Some(Caller {
            product,
            token: text(TOKEN),
            token_uid: text(TOKEN_UID),
            grant,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .or_else(|| Caller::from_headers(&parts.headers))
            .ok_or(Error::Unauthenticated)
    }
}

/// Middleware: 401 without identity, 403 without the route's scope.
pub async fn require_identity(mut req: Request, next: Next) -> Response {
    let Some(caller) = Caller::from_headers(req.headers()) else {
        return Error::Unauthenticated.into_response();
    };
    let route = scope::route(req.method().as_str(), req.uri().path());
    if let Some(needed) = route.scope
        && !caller.grant.allows(needed)
    {
        return Error::InsufficientScope(needed.as_str()).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn identity_needs_product_and_scopes() {
        assert!(Caller::from_headers(&headers(&[])).is_none());
        assert!(Caller::from_headers(&headers(&[(PRODUCT, "a")])).is_none());
        assert!(Caller::from_headers(&headers(&[(PRODUCT, " "), (SCOPES, "*")])).is_none());
        let c = Caller::from_headers(&headers(&[(PRODUCT, "a"), (SCOPES, "*")])).unwrap();
        assert_eq!(c.product, "a");
        assert!(c.grant.allows(Scope::StorageWrite));
    }

    #[test]
    fn listed_scopes_grant_only_themselves() {
        let c = Caller::from_headers(&headers(&[
            (PRODUCT, "a"),
            (SCOPES, "agents:read, bogus"),
            (TOKEN, "team/ci"),
        ]))
        .unwrap();
        assert!(c.grant.allows(Scope::AgentsRead));
        assert!(!c.grant.allows(Scope::AgentsWrite));
        assert_eq!(c.token.as_deref(), Some("team/ci"));
        let none = Caller::from_headers(&headers(&[(PRODUCT, "a"), (SCOPES, "")])).unwrap();
        assert!(!none.grant.allows(Scope::AgentsRead));
    }
}
