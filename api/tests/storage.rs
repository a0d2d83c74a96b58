//! Storage through real sockets: streamed upload and download, ranges,
//! replacement, deletion, size limits, path traversal, indexing into the
//! knowledge base, multipart uploads of large files, and bounded memory for
//! a large file; each on local disk and on a real S3 server (`moto_server`,
//! see support/s3.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Backend, Env, Store, error_code};

on_every_store!(
    files_round_trip_with_ranges_and_replacement,
    names_cannot_escape_the_store,
    uploads_over_the_limit_are_refused_and_leave_nothing,
    uploaded_text_is_searchable,
    large_files_go_in_parts,
);

async fn files_round_trip_with_ranges_and_replacement(b: Backend, store: Store) {
    let env = Env::on(&b, store).await;
    let app = env.start().await;
    let api = app.client("acme");
    let text = "hello, stored world\n";
    let r = api
        .req(
            Method::POST,
            "/api/knowledge-base/storage?name=greeting.txt",
        )
        .header("content-type", "text/plain; charset=utf-8")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["name"], "greeting.txt");
    assert_eq!(file["size"], text.len());
    assert_eq!(file["content_type"], "text/plain; charset=utf-8");
    assert_eq!(file["sha256"].as_str().unwrap().len(), 64);
    let id = file["id"].as_str().unwrap().to_owned();

    let r = api.file(Method::GET, "greeting.txt", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(h["content-length"], text.len().to_string().as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(
        h["etag"],
        format!("\"{}\"", file["sha256"].as_str().unwrap()).as_str()
    );
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .contains("greeting.txt")
    );
    assert_eq!(r.text().await.unwrap(), text);

    let r = api
        .file(Method::GET, "greeting.txt", &[("range", "bytes=7-12")])
        .await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 7-12/{}", text.len()).as_str()
    );
    assert_eq!(r.text().await.unwrap(), "stored");
    let r = api
        .file(Method::GET, "greeting.txt", &[("range", "bytes=-6")])
        .await;
    assert_eq!(r.text().await.unwrap(), "world\n");
    let r = api
        .file(Method::GET, "greeting.txt", &[("range", "bytes=999-")])
        .await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", text.len()).as_str()
    );
    let r = api.file(Method::HEAD, "greeting.txt", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        text.len().to_string().as_str()
    );
    assert!(r.bytes().await.unwrap().is_empty());

    // Same name again: replaced in place, same id, old blob gone.
    let before = env.blobs().await;
    assert_eq!(before.len(), 1, "{before:?}");
    let r = api
        .req(Method::PUT, "/api/knowledge-base/storage/greeting.txt")
        .body("v2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v2: Value = r.json().await.unwrap();
    assert_eq!(v2["id"], id.as_str());
    assert_eq!(v2["size"], 2);
    assert_eq!(v2["content_type"], "text/plain", "guessed from the name");
    let after = env.blobs().await;
    assert_eq!(after.len(), 1);
    assert_ne!(before, after);
    let body = api
        .file(Method::GET, "greeting.txt", &[])
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(body, "v2");

    // Multipart, the name coming from the file part.
    let form = reqwest::multipart::Form::new()
        .text("note", "ignored field")
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![0u8, 159, 146, 150])
                .file_name("blob.bin")
                .mime_str("application/octet-stream")
                .unwrap(),
        );
    let r = api
        .req(Method::POST, "/api/knowledge-base/storage")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let bin: Value = r.json().await.unwrap();
    assert_eq!(bin["name"], "blob.bin");
    assert_eq!(bin["size"], 4);
    assert!(bin["document_id"].is_null(), "binary files are not indexed");
    let bytes = api
        .file(Method::GET, "blob.bin", &[])
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..], &[0u8, 159, 146, 150]);
    // An empty file is a file.
    let r = api
        .req(Method::PUT, "/api/knowledge-base/storage/empty.dat")
        .body(Vec::<u8>::new())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = api
        .req(Method::GET, "/api/knowledge-base/storage/empty.dat")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "0");

    let (_, list) = api.get("/api/knowledge-base/storage").await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.contains(&"greeting.txt") && names.contains(&"blob.bin"));

    let (s, _) = api.delete("/api/knowledge-base/storage/greeting.txt").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, body) = api.get("/api/knowledge-base/storage/greeting.txt").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (s, _) = api.delete("/api/knowledge-base/storage/greeting.txt").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(env.blobs().await.len(), 2);

    // A raw upload needs a name; a multipart body needs a file part.
    let (s, body) = api
        .send(
            api.req(Method::POST, "/api/knowledge-base/storage")
                .body("x"),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "name");
    let form = reqwest::multipart::Form::new().text("only", "text");
    let (s, _) = api
        .send(
            api.req(Method::POST, "/api/knowledge-base/storage")
                .multipart(form),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

/// The status of the answer to `request`.
async fn status(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.unwrap().status()
}

async fn names_cannot_escape_the_store(b: Backend, store: Store) {
    let env = Env::on(&b, store).await;
    let app = env.start().await;
    let api = app.client("acme");
    let raw_paths = [
        "/api/knowledge-base/storage/..",
        "/api/knowledge-base/storage/..%2F..%2Fetc%2Fpasswd",
        "/api/knowledge-base/storage/%2Fetc%2Fpasswd",
        "/api/knowledge-base/storage/a%5Cb",
        "/api/knowledge-base/storage/nul%00byte",
        "/api/knowledge-base/storage/bell%07",
        "/api/knowledge-base/storage/%20space",
    ];
    for path in raw_paths {
        let (s, body) = support::raw(&app.base, "acme", "PUT", path, b"pwned").await;
        assert_eq!(s, 400, "{path}: {body}");
        let (s, _) = support::raw(&app.base, "acme", "GET", path, b"").await;
        assert_eq!(s, 400, "GET {path}");
    }
    // Paths with more segments do not reach the file routes at all.
    let (s, _) = support::raw(
        &app.base,
        "acme",
        "PUT",
        "/api/knowledge-base/storage/../../x",
        b"x",
    )
    .await;
    assert!(s == 404 || s == 400, "{s}");
    for name in ["../up.txt", "/abs.txt", "a/b.txt", "..", "tab\there"] {
        let upload = api
            .req(Method::POST, "/api/knowledge-base/storage")
            .query(&[("name", name)])
            .body("pwned");
        assert_eq!(status(upload).await, StatusCode::BAD_REQUEST, "{name}");
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"pwned".to_vec()).file_name(name.to_owned()),
        );
        let upload = api
            .req(Method::POST, "/api/knowledge-base/storage")
            .multipart(form);
        let want = StatusCode::BAD_REQUEST;
        assert_eq!(status(upload).await, want, "multipart {name}");
    }
    // Odd but legal names are stored under generated keys, never as paths.
    for name in ["..hidden", "résumé 2024.txt", "a..b"] {
        let upload = api
            .req(Method::POST, "/api/knowledge-base/storage")
            .query(&[("name", name)])
            .body("fine");
        assert_eq!(status(upload).await, StatusCode::CREATED, "{name}");
    }
    let blobs = env.blobs().await;
    assert_eq!(blobs.len(), 3);
    for b in &blobs {
        assert!(b.starts_with("files/blb_"), "{b}");
    }
    assert!(!env.data_dir().parent().unwrap().join("up.txt").exists());
}

async fn uploads_over_the_limit_are_refused_and_leave_nothing(b: Backend, store: Store) {
    let env = Env::on(&b, store).await;
    let mut config = env.config();
    config.limits.max_upload_bytes = 64 * 1024;
    let app = env.start_with(config).await;
    let api = app.client("acme");
    // The server closes a connection whose body it refused to read, and
    // says so; these requests get their own clients all the same.
    let refused = || app.client("acme");
    let connection = |r: &reqwest::Response| r.headers().get("connection").cloned();
    // Declared too large: refused before a byte is read.
    let r = refused()
        .req(Method::PUT, "/api/knowledge-base/storage/big.bin")
        .body(vec![7u8; 64 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(connection(&r).unwrap(), "close");
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "payload_too_large");
    // Streamed without a length: cut off at the limit.
    let chunks = futures::stream::iter(
        (0..20).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 8192]))),
    );
    let result = refused()
        .req(Method::PUT, "/api/knowledge-base/storage/big.bin")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    if let Ok(r) = result {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Exactly at the limit is fine.
    let r = api
        .req(Method::PUT, "/api/knowledge-base/storage/max.bin")
        .body(vec![7u8; 64 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Its body read to the end, the connection goes on.
    assert_eq!(connection(&r), None);
    let (_, list) = api.get("/api/knowledge-base/storage").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let blobs = env.blobs().await;
    assert_eq!(blobs.len(), 1, "aborted uploads leave no blob: {blobs:?}");
}

async fn uploaded_text_is_searchable(b: Backend, store: Store) {
    let env = Env::on(&b, store).await;
    let mut config = env.config();
    config.limits.max_index_bytes = 2000;
    let app = env.start_with(config).await;
    let api = app.client("acme");
    let docs = [
        (
            "deploy-guide.md",
            "text/markdown",
            "# Deploying\nBlue-green deployments switch traffic after health checks pass. Rollback is instant.",
        ),
        (
            "incident-42.txt",
            "text/plain",
            "The incident was caused by a bad deployment of the billing service.",
        ),
        (
            "config.json",
            "application/json",
            "{\"feature\": \"dark-mode\", \"owner\": \"design team\"}",
        ),
        ("photo.png", "image/png", "deployment deployment deployment"),
    ];
    for (name, ct, text) in docs {
        assert_eq!(
            api.put_file(name, Some(ct), text).await.0,
            StatusCode::CREATED
        );
    }
    let long = format!("{} needle-at-the-end", "filler words here. ".repeat(200));
    let r = api
        .req(Method::PUT, "/api/knowledge-base/storage/long.txt")
        .body(long)
        .send()
        .await
        .unwrap();
    let long_file: Value = r.json().await.unwrap();

    let (s, list) = api.get("/api/knowledge-base").await;
    assert_eq!(s, StatusCode::OK);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "the png is not a document: {list}");
    let long_doc = items.iter().find(|d| d["name"] == "long.txt").unwrap();
    assert_eq!(long_doc["truncated"], true);
    assert!(long_doc["indexed_bytes"].as_i64().unwrap() <= 2000);
    assert_eq!(long_doc["file_id"], long_file["id"]);

    let (s, res) = api.get("/api/knowledge-base/search?q=deployment").await;
    assert_eq!(s, StatusCode::OK, "{res}");
    let results = res["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"deploy-guide.md") && names.contains(&"incident-42.txt"),
        "{names:?}"
    );
    assert!(!names.contains(&"photo.png"));
    let first = &results[0];
    assert!(
        first["snippet"].as_str().unwrap().contains("<mark>"),
        "{first}"
    );
    assert!(first["score"].as_f64().unwrap() >= results.last().unwrap()["score"].as_f64().unwrap());

    // Every word must match by default; mode=any widens.
    let (_, both) = api
        .get("/api/knowledge-base/search?q=billing+deployment")
        .await;
    assert_eq!(both["results"].as_array().unwrap().len(), 1);
    assert_eq!(both["results"][0]["name"], "incident-42.txt");
    let (_, any) = api
        .get("/api/knowledge-base/search?q=billing+traffic&mode=any")
        .await;
    assert_eq!(any["results"].as_array().unwrap().len(), 2);
    let (s, post) = api
        .post(
            "/api/knowledge-base/search",
            &json!({"q": "dark mode", "limit": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(post["results"][0]["name"], "config.json");
    // Query syntax is not interpreted.
    let (s, odd) = api
        .get("/api/knowledge-base/search?q=%22unbalanced+NEAR(+OR+*+-")
        .await;
    assert_eq!(s, StatusCode::OK, "{odd}");
    // The text beyond the indexed prefix is not searchable.
    let (_, none) = api.get("/api/knowledge-base/search?q=needle").await;
    assert!(none["results"].as_array().unwrap().is_empty());

    for bad in ["", "?q=", "?q=%20%20", "?q=x&limit=0", "?q=x&mode=some"] {
        let (s, body) = api.get(&format!("/api/knowledge-base/search{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    let doc_id = items
        .iter()
        .find(|d| d["name"] == "incident-42.txt")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, doc) = api.get(&format!("/api/knowledge-base/{doc_id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["content"].as_str().unwrap().contains("billing service"));

    // Replacing the file re-indexes it; deleting it removes it from search.
    let r = api
        .req(Method::PUT, "/api/knowledge-base/storage/incident-42.txt")
        .body("Postmortem: the payroll job overran.")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, res) = api.get("/api/knowledge-base/search?q=billing").await;
    assert!(res["results"].as_array().unwrap().is_empty());
    let (_, res) = api.get("/api/knowledge-base/search?q=payroll").await;
    assert_eq!(res["results"].as_array().unwrap().len(), 1);
    api.delete("/api/knowledge-base/storage/incident-42.txt")
        .await;
    let (_, res) = api.get("/api/knowledge-base/search?q=payroll").await;
    assert!(res["results"].as_array().unwrap().is_empty());
    let (s, _) = api.get(&format!("/api/knowledge-base/{doc_id}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A file larger than one 5 MiB part goes up as a multipart upload and comes
/// back whole and by ranges, including one across a part boundary.
async fn large_files_go_in_parts(b: Backend, store: Store) {
    const MIB: usize = 1024 * 1024;
    let env = Env::on(&b, store).await;
    let app = env.start().await;
    assert_eq!(
        reqwest::get(format!("{}/readyz", app.ops))
            .await
            .unwrap()
            .status(),
        200,
        "the store answers"
    );
    let api = app.client("acme");
    // 12 MiB: parts of 5, 5 and 2 MiB.
    let big: Vec<u8> = (0..12 * MIB as u32).map(|i| (i % 251) as u8).collect();
    let r = api
        .req(Method::PUT, "/api/knowledge-base/storage/big.bin")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let (s, _) = api.put_file("note.txt", None, "kept in a bucket").await;
    assert_eq!(s, StatusCode::CREATED);
    let blobs = env.blobs().await;
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    if let Some(moto) = &env.s3 {
        let mut etags = Vec::new();
        for key in &blobs {
            etags.push(moto.etag(&format!("{}/{key}", support::S3_PREFIX)).await);
        }
        assert!(
            etags.iter().any(|e| e.ends_with("-3")),
            "the 12 MiB file is a three-part upload: {etags:?}"
        );
    }
    let body = api
        .file(Method::GET, "big.bin", &[])
        .await
        .bytes()
        .await
        .unwrap();
    assert!(body[..] == big[..], "the whole file comes back");
    let boundary = 5 * MIB;
    let range = format!("bytes={}-{}", boundary - 10, boundary + 9);
    let r = api.file(Method::GET, "big.bin", &[("range", &range)]).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &big[boundary - 10..boundary + 10]
    );
    let r = api
        .file(Method::GET, "big.bin", &[("range", "bytes=-5")])
        .await;
    assert_eq!(&r.bytes().await.unwrap()[..], &big[big.len() - 5..]);
    let (_, hits) = api.get("/api/knowledge-base/search?q=bucket").await;
    assert_eq!(hits["results"][0]["name"], "note.txt");
    for name in ["big.bin", "note.txt"] {
        let (s, _) = api
            .delete(&format!("/api/knowledge-base/storage/{name}"))
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    assert_eq!(env.blobs().await, Vec::<String>::new());
}

/// The content of the large file: 1 MiB of pseudo-random bytes, each MiB
/// stamped with its index so a misplaced chunk is caught.
fn large_chunk(base: &[u8], i: usize) -> bytes::Bytes {
    let mut v = base.to_vec();
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    bytes::Bytes::from(v)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_through_bounded_memory_on_disk() {
    a_large_file_streams_through_bounded_memory(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_streams_through_bounded_memory_on_s3() {
    let moto = support::s3::Moto::start().await;
    a_large_file_streams_through_bounded_memory(Some(&moto)).await;
    let keys = moto.keys("").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        moto.etag(&keys[0]).await.ends_with("-40"),
        "200 MiB go up in 40 parts of 5 MiB"
    );
}

/// A 200 MiB upload and download through the real binary, in its own
/// process so its peak resident memory (VmHWM) can be read.
#[allow(clippy::print_stderr)] // the figures go in docs/api.md
async fn a_large_file_streams_through_bounded_memory(s3: Option<&support::s3::Moto>) {
    const MIB: usize = 1024 * 1024;
    const SIZE_MIB: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let mut command = support::Binary::command();
    command
        .args(["--data-dir", dir.path().to_str().unwrap(), "--workers", "1"])
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null());
    if let Some(moto) = s3 {
        command
            .args(["--object-store", "s3", "--s3-bucket", &moto.bucket])
            .args(["--s3-endpoint", &moto.endpoint, "--s3-allow-http"])
            .args(["--s3-region", "us-east-1"])
            .env("AWS_ACCESS_KEY_ID", "test-key")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret");
    }
    let bin = support::Binary::start(command).await;
    let pid = bin.child.id();
    let http = reqwest::Client::new();
    let baseline = vm_hwm_kib(pid);

    let mut base = vec![0u8; MIB];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in base.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let base = std::sync::Arc::new(base);
    let upload_base = base.clone();
    let chunks = futures::stream::iter(0..SIZE_MIB)
        .map(move |i| Ok::<_, std::io::Error>(large_chunk(&upload_base, i)));
    let started = std::time::Instant::now();
    let r = support::as_acme(http.put(format!("{}/api/knowledge-base/storage/big.bin", bin.data)))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["size"].as_u64().unwrap(), (SIZE_MIB * MIB) as u64);
    let upload_secs = started.elapsed().as_secs_f64();
    let after_upload = vm_hwm_kib(pid);

    let started = std::time::Instant::now();
    let r = support::as_acme(http.get(format!("{}/api/knowledge-base/storage/big.bin", bin.data)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.content_length(), Some((SIZE_MIB * MIB) as u64));
    let mut stream = r.bytes_stream();
    let mut pending = Vec::with_capacity(MIB);
    let mut index = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = (MIB - pending.len()).min(rest.len());
            pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if pending.len() == MIB {
                assert!(
                    pending[..] == large_chunk(&base, index)[..],
                    "MiB {index} differs"
                );
                index += 1;
                pending.clear();
            }
        }
    }
    assert_eq!(index, SIZE_MIB);
    let download_secs = started.elapsed().as_secs_f64();
    let peak = vm_hwm_kib(pid);
    drop(bin);
    eprintln!(
        "200 MiB ({}): upload {upload_secs:.1}s, download {download_secs:.1}s; server VmHWM \
         baseline {} MiB, after upload {} MiB, after download {} MiB",
        if s3.is_some() { "S3" } else { "disk" },
        baseline / 1024,
        after_upload / 1024,
        peak / 1024
    );
    // Well below the file size: parts of 5 MiB, two in flight, plus the
    // process's own baseline.
    assert!(
        peak < baseline + 64 * 1024,
        "peak {peak} KiB vs baseline {baseline} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_orphan_blobs_are_swept_at_start() {
    let env = Env::new(&Backend::Sqlite).await;
    let app = env.start().await;
    let api = app.client("acme");
    let (s, _) = api.put_file("kept.txt", None, "still here").await;
    assert_eq!(s, StatusCode::CREATED);
    app.stop().await;

    let files = env.data_dir().join("blobs/files");
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let age = |path: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    };
    for entry in std::fs::read_dir(&files).unwrap() {
        age(&entry.unwrap().path());
    }
    std::fs::write(files.join("blb_old_orphan"), b"lost").unwrap();
    age(&files.join("blb_old_orphan"));
    std::fs::write(files.join("blb_young_orphan"), b"maybe committing").unwrap();

    let app = env.start().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while files.join("blb_old_orphan").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old orphan was not swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files.join("blb_young_orphan").exists());
    let r = app.client("acme").file(Method::GET, "kept.txt", &[]).await;
    assert_eq!(r.text().await.unwrap(), "still here");
    assert_eq!(env.blobs().await.len(), 2);
}
