//! A real S3-protocol server for the storage tests: `moto_server` (PyPI
//! `moto[server]`) on a free loopback port, one per test, stopped when
//! dropped. There is no fallback: without it the S3 cases fail with the
//! command that installs it (.ci/run installs it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `moto_server` and one fresh bucket on it.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The bucket created for this test.
    pub bucket: String,
    http: reqwest::Client,
}

impl Moto {
    /// Starts the server, waits until it answers, and creates a bucket.
    pub async fn start() -> Moto {
        let port = super::free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto_server ({e}): the S3 storage tests need a real S3 \
                     server; install it with `python3 -m pip install 'moto[server]'`"
                )
            });
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "prodgy-files".into(),
            http: reqwest::Client::new(),
        };
        moto.wait_until_it_answers().await;
        let r = moto
            .http
            .put(format!("{}/{}", moto.endpoint, moto.bucket))
            .body("")
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "creating the bucket: {r:?}");
        moto
    }

    async fn wait_until_it_answers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(&self.endpoint).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("moto_server exited at start-up ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Keys under `prefix`, sorted, read back from the server itself.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}/{}", self.endpoint, self.bucket);
        let body = self
            .http
            .get(url)
            .query(&[("list-type", "2"), ("prefix", prefix)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            body.contains("<IsTruncated>false</IsTruncated>"),
            "a listing in one page: {body}"
        );
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect();
        keys.sort();
        keys
    }

    /// The object's ETag: a multipart upload's ends in `-<parts>`.
    pub async fn etag(&self, key: &str) -> String {
        let r = self
            .http
            .head(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "HEAD {key}: {}", r.status());
        r.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .to_owned()
    }

    /// The store configuration that points the API at this bucket.
    pub fn store(&self, prefix: &str) -> prodgy_api::config::StoreConfig {
        prodgy_api::config::StoreConfig::S3 {
            bucket: self.bucket.clone(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            prefix: prefix.into(),
            allow_http: true,
            credentials: Some((
                "test-key".into(),
                prodgy_api::config::Secret("test-secret".into()),
            )),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
