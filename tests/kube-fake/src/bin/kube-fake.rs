//! The Kubernetes API test server on its own, for tests that are not Rust
//! processes: `hack/test-images.sh` runs it on the host, with TLS, as the
//! API server that pods reach through their in-cluster configuration.
//!
//! ```text
//! kube-fake --listen 127.0.0.1:16443 --kubeconfig /tmp/kubeconfig \
//!     --tls-cert server.pem --tls-key server.key --tls-ca ca.pem
//! ```
//!
//! The ApiToken and UsageReport CRDs are installed. The kubeconfig is
//! written (atomically) once the server answers, so its appearance is the
//! signal to start; SIGTERM or Ctrl-C stops the server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use prodgy_kube_fake::{FakeApiServer, TlsIdentity};

#[derive(Debug, Parser)]
#[command(
    name = "kube-fake",
    about = "Serve the Kubernetes API test server until stopped"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for this server (its token and CA).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Serve HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA that clients trust (PEM), written into the kubeconfig.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Refuse namespaced objects in namespaces that do not exist.
    #[arg(long)]
    require_namespaces: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match serve(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = FakeApiServer::builder()
        .listen(args.listen)
        .require_namespaces(args.require_namespaces);
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        builder = builder.tls(TlsIdentity::from_files(cert, key, ca)?);
    }
    let server = builder.start().await?;
    server.register_prodgy_crds()?;
    let partial = args.kubeconfig.with_extension("partial");
    server.write_kubeconfig(&partial)?;
    std::fs::rename(&partial, &args.kubeconfig)?;
    writeln!(std::io::stdout(), "kube-fake serving on {}", server.url())?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(server);
    Ok(())
}
