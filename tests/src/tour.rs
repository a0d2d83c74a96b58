//! A tour of every resource group of the API through the proxy, the way an
//! API consumer would use a fresh token: install an agent, list it and its
//! executions, create an integration, upload a file and find it in the
//! knowledge base, send a webhook, list triggers, read chat history.

use anyhow::{Context, Result, bail};
use prodgy_crds::RouteGroup;
use reqwest::Method;
use serde_json::json;

use crate::caller::{Caller, Reply};

/// One call of the tour and its answer.
#[derive(Debug)]
pub struct Step {
    /// Resource group the call belongs to.
    pub group: RouteGroup,
    /// `METHOD path`.
    pub call: String,
    /// Status received.
    pub status: u16,
}

/// Runs the tour with `token`; every call must succeed (2xx). Returns the
/// calls made, so a caller can check usage counters against them.
pub async fn tour(caller: &Caller, token: &str) -> Result<Vec<Step>> {
    let mut t = Tour {
        caller,
        token,
        steps: Vec::new(),
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];

    let agent = t
        .json(
            RouteGroup::Agents,
            Method::POST,
            "/api/agent-base",
            json!({
                "name": format!("faq-{suffix}"),
                "description": "answers from the knowledge base",
                "kind": "knowledge",
                "config": {}
            }),
        )
        .await?;
    let agent_id = id_of(&agent).context("installed agent has no id")?;
    t.get(RouteGroup::Agents, "/api/agent-base").await?;
    t.get(
        RouteGroup::Executions,
        &format!("/api/agent-base/{agent_id}/executions"),
    )
    .await?;
    t.get(RouteGroup::Triggers, "/api/agent-base/triggers")
        .await?;

    t.json(
        RouteGroup::Integrations,
        Method::POST,
        "/api/integrations-base",
        json!({
            "name": format!("crm-{suffix}"),
            "kind": "http",
            "config": {"base_url": "http://127.0.0.1:9/"},
            "credentials": {"type": "bearer", "token": "not-a-real-secret"}
        }),
    )
    .await?;
    t.get(RouteGroup::Integrations, "/api/integrations-base")
        .await?;

    t.upload(
        &format!("notes-{suffix}.txt"),
        format!("The quickstart word of the day is zephyr{suffix}."),
    )
    .await?;
    t.get(RouteGroup::Storage, "/api/knowledge-base/storage")
        .await?;
    t.get(RouteGroup::KnowledgeBase, "/api/knowledge-base")
        .await?;
    t.get(
        RouteGroup::KnowledgeBase,
        &format!("/api/knowledge-base/search?q=zephyr{suffix}"),
    )
    .await?;

    t.json(
        RouteGroup::Webhooks,
        Method::POST,
        "/api/webhook/tour",
        json!({"event": "tour", "suffix": suffix}),
    )
    .await?;
    t.get(RouteGroup::Assistant, "/api/assistant/chat/history")
        .await?;

    Ok(t.steps)
}

struct Tour<'a> {
    caller: &'a Caller,
    token: &'a str,
    steps: Vec<Step>,
}

impl Tour<'_> {
    async fn get(&mut self, group: RouteGroup, path: &str) -> Result<Reply> {
        let reply = self.caller.get(path, self.token).await?;
        self.record(group, "GET", path, reply)
    }

    async fn json(
        &mut self,
        group: RouteGroup,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let reply = self
            .caller
            .call(method.clone(), path, Some(self.token), Some(&body))
            .await?;
        Ok(self.record(group, method.as_str(), path, reply)?.json())
    }

    async fn upload(&mut self, name: &str, text: String) -> Result<Reply> {
        let path = "/api/knowledge-base/storage";
        let token = self.token.to_owned();
        let part = reqwest::multipart::Part::text(text)
            .file_name(name.to_owned())
            .mime_str("text/plain")?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let resp = self
            .caller
            .raw(|client, base| {
                client
                    .post(format!("{base}{path}"))
                    .bearer_auth(token)
                    .multipart(form)
            })
            .await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let reply = Reply {
            status,
            www_authenticate: None,
            body,
        };
        self.record(RouteGroup::Storage, "POST", path, reply)
    }

    fn record(
        &mut self,
        group: RouteGroup,
        method: &str,
        path: &str,
        reply: Reply,
    ) -> Result<Reply> {
        let call = format!("{method} {path}");
        let status = reply.status.as_u16();
        if !reply.status.is_success() {
            let body: String = reply.body.chars().take(300).collect();
            bail!("{call} ({}) answered {status}: {body}", group.as_str());
        }
        self.steps.push(Step {
            group,
            call,
            status,
        });
        Ok(reply)
    }
}

fn id_of(v: &serde_json::Value) -> Option<String> {
    v["id"]
        .as_str()
        .or_else(|| v["data"]["id"].as_str())
        .map(str::to_owned)
}
