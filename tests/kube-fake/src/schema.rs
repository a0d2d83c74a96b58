//! Structural-schema handling for custom resources, in the order the real
//! server applies it: prune unknown fields, apply defaults, then validate
//! types, required fields, enums, patterns, lengths, ranges and formats.

use serde_json::{Map, Value};

/// Fills in `default`s of absent fields (and nested ones).
pub(crate) fn apply_defaults(schema: &Value, obj: &mut Value) {
    *obj = kube_cel::apply_defaults(schema, obj);
}

fn preserves_unknown(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true)
}

/// Drops fields the schema does not declare, and nulls of non-nullable
/// fields, as the real server does before defaulting. Returns the paths of
/// the unknown fields dropped (for `fieldValidation=Strict`).
pub(crate) fn prune(schema: &Value, obj: &mut Value) -> Vec<String> {
    let mut unknown = Vec::new();
    prune_inner(schema, obj, "", &mut unknown);
    unknown
}

fn prune_inner(schema: &Value, value: &mut Value, path: &str, unknown: &mut Vec<String>) {
    let root = path.is_empty();
    match value {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keep_unknown = preserves_unknown(schema)
                || additional.is_some()
                || schema["x-kubernetes-embedded-resource"].as_bool() == Some(true);
            map.retain(|k, v| {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    return true;
                }
                let sub = props.and_then(|p| p.get(k)).or(additional);
                match sub {
                    Some(s) => !(v.is_null() && s["nullable"].as_bool() != Some(true)),
                    None if keep_unknown => true,
                    None => {
                        unknown.push(join(path, k));
                        false
                    }
                }
            });
            for (k, v) in map.iter_mut() {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    prune_inner(s, v, &join(path, k), unknown);
                }
            }
        }
        Value::Array(items) if schema["items"].is_object() => {
            for (i, v) in items.iter_mut().enumerate() {
                prune_inner(&schema["items"], v, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Validates against the schema; messages are phrased like the server's
/// field errors, e.g. `spec.product: Required value`.
pub(crate) fn validate(schema: &Value, obj: &Value) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    if let (Some(props), Some(map)) = (schema["properties"].as_object(), obj.as_object()) {
        check_required(schema, map, "", &mut errors);
        for (k, v) in map {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(s) = props.get(k) {
                walk(s, v, k, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn check_required(schema: &Value, map: &Map<String, Value>, path: &str, errors: &mut Vec<String>) {
    for r in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(r) {
            errors.push(format!("{}: Required value", join(path, r)));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn walk(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            errors.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must not be null"
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
    if let Some(want) = schema["type"].as_str() {
        let have = type_name(v);
        let ok = have == want
            || (want == "number" && have == "integer")
            || (int_or_string && matches!(have, "integer" | "string"));
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""
            ));
            return;
        }
    }
    if let Some(options) = schema["enum"].as_array()
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {v}: supported values: {}",
            supported.join(", ")
        ));
    }
    match v {
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => {
            if let (Some(min), Some(x)) = (schema["minimum"].as_f64(), n.as_f64())
                && x < min
            {
                errors.push(format!("{path}: Invalid value: {n}: {path} in body should be greater than or equal to {min}"));
            }
            if let (Some(max), Some(x)) = (schema["maximum"].as_f64(), n.as_f64())
                && x > max
            {
                errors.push(format!("{path}: Invalid value: {n}: {path} in body should be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                errors.push(format!(
                    "{path}: Too many: {}: must have at most {max} items",
                    items.len()
                ));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {}: {path} in body should have at least {min} items",
                    items.len()
                ));
            }
            if schema["x-kubernetes-list-type"].as_str() == Some("set") {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        errors.push(format!("{path}[{i}]: Duplicate value: {item}"));
                    }
                }
            }
            for (i, item) in items.iter().enumerate() {
                walk(&schema["items"], item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(map) => {
            check_required(schema, map, path, errors);
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                    walk(s, child, &join(path, k), errors);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<String>) {
    let len = s.chars().count() as u64;
    if let Some(max) = schema["maxLength"].as_u64()
        && len > max
    {
        errors.push(format!(
            "{path}: Too long: may not be more than {max} bytes"
        ));
    }
    if let Some(min) = schema["minLength"].as_u64()
        && len < min
    {
        errors.push(format!(
            "{path}: Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
        ));
    }
    if let Some(p) = schema["pattern"].as_str() {
        match regex::Regex::new(p) {
            Ok(re) if !re.is_match(s) => errors.push(format!(
                "{path}: Invalid value: \"{s}\": {path} in body should match '{p}'"
            )),
            Ok(_) => {}
            Err(_) => errors.push(format!(
                "{path}: Invalid value: \"{s}\": schema pattern '{p}' does not compile"
            )),
        }
    }
    match schema["format"].as_str() {
        Some("date-time") if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
            errors.push(format!(
                "{path}: Invalid value: \"{s}\": {path} in body must be of type date-time: \"{s}\""
            ));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["product"], "properties": {
            "product": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
            "active": {"type": "boolean", "default": true},
            "mode": {"type": "string", "enum": ["A", "B"], "nullable": true},
            "n": {"type": "integer", "minimum": 0.0},
            "at": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        }}}})
    }

    #[test]
    fn prune_then_default_then_validate() {
        let mut obj = json!({"metadata": {"name": "x"}, "spec": {"product": "acme", "junk": 1, "mode": null}, "junk": 2});
        assert_eq!(prune(&schema(), &mut obj), ["junk", "spec.junk"]);
        apply_defaults(&schema(), &mut obj);
        assert_eq!(
            obj,
            json!({"metadata": {"name": "x"}, "spec": {"product": "acme", "active": true, "mode": null}})
        );
        validate(&schema(), &obj).unwrap();
    }

    #[test]
    fn every_constraint_is_enforced() {
        let cases = [
            (json!({"spec": {}}), "spec.product: Required value"),
            (json!({"spec": {"product": "ACME"}}), "should match"),
            (json!({"spec": {"product": "abcdef"}}), "Too long"),
            (
                json!({"spec": {"product": "a", "active": "yes"}}),
                "must be of type boolean",
            ),
            (
                json!({"spec": {"product": "a", "mode": "C"}}),
                "Unsupported value",
            ),
            (
                json!({"spec": {"product": "a", "n": -1}}),
                "greater than or equal to 0",
            ),
            (
                json!({"spec": {"product": "a", "at": "tomorrow"}}),
                "date-time",
            ),
            (
                json!({"spec": {"product": "a", "tags": ["x", "y", "z"]}}),
                "Too many",
            ),
            (
                json!({"spec": {"product": "a", "tags": ["x", "x"]}}),
                "Duplicate value",
            ),
        ];
        for (obj, want) in cases {
            let errs = validate(&schema(), &obj).unwrap_err();
            assert!(errs.iter().any(|e| e.contains(want)), "{obj}: {errs:?}");
        }
    }
}
