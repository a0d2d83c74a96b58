//! A cluster to run the end-to-end scenarios in: the kind cluster named by
//! the environment, or the local stack of [`crate::local::LocalCluster`].
//! One namespace and one product per scenario, and a dump of what a user
//! would look at (tokens, Secret names, events, logs) when a scenario fails.
//!
//! For kind, `hack/kind-e2e.sh` sets the environment:
//! `PRODGY_E2E_KIND=1`, `KUBECONFIG`, `PRODGY_E2E_BASE_URL` (the ingress),
//! `PRODGY_E2E_RELEASE_NAMESPACE`, `PRODGY_E2E_TOKENS_NAMESPACE`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prodgy_crds::{ApiToken, Phase, UsageReport};

use crate::caller::Caller;
use crate::metrics::Scrape;
use crate::wait::{Probe, until};

/// The line every kind test prints when it cannot run.
pub const SKIP: &str = "skipped: set PRODGY_E2E_KIND=1 and run hack/kind-e2e.sh";

/// Operator, proxy and API running against a Kubernetes API.
#[derive(Clone)]
pub struct Cluster {
    /// Client of the Kubernetes API.
    pub client: Client,
    /// Calls through the ingress (kind) or straight to the proxy (local).
    pub caller: Caller,
    /// Namespace of the release (operator, API pods).
    pub release_namespace: String,
    /// Namespace of hashed Secrets and UsageReports.
    pub tokens_namespace: String,
    /// Where the proxies' `/metrics` are.
    pub metrics: MetricsSource,
    /// How far ahead the expiry scenario sets `expiresAt`: long enough to
    /// issue the token and call it once before it expires.
    pub expiry_lead: Duration,
}

/// Where to scrape the proxies.
#[derive(Clone, Debug)]
pub enum MetricsSource {
    /// Every API pod of the release, through the API server's pod proxy.
    PodProxy,
    /// These `/metrics` URLs.
    Urls(Vec<String>),
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("base", &self.caller.base())
            .field("release_namespace", &self.release_namespace)
            .finish_non_exhaustive()
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

impl Cluster {
    /// The cluster when `PRODGY_E2E_KIND=1` and it answers; otherwise prints
    /// [`SKIP`] and returns `None`.
    #[allow(clippy::print_stderr)] // the one line a skipped test owes its reader
    pub async fn from_env() -> Option<Cluster> {
        let skip = || {
            eprintln!("{SKIP}");
            None
        };
        if std::env::var("PRODGY_E2E_KIND").as_deref() != Ok("1") {
            return skip();
        }
        let Ok(client) = Client::try_default().await else {
            return skip();
        };
        if client.apiserver_version().await.is_err() {
            return skip();
        }
        let Ok(caller) = Caller::new(&env_or("PRODGY_E2E_BASE_URL", "http://127.0.0.1:18080"))
        else {
            return skip();
        };
        Some(Cluster {
            client,
            caller,
            release_namespace: env_or("PRODGY_E2E_RELEASE_NAMESPACE", "prodgy"),
            tokens_namespace: env_or("PRODGY_E2E_TOKENS_NAMESPACE", "prodgy-tokens"),
            metrics: MetricsSource::PodProxy,
            expiry_lead: Duration::from_secs(15),
        })
    }

    /// A fresh namespace (and product) for one scenario.
    pub async fn scenario(&self, name: &str) -> Result<Scenario> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let namespace = format!("e2e-{name}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"prodgy.io/e2e": "true"}}
        }))?;
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {namespace}"))?;
        Ok(Scenario {
            cluster: self.clone(),
            product: format!("e2e-{suffix}"),
            namespace,
        })
    }
}

/// One test's namespace and product.
#[derive(Debug)]
pub struct Scenario {
    /// The cluster.
    pub cluster: Cluster,
    /// Namespace of this scenario's ApiTokens.
    pub namespace: String,
    /// Product of this scenario's tokens (its data is separate from others').
    pub product: String,
}

impl Scenario {
    /// ApiTokens of the scenario's namespace.
    pub fn tokens(&self) -> Api<ApiToken> {
        Api::namespaced(self.cluster.client.clone(), &self.namespace)
    }

    /// Calls through the ingress.
    pub fn caller(&self) -> &Caller {
        &self.cluster.caller
    }

    /// Creates an ApiToken for the scenario's product; `spec` adds fields.
    pub async fn apply_token(&self, name: &str, spec: serde_json::Value) -> Result<ApiToken> {
        let mut full = serde_json::json!({"product": self.product});
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        let token: ApiToken = serde_json::from_value(serde_json::json!({
            "apiVersion": "prodgy.io/v1",
            "kind": "ApiToken",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": full,
        }))?;
        self.tokens()
            .create(&PostParams::default(), &token)
            .await
            .with_context(|| format!("creating ApiToken {name}"))
    }

    /// Merge-patches the spec; the API server's answer, refusals included.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) -> kube::Result<ApiToken> {
        self.tokens()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "spec": spec })),
            )
            .await
    }

    /// Waits until the token's status shows `phase`.
    pub async fn wait_phase(&self, name: &str, phase: Phase, within: Duration) -> Result<ApiToken> {
        let api = self.tokens();
        until(
            &format!("ApiToken {name} phase {}", phase.as_str()),
            within,
            Duration::from_millis(100),
            || {
                let api = api.clone();
                async move {
                    let t = api.get(name).await?;
                    let now = t.status.as_ref().and_then(|s| s.phase);
                    Ok(if now == Some(phase) {
                        Probe::Done(t)
                    } else {
                        Probe::NotYet(format!("phase {now:?}"))
                    })
                }
            },
        )
        .await
    }

    /// The plaintext in the token's delivery Secret (`<name>-token`).
    pub async fn delivered_token(&self, name: &str) -> Result<String> {
        let secret = Api::<Secret>::namespaced(self.cluster.client.clone(), &self.namespace)
            .get(&format!("{name}-token"))
            .await
            .with_context(|| format!("reading delivery Secret {name}-token"))?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(prodgy_crds::delivery::TOKEN_KEY))
            .ok_or_else(|| anyhow!("delivery Secret {name}-token has no `token` key"))?;
        String::from_utf8(bytes.0.clone()).context("delivery Secret token is not UTF-8")
    }

    /// Scrapes `/metrics` of every proxy replica and merges the samples.
    pub async fn proxy_metrics(&self) -> Result<Scrape> {
        let mut all = Scrape::default();
        if let MetricsSource::Urls(urls) = &self.cluster.metrics {
            for url in urls {
                let text = reqwest::get(url).await?.error_for_status()?.text().await?;
                all.extend(Scrape::parse(&text));
            }
            return Ok(all);
        }
        // The API server's pod proxy wants the port number, not its name.
        for pod in self.api_pods().await? {
            let port = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("proxy-metrics"))
                .map(|p| p.container_port)
                .ok_or_else(|| anyhow!("pod {} has no proxy-metrics port", pod.name_any()))?;
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}:{port}/proxy/metrics",
                self.cluster.release_namespace,
                pod.name_any()
            );
            let req = http::Request::get(path).body(Vec::new())?;
            let text = self
                .cluster
                .client
                .request_text(req)
                .await
                .with_context(|| format!("scraping proxy metrics of {}", pod.name_any()))?;
            all.extend(Scrape::parse(&text));
        }
        Ok(all)
    }

    async fn api_pods(&self) -> Result<Vec<Pod>> {
        let pods =
            Api::<Pod>::namespaced(self.cluster.client.clone(), &self.cluster.release_namespace)
                .list(&ListParams::default().labels("app.kubernetes.io/component=api"))
                .await?;
        Ok(pods.items)
    }

    /// Deletes the namespace on success; on failure prints the state a user
    /// would inspect, then fails the test with the error.
    #[allow(clippy::print_stderr, clippy::panic)] // a test harness reporting failure
    pub async fn finish(self, result: Result<()>) {
        match result {
            Ok(()) => {
                let _ = Api::<Namespace>::all(self.cluster.client.clone())
                    .delete(&self.namespace, &DeleteParams::background())
                    .await;
            }
            Err(e) => {
                eprintln!("{}", self.dump().await);
                panic!("scenario in namespace {} failed: {e:#}", self.namespace);
            }
        }
    }

    /// What `kubectl get/describe/logs` would show, without any Secret value.
    pub async fn dump(&self) -> String {
        let mut out = format!("===== state of namespace {} =====\n", self.namespace);
        let client = self.cluster.client.clone();
        match self.tokens().list(&ListParams::default()).await {
            Ok(list) => {
                for t in list.items {
                    let _ = writeln!(
                        out,
                        "--- ApiToken {}\nspec: {}\nstatus: {}",
                        t.name_any(),
                        serde_json::to_string(&t.spec).unwrap_or_default(),
                        serde_json::to_string(&t.status).unwrap_or_default()
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "cannot list ApiTokens: {e}");
            }
        }
        if let Ok(list) = Api::<Secret>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
        {
            for s in list.items {
                let keys: Vec<_> = s.data.iter().flat_map(|d| d.keys().cloned()).collect();
                let _ = writeln!(
                    out,
                    "--- Secret {} type {:?} keys {keys:?}",
                    s.name_any(),
                    s.type_
                );
            }
        }
        if let Ok(list) = Api::<Event>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default())
            .await
        {
            for e in list.items {
                let _ = writeln!(
                    out,
                    "--- Event {} {} {}: {}",
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    e.note.unwrap_or_default()
                );
            }
        }
        if let Ok(list) =
            Api::<UsageReport>::namespaced(client.clone(), &self.cluster.tokens_namespace)
                .list(&ListParams::default())
                .await
        {
            let _ = writeln!(
                out,
                "--- {} UsageReports in {}",
                list.items.len(),
                self.cluster.tokens_namespace
            );
        }
        let pods = Api::<Pod>::namespaced(client, &self.cluster.release_namespace);
        if let Ok(list) = pods.list(&ListParams::default()).await {
            for p in list.items {
                for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
                    let params = LogParams {
                        container: Some(c.name.clone()),
                        tail_lines: Some(40),
                        ..LogParams::default()
                    };
                    let logs = pods.logs(&p.name_any(), &params).await.unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "--- logs {}/{} (last 40 lines)\n{logs}",
                        p.name_any(),
                        c.name
                    );
                }
            }
        }
        out
    }
}
