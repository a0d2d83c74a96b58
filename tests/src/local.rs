//! The no-cluster quickstart, driven the way a user drives it: run
//! `hack/quickstart.sh` with the cargo-built binaries on free loopback ports,
//! read the token it prints, and stop it with Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

const BINARIES: [&str; 3] = ["prodgy-operator", "prodgy-proxy", "prodgy-api"];

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where the operator, proxy and API binaries are: `PRODGY_BIN_DIR`, else
/// the cargo profile directory this test was built into. Under nextest the
/// binaries are (re)built first, which is a no-op when they are fresh; under
/// `cargo test` (which holds the build lock) they must already exist.
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
    let missing = || BINARIES.iter().any(|b| !profile_dir.join(b).is_file());
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
    }
    if missing() {
        bail!(
            "{BINARIES:?} are not built in {}: run `cargo build -p prodgy-operator -p prodgy-proxy \
             -p prodgy-api`, or run the tests with cargo nextest, which builds them",
            profile_dir.display()
        );
    }
    Ok(profile_dir)
}

/// A port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
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
        let [port, metrics, api, ops] = [free_port()?, free_port()?, free_port()?, free_port()?];
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
