#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The route table the proxy enforces (`prodgy_crds::scope::ROUTES`) against
//! the API's OpenAPI document, both ways: every documented operation falls
//! under a rule of its own tag's group (never `other`), and every rule is
//! reached by some documented operation.

use prodgy_crds::scope::{self, ROUTES, RouteGroup, Rule};
use serde_json::Value;

/// Every (method, concrete path, tag) of the OpenAPI document, with each
/// `{param}` replaced by a sample value.
fn documented_operations() -> Vec<(String, String, String)> {
    let doc: Value = serde_json::from_str(prodgy_api::openapi_document()).unwrap();
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut out = Vec::new();
    for (template, item) in paths {
        let path: String = template
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().unwrap() {
            let tag = op["tags"][0].as_str().unwrap_or("").to_owned();
            out.push((method.to_uppercase(), path.clone(), tag));
        }
    }
    out
}

/// The OpenAPI tag of a group's operations.
fn tag_of(group: RouteGroup) -> String {
    group.as_str().replace('_', "-")
}

#[test]
fn every_documented_operation_maps_to_its_tags_group() {
    let ops = documented_operations();
    assert!(ops.len() > 20, "only {} operations documented", ops.len());
    for (method, path, tag) in &ops {
        let route = scope::route(method, path);
        assert_ne!(route.group, RouteGroup::Other, "{method} {path}");
        assert_eq!(tag_of(route.group), *tag, "{method} {path}");
    }
}

#[test]
fn every_rule_is_reached_by_a_documented_operation() {
    let ops = documented_operations();
    let reached: Vec<&Rule> = ops
        .iter()
        .filter_map(|(method, path, _)| scope::rule_for(method, path))
        .collect();
    for rule in ROUTES {
        assert!(
            reached.iter().any(|r| std::ptr::eq(*r, rule)),
            "no documented operation reaches {rule:?}"
        );
    }
}
