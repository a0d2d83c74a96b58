//! Scopes and the route table: which scope each API operation needs.
//!
//! The proxy enforces this table ([`ROUTES`], data rather than code); the
//! API documents it and a test in the API holds the two together. A token
//! with no scopes may call every route (the product guide's behaviour).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A permission a token may be limited to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum Scope {
    /// List agents and read their executions.
    #[serde(rename = "agents:read")]
    AgentsRead,
    /// Install, update and delete agents.
    #[serde(rename = "agents:write")]
    AgentsWrite,
    /// List triggers and read their details.
    #[serde(rename = "triggers:read")]
    TriggersRead,
    /// Execute triggers.
    #[serde(rename = "triggers:execute")]
    TriggersExecute,
    /// Send webhook events.
    #[serde(rename = "webhooks:send")]
    WebhooksSend,
    /// List integrations.
    #[serde(rename = "integrations:read")]
    IntegrationsRead,
    /// Create, update and delete integrations.
    #[serde(rename = "integrations:write")]
    IntegrationsWrite,
    /// List and search the knowledge base.
    #[serde(rename = "knowledge-base:read")]
    KnowledgeBaseRead,
    /// List and download stored files.
    #[serde(rename = "storage:read")]
    StorageRead,
    /// Upload and delete stored files.
    #[serde(rename = "storage:write")]
    StorageWrite,
    /// Chat with the assistant and read chat history.
    #[serde(rename = "assistant:chat")]
    AssistantChat,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 11] = [
        Scope::AgentsRead,
        Scope::AgentsWrite,
        Scope::TriggersRead,
        Scope::TriggersExecute,
        Scope::WebhooksSend,
        Scope::IntegrationsRead,
        Scope::IntegrationsWrite,
        Scope::KnowledgeBaseRead,
        Scope::StorageRead,
        Scope::StorageWrite,
        Scope::AssistantChat,
    ];

    /// The wire name, e.g. `agents:read`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::AgentsRead => "agents:read",
            Scope::AgentsWrite => "agents:write",
            Scope::TriggersRead => "triggers:read",
            Scope::TriggersExecute => "triggers:execute",
            Scope::WebhooksSend => "webhooks:send",
            Scope::IntegrationsRead => "integrations:read",
            Scope::IntegrationsWrite => "integrations:write",
            Scope::KnowledgeBaseRead => "knowledge-base:read",
            Scope::StorageRead => "storage:read",
            Scope::StorageWrite => "storage:write",
            Scope::AssistantChat => "assistant:chat",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|sc| sc.as_str() == s)
    }

    /// Bit used in [`ScopeSet`].
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compact set of scopes for the hot path. Empty means "every scope".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u16);

impl ScopeSet {
    /// The unrestricted set (a token declared with no scopes).
    pub const UNRESTRICTED: ScopeSet = ScopeSet(0);

    /// Whether a token holding this set may use `scope`.
    pub const fn allows(self, scope: Scope) -> bool {
        self.0 == 0 || self.0 & scope.bit() != 0
    }

    /// Whether the set places no restriction.
    pub const fn is_unrestricted(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in stable order (empty when unrestricted).
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |s| self.0 & s.bit() != 0)
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        ScopeSet(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

/// The resource group a route belongs to; a bounded metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteGroup {
    /// `/api/agent-base` (agents).
    Agents,
    /// `/api/agent-base/{id}/executions`.
    Executions,
    /// `/api/agent-base/triggers`.
    Triggers,
    /// `/api/webhook/*`.
    Webhooks,
    /// `/api/integrations-base`.
    Integrations,
    /// `/api/knowledge-base`.
    KnowledgeBase,
    /// `/api/knowledge-base/storage`.
    Storage,
    /// `/api/assistant/chat`.
    Assistant,
    /// The API's own description (`/api/openapi.json`).
    Meta,
    /// Anything else (the API answers 404).
    Other,
}

impl RouteGroup {
    /// Every group, in a stable order (for pre-registering metrics).
    pub const ALL: [RouteGroup; 10] = [
        RouteGroup::Agents,
        RouteGroup::Executions,
        RouteGroup::Triggers,
        RouteGroup::Webhooks,
        RouteGroup::Integrations,
        RouteGroup::KnowledgeBase,
        RouteGroup::Storage,
        RouteGroup::Assistant,
        RouteGroup::Meta,
        RouteGroup::Other,
    ];

    /// The metrics label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RouteGroup::Agents => "agents",
            RouteGroup::Executions => "executions",
            RouteGroup::Triggers => "triggers",
            RouteGroup::Webhooks => "webhooks",
            RouteGroup::Integrations => "integrations",
            RouteGroup::KnowledgeBase => "knowledge_base",
            RouteGroup::Storage => "storage",
            RouteGroup::Assistant => "assistant",
            RouteGroup::Meta => "meta",
            RouteGroup::Other => "other",
        }
    }
}

/// What a request needs: its group and, for known routes, a scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The group, for metrics.
    pub group: RouteGroup,
    /// The scope required; `None` for paths outside the API (the API 404s
    /// them, and an unrestricted token is needed to even reach that 404).
    pub scope: Option<Scope>,
}

/// Which methods a rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Methods {
    /// `GET` and `HEAD`.
    Read,
    /// Every other method.
    Write,
    /// Any method.
    Any,
}

impl Methods {
    const fn admits(self, read: bool) -> bool {
        match self {
            Methods::Read => read,
            Methods::Write => !read,
            Methods::Any => true,
        }
    }
}

/// What must follow a rule's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rest {
    /// Nothing, or any `/…`.
    Any,
    /// Nothing at all.
    Exact,
    /// `/{id}/executions` or deeper.
    Executions,
    /// A path ending with this.
    EndsWith(&'static str),
}

impl Rest {
    fn admits(self, rest: &str) -> bool {
        match self {
            Rest::Any => true,
            Rest::Exact => rest.is_empty(),
            Rest::Executions => {
                let mut parts = rest.trim_start_matches('/').split('/');
                matches!((parts.next(), parts.next()), (Some(id), Some("executions")) if !id.is_empty())
            }
            Rest::EndsWith(suffix) => rest.ends_with(suffix),
        }
    }
}

/// One row of the route table: requests whose path is `prefix` or
/// `prefix/…` (and whose remainder fits `rest`), made with `methods`, belong
/// to `group` and need `scope`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The path prefix, matched on segment boundaries.
    pub prefix: &'static str,
    /// What may follow it.
    pub rest: Rest,
    /// The methods.
    pub methods: Methods,
    /// The group, for metrics.
    pub group: RouteGroup,
    /// The scope required (`None`: no scope grants it, so only an
    /// unrestricted token passes the proxy).
    pub scope: Option<Scope>,
}

const fn rule(
    prefix: &'static str,
    rest: Rest,
    methods: Methods,
    group: RouteGroup,
    scope: Option<Scope>,
) -> Rule {
    Rule {
        prefix,
        rest,
        methods,
        group,
        scope,
    }
}

/// The route table, first match wins: longer prefixes and narrower rows come
/// before the rows they would otherwise fall into. A test in the API checks
/// it against the OpenAPI document both ways.
pub static ROUTES: &[Rule] = {
    use Methods::{Any, Read, Write};
    use RouteGroup as G;
    use Scope as S;
    const TRIGGERS: &str = "/api/agent-base/triggers";
    const AGENTS: &str = "/api/agent-base";
    const STORAGE: &str = "/api/knowledge-base/storage";
    &[
        rule(
            TRIGGERS,
            Rest::EndsWith("/execute"),
            Write,
            G::Triggers,
            Some(S::TriggersExecute),
        ),
        rule(
            TRIGGERS,
            Rest::Any,
            Read,
            G::Triggers,
            Some(S::TriggersRead),
        ),
        rule(
            TRIGGERS,
            Rest::Any,
            Write,
            G::Triggers,
            Some(S::AgentsWrite),
        ),
        rule(
            AGENTS,
            Rest::Executions,
            Read,
            G::Executions,
            Some(S::AgentsRead),
        ),
        rule(AGENTS, Rest::Any, Read, G::Agents, Some(S::AgentsRead)),
        rule(AGENTS, Rest::Any, Write, G::Agents, Some(S::AgentsWrite)),
        rule(
            "/api/webhook",
            Rest::Any,
            Any,
            G::Webhooks,
            Some(S::WebhooksSend),
        ),
        rule(
            "/api/integrations-base",
            Rest::Any,
            Read,
            G::Integrations,
            Some(S::IntegrationsRead),
        ),
        rule(
            "/api/integrations-base",
            Rest::Any,
            Write,
            G::Integrations,
            Some(S::IntegrationsWrite),
        ),
        rule(STORAGE, Rest::Any, Read, G::Storage, Some(S::StorageRead)),
        rule(STORAGE, Rest::Any, Write, G::Storage, Some(S::StorageWrite)),
        // Search may be a POST with a JSON body; the knowledge base itself
        // is only written through storage uploads.
        rule(
            "/api/knowledge-base",
            Rest::Any,
            Any,
            G::KnowledgeBase,
            Some(S::KnowledgeBaseRead),
        ),
        rule(
            "/api/assistant/chat",
            Rest::Any,
            Any,
            G::Assistant,
            Some(S::AssistantChat),
        ),
        rule("/api/openapi.json", Rest::Exact, Read, G::Meta, None),
    ]
};

/// The rule a request falls under, if any. Pure and allocation-free.
pub fn rule_for(method: &str, path: &str) -> Option<&'static Rule> {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let read = matches!(method, "GET" | "HEAD");
    ROUTES.iter().find(|r| {
        r.methods.admits(read) && strip(path, r.prefix).is_some_and(|rest| r.rest.admits(rest))
    })
}

/// Classifies a request by method and path: its [`rule_for`], or the
/// `other` group, which no scope grants (the API answers 404).
pub fn route(method: &str, path: &str) -> Route {
    rule_for(method, path).map_or(
        Route {
            group: RouteGroup::Other,
            scope: None,
        },
        |r| Route {
            group: r.group,
            scope: r.scope,
        },
    )
}

/// Returns the remainder if `path` is `prefix` or `prefix/...`.
fn strip<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_of_the_guide_maps_to_its_scope() {
        use RouteGroup as G;
        use Scope as S;
        let table = [
            ("GET", "/api/agent-base", G::Agents, S::AgentsRead),
            ("POST", "/api/agent-base", G::Agents, S::AgentsWrite),
            ("PUT", "/api/agent-base/a1", G::Agents, S::AgentsWrite),
            ("DELETE", "/api/agent-base/a1", G::Agents, S::AgentsWrite),
            (
                "GET",
                "/api/agent-base/a1/executions",
                G::Executions,
                S::AgentsRead,
            ),
            (
                "GET",
                "/api/agent-base/a1/executions/e1",
                G::Executions,
                S::AgentsRead,
            ),
            (
                "GET",
                "/api/agent-base/triggers",
                G::Triggers,
                S::TriggersRead,
            ),
            (
                "GET",
                "/api/agent-base/triggers/t1",
                G::Triggers,
                S::TriggersRead,
            ),
            (
                "POST",
                "/api/agent-base/triggers/t1/execute",
                G::Triggers,
                S::TriggersExecute,
            ),
            (
                "POST",
                "/api/agent-base/triggers",
                G::Triggers,
                S::AgentsWrite,
            ),
            (
                "POST",
                "/api/webhook/github/push",
                G::Webhooks,
                S::WebhooksSend,
            ),
            (
                "GET",
                "/api/integrations-base",
                G::Integrations,
                S::IntegrationsRead,
            ),
            (
                "POST",
                "/api/integrations-base",
                G::Integrations,
                S::IntegrationsWrite,
            ),
            (
                "PATCH",
                "/api/integrations-base/i1",
                G::Integrations,
                S::IntegrationsWrite,
            ),
            (
                "DELETE",
                "/api/integrations-base/i1",
                G::Integrations,
                S::IntegrationsWrite,
            ),
            (
                "GET",
                "/api/knowledge-base",
                G::KnowledgeBase,
                S::KnowledgeBaseRead,
            ),
            (
                "GET",
                "/api/knowledge-base/search?q=x",
                G::KnowledgeBase,
                S::KnowledgeBaseRead,
            ),
            (
                "POST",
                "/api/knowledge-base/search",
                G::KnowledgeBase,
                S::KnowledgeBaseRead,
            ),
            (
                "GET",
                "/api/knowledge-base/storage",
                G::Storage,
                S::StorageRead,
            ),
            (
                "GET",
                "/api/knowledge-base/storage/f1",
                G::Storage,
                S::StorageRead,
            ),
            (
                "PUT",
                "/api/knowledge-base/storage/f1",
                G::Storage,
                S::StorageWrite,
            ),
            (
                "POST",
                "/api/knowledge-base/storage",
                G::Storage,
                S::StorageWrite,
            ),
            (
                "DELETE",
                "/api/knowledge-base/storage/f1",
                G::Storage,
                S::StorageWrite,
            ),
            (
                "POST",
                "/api/assistant/chat",
                G::Assistant,
                S::AssistantChat,
            ),
            (
                "GET",
                "/api/assistant/chat/history",
                G::Assistant,
                S::AssistantChat,
            ),
        ];
        for (method, path, group, scope) in table {
            assert_eq!(
                route(method, path),
                Route {
                    group,
                    scope: Some(scope)
                },
                "{method} {path}"
            );
        }
    }

    #[test]
    fn lookalike_prefixes_do_not_match() {
        for path in [
            "/api/agent-basement",
            "/api/webhooks",
            "/api/knowledge-baseX",
            "/",
            "/api",
        ] {
            assert_eq!(
                route("GET", path),
                Route {
                    group: RouteGroup::Other,
                    scope: None
                }
            );
        }
    }

    #[test]
    fn scope_sets_allow_what_they_hold_and_empty_allows_all() {
        let set: ScopeSet = [Scope::AgentsRead, Scope::StorageWrite]
            .into_iter()
            .collect();
        assert!(set.allows(Scope::AgentsRead));
        assert!(set.allows(Scope::StorageWrite));
        assert!(!set.allows(Scope::AgentsWrite));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec![Scope::AgentsRead, Scope::StorageWrite]
        );
        for s in Scope::ALL {
            assert!(ScopeSet::UNRESTRICTED.allows(s));
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
        }
        assert_eq!(Scope::parse("agents:admin"), None);
    }
}
