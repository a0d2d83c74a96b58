//! Every resource through the real router on a real listener: happy paths,
//! failure paths, pagination and product isolation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Env, Upstream, agent_with_trigger, error_code, execute};

on_every_backend!(
    identity_and_scopes_are_enforced,
    agents_crud_and_bad_input,
    lists_are_paginated,
    http_agent_calls_its_integration,
    integrations_keep_credentials_secret,
    triggers_crud_and_execute,
    webhooks_fire_matching_triggers,
    deleting_an_agent_removes_its_triggers_and_executions,
    products_are_isolated,
    knowledge_agent_answers_with_citations,
);

fn knowledge_agent() -> Value {
    json!({"name": "kb", "kind": "knowledge", "config": {"question": "{{input.question}}"}})
}

async fn identity_and_scopes_are_enforced(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    for path in [
        "/api/agent-base",
        "/api/agent-base/triggers",
        "/api/integrations-base",
        "/api/knowledge-base",
        "/api/knowledge-base/search?q=x",
        "/api/knowledge-base/storage",
        "/api/assistant/chat",
    ] {
        let (s, body) = api.anonymous().get(path).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(error_code(&body), "unauthenticated");
        let (s, _) = api.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}");
    }
    // Product without scopes header is not an identity.
    let r = api
        .http
        .get(format!("{}/api/agent-base", api.base))
        .header("x-prodgy-product", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let reader = api.with_scopes("agents:read");
    assert_eq!(reader.get("/api/agent-base").await.0, StatusCode::OK);
    let (s, body) = reader.post("/api/agent-base", &knowledge_agent()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "insufficient_scope");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agents:write")
    );
    let (s, _) = reader.get("/api/integrations-base").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api.with_scopes("").get("/api/agent-base").await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, body) = api.get("/api/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "route_not_found");
    let (s, body) = api.send(api.req(Method::DELETE, "/api/agent-base")).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method_not_allowed");

    // Request ids: generated when absent, propagated when sent.
    let r = api
        .req(Method::GET, "/api/agent-base")
        .send()
        .await
        .unwrap();
    assert!(!r.headers()["x-request-id"].is_empty());
    let r = api
        .req(Method::GET, "/api/agent-base")
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
}

async fn agents_crud_and_bad_input(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    let (s, agent) = api
        .post(
            "/api/agent-base",
            &json!({"name": "  pinger ", "description": "calls", "kind": "http",
                    "config": {"url": "https://example.test/ping/{{input.id}}"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let id = agent["id"].as_str().unwrap();
    assert!(id.starts_with("agt_"));
    assert_eq!(agent["name"], "pinger");
    assert_eq!(agent["kind"], "http");

    let (s, got) = api.get(&format!("/api/agent-base/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, agent);
    let (_, list) = api.get("/api/agent-base").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());

    let (s, patched) = api
        .patch(
            &format!("/api/agent-base/{id}"),
            &json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["config"], agent["config"]);
    // PUT needs the whole definition.
    let (s, body) = api
        .put(&format!("/api/agent-base/{id}"), &json!({"name": "x"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "kind");
    let (s, put) = api
        .put(
            &format!("/api/agent-base/{id}"),
            &json!({"name": "kb now", "kind": "knowledge", "config": {"limit": 2}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{put}");
    assert_eq!(put["kind"], "knowledge");
    // Changing the kind re-checks the config against the new kind.
    let (s, body) = api
        .patch(&format!("/api/agent-base/{id}"), &json!({"kind": "http"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("config"),
        "{body}"
    );

    // Bad input: each answer names what is wrong.
    let cases: Vec<(Value, StatusCode, &str, Option<&str>)> = vec![
        (
            json!({"name": "a", "kind": "robot"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("kind"),
        ),
        (
            json!({"name": "a", "kind": "http", "config": {"url": "ftp://x"}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("config.url"),
        ),
        (
            json!({"name": "a", "kind": "http", "config": {"url": "https://x/", "timeout_ms": "soon"}}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("config.timeout_ms"),
        ),
        (
            json!({"name": "", "kind": "knowledge"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("name"),
        ),
        (
            json!({"name": "a", "kind": "knowledge", "integration_id": "int_nope"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("integration_id"),
        ),
        (
            json!({"name": 5, "kind": "knowledge"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            None,
        ),
        (
            json!({"kind": "knowledge"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            None,
        ),
        (
            json!({"name": "a", "kind": "knowledge", "surprise": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            None,
        ),
        (
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            None,
        ),
    ];
    for (body, status, code, field) in cases {
        let (s, resp) = api.post("/api/agent-base", &body).await;
        assert_eq!(s, status, "{body} -> {resp}");
        assert_eq!(error_code(&resp), code, "{body}");
        if let Some(f) = field {
            assert_eq!(resp["error"]["field"], f, "{body}");
        }
    }
    let (s, resp) = api
        .send(
            api.req(Method::POST, "/api/agent-base")
                .header("content-type", "application/json")
                .body("{\"name\": "),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&resp), "invalid_json");
    let (s, resp) = api
        .send(api.req(Method::POST, "/api/agent-base").body("name=a"))
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(&resp), "unsupported_media_type");
    let huge = json!({"name": "a", "kind": "knowledge", "description": "x".repeat(1_100_000)});
    let (s, resp) = api.post("/api/agent-base", &huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&resp), "payload_too_large");

    for path in [
        "/api/agent-base/agt_missing",
        "/api/agent-base/agt_missing/executions",
    ] {
        let (s, resp) = api.get(path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&resp), "not_found");
    }
    let (s, _) = api
        .patch("/api/agent-base/agt_missing", &json!({"name": "x"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, _) = api.delete(&format!("/api/agent-base/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get(&format!("/api/agent-base/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.delete(&format!("/api/agent-base/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn lists_are_paginated(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    let mut created = Vec::new();
    for i in 0..5 {
        let (s, a) = api
            .post(
                "/api/agent-base",
                &json!({"name": format!("a{i}"), "kind": "knowledge"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        created.push(a["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/agent-base?limit=2&cursor={c}"),
            None => "/api/agent-base?limit=2".to_owned(),
        };
        let (s, page) = api.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    for bad in [
        "limit=0",
        "limit=201",
        "limit=x",
        "cursor=%%%",
        "cursor=Zm9v%27",
    ] {
        let (s, body) = api.get(&format!("/api/agent-base?{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
        error_code(&body);
    }
}

async fn http_agent_calls_its_integration(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    let upstream = Upstream::start().await;
    let (s, integ) = api
        .post(
            "/api/integrations-base",
            &json!({"name": "echo", "kind": "http",
                    "config": {"base_url": upstream.base, "headers": {"x-team": "blue"}},
                    "credentials": {"type": "bearer", "token": "s3cr3t-token"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{integ}");
    let (agent, trigger) = agent_with_trigger(
        &api,
        json!({"name": "poster", "kind": "http", "integration_id": integ["id"],
               "config": {"method": "POST", "url": "/items/{{input.id}}",
                          "query": {"q": "{{input.q}}"},
                          "headers": {"x-request-source": "agent {{input.id}}"},
                          "body": {"count": "{{input.n}}", "note": "id={{input.id}}"}}}),
    )
    .await;
    let exe = execute(&api, &trigger, json!({"id": "a b/c", "q": "x&y", "n": 3})).await;
    let done = api
        .wait_execution(&agent, &exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["output"]["status"], 200);
    assert_eq!(
        done["output"]["body"]["body"],
        json!({"count": 3, "note": "id=a b/c"})
    );
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());

    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path, "/items/a%20b%2Fc",
        "values are encoded into one segment"
    );
    assert_eq!(r.query.as_deref(), Some("q=x%26y"));
    assert_eq!(r.headers["authorization"], "Bearer s3cr3t-token");
    assert_eq!(r.headers["x-team"], "blue");
    assert_eq!(r.headers["x-request-source"], "agent a b/c");

    // An upstream failure fails the execution and keeps the answer.
    let (s, _) = api
        .patch(
            &format!("/api/agent-base/{agent}"),
            &json!({"config": {"url": "/fail/{{input.id}}"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let exe = execute(&api, &trigger, json!({"id": "7"})).await;
    let done = api
        .wait_execution(&agent, &exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "failed");
    assert!(done["error"].as_str().unwrap().contains("500"), "{done}");
    assert_eq!(done["output"]["status"], 500);
    assert_eq!(done["output"]["body"], json!({"oops": true}));

    // Missing input fails with the path that is missing.
    let exe = execute(&api, &trigger, json!({})).await;
    let done = api
        .wait_execution(&agent, &exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error"], "input.id is missing");

    // An absolute URL with nothing listening fails cleanly.
    let (_, dead) = api
        .post(
            "/api/agent-base",
            &json!({"name": "dead", "kind": "http", "config": {"url": "http://127.0.0.1:9/x"}}),
        )
        .await;
    let (s, t) = api
        .post(
            "/api/agent-base/triggers",
            &json!({"agent_id": dead["id"], "name": "t", "kind": "manual"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let exe = execute(&api, t["id"].as_str().unwrap(), json!({})).await;
    let done = api
        .wait_execution(dead["id"].as_str().unwrap(), &exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "failed");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{done}"
    );

    // Listing executions shows all four of the first agent's runs, with a status filter.
    let (_, list) = api
        .get(&format!("/api/agent-base/{agent}/executions"))
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    let (_, failed) = api
        .get(&format!("/api/agent-base/{agent}/executions?status=failed"))
        .await;
    assert_eq!(failed["items"].as_array().unwrap().len(), 2);
    let (s, _) = api
        .get(&format!("/api/agent-base/{agent}/executions?status=weird"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .get(&format!("/api/agent-base/{agent}/executions/exe_missing"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn integrations_keep_credentials_secret(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    let (s, i) = api
        .post(
            "/api/integrations-base",
            &json!({"name": "crm", "kind": "http", "config": {"base_url": "https://crm.example"},
                    "credentials": {"type": "basic", "username": "u", "password": "pa55word-xyz"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{i}");
    let id = i["id"].as_str().unwrap().to_owned();
    assert_eq!(i["credentials"], json!({"set": true}));
    for path in [
        "/api/integrations-base".to_owned(),
        format!("/api/integrations-base/{id}"),
    ] {
        let (_, body) = api.get(&path).await;
        assert!(!body.to_string().contains("pa55word"), "{body}");
    }
    // At rest: the database holds ciphertext only.
    let stored: Vec<(Option<String>,)> = sqlx::query_as("SELECT credentials FROM integrations")
        .fetch_all(&app.state().db.pool)
        .await
        .unwrap();
    let stored = stored[0].0.clone().unwrap();
    assert!(
        !stored.contains("pa55word") && !stored.contains("basic"),
        "{stored}"
    );

    let bad: Vec<(Value, &str)> = vec![
        (json!({"name": "x", "kind": "smtp"}), "kind"),
        (
            json!({"name": "x", "kind": "http", "config": {"base_url": "not a url"}}),
            "config.base_url",
        ),
        (json!({"name": "x", "kind": "http", "config": {}}), "config"),
        (
            json!({"name": "x", "kind": "http", "config": {"base_url": "https://a"}, "credentials": {"type": "magic"}}),
            "credentials",
        ),
        (
            json!({"name": "x", "kind": "http", "config": {"base_url": "https://a"}, "credentials": {"type": "bearer"}}),
            "credentials",
        ),
        (
            json!({"name": "x", "kind": "http", "config": {"base_url": "https://a", "headers": {"x": "a\nb"}}}),
            "config.headers.x",
        ),
    ];
    for (body, field) in bad {
        let (s, resp) = api.post("/api/integrations-base", &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert!(
            resp["error"]["field"].as_str().unwrap().starts_with(field),
            "{body}: {resp}"
        );
    }

    let (s, p) = api
        .patch(
            &format!("/api/integrations-base/{id}"),
            &json!({"credentials": null, "name": "crm2"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["credentials"], json!({"set": false}));
    assert_eq!(p["name"], "crm2");
    let (s, p) = api
        .put(
            &format!("/api/integrations-base/{id}"),
            &json!({"name": "crm3", "kind": "http", "config": {"base_url": "https://crm3.example"},
                    "credentials": {"type": "header", "name": "x-api-key", "value": "k"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["credentials"], json!({"set": true}));
    assert_eq!(p["config"]["base_url"], "https://crm3.example");
    let (s, _) = api
        .put(
            &format!("/api/integrations-base/{id}"),
            &json!({"name": "only"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // In use: refused, and the message names the agent.
    let (_, agent) = api
        .post(
            "/api/agent-base",
            &json!({"name": "user", "kind": "http", "integration_id": id, "config": {"url": "/x"}}),
        )
        .await;
    let (s, resp) = api.delete(&format!("/api/integrations-base/{id}")).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(error_code(&resp), "integration_in_use");
    assert!(
        resp["error"]["message"]
            .as_str()
            .unwrap()
            .contains(agent["id"].as_str().unwrap())
    );
    api.delete(&format!(
        "/api/agent-base/{}",
        agent["id"].as_str().unwrap()
    ))
    .await;
    let (s, _) = api.delete(&format!("/api/integrations-base/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get(&format!("/api/integrations-base/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn triggers_crud_and_execute(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    let (_, agent) = api.post("/api/agent-base", &knowledge_agent()).await;
    let agent_id = agent["id"].as_str().unwrap();
    let (s, t) = api
        .post(
            "/api/agent-base/triggers",
            &json!({"agent_id": agent_id, "name": "hook", "kind": "webhook",
                    "config": {"path": "/ci/done/"}, "input": {"question": "default?"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["config"], json!({"path": "ci/done"}));
    let id = t["id"].as_str().unwrap();
    let (s, sched) = api
        .post(
            "/api/agent-base/triggers",
            &json!({"agent_id": agent_id, "name": "nightly", "kind": "schedule",
                    "config": {"cron": "0 3 * * *"}, "enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sched}");
    assert!(
        sched["next_run_at"]
            .as_str()
            .unwrap()
            .ends_with("T03:00:00.000Z")
    );

    // The trigger list is its own route, not an agent called "triggers".
    let (s, list) = api.get("/api/agent-base/triggers").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (_, filtered) = api
        .get(&format!("/api/agent-base/triggers?agent_id={agent_id}"))
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 2);
    let (_, none) = api.get("/api/agent-base/triggers?agent_id=agt_other").await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let (s, details) = api.get(&format!("/api/agent-base/triggers/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(details["name"], "hook");

    // Execute: 202 with a Location to the queued execution.
    let r = api
        .req(
            Method::POST,
            &format!("/api/agent-base/triggers/{id}/execute"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let started: Value = r.json().await.unwrap();
    assert_eq!(started["status"], "queued");
    assert_eq!(location, started["location"]);
    let (s, exe) = api.get(&location).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(exe["input"], json!({"question": "default?"}));
    assert_eq!(exe["trigger_id"], id);

    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"agent_id": "agt_nope", "name": "x", "kind": "manual"}),
            "agent_id",
        ),
        (
            json!({"agent_id": agent_id, "name": "x", "kind": "sometimes"}),
            "kind",
        ),
        (
            json!({"agent_id": agent_id, "name": "x", "kind": "schedule", "config": {"cron": "every day"}}),
            "config.cron",
        ),
        (
            json!({"agent_id": agent_id, "name": "x", "kind": "webhook", "config": {"path": "../up"}}),
            "config.path",
        ),
        (
            json!({"agent_id": agent_id, "name": "x", "kind": "manual", "config": {"path": "a"}}),
            "config",
        ),
    ];
    for (body, field) in bad {
        let (s, resp) = api.post("/api/agent-base/triggers", &body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{body}");
    }

    let (s, p) = api
        .patch(
            &format!("/api/agent-base/triggers/{id}"),
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(p["enabled"], false);
    let (s, resp) = api
        .post(
            &format!("/api/agent-base/triggers/{id}/execute"),
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(error_code(&resp), "trigger_disabled");
    api.patch(
        &format!("/api/agent-base/triggers/{id}"),
        &json!({"enabled": true}),
    )
    .await;
    let (s, resp) = api
        .send(
            api.req(
                Method::POST,
                &format!("/api/agent-base/triggers/{id}/execute"),
            )
            .header("content-type", "application/json")
            .body("{oops"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&resp), "invalid_json");
    let (s, _) = api
        .post("/api/agent-base/triggers/trg_missing/execute", &json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.delete(&format!("/api/agent-base/triggers/{id}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.get(&format!("/api/agent-base/triggers/{id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Its past execution stays with the agent.
    let (s, _) = api.get(&location).await;
    assert_eq!(s, StatusCode::OK);
}

async fn webhooks_fire_matching_triggers(b: Backend) {
    let env = Env::new(&b).await;
    let mut config = env.config();
    config.limits.max_webhook_bytes = 4096;
    let app = env.start_with(config).await;
    let api = app.client("acme");
    let (_, agent) = api.post("/api/agent-base", &knowledge_agent()).await;
    let agent_id = agent["id"].as_str().unwrap();
    let mut ids = Vec::new();
    for (path, enabled) in [
        ("github/push", true),
        ("github/push", false),
        ("other", true),
    ] {
        let (s, t) = api
            .post(
                "/api/agent-base/triggers",
                &json!({"agent_id": agent_id, "name": path, "kind": "webhook",
                        "config": {"path": path}, "enabled": enabled}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        ids.push(t["id"].as_str().unwrap().to_owned());
    }
    let event = json!({"question": "what changed?", "ref": "main"});
    let (s, resp) = api.post("/api/webhook/github/push", &event).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{resp}");
    assert!(resp["event_id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(resp["path"], "github/push");
    let started = resp["executions"].as_array().unwrap();
    assert_eq!(started.len(), 1, "only the enabled trigger on that path");
    assert_eq!(started[0]["trigger_id"], ids[0]);
    let exe = started[0]["id"].as_str().unwrap();
    let done = api
        .wait_execution(agent_id, exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["input"], event);
    assert_eq!(done["status"], "succeeded", "{done}");

    let (s, resp) = api.post("/api/webhook/nobody/listens", &json!(1)).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(resp["executions"].as_array().unwrap().is_empty());
    // Another product posting to the same path starts nothing of acme's.
    let (s, resp) = app
        .client("globex")
        .post("/api/webhook/github/push", &event)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(resp["executions"].as_array().unwrap().is_empty());

    let (s, resp) = api
        .send(
            api.req(Method::POST, "/api/webhook/github/push")
                .body("not json"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&resp), "invalid_json");
    let (s, resp) = api
        .post(
            "/api/webhook/github/push",
            &json!({"blob": "x".repeat(5000)}),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&resp), "payload_too_large");
    // Sent raw: an HTTP client would resolve the dot segments itself.
    let (s, resp) = support::raw(&app.base, "acme", "POST", "/api/webhook/a/../b", b"{}").await;
    assert_eq!(s, 400, "{resp}");
    let (s, _) = api.post("/api/webhook/a%20b", &json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn deleting_an_agent_removes_its_triggers_and_executions(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    let (agent, trigger) = agent_with_trigger(&api, knowledge_agent()).await;
    let exe = execute(&api, &trigger, json!({"question": "hi"})).await;
    api.wait_execution(&agent, &exe, Duration::from_secs(10))
        .await;
    let (s, _) = api.delete(&format!("/api/agent-base/{agent}")).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .get(&format!("/api/agent-base/triggers/{trigger}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .get(&format!("/api/agent-base/{agent}/executions/{exe}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM executions WHERE agent_id = $1")
        .bind(&agent)
        .fetch_one(&app.state().db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn products_are_isolated(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let a = app.client("acme");
    let other = app.client("globex");
    let (agent, trigger) = agent_with_trigger(&a, knowledge_agent()).await;
    let exe = execute(&a, &trigger, json!({"question": "q"})).await;
    let (_, integ) = a
        .post(
            "/api/integrations-base",
            &json!({"name": "i", "kind": "http", "config": {"base_url": "https://x.example"}}),
        )
        .await;
    let integ = integ["id"].as_str().unwrap().to_owned();
    let r = a
        .req(Method::PUT, "/api/knowledge-base/storage/secret-plan.txt")
        .header("content-type", "text/plain")
        .body("the zeppelin launches at dawn")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let file: Value = r.json().await.unwrap();
    let doc = file["document_id"].as_str().unwrap().to_owned();

    // Lists are empty for the other product.
    for path in [
        "/api/agent-base",
        "/api/agent-base/triggers",
        "/api/integrations-base",
        "/api/knowledge-base",
        "/api/knowledge-base/storage",
        "/api/assistant/chat",
    ] {
        let (s, body) = other.get(path).await;
        assert_eq!(s, StatusCode::OK);
        assert!(
            body["items"].as_array().unwrap().is_empty(),
            "{path}: {body}"
        );
    }
    let (_, hits) = other.get("/api/knowledge-base/search?q=zeppelin").await;
    assert!(hits["results"].as_array().unwrap().is_empty());
    // Every id of acme's is "not found" for globex, whatever the method.
    let reads = [
        format!("/api/agent-base/{agent}"),
        format!("/api/agent-base/{agent}/executions"),
        format!("/api/agent-base/{agent}/executions/{exe}"),
        format!("/api/agent-base/triggers/{trigger}"),
        format!("/api/integrations-base/{integ}"),
        format!("/api/knowledge-base/{doc}"),
        "/api/knowledge-base/storage/secret-plan.txt".to_owned(),
    ];
    for path in &reads {
        let (s, body) = other.get(path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(&body), "not_found");
    }
    let writes = [
        (Method::PATCH, format!("/api/agent-base/{agent}")),
        (Method::DELETE, format!("/api/agent-base/{agent}")),
        (Method::PATCH, format!("/api/agent-base/triggers/{trigger}")),
        (
            Method::POST,
            format!("/api/agent-base/triggers/{trigger}/execute"),
        ),
        (
            Method::DELETE,
            format!("/api/agent-base/triggers/{trigger}"),
        ),
        (Method::PATCH, format!("/api/integrations-base/{integ}")),
        (Method::DELETE, format!("/api/integrations-base/{integ}")),
        (
            Method::DELETE,
            "/api/knowledge-base/storage/secret-plan.txt".to_owned(),
        ),
    ];
    for (method, path) in &writes {
        let (s, _) = other
            .send(
                other
                    .req(method.clone(), path)
                    .json(&json!({"name": "pwned"})),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}");
    }
    // Trigger creation cannot point at another product's agent.
    let (s, _) = other
        .post(
            "/api/agent-base/triggers",
            &json!({"agent_id": agent, "name": "x", "kind": "manual"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = other
        .post(
            "/api/agent-base",
            &json!({"name": "x", "kind": "http", "integration_id": integ, "config": {"url": "/x"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A globex file of the same name is a different file.
    let r = other
        .req(Method::PUT, "/api/knowledge-base/storage/secret-plan.txt")
        .body("globex's own")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // And acme still has everything, unchanged.
    for path in &reads {
        assert_eq!(a.get(path).await.0, StatusCode::OK, "{path}");
    }
    let body = a
        .file(Method::GET, "secret-plan.txt", &[])
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(body, "the zeppelin launches at dawn");
    let (_, agent_now) = a.get(&format!("/api/agent-base/{agent}")).await;
    assert_eq!(agent_now["name"], "kb");
}

async fn knowledge_agent_answers_with_citations(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    for (name, text) in [
        (
            "runbook.md",
            "# Rollback\nTo rollback a deploy, run `deployctl rollback --to previous`.",
        ),
        ("lunch.txt", "The cafeteria serves soup on Fridays."),
    ] {
        assert_eq!(api.put_file(name, None, text).await.0, StatusCode::CREATED);
    }
    let (agent, trigger) = agent_with_trigger(&api, knowledge_agent()).await;
    let exe = execute(
        &api,
        &trigger,
        json!({"question": "How do I rollback a deploy?"}),
    )
    .await;
    let done = api
        .wait_execution(&agent, &exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let out = &done["output"];
    assert_eq!(out["citations"][0]["name"], "runbook.md", "{out}");
    assert_eq!(out["citations"].as_array().unwrap().len(), 1);
    let answer = out["answer"].as_str().unwrap();
    assert!(
        answer.contains("[1] runbook.md") && answer.contains("deployctl rollback"),
        "{answer}"
    );

    let exe = execute(
        &api,
        &trigger,
        json!({"question": "quantum chromodynamics"}),
    )
    .await;
    let done = api
        .wait_execution(&agent, &exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], "succeeded");
    assert!(done["output"]["citations"].as_array().unwrap().is_empty());
    assert!(
        done["output"]["answer"]
            .as_str()
            .unwrap()
            .contains("nothing")
    );
}

/// Replaces `{param}` segments with sample values.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg {
            "{path}" => "github/push",
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route() {
    let env = Env::new(&Backend::Sqlite).await;
    let app = env.start().await;
    let api = app.client("acme");
    // Served without identity (it holds no data).
    let doc: Value = reqwest::get(format!("{}/api/openapi.json", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc["paths"].as_object().unwrap();

    // Every operation of the product guide is documented.
    let guide = [
        ("get", "/api/agent-base"),
        ("post", "/api/agent-base"),
        ("put", "/api/agent-base/{id}"),
        ("patch", "/api/agent-base/{id}"),
        ("delete", "/api/agent-base/{id}"),
        ("get", "/api/agent-base/{id}/executions"),
        ("get", "/api/agent-base/{id}/executions/{execution_id}"),
        ("get", "/api/agent-base/triggers"),
        ("post", "/api/agent-base/triggers"),
        ("get", "/api/agent-base/triggers/{id}"),
        ("post", "/api/agent-base/triggers/{id}/execute"),
        ("post", "/api/webhook/{path}"),
        ("get", "/api/integrations-base"),
        ("post", "/api/integrations-base"),
        ("put", "/api/integrations-base/{id}"),
        ("patch", "/api/integrations-base/{id}"),
        ("delete", "/api/integrations-base/{id}"),
        ("get", "/api/knowledge-base"),
        ("get", "/api/knowledge-base/search"),
        ("get", "/api/assistant/chat"),
        ("post", "/api/assistant/chat"),
        ("get", "/api/assistant/chat/{conversation_id}"),
        ("get", "/api/knowledge-base/storage"),
        ("post", "/api/knowledge-base/storage"),
        ("put", "/api/knowledge-base/storage/{name}"),
        ("get", "/api/knowledge-base/storage/{name}"),
        ("delete", "/api/knowledge-base/storage/{name}"),
    ];
    for (method, path) in guide {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} is not documented"
        );
    }

    // Every documented operation is routed, and every undocumented method on
    // a documented path is refused: the router and the document agree.
    let mut operations = 0;
    for (path, item) in paths {
        let url = concrete(path);
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let key = method.as_str().to_ascii_lowercase();
            let (s, body) = api
                .send(api.req(method.clone(), &url).json(&json!({})))
                .await;
            if item.get(&key).is_some() {
                operations += 1;
                assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
                if s == StatusCode::NOT_FOUND {
                    assert_ne!(error_code(&body), "route_not_found", "{method} {url}");
                }
                let op = &item[&key];
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path}"
                );
            } else {
                assert_eq!(
                    s,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "undocumented {method} {url}: {body}"
                );
            }
        }
    }
    assert!(operations >= 35, "{operations} operations documented");
    let mut ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "operation ids are unique");
    assert_eq!(n, operations);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_listener_serves_health_readiness_and_metrics_only() {
    let env = Env::new(&Backend::Sqlite).await;
    let app = env.start().await;
    let api = app.client("acme");
    api.get("/api/agent-base").await;
    api.anonymous().get("/api/agent-base").await;
    let get = |p: &str| reqwest::get(format!("{}{p}", app.ops));
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for line in [
        "prodgy_api_requests_total{group=\"agents\",method=\"GET\",status=\"200\"} 1",
        "prodgy_api_requests_total{group=\"agents\",method=\"GET\",status=\"401\"} 1",
        "prodgy_api_request_duration_seconds_bucket{group=\"agents\"",
        "prodgy_api_executions{status=\"queued\"} 0",
        "prodgy_api_executions_running 0",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert_eq!(get("/api/agent-base").await.unwrap().status(), 404);
    // Readiness follows the database.
    app.state().db.pool.close().await;
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
}

/// `app(state)` is a plain `Router`: it serves without a listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_in_process() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let env = Env::new(&Backend::Sqlite).await;
    let mut config = env.config();
    config.limits.max_upload_bytes = 1000;
    let state = prodgy_api::build_state(config).await.unwrap();
    let app = prodgy_api::app(state);
    let request = |method: &str, path: &str, body: Body| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("x-prodgy-product", "acme")
            .header("x-prodgy-scopes", "*")
            .header("content-type", "application/json")
            .body(body)
            .unwrap()
    };
    let read = |resp: axum::response::Response| async move {
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        )
    };

    let resp = app
        .clone()
        .oneshot(
            http::Request::builder()
                .uri("/api/agent-base")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (s, body) = read(resp).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "unauthenticated");

    let body = Body::from(knowledge_agent().to_string());
    let (s, agent) = read(
        app.clone()
            .oneshot(request("POST", "/api/agent-base", body))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let path = format!("/api/agent-base/{}", agent["id"].as_str().unwrap());
    let (s, got) = read(
        app.clone()
            .oneshot(request("GET", &path, Body::empty()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["id"], agent["id"]);

    // A body without a length that crosses the upload limit is cut off.
    let chunks = futures::stream::iter(
        (0..10).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 300]))),
    );
    let resp = app
        .clone()
        .oneshot(request(
            "PUT",
            "/api/knowledge-base/storage/big.txt",
            Body::from_stream(chunks),
        ))
        .await
        .unwrap();
    let (s, body) = read(resp).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "payload_too_large");
    let (_, list) = read(
        app.oneshot(request("GET", "/api/knowledge-base/storage", Body::empty()))
            .await
            .unwrap(),
    )
    .await;
    assert!(list["items"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_agents_cannot_reach_private_networks_by_default() {
    let env = Env::new(&Backend::Sqlite).await;
    let mut config = env.config();
    config.queue.allow_private_networks = false;
    let app = env.start_with(config).await;
    let api = app.client("acme");
    let upstream = Upstream::start().await;
    let port = upstream.base.rsplit(':').next().unwrap().to_owned();
    for (url, expected) in [
        (
            format!("{}/x", upstream.base),
            "blocked: 127.0.0.1 is a loopback",
        ),
        (
            format!("http://localhost:{port}/x"),
            "blocked: localhost resolves only to",
        ),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "blocked: 169.254.169.254",
        ),
        ("http://[::1]:9/".to_owned(), "blocked: ::1"),
    ] {
        let (agent, trigger) = agent_with_trigger(
            &api,
            json!({"name": "probe", "kind": "http", "config": {"url": url}}),
        )
        .await;
        let exe = execute(&api, &trigger, json!({})).await;
        let done = api
            .wait_execution(&agent, &exe, Duration::from_secs(10))
            .await;
        assert_eq!(done["status"], "failed", "{url}");
        let error = done["error"].as_str().unwrap();
        assert!(error.contains(expected), "{url}: {error}");
        assert!(error.contains("--agent-allow-private-networks"), "{error}");
    }
    assert!(
        upstream.requests().is_empty(),
        "nothing reached the private address"
    );
}
