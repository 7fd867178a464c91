//! The OpenAI surface end to end (nats-server + frontend + mocker on the real model card):
//! models list, chat and completions (unary and streaming) with correct usage, x-request-id
//! echo, and every bad input answered with the right status and an OpenAI-style body while an
//! unrelated stream keeps going.

use std::time::Duration;

use dynamo_e2e::{error_message, read_sse, requests, Cluster, MODEL};
use serde_json::json;

fn chat(stream: bool, max: u32) -> serde_json::Value {
    requests::chat("Say hello", max, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_and_usage() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    assert_eq!(c.models().await, vec![MODEL.to_string()]);

    // Unary chat: usage adds up; prompt tokens are the templated prompt's length (32 here).
    let (st, headers, v) = c.post("/v1/chat/completions", &chat(false, 7)).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["usage"]["prompt_tokens"], 32);
    assert_eq!(v["usage"]["total_tokens"], 39);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(
        headers.get("x-request-id").is_some(),
        "a request id is always returned"
    );
    // chat_template_kwargs reach the template (SmolLM2's ignores enable_thinking: the same
    // prompt); completions refuse them.
    let mut body = chat(false, 2);
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    let (st, _, k) = c.post("/v1/chat/completions", &body).await;
    assert_eq!(st, 200, "{k}");
    assert_eq!(k["usage"]["prompt_tokens"], 32);
    let mut body = requests::completion("Hi", 2);
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    let (st, _, k) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 400, "{k}");
    assert!(error_message(&k).contains("chat_template_kwargs"), "{k}");

    // x-request-id is honoured and echoed.
    let r = c
        .send(
            "/v1/chat/completions",
            &chat(false, 2),
            &[("x-request-id", "my-req-42")],
        )
        .await;
    assert_eq!(r.headers()["x-request-id"], "my-req-42");

    // max_completion_tokens wins over max_tokens.
    let mut body = chat(false, 9);
    body["max_completion_tokens"] = json!(3);
    let (_, _, v) = c.post("/v1/chat/completions", &body).await;
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // Streaming chat with include_usage: role first, content chunks, finish, usage, [DONE].
    let mut body = chat(true, 6);
    body["stream_options"] = json!({"include_usage": true});
    let r = c.send("/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (events, done) = read_sse(r).await;
    assert!(done);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    let finish: Vec<_> = events
        .iter()
        .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, vec!["length"]);
    let last = events.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(last["usage"]["prompt_tokens"], 32);

    // Unary and streamed text agree (the mocker is deterministic).
    let (_, _, u) = c.post("/v1/chat/completions", &chat(false, 6)).await;
    assert_eq!(u["choices"][0]["message"]["content"], text.as_str());

    // Completions: raw prompt, token-id prompt, and streaming without usage.
    let (st, _, v) = c
        .post("/v1/completions", &requests::completion("Hello world!", 5))
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens"], 3, "Hello world! is 3 tokens");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let (st, _, v) = c
        .post(
            "/v1/completions",
            &requests::completion(json!([19556, 905, 17]), 2),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let r = c
        .send(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 4, "stream": true}),
            &[],
        )
        .await;
    let (events, done) = read_sse(r).await;
    assert!(done);
    assert!(
        events.iter().all(|e| e.get("usage").is_none()),
        "no usage unless asked"
    );
    assert_eq!(
        events.last().unwrap()["choices"][0]["finish_reason"],
        "length"
    );

    // Stop strings end the text before the stop string and report "stop".
    let full = u["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let word = full.split_whitespace().nth(2).unwrap().to_string();
    let mut body = chat(false, 6);
    body["stop"] = json!([word.clone()]);
    let (_, _, v) = c.post("/v1/chat/completions", &body).await;
    let got = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(!got.contains(&word), "stop string leaked: {got:?}");
    assert!(full.starts_with(got));

    // Frontend metrics saw the traffic.
    let m = c.frontend_metrics().await;
    let chat_ok = dynamo_e2e::metric_with(
        &m,
        "dynamo_frontend_requests_total",
        "endpoint=\"chat_completions\"",
    )
    .unwrap_or(0.0);
    assert!(chat_ok >= 3.0, "{m}");
    let out = dynamo_e2e::metric_value(&m, "dynamo_frontend_output_tokens_total").unwrap();
    assert!(out >= 35.0, "output tokens counted: {out}");
    assert_eq!(
        dynamo_e2e::metric_value(&m, "dynamo_frontend_inflight_requests"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_without_hurting_others() {
    let mut c = Cluster::start(&[("DYN_HTTP_BODY_LIMIT_MB", "1")]);
    // Slow decode so one stream stays in flight while bad requests arrive.
    c.add_mocker(&["--speedup-ratio", "1", "--context-length", "256"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();

    let http = c.http.clone();
    let url = format!("{}/v1/completions", c.url());
    let long = tokio::spawn(async move {
        let r = http
            .post(url)
            .json(&json!({"model": MODEL, "prompt": "Count", "max_tokens": 150, "stream": true}))
            .send()
            .await
            .unwrap();
        read_sse(r).await
    });

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), 400),
        ("not an object", b"[1,2]".to_vec(), 400),
        ("missing messages", br#"{"model":"SmolLM2-135M-Instruct"}"#.to_vec(), 400),
        ("empty messages", br#"{"model":"SmolLM2-135M-Instruct","messages":[]}"#.to_vec(), 400),
        ("wrong type", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":"ten"}"#.to_vec(), 400),
        ("wrong message type", br#"{"model":"SmolLM2-135M-Instruct","messages":"hello"}"#.to_vec(), 400),
        ("unknown model", br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#.to_vec(), 404),
        ("n > 1", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"n":2}"#.to_vec(), 400),
        ("logprobs", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"logprobs":true}"#.to_vec(), 400),
        ("tools", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#.to_vec(), 400),
        ("temperature range", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"temperature":5}"#.to_vec(), 400),
        ("max_tokens past context", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"max_tokens":1000}"#.to_vec(), 400),
        ("template kwargs replacing messages", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"messages":[]}}"#.to_vec(), 400),
        ("template kwargs not an object", br#"{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":true}"#.to_vec(), 400),
    ];
    for (what, body, want) in cases {
        let (st, v) = c.post_raw("/v1/chat/completions", body).await;
        assert_eq!(st, want, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(v["error"]["code"], want, "{what}: {v}");
        assert!(v["error"]["type"].is_string(), "{what}: {v}");
    }
    // Prompt longer than the context (256 tokens here).
    let long_prompt = "word ".repeat(400);
    let (st, _, v) = c
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": long_prompt}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains("context length"), "{v}");
    // Body over the 1 MB limit.
    let big = format!(
        r#"{{"model":"{MODEL}","prompt":"{}"}}"#,
        "a".repeat(2 << 20)
    );
    let (st, v) = c.post_raw("/v1/completions", big.into_bytes()).await;
    assert_eq!(st, 413, "{v}");
    assert_eq!(v["error"]["code"], 413);
    // Unknown route: JSON 404.
    let r = c.get("/v1/nothing").await;
    assert_eq!(r.status(), 404);

    let (events, done) = long.await.unwrap();
    assert!(done, "the in-flight stream finished normally");
    let last = events
        .iter()
        .rev()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert_eq!(last, Some("length"));

    // Errors were counted by class.
    let m = c.frontend_metrics().await;
    assert!(m.contains("error_type=\"validation\""), "{m}");
    assert!(m.contains("error_type=\"not_found\""), "{m}");
}
