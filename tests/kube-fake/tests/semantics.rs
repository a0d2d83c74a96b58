#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Patches, selectors, pagination, garbage collection, RBAC denial, CEL
//! rules, namespaces, leases, discovery and kubeconfig, through a real
//! `kube::Client`.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use prodgy_crds::{ApiToken, UsageReport};
use prodgy_kube_fake::FakeApiServer;

mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn json_patch_and_server_side_apply() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("default").await;
    let tokens: Api<ApiToken> = Api::namespaced(cluster.client(), &ns);

    // Apply creates when missing, then merges the given fields.
    let pp = PatchParams::apply("prodgy-cli").force();
    let manifest = json!({
        "apiVersion": "prodgy.io/v1", "kind": "ApiToken",
        "metadata": {"name": "ssa"}, "spec": {"product": "acme", "displayName": "CI"}
    });
    let t = tokens
        .patch("ssa", &pp, &Patch::Apply(&manifest))
        .await
        .unwrap();
    assert_eq!(t.spec.display_name.as_deref(), Some("CI"));
    assert!(t.spec.active, "schema default applied on apply-create");
    // displayName is applied again: a real server would drop a field its
    // manager leaves out (see server_side_apply_tracks_field_ownership).
    let again = json!({
        "apiVersion": "prodgy.io/v1", "kind": "ApiToken",
        "metadata": {"name": "ssa", "labels": {"a": "b"}},
        "spec": {"product": "acme", "displayName": "CI", "active": false}
    });
    let t = tokens
        .patch("ssa", &pp, &Patch::Apply(&again))
        .await
        .unwrap();
    assert!(!t.spec.active);
    assert_eq!(t.labels()["a"], "b");
    assert_eq!(t.metadata.generation, Some(2));

    // Apply without a field manager is refused, as on a real server.
    let err = cluster
        .client()
        .request::<serde_json::Value>(
            http::Request::patch(format!("/apis/prodgy.io/v1/namespaces/{ns}/apitokens/ssa"))
                .header("content-type", "application/apply-patch+yaml")
                .body(serde_json::to_vec(&again).unwrap())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 400);

    let jp = serde_json::from_value(json!([
        {"op": "replace", "path": "/spec/displayName", "value": "renamed"},
        {"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}
    ]))
    .unwrap();
    let t = tokens
        .patch("ssa", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap();
    assert_eq!(t.spec.display_name.as_deref(), Some("renamed"));
    assert_eq!(t.annotations()["x"], "y");

    // A failing `test` op is rejected and changes nothing.
    let jp = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/displayName", "value": "other"},
        {"op": "replace", "path": "/spec/displayName", "value": "never"}
    ]))
    .unwrap();
    let err = tokens
        .patch("ssa", &PatchParams::default(), &Patch::Json::<()>(jp))
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 422);

    // A merge patch naming a stale resourceVersion is a conflict.
    let p = json!({"metadata": {"resourceVersion": "1"}, "spec": {"displayName": "x"}});
    let err = tokens
        .patch("ssa", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 409);

    // Strategic merge is for built-in types only.
    let p = json!({"spec": {"displayName": "x"}});
    let err = tokens
        .patch("ssa", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 415);
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    cms.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    let p = json!({"data": {"k": "v"}});
    let c = cms
        .patch("c", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap();
    assert_eq!(c.data.unwrap()["k"], "v");
}

/// Known difference: the test server applies as a plain merge, without
/// managed fields.
#[tokio::test]
async fn server_side_apply_tracks_field_ownership() {
    let cluster = Cluster::start().await;
    if cluster
        .real_only("server-side apply is a merge here: no field ownership, no conflicts")
        .is_none()
    {
        return;
    }
    let ns = cluster.namespace("ssa").await;
    let tokens: Api<ApiToken> = Api::namespaced(cluster.client(), &ns);
    let apply = |spec: serde_json::Value| {
        json!({"apiVersion": "prodgy.io/v1", "kind": "ApiToken",
               "metadata": {"name": "owned"}, "spec": spec})
    };
    let cli = PatchParams::apply("prodgy-cli");
    let with_name = apply(json!({"product": "acme", "displayName": "CI"}));
    tokens
        .patch("owned", &cli, &Patch::Apply(&with_name))
        .await
        .unwrap();
    // Another manager changing the field is a conflict unless it forces.
    let other = apply(json!({"product": "acme", "displayName": "theirs"}));
    let err = tokens
        .patch(
            "owned",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 409);
    // A field the manager no longer applies is removed.
    let without = apply(json!({"product": "acme"}));
    let t = tokens
        .patch("owned", &cli, &Patch::Apply(&without))
        .await
        .unwrap();
    assert_eq!(t.spec.display_name, None);
}

/// Known difference: the test server treats a strategic merge patch as a
/// JSON merge patch, so lists are replaced instead of merged by key.
#[tokio::test]
async fn strategic_merge_merges_lists_by_key() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let cluster = Cluster::start_bare().await;
    if cluster
        .real_only("strategic merge is a JSON merge here: lists are replaced, not merged by key")
        .is_none()
    {
        return;
    }
    let ns = cluster.namespace("strategic").await;
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), &ns);
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "sa"}, "secrets": [{"name": "a"}]
    }))
    .unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let p = json!({"secrets": [{"name": "b"}]});
    let merged = sas
        .patch("sa", &PatchParams::default(), &Patch::Strategic(&p))
        .await
        .unwrap();
    let mut names: Vec<_> = merged
        .secrets
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"], "merged by name, not replaced");
}

#[tokio::test]
async fn no_op_writes_create_no_event() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let c = cms
        .create(&PostParams::default(), &cm("same", &[("a", "b")]))
        .await
        .unwrap();
    let counter = cluster.fake("counts the events it stored");
    let before = counter.map(|server| server.event_count("configmaps"));
    let p = json!({"metadata": {"labels": {"a": "b"}}});
    let after = cms
        .patch("same", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(after.resource_version(), c.resource_version());
    if let Some(server) = counter {
        assert_eq!(Some(server.event_count("configmaps")), before);
    }
}

#[tokio::test]
async fn owner_deletion_collects_dependents() {
    let cluster = Cluster::start().await;
    let team = cluster.namespace("team").await;
    let tokens: Api<ApiToken> = Api::namespaced(cluster.client(), &team);
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &team);
    let owner = tokens
        .create(&PostParams::default(), &token("owner"))
        .await
        .unwrap();
    let oref: OwnerReference = owner.controller_owner_ref(&()).unwrap();

    let mut dep = Secret::default();
    dep.metadata.name = Some("owner-token".into());
    dep.metadata.owner_references = Some(vec![oref.clone()]);
    secrets.create(&PostParams::default(), &dep).await.unwrap();
    let mut orphan = dep.clone();
    orphan.metadata.name = Some("kept".into());
    orphan.metadata.owner_references = None;
    secrets
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    // A dependent in another namespace is not collected (owners are
    // namespaced). A real garbage collector treats such a reference as
    // absent and may collect it at any time, so only the test server's
    // answer is checked.
    let elsewhere = cluster.namespace("elsewhere").await;
    let other: Api<Secret> = Api::namespaced(cluster.client(), &elsewhere);
    let cross_namespace = cluster
        .fake("a real garbage collector deletes a dependent whose owner is in another namespace")
        .is_some();
    if cross_namespace {
        other.create(&PostParams::default(), &dep).await.unwrap();
    }

    tokens
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    cluster
        .eventually("the dependent is collected", || async {
            gone(secrets.get("owner-token").await)
        })
        .await;
    secrets.get("kept").await.unwrap();
    if cross_namespace {
        other.get("owner-token").await.unwrap();
    }

    // Orphan propagation keeps dependents and strips the reference.
    let owner = tokens
        .create(&PostParams::default(), &token("owner2"))
        .await
        .unwrap();
    let mut dep = Secret::default();
    dep.metadata.name = Some("orphaned".into());
    dep.metadata.owner_references = Some(vec![owner.controller_owner_ref(&()).unwrap()]);
    secrets.create(&PostParams::default(), &dep).await.unwrap();
    tokens
        .delete("owner2", &DeleteParams::orphan())
        .await
        .unwrap();
    cluster
        .eventually("the orphan loses its owner reference", || async {
            let kept = secrets.get("orphaned").await.unwrap();
            match kept.metadata.owner_references {
                None => Ok(()),
                Some(refs) => Err(format!("still owned: {refs:?}")),
            }
        })
        .await;
}

#[tokio::test]
async fn delete_preconditions_are_honoured() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let c = cms
        .create(&PostParams::default(), &cm("p", &[]))
        .await
        .unwrap();
    let stale = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        api_err(cms.delete("p", &stale).await.unwrap_err()).code,
        409
    );
    let wrong_uid = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: None,
            uid: Some("nope".into()),
        }),
        ..Default::default()
    };
    assert_eq!(
        api_err(cms.delete("p", &wrong_uid).await.unwrap_err()).code,
        409
    );
    let right = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: c.metadata.resource_version.clone(),
            uid: c.metadata.uid.clone(),
        }),
        ..Default::default()
    };
    cms.delete("p", &right).await.unwrap();
}

#[tokio::test]
async fn label_and_field_selectors_and_pagination() {
    let cluster = Cluster::start_bare().await;
    let sel = cluster.namespace("sel").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &sel);
    for (name, app, tier) in [
        ("a", "web", "front"),
        ("b", "web", "back"),
        ("c", "db", "back"),
        ("d", "", ""),
    ] {
        let labels: Vec<(&str, &str)> = if app.is_empty() {
            vec![]
        } else {
            vec![("app", app), ("tier", tier)]
        };
        cms.create(&PostParams::default(), &cm(name, &labels))
            .await
            .unwrap();
    }
    let names = |lp: ListParams| {
        let cms = cms.clone();
        async move {
            ours(
                cms.list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|c| c.name_any()),
            )
        }
    };
    assert_eq!(
        names(ListParams::default().labels("app=web")).await,
        ["a", "b"]
    );
    assert_eq!(
        names(ListParams::default().labels("app!=web")).await,
        ["c", "d"]
    );
    assert_eq!(
        names(ListParams::default().labels("app in (db,cache)")).await,
        ["c"]
    );
    assert_eq!(
        names(ListParams::default().labels("tier notin (front)")).await,
        ["b", "c", "d"]
    );
    assert_eq!(
        names(ListParams::default().labels("app")).await,
        ["a", "b", "c"]
    );
    assert_eq!(names(ListParams::default().labels("!app")).await, ["d"]);
    assert_eq!(
        names(ListParams::default().labels("app=web,tier=back")).await,
        ["b"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name=c")).await,
        ["c"]
    );
    assert_eq!(
        names(ListParams::default().fields("metadata.name!=c")).await,
        ["a", "b", "d"]
    );
    let err = cms
        .list(&ListParams::default().fields("data.x=1"))
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 400);

    // Pages of 3 then 1, with a stable list resourceVersion. A real
    // cluster's own ConfigMaps sort after ours and fill the last page too.
    let all_here = cms.list(&ListParams::default()).await.unwrap().items;
    let theirs = all_here.len() - ours(all_here.iter().map(|c| c.name_any())).len();
    let first = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(first.items.len(), 3);
    assert_eq!(
        first.metadata.remaining_item_count,
        Some(1 + i64::try_from(theirs).unwrap())
    );
    let token = first.metadata.continue_.clone().unwrap();
    let second = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(ours(second.items.iter().map(|c| c.name_any())), ["d"]);
    assert!(
        second
            .metadata
            .continue_
            .as_deref()
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    // Cluster-wide list spans namespaces (on a cluster, counting ours).
    let zzz = cluster.namespace("zzz").await;
    let other: Api<ConfigMap> = Api::namespaced(cluster.client(), &zzz);
    other
        .create(&PostParams::default(), &cm("e", &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(cluster.client());
    let listed = all.list(&ListParams::default()).await.unwrap().items;
    let in_ours = listed
        .iter()
        .filter(|c| [&sel, &zzz].contains(&&c.namespace().unwrap_or_default()))
        .map(|c| c.name_any());
    assert_eq!(ours(in_ours).len(), 5);
}

#[tokio::test]
async fn denied_verbs_answer_forbidden() {
    let cluster = Cluster::start().await;
    let Some(server) = cluster.fake("denies verbs by its RBAC switch, not by Roles") else {
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(server.client(), "default");
    server.deny("list", "secrets");
    let err = api_err(secrets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (403, "Forbidden"));
    assert!(
        err.message.contains("cannot list resource \"secrets\""),
        "{}",
        err.message
    );
    server.allow("list", "secrets");
    secrets.list(&ListParams::default()).await.unwrap();

    // A namespaced Role without a ClusterRole: cluster-wide list refused.
    server.deny_cluster_wide("list", "secrets");
    let all: Api<Secret> = Api::all(server.client());
    assert_eq!(
        api_err(all.list(&ListParams::default()).await.unwrap_err()).code,
        403
    );
    secrets.list(&ListParams::default()).await.unwrap();
    server.deny_in("default", "create", "secrets");
    let mut s = Secret::default();
    s.metadata.name = Some("x".into());
    assert_eq!(
        api_err(
            secrets
                .create(&PostParams::default(), &s)
                .await
                .unwrap_err()
        )
        .code,
        403
    );
    let other: Api<Secret> = Api::namespaced(server.client(), "other");
    other.create(&PostParams::default(), &s).await.unwrap();

    // Denying the status subresource leaves the main resource writable.
    let tokens: Api<ApiToken> = Api::namespaced(server.client(), "default");
    tokens
        .create(&PostParams::default(), &token("t"))
        .await
        .unwrap();
    server.deny("patch", "apitokens/status");
    let p = json!({"status": {"usage": 1}});
    let err = tokens
        .patch_status("t", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap_err();
    assert_eq!(api_err(err).code, 403);
    let p = json!({"metadata": {"labels": {"x": "y"}}});
    tokens
        .patch("t", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(server.request_count("patch", "apitokens.prodgy.io"), 2);
}

#[tokio::test]
async fn cel_rules_of_the_crd_are_enforced() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("default").await;
    let tokens: Api<ApiToken> = Api::namespaced(cluster.client(), &ns);
    tokens
        .create(&PostParams::default(), &token("cel"))
        .await
        .unwrap();
    let patch = |spec: serde_json::Value| Patch::Merge(json!({"spec": spec}));
    let pp = PatchParams::default();

    tokens
        .patch("cel", &pp, &patch(json!({"regeneration": 2})))
        .await
        .unwrap();
    let err = api_err(
        tokens
            .patch("cel", &pp, &patch(json!({"regeneration": 1})))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert!(
        err.message.contains("regeneration can only increase"),
        "{}",
        err.message
    );

    tokens
        .patch("cel", &pp, &patch(json!({"revoked": true})))
        .await
        .unwrap();
    let err = api_err(
        tokens
            .patch("cel", &pp, &patch(json!({"revoked": false})))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("revoked is permanent"),
        "{}",
        err.message
    );

    // Transition rules do not apply on create; schema validation does.
    let mut revoked = token("born-revoked");
    revoked.spec.revoked = true;
    tokens
        .create(&PostParams::default(), &revoked)
        .await
        .unwrap();
    // Unknown fields are pruned, or refused under fieldValidation=Strict.
    let typo = json!({"spec": {"prodcut": "x"}});
    let t = tokens
        .patch("born-revoked", &pp, &Patch::Merge(&typo))
        .await
        .unwrap();
    if let Some(server) = cluster.as_fake() {
        assert!(
            server
                .get_object("apitokens.prodgy.io", Some(&ns), "born-revoked")
                .unwrap()["spec"]
                .get("prodcut")
                .is_none()
        );
    }
    let stored: serde_json::Value = cluster
        .client()
        .request(
            http::Request::get(format!(
                "/apis/prodgy.io/v1/namespaces/{ns}/apitokens/born-revoked"
            ))
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    assert!(stored["spec"].get("prodcut").is_none(), "{stored}");
    assert_eq!(t.spec.product, "acme");
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..Default::default()
    };
    let err = api_err(
        tokens
            .patch("born-revoked", &strict, &Patch::Merge(&typo))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    assert!(
        err.message.contains("unknown field \"spec.prodcut\""),
        "{}",
        err.message
    );

    let mut bad = token("bad");
    bad.spec.product = "Not A Product".into();
    let err = api_err(
        tokens
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(err.message.contains("spec.product"), "{}", err.message);
}

#[tokio::test]
async fn generate_name_and_name_validation() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let mut c = ConfigMap::default();
    c.metadata.generate_name = Some("report-".into());
    let a = cms.create(&PostParams::default(), &c).await.unwrap();
    let b = cms.create(&PostParams::default(), &c).await.unwrap();
    assert!(a.name_any().starts_with("report-") && a.name_any().len() == 12);
    assert_ne!(a.name_any(), b.name_any());
    let err = api_err(
        cms.create(&PostParams::default(), &cm("Upper_Case", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn deleting_a_namespace_empties_it() {
    let cluster = Cluster::start_bare().await;
    let doomed = cluster.fresh_name("doomed");
    let nss: Api<Namespace> = Api::all(cluster.client());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(doomed.clone());
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &doomed);
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    cms.create(&PostParams::default(), &cm("free", &[]))
        .await
        .unwrap();

    nss.delete(&doomed, &DeleteParams::default()).await.unwrap();
    assert_eq!(
        nss.get(&doomed)
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Terminating")
    );
    cluster
        .eventually("the namespace's objects are deleted", || async {
            gone(cms.get("free").await)
        })
        .await;
    let err = api_err(
        cms.create(&PostParams::default(), &cm("new", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 403);

    let p = json!({"metadata": {"finalizers": null}});
    cms.patch("held", &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    cluster
        .eventually("the emptied namespace is removed", || async {
            gone(nss.get(&doomed).await)
        })
        .await;
}

#[tokio::test]
async fn lease_leader_election_is_exclusive() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("prodgy-system").await;
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "prodgy-operator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                 "acquireTime": "2025-01-01T00:00:00.000000Z", "renewTime": "2025-01-01T00:00:00.000000Z"}
    }))
    .unwrap();
    let held = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(
        api_err(
            leases
                .create(&PostParams::default(), &lease)
                .await
                .unwrap_err()
        )
        .code,
        409
    );

    // Two contenders read the same version; only the first replace wins.
    let mut by_b = held.clone();
    by_b.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let mut by_c = held.clone();
    by_c.spec.as_mut().unwrap().holder_identity = Some("c".into());
    leases
        .replace("prodgy-operator", &PostParams::default(), &by_b)
        .await
        .unwrap();
    let err = api_err(
        leases
            .replace("prodgy-operator", &PostParams::default(), &by_c)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    let now = leases.get("prodgy-operator").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));
    if let Some(server) = cluster.fake("shows the stored form of a MicroTime") {
        assert_eq!(
            server
                .get_object("leases.coordination.k8s.io", Some(&ns), "prodgy-operator")
                .unwrap()["spec"]["renewTime"],
            "2025-01-01T00:00:00.000000Z"
        );
    }
}

#[tokio::test]
async fn discovery_kubeconfig_and_dry_run() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let (ar, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "prodgy.io",
            "v1",
            "ApiToken",
        ))
        .unwrap();
    assert_eq!(ar.plural, "apitokens");
    assert!(caps.supports_operation(kube::discovery::verbs::WATCH));
    assert!(discovery.has_group("coordination.k8s.io"));
    let aggregated = kube::Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let (ar, caps) = aggregated
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "prodgy.io",
            "v1",
            "UsageReport",
        ))
        .unwrap();
    assert_eq!(ar.plural, "usagereports");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    assert!(
        aggregated
            .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Secret"))
            .is_some()
    );

    // A client built from the written kubeconfig works.
    if let Some(server) = cluster.fake("writes its own kubeconfig") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        server.write_kubeconfig(&path).unwrap();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let via_file = kube::Client::try_from(config).unwrap();
        let reports: Api<UsageReport> = Api::default_namespaced(via_file);
        assert!(
            reports
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }

    // Server-side dry run validates but stores nothing.
    let ns = cluster.namespace("default").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let created = cms
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &cm("dry", &[]),
        )
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    if let Some(server) = cluster.as_fake() {
        assert!(server.get_object("configmaps", Some(&ns), "dry").is_none());
    }
    assert_eq!(api_err(cms.get("dry").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn controller_reconciles_and_records_events() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let ctl = cluster.namespace("ctl").await;
    // On a cluster the controller must not touch other people's tokens.
    let tokens: Api<ApiToken> = if cluster.is_real() {
        Api::namespaced(client.clone(), &ctl)
    } else {
        Api::all(client.clone())
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "test".into(),
            instance: None,
        },
    );

    let ctx = std::sync::Arc::new((client.clone(), recorder));
    let controller = Controller::new(tokens, Default::default())
        .run(
            |t: std::sync::Arc<ApiToken>, ctx: std::sync::Arc<(kube::Client, Recorder)>| async move {
                let api: Api<ApiToken> = Api::namespaced(ctx.0.clone(), &t.namespace().unwrap());
                let status = json!({"status": {"phase": "Active", "observedGeneration": t.metadata.generation}});
                api.patch_status(&t.name_any(), &PatchParams::default(), &Patch::Merge(&status)).await?;
                ctx.1
                    .publish(
                        &Event {
                            type_: EventType::Normal,
                            reason: "Issued".into(),
                            note: Some("token issued".into()),
                            action: "Reconcile".into(),
                            secondary: None,
                        },
                        &t.object_ref(&()),
                    )
                    .await?;
                Ok::<_, kube::Error>(Action::await_change())
            },
            |_, _, _| Action::requeue(Duration::from_secs(1)),
            ctx,
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    let api: Api<ApiToken> = Api::namespaced(client.clone(), &ctl);
    api.create(&PostParams::default(), &token("c1"))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t = api.get("c1").await.unwrap();
        if t.status.as_ref().and_then(|s| s.observed_generation) == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never reconciled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ctl);
    let no_event = || async {
        match cluster.as_fake() {
            Some(server) => server
                .list_objects("events.events.k8s.io", Some(&ctl))
                .is_empty(),
            None => events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty(),
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while no_event().await {
        assert!(std::time::Instant::now() < deadline, "no event recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}

#[tokio::test]
async fn custom_resources_need_a_resource_version_to_be_replaced() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("default").await;
    let tokens: Api<ApiToken> = Api::namespaced(cluster.client(), &ns);
    let created = tokens
        .create(&PostParams::default(), &token("put"))
        .await
        .unwrap();
    let mut blind = created.clone();
    blind.metadata.resource_version = None;
    let err = api_err(
        tokens
            .replace("put", &PostParams::default(), &blind)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert!(
        err.message.contains("metadata.resourceVersion"),
        "{}",
        err.message
    );
    // ConfigMaps allow an unconditional update.
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let mut c = cms
        .create(&PostParams::default(), &cm("put", &[]))
        .await
        .unwrap();
    c.metadata.resource_version = None;
    cms.replace("put", &PostParams::default(), &c)
        .await
        .unwrap();
    tokens
        .replace("put", &PostParams::default(), &created)
        .await
        .unwrap();
}

#[tokio::test]
async fn metadata_only_watches_and_lists() {
    use kube::core::PartialObjectMeta;
    use kube::runtime::{WatchStreamExt, watcher};
    let cluster = Cluster::start_bare().await;
    let meta = cluster.namespace("meta").await;
    let secrets: Api<Secret> = Api::namespaced(cluster.client(), &meta);
    let mut s = Secret::default();
    s.metadata.name = Some("m".into());
    s.string_data = Some([("token".to_string(), "plaintext".to_string())].into());
    secrets.create(&PostParams::default(), &s).await.unwrap();

    let list = secrets.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("m"));
    let raw = cluster
        .client()
        .request_text(
            http::Request::get(format!("/api/v1/namespaces/{meta}/secrets"))
                .header(
                    "accept",
                    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
                )
                .body(Vec::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        raw.contains("PartialObjectMetadataList") && !raw.contains("\"data\""),
        "{raw}"
    );

    let metas: Api<PartialObjectMeta<Secret>> = Api::namespaced(cluster.client(), &meta);
    let mut stream = watcher(metas, watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("m"));
}

#[tokio::test]
async fn crds_applied_through_the_api_are_served_until_deleted() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;
    use kube::runtime::wait::{await_condition, conditions};

    let cluster = Cluster::start_bare().await;
    let Some(server) = cluster.fake(
        "starts without the prodgy CRDs, then deletes one (on a cluster: every ApiToken, \
         under every other test running)",
    ) else {
        return;
    };
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let crd = ApiToken::crd();
    crds.patch(
        "apitokens.prodgy.io",
        &PatchParams::apply("installer").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let established = await_condition(
        crds.clone(),
        "apitokens.prodgy.io",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(2), established)
        .await
        .unwrap()
        .unwrap();

    let tokens: Api<ApiToken> = Api::namespaced(server.client(), "default");
    tokens
        .create(&PostParams::default(), &token("t"))
        .await
        .unwrap();
    assert_eq!(server.list_objects("apitokens.prodgy.io", None).len(), 1);

    // A CRD whose schema has a CEL rule that does not compile is refused.
    let mut broken = serde_json::to_value(UsageReport::crd()).unwrap();
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
        json!([{"rule": "self.spec.(", "message": "broken"}]);
    let broken: CustomResourceDefinition = serde_json::from_value(broken).unwrap();
    let err = api_err(
        crds.create(&PostParams::default(), &broken)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);

    crds.delete("apitokens.prodgy.io", &DeleteParams::default())
        .await
        .unwrap();
    let err = api_err(tokens.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert!(server.list_objects("apitokens.prodgy.io", None).is_empty());
}

#[tokio::test]
async fn namespaces_can_be_required_to_exist() {
    // A real cluster always requires them; the test server when asked to.
    let cluster = match real_kubeconfig() {
        Some(_) => Cluster::start_bare().await,
        None => Cluster::from_fake(
            FakeApiServer::builder()
                .require_namespaces(true)
                .start()
                .await
                .unwrap(),
        ),
    };
    let later = cluster.fresh_name("later");
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &later);
    let err = api_err(
        cms.create(&PostParams::default(), &cm("c", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code, err.message),
        (404, format!("namespaces \"{later}\" not found"))
    );
    let nss: Api<Namespace> = Api::all(cluster.client());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(later.clone());
    nss.create(&PostParams::default(), &ns).await.unwrap();
    cms.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
}

#[tokio::test]
async fn malformed_requests_get_clear_errors() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("default").await;
    let client = cluster.client();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &cm("m", &[]))
        .await
        .unwrap();
    let send = |method: &str, path: &str, ctype: &str, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ctype)
            .body(body.as_bytes().to_vec())
            .unwrap();
        let client = client.clone();
        async move { api_err(client.request::<serde_json::Value>(req).await.unwrap_err()) }
    };
    let cm_path = &format!("/api/v1/namespaces/{ns}/configmaps/m");
    let cms_path = &format!("/api/v1/namespaces/{ns}/configmaps");
    let secrets_path = &format!("/api/v1/namespaces/{ns}/secrets");
    let bad_selector = &format!("{cms_path}?labelSelector=a%20in%20b");
    let nothings = &format!("/api/v1/namespaces/{ns}/nothings");
    let v2 = &format!("/apis/prodgy.io/v2/namespaces/{ns}/apitokens");
    let cases = [
        (
            "PATCH",
            cm_path,
            "application/merge-patch+json",
            "\"text\"",
            422,
        ),
        (
            "PATCH",
            cm_path,
            "application/json-patch+json",
            r#"[{"op":"replace","path":"","value":[1]}]"#,
            422,
        ),
        (
            "PATCH",
            cm_path,
            "application/json-patch+json",
            r#"{"op":"add"}"#,
            400,
        ),
        ("PATCH", cm_path, "text/plain", "{}", 415),
        (
            "PATCH",
            cm_path,
            "application/merge-patch+json",
            "{not json",
            400,
        ),
        ("POST", cms_path, "application/json", "[]", 400),
        (
            "POST",
            cms_path,
            "application/json",
            r#"{"kind":"Secret","metadata":{"name":"x"}}"#,
            400,
        ),
        (
            "POST",
            cms_path,
            "application/json",
            r#"{"metadata":{"name":"x","namespace":"other"}}"#,
            400,
        ),
        (
            "POST",
            cms_path,
            "application/json",
            r#"{"metadata":{"name":"x","resourceVersion":"5"}}"#,
            500,
        ),
        (
            "POST",
            secrets_path,
            "application/json",
            r#"{"metadata":{"name":"x"},"data":{"k":"%%%"}}"#,
            400,
        ),
        (
            "PUT",
            cm_path,
            "application/json",
            r#"{"metadata":{"name":"other"}}"#,
            400,
        ),
        ("GET", bad_selector, "application/json", "", 400),
        ("GET", nothings, "application/json", "", 404),
        ("GET", v2, "application/json", "", 404),
        ("POST", cm_path, "application/json", "{}", 405),
    ];
    for (method, path, ctype, body, code) in cases {
        let status = send(method, path, ctype, body).await;
        assert_eq!(
            status.code, code,
            "{method} {path} {body}: {}",
            status.message
        );
        assert!(!status.message.is_empty());
    }
    // Still serving, object untouched.
    assert!(cms.get("m").await.unwrap().data.is_none());
}
