#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]
//! The real operator's leak-report endpoint, over HTTP, against the
//! Kubernetes API test server: signed reports take real tokens out of
//! service and answer per token; unsigned, mis-signed and malformed reports
//! are refused with the error envelope; limits hold.

mod support;

use std::time::{Duration, Instant};

use prodgy_crds::{
    Phase, RecordState, Token, TokenHash,
    leak::{LEAK_ANNOTATION, LEAKED, REASON_LEAK_REPORTED},
};
use prodgy_operator::{
    app::Running,
    leaks::verify::{
        HMAC_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER,
        testing::{TestKey, hmac_header, key_list},
    },
};
use serde_json::{Value, json};
use support::*;

const SECRET: &[u8] = b"an in-house scanner's shared secret";

/// An operator with the endpoint on, the scanner's key and the shared secret.
struct Endpoint {
    op: Running,
    url: String,
    key: TestKey,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Endpoint {
    async fn start(w: &World, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = TestKey::generate();
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, key_list(&[("k1", &key)])).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let mut args = vec![
            "--leak-reports-addr",
            "127.0.0.1:0",
            "--leak-public-keys-file",
            keys.to_str().unwrap(),
            "--leak-shared-secret-file",
            secret.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let op = w.start(&args).await;
        let url = format!("http://{}/leak-reports", op.leaks_addr.unwrap());
        let me = Self {
            op,
            url,
            key,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        // 503 until the hashed records are loaded.
        eventually("leak endpoint ready", Duration::from_secs(10), || async {
            (me.post(b"[]", &[]).await.0 != 503).then_some(())
        })
        .await;
        me
    }

    async fn post(&self, body: &[u8], headers: &[(&str, String)]) -> (u16, Value, Option<String>) {
        let mut req = self.http.post(&self.url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v, retry)
    }

    /// Posts `body` signed with the scanner key `k1`.
    async fn signed(&self, body: &[u8]) -> (u16, Value) {
        let headers = [
            (KEY_ID_HEADER, "k1".to_owned()),
            (SIGNATURE_HEADER, self.key.sign(body)),
        ];
        let (s, v, _) = self.post(body, &headers).await;
        (s, v)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.op.metrics_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn report(tokens: &[&str]) -> Vec<u8> {
    let items: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"token": t, "type": "prodgy_api_token",
                   "url": format!("https://example.com/repo/blob/abc/file{i}.env"), "source": "content"})
        })
        .collect();
    serde_json::to_vec(&items).unwrap()
}

fn labels(answer: &Value) -> Vec<&str> {
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["label"].as_str().unwrap())
        .collect()
}

async fn issued(w: &World, name: &str, spec: Value) -> String {
    w.create(name, spec).await;
    w.wait_phase(name, "Active").await;
    w.delivered(&format!("{name}-token")).await.unwrap()
}

fn flip_last(token: &str) -> String {
    let mut s = token.to_owned();
    let last = s.pop().unwrap();
    s.push(if last == '0' { '1' } else { '0' });
    s
}

#[tokio::test]
async fn a_signed_report_revokes_our_token_and_answers_per_token() {
    let w = World::new("leak-revoke").await;
    let e = Endpoint::start(&w, &[]).await;
    let ours = issued(&w, "ci-bot", json!({"product": "acme"})).await;
    let bystander = issued(&w, "web", json!({"product": "acme"})).await;
    let stranger = Token::generate("prod").unwrap();
    let tokens = [
        ours.as_str(),
        stranger.expose(),
        &flip_last(&ours),
        "not-a-token",
    ];
    let (status, answer) = e.signed(&report(&tokens)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        labels(&answer),
        [
            "true_positive",
            "false_positive",
            "false_positive",
            "false_positive"
        ]
    );
    assert_eq!(answer[0]["token_hash"], TokenHash::of(&ours).to_hex());
    assert_eq!(answer[0]["token_type"], "prodgy_api_token");
    // Nothing but hash, type and label: no name, namespace or state.
    let text = answer.to_string();
    for secret in [&ours, "ci-bot", w.ns.as_str(), "Active", "Revoked"] {
        assert!(
            !text.contains(secret),
            "the answer reveals {secret:?}: {text}"
        );
    }
    assert!(answer[0].as_object().unwrap().len() == 3);

    // Revoked at once, for good; the reconciler records the report.
    assert!(w.get("ci-bot").await.spec.revoked);
    let tok = w
        .wait_status("ci-bot", "Leaked condition", |s| {
            s.conditions.iter().any(|c| c.type_ == LEAKED)
        })
        .await;
    let st = tok.status.clone().unwrap();
    assert_eq!(st.phase, Some(Phase::Revoked));
    let leaked = st.conditions.iter().find(|c| c.type_ == LEAKED).unwrap();
    assert_eq!(leaked.status, "True");
    assert!(
        leaked
            .message
            .contains("https://example.com/repo/blob/abc/file0.env")
    );
    assert!(
        tok.metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(LEAK_ANNOTATION)
    );
    w.wait_events("ci-bot", &[REASON_LEAK_REPORTED, "Revoked"])
        .await;
    let record = w.record(&tok).await.unwrap();
    assert_eq!(record.state, RecordState::Revoked);
    // The other token is untouched.
    let web = w.get("web").await;
    assert!(!web.spec.revoked && web.metadata.annotations.unwrap_or_default().is_empty());
    assert!(!w.observable_text().contains(&ours[8..]));
    assert!(!w.observable_text().contains(&bystander[8..]));
    // Un-revoking is refused by the CRD: the revocation is permanent.
    let undo = w
        .tokens()
        .patch(
            "ci-bot",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"revoked": false}})),
        )
        .await;
    assert!(undo.is_err(), "un-revoked a leaked token");

    // A second report of the same token: still ours, still revoked.
    let (status, again) = e.signed(&report(&[&ours])).await;
    assert_eq!((status, labels(&again)), (200, vec!["true_positive"]));
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leak_reports_total{result=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leaked_tokens_total{outcome=\"matched\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leaked_tokens_total{outcome=\"unknown\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leaked_tokens_total{outcome=\"malformed\"}"
        ),
        2.0
    );
    assert!(!m.contains(&ours[8..]));
    e.op.stop().await.unwrap();
}

#[tokio::test]
async fn unsigned_mis_signed_and_unknown_key_reports_are_refused() {
    let w = World::new("leak-auth").await;
    let e = Endpoint::start(&w, &[]).await;
    let ours = issued(&w, "t", json!({"product": "acme"})).await;
    let body = report(&[&ours]);
    let other = TestKey::generate();
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("missing", vec![]),
        ("half", vec![(KEY_ID_HEADER, "k1".into())]),
        (
            "forged",
            vec![
                (KEY_ID_HEADER, "k1".into()),
                (SIGNATURE_HEADER, other.sign(&body)),
            ],
        ),
        (
            "unknown key",
            vec![
                (KEY_ID_HEADER, "k2".into()),
                (SIGNATURE_HEADER, e.key.sign(&body)),
            ],
        ),
        (
            "other body",
            vec![
                (KEY_ID_HEADER, "k1".into()),
                (SIGNATURE_HEADER, e.key.sign(b"[]")),
            ],
        ),
        (
            "wrong secret",
            vec![(HMAC_HEADER, hmac_header(b"guessed-secret-1234", &body))],
        ),
    ];
    for (what, headers) in cases {
        let (status, v, _) = e.post(&body, &headers).await;
        assert_eq!(status, 401, "{what}: {v}");
        assert_eq!(v["error"]["code"], "invalid_signature", "{what}");
        assert!(!v.to_string().contains(&ours[8..]));
    }
    assert!(
        !w.get("t").await.spec.revoked,
        "an unsigned report revoked a token"
    );
    let m = e.metrics().await;
    // The six, and the unsigned readiness probe.
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leak_reports_total{result=\"unauthorized\"}"
        ),
        7.0
    );
    e.op.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_and_oversized_reports_get_clear_errors() {
    let w = World::new("leak-body").await;
    let e = Endpoint::start(
        &w,
        &["--leak-max-tokens", "3", "--leak-max-body-bytes", "4096"],
    )
    .await;
    let cases: [(&[u8], u16, &str); 5] = [
        (b"not json", 400, "invalid_json"),
        (br#"{"token":"prod_x"}"#, 400, "invalid_report"),
        (br#"[{"token":5,"type":"t"}]"#, 400, "invalid_report"),
        (
            br#"[{"token":"a"},{"token":"b"},{"token":"c"},{"token":"d"}]"#,
            400,
            "too_many_tokens",
        ),
        (&[b' '; 5000], 413, "body_too_large"),
    ];
    for (body, want, code) in cases {
        let (status, v) = e.signed(body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (want, Some(code)),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Over the limit by Content-Length, unsigned: refused before anything.
    let (status, v, _) = e.post(&vec![b'['; 1 << 20], &[]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leak_reports_total{result=\"malformed\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            "prodgy_operator_leak_reports_total{result=\"too_large\"}"
        ),
        2.0
    );
    e.op.stop().await.unwrap();
}

#[tokio::test]
async fn reports_over_the_rate_limit_get_429_with_retry_after() {
    let w = World::new("leak-rate").await;
    let e = Endpoint::start(&w, &["--leak-reports-per-second", "1"]).await;
    // The readiness probe took the second's only report.
    let (status, v, retry) = e.post(b"[]", &[]).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(retry.as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(e.signed(b"[]").await, (200, json!([])));
    e.op.stop().await.unwrap();
}

#[tokio::test]
async fn the_shared_secret_authenticates_in_house_scanners_and_deactivation_is_an_option() {
    let w = World::new("leak-hmac").await;
    let e = Endpoint::start(&w, &["--leak-action", "deactivate"]).await;
    let ours = issued(&w, "t", json!({"product": "acme"})).await;
    let body = report(&[&ours]);
    let (status, v, _) = e
        .post(&body, &[(HMAC_HEADER, hmac_header(SECRET, &body))])
        .await;
    assert_eq!((status, labels(&v)), (200, vec!["true_positive"]), "{v}");
    let tok = w.get("t").await;
    assert!(!tok.spec.active && !tok.spec.revoked);
    let tok = w.wait_phase("t", "Inactive").await;
    assert!(
        tok.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == LEAKED)
    );
    // The HMAC covers the exact body.
    let (status, _, _) = e
        .post(b"[ ]", &[(HMAC_HEADER, hmac_header(SECRET, &body))])
        .await;
    assert_eq!(status, 401);
    e.op.stop().await.unwrap();
}

#[tokio::test]
async fn a_superseded_token_inside_its_grace_period_takes_its_apitoken_down() {
    let w = World::new("leak-grace").await;
    let e = Endpoint::start(&w, &[]).await;
    let old = issued(&w, "t", json!({"product": "acme"})).await;
    w.patch_spec(
        "t",
        json!({"regeneration": 1, "regenerationGracePeriod": "1h"}),
    )
    .await;
    w.wait_status("t", "regenerated", |s| s.previous_valid_until.is_some())
        .await;
    let (status, v) = e.signed(&report(&[&old])).await;
    assert_eq!((status, labels(&v)), (200, vec!["true_positive"]));
    let tok = w.wait_phase("t", "Revoked").await;
    assert!(tok.spec.revoked);
    e.op.stop().await.unwrap();
}

#[tokio::test]
async fn a_report_of_1000_tokens_is_answered_and_acted_on_in_one_request() {
    let w = World::new("leak-load").await;
    let e = Endpoint::start(&w, &[]).await;
    let mut ours = Vec::new();
    for i in 0..20 {
        ours.push(issued(&w, &format!("t{i}"), json!({"product": "acme"})).await);
    }
    let strangers: Vec<Token> = (0..980).map(|_| Token::generate("prod").unwrap()).collect();
    let mut tokens: Vec<&str> = strangers.iter().map(Token::expose).collect();
    for (i, t) in ours.iter().enumerate() {
        tokens.insert(i * 50, t);
    }
    let body = report(&tokens);
    let started = Instant::now();
    let (status, answer) = e.signed(&body).await;
    let took = started.elapsed();
    eprintln!(
        "1,000-token report ({} bytes, 20 ours): answered in {took:?}",
        body.len()
    );
    assert_eq!(status, 200, "{answer}");
    let got = labels(&answer);
    assert_eq!(got.len(), 1000);
    for (i, label) in got.iter().enumerate() {
        let want = if i % 50 == 0 {
            "true_positive"
        } else {
            "false_positive"
        };
        assert_eq!(*label, want, "token {i}");
    }
    for i in 0..20 {
        assert!(
            w.get(&format!("t{i}")).await.spec.revoked,
            "t{i} not revoked"
        );
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
    e.op.stop().await.unwrap();
}
