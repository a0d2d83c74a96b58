//! `--usage-limit` and the remaining quota in `list` and `get`, against the
//! Kubernetes API test server with the real CRD (and its validation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use clap::Parser;
use kubectl_apitoken::Cli;
use prodgy_kube_fake::FakeApiServer;
use serde_json::json;
use support::{Mode, Tty, exec, fetch, seed, spawn_operator};

#[tokio::test]
async fn create_sets_the_cap_and_list_and_get_show_what_is_left() {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let client = server.client();
    let _operator = spawn_operator(client.clone(), Mode::Issue);
    let args = [
        "create",
        "capped",
        "--product",
        "acme",
        "--usage-limit",
        "1000/30d",
    ];
    exec(&client, &args, Tty::None).await.ok();
    let stored = fetch(&client, "default", "capped").await;
    let cap = stored.spec.usage_limit.unwrap();
    assert_eq!((cap.requests, cap.per.as_deref()), (1000, Some("30d")));

    let status = json!({
        "phase": "Active",
        "prefix": "prod_abc",
        "usage": 3,
        "usageLimit": {"requests": 50, "used": 3, "remaining": 47, "renewsAt": null}
    });
    let spec = json!({"product": "acme", "usageLimit": {"requests": 50}});
    seed(&client, "default", "lifetime", spec, Some(status)).await;
    seed(
        &client,
        "default",
        "plain",
        json!({"product": "acme"}),
        None,
    )
    .await;
    let list = exec(&client, &["list"], Tty::None).await.ok();
    let lines: Vec<&str> = list.out.lines().collect();
    assert!(lines[0].trim_end().ends_with("REMAINING"), "{}", list.out);
    let last = |name: &str| {
        let line = lines.iter().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().last().unwrap().to_owned()
    };
    assert_eq!(last("lifetime"), "47");
    assert_eq!(last("plain"), "-");
    let card = exec(&client, &["get", "lifetime"], Tty::None).await.ok();
    assert!(
        card.out
            .contains("50 requests in the token's life: 47 left\n"),
        "{}",
        card.out
    );
    let json = exec(&client, &["list", "-o", "json"], Tty::None).await.ok();
    let doc: serde_json::Value = serde_json::from_str(&json.out).unwrap();
    let item = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "lifetime")
        .unwrap();
    assert_eq!(
        item["usageLimit"],
        json!({"requests": 50, "per": null, "remaining": 47, "renewsAt": null})
    );
}

#[test]
fn a_bad_usage_limit_is_refused_before_any_request() {
    for (bad, why) in [
        ("0", "between 1 and"),
        ("10/30s", "at least 1m"),
        ("many", "N/PER"),
    ] {
        let err = Cli::try_parse_from([
            "kubectl-apitoken",
            "create",
            "t",
            "--product",
            "acme",
            "--usage-limit",
            bad,
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--usage-limit") && err.contains(why),
            "{bad}: {err}"
        );
    }
}
