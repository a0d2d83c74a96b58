//! Scopes and the route table: which scope each API operation needs.
//!
//! The proxy enforces this table; the API documents it. A token with no
//! scopes may call every route (the product guide's behaviour). Longer path
//! prefixes are listed before shorter ones, so `/api/knowledge-base/storage`
//! is never mistaken for `/api/knowledge-base`.

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
    /// Anything else (the API answers 404).
    Other,
}

impl RouteGroup {
    /// Every group, in a stable order (for pre-registering metrics).
    pub const ALL: [RouteGroup; 9] = [
        RouteGroup::Agents,
        RouteGroup::Executions,
        RouteGroup::Triggers,
        RouteGroup::Webhooks,
        RouteGroup::Integrations,
        RouteGroup::KnowledgeBase,
        RouteGroup::Storage,
        RouteGroup::Assistant,
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

/// Classifies a request by method and path. Pure and allocation-free.
///
/// Reads are `GET`/`HEAD`; every other method is a write, except the two
/// POSTs that are reads by nature (knowledge-base search) or have their own
/// scope (trigger execution, chat).
pub fn route(method: &str, path: &str) -> Route {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let read = matches!(method, "GET" | "HEAD");
    let (group, scope) = if let Some(rest) = strip(path, "/api/agent-base/triggers") {
        if !read && rest.ends_with("/execute") {
            (RouteGroup::Triggers, Scope::TriggersExecute)
        } else if read {
            (RouteGroup::Triggers, Scope::TriggersRead)
        } else {
            (RouteGroup::Triggers, Scope::AgentsWrite)
        }
    } else if let Some(rest) = strip(path, "/api/agent-base") {
        if is_executions(rest) {
            let scope = if read {
                Scope::AgentsRead
            } else {
                Scope::AgentsWrite
            };
            (RouteGroup::Executions, scope)
        } else {
            (
                RouteGroup::Agents,
                if read {
                    Scope::AgentsRead
                } else {
                    Scope::AgentsWrite
                },
            )
        }
    } else if strip(path, "/api/webhook").is_some() {
        (RouteGroup::Webhooks, Scope::WebhooksSend)
    } else if strip(path, "/api/integrations-base").is_some() {
        let scope = if read {
            Scope::IntegrationsRead
        } else {
            Scope::IntegrationsWrite
        };
        (RouteGroup::Integrations, scope)
    } else if strip(path, "/api/knowledge-base/storage").is_some() {
        (
            RouteGroup::Storage,
            if read {
                Scope::StorageRead
            } else {
                Scope::StorageWrite
            },
        )
    } else if strip(path, "/api/knowledge-base").is_some() {
        // Search may be a POST with a JSON body; the knowledge base itself
        // is only written through storage uploads.
        (RouteGroup::KnowledgeBase, Scope::KnowledgeBaseRead)
    } else if strip(path, "/api/assistant/chat").is_some() {
        (RouteGroup::Assistant, Scope::AssistantChat)
    } else {
        return Route {
            group: RouteGroup::Other,
            scope: None,
        };
    };
    Route {
        group,
        scope: Some(scope),
    }
}

/// Returns the remainder if `path` is `prefix` or `prefix/...`.
fn strip<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// `/{id}/executions` or deeper.
fn is_executions(rest: &str) -> bool {
    let mut parts = rest.trim_start_matches('/').split('/');
    matches!((parts.next(), parts.next()), (Some(id), Some("executions")) if !id.is_empty())
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
