//! The baselines of the benchmark: pingora forwarding every request to one
//! upstream with nothing else, configured like `prodgy-proxy` (same thread
//! count, runtime flavour, keep-alive pool and allocator).
//!
//! `--mode framework` is pingora's proxy framework (`ProxyHttp` with no
//! hooks), the usual way to build a pingora proxy. `--mode sessions` is
//! `prodgy-proxy`'s own forwarding design without the token check: pingora's
//! HTTP/1 sessions, one request after the other, each client connection
//! keeping its upstream connection. The difference between the two is what
//! the framework costs; between `sessions` and the proxy, what the check
//! costs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use async_trait::async_trait;
use clap::{ArgAction, Parser, ValueEnum};
use pingora::apps::ServerApp;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::ProxyHttp;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::listening::Service;
use pingora::upstreams::peer::Peer;

/// The same allocator as `prodgy-proxy`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// pingora's proxy framework.
    Framework,
    /// pingora's HTTP/1 sessions, forwarded sequentially, each client
    /// connection keeping its own upstream connection.
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

/// The proxy's forwarding design without the token check: pingora's HTTP/1
/// sessions, one request after the other, each client connection keeping
/// the upstream connection it last used.
struct Sessions {
    peer: HttpPeer,
    connector: TransportConnector,
}

impl Sessions {
    async fn forward(
        &self,
        down: &mut ServerSession,
        kept: &mut Option<Stream>,
    ) -> pingora::Result<()> {
        let stream = match kept.take() {
            Some(s) => s,
            None => self.connector.get_stream(&self.peer).await?.0,
        };
        let mut up = Http1Session::new_with_options(stream, &self.peer);
        up.write_request_header(Box::new(down.req_header().clone()))
            .await?;
        while let Some(chunk) = down.read_request_body().await? {
            up.write_body(&chunk).await?;
        }
        up.finish_body().await?;
        up.read_response().await?;
        let head = up
            .resp_header()
            .cloned()
            .ok_or_else(|| pingora::Error::new(pingora::ErrorType::InvalidHTTPHeader))?;
        down.write_response_header(Box::new(head)).await?;
        while !up.is_body_done() {
            match up.read_body_bytes().await? {
                Some(chunk) => down.write_response_body(chunk, false).await?,
                None => break,
            }
        }
        down.finish_body().await?;
        up.respect_keepalive();
        *kept = up.reuse().await;
        Ok(())
    }
}

#[async_trait]
impl ServerApp for Sessions {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut down = ServerSession::new_http1(stream);
        let mut kept = None;
        loop {
            down.set_keepalive(Some(60));
            if !down.read_request().await.ok()? {
                break;
            }
            if self.forward(&mut down, &mut kept).await.is_err() {
                break;
            }
            let Ok(Some(reusable)) = down.finish().await else {
                break;
            };
            let (stream, prefix) = reusable.into_parts();
            down = ServerSession::new_http1(stream);
            if let Some(prefix) = prefix {
                down.set_pipelined_prefix(prefix);
            }
        }
        if let Some(stream) = kept {
            self.connector
                .release_stream(stream, self.peer.reuse_hash(), None);
        }
        None
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
                "sessions".to_owned(),
                Sessions {
                    peer,
                    connector: TransportConnector::new(Some(ConnectorOptions::new(
                        args.keepalive_pool,
                    ))),
                },
            );
            svc.add_tcp(&args.listen);
            server.add_service(svc);
        }
    }
    server.run(RunArgs::default());
    Ok(())
}
