//! Small input checks shared by the resources. Pure.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};

/// A display name: 1–200 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if v.chars().count() > 200 {
        return Err(Error::invalid(field, "must be at most 200 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(v.to_owned())
}

/// Free text of at most `max` characters.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    if value.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL"));
    }
    Ok(value.to_owned())
}

/// Decodes a JSON value into a typed config, naming the offending field as
/// `<prefix>.<path>`.
pub fn typed<T: DeserializeOwned>(prefix: &str, value: &Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        Error::invalid(field, e.into_inner().to_string())
    })
}

/// PUT replaces a resource: each listed field must be present.
pub fn required_by_put(fields: &[(&str, bool)]) -> Result<()> {
    match fields.iter().find(|(_, present)| !present) {
        Some((field, _)) => Err(Error::invalid(
            *field,
            "is required by PUT (use PATCH to change some fields)",
        )),
        None => Ok(()),
    }
}

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`)
/// or a value (`Some(Some(v))`), for PATCH bodies.
pub fn double_option<'de, T, D>(de: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(name("name", "  a b ").unwrap(), "a b");
        assert!(name("name", " ").is_err());
        assert!(name("name", &"x".repeat(201)).is_err());
        assert!(name("name", "a\nb").is_err());
    }

    #[test]
    fn typed_errors_carry_the_path() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct C {
            n: u32,
        }
        let e = typed::<C>("config", &serde_json::json!({"n": "x"})).unwrap_err();
        assert!(
            matches!(e, Error::Invalid { ref field, .. } if field == "config.n"),
            "{e}"
        );
        let e = typed::<C>("config", &serde_json::json!({"n": 1, "m": 2})).unwrap_err();
        assert!(
            matches!(e, Error::Invalid { ref field, .. } if field == "config.m"),
            "{e}"
        );
    }
}
