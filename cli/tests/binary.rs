//! The real `kubectl-apitoken` binary, configured only through KUBECONFIG
//! and flags as a user would, against the Kubernetes API test server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Output, Stdio};

use prodgy_crds::token::check_format;
use prodgy_kube_fake::FakeApiServer;
use serde_json::json;
use support::{Mode, fetch, seed, shown_token, spawn_operator};

const BIN: &str = env!("CARGO_BIN_EXE_kubectl-apitoken");

/// Runs the binary with stdin closed (never a terminal) and this KUBECONFIG.
async fn kubectl_apitoken(kubeconfig: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBECTL_APITOKEN_TIMEOUT")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Asserts a failure: exit code 1 and exactly one `error: …` line.
fn assert_one_line_error(out: &Output, expected: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr, format!("error: {expected}\n"));
}

async fn cluster(dir: &Path) -> (FakeApiServer, String) {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    (server, path.to_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_creates_lists_and_revokes_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let (server, kubeconfig) = cluster(dir.path()).await;
    let _operator = spawn_operator(server.client(), Mode::Issue);

    let created = kubectl_apitoken(
        &kubeconfig,
        &["create", "ci", "--product", "acme", "--expires", "30d"],
    )
    .await;
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = shown_token(&text(&created.stdout));
    assert_eq!(check_format(&token), Ok(()));
    assert!(text(&created.stderr).contains("only time"));

    let listed = kubectl_apitoken(&kubeconfig, &["list"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let table = text(&listed.stdout);
    let row = table.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&format!("ci     acme      {}", &token[..8])),
        "{table}"
    );
    assert!(row.contains("   Active   Never"), "{table}");
    assert!(!table.contains(&token), "list must never show the token");

    // Piped stdin is not a terminal: revoke needs --yes.
    let refused = kubectl_apitoken(&kubeconfig, &["revoke", "ci"]).await;
    assert_one_line_error(
        &refused,
        "refusing to revoke apitoken \"ci\" without confirmation: stdin is not a terminal; pass --yes",
    );
    let revoked = kubectl_apitoken(&kubeconfig, &["revoke", "ci", "--yes"]).await;
    assert!(revoked.status.success(), "{}", text(&revoked.stderr));
    assert!(fetch(&server.client(), "default", "ci").await.spec.revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_defaults_to_the_kubeconfig_context() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let path = dir.path().join("team-a.yaml");
    std::fs::write(
        &path,
        server
            .kubeconfig_yaml()
            .replace("namespace: default", "namespace: team-a"),
    )
    .unwrap();
    seed(
        &server.client(),
        "team-a",
        "mine",
        json!({"product": "acme"}),
        None,
    )
    .await;
    seed(
        &server.client(),
        "default",
        "other",
        json!({"product": "acme"}),
        None,
    )
    .await;

    // A missing file in a KUBECONFIG list is skipped, as kubectl does.
    let list = format!("{}:{}", dir.path().join("absent").display(), path.display());
    let out = kubectl_apitoken(&list, &["list", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["items"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["items"][0]["name"], "mine");

    let flag = kubectl_apitoken(&list, &["list", "-o", "json", "-n", "default"]).await;
    let doc: serde_json::Value = serde_json::from_slice(&flag.stdout).unwrap();
    assert_eq!(doc["items"][0]["name"], "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (server, kubeconfig) = cluster(dir.path()).await;

    let missing = kubectl_apitoken(&kubeconfig, &["get", "nope"]).await;
    assert_one_line_error(
        &missing,
        "apitoken \"nope\" not found in namespace \"default\"",
    );

    server.deny("list", "apitokens");
    let denied = kubectl_apitoken(&kubeconfig, &["list"]).await;
    assert_one_line_error(
        &denied,
        "forbidden: you are not allowed to list apitokens.prodgy.io in namespace \"default\" (ask for RBAC permission to list apitokens.prodgy.io)",
    );

    let expiry = kubectl_apitoken(
        &kubeconfig,
        &["create", "x", "--product", "acme", "--expires", "yesterday"],
    )
    .await;
    assert_one_line_error(
        &expiry,
        "invalid expiry \"yesterday\": use an RFC 3339 time (2027-01-01T00:00:00Z) or a duration from now (30d, 12h, 1h30m)",
    );

    let context = kubectl_apitoken(&kubeconfig, &["list", "--context", "nope"]).await;
    assert_eq!(context.status.code(), Some(1));
    let stderr = text(&context.stderr);
    assert!(
        stderr.starts_with("error: cannot load the Kubernetes configuration: "),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Flag mistakes are clap's: exit code 2 and a usage hint.
    let usage = kubectl_apitoken(&kubeconfig, &["create", "x"]).await;
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("--product <PRODUCT>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cluster_and_no_crd_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let server = FakeApiServer::start().await; // no CRDs
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap().to_owned();
    let no_crd = kubectl_apitoken(&kubeconfig, &["list"]).await;
    assert_one_line_error(
        &no_crd,
        "the ApiToken CRD is not installed: kubectl apply -f crds/apitoken.yaml",
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = dir.path().join("closed");
    std::fs::write(
        &closed,
        server
            .kubeconfig_yaml()
            .replace(&server.url(), &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let out = kubectl_apitoken(closed.to_str().unwrap(), &["get", "ci"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: cannot reach the Kubernetes API at http://127.0.0.1:{port}/: "
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn every_command_has_help() {
    for command in [
        "create",
        "list",
        "get",
        "copy",
        "regenerate",
        "deactivate",
        "activate",
        "revoke",
    ] {
        let out = tokio::process::Command::new(BIN)
            .args([command, "--help"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(
            help.contains(&format!("Usage: kubectl apitoken {command}")),
            "{help}"
        );
        assert!(
            help.contains("--namespace"),
            "global flags missing from {command}: {help}"
        );
    }
}
