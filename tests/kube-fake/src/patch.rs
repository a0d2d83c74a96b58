//! Patch application: JSON merge patch (RFC 7386, also standing in for
//! strategic merge and server-side apply) and JSON patch (RFC 6902).

use serde_json::Value;

use crate::error::ApiError;

/// Applies an RFC 7386 merge patch in place.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<Vec<String>, ApiError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| invalid_patch(&format!("invalid JSON pointer {path:?}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn invalid_patch(msg: &str) -> ApiError {
    ApiError::invalid(format!(
        "the server rejected our request due to an error in our request: {msg}"
    ))
}

fn array_index(a: &[Value], token: &str, for_insert: bool) -> Result<usize, ApiError> {
    if for_insert && token == "-" {
        return Ok(a.len());
    }
    let i: usize = token
        .parse()
        .map_err(|_| invalid_patch(&format!("invalid array index {token:?}")))?;
    let limit = if for_insert {
        a.len()
    } else {
        a.len().saturating_sub(1)
    };
    if i > limit || (!for_insert && a.is_empty()) {
        return Err(invalid_patch(&format!("array index {i} out of bounds")));
    }
    Ok(i)
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for t in tokens {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| invalid_patch(&format!("missing path component {t:?}")))?,
            Value::Array(a) => {
                let i = array_index(a, t, false)?;
                &mut a[i]
            }
            _ => return Err(invalid_patch(&format!("cannot descend into {t:?}"))),
        };
    }
    Ok(cur)
}

fn get<'a>(doc: &'a Value, path: &str) -> Result<&'a Value, ApiError> {
    let mut cur = doc;
    for t in split_pointer(path)? {
        cur = match cur {
            Value::Object(m) => m
                .get(&t)
                .ok_or_else(|| invalid_patch(&format!("path {path:?} does not exist")))?,
            Value::Array(a) => &a[array_index(a, &t, false)?],
            _ => return Err(invalid_patch(&format!("path {path:?} does not exist"))),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let tokens = split_pointer(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = array_index(a, last, true)?;
            a.insert(i, value);
        }
        _ => return Err(invalid_patch(&format!("cannot add at {path:?}"))),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let tokens = split_pointer(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Err(invalid_patch("cannot remove the whole document"));
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| invalid_patch(&format!("path {path:?} does not exist"))),
        Value::Array(a) => {
            let i = array_index(a, last, false)?;
            Ok(a.remove(i))
        }
        _ => Err(invalid_patch(&format!("path {path:?} does not exist"))),
    }
}

/// The `test` operation. As on a real API server, a member missing from an
/// object that exists tests equal to `null`: kube-runtime's finalizer
/// helper tests `/metadata/finalizers` against null before adding the first
/// finalizer.
fn test(doc: &Value, path: &str, expected: &Value) -> Result<bool, ApiError> {
    match get(doc, path) {
        Ok(actual) => Ok(actual == expected),
        Err(missing) => {
            // The pointer up to its last token is the parent's (still escaped).
            let parent = &path[..path.rfind('/').unwrap_or(0)];
            let in_object = matches!(get(doc, parent), Ok(Value::Object(_)));
            if expected.is_null() && in_object {
                Ok(true)
            } else {
                Err(missing)
            }
        }
    }
}

/// Applies an RFC 6902 JSON patch; a failed `test` aborts the whole patch.
pub(crate) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| ApiError::bad_request("json patch must be an array of operations"))?;
    let mut work = doc.clone();
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| invalid_patch("operation without path"))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| invalid_patch(&format!("operation on {path:?} needs a value")))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| invalid_patch(&format!("operation on {path:?} needs from")))
        };
        match op["op"].as_str() {
            Some("add") => add(&mut work, path, value()?)?,
            Some("remove") => {
                remove(&mut work, path)?;
            }
            Some("replace") => {
                remove(&mut work, path)?;
                add(&mut work, path, value()?)?;
            }
            Some("move") => {
                let v = remove(&mut work, from()?)?;
                add(&mut work, path, v)?;
            }
            Some("copy") => {
                let v = get(&work, from()?)?.clone();
                add(&mut work, path, v)?;
            }
            Some("test") => {
                let expected = value()?;
                if !test(&work, path, &expected)? {
                    return Err(invalid_patch(&format!("test failed at {path:?}")));
                }
            }
            other => return Err(invalid_patch(&format!("unknown operation {other:?}"))),
        }
    }
    *doc = work;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut doc, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(doc, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut doc = json!({"metadata": {"finalizers": ["a", "b"]}, "x": 1});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": "a"},
                {"op": "remove", "path": "/metadata/finalizers/0"},
                {"op": "add", "path": "/metadata/finalizers/-", "value": "c"},
                {"op": "replace", "path": "/x", "value": 2},
                {"op": "copy", "from": "/x", "path": "/y"},
                {"op": "move", "from": "/y", "path": "/z"},
            ]),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"metadata": {"finalizers": ["b", "c"]}, "x": 2, "z": 2})
        );
    }

    #[test]
    fn a_missing_member_tests_equal_to_null() {
        let mut doc = json!({"metadata": {"name": "t"}});
        json_patch(
            &mut doc,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["f"]},
            ]),
        )
        .unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["f"]));
        let not_null = json!([{"op": "test", "path": "/metadata/labels", "value": {}}]);
        assert_eq!(json_patch(&mut doc, &not_null).unwrap_err().code, 422);
        let no_parent = json!([{"op": "test", "path": "/spec/x", "value": null}]);
        assert_eq!(json_patch(&mut doc, &no_parent).unwrap_err().code, 422);
    }

    #[test]
    fn failed_test_leaves_document_untouched() {
        let mut doc = json!({"x": 1});
        let err = json_patch(
            &mut doc,
            &json!([{"op": "replace", "path": "/x", "value": 5}, {"op": "test", "path": "/x", "value": 1}]),
        )
        .unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(doc, json!({"x": 1}));
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
