#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `spec.allowedSourceRanges` as the API server checks it: the CRD's CEL
//! rules (the Kubernetes CIDR library) and bounds refuse every range the
//! contract's parser refuses, naming the entry at fault.

mod common;

use common::*;
use kube::api::{Api, PostParams};
use prodgy_crds::ApiToken;
use prodgy_crds::sources::{CEL_NOT_A_CIDR, CEL_NOT_CANONICAL, SourceRange};
use serde_json::json;

fn with_ranges(name: &str, ranges: serde_json::Value) -> ApiToken {
    let mut t = token(name);
    t.spec.allowed_source_ranges = serde_json::from_value(ranges).unwrap();
    t
}

#[tokio::test]
async fn bad_source_ranges_are_refused_by_the_api_server() {
    let cluster = Cluster::start().await;
    let ns = cluster.namespace("default").await;
    let tokens: Api<ApiToken> = Api::namespaced(cluster.client(), &ns);
    let pp = PostParams::default();

    let good = json!(["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128"]);
    let created = tokens
        .create(&pp, &with_ranges("good", good))
        .await
        .unwrap();
    assert_eq!(created.spec.allowed_source_ranges.len(), 4);

    let cases = [
        ("10.0.0.1", CEL_NOT_A_CIDR),
        ("2001:db8::1", CEL_NOT_A_CIDR),
        ("10.0.0.0/33", CEL_NOT_A_CIDR),
        ("example.com/8", CEL_NOT_A_CIDR),
        ("::ffff:10.0.0.0/104", CEL_NOT_A_CIDR),
        ("10.1.2.3/8", CEL_NOT_CANONICAL),
        ("2001:DB8::/32", CEL_NOT_CANONICAL),
        ("10.0.0.0/08", CEL_NOT_CANONICAL),
    ];
    for (i, (bad, message)) in cases.into_iter().enumerate() {
        // The contract's parser agrees with the API server.
        assert!(SourceRange::parse(bad).is_err(), "{bad} parses");
        let t = with_ranges(&format!("bad-{i}"), json!(["10.0.0.0/8", bad]));
        let err = api_err(tokens.create(&pp, &t).await.unwrap_err());
        assert_eq!(err.code, 422, "{bad}: {}", err.message);
        assert!(
            err.message.contains(message) && err.message.contains("spec.allowedSourceRanges[1]"),
            "{bad}: {}",
            err.message
        );
    }

    let dup = with_ranges("dup", json!(["10.0.0.0/8", "10.0.0.0/8"]));
    let err = api_err(tokens.create(&pp, &dup).await.unwrap_err());
    assert!(err.message.contains("Duplicate value"), "{}", err.message);

    let many: Vec<String> = (0..65).map(|i| format!("10.0.{i}.0/24")).collect();
    let err = api_err(
        tokens
            .create(&pp, &with_ranges("many", json!(many)))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422, "{}", err.message);
    let t = with_ranges("sixty-four", json!(many[..64]));
    tokens.create(&pp, &t).await.unwrap();
}
