//! The object store: every write goes through here, under one lock, so the
//! global resourceVersion, the event history and the live watchers always
//! agree. All decisions (conflicts, finalizers, generation, garbage
//! collection) are made here; the HTTP layer only translates.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::patch;
use crate::schema;
use crate::selector::Selectors;
use crate::types::{Registry, ResourceType};

/// (group, plural, namespace or "", name): sorts like etcd keys.
pub(crate) type ObjKey = (String, String, String, String);

/// The kind of a stored change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One committed change, as kept in history and sent to watchers.
#[derive(Debug)]
pub(crate) struct Event {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub change: Change,
    pub object: Value,
    /// The object before a modification, so selector watches can turn a
    /// change into ADDED/DELETED as the real server does.
    pub old: Option<Value>,
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFrom {
    /// Synthetic ADDED for current objects, then live events.
    Now,
    /// Replay history after this resourceVersion, then live events.
    Version(u64),
    /// Synthetic ADDED, then a BOOKMARK marking the end of initial events.
    InitialEvents,
}

/// Patch flavours the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// How dependents are treated when their owner goes away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

/// The parts of `DeleteOptions` the server honours.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOpts {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub propagation: Propagation,
}

/// One page of a list.
#[derive(Debug)]
pub(crate) struct ListPage {
    pub items: Vec<Value>,
    pub rv: u64,
    pub cont: Option<String>,
    pub remaining: Option<usize>,
}

/// What a watch needs to begin.
#[derive(Debug)]
pub(crate) struct WatchStart {
    pub initial: Vec<(Change, Value)>,
    pub rx: mpsc::UnboundedReceiver<Arc<Event>>,
    pub rv: u64,
}

#[derive(Debug)]
pub(crate) struct Store {
    rv: u64,
    pub registry: Registry,
    objects: BTreeMap<ObjKey, Value>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events at or below this resourceVersion are no longer in history.
    compacted: u64,
    watchers: Vec<mpsc::UnboundedSender<Arc<Event>>>,
    event_counts: HashMap<(String, String), u64>,
    /// Set for the duration of one write made with `fieldValidation=Strict`:
    /// unknown fields are an error instead of being pruned.
    pub strict_fields: bool,
    /// Refuse to create objects in a namespace that does not exist.
    pub require_namespaces: bool,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj["metadata"][field].as_str().filter(|s| !s.is_empty())
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn metadata_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    match &mut obj["metadata"] {
        Value::Object(m) => m,
        // Just made an object above.
        _ => unreachable_metadata(),
    }
}

#[allow(clippy::panic)]
fn unreachable_metadata() -> ! {
    panic!("metadata was just set to an object")
}

/// DNS-1123 subdomain (most names) or label (namespaces).
fn valid_name(name: &str, label: bool) -> bool {
    let max = if label { 63 } else { 253 };
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.'));
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= max
        && ok_chars
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last())
        && (label
            || name
                .split('.')
                .all(|p| ends_ok(p.chars().next()) && ends_ok(p.chars().last())))
}

fn random_suffix() -> String {
    // The same alphabet the real server uses: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4()
        .as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Value::Object(m) = &mut o {
        m.remove("metadata");
        m.remove("status");
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    o
}

impl Store {
    pub fn new(history_limit: usize, require_namespaces: bool) -> Self {
        Store {
            rv: 1,
            registry: Registry::with_builtins(),
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            watchers: Vec::new(),
            event_counts: HashMap::new(),
            strict_fields: false,
            require_namespaces,
        }
    }

    /// A copy that shares nothing with watchers or history (dry runs).
    pub fn detached_copy(&self) -> Store {
        Store {
            rv: self.rv,
            registry: self.registry.clone(),
            objects: self.objects.clone(),
            history: VecDeque::new(),
            history_limit: self.history_limit,
            compacted: self.rv,
            watchers: Vec::new(),
            event_counts: HashMap::new(),
            strict_fields: self.strict_fields,
            require_namespaces: self.require_namespaces,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn event_count(&self, group: &str, plural: &str) -> u64 {
        self.event_counts
            .get(&(group.to_string(), plural.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Forgets all history: any watch resuming from an older
    /// resourceVersion gets `410 Gone`.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Ends every open watch (their streams break, as on a server restart).
    pub fn close_watches(&mut self) {
        self.watchers.clear();
    }

    fn key(ty: &ResourceType, ns: Option<&str>, name: &str) -> ObjKey {
        (
            ty.group.clone(),
            ty.plural.clone(),
            if ty.namespaced {
                ns.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    fn not_found(ty: &ResourceType, name: &str) -> ApiError {
        ApiError::not_found(format!("{} \"{name}\" not found", ty.qualified()))
            .with_details(name, &ty.group, &ty.plural)
    }

    fn what(ty: &ResourceType, name: &str) -> String {
        if ty.group.is_empty() {
            format!("{} \"{name}\"", ty.kind)
        } else {
            format!("{}.{} \"{name}\"", ty.kind, ty.group)
        }
    }

    /// Records a change: bumps the resourceVersion, stamps it on the
    /// object, appends history and fans out to watchers.
    fn emit(
        &mut self,
        key: &ObjKey,
        change: Change,
        mut object: Value,
        old: Option<Value>,
    ) -> Value {
        self.rv += 1;
        metadata_mut(&mut object).insert("resourceVersion".into(), json!(self.rv.to_string()));
        match change {
            Change::Deleted => {
                self.objects.remove(key);
            }
            _ => {
                self.objects.insert(key.clone(), object.clone());
            }
        }
        let event = Arc::new(Event {
            rv: self.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            change,
            object: object.clone(),
            old,
        });
        *self
            .event_counts
            .entry((key.0.clone(), key.1.clone()))
            .or_default() += 1;
        self.history.push_back(Arc::clone(&event));
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        self.watchers.retain(|w| w.send(Arc::clone(&event)).is_ok());
        object
    }

    pub fn get(&self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(ty, ns, name))
            .cloned()
            .ok_or_else(|| Self::not_found(ty, name))
    }

    /// Objects of a type, optionally in one namespace, in key order.
    fn of_type<'a>(
        &'a self,
        ty: &'a ResourceType,
        ns: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjKey, &'a Value)> + 'a {
        let start = (
            ty.group.clone(),
            ty.plural.clone(),
            String::new(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == ty.group && k.1 == ty.plural)
            .filter(move |(k, _)| ns.is_none_or(|ns| !ty.namespaced || k.2 == ns))
    }

    /// Raw objects of a type (for the harness).
    pub fn objects(&self, ty: &ResourceType, ns: Option<&str>) -> Vec<Value> {
        self.of_type(ty, ns).map(|(_, v)| v.clone()).collect()
    }

    pub fn list(
        &self,
        ty: &ResourceType,
        ns: Option<&str>,
        sel: &Selectors,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (after, rv) = match cont.filter(|c| !c.is_empty()) {
            Some(c) => {
                let token: Value = URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                let after = (
                    token["ns"].as_str().unwrap_or_default().to_string(),
                    token["name"].as_str().unwrap_or_default().to_string(),
                );
                let rv = token["rv"].as_u64().unwrap_or(self.rv);
                if rv < self.compacted {
                    return Err(ApiError::gone(
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    ));
                }
                (Some(after), rv)
            }
            None => (None, self.rv),
        };
        let mut matching = self
            .of_type(ty, ns)
            .filter(|(k, _)| {
                after
                    .as_ref()
                    .is_none_or(|(ans, aname)| (&k.2, &k.3) > (ans, aname))
            })
            .filter(|(_, v)| sel.matches(v));
        let limit = limit.filter(|l| *l > 0);
        let mut items = Vec::new();
        let mut last = None;
        for (k, v) in matching.by_ref() {
            if limit.is_some_and(|l| items.len() >= l) {
                // Put nothing back: count this one as remaining below.
                let remaining = 1 + matching.count();
                let (ns, name): (&String, &String) = last.unwrap_or((&k.2, &k.3));
                let token = json!({"rv": rv, "ns": ns, "name": name});
                let token = URL_SAFE_NO_PAD.encode(token.to_string());
                return Ok(ListPage {
                    items,
                    rv,
                    cont: Some(token),
                    remaining: Some(remaining),
                });
            }
            last = Some((&k.2, &k.3));
            items.push(v.clone());
        }
        Ok(ListPage {
            items,
            rv,
            cont: None,
            remaining: None,
        })
    }

    fn check_type_meta(ty: &ResourceType, obj: &Value) -> Result<(), ApiError> {
        if let Some(kind) = obj["kind"].as_str().filter(|k| !k.is_empty())
            && kind != ty.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the provided object ({kind}) does not match the kind of the resource ({})",
                ty.kind
            )));
        }
        if let Some(av) = obj["apiVersion"].as_str().filter(|k| !k.is_empty()) {
            let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            if group != ty.group || ty.version(av.rsplit('/').next().unwrap_or("")).is_none() {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    ty.api_version(&ty.storage_version().name)
                )));
            }
        }
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        Ok(())
    }

    /// Type-specific normalisation, defaults and validation for a write.
    fn admit(
        &self,
        ty: &ResourceType,
        name: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        obj["apiVersion"] = json!(ty.api_version(&ty.storage_version().name));
        obj["kind"] = json!(ty.kind);
        match (ty.group.as_str(), ty.plural.as_str()) {
            ("", "secrets") => admit_secret(obj, old)?,
            ("", "configmaps") => admit_immutable(obj, old, &["data", "binaryData"], "ConfigMap")?,
            ("", "namespaces") if obj["status"]["phase"].as_str().is_none() => {
                obj["status"] = json!({"phase": "Active"});
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let t = ResourceType::from_crd(obj).map_err(|e| {
                    ApiError::invalid(format!(
                        "CustomResourceDefinition \"{name}\" is invalid: {e}"
                    ))
                })?;
                let names = obj["spec"]["names"].clone();
                obj["status"] = json!({
                    "acceptedNames": names,
                    "storedVersions": [t.storage_version().name],
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                         "message": "no conflicts found", "lastTransitionTime": now()},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                         "message": "the initial names have been accepted", "lastTransitionTime": now()},
                    ],
                });
            }
            _ => {}
        }
        if ty.custom {
            let version = ty.storage_version();
            if let Some(s) = &version.schema {
                let unknown = schema::prune(s, obj);
                if self.strict_fields && !unknown.is_empty() {
                    let fields: Vec<String> = unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect();
                    return Err(ApiError::bad_request(format!(
                        "{kind} in version \"{v}\" cannot be handled as a {kind}: strict decoding error: {}",
                        fields.join(", "),
                        kind = ty.kind,
                        v = version.name,
                    )));
                }
                schema::apply_defaults(s, obj);
                schema::validate(s, obj).map_err(|errors| {
                    ApiError::invalid(format!(
                        "{} is invalid: {}",
                        Self::what(ty, name),
                        errors.join(", ")
                    ))
                })?;
            }
            version.rules.check(&Self::what(ty, name), obj, old)?;
        }
        Ok(())
    }

    fn namespace_terminating(&self, ns: &str) -> bool {
        self.objects
            .get(&(
                String::new(),
                "namespaces".into(),
                String::new(),
                ns.to_string(),
            ))
            .is_some_and(|n| n["metadata"]["deletionTimestamp"].is_string())
    }

    pub fn create(
        &mut self,
        ty: &Arc<ResourceType>,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(ty, &obj)?;
        let meta = metadata_mut(&mut obj);
        let ns = if ty.namespaced {
            let path_ns = ns.map(str::to_string);
            let body_ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let ns = match (path_ns, body_ns) {
                (Some(p), Some(b)) if p != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(p), _) => p,
                (None, Some(b)) => b,
                (None, None) => {
                    return Err(ApiError::bad_request(
                        "a namespace is required for a namespaced resource",
                    ));
                }
            };
            meta.insert("namespace".into(), json!(ns));
            Some(ns)
        } else {
            meta.remove("namespace");
            None
        };
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let generate = meta
            .get("generateName")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            match &generate {
                Some(prefix) => {
                    name = format!("{prefix}{}", random_suffix());
                    while self
                        .objects
                        .contains_key(&Self::key(ty, ns.as_deref(), &name))
                    {
                        name = format!("{prefix}{}", random_suffix());
                    }
                }
                None => {
                    return Err(ApiError::invalid(format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        ty.kind
                    )));
                }
            }
        }
        if !valid_name(&name, ty.plural == "namespaces") {
            return Err(ApiError::invalid(format!(
                "{} is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                Self::what(ty, &name)
            )));
        }
        if let Some(ns) = &ns
            && self.namespace_terminating(ns)
        {
            return Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    Self::what(ty, &name)
                ),
            ));
        }
        if let Some(ns) = &ns
            && self.require_namespaces
            && !self.objects.contains_key(&(
                String::new(),
                "namespaces".into(),
                String::new(),
                ns.clone(),
            ))
        {
            return Err(
                ApiError::not_found(format!("namespaces \"{ns}\" not found")).with_details(
                    ns,
                    "",
                    "namespaces",
                ),
            );
        }
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now()));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(f);
        }
        if ty.custom {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        if ty.has_status()
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.admit(ty, &name, &mut obj, None)?;
        let key = Self::key(ty, ns.as_deref(), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", ty.qualified()),
            )
            .with_details(&name, &ty.group, &ty.plural));
        }
        if ty.group == "apiextensions.k8s.io" {
            self.register_crd_type(&obj)?;
        }
        Ok(self.emit(&key, Change::Added, obj, None))
    }

    fn register_crd_type(&mut self, crd: &Value) -> Result<(), ApiError> {
        let t = ResourceType::from_crd(crd).map_err(|e| ApiError::invalid(e.to_string()))?;
        self.registry.insert(t);
        Ok(())
    }

    /// PUT: replaces the object (or only its status).
    pub fn replace(
        &mut self,
        ty: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        Self::check_type_meta(ty, &new)?;
        if let Some(body_name) = meta_str(&new, "name")
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if ty.namespaced
            && let (Some(body_ns), Some(ns)) = (meta_str(&new, "namespace"), ns)
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old = self.get(ty, ns, name)?;
        // Custom resources allow no unconditional update (unlike Secrets,
        // ConfigMaps and Leases): a PUT must say which version it replaces.
        if ty.custom && meta_str(&new, "resourceVersion").is_none() {
            return Err(ApiError::invalid(format!(
                "{} is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                Self::what(ty, name)
            )));
        }
        self.update_existing(ty, ns, name, &old, new, status_only)
    }

    /// The shared tail of PUT and PATCH.
    fn update_existing(
        &mut self,
        ty: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        old: &Value,
        mut new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let old_rv = meta_str(old, "resourceVersion")
            .unwrap_or_default()
            .to_string();
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && rv != old_rv
        {
            return Err(ApiError::conflict(format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                ty.qualified()
            ))
            .with_details(name, &ty.group, &ty.plural));
        }
        if status_only {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) if !s.is_null() => new["status"] = s,
                _ => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else {
            let old_meta = old["metadata"].clone();
            let meta = metadata_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "namespace",
                "name",
            ] {
                match old_meta.get(f) {
                    Some(v) => meta.insert(f.into(), v.clone()),
                    None => meta.remove(f),
                };
            }
            meta.remove("managedFields");
            meta.remove("selfLink");
            if ty.has_status() {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
        }
        metadata_mut(&mut new).insert("resourceVersion".into(), json!(old_rv));
        self.admit(ty, name, &mut new, Some(old))?;
        if ty.group == "apiextensions.k8s.io" {
            let from = |v: &Value| {
                (
                    v["spec"]["group"].clone(),
                    v["spec"]["names"]["plural"].clone(),
                )
            };
            if from(old) != from(&new) {
                return Err(ApiError::invalid(format!(
                    "CustomResourceDefinition.apiextensions.k8s.io \"{name}\" is invalid: spec.group and spec.names.plural are immutable"
                )));
            }
        }
        // As a real server stores it: an emptied finalizer list is no list
        // (Go's `omitempty`), which a later JSON patch can test against null.
        let meta = metadata_mut(&mut new);
        if meta
            .get("finalizers")
            .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty))
        {
            meta.remove("finalizers");
        }
        let deleting = old["metadata"]["deletionTimestamp"].is_string();
        let old_fin = finalizers(old);
        let new_fin = finalizers(&new);
        if deleting && new_fin.iter().any(|f| !old_fin.contains(f)) {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {:?}",
                    Self::what(ty, name),
                    new_fin
                        .iter()
                        .filter(|f| !old_fin.contains(f))
                        .collect::<Vec<_>>()
                ),
            ));
        }
        if (ty.custom || old["metadata"]["generation"].is_i64())
            && spec_part(old) != spec_part(&new)
        {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            metadata_mut(&mut new).insert("generation".into(), json!(g));
        }
        if without_rv(&new) == without_rv(old) {
            // A no-op write: no new resourceVersion, no event.
            return Ok(old.clone());
        }
        let key = Self::key(ty, ns, name);
        if ty.group == "apiextensions.k8s.io" {
            self.register_crd_type(&new)?;
        }
        if deleting && new_fin.is_empty() {
            return Ok(self.remove_object(&key, new, Propagation::Background));
        }
        Ok(self.emit(&key, Change::Modified, new, Some(old.clone())))
    }

    /// PATCH (and server-side apply, which may create).
    pub fn patch(
        &mut self,
        ty: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        status_only: bool,
    ) -> Result<(Value, bool), ApiError> {
        let patch: Value = match kind {
            PatchKind::Apply => serde_yaml::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?,
            _ => serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
        };
        if kind == PatchKind::Strategic && ty.custom {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if kind == PatchKind::Apply {
            if !patch.is_object() {
                return Err(ApiError::bad_request("apply patch must be an object"));
            }
            if patch["apiVersion"].as_str().is_none_or(str::is_empty)
                || patch["kind"].as_str().is_none_or(str::is_empty)
            {
                return Err(ApiError::bad_request(
                    "apiVersion and kind must be set in an apply patch",
                ));
            }
            Self::check_type_meta(ty, &patch)?;
            if let Some(n) = meta_str(&patch, "name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let old = match self.get(ty, ns, name) {
            Ok(old) => old,
            Err(_) if kind == PatchKind::Apply && !status_only => {
                let mut obj = patch;
                metadata_mut(&mut obj).insert("name".into(), json!(name));
                return Ok((self.create(ty, ns, obj)?, true));
            }
            Err(e) => return Err(e),
        };
        let mut new = old.clone();
        match kind {
            PatchKind::Json => patch::json_patch(&mut new, &patch)?,
            PatchKind::Merge | PatchKind::Strategic | PatchKind::Apply => {
                patch::merge(&mut new, &patch);
            }
        }
        if !new.is_object() {
            return Err(ApiError::invalid(format!(
                "{} is invalid: the patch must leave an object",
                Self::what(ty, name)
            )));
        }
        // The patched object keeps the stored resourceVersion unless the
        // patch itself names one, which then acts as a precondition.
        Ok((
            self.update_existing(ty, ns, name, &old, new, status_only)?,
            false,
        ))
    }

    /// DELETE one object. Returns the object and whether it is gone (false:
    /// finalizers keep it, now marked for deletion).
    pub fn delete(
        &mut self,
        ty: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let old = self.get(ty, ns, name)?;
        if let Some(uid) = &opts.uid {
            let have = meta_str(&old, "uid").unwrap_or_default();
            if uid != have {
                return Err(ApiError::conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                )));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let have = meta_str(&old, "resourceVersion").unwrap_or_default();
            if rv != have {
                return Err(ApiError::conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                )));
            }
        }
        let key = Self::key(ty, ns, name);
        if ty.group.is_empty() && ty.plural == "namespaces" {
            return Ok(self.delete_namespace(&key, old));
        }
        if !finalizers(&old).is_empty() {
            if old["metadata"]["deletionTimestamp"].is_string() {
                return Ok((old, false));
            }
            let mut marked = old.clone();
            let meta = metadata_mut(&mut marked);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            return Ok((self.emit(&key, Change::Modified, marked, Some(old)), false));
        }
        Ok((self.remove_object(&key, old, opts.propagation), true))
    }

    fn delete_namespace(&mut self, key: &ObjKey, old: Value) -> (Value, bool) {
        let ns = key.3.clone();
        let mut obj = old.clone();
        if !old["metadata"]["deletionTimestamp"].is_string() {
            metadata_mut(&mut obj).insert("deletionTimestamp".into(), json!(now()));
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            obj["status"]["phase"] = json!("Terminating");
            obj = self.emit(key, Change::Modified, obj, Some(old));
        }
        let contents: Vec<ObjKey> = self
            .objects
            .keys()
            .filter(|k| !k.2.is_empty() && k.2 == ns)
            .cloned()
            .collect();
        for k in contents {
            let Some(ty) = self.registry.get(&k.0, &k.1) else {
                continue;
            };
            let _ = self.delete(&ty, Some(&k.2), &k.3, &DeleteOpts::default());
        }
        let gone = self.finalize_namespace(&ns);
        (obj, gone)
    }

    /// Removes a terminating namespace once nothing is left in it.
    fn finalize_namespace(&mut self, ns: &str) -> bool {
        let key = (
            String::new(),
            "namespaces".to_string(),
            String::new(),
            ns.to_string(),
        );
        let Some(n) = self.objects.get(&key).cloned() else {
            return true;
        };
        if !n["metadata"]["deletionTimestamp"].is_string()
            || !finalizers(&n).is_empty()
            || self.objects.keys().any(|k| k.2 == ns)
        {
            return false;
        }
        self.remove_object(&key, n, Propagation::Background);
        true
    }

    /// Really removes an object: DELETED event, then what follows from it
    /// (garbage collection, CRD contents, namespace finalization).
    fn remove_object(&mut self, key: &ObjKey, obj: Value, propagation: Propagation) -> Value {
        let gone = self.emit(key, Change::Deleted, obj, None);
        if key.0 == "apiextensions.k8s.io" && key.1 == "customresourcedefinitions" {
            let group = gone["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let plural = gone["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let contents: Vec<(ObjKey, Value)> = self
                .objects
                .iter()
                .filter(|(k, _)| k.0 == group && k.1 == plural)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in contents {
                self.emit(&k, Change::Deleted, v, None);
            }
            self.registry.remove(&group, &plural);
        }
        self.collect_garbage(key, &gone, propagation);
        if !key.2.is_empty() {
            self.finalize_namespace(&key.2.clone());
        }
        gone
    }

    /// Deletes (or orphans) the dependents of a removed owner, the way the
    /// garbage collector does with background propagation.
    fn collect_garbage(&mut self, owner_key: &ObjKey, owner: &Value, propagation: Propagation) {
        let Some(uid) = meta_str(owner, "uid").map(str::to_string) else {
            return;
        };
        let owner_cluster_scoped = owner_key.2.is_empty();
        let dependents: Vec<(ObjKey, Value)> = self
            .objects
            .iter()
            .filter(|(k, _)| owner_cluster_scoped || k.2 == owner_key.2)
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str()))
                    })
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if dependents.is_empty() {
            return;
        }
        let live: HashSet<String> = self
            .objects
            .values()
            .filter_map(|v| meta_str(v, "uid").map(str::to_string))
            .collect();
        for (k, dep) in dependents {
            // Re-read: an earlier step of this loop may have changed it.
            let Some(current) = self.objects.get(&k).cloned() else {
                continue;
            };
            let refs = current["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let remaining: Vec<Value> = refs
                .iter()
                .filter(|r| {
                    r["uid"]
                        .as_str()
                        .is_some_and(|u| u != uid && live.contains(u))
                })
                .cloned()
                .collect();
            if propagation == Propagation::Orphan || !remaining.is_empty() {
                let mut updated = current.clone();
                metadata_mut(&mut updated)
                    .insert("ownerReferences".into(), Value::Array(remaining));
                if updated["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
                    && let Some(m) = updated["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
                self.emit(&k, Change::Modified, updated, Some(current));
                continue;
            }
            let _ = dep;
            if let Some(ty) = self.registry.get(&k.0, &k.1) {
                let ns = (!k.2.is_empty()).then_some(k.2.clone());
                let _ = self.delete(&ty, ns.as_deref(), &k.3, &DeleteOpts::default());
            }
        }
    }

    pub fn delete_collection(
        &mut self,
        ty: &Arc<ResourceType>,
        ns: Option<&str>,
        sel: &Selectors,
        opts: &DeleteOpts,
    ) -> Result<Vec<Value>, ApiError> {
        let names: Vec<(String, String)> = self
            .of_type(ty, ns)
            .filter(|(_, v)| sel.matches(v))
            .map(|(k, _)| (k.2.clone(), k.3.clone()))
            .collect();
        let mut out = Vec::new();
        for (ns, name) in names {
            let ns = (!ns.is_empty()).then_some(ns);
            let (obj, _) = self.delete(
                ty,
                ns.as_deref(),
                &name,
                &DeleteOpts {
                    uid: None,
                    resource_version: None,
                    ..opts.clone()
                },
            )?;
            out.push(obj);
        }
        Ok(out)
    }

    /// Registers a watcher and computes what it must see first. Taking both
    /// under the store lock means no change is lost or seen twice.
    pub fn watch(
        &mut self,
        ty: &ResourceType,
        ns: Option<&str>,
        sel: &Selectors,
        from: WatchFrom,
    ) -> Result<WatchStart, ApiError> {
        let initial = match from {
            WatchFrom::Now | WatchFrom::InitialEvents => self
                .of_type(ty, ns)
                .filter(|(_, v)| sel.matches(v))
                .map(|(_, v)| (Change::Added, v.clone()))
                .collect(),
            WatchFrom::Version(v) => {
                if v < self.compacted {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {v} ({})",
                        self.compacted + 1
                    )));
                }
                self.history
                    .iter()
                    .filter(|e| e.rv > v)
                    .filter_map(|e| filter_event(e, ty, ns, sel))
                    .collect()
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers.push(tx);
        Ok(WatchStart {
            initial,
            rx,
            rv: self.rv,
        })
    }

    /// Harness: writes an object as given (no admission), creating or
    /// replacing it, with a new resourceVersion and a watch event.
    pub fn put_raw(&mut self, ty: &ResourceType, mut obj: Value) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let name = meta_str(&obj, "name")
            .ok_or_else(|| ApiError::bad_request("metadata.name is required"))?
            .to_string();
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        if ty.namespaced && ns.is_none() {
            return Err(ApiError::bad_request("metadata.namespace is required"));
        }
        let key = Self::key(ty, ns.as_deref(), &name);
        obj["apiVersion"] = json!(ty.api_version(&ty.storage_version().name));
        obj["kind"] = json!(ty.kind);
        let old = self.objects.get(&key).cloned();
        let meta = metadata_mut(&mut obj);
        if meta_str_map(meta, "uid").is_none() {
            let uid = old
                .as_ref()
                .and_then(|o| meta_str(o, "uid"))
                .map(str::to_string)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            meta.insert("uid".into(), json!(uid));
        }
        if meta_str_map(meta, "creationTimestamp").is_none() {
            meta.insert("creationTimestamp".into(), json!(now()));
        }
        let change = if old.is_some() {
            Change::Modified
        } else {
            Change::Added
        };
        Ok(self.emit(&key, change, obj, old))
    }

    /// Harness: removes an object outright (finalizers and dependents are
    /// left alone), with a DELETED event.
    pub fn delete_raw(&mut self, ty: &ResourceType, ns: Option<&str>, name: &str) -> Option<Value> {
        let key = Self::key(ty, ns, name);
        let obj = self.objects.get(&key).cloned()?;
        Some(self.emit(&key, Change::Deleted, obj, None))
    }
}

fn meta_str_map<'a>(meta: &'a Map<String, Value>, field: &str) -> Option<&'a str> {
    meta.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// What one watcher sees of an event, if anything: selector transitions
/// become ADDED/DELETED, like the real watch cache.
pub(crate) fn filter_event(
    e: &Event,
    ty: &ResourceType,
    ns: Option<&str>,
    sel: &Selectors,
) -> Option<(Change, Value)> {
    if e.group != ty.group || e.plural != ty.plural {
        return None;
    }
    if let Some(ns) = ns
        && ty.namespaced
        && e.namespace != ns
    {
        return None;
    }
    let now_matches = sel.matches(&e.object);
    match (e.change, &e.old) {
        (Change::Modified, Some(old)) => {
            let was = sel.matches(old);
            match (was, now_matches) {
                (true, true) => Some((Change::Modified, e.object.clone())),
                (false, true) => Some((Change::Added, e.object.clone())),
                (true, false) => {
                    let mut o = old.clone();
                    o["metadata"]["resourceVersion"] =
                        e.object["metadata"]["resourceVersion"].clone();
                    Some((Change::Deleted, o))
                }
                (false, false) => None,
            }
        }
        _ => now_matches.then(|| (e.change, e.object.clone())),
    }
}

fn admit_immutable(
    obj: &Value,
    old: Option<&Value>,
    fields: &[&str],
    kind: &str,
) -> Result<(), ApiError> {
    let Some(old) = old else { return Ok(()) };
    if old["immutable"].as_bool() == Some(true) {
        let name = old["metadata"]["name"].as_str().unwrap_or_default();
        if obj["immutable"].as_bool() != Some(true) || fields.iter().any(|f| obj[*f] != old[*f]) {
            return Err(ApiError::invalid(format!(
                "{kind} \"{name}\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
            )));
        }
    }
    Ok(())
}

/// Secrets: `stringData` folds into base64 `data`; `type` defaults to
/// Opaque and never changes.
fn admit_secret(obj: &mut Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in sd {
            let s = v.as_str().unwrap_or_default();
            obj["data"][k] = json!(STANDARD.encode(s));
        }
    }
    if let Some(data) = obj["data"].as_object() {
        for (k, v) in data {
            let ok = v.as_str().is_some_and(|s| STANDARD.decode(s).is_ok()) || v.is_null();
            if !ok {
                return Err(ApiError::bad_request(format!(
                    "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in data[{k:?}]"
                )));
            }
        }
    }
    if obj["type"].as_str().is_none_or(str::is_empty) {
        obj["type"] = json!("Opaque");
    }
    if let Some(old) = old
        && old["type"] != obj["type"]
    {
        return Err(ApiError::invalid(format!(
            "Secret \"{name}\" is invalid: type: Invalid value: {}: field is immutable",
            obj["type"]
        )));
    }
    admit_immutable(obj, old, &["data"], "Secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_rules() {
        assert!(valid_name("apitoken-1.example", false));
        assert!(!valid_name("apitoken-1.example", true));
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", &"a".repeat(254)] {
            assert!(!valid_name(bad, false), "{bad}");
        }
    }

    #[test]
    fn generated_suffixes_use_the_safe_alphabet() {
        let s = random_suffix();
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
