//! The JSON error envelope every component answers with:
//! `{"error":{"code":"…","message":"…"}}` (plus `field` where one input is at
//! fault). The proxy's refusals and forwarding failures and the API's errors
//! are all this one type, so a client parses one shape whoever answered.

use serde::{Deserialize, Serialize};

/// The error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `not_found`.
    pub code: String,
    /// Human explanation; never a secret.
    pub message: String,
    /// The input field at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: None,
            },
        }
    }

    /// The same, naming the input field at fault.
    #[must_use]
    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.error.field = field;
        self
    }

    /// The JSON text.
    pub fn to_json(&self) -> String {
        // Serializing strings into JSON cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_one_shape() {
        let body = ErrorBody::new("unknown_token", "the token \"x\" is not known");
        assert_eq!(
            body.to_json(),
            r#"{"error":{"code":"unknown_token","message":"the token \"x\" is not known"}}"#
        );
        let with = body.with_field(Some("spec.name".into()));
        let back: ErrorBody = serde_json::from_str(&with.to_json()).unwrap();
        assert_eq!(back, with);
        assert_eq!(back.error.field.as_deref(), Some("spec.name"));
    }
}
