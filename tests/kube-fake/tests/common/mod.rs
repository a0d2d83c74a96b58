#![allow(dead_code, clippy::unwrap_used, clippy::panic)]
//! Helpers shared by the integration tests.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::core::Status;
use prodgy_crds::{ApiToken, ApiTokenSpec};
use prodgy_kube_fake::FakeApiServer;
use serde_json::json;

mod cluster;
#[allow(unused_imports)] // crud.rs and tls.rs use the in-process server only
pub use cluster::*;

pub fn api_err(e: kube::Error) -> Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub fn secret(name: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("token".into(), "s3cr3t".into())])),
        ..Default::default()
    }
}

pub fn token(name: &str) -> ApiToken {
    ApiToken::new(
        name,
        serde_json::from_value::<ApiTokenSpec>(json!({"product": "acme"})).unwrap(),
    )
}

pub fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.into());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c
}

pub async fn server_with_crds() -> FakeApiServer {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    server
}
