#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! CRUD, conflicts, patches, status, generation, finalizers and GC through
//! a real `kube::Client`.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use prodgy_crds::{ApiToken, ApiTokenStatus, Phase};
use prodgy_kube_fake::FakeApiServer;

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn secret_crud_with_string_data_and_conflicts() {
    let server = FakeApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), "ns1");

    let created = secrets
        .create(&PostParams::default(), &secret("a"))
        .await
        .unwrap();
    assert_eq!(
        created.data.as_ref().unwrap()["token"],
        ByteString(b"s3cr3t".to_vec())
    );
    assert!(created.string_data.is_none());
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    let rv1 = created.metadata.resource_version.clone().unwrap();

    let raw = server.get_object("secrets", Some("ns1"), "a").unwrap();
    assert_eq!(raw["data"]["token"], "czNjcjN0");

    let dup = api_err(
        secrets
            .create(&PostParams::default(), &secret("a"))
            .await
            .unwrap_err(),
    );
    assert_eq!((dup.code, dup.reason.as_str()), (409, "AlreadyExists"));

    let mut changed = created.clone();
    changed
        .data
        .as_mut()
        .unwrap()
        .insert("extra".into(), ByteString(b"x".to_vec()));
    let updated = secrets
        .replace("a", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version.as_deref(),
        Some(rv1.as_str())
    );

    // `changed` still carries the old resourceVersion: stale.
    let stale = api_err(
        secrets
            .replace("a", &PostParams::default(), &changed)
            .await
            .unwrap_err(),
    );
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));

    let got = secrets.get("a").await.unwrap();
    assert_eq!(got.data.unwrap().len(), 2);

    secrets.delete("a", &DeleteParams::default()).await.unwrap();
    let missing = api_err(secrets.get("a").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    let missing = api_err(
        secrets
            .delete("a", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn apitoken_crud_applies_schema_defaults_and_generation() {
    let server = server_with_crds().await;
    let tokens: Api<ApiToken> = Api::namespaced(server.client(), "team-a");

    // Raw JSON without `active`: the schema default must fill it in.
    server
        .client()
        .request::<serde_json::Value>(
            http::Request::post("/apis/prodgy.io/v1/namespaces/team-a/apitokens")
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&json!({
                        "apiVersion": "prodgy.io/v1", "kind": "ApiToken",
                        "metadata": {"name": "t1"}, "spec": {"product": "acme"}
                    }))
                    .unwrap(),
                )
                .unwrap(),
        )
        .await
        .unwrap();
    let raw = server
        .get_object("apitokens.prodgy.io", Some("team-a"), "t1")
        .unwrap();
    assert_eq!(raw["spec"]["active"], true);
    assert_eq!(raw["spec"]["regeneration"], 0);
    assert_eq!(raw["metadata"]["generation"], 1);

    let t = tokens.get("t1").await.unwrap();
    assert!(t.spec.active);

    // Metadata-only change: no generation bump.
    let p = Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}}));
    let t = tokens
        .patch("t1", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(t.metadata.generation, Some(1));
    // Spec change: bump.
    let p = Patch::Merge(json!({"spec": {"active": false}}));
    let t = tokens
        .patch("t1", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(t.metadata.generation, Some(2));
    assert!(!t.spec.active);

    let all = tokens.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 1);
}

#[tokio::test]
async fn status_subresource_is_isolated() {
    let server = server_with_crds().await;
    let tokens: Api<ApiToken> = Api::namespaced(server.client(), "default");
    let mut t = token("iso");
    t.status = Some(ApiTokenStatus {
        usage: 99,
        ..Default::default()
    });
    let created = tokens.create(&PostParams::default(), &t).await.unwrap();
    assert!(created.status.is_none(), "create must drop status");

    let status = json!({"status": {"phase": "Active", "usage": 5}});
    let after = tokens
        .patch_status("iso", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(after.status.as_ref().unwrap().phase, Some(Phase::Active));
    assert_eq!(
        after.metadata.generation,
        Some(1),
        "status writes never bump generation"
    );

    // Status through the main resource is ignored; spec through /status too.
    let p = json!({"spec": {"active": false}, "status": {"usage": 1000}});
    let main = tokens
        .patch("iso", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(main.status.as_ref().unwrap().usage, 5);
    assert!(!main.spec.active);
    let p = json!({"spec": {"active": true}, "status": {"usage": 6}});
    let st = tokens
        .patch_status("iso", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert!(!st.spec.active);
    assert_eq!(st.status.unwrap().usage, 6);
}

#[tokio::test]
async fn finalizers_hold_deletion_until_removed() {
    let server = server_with_crds().await;
    let tokens: Api<ApiToken> = Api::namespaced(server.client(), "default");
    let mut t = token("fin");
    t.metadata.finalizers = Some(vec!["prodgy.io/cleanup".into()]);
    tokens.create(&PostParams::default(), &t).await.unwrap();

    tokens
        .delete("fin", &DeleteParams::default())
        .await
        .unwrap();
    let marked = tokens.get("fin").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());

    let p = Patch::Json::<()>(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": ["prodgy.io/cleanup"]},
            {"op": "remove", "path": "/metadata/finalizers"}
        ]))
        .unwrap(),
    );
    tokens
        .patch("fin", &PatchParams::default(), &p)
        .await
        .unwrap();
    assert_eq!(api_err(tokens.get("fin").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn unknown_resource_is_a_not_found_status() {
    let server = FakeApiServer::start().await; // no CRDs installed
    let tokens: Api<ApiToken> = Api::namespaced(server.client(), "default");
    let err = api_err(tokens.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
}

#[tokio::test]
async fn write_faults_answer_late_or_time_out_after_the_write_took_effect() {
    use prodgy_kube_fake::WriteFault;
    use std::time::{Duration, Instant};

    let server = FakeApiServer::start().await;
    let secrets: Api<Secret> = Api::namespaced(server.client(), "ns1");
    let delay = Duration::from_millis(300);
    server.set_write_fault("secrets", Some(WriteFault::Delay(delay)));
    let started = Instant::now();
    secrets
        .create(&PostParams::default(), &secret("slow"))
        .await
        .unwrap();
    assert!(started.elapsed() >= delay, "answered early");
    // Reads are not delayed; only the resource named is.
    secrets.get("slow").await.unwrap();

    server.set_write_fault("secrets", Some(WriteFault::TimeOut(Duration::ZERO)));
    // Without the client's own retries of a 504 (up to 15, minutes apart).
    let mut config = server.config().unwrap();
    config.default_retry = false;
    let once: Api<Secret> = Api::namespaced(kube::Client::try_from(config).unwrap(), "ns1");
    let e = api_err(
        once.create(&PostParams::default(), &secret("lost"))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (504, "Timeout"));
    assert!(server.get_object("secrets", Some("ns1"), "lost").is_some());

    server.set_write_fault("secrets", None);
    secrets
        .create(&PostParams::default(), &secret("normal"))
        .await
        .unwrap();
}
