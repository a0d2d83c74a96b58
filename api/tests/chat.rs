//! Assistant chat read as a stream of Server-Sent Events over a real socket:
//! the built-in answerer, an OpenAI-compatible backend (a local fake),
//! backend failures, client disconnects and history.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use futures::{Stream, StreamExt};
use prodgy_api::answer::{SseEvent, SseParser};
use prodgy_api::config::{LlmConfig, Secret};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Api, Backend, Env, error_code};

on_every_backend!(builtin_chat_streams_cited_answers_and_keeps_history);

/// Sends a chat message and reads events until the terminal one.
async fn chat(api: &Api, body: Value) -> Vec<SseEvent> {
    let r = api
        .req(Method::POST, "/api/assistant/chat")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        for ev in parser.feed(&chunk.unwrap()) {
            let last = ev.event == "done" || ev.event == "error";
            events.push(ev);
            if last {
                return events;
            }
        }
    }
    panic!("stream ended without done or error: {events:?}");
}

fn data(ev: &SseEvent) -> Value {
    serde_json::from_str(&ev.data).unwrap()
}

fn text_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "delta")
        .map(|e| data(e)["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn upload(api: &Api, name: &str, text: &str) {
    assert_eq!(
        api.put_file(name, None, text.to_owned()).await.0,
        StatusCode::CREATED
    );
}

async fn builtin_chat_streams_cited_answers_and_keeps_history(b: Backend) {
    let env = Env::new(&b).await;
    let app = env.start().await;
    let api = app.client("acme");
    upload(
        &api,
        "oncall.md",
        "The on-call rotation changes every Monday at 09:00 UTC.",
    )
    .await;
    upload(&api, "menu.txt", "Pizza on Thursdays.").await;

    let events = chat(
        &api,
        json!({"message": "When does the on-call rotation change?"}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[0], "meta");
    assert_eq!(names[1], "citation");
    assert_eq!(*names.last().unwrap(), "done");
    assert!(
        names.iter().filter(|n| **n == "delta").count() > 3,
        "{names:?}"
    );
    let meta = data(&events[0]);
    assert_eq!(meta["backend"], "builtin");
    let conversation = meta["conversation_id"].as_str().unwrap().to_owned();
    let citation = data(&events[1]);
    assert_eq!(citation["name"], "oncall.md");
    assert_eq!(citation["index"], 1);
    let answer = text_of(&events);
    assert!(
        answer.contains("[1] oncall.md") && answer.contains("every Monday"),
        "{answer}"
    );
    let done = data(events.last().unwrap());
    assert_eq!(done["status"], "complete");
    assert_eq!(done["message_id"], meta["message_id"]);

    let (s, history) = api
        .get(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], answer.as_str());
    assert_eq!(messages[1]["citations"][0]["name"], "oncall.md");
    assert_eq!(history["title"], "When does the on-call rotation change?");

    let events = chat(
        &api,
        json!({"message": "And what is for lunch on Thursdays?", "conversation_id": conversation}),
    )
    .await;
    assert_eq!(data(&events[0])["conversation_id"], conversation.as_str());
    assert!(text_of(&events).contains("menu.txt"));
    let (_, history) = api
        .get(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
    let (_, list) = api.get("/api/assistant/chat").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Errors before the stream starts are ordinary JSON errors.
    let (s, body) = api
        .post(
            "/api/assistant/chat",
            &json!({"message": "hi", "conversation_id": "cnv_nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    let (s, body) = api
        .post("/api/assistant/chat", &json!({"message": "  "}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "message");
    let (s, _) = api
        .post("/api/assistant/chat", &json!({"text": "hi"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // Another product can neither read nor continue the conversation.
    let other = app.client("globex");
    let (s, _) = other
        .get(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = other
        .post(
            "/api/assistant/chat",
            &json!({"message": "hi", "conversation_id": conversation}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = other
        .delete(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let events = chat(&other, json!({"message": "on-call rotation"})).await;
    assert!(
        events.iter().all(|e| e.event != "citation"),
        "globex sees no acme document"
    );

    let (s, _) = api
        .delete(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .get(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// A stream that records when it is dropped (the client hung up on it).
struct Watched<S> {
    inner: S,
    dropped: Arc<AtomicBool>,
}

impl<S: Stream + Unpin> Stream for Watched<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<S::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<S> Drop for Watched<S> {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// Requests the fake saw: Authorization header and JSON body.
type Seen = Arc<Mutex<Vec<(Option<String>, Value)>>>;

/// A local OpenAI-compatible endpoint. The first path segment picks its
/// behaviour: `ok` streams "Hello world", `fail` answers 500, `slow` streams
/// forever.
struct FakeLlm {
    addr: String,
    requests: Seen,
    dropped: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sse_line(v: &Value) -> String {
    format!("data: {v}\n\n")
}

impl FakeLlm {
    async fn start() -> FakeLlm {
        let requests: Seen = Arc::default();
        let dropped = Arc::new(AtomicBool::new(false));
        let (reqs, drop_flag) = (requests.clone(), dropped.clone());
        let app = axum::Router::new().route(
            "/{mode}/v1/chat/completions",
            axum::routing::post(move |Path(mode): Path<String>, req: Request| {
                let (reqs, drop_flag) = (reqs.clone(), drop_flag.clone());
                async move {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let bytes = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
                    let body: Value = serde_json::from_slice(&bytes).unwrap();
                    reqs.lock().unwrap().push((auth, body));
                    let sse = |s: Body| {
                        axum::response::Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(s)
                            .unwrap()
                    };
                    match mode.as_str() {
                        "fail" => axum::response::Response::builder()
                            .status(500)
                            .body(Body::from("{\"error\":\"boom\"}"))
                            .unwrap(),
                        "slow" => {
                            let ticks = futures::stream::unfold((), |()| async {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                let line = sse_line(&json!({"choices": [{"delta": {"content": "tick "}}]}));
                                Some((Ok::<_, std::io::Error>(line), ()))
                            })
                            .boxed();
                            sse(Body::from_stream(Watched {
                                inner: ticks,
                                dropped: drop_flag,
                            }))
                        }
                        _ => {
                            let whole = [
                                sse_line(&json!({"choices": [{"delta": {"role": "assistant"}}]})),
                                sse_line(&json!({"choices": [{"delta": {"content": "Hel"}}]})),
                                sse_line(&json!({"choices": [{"delta": {"content": "lo "}}]})),
                                sse_line(&json!({"choices": [{"delta": {"content": "world"}, "finish_reason": "stop"}]})),
                                "data: [DONE]\n\n".to_owned(),
                            ]
                            .concat();
                            // Cut at odd places: the parser must reassemble.
                            let bytes = whole.into_bytes();
                            let parts: Vec<Result<Vec<u8>, std::io::Error>> =
                                bytes.chunks(7).map(|c| Ok(c.to_vec())).collect();
                            sse(Body::from_stream(futures::stream::iter(parts)))
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm {
            addr,
            requests,
            dropped,
            task,
        }
    }

    fn config(&self, env: &Env, mode: &str) -> prodgy_api::Config {
        let mut c = env.config();
        c.llm = Some(LlmConfig {
            base_url: format!("{}/{mode}/v1", self.addr),
            api_key: Some(Secret("sk-test".into())),
            model: "test-model".into(),
        });
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_compatible_backend_is_streamed_with_context_and_history() {
    let env = Env::new(&Backend::Sqlite).await;
    let fake = FakeLlm::start().await;
    let app = env.start_with(fake.config(&env, "ok")).await;
    let api = app.client("acme");
    upload(
        &api,
        "pricing.md",
        "The enterprise plan costs 99 euros per seat.",
    )
    .await;

    let events = chat(&api, json!({"message": "How much is the enterprise plan?"})).await;
    let meta = data(&events[0]);
    assert_eq!(meta["backend"], "openai");
    assert_eq!(meta["model"], "test-model");
    assert_eq!(text_of(&events), "Hello world");
    assert!(
        events
            .iter()
            .any(|e| e.event == "citation" && data(e)["name"] == "pricing.md")
    );
    assert_eq!(data(events.last().unwrap())["finish_reason"], "stop");

    let seen = fake.requests.lock().unwrap().clone();
    let (auth, body) = &seen[0];
    assert_eq!(auth.as_deref(), Some("Bearer sk-test"));
    assert_eq!(body["stream"], true);
    assert_eq!(body["model"], "test-model");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("99 euros"),
        "context is sent"
    );
    assert_eq!(
        messages.last().unwrap()["content"],
        "How much is the enterprise plan?"
    );

    let conversation = meta["conversation_id"].as_str().unwrap();
    chat(
        &api,
        json!({"message": "And for two seats?", "conversation_id": conversation}),
    )
    .await;
    let seen = fake.requests.lock().unwrap().clone();
    let messages = seen[1].1["messages"].as_array().unwrap();
    let turns: Vec<(&str, &str)> = messages[1..]
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        turns,
        vec![
            ("user", "How much is the enterprise plan?"),
            ("assistant", "Hello world"),
            ("user", "And for two seats?"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_arrive_as_error_events() {
    let env = Env::new(&Backend::Sqlite).await;
    let fake = FakeLlm::start().await;
    let app = env.start_with(fake.config(&env, "fail")).await;
    let api = app.client("acme");
    let events = chat(&api, json!({"message": "hello?"})).await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "error");
    assert_eq!(data(last)["code"], "upstream_error");
    assert!(data(last)["message"].as_str().unwrap().contains("500"));
    let conversation = data(&events[0])["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, history) = api
        .get(&format!("/api/assistant/chat/{conversation}"))
        .await;
    assert_eq!(history["messages"][1]["status"], "failed");
    drop(app);

    let mut config = env.config();
    config.llm = Some(LlmConfig {
        base_url: "http://127.0.0.1:9/v1".into(),
        api_key: None,
        model: "m".into(),
    });
    let app = env.start_with(config).await;
    let events = chat(&app.client("acme"), json!({"message": "hello?"})).await;
    assert_eq!(events.last().unwrap().event, "error");
    assert_eq!(data(events.last().unwrap())["code"], "upstream_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_work() {
    let env = Env::new(&Backend::Sqlite).await;
    let fake = FakeLlm::start().await;
    let app = env.start_with(fake.config(&env, "slow")).await;
    let api = app.client("acme");
    let r = api
        .req(Method::POST, "/api/assistant/chat")
        .json(&json!({"message": "count forever"}))
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut parser = SseParser::default();
    let mut deltas = 0;
    let mut conversation = String::new();
    while deltas < 3 {
        for ev in parser.feed(&stream.next().await.unwrap().unwrap()) {
            if ev.event == "meta" {
                conversation = data(&ev)["conversation_id"].as_str().unwrap().to_owned();
            }
            if ev.event == "delta" {
                deltas += 1;
            }
        }
    }
    assert!(!fake.dropped.load(Ordering::SeqCst));
    drop(stream);
    // The API stops reading the model, which closes the model's stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !fake.dropped.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the model was still streaming"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What was produced is kept, marked cancelled.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, history) = api
            .get(&format!("/api/assistant/chat/{conversation}"))
            .await;
        let messages = history["messages"].as_array().unwrap().clone();
        if messages.len() == 2 {
            assert_eq!(messages[1]["status"], "cancelled");
            assert!(
                messages[1]["content"]
                    .as_str()
                    .unwrap()
                    .starts_with("tick tick tick")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial answer saved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains("prodgy_api_chat_streams 0"), "{metrics}");
}
