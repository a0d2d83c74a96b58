//! `{{input.x}}` templates for agent requests.
//!
//! A placeholder names a path into the execution input: `{{input}}`,
//! `{{input.user.id}}`, `{{input.items.0}}`. In URLs values are
//! percent-encoded; in a JSON body a string that is exactly one placeholder
//! becomes the input value itself (numbers stay numbers), otherwise the value
//! is spliced in as text. A missing value is an error, not an empty string.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// Characters left as-is in a URL component (RFC 3986 unreserved).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, PartialEq)]
enum Part<'a> {
    Text(&'a str),
    Var(Vec<&'a str>),
}

fn parse(template: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            parts.push(Part::Text(&rest[..start]));
        }
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed placeholder in {template:?}"))?;
        let expr = after[..end].trim();
        let mut path = expr.split('.');
        if path.next() != Some("input") {
            return Err(format!(
                "unknown placeholder {{{{{expr}}}}}: placeholders start with `input`"
            ));
        }
        let segments: Vec<&str> = path.collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("malformed placeholder {{{{{expr}}}}}"));
        }
        parts.push(Part::Var(segments));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest));
    }
    Ok(parts)
}

fn lookup<'v>(input: &'v Value, path: &[&str]) -> Result<&'v Value, String> {
    let mut v = input;
    for seg in path {
        v = match v {
            Value::Object(map) => map.get(*seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("input.{} is missing", path.join(".")))?;
    }
    Ok(v)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks a template's syntax.
pub fn validate(template: &str) -> Result<(), String> {
    parse(template).map(|_| ())
}

/// Checks every string in a JSON template.
pub fn validate_json(template: &Value) -> Result<(), String> {
    match template {
        Value::String(s) => validate(s),
        Value::Array(items) => items.iter().try_for_each(validate_json),
        Value::Object(map) => map.values().try_for_each(validate_json),
        _ => Ok(()),
    }
}

/// Renders text (headers, question prompts).
pub fn render_text(template: &str, input: &Value) -> Result<String, String> {
    render_with(template, input, |s| s)
}

/// Renders a URL: substituted values are percent-encoded.
pub fn render_url(template: &str, input: &Value) -> Result<String, String> {
    render_with(template, input, |s| {
        utf8_percent_encode(&s, COMPONENT).to_string()
    })
}

fn render_with(
    template: &str,
    input: &Value,
    encode: impl Fn(String) -> String,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for part in parse(template)? {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var(path) => out.push_str(&encode(as_text(lookup(input, &path)?))),
        }
    }
    Ok(out)
}

/// Renders a JSON body template.
pub fn render_json(template: &Value, input: &Value) -> Result<Value, String> {
    Ok(match template {
        Value::String(s) => {
            let parts = parse(s)?;
            if let [Part::Var(path)] = parts.as_slice() {
                lookup(input, path)?.clone()
            } else {
                Value::String(render_text(s, input)?)
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_json(i, input))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, input)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_encode_what_they_substitute() {
        let input = json!({"q": "a b/c?", "id": 7, "tags": ["x", "y"]});
        assert_eq!(
            render_url(
                "https://h/s/{{input.id}}?q={{ input.q }}&t={{input.tags.1}}",
                &input
            )
            .unwrap(),
            "https://h/s/7?q=a%20b%2Fc%3F&t=y"
        );
    }

    #[test]
    fn json_keeps_types_for_whole_placeholders() {
        let input = json!({"n": 3, "user": {"name": "Ann"}});
        let t = json!({"count": "{{input.n}}", "greeting": "hi {{input.user.name}}", "all": "{{input}}", "k": true});
        assert_eq!(
            render_json(&t, &input).unwrap(),
            json!({"count": 3, "greeting": "hi Ann", "all": input, "k": true})
        );
    }

    #[test]
    fn missing_values_and_bad_syntax_are_errors() {
        assert_eq!(
            render_text("{{input.nope}}", &json!({})).unwrap_err(),
            "input.nope is missing"
        );
        assert!(validate("{{input.x").is_err());
        assert!(
            validate("{{env.HOME}}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(validate("{{input..x}}").is_err());
        assert!(validate_json(&json!({"a": ["{{secrets}}"]})).is_err());
        assert!(validate("plain").is_ok());
    }
}
