//! Process lifecycle: SIGTERM drains in-flight requests, then exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.json");
    let t = issue("ns", "slow", "acme");
    write_records(&path, &[&t.record]);
    let (u, p2) = (up.addr, path.clone());
    let mut proxy = tokio::task::spawn_blocking(move || ProxyBuilder::file(u, &p2).start())
        .await
        .unwrap();

    // A request that takes 1.5 s upstream is in flight when SIGTERM arrives.
    let url = proxy.url("/api/agent-base?delay_ms=1500");
    let sent_at = Instant::now();
    let auth = t.bearer();
    let in_flight = tokio::spawn(async move {
        let resp = client()
            .get(url)
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.text().await.unwrap(),
            Instant::now(),
        )
    });
    eventually(Duration::from_secs(3), || async { up.count() == 1 })
        .await
        .expect("request never reached upstream");
    let addr = proxy.addr;
    // An idle keep-alive connection: closed as soon as shutdown starts.
    let idle = {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = format!(
            "GET /api/agent-base HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
            t.bearer()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        assert!(
            String::from_utf8_lossy(&buf[..n]).ends_with(r#"{"ok":true}"#),
            "whole response in one read"
        );
        tokio::task::spawn_blocking(move || {
            let n = s.read(&mut buf).unwrap_or(0);
            (n, Instant::now())
        })
    };
    let (exit, exited_at) = tokio::task::spawn_blocking(move || {
        let st = proxy.terminate(Duration::from_secs(15));
        (st, Instant::now())
    })
    .await
    .unwrap();
    let (status, body, finished_at) = in_flight.await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"ok":true}"#),
        "in-flight request was cut"
    );
    assert!(exit.expect("did not exit").success());
    // The client may observe the end of its response after the exit, so
    // the order is checked against the upstream's delay instead.
    assert!(
        exited_at.duration_since(sent_at) >= Duration::from_millis(1500),
        "exited before the upstream could have answered"
    );
    assert!(finished_at.duration_since(sent_at) >= Duration::from_millis(1500));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
    let (n, closed_at) = idle.await.unwrap();
    assert_eq!(n, 0, "the idle connection got bytes instead of a close");
    assert!(
        closed_at.duration_since(sent_at) < Duration::from_millis(1500),
        "the idle connection stayed open through the drain"
    );
}
