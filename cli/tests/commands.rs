//! Every command and error path against the Kubernetes API test server,
//! through a real `kube::Client`, with a stand-in for the operator where a
//! command waits for one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::{Duration as Age, Utc};
use kube::Client;
use prodgy_crds::token::check_format;
use prodgy_crds::{DeliveryMode, Phase, Scope};
use prodgy_kube_fake::FakeApiServer;
use serde_json::{Value, json};
use support::{Mode, Tty, delivered, exec, fetch, seed, shown_token, spawn_operator};

async fn cluster() -> (FakeApiServer, Client) {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let client = server.client();
    (server, client)
}

fn issued(prefix: &str) -> Value {
    json!({
        "phase": "Active",
        "prefix": prefix,
        "createdAt": "2026-01-02T03:04:06Z",
        "issuedRegeneration": 0,
        "usage": 42,
        "lastUsedAt": "2026-02-03T10:11:12Z",
        "deliverySecretName": "unused",
        "observedGeneration": 1,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "Active",
            "message": "token issued", "lastTransitionTime": "2026-01-02T03:04:06Z"
        }]
    })
}

/// An issued, active token in `default`: product acme, prefix prod_abc.
async fn seed_active(client: &Client, name: &str) {
    seed(
        client,
        "default",
        name,
        json!({"product": "acme"}),
        Some(issued("prod_abc")),
    )
    .await;
}

/// Patches of ApiTokens the server has seen (spec and status).
fn patches(server: &FakeApiServer) -> u64 {
    server.request_count("patch", "apitokens.prodgy.io")
}

// ---------------------------------------------------------------- create

#[tokio::test]
async fn create_applies_the_chosen_fields_and_shows_the_issued_token_once() {
    let (server, client) = cluster().await;
    let _operator = spawn_operator(client.clone(), Mode::Issue);
    let run = exec(
        &client,
        &[
            "create",
            "ci-bot",
            "--product",
            "acme",
            "--expires",
            "30d",
            "--scope",
            "agents:read",
            "--scope",
            "storage:write",
            "--description",
            "CI pipeline",
            "--rate-limit",
            "5",
            "--burst",
            "10",
            "-n",
            "team-a",
        ],
        Tty::None,
    )
    .await
    .ok();

    let token = shown_token(&run.out);
    assert_eq!(check_format(&token), Ok(()));
    assert_eq!(token, delivered(&client, "team-a", "ci-bot-token").await);
    assert!(
        run.out.contains(&format!("Prefix: {}\n", &token[..8])),
        "{}",
        run.out
    );
    assert_eq!(
        run.out.matches(&token).count(),
        1,
        "token shown more than once"
    );
    assert!(!run.err.contains(&token), "token on stderr");
    assert!(run.err.contains("only time"), "{}", run.err);
    assert!(
        run.err.contains("Secret team-a/ci-bot-token"),
        "{}",
        run.err
    );

    let stored = fetch(&client, "team-a", "ci-bot").await;
    assert_eq!(stored.spec.product, "acme");
    assert_eq!(stored.spec.display_name.as_deref(), Some("CI pipeline"));
    assert_eq!(stored.spec.scopes, [Scope::AgentsRead, Scope::StorageWrite]);
    let rate = stored.spec.rate_limit.unwrap();
    assert_eq!((rate.requests_per_second, rate.burst()), (5, 10));
    let expires = stored.spec.expires_at.unwrap() - Utc::now();
    assert!(
        expires > Age::days(29) && expires <= Age::days(30),
        "{expires}"
    );
    assert_eq!(stored.status.unwrap().phase, Some(Phase::Active));
    // The plugin wrote through the apply endpoint with its field manager
    // (the fake refuses an apply without one).
    assert!(patches(&server) >= 1);
}

#[tokio::test]
async fn create_in_reveal_once_mode_says_the_secret_will_be_removed() {
    let (_server, client) = cluster().await;
    let _operator = spawn_operator(client.clone(), Mode::Issue);
    let run = exec(
        &client,
        &["create", "once", "--product", "acme", "--reveal-once"],
        Tty::None,
    )
    .await
    .ok();
    assert_eq!(check_format(&shown_token(&run.out)), Ok(()));
    assert!(
        run.err.contains(
            "delivery Secret default/once-token will be removed after the operator's reveal window"
        ),
        "{}",
        run.err
    );
    let stored = fetch(&client, "default", "once").await;
    assert_eq!(
        stored.spec.delivery.unwrap().mode,
        Some(DeliveryMode::RevealOnce)
    );
}

#[tokio::test]
async fn create_refuses_a_taken_name_and_changes_nothing() {
    let (server, client) = cluster().await;
    seed_active(&client, "ci").await;
    let before = patches(&server);
    let run = exec(&client, &["create", "ci", "--product", "other"], Tty::None).await;
    assert_eq!(
        run.error(),
        "apitoken \"ci\" already exists in namespace \"default\": use `kubectl apitoken regenerate ci` for a new token"
    );
    assert_eq!(patches(&server), before);
    assert_eq!(fetch(&client, "default", "ci").await.spec.product, "acme");
}

#[tokio::test]
async fn create_refuses_an_invalid_expiry_before_calling_the_api() {
    let (server, client) = cluster().await;
    for (expiry, why) in [
        ("2020-01-01T00:00:00Z", "not in the future"),
        ("next week", "use an RFC 3339 time"),
    ] {
        let run = exec(
            &client,
            &["create", "ci", "--product", "acme", "--expires", expiry],
            Tty::None,
        )
        .await;
        let message = run.error();
        assert!(
            message.starts_with(&format!("invalid expiry {expiry:?}: ")),
            "{message}"
        );
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(server.request_count("get", "apitokens.prodgy.io"), 0);
    assert_eq!(patches(&server), 0);
}

#[tokio::test]
async fn create_passes_on_the_api_servers_validation_error() {
    let (_server, client) = cluster().await;
    let long = "d".repeat(300);
    let run = exec(
        &client,
        &["create", "ci", "--product", "acme", "--description", &long],
        Tty::None,
    )
    .await;
    let message = run.error();
    assert!(
        message.starts_with("the API server rejected the change: "),
        "{message}"
    );
    assert!(message.contains("displayName"), "{message}");
}

#[tokio::test]
async fn create_times_out_with_a_hint_when_no_operator_answers() {
    let (_server, client) = cluster().await;
    let started = std::time::Instant::now();
    let run = exec(
        &client,
        &["create", "ci", "--product", "acme", "--timeout", "1s"],
        Tty::None,
    )
    .await;
    assert_eq!(
        run.error(),
        "timed out after 1s waiting for the operator to issue apitoken \"ci\": is prodgy-operator running and watching namespace \"default\"?"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(run.out.is_empty(), "{}", run.out);
    // The resource stays, so the operator can still issue it later.
    assert_eq!(fetch(&client, "default", "ci").await.spec.product, "acme");
}

#[tokio::test]
async fn create_reports_the_operators_refusal() {
    let (_server, client) = cluster().await;
    let _operator = spawn_operator(client.clone(), Mode::Reject("grace period too long".into()));
    let run = exec(&client, &["create", "ci", "--product", "acme"], Tty::None).await;
    assert_eq!(
        run.error(),
        "the operator cannot issue apitoken \"ci\": grace period too long"
    );
}

#[tokio::test]
async fn create_explains_a_delivery_secret_that_is_gone_or_unusable() {
    let (_server, client) = cluster().await;
    let operator = spawn_operator(client.clone(), Mode::DeliveryGone);
    let run1 = exec(&client, &["create", "gone", "--product", "acme"], Tty::None).await;
    assert!(
        run1.error()
            .starts_with("apitoken \"gone\" was issued but its delivery Secret is already gone"),
        "{}",
        run1.error()
    );
    drop(operator);

    let _operator = spawn_operator(client.clone(), Mode::CorruptDelivery);
    let run2 = exec(&client, &["create", "bad", "--product", "acme"], Tty::None).await;
    assert_eq!(
        run2.error(),
        "apitoken \"bad\" was issued but its delivery Secret does not hold a well-formed token"
    );
    // Whatever the Secret holds is never echoed.
    let stored = delivered(&client, "default", "bad-token").await;
    assert!(!run2.error().contains(&stored) && !run2.out.contains(&stored));
}

// ------------------------------------------------------------------ list

async fn three_tokens(client: &Client) {
    seed(
        client,
        "team-a",
        "ci",
        json!({"product": "acme", "expiresAt": "2027-01-01T00:00:00Z"}),
        Some(issued("prod_abc")),
    )
    .await;
    seed(
        client,
        "team-a",
        "brand-new",
        json!({"product": "acme"}),
        None,
    )
    .await;
    let mut off = issued("prod_xyz");
    off["phase"] = json!("Inactive");
    off["usage"] = json!(0);
    off.as_object_mut().unwrap().remove("lastUsedAt");
    seed(
        client,
        "team-b",
        "batch",
        json!({"product": "globex", "active": false}),
        Some(off),
    )
    .await;
}

#[tokio::test]
async fn list_shows_one_row_per_token_with_the_guide_fields() {
    let (_server, client) = cluster().await;
    three_tokens(&client).await;
    let run = exec(&client, &["list", "-n", "team-a"], Tty::None)
        .await
        .ok();
    let lines: Vec<&str> = run.out.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.out);
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PRODUCT",
            "PREFIX",
            "CREATED AT",
            "EXPIRATION",
            "USAGE",
            "STATUS",
            "LAST USED"
        ]
    );
    let cells = |line: &str| -> Vec<String> {
        line.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect()
    };
    let pending = cells(lines[1]);
    assert_eq!(pending[0], "brand-new");
    assert_eq!(
        &pending[2..],
        ["-", &pending[3], "Never", "0", "Pending", "Never"]
    );
    let ci = cells(lines[2]);
    assert_eq!(ci[..3], ["ci", "acme", "prod_abc"]);
    assert_eq!(
        ci[4..],
        [
            "2027-01-01 00:00 UTC",
            "42",
            "Active",
            "2026-02-03 10:11 UTC"
        ]
    );
    assert!(!run.out.contains("batch"), "other namespace listed");
}

#[tokio::test]
async fn list_all_namespaces_adds_the_namespace_column() {
    let (_server, client) = cluster().await;
    three_tokens(&client).await;
    let run = exec(&client, &["list", "-A"], Tty::None).await.ok();
    let lines: Vec<&str> = run.out.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE   NAME"), "{}", run.out);
    assert!(
        lines[3].starts_with("team-b      batch       globex    prod_xyz"),
        "{}",
        run.out
    );
    assert!(lines[3].contains("   Inactive   Never"), "{}", run.out);
}

#[tokio::test]
async fn list_json_and_yaml_use_stable_field_names() {
    let (_server, client) = cluster().await;
    three_tokens(&client).await;
    let json_run = exec(&client, &["list", "-A", "-o", "json"], Tty::None)
        .await
        .ok();
    let doc: Value = serde_json::from_str(&json_run.out).unwrap();
    let items = doc["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    let ci = &items[1];
    assert_eq!(ci["name"], "ci");
    assert_eq!(ci["namespace"], "team-a");
    assert_eq!(ci["prefix"], "prod_abc");
    assert_eq!(ci["status"], "Active");
    assert_eq!(ci["usage"], 42);
    assert_eq!(ci["expiresAt"], "2027-01-01T00:00:00Z");
    assert_eq!(ci["lastUsedAt"], "2026-02-03T10:11:12Z");
    assert_eq!(items[0]["expiresAt"], Value::Null, "Never is null");
    assert_eq!(items[0]["status"], "Pending");

    let yaml_run = exec(&client, &["list", "-A", "-o", "yaml"], Tty::None)
        .await
        .ok();
    let from_yaml: Value = serde_yaml::from_str(&yaml_run.out).unwrap();
    assert_eq!(from_yaml, doc);
}

#[tokio::test]
async fn list_of_an_empty_namespace_says_so() {
    let (_server, client) = cluster().await;
    let table = exec(&client, &["list", "-n", "empty"], Tty::None)
        .await
        .ok();
    assert_eq!(table.out, "");
    assert_eq!(table.err, "No API tokens found in namespace \"empty\".\n");
    let json_run = exec(&client, &["list", "-n", "empty", "-o", "json"], Tty::None)
        .await
        .ok();
    assert_eq!(
        serde_json::from_str::<Value>(&json_run.out).unwrap(),
        json!({"items": []})
    );
}

// ------------------------------------------------------------------- get

#[tokio::test]
async fn get_prints_the_token_card() {
    let (_server, client) = cluster().await;
    seed(
        &client,
        "default",
        "ci",
        json!({"product": "acme", "displayName": "CI pipeline", "scopes": ["agents:read"],
               "rateLimit": {"requestsPerSecond": 5, "burst": 10}}),
        Some(issued("prod_abc")),
    )
    .await;
    let run = exec(&client, &["get", "ci"], Tty::None).await.ok();
    for line in [
        "Name:            ci\n",
        "Product:         acme\n",
        "Description:     CI pipeline\n",
        "Prefix:          prod_abc\n",
        "Status:          Active\n",
        "Issued at:       2026-01-02 03:04 UTC\n",
        "Expiration:      Never\n",
        "Usage:           42\n",
        "Last used:       2026-02-03 10:11 UTC\n",
        "Scopes:          agents:read\n",
        "Rate limit:      5 requests/s (burst 10)\n",
        "  Ready   True     Active   2026-01-02 03:04 UTC   token issued\n",
    ] {
        assert!(run.out.contains(line), "missing {line:?} in\n{}", run.out);
    }
    assert!(run.out.contains("Created at:      20"), "{}", run.out);

    let json_run = exec(&client, &["get", "ci", "-o", "json"], Tty::None)
        .await
        .ok();
    let doc: Value = serde_json::from_str(&json_run.out).unwrap();
    assert_eq!(doc["conditions"][0]["reason"], "Active");
    assert_eq!(
        doc["rateLimit"],
        json!({"requestsPerSecond": 5, "burst": 10})
    );
}

#[tokio::test]
async fn get_of_a_missing_token_says_not_found() {
    let (_server, client) = cluster().await;
    let run = exec(&client, &["get", "nope", "-n", "team-a"], Tty::None).await;
    assert_eq!(
        run.error(),
        "apitoken \"nope\" not found in namespace \"team-a\""
    );
}

// ------------------------------------------------------------------ copy

#[tokio::test]
async fn copy_sends_osc52_only_to_a_terminal_or_when_asked() {
    let (_server, client) = cluster().await;
    seed_active(&client, "ci").await;
    let osc = "\x1b]52;c;cHJvZF9hYmM=\x07";

    let tty = exec(&client, &["copy", "ci"], Tty::Interactive(""))
        .await
        .ok();
    assert_eq!(tty.out, format!("{osc}prod_abc\n"));
    assert_eq!(tty.err, "Copied the prefix to the clipboard.\n");

    let piped = exec(&client, &["copy", "ci"], Tty::None).await.ok();
    assert_eq!(piped.out, "prod_abc\n");

    let forced = exec(&client, &["copy", "ci", "--osc52"], Tty::None)
        .await
        .ok();
    assert_eq!(forced.out, format!("{osc}prod_abc\n"));
}

#[tokio::test]
async fn copy_of_a_token_not_yet_issued_explains_why() {
    let (_server, client) = cluster().await;
    seed(&client, "default", "new", json!({"product": "acme"}), None).await;
    let run = exec(&client, &["copy", "new"], Tty::Interactive("")).await;
    assert_eq!(
        run.error(),
        "apitoken \"new\" has no prefix yet: the operator has not issued it"
    );
    assert!(run.out.is_empty());
}

// ------------------------------------------------------------ regenerate

#[tokio::test]
async fn regenerate_issues_a_new_token_and_shows_it_once() {
    let (_server, client) = cluster().await;
    let _operator = spawn_operator(client.clone(), Mode::Issue);
    let first = exec(&client, &["create", "ci", "--product", "acme"], Tty::None)
        .await
        .ok();
    let old = shown_token(&first.out);

    let again = exec(&client, &["regenerate", "ci"], Tty::None).await.ok();
    let new = shown_token(&again.out);
    assert_ne!(new, old);
    assert_eq!(check_format(&new), Ok(()));
    assert_eq!(new, delivered(&client, "default", "ci-token").await);
    assert!(
        again.err.contains(&format!(
            "The previous token ({}...) no longer works.",
            &old[..8]
        )),
        "{}",
        again.err
    );
    let stored = fetch(&client, "default", "ci").await;
    assert_eq!(stored.spec.regeneration, 1);
    assert_eq!(stored.spec.regeneration_grace_period, None);

    let graced = exec(&client, &["regenerate", "ci", "--grace", "1h"], Tty::None)
        .await
        .ok();
    assert_ne!(shown_token(&graced.out), new);
    assert!(graced.err.contains("keeps working until"), "{}", graced.err);
    let stored = fetch(&client, "default", "ci").await;
    assert_eq!(stored.spec.regeneration, 2);
    assert_eq!(stored.spec.regeneration_grace_period.as_deref(), Some("1h"));
}

#[tokio::test]
async fn regenerate_refuses_revoked_and_expired_tokens() {
    let (server, client) = cluster().await;
    let mut revoked = issued("prod_abc");
    revoked["phase"] = json!("Revoked");
    seed(
        &client,
        "default",
        "dead",
        json!({"product": "acme", "revoked": true}),
        Some(revoked),
    )
    .await;
    let mut expired = issued("prod_def");
    expired["phase"] = json!("Expired");
    let past = (Utc::now() - Age::hours(1)).to_rfc3339();
    seed(
        &client,
        "default",
        "old",
        json!({"product": "acme", "expiresAt": past}),
        Some(expired),
    )
    .await;
    let before = patches(&server);

    let r = exec(&client, &["regenerate", "dead"], Tty::None).await;
    assert!(
        r.error()
            .starts_with("apitoken \"dead\" is revoked: revocation is permanent"),
        "{}",
        r.error()
    );
    let e = exec(&client, &["regenerate", "old"], Tty::None).await;
    assert!(
        e.error()
            .contains("a regenerated token would be expired too"),
        "{}",
        e.error()
    );
    assert_eq!(patches(&server), before);
}

#[tokio::test]
async fn regenerate_times_out_when_the_operator_is_gone() {
    let (_server, client) = cluster().await;
    seed_active(&client, "ci").await;
    let run = exec(&client, &["regenerate", "ci", "--timeout", "1s"], Tty::None).await;
    assert_eq!(
        run.error(),
        "timed out after 1s waiting for the operator to issue regeneration 1 of apitoken \"ci\" (last status: Ready=True Active: token issued): is prodgy-operator running and watching namespace \"default\"?"
    );
}

// ------------------------------------------------- deactivate / activate

#[tokio::test]
async fn deactivate_and_activate_toggle_the_token() {
    let (_server, client) = cluster().await;
    seed_active(&client, "ci").await;

    let off = exec(&client, &["deactivate", "ci"], Tty::None).await.ok();
    assert!(
        off.out.starts_with("apitoken \"ci\" deactivated"),
        "{}",
        off.out
    );
    assert!(!fetch(&client, "default", "ci").await.spec.active);
    let again = exec(&client, &["deactivate", "ci"], Tty::None).await.ok();
    assert_eq!(again.out, "apitoken \"ci\" is already inactive.\n");

    let on = exec(&client, &["activate", "ci"], Tty::None).await.ok();
    assert!(
        on.out.starts_with("apitoken \"ci\" activated"),
        "{}",
        on.out
    );
    assert!(fetch(&client, "default", "ci").await.spec.active);
    let again = exec(&client, &["activate", "ci"], Tty::None).await.ok();
    assert_eq!(again.out, "apitoken \"ci\" is already active.\n");
}

#[tokio::test]
async fn activate_refuses_revoked_and_expired_tokens_with_an_explanation() {
    let (server, client) = cluster().await;
    seed(
        &client,
        "default",
        "dead",
        json!({"product": "acme", "revoked": true, "active": false}),
        None,
    )
    .await;
    let past = (Utc::now() - Age::hours(1)).to_rfc3339();
    seed(
        &client,
        "default",
        "old",
        json!({"product": "acme", "active": false, "expiresAt": past}),
        None,
    )
    .await;

    let r = exec(&client, &["activate", "dead"], Tty::None).await;
    assert_eq!(
        r.error(),
        "apitoken \"dead\" is revoked: revocation is permanent, so it cannot be activated again; create a new token"
    );
    let e = exec(&client, &["activate", "old"], Tty::None).await;
    assert!(
        e.error().starts_with("apitoken \"old\" expired at "),
        "{}",
        e.error()
    );
    assert!(
        e.error()
            .ends_with("activating it would not make it usable; create a new token")
    );
    let d = exec(&client, &["deactivate", "dead"], Tty::None).await;
    assert_eq!(
        d.error(),
        "apitoken \"dead\" is revoked: it is already permanently inactive"
    );
    assert_eq!(patches(&server), 0);
}

// ---------------------------------------------------------------- revoke

#[tokio::test]
async fn revoke_with_yes_is_permanent_and_a_second_revoke_is_refused() {
    let (_server, client) = cluster().await;
    seed_active(&client, "ci").await;
    let run1 = exec(&client, &["revoke", "ci", "--yes"], Tty::None)
        .await
        .ok();
    assert!(
        run1.out.starts_with("apitoken \"ci\" revoked"),
        "{}",
        run1.out
    );
    assert!(fetch(&client, "default", "ci").await.spec.revoked);

    let run2 = exec(&client, &["revoke", "ci", "--yes"], Tty::None).await;
    assert_eq!(
        run2.error(),
        "apitoken \"ci\" is already revoked; revocation is permanent, there is nothing to do"
    );
}

#[tokio::test]
async fn revoke_without_a_terminal_needs_yes() {
    let (server, client) = cluster().await;
    seed_active(&client, "ci").await;
    let before = patches(&server);
    let run = exec(&client, &["revoke", "ci"], Tty::None).await;
    assert_eq!(
        run.error(),
        "refusing to revoke apitoken \"ci\" without confirmation: stdin is not a terminal; pass --yes"
    );
    assert!(!fetch(&client, "default", "ci").await.spec.revoked);
    assert_eq!(patches(&server), before);
}

#[tokio::test]
async fn revoke_on_a_terminal_asks_and_honours_the_answer() {
    let (_server, client) = cluster().await;
    seed_active(&client, "ci").await;

    let no = exec(&client, &["revoke", "ci"], Tty::Interactive("n\n")).await;
    assert_eq!(no.error(), "aborted: nothing was changed");
    assert_eq!(
        no.err,
        "Revoke apitoken \"ci\" (prod_abc) in namespace \"default\"? It stops working for good and cannot be re-activated. [y/N] "
    );
    assert!(!fetch(&client, "default", "ci").await.spec.revoked);

    exec(&client, &["revoke", "ci"], Tty::Interactive("y\n"))
        .await
        .ok();
    let stored = fetch(&client, "default", "ci").await;
    assert!(stored.spec.revoked);
}

#[tokio::test]
async fn the_api_server_keeps_revocation_permanent_too() {
    // Not the plugin's doing, but what makes "permanent" true: the CRD's CEL
    // rule, which a future `activate` bug could not get around.
    let (_server, client) = cluster().await;
    seed(
        &client,
        "default",
        "ci",
        json!({"product": "acme", "revoked": true}),
        None,
    )
    .await;
    let api = kube::Api::<prodgy_crds::ApiToken>::namespaced(client.clone(), "default");
    let err = api
        .patch(
            "ci",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"revoked": false}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked is permanent"), "{err}");
}

// ---------------------------------------------------------- error paths

#[tokio::test]
async fn every_command_says_when_the_crd_is_not_installed() {
    let server = FakeApiServer::start().await; // no CRDs registered
    let client = server.client();
    for args in [
        &["list"][..],
        &["list", "-A"],
        &["get", "ci"],
        &["copy", "ci"],
        &["create", "ci", "--product", "acme"],
        &["regenerate", "ci"],
        &["deactivate", "ci"],
        &["activate", "ci"],
        &["revoke", "ci", "--yes"],
    ] {
        let run = exec(&client, args, Tty::None).await;
        assert_eq!(
            run.error(),
            "the ApiToken CRD is not installed: kubectl apply -f crds/apitoken.yaml",
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn rejected_credentials_point_at_the_kubeconfig_user() {
    let (server, client) = cluster().await;
    seed_active(&client, "ci").await;
    let mut config = server.config().unwrap();
    config.auth_info.token = Some("someone-elses-token".to_owned().into());
    let stranger = Client::try_from(config).unwrap();
    for args in [&["list"][..], &["get", "ci"], &["revoke", "ci", "--yes"]] {
        let run = exec(&stranger, args, Tty::None).await;
        assert_eq!(
            run.error(),
            "the Kubernetes API at the configured cluster rejected your credentials (401): check your kubeconfig user",
            "{args:?}"
        );
    }
    assert!(!fetch(&client, "default", "ci").await.spec.revoked);
}

#[tokio::test]
async fn rbac_refusals_name_the_verb_and_resource() {
    let (server, client) = cluster().await;
    seed_active(&client, "ci").await;

    server.deny("get", "apitokens");
    let get = exec(&client, &["get", "ci"], Tty::None).await;
    assert_eq!(
        get.error(),
        "forbidden: you are not allowed to get apitokens.prodgy.io in namespace \"default\" (ask for RBAC permission to get apitokens.prodgy.io)"
    );
    server.allow("get", "apitokens");

    server.deny("list", "apitokens");
    let list = exec(&client, &["list", "-A"], Tty::None).await;
    assert_eq!(
        list.error(),
        "forbidden: you are not allowed to list apitokens.prodgy.io in all namespaces (ask for RBAC permission to list apitokens.prodgy.io)"
    );
    server.allow("list", "apitokens");

    server.deny("patch", "apitokens");
    let revoke = exec(&client, &["revoke", "ci", "--yes"], Tty::None).await;
    assert!(
        revoke.error().starts_with(
            "forbidden: you are not allowed to patch apitokens.prodgy.io in namespace \"default\""
        ),
        "{}",
        revoke.error()
    );
    server.allow("patch", "apitokens");
    assert!(!fetch(&client, "default", "ci").await.spec.revoked);
}

#[tokio::test]
async fn create_without_permission_to_read_the_delivery_secret_says_so() {
    let (server, client) = cluster().await;
    let _operator = spawn_operator(client.clone(), Mode::Issue);
    server.deny("get", "secrets");
    let run = exec(&client, &["create", "ci", "--product", "acme"], Tty::None).await;
    assert_eq!(
        run.error(),
        "forbidden: you are not allowed to get secrets in namespace \"default\" (ask for RBAC permission to get secrets)"
    );
    assert!(run.out.is_empty());
}

#[tokio::test]
async fn an_unreachable_cluster_is_one_clear_line() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let session =
        kubectl_apitoken::Session::new(client, "default", std::time::Duration::from_secs(2))
            .with_server(format!("http://127.0.0.1:{port}/"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut term = kubectl_apitoken::Terminal {
        out: &mut out,
        err: &mut err,
        input: None,
        stdout_is_tty: false,
    };
    let cli = <kubectl_apitoken::Cli as clap::Parser>::try_parse_from(["kubectl-apitoken", "list"])
        .unwrap();
    let message = session
        .run(&cli.command, &mut term)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "cannot reach the Kubernetes API at http://127.0.0.1:{port}/: "
        )),
        "{message}"
    );
    assert!(message.to_lowercase().contains("refused"), "{message}");
    assert!(!message.contains('\n'));
}
