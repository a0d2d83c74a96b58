//! The Kubernetes source and usage reports against the Kubernetes API test
//! server (`prodgy-kube-fake`), with the real binary using a kubeconfig.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use prodgy_crds::{HashEntry, RecordState, Token, UsageReport};
use prodgy_kube_fake::{FakeApiServer, WriteFault};
use support::*;

const NS: &str = "prodgy-tokens";

struct Cluster {
    server: FakeApiServer,
    secrets: Api<Secret>,
    kubeconfig: std::path::PathBuf,
    /// Secret requests the test itself made: (get, create, update).
    own: std::sync::Mutex<(u64, u64, u64)>,
    _dir: tempfile::TempDir,
}

async fn cluster() -> Cluster {
    let server = FakeApiServer::start().await;
    server.register_prodgy_crds().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let secrets = Api::namespaced(server.client(), NS);
    Cluster {
        server,
        secrets,
        kubeconfig,
        own: std::sync::Mutex::new((0, 0, 0)),
        _dir: dir,
    }
}

impl Cluster {
    /// Creates or replaces the hashed Secret of a token, as the operator does.
    async fn apply(&self, t: &prodgy_crds::HashedRecord) {
        let mut s = t.to_secret(NS).unwrap();
        let name = s.metadata.name.clone().unwrap();
        self.own.lock().unwrap().0 += 1;
        match self.secrets.get_opt(&name).await.unwrap() {
            Some(old) => {
                self.own.lock().unwrap().2 += 1;
                s.metadata.resource_version = old.metadata.resource_version;
                self.secrets
                    .replace(&name, &PostParams::default(), &s)
                    .await
                    .unwrap();
            }
            None => {
                self.own.lock().unwrap().1 += 1;
                self.secrets
                    .create(&PostParams::default(), &s)
                    .await
                    .unwrap();
            }
        }
    }

    async fn proxy(&self, up: &Upstream, extra: &[&str], wait: bool) -> Proxy {
        let mut b = ProxyBuilder::kube(up.addr, &self.kubeconfig);
        for a in extra {
            b = b.arg(*a);
        }
        if !wait {
            b = b.no_wait();
        }
        tokio::task::spawn_blocking(move || b.start())
            .await
            .unwrap()
    }
}

/// Applies a change and measures until the proxy answers `want`.
async fn propagation(
    c: &Cluster,
    p: &Proxy,
    record: &prodgy_crds::HashedRecord,
    auth: &str,
    want: &str,
) -> Duration {
    propagation_counted(c, p, record, auth, want).await.0
}

/// [`propagation`], also returning how many of the polling requests the
/// proxy accepted before the change reached it: those are usage too.
async fn propagation_counted(
    c: &Cluster,
    p: &Proxy,
    record: &prodgy_crds::HashedRecord,
    auth: &str,
    want: &str,
) -> (Duration, i64) {
    c.apply(record).await;
    let accepted = std::sync::atomic::AtomicI64::new(0);
    let took = eventually(Duration::from_secs(5), || async {
        let got = code(p, auth).await;
        if got == "ok" {
            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        got == want
    })
    .await
    .unwrap_or_else(|| panic!("{want} never seen"));
    (took, accepted.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_deactivate_and_regenerate_reach_the_proxy() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("team-a", "ci", "acme");
    let b = issue("team-a", "deploy", "acme");
    let r = issue("team-a", "rotating", "acme");
    for t in [&a, &b, &r] {
        c.apply(&t.record).await;
    }
    let p = c.proxy(&up, &[], true).await;
    for t in [&a, &b, &r] {
        assert_eq!(code(&p, &t.bearer()).await, "ok");
    }
    assert_eq!(p.metric("prodgy_proxy_tokens_loaded"), Some(3.0));

    let mut revoked = a.record.clone();
    revoked.state = RecordState::Revoked;
    let t_revoke = propagation(&c, &p, &revoked, &a.bearer(), "revoked_token").await;

    let mut inactive = b.record.clone();
    inactive.state = RecordState::Inactive;
    let t_deactivate = propagation(&c, &p, &inactive, &b.bearer(), "inactive_token").await;
    let t_activate = propagation(&c, &p, &b.record, &b.bearer(), "ok").await;

    let fresh = Token::generate("prod").unwrap();
    let mut regenerated = r.record.clone();
    regenerated.hashes = vec![HashEntry::current(&fresh.hash(), 1)];
    let t_regen = propagation(&c, &p, &regenerated, &r.bearer(), "unknown_token").await;
    assert_eq!(code(&p, &format!("Bearer {}", fresh.expose())).await, "ok");

    // How fast is measured by bench/kube.sh (with 100,000 other tokens), not
    // here: a test asserts that each change arrives, within the deadline of
    // `propagation`.
    eprintln!(
        "propagation: revoke {t_revoke:?}, deactivate {t_deactivate:?}, activate {t_activate:?}, regenerate {t_regen:?}"
    );
    // Least privilege in practice: the proxy only lists and watches Secrets.
    let (get, create, update) = *c.own.lock().unwrap();
    assert_eq!(c.server.request_count("get", "secrets"), get);
    assert_eq!(c.server.request_count("create", "secrets"), create);
    assert_eq!(c.server.request_count("update", "secrets"), update);
    for verb in ["patch", "delete"] {
        assert_eq!(
            c.server.request_count(verb, "secrets"),
            0,
            "proxy used {verb} on secrets"
        );
    }
    assert!(c.server.request_count("watch", "secrets") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_keeps_the_last_state_and_staleness_grows() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("ns", "a", "acme");
    c.apply(&a.record).await;
    let p = c.proxy(&up, &[], true).await;
    assert_eq!(code(&p, &a.bearer()).await, "ok");
    assert!(p.metric("prodgy_proxy_index_staleness_seconds").unwrap() < 1.0);

    c.server.set_available(false);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stale1 = p.metric("prodgy_proxy_index_staleness_seconds").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stale2 = p.metric("prodgy_proxy_index_staleness_seconds").unwrap();
    assert!(
        stale1 >= 1.0 && stale2 > stale1,
        "staleness {stale1} then {stale2}"
    );
    assert!(p.metric("prodgy_proxy_index_source_errors_total").unwrap() >= 1.0);
    assert_eq!(
        code(&p, &a.bearer()).await,
        "ok",
        "last known state not enforced"
    );
    let unknown = format!("Bearer {}", Token::generate("prod").unwrap().expose());
    assert_eq!(code(&p, &unknown).await, "unknown_token", "failed open");
    assert_eq!(p.readyz(), 200);

    c.server.set_available(true);
    eventually(Duration::from_secs(10), || async {
        p.metric("prodgy_proxy_index_staleness_seconds").unwrap() < 1.0
    })
    .await
    .expect("staleness never recovered");
    let mut revoked = a.record.clone();
    revoked.state = RecordState::Revoked;
    propagation(&c, &p, &revoked, &a.bearer(), "revoked_token").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_without_the_api_is_never_ready_and_never_200() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("ns", "a", "acme");
    c.apply(&a.record).await;
    c.server.set_available(false);
    let p = c.proxy(&up, &[], false).await;
    for _ in 0..10 {
        assert_eq!(p.readyz(), 503);
        assert_eq!(code(&p, &a.bearer()).await, "unknown_token");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(up.count(), 0);
    assert_eq!(p.metric("prodgy_proxy_index_ready"), Some(0.0));

    // A kubeconfig pointing nowhere behaves the same.
    let dead = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = c
        .server
        .kubeconfig_yaml()
        .replace(&c.server.url(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(dead.path().join("kc"), yaml).unwrap();
    let (u, kc) = (up.addr, dead.path().join("kc"));
    let p2 = tokio::task::spawn_blocking(move || ProxyBuilder::kube(u, &kc).no_wait().start())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(p2.readyz(), 503);
    assert_eq!(code(&p2, &a.bearer()).await, "unknown_token");

    c.server.set_available(true);
    p.wait_ready(Duration::from_secs(15));
    assert_eq!(code(&p, &a.bearer()).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_drops_tokens_deleted_while_the_watch_was_down() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("ns", "a", "acme");
    let b = issue("ns", "b", "acme");
    c.apply(&a.record).await;
    c.apply(&b.record).await;
    let p = c.proxy(&up, &[], true).await;
    assert_eq!(code(&p, &b.bearer()).await, "ok");
    let syncs = p.metric("prodgy_proxy_index_full_syncs_total").unwrap();

    // The watch misses the deletion and the history is gone: only a relist
    // can tell the proxy.
    c.server.set_available(false);
    let name = prodgy_crds::HashedRecord::secret_name(&b.record.uid);
    c.server.delete_object("secrets", Some(NS), &name).unwrap();
    c.server.compact_history();
    assert_eq!(
        code(&p, &b.bearer()).await,
        "ok",
        "state kept while the API is down"
    );
    c.server.set_available(true);
    eventually(Duration::from_secs(10), || async {
        code(&p, &b.bearer()).await == "unknown_token"
    })
    .await
    .expect("deleted token survived the relist");
    assert_eq!(code(&p, &a.bearer()).await, "ok");
    assert!(p.metric("prodgy_proxy_index_full_syncs_total").unwrap() > syncs);
    assert_eq!(p.metric("prodgy_proxy_tokens_loaded"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_hashed_secrets_are_skipped_and_counted() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("ns", "a", "acme");
    c.apply(&a.record).await;
    let mut broken = issue("ns", "broken", "acme").record;
    broken.version = 99;
    c.apply(&broken).await;
    let p = c.proxy(&up, &[], true).await;
    assert_eq!(code(&p, &a.bearer()).await, "ok");
    assert_eq!(p.metric("prodgy_proxy_index_invalid_records"), Some(1.0));
    assert!(p.logs().contains("skipping invalid hashed Secret"));
    // An update that breaks a working token removes it (fail closed).
    let mut bad_a = a.record.clone();
    bad_a.hashes[0].sha256 = "zz".into();
    c.apply(&bad_a).await;
    eventually(Duration::from_secs(3), || async {
        code(&p, &a.bearer()).await == "unknown_token"
    })
    .await
    .expect("broken update kept the token");
    assert_eq!(p.metric("prodgy_proxy_index_invalid_records"), Some(2.0));
}

fn reports(c: &Cluster) -> Vec<UsageReport> {
    c.server
        .list_objects("usagereports.prodgy.io", Some(NS))
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

/// The reports as a failure message shows them: name, epoch, shard, update
/// time and counts.
fn describe(reports: &[UsageReport]) -> String {
    reports
        .iter()
        .map(|r| {
            let counts: Vec<String> = r
                .spec
                .tokens
                .iter()
                .map(|(uid, t)| format!("{uid}={}", t.count))
                .collect();
            format!(
                "{} (epoch {}, shard {}, updated {}, created {:?}): {}",
                r.metadata.name.as_deref().unwrap_or_default(),
                r.spec.epoch,
                r.spec.shard,
                r.spec.updated_at,
                r.metadata.creation_timestamp,
                counts.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn count_in(reports: &[UsageReport], uid: &str) -> i64 {
    reports
        .iter()
        .filter_map(|r| r.spec.tokens.get(uid))
        .map(|t| t.count)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_are_written_periodically_and_flushed_on_sigterm() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("team-a", "ci", "acme");
    let b = issue("team-b", "bot", "acme");
    c.apply(&a.record).await;
    c.apply(&b.record).await;
    let mut p = c
        .proxy(
            &up,
            &[
                "--usage-reports",
                "--usage-flush-interval=1s",
                "--replica=Pod_A",
            ],
            true,
        )
        .await;
    for _ in 0..3 {
        assert_eq!(code(&p, &a.bearer()).await, "ok");
    }
    assert_eq!(code(&p, &b.bearer()).await, "ok");
    // Refused requests are not usage; the polls the proxy accepted before
    // the revocation reached it are.
    let mut rev = b.record.clone();
    rev.state = RecordState::Revoked;
    let (_, b_polls) = propagation_counted(&c, &p, &rev, &b.bearer(), "revoked_token").await;
    eprintln!("token b: {b_polls} polls accepted before the revocation arrived");

    eventually(Duration::from_secs(5), || async {
        let rs = reports(&c);
        count_in(&rs, &a.record.uid) == 3 && count_in(&rs, &b.record.uid) == 1 + b_polls
    })
    .await
    .unwrap_or_else(|| panic!("periodic report never written: {}", describe(&reports(&c))));
    let rs = reports(&c);
    assert_eq!(rs.len(), 1, "{}", describe(&rs));
    let r = &rs[0];
    let name = r.metadata.name.clone().unwrap();
    assert!(name.starts_with("pod-a-") && name.ends_with("-0"), "{name}");
    assert_eq!((r.spec.replica.as_str(), r.spec.shard), ("Pod_A", 0));
    assert_eq!(
        r.metadata.labels.as_ref().unwrap()[prodgy_crds::usage::REPORT_LABEL],
        "true"
    );
    let ta = &r.spec.tokens[&a.record.uid];
    assert_eq!((ta.namespace.as_str(), ta.name.as_str()), ("team-a", "ci"));
    assert_eq!(
        r.spec.tokens[&b.record.uid].count,
        1 + b_polls,
        "{}",
        describe(&rs)
    );
    let first_update = r.spec.updated_at;

    // Idle reports keep their heartbeat.
    eventually(Duration::from_secs(5), || async {
        reports(&c)[0].spec.updated_at > first_update
    })
    .await
    .expect("no heartbeat");

    // Two more calls, then SIGTERM before the next interval could fire.
    for _ in 0..2 {
        assert_eq!(code(&p, &a.bearer()).await, "ok");
    }
    let st = tokio::task::spawn_blocking(move || p.terminate(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(st.expect("did not exit").success());
    let rs = reports(&c);
    assert_eq!(count_in(&rs, &a.record.uid), 5, "final flush missing");
    assert_eq!(rs.len(), 1, "the epoch kept one report name");
    // The proxy never wrote ApiTokens.
    for verb in ["create", "update", "patch", "delete"] {
        assert_eq!(
            c.server.request_count(verb, "apitokens"),
            0,
            "{verb} on apitokens"
        );
    }
}

/// A proxy writing reports every 500 ms, for an operator retiring them
/// after 6 s (so a new epoch after 3 s without confirmed writes).
async fn fast_reporting(c: &Cluster, up: &Upstream) -> Proxy {
    c.proxy(
        up,
        &[
            "--usage-reports",
            "--usage-flush-interval=500ms",
            "--usage-report-retention=6s",
            "--replica=pod-a",
        ],
        true,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_report_or_a_long_outage_starts_a_new_epoch_without_double_counting() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("team-a", "ci", "acme");
    c.apply(&a.record).await;
    let p = fast_reporting(&c, &up).await;
    let epoch_of = |r: &UsageReport| r.spec.epoch.clone();
    for _ in 0..3 {
        assert_eq!(code(&p, &a.bearer()).await, "ok");
    }
    eventually(Duration::from_secs(5), || async {
        count_in(&reports(&c), &a.record.uid) == 3
    })
    .await
    .expect("first report never written");
    let first = epoch_of(&reports(&c)[0]);

    // The operator folds the report (3 now in the token's ledger) and deletes it.
    let name = reports(&c)[0].metadata.name.clone().unwrap();
    c.server
        .delete_object("usagereports.prodgy.io", Some(NS), &name)
        .unwrap();
    for _ in 0..2 {
        assert_eq!(code(&p, &a.bearer()).await, "ok");
    }
    eventually(Duration::from_secs(5), || async {
        count_in(&reports(&c), &a.record.uid) == 2
    })
    .await
    .expect("the uses after the retirement were never reported");
    let rs = reports(&c);
    assert_eq!(rs.len(), 1);
    let second = epoch_of(&rs[0]);
    assert_ne!(first, second, "a retired report name was reused");

    // An outage longer than half the retention: the operator may be folding
    // the report, so the proxy moves on to a new epoch afterwards.
    assert_eq!(code(&p, &a.bearer()).await, "ok");
    eventually(Duration::from_secs(5), || async {
        count_in(&reports(&c), &a.record.uid) == 3
    })
    .await
    .expect("third use never reported");
    // Half the retention is 3 s; the last write was at most 0.5 s ago.
    c.server.set_available(false);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(code(&p, &a.bearer()).await, "ok", "enforcement continues");
    c.server.set_available(true);
    eventually(Duration::from_secs(5), || async { reports(&c).len() == 2 })
        .await
        .expect("no new epoch after the outage");
    let rs = reports(&c);
    let by_epoch = |e: &str| {
        rs.iter()
            .filter(|r| r.spec.epoch == e)
            .map(|r| r.spec.tokens[&a.record.uid].count)
            .sum::<i64>()
    };
    assert_eq!(
        by_epoch(&second),
        3,
        "the old epoch's report was left as written"
    );
    let third = rs.iter().map(epoch_of).find(|e| *e != second).unwrap();
    assert_eq!(by_epoch(&third), 1, "only the use during the outage");
    assert!(p.logs().contains("starting a new epoch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_timed_out_writes_keep_one_report_and_count_every_use_once() {
    let c = cluster().await;
    let up = Upstream::start().await;
    let a = issue("team-a", "ci", "acme");
    c.apply(&a.record).await;
    let p = fast_reporting(&c, &up).await;
    let uses = |n: usize| {
        let (p, auth) = (&p, a.bearer());
        async move {
            for _ in 0..n {
                assert_eq!(code(p, &auth).await, "ok");
            }
        }
    };
    let counted = |want: i64| {
        let c = &c;
        let uid = a.record.uid.clone();
        async move {
            eventually(Duration::from_secs(15), || async {
                count_in(&reports(c), &uid) == want
            })
            .await
            .unwrap_or_else(|| panic!("never {want}: {}", describe(&reports(c))));
        }
    };
    uses(3).await;
    counted(3).await;
    let resource = "usagereports.prodgy.io";

    // A slow API: each write lands at once and is answered a second later.
    c.server
        .set_write_fault(resource, Some(WriteFault::Delay(Duration::from_secs(1))));
    uses(2).await;
    counted(5).await;

    // Writes that land but are answered with a timeout, for longer than half
    // the retention (3 s): the proxy must not take them for lost.
    c.server.set_write_fault(
        resource,
        Some(WriteFault::TimeOut(Duration::from_millis(300))),
    );
    uses(2).await;
    counted(7).await;
    // Past the rotation window the proxy reads its report back instead.
    eventually(Duration::from_secs(20), || async {
        p.logs().contains("reading them back")
    })
    .await
    .expect("the proxy never looked for the reports it could not confirm");
    c.server.set_write_fault(resource, None);
    uses(2).await;
    counted(9).await;
    let rs = reports(&c);
    assert_eq!(rs.len(), 1, "one epoch, one report: {}", describe(&rs));
    assert!(!p.logs().contains("starting a new epoch"));
}
