//! The baselines of the benchmark: pingora forwarding every request to one
//! upstream with nothing else, configured like `prodgy-proxy` (same thread
//! count, runtime flavour, keep-alive pool and allocator).
//!
//! `--mode framework` is pingora's proxy framework (`ProxyHttp` with no
//! hooks), what `prodgy-proxy` is built on. `--mode sessions` forwards with
//! pingora's HTTP/1 sessions and connection pool directly, one request after
//! the other, without the framework's duplex machinery: it shows what the
//! framework itself costs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use clap::{ArgAction, Parser, ValueEnum};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::Connector;
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::ServerSession;
use pingora::proxy::ProxyHttp;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::listening::Service;

/// The same allocator as `prodgy-proxy`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// pingora's proxy framework.
    Framework,
    /// pingora's HTTP/1 sessions, forwarded sequentially.
    Sessions,
}

/// Plain pingora passthrough.
#[derive(Debug, Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:18100")]
    listen: String,
    /// Upstream `host:port`.
    #[arg(long, default_value = "127.0.0.1:18081")]
    upstream: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Work-stealing runtime.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    work_stealing: bool,
    /// Upstream keep-alive pool size.
    #[arg(long, default_value_t = 1024)]
    keepalive_pool: usize,
    /// What forwards the requests.
    #[arg(long, value_enum, default_value = "framework")]
    mode: Mode,
}

struct Passthrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

struct Sequential {
    peer: HttpPeer,
    connector: Connector,
}

impl Sequential {
    async fn forward(&self, down: &mut ServerSession) -> pingora::Result<()> {
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await?;
        up.write_request_header(Box::new(down.req_header().clone()))
            .await?;
        while let Some(chunk) = down.read_request_body().await? {
            up.write_request_body(chunk, false).await?;
        }
        up.finish_request_body().await?;
        up.read_response_header().await?;
        let head = up
            .response_header()
            .cloned()
            .ok_or_else(|| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?;
        down.write_response_header(Box::new(head)).await?;
        while !up.response_done() {
            if let Some(chunk) = up.read_response_body().await? {
                let done = up.response_done();
                down.write_response_body(chunk, done).await?;
            }
        }
        down.finish_body().await?;
        self.connector
            .release_http_session(up, &self.peer, None)
            .await;
        Ok(())
    }
}

#[async_trait]
impl HttpServerApp for Sequential {
    async fn process_new_http(
        self: &Arc<Self>,
        mut down: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !down.read_request().await.ok()? {
            return None;
        }
        down.set_keepalive(Some(60));
        self.forward(&mut down).await.ok()?;
        let settings = HttpPersistentSettings::for_session(&down);
        let stream = down.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream: SocketAddr = args
        .upstream
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--upstream does not resolve"))?;
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: args.work_stealing,
        upstream_keepalive_pool_size: args.keepalive_pool,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let peer = HttpPeer::new(upstream, false, String::new());
    match args.mode {
        Mode::Framework => {
            let mut svc =
                pingora::proxy::http_proxy_service(&server.configuration, Passthrough { peer });
            svc.add_tcp(&args.listen);
            server.add_service(svc);
        }
        Mode::Sessions => {
            let mut svc = Service::new(
                "sequential".to_owned(),
                Sequential {
                    peer,
                    connector: Connector::new(None),
                },
            );
            svc.add_tcp(&args.listen);
            server.add_service(svc);
        }
    }
    server.run(RunArgs::default());
    Ok(())
}
