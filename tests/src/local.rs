//! The real binaries on loopback. [`Quickstart`] drives the no-cluster
//! quickstart the way a user does: `hack/quickstart.sh` with the cargo-built
//! binaries on free ports, its printed token, Ctrl-C. [`LocalCluster`] runs
//! the operator, proxy and API against the Kubernetes API test server, for
//! the end-to-end scenarios without kind.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use prodgy_kube_fake::FakeApiServer;
use tempfile::TempDir;

use crate::caller::Caller;
use crate::cluster::{Cluster, MetricsSource};

const BINARIES: [&str; 3] = ["prodgy-operator", "prodgy-proxy", "prodgy-api"];

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where the operator, proxy and API binaries are: `PRODGY_BIN_DIR`, else
/// the cargo profile directory this test was built into. A workspace test
/// build (`make test`, CI) has just built them there with the workspace's
/// features, so when they are newer than their sources they are used as
/// they are; otherwise, under nextest, they are built first (under
/// `cargo test`, which holds the build lock, they must already be fresh).
pub fn binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PRODGY_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test binary")?;
    // target/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?
        .to_path_buf();
    if fresh(&profile_dir) {
        return Ok(profile_dir);
    }
    if std::env::var_os("NEXTEST").is_some() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "-q", "--bins"])
            .args(BINARIES.iter().flat_map(|b| ["-p", b]));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of {BINARIES:?} failed ({status})");
        }
    } else {
        bail!(
            "{BINARIES:?} in {} are missing or older than their sources: run `cargo build \
             -p prodgy-operator -p prodgy-proxy -p prodgy-api`, or run the tests with cargo \
             nextest, which builds them",
            profile_dir.display()
        );
    }
    Ok(profile_dir)
}

/// Whether every binary exists and is newer than every source it is built
/// from (the crates' sources and manifests, the API's migrations, the lock).
fn fresh(profile_dir: &Path) -> bool {
    let root = workspace_root();
    let Some(oldest_bin) = BINARIES
        .iter()
        .map(|b| mtime(&profile_dir.join(b)))
        .collect::<Option<Vec<_>>>()
        .and_then(|v| v.into_iter().min())
    else {
        return false;
    };
    let sources = ["operator", "proxy", "api", "crds"]
        .iter()
        .flat_map(|c| [root.join(c).join("src"), root.join(c).join("Cargo.toml")])
        .chain([
            root.join("api/migrations"),
            root.join("Cargo.toml"),
            root.join("Cargo.lock"),
        ]);
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for path in sources {
        newest = newest.max(newest_under(&path));
    }
    newest < oldest_bin
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest_under(path: &Path) -> std::time::SystemTime {
    let mut newest = mtime(path).unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            newest = newest.max(newest_under(&e.path()));
        }
    }
    newest
}

/// `N` distinct ports nothing listens on right now: all are held until the
/// last is picked, so two calls to `bind(0)` cannot hand out the same one.
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
        *port = l.local_addr()?.port();
        held.push(l);
    }
    Ok(ports)
}

/// A running `hack/quickstart.sh`.
#[derive(Debug)]
pub struct Quickstart {
    child: Child,
    /// The token it printed.
    pub token: String,
    /// Everything it printed on stdout.
    pub banner: Vec<String>,
    /// Base URL of the proxy.
    pub proxy: String,
    /// Base URL of the proxy's metrics listener.
    pub proxy_metrics: String,
    /// Base URL of the API's ops listener.
    pub api_ops: String,
    /// The API's loopback address (`host:port`).
    pub api_addr: String,
}

impl Quickstart {
    /// Starts the script with `manifest`, keeping its data under `data`, and
    /// waits until it prints its banner (both processes ready).
    pub fn start(manifest: &Path, data: &Path) -> Result<Self> {
        let bin = binaries()?;
        let [port, metrics, api, ops] = free_ports()?;
        let mut child = Command::new("bash")
            .arg(workspace_root().join("hack/quickstart.sh"))
            .current_dir(workspace_root())
            .env("PRODGY_BIN_DIR", &bin)
            .env("PRODGY_QUICKSTART_MANIFEST", manifest)
            .env("PRODGY_QUICKSTART_DATA", data)
            .env("PRODGY_QUICKSTART_PORT", port.to_string())
            .env("PRODGY_QUICKSTART_METRICS", metrics.to_string())
            .env("PRODGY_QUICKSTART_API_PORT", api.to_string())
            .env("PRODGY_QUICKSTART_OPS_PORT", ops.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting hack/quickstart.sh")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains("Ctrl-C");
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("quickstart printed no banner within 60 s; got: {banner:?}");
                }
            }
        }
        let token = banner
            .iter()
            .skip_while(|l| !l.contains("API token"))
            .nth(1)
            .map(|l| l.trim().to_owned())
            .ok_or_else(|| anyhow!("no token in the banner: {banner:?}"))?;
        Ok(Self {
            child,
            token,
            banner,
            proxy: format!("http://127.0.0.1:{port}"),
            proxy_metrics: format!("http://127.0.0.1:{metrics}"),
            api_ops: format!("http://127.0.0.1:{ops}"),
            api_addr: format!("127.0.0.1:{api}"),
        })
    }

    /// Presses Ctrl-C (SIGINT to the script) and waits for it to stop both
    /// processes and exit.
    pub fn interrupt(&mut self) -> Result<ExitStatus> {
        signal(self.child.id(), "INT")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("quickstart did not stop within 30 s of Ctrl-C");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // The script's trap stops the proxy and the API.
            let _ = signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{name} {pid} failed");
    }
    Ok(())
}

/// The chart's topology on loopback: the operator, the proxy (Kubernetes
/// source, usage reports) and the API binaries against the Kubernetes API
/// test server, for the end-to-end scenarios where there is no kind.
#[derive(Debug)]
pub struct LocalCluster {
    /// The Kubernetes API.
    pub server: FakeApiServer,
    procs: Vec<Proc>,
    /// Base URL of the proxy.
    pub proxy: String,
    /// Base URL of the proxy's metrics listener.
    pub proxy_metrics: String,
    /// Base URL of the operator's metrics listener.
    pub operator_metrics: String,
    /// Base URL of the API's ops listener (`/metrics`, `/readyz`).
    pub api_ops: String,
    /// URL of the operator's leak-report endpoint (shared secret
    /// [`LEAK_SECRET`]).
    pub leak_reports: String,
    /// The API's listener, the proxies' upstream.
    api: String,
    dir: TempDir,
}

#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Namespace the operator's Lease lives in, as the release namespace would.
pub const RELEASE_NAMESPACE: &str = "prodgy";
/// Namespace of hashed Secrets and UsageReports.
pub const TOKENS_NAMESPACE: &str = "prodgy-tokens";
/// The shared secret the local operator's leak-report endpoint accepts.
pub const LEAK_SECRET: &str = "local-cluster leak-report secret";

impl LocalCluster {
    /// Starts the API server and the three binaries, and waits until each
    /// answers `/readyz` (the proxy only after its first full sync).
    pub async fn start() -> Result<Self> {
        let bin = binaries()?;
        let server = FakeApiServer::start().await;
        server
            .register_prodgy_crds()
            .context("registering the CRDs")?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        server.write_kubeconfig(&kubeconfig)?;
        let [operator_port, api, ops, proxy, proxy_metrics, leaks] = free_ports()?;
        let leak_secret = dir.path().join("leak-secret");
        std::fs::write(&leak_secret, LEAK_SECRET)?;
        let kube_env = [
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAMESPACE", RELEASE_NAMESPACE.to_owned()),
        ];
        let mut me = Self {
            server,
            procs: Vec::new(),
            proxy: format!("http://127.0.0.1:{proxy}"),
            proxy_metrics: format!("http://127.0.0.1:{proxy_metrics}"),
            operator_metrics: format!("http://127.0.0.1:{operator_port}"),
            api_ops: format!("http://127.0.0.1:{ops}"),
            leak_reports: format!("http://127.0.0.1:{leaks}/leak-reports"),
            api: format!("127.0.0.1:{api}"),
            dir,
        };
        me.spawn(
            "prodgy-operator",
            &bin,
            &[
                format!("--hashed-secret-namespace={TOKENS_NAMESPACE}"),
                format!("--metrics-addr=127.0.0.1:{operator_port}"),
                "--usage-status-interval=1s".into(),
                "--identity=operator-0".into(),
                "--log-format=text".into(),
                format!("--leak-reports-addr=127.0.0.1:{leaks}"),
                format!("--leak-shared-secret-file={}", leak_secret.display()),
            ],
            &kube_env,
        )?;
        me.spawn(
            "prodgy-api",
            &bin,
            &[
                format!("--listen=127.0.0.1:{api}"),
                format!("--ops-listen=127.0.0.1:{ops}"),
                format!("--data-dir={}", me.dir.path().join("api").display()),
                "--log-format=text".into(),
            ],
            &[],
        )?;
        let args = me.proxy_args(proxy, proxy_metrics, "proxy-0");
        me.spawn("prodgy-proxy", &bin, &args, &kube_env)?;
        for port in [operator_port, ops, proxy_metrics] {
            me.wait_ready(&format!("http://127.0.0.1:{port}/readyz"))
                .await?;
        }
        Ok(me)
    }

    fn proxy_args(&self, port: u16, metrics: u16, replica: &str) -> Vec<String> {
        vec![
            format!("--listen=127.0.0.1:{port}"),
            format!("--upstream={}", self.api),
            format!("--metrics-addr=127.0.0.1:{metrics}"),
            "--source=kubernetes".into(),
            format!("--hashed-secret-namespace={TOKENS_NAMESPACE}"),
            "--usage-reports".into(),
            "--usage-flush-interval=1s".into(),
            format!("--replica={replica}"),
            "--log-format=text".into(),
        ]
    }

    /// Starts one more proxy replica, as a second pod of the Deployment
    /// would be; returns its base URL once it is ready.
    pub async fn add_proxy(&mut self, replica: &str) -> Result<String> {
        let [port, metrics] = free_ports()?;
        let kube_env = [
            (
                "KUBECONFIG",
                self.dir.path().join("kubeconfig").display().to_string(),
            ),
            ("POD_NAMESPACE", RELEASE_NAMESPACE.to_owned()),
        ];
        let args = self.proxy_args(port, metrics, replica);
        self.spawn("prodgy-proxy", &binaries()?, &args, &kube_env)?;
        self.wait_ready(&format!("http://127.0.0.1:{metrics}/readyz"))
            .await?;
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// The cluster the scenarios run in.
    pub fn cluster(&self) -> Result<Cluster> {
        Ok(Cluster {
            client: self.server.try_client()?,
            caller: Caller::new(&self.proxy)?,
            release_namespace: RELEASE_NAMESPACE.to_owned(),
            tokens_namespace: TOKENS_NAMESPACE.to_owned(),
            metrics: MetricsSource::Urls(vec![format!("{}/metrics", self.proxy_metrics)]),
            expiry_lead: Duration::from_secs(5),
        })
    }

    fn spawn(
        &mut self,
        name: &'static str,
        bin: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<()> {
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", self.procs.len()));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin.join(name))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    async fn wait_ready(&mut self, url: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            for p in &mut self.procs {
                if let Some(status) = p.child.try_wait()? {
                    bail!(
                        "{} exited ({status}) at start-up:\n{}",
                        p.name,
                        tail(&p.log)
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("{url} not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    #[allow(clippy::print_stderr)] // a failing test shows what the binaries logged
    fn drop(&mut self) {
        for p in &mut self.procs {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = signal(p.child.id(), "TERM");
            }
        }
        for p in &mut self.procs {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            if std::thread::panicking() {
                eprintln!("----- {} (last 40 lines) -----\n{}", p.name, tail(&p.log));
            }
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
