//! The console server (`kubectl apitoken ui`) over real HTTP: who may use
//! it (secret, Host, Origin), every action of the page against the real
//! operator, proxy and API binaries on the Kubernetes API test server, and
//! the errors a user can act on.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kubectl_apitoken::Session;
use kubectl_apitoken::ui::Bound;
use prodgy_kube_fake::FakeApiServer;
use prodgy_tests::local::LocalCluster;
use prodgy_tests::wait::{Probe, until};
use reqwest::header::{CONTENT_SECURITY_POLICY, COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// A running console and a browser-like client signed in to it.
struct Page {
    base: String,
    port: u16,
    secret_url: String,
    cookie: String,
    http: reqwest::Client,
    server: JoinHandle<()>,
}

impl Drop for Page {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Page {
    async fn open(client: Client, all_namespaces: bool) -> Self {
        let session = Session::new(client, "default", Duration::from_secs(30));
        let bound = Bound::bind(session, all_namespaces, 0).await.unwrap();
        let secret_url = bound.url();
        let base = secret_url.split("/?").next().unwrap().to_owned();
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        let server = tokio::spawn(async move {
            bound.run(std::future::pending()).await.unwrap();
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = http.get(&secret_url).send().await.unwrap();
        assert_eq!(login.status(), StatusCode::SEE_OTHER);
        let set = login.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        let cookie = set.split(';').next().unwrap().to_owned();
        Self {
            base,
            port,
            secret_url,
            cookie,
            http,
            server,
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A request as the page's own script sends it.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .header(ORIGIN, self.origin());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    /// The event stream of a namespace; yields `(event, data)` pairs.
    async fn events(&self, namespace: &str) -> Events {
        let resp = self
            .http
            .get(format!("{}/api/events?namespace={namespace}", self.base))
            .header(COOKIE, &self.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        Events {
            body: Box::pin(resp.bytes_stream()),
            buffer: String::new(),
        }
    }
}

struct Events {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Events {
    /// The next event whose data satisfies `want`, within 30 s.
    async fn until(&mut self, kind: &str, want: impl Fn(&Value) -> bool) -> Value {
        let wait = async {
            loop {
                while let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let mut event = "message";
                    let mut data = String::new();
                    for line in block.lines() {
                        if let Some(e) = line.strip_prefix("event: ") {
                            event = e;
                        } else if let Some(d) = line.strip_prefix("data: ") {
                            data.push_str(d);
                        }
                    }
                    if event == kind {
                        let value: Value = serde_json::from_str(&data).unwrap();
                        if want(&value) {
                            return value;
                        }
                    }
                }
                let chunk = self.body.next().await.expect("stream ended").unwrap();
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event as wanted within 30 s"))
    }
}

fn card<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

/// Waits until the proxy answers `want` for `token` on a product route.
async fn proxy_answers(cluster: &LocalCluster, token: &str, want: u16) {
    let http = reqwest::Client::new();
    let url = format!("{}/api/agent-base", cluster.proxy);
    until(
        &format!("the proxy answering {want}"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let got = http.get(&url).bearer_auth(token).send().await?.status();
            Ok(if got.as_u16() == want {
                Probe::Done(())
            } else {
                Probe::NotYet(got.to_string())
            })
        },
    )
    .await
    .unwrap();
}

// ---------------------------------------------------------------- guard

#[tokio::test]
async fn only_the_printed_url_signs_in_and_only_our_page_may_change_things() {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let page = Page::open(server.client(), false).await;
    let http = &page.http;

    // Strangers and wrong secrets get nothing, not even the page.
    let bare = http.get(format!("{}/", page.base)).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    assert!(bare.text().await.unwrap().contains("kubectl apitoken ui"));
    let wrong = page.secret_url.replace("secret=", "secret=x");
    assert_eq!(
        http.get(&wrong).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let context = format!("{}/api/context", page.base);
    assert_eq!(
        http.get(&context).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // The secret is exchanged for a cookie the page's script cannot read,
    // and the browser is sent on to a URL without it.
    let login = http.get(&page.secret_url).send().await.unwrap();
    assert_eq!(login.headers()[LOCATION], "/");
    let set = login.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );

    let home = http
        .get(format!("{}/", page.base))
        .header(COOKIE, &page.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    let csp = home.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"));
    assert_eq!(home.headers()["cache-control"], "no-store");
    assert!(home.text().await.unwrap().contains("Create Token"));
    for asset in ["/app.js", "/app.css"] {
        let r = http
            .get(format!("{}{asset}", page.base))
            .header(COOKIE, &page.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
    }

    // A rebound DNS name reaches 127.0.0.1 but names itself in Host.
    let rebound = http
        .get(&context)
        .header(HOST, format!("attacker.example:{}", page.port))
        .header(COOKIE, &page.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    let via_localhost = http
        .get(&context)
        .header(HOST, format!("localhost:{}", page.port))
        .header(COOKIE, &page.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(via_localhost.status(), StatusCode::OK);

    // A change needs our own Origin, even with the cookie.
    let body = json!({"namespace": "default", "name": "ci", "product": "acme"});
    for origin in [None, Some("http://attacker.example"), Some("null")] {
        let mut req = http
            .post(format!("{}/api/tokens", page.base))
            .header(COOKIE, &page.cookie)
            .json(&body);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{origin:?}"
        );
    }
    assert_eq!(
        server.request_count("patch", "apitokens.prodgy.io"),
        0,
        "a refused request reached the cluster"
    );
}

// -------------------------------------------------------------- actions

#[tokio::test]
async fn every_action_of_the_page_works_with_the_real_operator_and_proxy() {
    let cluster = LocalCluster::start().await.unwrap();
    let page = Page::open(cluster.server.client(), false).await;
    let mut events = page.events("default").await;
    events.until("tokens", |list| list == &json!([])).await;

    let (status, context) = page.call(Method::GET, "/api/context", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(context["namespace"], "default");
    assert!(
        context["scopes"]
            .as_array()
            .unwrap()
            .contains(&json!("agents:read"))
    );

    // Create: the answer carries the token once, and it works.
    let (status, created) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "ci-bot", "product": "acme",
                   "expires": "30d", "description": "CI pipeline"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["prefix"], token[..8]);
    assert_eq!(created["card"]["name"], "ci-bot");
    proxy_answers(&cluster, &token, 200).await;
    let live = events
        .until("tokens", |l| {
            card(l, "ci-bot").is_some_and(|c| c["status"] == "Active")
        })
        .await;
    let shown = card(&live, "ci-bot").unwrap();
    assert_eq!(shown["prefix"], token[..8]);
    assert!(
        !live.to_string().contains(&token),
        "the event stream carries the token"
    );

    // Usage grows on the page without asking.
    events
        .until("tokens", |l| {
            card(l, "ci-bot").is_some_and(|c| c["usage"].as_i64() > Some(0))
        })
        .await;

    // The same name again is refused with the command line's words.
    let (status, again) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "ci-bot", "product": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(again["error"]["code"], "already_exists");

    // Deactivate / activate.
    let (status, _) = page
        .post("/api/tokens/default/ci-bot/deactivate", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy_answers(&cluster, &token, 401).await;
    events
        .until("tokens", |l| {
            card(l, "ci-bot").is_some_and(|c| c["status"] == "Inactive")
        })
        .await;
    let (status, _) = page
        .post("/api/tokens/default/ci-bot/activate", json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy_answers(&cluster, &token, 200).await;

    // Regenerate: a new token once; the old one stops working.
    let (status, regenerated) = page
        .post(
            "/api/tokens/default/ci-bot/regenerate",
            json!({"grace": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{regenerated}");
    let fresh = regenerated["token"].as_str().unwrap().to_owned();
    assert_ne!(fresh, token);
    proxy_answers(&cluster, &fresh, 200).await;
    proxy_answers(&cluster, &token, 401).await;

    // Revoke needs the name typed again, then is permanent.
    let (status, refused) = page
        .post(
            "/api/tokens/default/ci-bot/revoke",
            json!({"confirm": "ci"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("type the token's name")
    );
    proxy_answers(&cluster, &fresh, 200).await;
    let (status, _) = page
        .post(
            "/api/tokens/default/ci-bot/revoke",
            json!({"confirm": "ci-bot"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy_answers(&cluster, &fresh, 401).await;
    events
        .until("tokens", |l| {
            card(l, "ci-bot").is_some_and(|c| c["status"] == "Revoked")
        })
        .await;
    for (action, body) in [
        ("activate", json!({})),
        ("regenerate", json!({})),
        ("revoke", json!({"confirm": "ci-bot"})),
    ] {
        let (status, body) = page
            .post(&format!("/api/tokens/default/ci-bot/{action}"), body)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{action}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("revoked")
        );
    }

    // Delete removes the revoked card.
    let (status, _) = page
        .call(Method::DELETE, "/api/tokens/default/ci-bot", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    events
        .until("tokens", |l| card(l, "ci-bot").is_none())
        .await;
}

#[tokio::test]
async fn regenerate_with_a_grace_period_keeps_the_old_token_working_meanwhile() {
    let cluster = LocalCluster::start().await.unwrap();
    let page = Page::open(cluster.server.client(), false).await;
    let (status, created) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "rotating", "product": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let old = created["token"].as_str().unwrap().to_owned();
    proxy_answers(&cluster, &old, 200).await;

    let (status, regenerated) = page
        .post(
            "/api/tokens/default/rotating/regenerate",
            json!({"grace": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{regenerated}");
    let until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(regenerated["previousValidUntil"].clone()).unwrap();
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(55) && left <= chrono::Duration::hours(1),
        "the old token is kept until {until}"
    );
    // Once the proxy knows the new token, it still accepts the old one.
    let fresh = regenerated["token"].as_str().unwrap().to_owned();
    proxy_answers(&cluster, &fresh, 200).await;
    proxy_answers(&cluster, &old, 200).await;
}

#[tokio::test]
async fn delete_is_only_for_revoked_tokens_and_expiry_must_be_in_the_future() {
    let cluster = LocalCluster::start().await.unwrap();
    let page = Page::open(cluster.server.client(), false).await;
    let (status, body) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "old", "product": "acme",
                   "expires": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_expiry");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not in the future")
    );

    let (status, _) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "keep", "product": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = page
        .call(Method::DELETE, "/api/tokens/default/keep", None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoke it before")
    );
}

#[tokio::test]
async fn the_create_dialog_sets_a_usage_cap_and_source_ranges() {
    let cluster = LocalCluster::start().await.unwrap();
    let page = Page::open(cluster.server.client(), false).await;
    for (field, bad, said) in [
        ("usageLimit", json!("lots"), "usage limit"),
        ("allowSources", json!(["10.0.0.1"]), "allowed source"),
    ] {
        let mut body = json!({"namespace": "default", "name": "capped", "product": "acme"});
        body[field] = bad;
        let (status, answer) = page.post("/api/tokens", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(said), "{message}");
    }
    let (status, created) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "capped", "product": "acme",
                   "usageLimit": "1000/30d", "allowSources": ["127.0.0.0/8", "::1/128"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let card = &created["card"];
    assert_eq!(card["usageLimit"]["requests"], 1000);
    assert_eq!(card["usageLimit"]["per"], "30d");
    assert_eq!(card["allowedSources"], json!(["127.0.0.0/8", "::1/128"]));
    let token = created["token"].as_str().unwrap().to_owned();
    proxy_answers(&cluster, &token, 200).await;
}

// --------------------------------------------------------------- errors

#[tokio::test]
async fn rbac_refusals_name_the_verb_and_resource() {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let page = Page::open(server.client(), false).await;

    server.deny("patch", "apitokens");
    let (status, body) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "ci", "product": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        body["error"]["message"],
        "forbidden: you are not allowed to patch apitokens.prodgy.io in namespace \"default\" \
         (ask for RBAC permission to patch apitokens.prodgy.io)"
    );

    server.deny("list", "apitokens");
    let mut events = page.events("default").await;
    let problem = events.until("problem", |_| true).await;
    assert_eq!(problem["code"], "forbidden");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("not allowed to list apitokens.prodgy.io in namespace \"default\"")
    );
    // Once the permission is granted, the page gets its cards.
    server.allow("list", "apitokens");
    events.until("tokens", |l| l == &json!([])).await;
}

#[tokio::test]
async fn a_missing_crd_and_an_unreachable_cluster_are_said_plainly() {
    let server = FakeApiServer::start().await;
    let page = Page::open(server.client(), false).await;
    let mut events = page.events("default").await;
    let problem = events.until("problem", |_| true).await;
    assert_eq!(problem["code"], "crd_missing");
    let (status, body) = page
        .post(
            "/api/tokens",
            json!({"namespace": "default", "name": "ci", "product": "acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("CRD is not installed")
    );

    // The watch recovers by itself once the CRD exists.
    server.register_prodgy_crds().unwrap();
    events.until("tokens", |l| l == &json!([])).await;

    server.set_available(false);
    let (status, body) = page
        .post("/api/tokens/default/ci/activate", json!({}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["error"]["code"], "unreachable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reach the Kubernetes API")
    );
}

#[tokio::test]
async fn all_namespaces_needs_dash_a() {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let page = Page::open(server.client(), false).await;
    let resp = page
        .http
        .get(format!("{}/api/events?namespace=", page.base))
        .header(COOKIE, &page.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    let wide = Page::open(server.client(), true).await;
    let mut events = wide.events("").await;
    events.until("tokens", |l| l == &json!([])).await;
}
