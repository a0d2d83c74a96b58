#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Watch semantics through a real `kube::Client` and kube-runtime.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use prodgy_kube_fake::FakeApiServer;

mod common;
use common::*;
use serde_json::json;

/// The next event, leaving out those about objects a real cluster makes
/// by itself in every namespace.
async fn next_ours<S>(stream: &mut S) -> Option<kube::Result<WatchEvent<ConfigMap>>>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    loop {
        let ev = stream.next().await;
        let system = match &ev {
            Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o))) => {
                made_by_cluster(o.metadata.name.as_deref())
            }
            _ => false,
        };
        if !system {
            return ev;
        }
    }
}

/// Next event within one second, or a failure naming what was expected.
async fn next_within<S>(stream: &mut S, what: &str) -> WatchEvent<ConfigMap>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(1), next_ours(stream))
        .await
        .unwrap_or_else(|_| panic!("no {what} event within 1 s"))
        .unwrap_or_else(|| panic!("watch ended before {what}"))
        .unwrap()
}

/// Asserts the next event (within one second) is `kind` for `name`.
async fn expect_event<S>(stream: &mut S, kind: &str, name: &str)
where
    S: futures::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin,
{
    let got = name_of(&next_within(stream, &format!("{kind} {name}")).await);
    assert_eq!(got, (kind.to_string(), name.to_string()));
}

fn name_of(ev: &WatchEvent<ConfigMap>) -> (String, String) {
    match ev {
        WatchEvent::Added(o) => ("ADDED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Modified(o) => ("MODIFIED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(o) => ("DELETED".into(), o.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(b) => ("BOOKMARK".into(), b.metadata.resource_version.clone()),
        WatchEvent::Error(e) => ("ERROR".into(), e.code.to_string()),
    }
}

#[tokio::test]
async fn watch_delivers_changes_in_order_and_fast() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("w").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();

    let started = Instant::now();
    cms.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    expect_event(&mut stream, "ADDED", "a").await;
    let latency = started.elapsed();
    assert!(
        latency < Duration::from_millis(500),
        "event took {latency:?}"
    );

    let p = Patch::Merge(json!({"data": {"k": "v"}}));
    cms.patch("a", &PatchParams::default(), &p).await.unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    expect_event(&mut stream, "MODIFIED", "a").await;
    match next_within(&mut stream, "DELETED").await {
        WatchEvent::Deleted(o) => assert_eq!(o.data.unwrap()["k"], "v"),
        other => panic!("expected DELETED, got {:?}", name_of(&other)),
    }
    // Events for another namespace are not ours.
    let elsewhere = cluster.namespace("elsewhere").await;
    let other: Api<ConfigMap> = Api::namespaced(cluster.client(), &elsewhere);
    other
        .create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), next_ours(&mut stream))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version_and_reports_410_when_too_old() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("w").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let a = cms
        .create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let rv_a = a.metadata.resource_version.unwrap();
    cms.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();

    let mut stream = cms
        .watch(&WatchParams::default(), &rv_a)
        .await
        .unwrap()
        .boxed();
    expect_event(&mut stream, "ADDED", "b").await;
    expect_event(&mut stream, "DELETED", "a").await;
    cms.create(&PostParams::default(), &cm("c", &[]))
        .await
        .unwrap();
    expect_event(&mut stream, "ADDED", "c").await;

    let Some(server) = cluster.fake("compacts its history on demand") else {
        return;
    };
    server.compact_history();
    let mut stream = cms
        .watch(&WatchParams::default(), &rv_a)
        .await
        .unwrap()
        .boxed();
    match next_within(&mut stream, "ERROR").await {
        WatchEvent::Error(e) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected 410, got {:?}", name_of(&other)),
    }
    assert!(
        next_ours(&mut stream).await.is_none(),
        "the stream ends after the ERROR"
    );
}

#[tokio::test]
async fn selector_watch_sees_objects_enter_and_leave() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("w").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let wp = WatchParams::default().labels("app=web");
    let mut stream = cms.watch(&wp, "0").await.unwrap().boxed();
    cms.create(&PostParams::default(), &cm("db", &[("app", "db")]))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("web", &[("app", "web")]))
        .await
        .unwrap();
    expect_event(&mut stream, "ADDED", "web").await;
    let leave = Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}}));
    cms.patch("web", &PatchParams::default(), &leave)
        .await
        .unwrap();
    expect_event(&mut stream, "DELETED", "web").await;
    let enter = Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}}));
    cms.patch("db", &PatchParams::default(), &enter)
        .await
        .unwrap();
    expect_event(&mut stream, "ADDED", "db").await;
}

#[tokio::test]
async fn bookmarks_timeouts_and_initial_events() {
    if skip_on_cluster("bookmarks every 50 ms, a builder option of the test server") {
        return;
    }
    let server = FakeApiServer::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "w");
    cms.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();

    let mut wp = WatchParams::default().initial_events();
    wp.bookmarks = true;
    let mut stream = cms.watch(&wp, "").await.unwrap().boxed();
    expect_event(&mut stream, "ADDED", "a").await;
    match next_within(&mut stream, "initial-events-end").await {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.annotations["k8s.io/initial-events-end"], "true");
            assert_eq!(
                b.metadata.resource_version,
                server.resource_version().to_string()
            );
        }
        other => panic!("expected bookmark, got {:?}", name_of(&other)),
    }
    // Periodic bookmarks follow.
    assert_eq!(
        name_of(&next_within(&mut stream, "periodic").await).0,
        "BOOKMARK"
    );

    let started = Instant::now();
    let mut short = cms
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(name_of(&next_within(&mut short, "a").await).1, "a");
    // Only bookmarks until the server ends the watch.
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(3), short.next())
        .await
        .unwrap()
    {
        assert_eq!(name_of(&ev.unwrap()).0, "BOOKMARK");
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn reflector_converges_and_survives_an_outage() {
    let cluster = Cluster::start_bare().await;
    let Some(server) = cluster.fake("goes down and changes objects behind the clients' back")
    else {
        return;
    };
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "r");
    cms.create(&PostParams::default(), &cm("before", &[]))
        .await
        .unwrap();

    let (reader, writer) = reflector::store::<ConfigMap>();
    let config = watcher::Config::default();
    let stream = reflector(writer, watcher(cms.clone(), config))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    let wait_for = |n: usize| {
        let reader = reader.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            while reader.state().len() != n {
                assert!(
                    Instant::now() < deadline,
                    "store has {} objects, want {n}",
                    reader.state().len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(1).await;
    cms.create(&PostParams::default(), &cm("live", &[]))
        .await
        .unwrap();
    wait_for(2).await;

    server.set_available(false);
    let started = Instant::now();
    cms.get("before").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a call to a down server fails fast"
    );
    // Changes made behind the clients' back while they cannot reach us.
    server
        .put_object(
            "configmaps",
            json!({"metadata": {"name": "during", "namespace": "r"}}),
        )
        .unwrap();
    server
        .delete_object("configmaps", Some("r"), "before")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.set_available(true);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        if names == ["during", "live"] {
            break;
        }
        assert!(Instant::now() < deadline, "reflector stuck at {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cms.create(&PostParams::default(), &cm("after", &[]))
        .await
        .unwrap();
    wait_for(3).await;
    task.abort();
}

#[tokio::test]
async fn streaming_list_watcher_converges() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("s").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    for n in ["a", "b", "c"] {
        cms.create(&PostParams::default(), &cm(n, &[]))
            .await
            .unwrap();
    }
    // A real cluster's own ConfigMaps are left out.
    let mut events = watcher(cms.clone(), watcher::Config::default().streaming_lists())
        .try_filter(|e| {
            let system = matches!(e, watcher::Event::InitApply(o) | watcher::Event::Apply(o)
                if made_by_cluster(o.metadata.name.as_deref()));
            std::future::ready(!system)
        })
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(2), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitApply(o)) => seen.push(o.metadata.name.unwrap()),
            Some(watcher::Event::Init | watcher::Event::InitDone) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["a", "b", "c"]);
    match tokio::time::timeout(Duration::from_secs(2), events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::InitDone) => {}
        other => panic!("expected InitDone, got {other:?}"),
    }
}

#[tokio::test]
async fn finalizer_flow_is_visible_to_watchers() {
    let cluster = Cluster::start_bare().await;
    let ns = cluster.namespace("f").await;
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    let mut held = cm("held", &[]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    expect_event(&mut stream, "ADDED", "held").await;

    cms.delete("held", &DeleteParams::default()).await.unwrap();
    match next_within(&mut stream, "MODIFIED").await {
        WatchEvent::Modified(o) => assert!(o.metadata.deletion_timestamp.is_some()),
        other => panic!("expected MODIFIED, got {:?}", name_of(&other)),
    }
    // No new finalizers on an object being deleted.
    let add =
        Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}}));
    let err = cms
        .patch("held", &PatchParams::default(), &add)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 422),
        "{err:?}"
    );

    let clear = Patch::Merge(json!({"metadata": {"finalizers": []}}));
    cms.patch("held", &PatchParams::default(), &clear)
        .await
        .unwrap();
    expect_event(&mut stream, "DELETED", "held").await;
    if let Some(server) = cluster.as_fake() {
        assert!(server.get_object("configmaps", Some(&ns), "held").is_none());
    }
    gone(cms.get("held").await).unwrap();
}

#[tokio::test]
async fn service_unavailable_mode_and_shutdown_on_drop() {
    if skip_on_cluster("answers 503 on demand and is shut down by the test") {
        return;
    }
    let server = FakeApiServer::start().await;
    let mut config = server.config().unwrap();
    config.default_retry = false; // see the 503 itself, not kube's retries
    let cms: Api<ConfigMap> = Api::namespaced(kube::Client::try_from(config).unwrap(), "u");
    cms.create(&PostParams::default(), &cm("a", &[]))
        .await
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    expect_event(&mut stream, "ADDED", "a").await;

    server.set_service_unavailable(true);
    let ended = tokio::time::timeout(Duration::from_secs(1), stream.next())
        .await
        .unwrap();
    assert!(!matches!(ended, Some(Ok(_))), "the watch is cut: {ended:?}");
    let err = cms.get("a").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 503),
        "{err:?}"
    );
    server.set_service_unavailable(false);
    cms.get("a").await.unwrap();

    let url = server.url();
    drop(server);
    // Shutdown completes on the runtime's next turns.
    let deadline = Instant::now() + Duration::from_secs(1);
    while tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the port is closed once the server is dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cms.get("a").await.is_err());
}

/// The wire format seen by a plain blocking HTTP client, from a test with
/// no async runtime at all (the server has its own thread).
#[test]
fn blocking_tests_see_chunked_newline_delimited_watch_events() {
    use std::io::{BufRead, BufReader, Write};
    if skip_on_cluster("is read over plain HTTP without credentials") {
        return;
    }

    let server = FakeApiServer::start_blocking();
    server
        .put_object(
            "configmaps",
            json!({"metadata": {"name": "raw", "namespace": "b"}}),
        )
        .unwrap();
    let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        conn,
        "GET /api/v1/namespaces/b/configmaps?watch=1&timeoutSeconds=1 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(conn);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        head.push(line.to_ascii_lowercase());
    }
    assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
    assert!(
        head.iter()
            .any(|h| h.starts_with("transfer-encoding: chunked")),
        "{head:?}"
    );
    assert!(
        head.iter()
            .any(|h| h.starts_with("content-type: application/json")),
        "{head:?}"
    );
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    let mut chunk = String::new();
    reader.read_line(&mut chunk).unwrap();
    let event: serde_json::Value = serde_json::from_str(chunk.trim_end()).unwrap();
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "raw");
    assert_eq!(event["object"]["kind"], "ConfigMap");
    assert_eq!(
        chunk.len(),
        usize::from_str_radix(size.trim(), 16).unwrap(),
        "one event per chunk"
    );
}
