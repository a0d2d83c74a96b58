//! CRD `x-kubernetes-validations` (CEL), including transition rules that read
//! `oldSelf`, evaluated with `kube-cel` exactly as the CRD declares them.

use std::sync::Arc;

use kube_cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

use crate::error::{ApiError, Error, Result};

/// The compiled rules of one CRD version (empty when it declares none).
#[derive(Debug, Default)]
pub(crate) struct RuleSet {
    compiled: Option<Arc<CompiledSchema>>,
}

fn has_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_rules),
        Value::Array(a) => a.iter().any(has_rules),
        _ => false,
    }
}

fn first_compile_error(c: &CompiledSchema) -> Option<String> {
    if let Some(e) = c.compilation_errors().first() {
        return Some(e.to_string());
    }
    c.properties
        .values()
        .chain(c.items.as_deref())
        .chain(c.additional_properties.as_deref())
        .chain(c.all_of.iter())
        .chain(c.one_of.iter())
        .chain(c.any_of.iter())
        .find_map(first_compile_error)
}

impl RuleSet {
    /// Compiles every rule of an `openAPIV3Schema`; a rule that does not
    /// compile makes the CRD unusable, as on a real server.
    pub fn compile(schema: &Value) -> Result<Self> {
        if !has_rules(schema) {
            return Ok(RuleSet::default());
        }
        let compiled = compile_schema(schema);
        if let Some(e) = first_compile_error(&compiled) {
            return Err(Error::InvalidRule(e));
        }
        Ok(RuleSet {
            compiled: Some(Arc::new(compiled)),
        })
    }

    /// Evaluates the rules against `obj` (and `old` for transition rules).
    /// `what` names the object in the message, e.g. `ApiToken.prodgy.io "t"`.
    pub fn check(&self, what: &str, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        let Some(compiled) = &self.compiled else {
            return Ok(());
        };
        match Validator::new().validate_compiled(compiled, obj, old) {
            Ok(()) => Ok(()),
            Err(errors) => {
                let causes: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        let field = if e.field_path.is_empty() {
                            "<root>"
                        } else {
                            e.field_path.as_str()
                        };
                        format!("{field}: Invalid value: \"object\": {}", e.message)
                    })
                    .collect();
                let msg = if causes.len() == 1 {
                    causes.join("")
                } else {
                    format!("[{}]", causes.join(", "))
                };
                Err(ApiError::invalid(format!("{what} is invalid: {msg}")))
            }
        }
    }
}
