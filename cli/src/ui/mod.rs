//! `kubectl apitoken ui`: the product guide's API Tokens page, served on
//! 127.0.0.1 and acting with the user's own kubeconfig credentials.
//!
//! The console adds no privilege: every action is one of the [`Session`]
//! methods the terminal commands use, so Kubernetes RBAC decides as it does
//! for `kubectl apitoken`. [`guard`] keeps other pages and hosts out,
//! [`api`] is the JSON API, [`events`] the live watch, [`assets`] the page.

pub mod api;
pub mod assets;
pub mod events;
pub mod guard;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::args::UiArgs;
use crate::{Error, Result, Session, Terminal};
use guard::{Guard, Head, Verdict};

/// The page may load only its own files and talk only to this server.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct Console {
    session: Session,
    all_namespaces: bool,
    guard: Arc<Guard>,
}

/// A console bound to its port, not yet serving.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    console: Console,
}

impl Bound {
    /// Binds 127.0.0.1:`port` (0: any free port) with fresh secrets.
    pub async fn bind(session: Session, all_namespaces: bool, port: u16) -> Result<Self> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Serve(format!("cannot listen on {addr}: {e}")))?;
        let port = listener.local_addr()?.port();
        let guard = Guard::new(port)
            .map_err(|e| Error::Serve(format!("no randomness for the console secret: {e}")))?;
        Ok(Self {
            listener,
            console: Console {
                session,
                all_namespaces,
                guard: Arc::new(guard),
            },
        })
    }

    /// The URL to open: it carries this run's secret.
    pub fn url(&self) -> String {
        self.console.guard.login_url()
    }

    /// Serves until `stop` completes. Open event streams never end by
    /// themselves, so stopping drops the connections instead of draining.
    pub async fn run(self, stop: impl Future<Output = ()> + Send) -> Result<()> {
        let app = router(self.console);
        tokio::select! {
            served = axum::serve(self.listener, app) => {
                served.map_err(|e| Error::Serve(e.to_string()))
            }
            () = stop => Ok(()),
        }
    }
}

/// The console's routes behind the guard.
pub fn router(console: Console) -> Router {
    let token = "/api/tokens/{namespace}/{name}";
    Router::new()
        .route("/api/context", get(api::context))
        .route("/api/events", get(events::events))
        .route("/api/tokens", post(api::create))
        .route(token, delete(api::delete))
        .route(&format!("{token}/regenerate"), post(api::regenerate))
        .route(&format!("{token}/activate"), post(api::activate))
        .route(&format!("{token}/deactivate"), post(api::deactivate))
        .route(&format!("{token}/revoke"), post(api::revoke))
        .fallback(asset)
        .layer(middleware::from_fn_with_state(console.clone(), guarded))
        .with_state(console)
}

/// `kubectl apitoken ui`: print the URL, open the browser, serve until Ctrl-C.
pub async fn serve(session: &Session, args: &UiArgs, term: &mut Terminal<'_>) -> Result<()> {
    let bound = Bound::bind(session.clone(), args.all_namespaces, args.port).await?;
    let url = bound.url();
    writeln!(term.out, "API Tokens console: {url}")?;
    let scope = if args.all_namespaces {
        "all namespaces".to_owned()
    } else {
        format!("namespace {:?}", session.namespace())
    };
    writeln!(
        term.err,
        "Serving on 127.0.0.1 only, acting as your kubeconfig user in {scope}. Press Ctrl-C to stop."
    )?;
    term.out.flush()?;
    if !args.no_open
        && let Err(why) = open_browser(&url)
    {
        writeln!(
            term.err,
            "Could not open a browser ({why}): open the URL above."
        )?;
    }
    bound
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}

/// The guard in front of every route, and the headers every answer gets.
async fn guarded(State(console): State<Console>, request: Request, next: Next) -> Response {
    let verdict = {
        let h = request.headers();
        console.guard.judge(&Head {
            method: request.method().as_str(),
            path: request.uri().path(),
            query: request.uri().query(),
            host: text(h, &header::HOST),
            origin: text(h, &header::ORIGIN),
            cookie: text(h, &header::COOKIE),
        })
    };
    let mut response = match verdict {
        Verdict::Pass => next.run(request).await,
        Verdict::Login => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_owned()),
                (header::SET_COOKIE, console.guard.set_cookie()),
            ],
        )
            .into_response(),
        Verdict::Refuse(code, why) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{why}\n"),
        )
            .into_response(),
    };
    harden(response.headers_mut());
    response
}

fn text<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Every answer may carry a token or the page that shows one: none is
/// cached, framed, sniffed or followed by a Referer.
fn harden(headers: &mut HeaderMap) {
    let set = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

async fn asset(method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return api::not_found().await.into_response();
    }
    match assets::lookup(uri.path()) {
        Some(a) => ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response(),
        None if uri.path().starts_with("/api/") => api::not_found().await.into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// The command that opens a URL on this system: `$BROWSER` if set, else
/// the platform's opener.
pub fn opener(os: &str, browser: Option<&str>) -> Option<(String, Vec<String>)> {
    if let Some(b) = browser.filter(|b| !b.trim().is_empty()) {
        return Some((b.trim().to_owned(), Vec::new()));
    }
    match os {
        "macos" => Some(("open".into(), Vec::new())),
        "windows" => Some((
            "rundll32".into(),
            vec!["url.dll,FileProtocolHandler".into()],
        )),
        "linux" | "freebsd" | "openbsd" | "netbsd" | "dragonfly" => {
            Some(("xdg-open".into(), Vec::new()))
        }
        _ => None,
    }
}

fn open_browser(url: &str) -> std::result::Result<(), String> {
    let browser = std::env::var("BROWSER").ok();
    let (program, mut args) = opener(std::env::consts::OS, browser.as_deref())
        .ok_or_else(|| "no known way to open a browser here".to_owned())?;
    args.push(url.to_owned());
    std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("{program}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_opener_follows_the_platform_and_browser() {
        assert_eq!(opener("linux", None).unwrap().0, "xdg-open");
        assert_eq!(opener("macos", Some(" ")).unwrap().0, "open");
        assert_eq!(opener("linux", Some("firefox")).unwrap().0, "firefox");
        assert!(opener("plan9", None).is_none());
    }

    #[test]
    fn the_policy_allows_no_inline_code_and_no_other_origin() {
        assert!(!CSP.contains("unsafe"));
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
        ] {
            assert!(CSP.contains(directive), "{directive}");
        }
    }
}
