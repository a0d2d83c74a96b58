//! Work that outlives processes: queued and interrupted executions across
//! restarts, several replicas on one database, schedules, key rotation, and
//! the real binary starting with zero set-up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use prodgy_api::config::Secret;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, Backend, Env, Upstream, agent_with_trigger, execute};

on_every_backend!(
    queued_work_survives_a_restart,
    an_interrupted_execution_is_retried_after_its_lease,
    replicas_share_the_queue_without_double_work,
    schedules_fire_once_per_tick_across_replicas,
    credentials_survive_key_rotation,
    the_retention_deletes_only_finished_work_past_its_age,
);

async fn http_agent(api: &Api, upstream: &Upstream, path: &str) -> (String, String) {
    agent_with_trigger(
        api,
        json!({"name": "caller", "kind": "http",
               "config": {"url": format!("{}{path}", upstream.base)}}),
    )
    .await
}

async fn execution(api: &Api, agent: &str, id: &str) -> Value {
    api.get(&format!("/api/agent-base/{agent}/executions/{id}"))
        .await
        .1
}

/// The execution once it has finished, checked to have ended as `status`
/// after `attempts` attempts.
async fn finished(api: &Api, agent: &str, exe: &str, status: &str, attempts: u64) -> Value {
    let done = api
        .wait_execution(agent, exe, Duration::from_secs(10))
        .await;
    assert_eq!(done["status"], status, "{done}");
    assert_eq!(done["attempts"], attempts, "{done}");
    done
}

async fn queued_work_survives_a_restart(b: Backend) {
    let env = Env::new(&b).await;
    let upstream = Upstream::start().await;
    let mut idle = env.config();
    idle.queue.workers = 0;
    let app = env.start_with(idle).await;
    let api = app.client("acme");
    let (agent, trigger) = http_agent(&api, &upstream, "/items/{{input.id}}").await;
    let exe = execute(&api, &trigger, json!({"id": 1})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(execution(&api, &agent, &exe).await["status"], "queued");
    app.stop().await;
    assert!(upstream.requests().is_empty());

    let app = env.start().await;
    let api = app.client("acme");
    finished(&api, &agent, &exe, "succeeded", 1).await;
    assert_eq!(upstream.requests()[0].path, "/items/1");
}

async fn an_interrupted_execution_is_retried_after_its_lease(b: Backend) {
    let env = Env::new(&b).await;
    let upstream = Upstream::start().await;
    let mut config = env.config();
    config.queue.lease = Duration::from_secs(1);
    let app = env.start_with(config.clone()).await;
    let api = app.client("acme");
    let (agent, trigger) = http_agent(&api, &upstream, "/hang/{{input.id}}").await;
    let exe = execute(&api, &trigger, json!({"id": "x"})).await;
    upstream.wait_requests(1, Duration::from_secs(10)).await;
    // Heartbeats keep the lease while the call hangs: the idle second worker
    // does not take the execution over after one lease length.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let running = execution(&api, &agent, &exe).await;
    assert_eq!(running["status"], "running");
    assert_eq!(running["attempts"], 1);
    assert_eq!(upstream.requests().len(), 1);

    app.kill();
    let app = env.start_with(config).await;
    let api = app.client("acme");
    finished(&api, &agent, &exe, "succeeded", 2).await;
    assert_eq!(upstream.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_that_keeps_dying_is_failed_after_its_attempts() {
    let env = Env::new(&Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let mut config = env.config();
    config.queue.lease = Duration::from_secs(1);
    config.queue.max_attempts = 1;
    let app = env.start_with(config.clone()).await;
    let api = app.client("acme");
    let (agent, trigger) = http_agent(&api, &upstream, "/hang/{{input.id}}").await;
    let exe = execute(&api, &trigger, json!({"id": "x"})).await;
    upstream.wait_requests(1, Duration::from_secs(10)).await;
    app.kill();
    let app = env.start_with(config).await;
    let api = app.client("acme");
    let done = finished(&api, &agent, &exe, "failed", 1).await;
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("interrupted") && error.contains("1 attempts"),
        "{error}"
    );
    assert_eq!(upstream.requests().len(), 1, "not run again");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("prodgy_api_executions{status=\"failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_running_work_back() {
    let env = Env::new(&Backend::Sqlite).await;
    let upstream = Upstream::start().await;
    let app = env.start().await;
    let api = app.client("acme");
    let (agent, trigger) = http_agent(&api, &upstream, "/hang/{{input.id}}").await;
    let exe = execute(&api, &trigger, json!({"id": "x"})).await;
    upstream.wait_requests(1, Duration::from_secs(10)).await;
    app.stop().await;
    let row: (String, i64) = {
        let probe = env
            .start_with({
                let mut c = env.config();
                c.queue.workers = 0;
                c
            })
            .await;
        let v = execution(&probe.client("acme"), &agent, &exe).await;
        (
            v["status"].as_str().unwrap().to_owned(),
            v["attempts"].as_i64().unwrap(),
        )
    };
    assert_eq!(
        row,
        ("queued".to_owned(), 0),
        "released without using an attempt"
    );
    let app = env.start().await;
    finished(&app.client("acme"), &agent, &exe, "succeeded", 1).await;
}

async fn count(app: &support::Running, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.state().db.pool)
        .await
        .unwrap()
}

async fn the_retention_deletes_only_finished_work_past_its_age(b: Backend) {
    let env = Env::new(&b).await;
    let mut idle = env.config();
    idle.queue.workers = 0;
    let app = env.start_with(idle).await;
    let hour = 3_600_000_i64;
    let now = prodgy_api::ids::now_ms();
    // (id, status, created, finished): two days old unless named "new".
    let rows = [
        (
            "exe_old_ok",
            "succeeded",
            now - 48 * hour,
            Some(now - 47 * hour),
        ),
        (
            "exe_old_failed",
            "failed",
            now - 48 * hour,
            Some(now - 47 * hour),
        ),
        ("exe_old_queued", "queued", now - 48 * hour, None),
        ("exe_old_running", "running", now - 48 * hour, None),
        ("exe_new_ok", "succeeded", now - 2 * hour, Some(now - hour)),
        // Queued long ago, finished recently: kept.
        (
            "exe_slow_ok",
            "succeeded",
            now - 48 * hour,
            Some(now - hour),
        ),
    ];
    for (id, status, created, finished) in rows {
        sqlx::query(
            "INSERT INTO executions (id, product, agent_id, trigger_id, status, input, \
             attempts, max_attempts, created_at, finished_at, updated_at) \
             VALUES ($1, 'acme', 'agt_x', NULL, $2, '{}', 1, 3, $3, $4, $3)",
        )
        .bind(id)
        .bind(status)
        .bind(created)
        .bind(finished)
        .execute(&app.state().db.pool)
        .await
        .unwrap();
    }
    for (id, at) in [("evt_old", now - 48 * hour), ("evt_new", now - hour)] {
        sqlx::query(
            "INSERT INTO webhook_events (id, product, path, body, execution_ids, received_at) \
             VALUES ($1, 'acme', 'a/b', '{}', '[]', $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&app.state().db.pool)
        .await
        .unwrap();
    }
    // Keep one day.
    let deleted = prodgy_api::queue::prune(app.state(), now - 24 * hour)
        .await
        .unwrap();
    assert_eq!(deleted, (2, 1));
    let mut left: Vec<String> = sqlx::query_scalar("SELECT id FROM executions")
        .fetch_all(&app.state().db.pool)
        .await
        .unwrap();
    left.sort();
    assert_eq!(
        left,
        [
            "exe_new_ok",
            "exe_old_queued",
            "exe_old_running",
            "exe_slow_ok"
        ]
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM webhook_events WHERE id = 'evt_new'"
        )
        .await,
        1
    );
    // Applied again: nothing more to delete.
    let again = prodgy_api::queue::prune(app.state(), now - 24 * hour)
        .await
        .unwrap();
    assert_eq!(again, (0, 0));
    app.stop().await;

    // A replica with workers applies the configured retention at start.
    let mut pruning = env.config();
    pruning.queue.workers = 1;
    pruning.queue.retention = Some(Duration::from_secs(1800));
    let app = env.start_with(pruning).await;
    let mut waited = 0;
    while count(&app, "SELECT COUNT(*) FROM webhook_events").await > 0 {
        assert!(waited < 100, "the retention was not applied at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    // (The queued row may have been claimed meanwhile and failed just now.)
    let stale = count(
        &app,
        &format!(
            "SELECT COUNT(*) FROM executions WHERE status IN ('succeeded', 'failed') \
             AND finished_at < {}",
            now - hour / 2
        ),
    )
    .await;
    assert_eq!(stale, 0);
    app.stop().await;
}

async fn replicas_share_the_queue_without_double_work(b: Backend) {
    let env = Env::new(&b).await;
    let upstream = Upstream::start().await;
    let one = env.start().await;
    let two = env.start().await;
    let api = one.client("acme");
    let (agent, trigger) = http_agent(&api, &upstream, "/items/{{input.id}}").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        // Alternate the replica that accepts the request.
        let via = if i % 2 == 0 { &one } else { &two };
        ids.push(execute(&via.client("acme"), &trigger, json!({"id": i})).await);
    }
    for id in &ids {
        let done = api
            .wait_execution(&agent, id, Duration::from_secs(20))
            .await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1);
    }
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.len(), 30, "each execution ran exactly once");
    assert_eq!(paths.iter().collect::<HashSet<_>>().len(), 30);
}

async fn schedules_fire_once_per_tick_across_replicas(b: Backend) {
    let env = Env::new(&b).await;
    let one = env.start().await;
    let _two = env.start().await;
    let api = one.client("acme");
    let (_, agent) = api
        .post(
            "/api/agent-base",
            &json!({"name": "kb", "kind": "knowledge"}),
        )
        .await;
    let agent = agent["id"].as_str().unwrap().to_owned();
    let (s, t) = api
        .post(
            "/api/agent-base/triggers",
            &json!({"agent_id": agent, "name": "every second", "kind": "schedule",
                    "config": {"cron": "* * * * * *"}, "input": {"question": "tick"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    tokio::time::sleep(Duration::from_millis(3300)).await;
    api.patch(
        &format!("/api/agent-base/triggers/{}", t["id"].as_str().unwrap()),
        &json!({"enabled": false}),
    )
    .await;
    let (_, list) = api
        .get(&format!("/api/agent-base/{agent}/executions"))
        .await;
    let items = list["items"].as_array().unwrap();
    assert!(
        (2..=4).contains(&items.len()),
        "{} runs in 3.3 s",
        items.len()
    );
    let mut times: Vec<i64> = items
        .iter()
        .map(|e| {
            assert_eq!(e["input"], json!({"question": "tick"}));
            assert_eq!(e["trigger_id"], t["id"]);
            chrono::DateTime::parse_from_rfc3339(e["created_at"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    times.sort_unstable();
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] > 500, "two runs for one tick: {times:?}");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_, after) = api
        .get(&format!("/api/agent-base/{agent}/executions"))
        .await;
    assert_eq!(
        after["items"].as_array().unwrap().len(),
        items.len(),
        "disabled stops it"
    );
}

async fn credentials_survive_key_rotation(b: Backend) {
    let env = Env::new(&b).await;
    let upstream = Upstream::start().await;
    let old_key = env.key.clone();
    let new_key = prodgy_api::crypto::random_key_base64().unwrap();
    let app = env.start().await;
    let api = app.client("acme");
    let (_, integ) = api
        .post(
            "/api/integrations-base",
            &json!({"name": "svc", "kind": "http", "config": {"base_url": upstream.base},
                    "credentials": {"type": "bearer", "token": "rotate-me"}}),
        )
        .await;
    let (agent, trigger) = agent_with_trigger(
        &api,
        json!({"name": "a", "kind": "http", "integration_id": integ["id"], "config": {"url": "/ping"}}),
    )
    .await;
    app.stop().await;

    let with_keys = |keys: &str| {
        let mut c = env.config();
        c.encryption_key = Some(Secret(keys.to_owned()));
        c
    };
    let run = |app: &support::Running| {
        let api = app.client("acme");
        let (agent, trigger) = (agent.clone(), trigger.clone());
        async move {
            let exe = execute(&api, &trigger, json!({})).await;
            api.wait_execution(&agent, &exe, Duration::from_secs(10))
                .await
        }
    };
    // New key first, old key still accepted: old ciphertexts decrypt.
    let app = env
        .start_with(with_keys(&format!("{new_key},{old_key}")))
        .await;
    assert_eq!(run(&app).await["status"], "succeeded");
    assert_eq!(
        upstream.requests().last().unwrap().headers["authorization"],
        "Bearer rotate-me"
    );
    let rewritten = prodgy_api::integrations::reencrypt(app.state())
        .await
        .unwrap();
    assert_eq!(rewritten, 1);
    assert_eq!(
        prodgy_api::integrations::reencrypt(app.state())
            .await
            .unwrap(),
        0
    );
    let primary = app.state().keyring.primary_id().to_owned();
    let (key_id,): (String,) = sqlx::query_as("SELECT credentials_key_id FROM integrations")
        .fetch_one(&app.state().db.pool)
        .await
        .unwrap();
    assert_eq!(key_id, primary);
    app.stop().await;
    // The old key can now be dropped.
    let app = env.start_with(with_keys(&new_key)).await;
    assert_eq!(run(&app).await["status"], "succeeded");
    app.stop().await;
    // A keyring without the key in use fails the call, saying which key.
    let app = env.start_with(with_keys(&old_key)).await;
    let failed = run(&app).await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{primary} which is not in the keyring")),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_with_zero_setup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut command = support::Binary::command();
    command
        .args(["--log-format", "json"])
        .env("PRODGY_DATA_DIR", dir.path().join("data"))
        .env_remove("PRODGY_ENCRYPTION_KEY")
        .stderr(std::fs::File::create(&log).unwrap());
    let mut bin = support::Binary::start(command).await;
    let http = reqwest::Client::new();
    let ops = bin.ops.clone();
    let key = dir.path().join("data/encryption.key");
    assert!(key.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("generated a new encryption key"), "{text}");
    assert!(dir.path().join("data/prodgy.db").exists());

    assert_eq!(
        http.get(format!("{ops}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let data = bin.data.clone();
    let r = http
        .get(format!("{data}/api/agent-base"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = support::as_acme(http.get(format!("{data}/api/agent-base")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = http.get(format!("{ops}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains(
            "prodgy_api_requests_total{group=\"agents\",method=\"GET\",status=\"401\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("prodgy_api_executions{status=\"queued\"} 0"));
    // The data routes are not on the ops port.
    let r = http
        .get(format!("{ops}/api/agent-base"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let started = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &bin.child.id().to_string()])
        .status()
        .unwrap();
    let status = bin.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The same data directory needs no flags to re-encrypt.
    let out = support::Binary::command()
        .args([
            "reencrypt",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("re-encrypted"));
    // A bad flag names itself and fails.
    let out = support::Binary::command()
        .args([
            "--object-store",
            "s3",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--s3-bucket"));
}
