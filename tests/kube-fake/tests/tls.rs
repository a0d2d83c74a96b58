#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! HTTPS serving: clients that trust the CA (through `config()` or the
//! written kubeconfig) talk to it; a client trusting another CA, and a
//! plain-HTTP client, do not; a key that does not fit the certificate is
//! refused at start.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use prodgy_kube_fake::{Error, FakeApiServer, TlsIdentity};

mod common;
use common::secret;

/// A CA and a server certificate for 127.0.0.1 from hack/test-certs.sh.
fn certs(dir: &Path) -> TlsIdentity {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../hack/test-certs.sh");
    let status = std::process::Command::new(script)
        .arg(dir)
        .arg("IP:127.0.0.1")
        .status()
        .unwrap();
    assert!(status.success(), "hack/test-certs.sh failed");
    TlsIdentity::from_files(
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("ca.pem"),
    )
    .unwrap()
}

async fn https_server(dir: &Path) -> FakeApiServer {
    FakeApiServer::builder()
        .tls(certs(dir))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn clients_trusting_the_ca_are_served_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let server = https_server(dir.path()).await;
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );

    let secrets: Api<Secret> = Api::namespaced(server.client(), "default");
    secrets
        .create(&PostParams::default(), &secret("over-tls"))
        .await
        .unwrap();

    // The kubeconfig carries the CA, as a binary under test would read it.
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let got = Api::<Secret>::namespaced(client, "default")
        .get("over-tls")
        .await
        .unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("over-tls"));
}

#[tokio::test]
async fn another_ca_and_plain_http_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = https_server(dir.path()).await;

    let other = tempfile::tempdir().unwrap();
    certs(other.path());
    let mut config = server.config().unwrap();
    config.root_cert = Some(vec![pem_der(
        &std::fs::read(other.path().join("ca.pem")).unwrap(),
    )]);
    let client = kube::Client::try_from(config).unwrap();
    let err = Api::<Secret>::namespaced(client, "default")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "a server answer through an untrusted CA: {err:?}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = std::net::TcpStream::connect(server.addr()).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was served"
    );
}

#[tokio::test]
async fn a_key_that_does_not_fit_is_refused_at_start() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    certs(a.path());
    certs(b.path());
    let mismatched = TlsIdentity::from_files(
        a.path().join("server.pem"),
        b.path().join("server.key"),
        a.path().join("ca.pem"),
    )
    .unwrap();
    let err = FakeApiServer::builder()
        .tls(mismatched)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err}");
    let empty = TlsIdentity::from_pem("", "", "");
    let err = FakeApiServer::builder()
        .tls(empty)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
}

/// The one certificate of a PEM file, as DER.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}
