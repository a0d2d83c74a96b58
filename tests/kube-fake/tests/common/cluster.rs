//! Where the semantics and watch tests run: the in-process test server (the
//! default), or any cluster named by `PRODGY_KUBE_TEST_KUBECONFIG`, so that the
//! assertions written against the test server are checked against a real API
//! server too.
//!
//! On a cluster every test works in namespaces of its own (`prodgy-kt-…`,
//! labelled [`TEST_LABEL`]), and the namespaces it created are deleted when the
//! [`Cluster`] is dropped, also when the test panics. What only the test server
//! can do (RBAC hooks, counters, outages, builder options) is reached through
//! [`Cluster::fake`], which on a cluster prints one `skipped on a real cluster`
//! line and returns `None`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use prodgy_kube_fake::FakeApiServer;

/// The variable naming a kubeconfig whose current context is the cluster to use.
pub const KUBECONFIG_VAR: &str = "PRODGY_KUBE_TEST_KUBECONFIG";
/// Label on every namespace a test creates on a cluster, to find leftovers.
pub const TEST_LABEL: &str = "prodgy.io/kube-fake-test";
/// Objects a real cluster creates by itself in every namespace: the
/// root-CA publisher's ConfigMap. Lists and watches leave them out.
pub const SYSTEM_OBJECTS: &[&str] = &["kube-root-ca.crt"];

/// How long a real cluster may take for what its controllers do later
/// (garbage collection, namespace deletion, CRDs becoming Established).
const CONVERGE: Duration = Duration::from_secs(30);

/// What the test server calls itself in `/version`'s gitVersion.
const TEST_SERVER_VERSION: &str = "prodgy-kube-fake";

enum Backend {
    Fake(FakeApiServer),
    /// A server named by a kubeconfig; `test_server` when it is this test
    /// server run standalone (the `kube-fake` binary), which has the same
    /// known differences from Kubernetes as the in-process one.
    Real {
        kubeconfig: PathBuf,
        test_server: bool,
    },
}

/// The API server one test talks to.
pub struct Cluster {
    backend: Backend,
    client: kube::Client,
    /// Namespaces this test created on a cluster, deleted on drop.
    created: Mutex<Vec<String>>,
}

impl Cluster {
    /// The test server with the prodgy CRDs registered, or the cluster.
    pub async fn start() -> Cluster {
        match real_kubeconfig() {
            Some(path) => Cluster::real(path).await,
            None => {
                let server = FakeApiServer::start().await;
                server.register_prodgy_crds().unwrap();
                Cluster::from_fake(server)
            }
        }
    }

    /// The test server as it starts (no CRDs), or the cluster.
    pub async fn start_bare() -> Cluster {
        match real_kubeconfig() {
            Some(path) => Cluster::real(path).await,
            None => Cluster::from_fake(FakeApiServer::start().await),
        }
    }

    /// A test server started with builder options of its own.
    pub fn from_fake(server: FakeApiServer) -> Cluster {
        Cluster {
            client: server.client(),
            backend: Backend::Fake(server),
            created: Mutex::new(Vec::new()),
        }
    }

    async fn real(path: PathBuf) -> Cluster {
        let client = client_from(&path).await;
        let version = client
            .apiserver_version()
            .await
            .unwrap_or_else(|e| panic!("{KUBECONFIG_VAR}={}: {e}", path.display()));
        install_crds(&client).await;
        Cluster {
            client,
            backend: Backend::Real {
                kubeconfig: path,
                test_server: version.git_version.contains(TEST_SERVER_VERSION),
            },
            created: Mutex::new(Vec::new()),
        }
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn is_real(&self) -> bool {
        matches!(self.backend, Backend::Real { .. })
    }

    /// The test server, for what only it can do; on a cluster, prints why
    /// this part is skipped and returns `None`.
    #[track_caller]
    pub fn fake(&self, why: &str) -> Option<&FakeApiServer> {
        match &self.backend {
            Backend::Fake(server) => Some(server),
            Backend::Real { .. } => {
                skip_line("a real cluster", why);
                None
            }
        }
    }

    /// The test server, for a check that has its equivalent through the API
    /// on a cluster (so nothing is skipped there).
    pub fn as_fake(&self) -> Option<&FakeApiServer> {
        match &self.backend {
            Backend::Fake(server) => Some(server),
            Backend::Real { .. } => None,
        }
    }

    /// `Some(())` on a cluster; on the test server (in this process or run
    /// standalone), prints where it knowingly differs from Kubernetes and
    /// returns `None`.
    #[track_caller]
    pub fn real_only(&self, difference: &str) -> Option<()> {
        if let Backend::Real {
            test_server: false, ..
        } = self.backend
        {
            Some(())
        } else {
            skip_line("the test server", difference);
            None
        }
    }

    /// The namespace a test calls `base`: on the test server `base` itself
    /// (it needs no namespace objects); on a cluster a fresh namespace,
    /// created now and deleted when `self` is dropped.
    pub async fn namespace(&self, base: &str) -> String {
        if !self.is_real() {
            return base.to_string();
        }
        let name = self.fresh_name(base);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([(TEST_LABEL.to_string(), "true".to_string())].into());
        Api::<Namespace>::all(self.client())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create test namespace {name}: {e}"));
        name
    }

    /// A name for a namespace the test itself creates (and may delete): on
    /// the test server `base`; on a cluster a unique name, deleted on drop
    /// if the test leaves it behind.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.is_real() {
            return base.to_string();
        }
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut base = base.to_string();
        base.truncate(30);
        let name = format!(
            "prodgy-kt-{base}-{:x}{seq:x}{:x}",
            std::process::id(),
            nanos & 0xfff
        );
        self.created.lock().unwrap().push(name.clone());
        name
    }

    /// Checks `check` now on the test server, which does synchronously what
    /// a real cluster's controllers do a little later; on a cluster retries
    /// until it holds (30 s at most). `check` returns why it does not hold.
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let deadline = Instant::now() + CONVERGE;
        loop {
            match check().await {
                Ok(()) => return,
                Err(why) if !self.is_real() || Instant::now() > deadline => {
                    panic!("{what}: {why}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let Backend::Real {
            kubeconfig: path, ..
        } = &self.backend
        else {
            return;
        };
        let names = std::mem::take(&mut *self.created.lock().unwrap_or_else(|e| e.into_inner()));
        if names.is_empty() {
            return;
        }
        // The test's runtime may be unwinding from a panic, and its client is
        // bound to that runtime: clean up from a thread with its own.
        let path = path.clone();
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(delete_namespaces(path, names));
        })
        .join();
        if cleaned.is_err() && !std::thread::panicking() {
            panic!("cleaning up the test namespaces failed");
        }
    }
}

/// The cluster's kubeconfig, when the tests are to run against one.
pub fn real_kubeconfig() -> Option<PathBuf> {
    std::env::var_os(KUBECONFIG_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// True (after printing why) when the tests run against a cluster: for a
/// test that needs the test server with builder options of its own.
#[track_caller]
pub fn skip_on_cluster(why: &str) -> bool {
    let on_cluster = real_kubeconfig().is_some();
    if on_cluster {
        skip_line("a real cluster", why);
    }
    on_cluster
}

// The skip line is the test's output, meant to be read in the run's log.
#[allow(clippy::print_stdout)]
#[track_caller]
fn skip_line(side: &str, why: &str) {
    let at = std::panic::Location::caller();
    println!("skipped on {side} ({}:{}): {why}", at.file(), at.line());
}

async fn client_from(path: &PathBuf) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("{KUBECONFIG_VAR}={}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{KUBECONFIG_VAR}={}: {e}", path.display()));
    kube::Client::try_from(config).unwrap()
}

/// Creates the CRDs of crds/apitoken.yaml that the cluster lacks, and waits
/// until each is Established. Tests running at the same time race to create
/// them; the losers' 409 is fine.
async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let yaml = include_str!("../../../../crds/apitoken.yaml");
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        if crds.get_opt(&name).await.unwrap().is_none() {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("install CRD {name}: {e}"),
            }
        }
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        tokio::time::timeout(CONVERGE, established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within {CONVERGE:?}"))
            .unwrap();
    }
}

/// Deletes the namespaces, first clearing finalizers the tests put on
/// ConfigMaps (a test that failed half-way would otherwise hold its
/// namespace in Terminating for ever).
#[allow(clippy::print_stderr)] // a leftover is reported, not a reason to fail
async fn delete_namespaces(path: PathBuf, names: Vec<String>) {
    let client = client_from(&path).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    for name in names {
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
        let held = cms.list(&ListParams::default()).await.map(|l| l.items);
        for cm in held.unwrap_or_default() {
            if cm.metadata.finalizers.is_some_and(|f| !f.is_empty()) {
                let clear = serde_json::json!({"metadata": {"finalizers": null}});
                let cm_name = cm.metadata.name.unwrap_or_default();
                let _ = cms
                    .patch(&cm_name, &PatchParams::default(), &Patch::Merge(&clear))
                    .await;
            }
        }
        match nss.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            // Gone already, or already being deleted (by the test itself).
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => eprintln!("left test namespace {name} behind: {e}"),
        }
    }
}

/// Leaves out the objects a real cluster makes by itself ([`SYSTEM_OBJECTS`]).
pub fn ours(names: impl IntoIterator<Item = String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| !made_by_cluster(Some(n)))
        .collect()
}

/// Whether an object of this name is one a real cluster made by itself.
pub fn made_by_cluster(name: Option<&str>) -> bool {
    name.is_some_and(|n| SYSTEM_OBJECTS.contains(&n))
}

/// `Ok` when the answer is 404 Not Found, else what came instead.
pub fn gone<T: std::fmt::Debug>(answer: kube::Result<T>) -> Result<(), String> {
    match answer {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => Err(format!("{other:?}")),
    }
}
