//! The resource types the server knows: a fixed set of built-ins plus every
//! custom resource registered from a `CustomResourceDefinition`, and the
//! discovery documents derived from them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::cel::RuleSet;
use crate::error::{Error, Result};

/// One served resource type (all served versions of one group/plural).
#[derive(Debug)]
pub(crate) struct ResourceType {
    pub group: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub versions: Vec<Version>,
    /// Registered from a CRD (generation, status and schema rules apply).
    pub custom: bool,
}

/// One served version of a resource type.
#[derive(Debug)]
pub(crate) struct Version {
    pub name: String,
    pub status: bool,
    pub schema: Option<Value>,
    pub rules: RuleSet,
}

impl ResourceType {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            list_kind: format!("{kind}List"),
            namespaced,
            short_names: Vec::new(),
            versions: vec![Version {
                name: version.into(),
                status: plural == "namespaces" || plural == "customresourcedefinitions",
                schema: None,
                rules: RuleSet::default(),
            }],
            custom: false,
        }
    }

    /// `v1` or `group/v1`.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// The storage version: the first served one.
    pub fn storage_version(&self) -> &Version {
        // Registration guarantees at least one version.
        &self.versions[0]
    }

    pub fn version(&self, name: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.name == name)
    }

    /// Whether any version has the status subresource.
    pub fn has_status(&self) -> bool {
        self.versions.iter().any(|v| v.status)
    }

    /// `secrets` or `apitokens.prodgy.io`, as the real server names a
    /// resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Builds a resource type from a CRD manifest.
    pub fn from_crd(crd: &Value) -> Result<Self> {
        let spec = &crd["spec"];
        let field = |v: &Value, what: &str| -> Result<String> {
            v.as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| Error::InvalidCrd(format!("{what} is required")))
        };
        let group = field(&spec["group"], "spec.group")?;
        let names = &spec["names"];
        let plural = field(&names["plural"], "spec.names.plural")?;
        let kind = field(&names["kind"], "spec.names.kind")?;
        let singular = names["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase());
        let list_kind = names["listKind"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List"));
        let namespaced = match spec["scope"].as_str() {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => {
                return Err(Error::InvalidCrd(format!(
                    "spec.scope must be Namespaced or Cluster, not {other:?}"
                )));
            }
        };
        let expected_name = format!("{plural}.{group}");
        if crd["metadata"]["name"].as_str() != Some(expected_name.as_str()) {
            return Err(Error::InvalidCrd(format!(
                "metadata.name must be {expected_name}"
            )));
        }
        let short_names = names["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut versions = Vec::new();
        let mut storage = None;
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let name = field(&v["name"], "spec.versions[].name")?;
            let schema = v["schema"]["openAPIV3Schema"].clone();
            let schema = (!schema.is_null()).then_some(schema);
            let rules = match &schema {
                Some(s) => RuleSet::compile(s)?,
                None => RuleSet::default(),
            };
            let version = Version {
                status: v["subresources"]["status"].is_object(),
                name,
                schema,
                rules,
            };
            if v["storage"].as_bool() == Some(true) && storage.is_none() {
                storage = Some(versions.len());
            }
            versions.push(version);
        }
        if versions.is_empty() {
            return Err(Error::InvalidCrd("no served version".into()));
        }
        // The storage version goes first so `storage_version` finds it.
        if let Some(i) = storage {
            let v = versions.remove(i);
            versions.insert(0, v);
        }
        Ok(ResourceType {
            group,
            plural,
            singular,
            kind,
            list_kind,
            namespaced,
            short_names,
            versions,
            custom: true,
        })
    }
}

/// The registry of served types, keyed by (group, plural).
#[derive(Clone, Debug)]
pub(crate) struct Registry {
    types: BTreeMap<(String, String), Arc<ResourceType>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let mut types = BTreeMap::new();
        for t in [
            ResourceType::builtin("", "v1", "namespaces", "Namespace", false),
            ResourceType::builtin("", "v1", "secrets", "Secret", true),
            ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true),
            ResourceType::builtin("", "v1", "events", "Event", true),
            ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true),
            ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
            ResourceType::builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            ),
        ] {
            types.insert((t.group.clone(), t.plural.clone()), Arc::new(t));
        }
        Registry { types }
    }

    pub fn get(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .get(&(group.to_string(), plural.to_string()))
            .cloned()
    }

    /// Finds the type served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.get(group, plural)
            .filter(|t| t.version(version).is_some())
    }

    pub fn insert(&mut self, t: ResourceType) -> Arc<ResourceType> {
        let t = Arc::new(t);
        self.types
            .insert((t.group.clone(), t.plural.clone()), Arc::clone(&t));
        t
    }

    pub fn remove(&mut self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.remove(&(group.to_string(), plural.to_string()))
    }

    /// Groups (other than core) with their versions, in a stable order.
    fn groups(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for t in self.types.values().filter(|t| !t.group.is_empty()) {
            let versions = out.entry(t.group.as_str()).or_default();
            for v in &t.versions {
                if !versions.contains(&v.name.as_str()) {
                    versions.push(v.name.as_str());
                }
            }
        }
        out
    }

    /// `/apis`: an `APIGroupList`.
    pub fn group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(g, vs)| group_doc(g, &vs))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/{group}`: an `APIGroup`, if served.
    pub fn group(&self, group: &str) -> Option<Value> {
        self.groups().get(group).map(|vs| {
            let mut doc = group_doc(group, vs);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
    }

    /// `/api/v1` or `/apis/{group}/{version}`: an `APIResourceList`, if served.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for t in self
            .types
            .values()
            .filter(|t| t.group == group && t.version(version).is_some())
        {
            resources.push(json!({
                "name": t.plural,
                "singularName": t.singular,
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                "shortNames": t.short_names,
            }));
            if t.version(version).is_some_and(|v| v.status) {
                resources.push(json!({
                    "name": format!("{}/status", t.plural),
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "patch", "update"],
                }));
            }
        }
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }
}

impl Registry {
    /// `/api` or `/apis` as an aggregated `APIGroupDiscoveryList` (v2),
    /// for clients that ask for it in `Accept`.
    pub fn aggregated(&self, core: bool) -> Value {
        let mut groups: BTreeMap<&str, BTreeMap<&str, Vec<Value>>> = BTreeMap::new();
        for t in self.types.values().filter(|t| t.group.is_empty() == core) {
            for v in &t.versions {
                let kind = json!({"group": t.group, "version": v.name, "kind": t.kind});
                let mut subresources = Vec::new();
                if v.status {
                    subresources.push(json!({
                        "subresource": "status",
                        "responseKind": kind,
                        "verbs": ["get", "patch", "update"],
                    }));
                }
                groups
                    .entry(t.group.as_str())
                    .or_default()
                    .entry(v.name.as_str())
                    .or_default()
                    .push(json!({
                        "resource": t.plural,
                        "responseKind": kind,
                        "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": t.singular,
                        "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                        "shortNames": t.short_names,
                        "subresources": subresources,
                    }));
            }
        }
        let items: Vec<Value> = groups
            .into_iter()
            .map(|(g, versions)| {
                let versions: Vec<Value> = versions
                    .into_iter()
                    .map(|(v, resources)| json!({"version": v, "resources": resources, "freshness": "Current"}))
                    .collect();
                json!({"metadata": {"name": g}, "versions": versions})
            })
            .collect();
        json!({
            "kind": "APIGroupDiscoveryList",
            "apiVersion": "apidiscovery.k8s.io/v2",
            "metadata": {},
            "items": items,
        })
    }
}

fn group_doc(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = vs.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": vs, "preferredVersion": preferred})
}
