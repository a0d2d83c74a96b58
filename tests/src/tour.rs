//! A tour of every resource group of the API through the proxy, the way an
//! API consumer would use a fresh token: upload a document and find it in
//! the knowledge base, install an agent that answers from it, fire it from a
//! webhook and from its trigger, read its executions, create an integration,
//! and chat with the assistant over SSE. Every call must succeed, and the
//! data must be there when read back.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use prodgy_crds::RouteGroup;
use reqwest::Method;
use serde_json::{Value, json};

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

/// Runs the tour with `token`. Returns the calls made (all answered 2xx),
/// so a caller can check usage counters against them.
pub async fn tour(caller: &Caller, token: &str) -> Result<Vec<Step>> {
    let mut t = Tour {
        caller,
        token,
        steps: Vec::new(),
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let word = format!("zephyr{suffix}");
    let file = format!("notes-{suffix}.txt");

    // Storage: a streamed upload, then the file is listed and downloads intact.
    let text = format!("The quickstart word of the day is {word}.");
    t.send(
        RouteGroup::Storage,
        Method::POST,
        &format!("/api/knowledge-base/storage?name={file}"),
        Body::Raw(text.clone()),
    )
    .await?;
    let listed = t
        .get(RouteGroup::Storage, "/api/knowledge-base/storage")
        .await?;
    ensure!(
        listed.body.contains(&file),
        "uploaded file not listed: {}",
        listed.body
    );
    let downloaded = t
        .get(
            RouteGroup::Storage,
            &format!("/api/knowledge-base/storage/{file}"),
        )
        .await?;
    ensure!(
        downloaded.body == text,
        "download differs from upload: {:?}",
        downloaded.body
    );

    // Knowledge base: the uploaded text is searchable.
    t.get(RouteGroup::KnowledgeBase, "/api/knowledge-base")
        .await?;
    let found = t
        .get(
            RouteGroup::KnowledgeBase,
            &format!("/api/knowledge-base/search?q={word}"),
        )
        .await?;
    ensure!(
        found.json()["results"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "search for {word} found nothing: {}",
        found.body
    );

    // Agents and triggers: an agent that answers from the knowledge base,
    // fired by a webhook trigger.
    let agent = t
        .send(
            RouteGroup::Agents,
            Method::POST,
            "/api/agent-base",
            Body::Json(json!({
                "name": format!("faq-{suffix}"),
                "description": "answers from the knowledge base",
                "kind": "knowledge",
                "config": {}
            })),
        )
        .await?
        .json();
    let agent_id = str_field(&agent, "id").context("installed agent has no id")?;
    let agents = t.get(RouteGroup::Agents, "/api/agent-base").await?;
    ensure!(
        agents.body.contains(&agent_id),
        "installed agent not listed"
    );
    let trigger = t
        .send(
            RouteGroup::Triggers,
            Method::POST,
            "/api/agent-base/triggers",
            Body::Json(json!({
                "agent_id": agent_id,
                "name": format!("on-tour-{suffix}"),
                "kind": "webhook",
                "config": {"path": format!("tour/{suffix}")}
            })),
        )
        .await?
        .json();
    let trigger_id = str_field(&trigger, "id").context("created trigger has no id")?;
    t.get(RouteGroup::Triggers, "/api/agent-base/triggers")
        .await?;
    t.get(
        RouteGroup::Triggers,
        &format!("/api/agent-base/triggers/{trigger_id}"),
    )
    .await?;
    let accepted = t
        .send(
            RouteGroup::Webhooks,
            Method::POST,
            &format!("/api/webhook/tour/{suffix}"),
            Body::Json(json!({"question": format!("what is the word of the day {word}")})),
        )
        .await?
        .json();
    ensure!(
        accepted["executions"]
            .as_array()
            .is_some_and(|e| e.len() == 1),
        "the webhook fired {} executions, want 1",
        accepted["executions"]
    );
    t.send(
        RouteGroup::Triggers,
        Method::POST,
        &format!("/api/agent-base/triggers/{trigger_id}/execute"),
        Body::Empty,
    )
    .await?;
    let runs = t
        .get(
            RouteGroup::Executions,
            &format!("/api/agent-base/{agent_id}/executions"),
        )
        .await?;
    let runs = runs.json()["items"].as_array().map_or(0, Vec::len);
    ensure!(
        runs == 2,
        "agent shows {runs} executions, want 2 (webhook + execute)"
    );

    // Integrations: credentials are accepted and never returned.
    let secret = format!("never-shown-{suffix}");
    t.send(
        RouteGroup::Integrations,
        Method::POST,
        "/api/integrations-base",
        Body::Json(json!({
            "name": format!("crm-{suffix}"),
            "kind": "http",
            "config": {"base_url": "http://127.0.0.1:9/"},
            "credentials": {"type": "bearer", "token": secret}
        })),
    )
    .await?;
    let integrations = t
        .get(RouteGroup::Integrations, "/api/integrations-base")
        .await?;
    ensure!(
        integrations.body.contains(&format!("crm-{suffix}"))
            && !integrations.body.contains(&secret),
        "integration not listed, or its credentials returned: {}",
        integrations.body
    );

    // Assistant: an SSE stream that ends, then the conversation is listed.
    let chat = t
        .send(
            RouteGroup::Assistant,
            Method::POST,
            "/api/assistant/chat",
            Body::Json(json!({"message": format!("What is the word of the day {word}?")})),
        )
        .await?;
    ensure!(
        chat.body.contains("event:") && chat.body.contains("done"),
        "chat stream did not finish: {:?}",
        chat.body.chars().take(300).collect::<String>()
    );
    t.get(RouteGroup::Assistant, "/api/assistant/chat").await?;
    let doc = t.get(RouteGroup::Meta, "/api/openapi.json").await?;
    ensure!(
        doc.body.contains("\"openapi\""),
        "the OpenAPI document did not come through"
    );

    Ok(t.steps)
}

enum Body {
    Empty,
    Json(Value),
    Raw(String),
}

/// Fails unless `steps` reached every resource group of the API.
pub fn every_group(steps: &[Step]) -> Result<()> {
    let covered: BTreeSet<&str> = steps.iter().map(|st| st.group.as_str()).collect();
    let wanted: BTreeSet<&str> = RouteGroup::ALL
        .iter()
        .filter(|g| **g != RouteGroup::Other)
        .map(|g| g.as_str())
        .collect();
    ensure!(
        covered == wanted,
        "the tour reached {covered:?}, want {wanted:?}"
    );
    Ok(())
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

    async fn send(
        &mut self,
        group: RouteGroup,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<Reply> {
        let reply = match body {
            Body::Empty => {
                self.caller
                    .call(method.clone(), path, Some(self.token), None)
                    .await?
            }
            Body::Json(v) => {
                self.caller
                    .call(method.clone(), path, Some(self.token), Some(&v))
                    .await?
            }
            Body::Raw(text) => {
                let (m, token) = (method.clone(), self.token.to_owned());
                let resp = self
                    .caller
                    .raw(|client, base| {
                        client
                            .request(m, format!("{base}{path}"))
                            .bearer_auth(token)
                            .header(reqwest::header::CONTENT_TYPE, "text/plain")
                            .body(text)
                    })
                    .await?;
                Reply::read(resp).await?
            }
        };
        self.record(group, method.as_str(), path, reply)
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

fn str_field(v: &Value, key: &str) -> Option<String> {
    v[key].as_str().map(str::to_owned)
}
