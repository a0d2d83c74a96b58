//! Test support: a fake API server, a namespace of our own, the real
//! operator against it and polling helpers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::{
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use chrono::Utc;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Client,
    api::{Api, ListParams, Patch, PatchParams, PostParams},
};
use prodgy_crds::{ApiToken, ApiTokenSpec, HashedRecord, TokenHash, hashed::SELECTOR};
use prodgy_kube_fake::FakeApiServer;
use prodgy_operator::{
    app::{self, Running},
    config::{Cli, Config},
};
use serde_json::{Value, json};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's world: a server, a token namespace, a hashed-Secret namespace.
pub struct World {
    pub server: FakeApiServer,
    pub client: Client,
    pub ns: String,
    pub hashed_ns: String,
}

impl World {
    pub async fn new(tag: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let server = FakeApiServer::start().await;
        server.register_prodgy_crds().unwrap();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        Self {
            client: server.client(),
            server,
            ns: format!("{tag}-{pid}-{n}"),
            hashed_ns: format!("tokens-{tag}-{pid}-{n}"),
        }
    }

    /// Operator settings for this world, with short timings; `extra` flags win.
    pub fn config(&self, extra: &[&str]) -> Config {
        let mut args = vec![
            "prodgy-operator",
            "--namespaces",
            &self.ns,
            "--hashed-secret-namespace",
            &self.hashed_ns,
            "--metrics-addr",
            "127.0.0.1:0",
            "--leader-election=false",
            "--identity",
            "op-test",
            "--usage-status-interval",
            "1s",
            "--usage-report-retention",
            "3s",
        ];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args).unwrap().run.validate().unwrap()
    }

    pub async fn start(&self, extra: &[&str]) -> Running {
        app::start(self.client.clone(), self.config(extra))
            .await
            .unwrap()
    }

    pub fn tokens(&self) -> Api<ApiToken> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn hashed_secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.hashed_ns)
    }

    pub fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    /// Creates the token namespace as an object of its own, so that it can
    /// be deleted (the server needs none to hold objects in it).
    pub async fn create_namespace(&self) {
        let mut ns = Namespace::default();
        ns.metadata.name = Some(self.ns.clone());
        self.namespaces()
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
    }

    /// Names of the hashed Secrets left in the hashed-Secret namespace.
    pub async fn hashed_names(&self) -> Vec<String> {
        let list = self
            .hashed_secrets()
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .unwrap();
        list.items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect()
    }

    pub async fn create(&self, name: &str, spec: Value) -> ApiToken {
        let spec: ApiTokenSpec = serde_json::from_value(spec).unwrap();
        self.tokens()
            .create(&PostParams::default(), &ApiToken::new(name, spec))
            .await
            .unwrap()
    }

    pub async fn patch_spec(&self, name: &str, spec: Value) {
        self.tokens()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }

    pub async fn get(&self, name: &str) -> ApiToken {
        self.tokens().get(name).await.unwrap()
    }

    /// Waits until the token's status satisfies `check`.
    pub async fn wait_status(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&prodgy_crds::ApiTokenStatus) -> bool,
    ) -> ApiToken {
        eventually(what, Duration::from_secs(10), || async {
            let t = self.tokens().get_opt(name).await.unwrap()?;
            t.status.as_ref().is_some_and(&check).then_some(t)
        })
        .await
    }

    pub async fn wait_phase(&self, name: &str, phase: &str) -> ApiToken {
        self.wait_status(name, &format!("{name} {phase}"), |s| {
            s.phase.map(|p| p.as_str()) == Some(phase)
        })
        .await
    }

    /// The plaintext in the delivery Secret.
    pub async fn delivered(&self, secret: &str) -> Option<String> {
        let s = self.secrets().get_opt(secret).await.unwrap()?;
        let bytes = s.data?.get("token")?.0.clone();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// The hashed record of a token.
    pub async fn record(&self, token: &ApiToken) -> Option<HashedRecord> {
        let uid = token.metadata.uid.as_deref().unwrap();
        let s = self
            .hashed_secrets()
            .get_opt(&HashedRecord::secret_name(uid))
            .await
            .unwrap()?;
        Some(HashedRecord::from_secret(&s).unwrap())
    }

    /// Events recorded for objects in the token namespace.
    pub fn events(&self) -> Vec<Value> {
        self.server
            .list_objects("events.events.k8s.io", Some(&self.ns))
    }

    pub fn event_reasons(&self, name: &str) -> Vec<String> {
        let mut out: Vec<(String, String)> = self
            .events()
            .into_iter()
            .filter(|e| e["regarding"]["name"] == name)
            .map(|e| {
                (
                    e["eventTime"].as_str().unwrap_or_default().to_owned(),
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Waits until Events with every one of `reasons` exist for `name`.
    pub async fn wait_events(&self, name: &str, reasons: &[&str]) {
        eventually(
            &format!("events {reasons:?}"),
            Duration::from_secs(5),
            || async {
                let seen = self.event_reasons(name);
                reasons
                    .iter()
                    .all(|want| seen.iter().any(|r| r == want))
                    .then_some(())
            },
        )
        .await;
    }

    /// Everything the server holds that could leak a plaintext: the
    /// ApiTokens, every Event and every hashed Secret, as JSON text.
    pub fn observable_text(&self) -> String {
        let mut all = Vec::new();
        all.extend(self.server.list_objects("apitokens.prodgy.io", None));
        all.extend(self.server.list_objects("events.events.k8s.io", None));
        all.extend(self.server.list_objects("events", None));
        all.extend(self.server.list_objects("secrets", Some(&self.hashed_ns)));
        serde_json::to_string(&all).unwrap()
    }
}

pub fn sha(token: &str) -> String {
    TokenHash::of(token).to_hex()
}

pub fn rfc3339_in(d: Duration) -> String {
    (Utc::now() + chrono::TimeDelta::from_std(d).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Polls `probe` every 20 ms until it yields a value or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A metric's value in the text exposition, summed over matching lines.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Flags of an operator that takes part in leader election, with a 2 s
/// lease in `lease_ns`.
pub fn leader_flags(lease_ns: &str) -> Vec<&str> {
    vec![
        "--leader-election=true",
        "--lease-namespace",
        lease_ns,
        "--lease-duration",
        "2s",
    ]
}
