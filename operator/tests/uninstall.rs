//! `prodgy-operator release`, what `helm uninstall` runs once the operator
//! is stopped: it refuses while a replica leads, then deletes every hashed
//! Secret and removes the finalizer from every ApiToken, so tokens deleted
//! meanwhile go at once (and their namespaces with them) and none keeps
//! working; a reinstall rebuilds the records of tokens whose delivery Secret
//! survived. And a deleted namespace of ApiTokens: gone at once while the
//! operator runs, `Terminating` while it is away until `release` frees it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use kube::api::DeleteParams;
use prodgy_operator::plan::FINALIZER;
use prodgy_operator::release::{self, Released};
use serde_json::json;
use support::{World, eventually, sha};

fn has_finalizer(t: &prodgy_crds::ApiToken) -> bool {
    t.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_lets_every_token_go_once_the_operator_is_stopped() {
    let w = World::new("uninstall").await;
    let lease_ns = format!("ops-{}", w.ns);
    let flags = support::leader_flags(&lease_ns);
    let cfg = w.config(&flags);
    let operator = w.start(&flags).await;
    for name in ["kept", "doomed"] {
        w.create(name, json!({"product": "acme"})).await;
        assert!(has_finalizer(&w.wait_phase(name, "Active").await));
    }
    let kept_plaintext = w.delivered("kept-token").await.unwrap();

    // While a replica leads, release refuses: it would re-add finalizers.
    let err = release::run(w.client.clone(), &cfg, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("still holds the Lease"), "{err}");
    assert!(has_finalizer(&w.get("kept").await));

    // helm uninstall stops the operator; then a token is deleted.
    operator.stop().await.unwrap();
    w.tokens()
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let doomed = w.get("doomed").await;
    assert!(
        doomed.metadata.deletion_timestamp.is_some(),
        "without the operator the finalizer holds the token"
    );

    let done = release::run(w.client.clone(), &cfg, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        done,
        Released {
            hashed_deleted: 2,
            finalizers_removed: 2,
            delivery_deleted: 1,
        }
    );
    assert!(w.tokens().get_opt("doomed").await.unwrap().is_none());
    assert!(w.delivered("doomed-token").await.is_none());
    assert!(w.hashed_names().await.is_empty(), "no token keeps working");
    assert!(!has_finalizer(&w.get("kept").await));
    assert_eq!(w.delivered("kept-token").await.unwrap(), kept_plaintext);

    // A second release finds nothing to do.
    let again = release::run(w.client.clone(), &cfg, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again, Released::default());

    // Reinstall: the surviving token's record is rebuilt from its delivery
    // Secret (same plaintext, same hash); the deleted one stays gone.
    let operator = w.start(&flags).await;
    let kept = eventually("kept is guarded again", Duration::from_secs(10), || async {
        let t = w.get("kept").await;
        has_finalizer(&t).then_some(t)
    })
    .await;
    let record = eventually("kept's record rebuilt", Duration::from_secs(10), || async {
        w.record(&kept).await
    })
    .await;
    assert_eq!(record.hashes[0].sha256, sha(&kept_plaintext));
    assert_eq!(
        w.hashed_names().await.len(),
        1,
        "the deleted token did not come back"
    );
    operator.stop().await.unwrap();
}

/// Two issued tokens in a namespace of their own, created as an object so
/// that it can be deleted.
async fn namespace_with_two_tokens(w: &World) {
    for name in ["first", "second"] {
        w.create(name, json!({"product": "acme"})).await;
        w.wait_phase(name, "Active").await;
    }
    assert_eq!(w.hashed_names().await.len(), 2);
}

async fn namespace_gone(w: &World) {
    eventually("the namespace is gone", Duration::from_secs(10), || async {
        w.namespaces()
            .get_opt(&w.ns)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deleted_while_the_operator_runs_goes_with_its_hashed_secrets() {
    let w = World::new("ns-live").await;
    w.create_namespace().await;
    let operator = w.start(&[]).await;
    namespace_with_two_tokens(&w).await;

    w.namespaces()
        .delete(&w.ns, &DeleteParams::default())
        .await
        .unwrap();
    namespace_gone(&w).await;
    assert!(w.tokens().get_opt("first").await.unwrap().is_none());
    assert!(
        w.hashed_names().await.is_empty(),
        "each token's finalizer deleted its hashed Secret"
    );
    operator.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deleted_while_the_operator_is_gone_waits_for_release() {
    let w = World::new("ns-away").await;
    w.create_namespace().await;
    let lease_ns = format!("ops-{}", w.ns);
    let flags = support::leader_flags(&lease_ns);
    let cfg = w.config(&flags);
    let operator = w.start(&flags).await;
    namespace_with_two_tokens(&w).await;
    operator.stop().await.unwrap();

    w.namespaces()
        .delete(&w.ns, &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ns = w.namespaces().get(&w.ns).await.unwrap();
    assert_eq!(
        ns.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating"),
        "the finalizers hold the namespace"
    );
    for name in ["first", "second"] {
        let t = w.get(name).await;
        assert!(t.metadata.deletion_timestamp.is_some() && has_finalizer(&t));
    }
    assert_eq!(w.hashed_names().await.len(), 2, "the tokens still work");

    let done = release::run(w.client.clone(), &cfg, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        done,
        Released {
            hashed_deleted: 2,
            finalizers_removed: 2,
            // The namespace's deletion took the delivery Secrets already.
            delivery_deleted: 0,
        }
    );
    namespace_gone(&w).await;
    assert!(
        w.hashed_names().await.is_empty(),
        "no hashed Secret is left"
    );
}
