//! Who may talk to the console: pure decisions on a request's head.
//!
//! The console holds the user's Kubernetes credentials, so any page the
//! browser has open could try to use it. Three checks stop that:
//! - the Host header must name the console's own loopback address, so a
//!   DNS name rebound to 127.0.0.1 gets nothing (its Host is that name);
//! - every request but the login needs the session cookie, which is set
//!   only in exchange for the per-run secret from the printed URL and is
//!   `SameSite=Strict`, so no other site's page can send it;
//! - every state-changing request must carry our own Origin, which a
//!   cross-site form or fetch cannot forge.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

/// The query parameter of the printed URL that carries the secret.
pub const SECRET_PARAM: &str = "secret";

/// The decision on one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Pass,
    /// The right secret: set the cookie and redirect to the bare URL.
    Login,
    /// Refuse with this status and a one-line reason.
    Refuse(u16, &'static str),
}

/// What the guard looks at in a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Head<'a> {
    /// The method, upper case.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The Host header.
    pub host: Option<&'a str>,
    /// The Origin header.
    pub origin: Option<&'a str>,
    /// The Cookie header.
    pub cookie: Option<&'a str>,
}

/// The per-run secrets of one console.
pub struct Guard {
    port: u16,
    secret: String,
    session: String,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Guard {
    /// Fresh random secrets for a console on `port`.
    pub fn new(port: u16) -> Result<Self, getrandom::Error> {
        Ok(Self::with_secrets(port, random()?, random()?))
    }

    /// A guard with given secrets (tests).
    pub fn with_secrets(port: u16, secret: String, session: String) -> Self {
        Self {
            port,
            secret,
            session,
        }
    }

    /// The URL to print: the only way in.
    pub fn login_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/?{SECRET_PARAM}={}",
            self.port, self.secret
        )
    }

    /// The cookie's name. Cookies ignore ports, so two consoles on one
    /// machine would overwrite each other's under one name.
    pub fn cookie_name(&self) -> String {
        format!("apitoken_console_{}", self.port)
    }

    /// The `Set-Cookie` value a successful login answers with.
    pub fn set_cookie(&self) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            self.cookie_name(),
            self.session
        )
    }

    /// Judges one request.
    pub fn judge(&self, head: &Head<'_>) -> Verdict {
        if !self.own_authority(head.host) {
            return Verdict::Refuse(
                421,
                "this console answers only to http://127.0.0.1:PORT and http://localhost:PORT",
            );
        }
        let safe = matches!(head.method, "GET" | "HEAD");
        if !safe && !head.origin.is_some_and(|o| self.own_origin(o)) {
            return Verdict::Refuse(
                403,
                "cross-origin request refused: changes are accepted only from the console's own page",
            );
        }
        if let Some(given) = head.query.and_then(secret_in) {
            return if safe && head.path == "/" && equal(given, &self.secret) {
                Verdict::Login
            } else {
                Verdict::Refuse(
                    403,
                    "wrong console secret: open the URL that `kubectl apitoken ui` printed",
                )
            };
        }
        match head
            .cookie
            .and_then(|c| cookie_value(c, &self.cookie_name()))
        {
            Some(v) if equal(v, &self.session) => Verdict::Pass,
            _ => Verdict::Refuse(
                401,
                "not signed in: open the URL that `kubectl apitoken ui` printed (it holds this run's secret)",
            ),
        }
    }

    fn own_authority(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return false };
        let port = self.port.to_string();
        ["127.0.0.1", "localhost"]
            .iter()
            .any(|name| host.strip_prefix(name).and_then(|r| r.strip_prefix(':')) == Some(&port))
    }

    fn own_origin(&self, origin: &str) -> bool {
        self.own_authority(origin.strip_prefix("http://"))
    }
}

/// 32 random bytes, URL-safe.
fn random() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn secret_in(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| {
        pair.strip_prefix(SECRET_PARAM)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::with_secrets(8123, "s3cret".into(), "sess".into())
    }

    fn head<'a>(method: &'a str, path: &'a str) -> Head<'a> {
        Head {
            method,
            path,
            host: Some("127.0.0.1:8123"),
            ..Head::default()
        }
    }

    const COOKIE: &str = "other=1; apitoken_console_8123=sess";

    #[test]
    fn the_printed_secret_logs_in_and_nothing_else_does() {
        let g = guard();
        let login = Head {
            query: Some("secret=s3cret"),
            ..head("GET", "/")
        };
        assert_eq!(g.judge(&login), Verdict::Login);
        for wrong in ["secret=s3cre", "secret=s3cret2", "secret=", "a=1&secret=x"] {
            let h = Head {
                query: Some(wrong),
                ..head("GET", "/")
            };
            assert!(matches!(g.judge(&h), Verdict::Refuse(403, _)), "{wrong}");
        }
        assert!(g.login_url().ends_with(":8123/?secret=s3cret"));
        assert_eq!(
            g.set_cookie(),
            "apitoken_console_8123=sess; Path=/; HttpOnly; SameSite=Strict"
        );
    }

    #[test]
    fn everything_else_needs_the_cookie() {
        let g = guard();
        for path in ["/", "/app.js", "/api/context", "/api/events"] {
            assert!(matches!(
                g.judge(&head("GET", path)),
                Verdict::Refuse(401, _)
            ));
            let bad = Head {
                cookie: Some("apitoken_console_8123=nope; apitoken_console_9=sess"),
                ..head("GET", path)
            };
            assert!(matches!(g.judge(&bad), Verdict::Refuse(401, _)));
            let good = Head {
                cookie: Some(COOKIE),
                ..head("GET", path)
            };
            assert_eq!(g.judge(&good), Verdict::Pass);
        }
    }

    #[test]
    fn only_our_own_host_is_served() {
        let g = guard();
        for host in ["127.0.0.1:8123", "localhost:8123"] {
            let h = Head {
                host: Some(host),
                cookie: Some(COOKIE),
                ..head("GET", "/")
            };
            assert_eq!(g.judge(&h), Verdict::Pass, "{host}");
        }
        for host in [
            None,
            Some("evil.example:8123"),
            Some("127.0.0.1"),
            Some("127.0.0.1:81234"),
            Some("localhost.evil:8123"),
            Some("127.0.0.1:8124"),
        ] {
            let h = Head {
                host,
                cookie: Some(COOKIE),
                query: Some("secret=s3cret"),
                ..head("GET", "/")
            };
            assert!(matches!(g.judge(&h), Verdict::Refuse(421, _)), "{host:?}");
        }
    }

    #[test]
    fn changes_need_our_own_origin() {
        let g = guard();
        for origin in [
            None,
            Some("null"),
            Some("http://evil.example"),
            Some("https://127.0.0.1:8123"),
            Some("http://127.0.0.1:8124"),
        ] {
            for method in ["POST", "DELETE", "PUT", "PATCH"] {
                let h = Head {
                    origin,
                    cookie: Some(COOKIE),
                    ..head(method, "/api/tokens")
                };
                assert!(matches!(g.judge(&h), Verdict::Refuse(403, _)), "{origin:?}");
            }
        }
        for origin in ["http://127.0.0.1:8123", "http://localhost:8123"] {
            let h = Head {
                origin: Some(origin),
                cookie: Some(COOKIE),
                ..head("POST", "/api/tokens")
            };
            assert_eq!(g.judge(&h), Verdict::Pass);
        }
        // The secret does not sign a change in.
        let h = Head {
            origin: Some("http://127.0.0.1:8123"),
            query: Some("secret=s3cret"),
            ..head("POST", "/")
        };
        assert!(matches!(g.judge(&h), Verdict::Refuse(403, _)));
    }

    #[test]
    fn secrets_are_random_and_long() {
        let (a, b) = (random().unwrap(), random().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }
}
