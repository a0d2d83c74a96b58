#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The `prodgy-operator` binary itself: start-up validation, `issue-offline`,
//! and a real process against the API test server stopped by SIGTERM.

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use prodgy_crds::{HashedRecord, TokenHash};
use serde_json::json;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_prodgy-operator");

#[test]
fn bad_configuration_fails_at_start_naming_the_flag() {
    for (args, env, flag) in [
        (vec!["--delivery-mode", "Email"], vec![], "--delivery-mode"),
        (vec!["--reveal-window", "soon"], vec![], "--reveal-window"),
        (
            vec![],
            vec![("PRODGY_TOKEN_PREFIX", "has_underscore")],
            "--token-prefix",
        ),
        (vec!["--leader-election=true"], vec![], "--lease-namespace"),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("POD_NAMESPACE")
            .envs(env)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn issue_offline_prints_the_plaintext_once_and_writes_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("t.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: prodgy.io/v1\nkind: ApiToken\nmetadata: {name: demo, namespace: team-a}\nspec: {product: acme}\n",
    )
    .unwrap();
    let out_dir = dir.path().join("tokens");
    let run = || {
        Command::new(BIN)
            .args(["issue-offline", "--file"])
            .arg(&manifest)
            .arg("--out-dir")
            .arg(&out_dir)
            .args(["--token-prefix", "acme"])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let plaintext = String::from_utf8(first.stdout).unwrap();
    let plaintext = plaintext.trim();
    assert!(plaintext.starts_with("acme_"));
    assert_eq!(plaintext.lines().count(), 1, "stdout holds only the token");
    let record =
        HashedRecord::from_json(&std::fs::read(out_dir.join("team-a-demo.json")).unwrap()).unwrap();
    assert_eq!(record.hashes[0].sha256, TokenHash::of(plaintext).to_hex());

    let second = run();
    assert!(second.status.success());
    assert!(second.stdout.is_empty(), "a second run re-issued");
    assert!(String::from_utf8_lossy(&second.stderr).contains("already issued"));
}

#[tokio::test]
async fn the_binary_reconciles_through_a_kubeconfig_and_stops_on_sigterm() {
    let w = World::new("bin").await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    w.server.write_kubeconfig(&kubeconfig).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--namespaces",
            &w.ns,
            "--hashed-secret-namespace",
            &w.hashed_ns,
            "--metrics-addr",
            "127.0.0.1:0",
            "--leader-election=false",
            "--log-format",
            "json",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    w.create("t", json!({"product": "acme"})).await;
    w.wait_phase("t", "Active").await;
    let plaintext = w.delivered("t-token").await.unwrap();

    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the operator did not stop on SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    let out = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("\"level\":\"INFO\""),
        "json logs expected: {logs}"
    );
    assert!(logs.contains("Issued"));
    assert!(!logs.contains(&plaintext[5..]), "plaintext in the logs");
    assert!(out.stdout.is_empty(), "the operator printed to stdout");
}
