//! Disaggregated serving with real processes: a frontend, prefill and decode workers on the
//! default model. Greedy output through the pair equals an aggregated worker's (reference
//! prompts and a two-turn chat whose second turn reuses the first's KV on the decode side);
//! concurrent load leaves no blocks held and the queue gauges at 0; transfer sizes match the
//! prompt's KV bytes; a prefill worker killed mid-transfer is retried on another, then fails
//! cleanly; a dead decode worker leaves no room behind; a cancelled client frees both sides.

use std::time::{Duration, Instant};

use dynamo_e2e::requests::{self, pinned};
use dynamo_e2e::{error_message, metric_value, metric_with, read_sse, Cluster};
use serde_json::{json, Value};

/// SmolLM2-135M's KV: 30 layers × (K, V) × 3 KV heads × 64 dims × 2 bytes (f16) per token,
/// 16-token blocks.
const BLOCK_BYTES: f64 = (30 * 2 * 3 * 64 * 2 * 16) as f64;

fn reference() -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2-greedy.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Poll until `f` holds (20 s at most).
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Both sides hold no blocks and every disaggregation queue is empty.
async fn drained(c: &Cluster, workers: &[usize]) {
    const GAUGES: [&str; 7] = [
        "sglang:kv_used_tokens",
        "sglang:num_prefill_prealloc_queue_reqs",
        "sglang:num_prefill_inflight_queue_reqs",
        "sglang:num_decode_prealloc_queue_reqs",
        "sglang:num_decode_transfer_queue_reqs",
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
    ];
    for &w in workers {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = c.worker_metrics(w).await;
            let busy: Vec<(&str, Option<f64>)> = GAUGES
                .iter()
                .map(|m| (*m, metric_value(&t, m)))
                .filter(|(_, v)| *v != Some(0.0))
                .collect();
            if busy.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker {w} not idle after 20 s: {busy:?}\n{}",
                c.workers[w].child.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disaggregated_pair_matches_aggregated_token_for_token() {
    let mut c = Cluster::start(&[]);
    let p = c.add_prefill(&[]);
    let d = c.add_decode(&[]);
    let a = c.add_worker(&["--threads", "1", "--enable-metrics"]);
    c.wait_instances(3, Duration::from_secs(30)).await.unwrap();
    let (dec, agg) = (c.instance_id(d), c.instance_id(a));
    for case in reference()["cases"].as_array().unwrap() {
        let body = requests::greedy_completion(case["prompt"].clone(), 14);
        let (s1, _, via_agg) = c.post("/v1/completions", &pinned(body.clone(), agg)).await;
        let (s2, _, via_pair) = c.post("/v1/completions", &pinned(body, dec)).await;
        assert_eq!((s1, s2), (200, 200), "{via_agg} {via_pair}");
        assert_eq!(
            via_pair["choices"][0]["text"],
            via_agg["choices"][0]["text"]
        );
        // (Cached tokens may differ: the aggregated worker reuses cached tokens one by one,
        // the pair moves whole blocks.)
        for k in ["prompt_tokens", "completion_tokens"] {
            assert_eq!(via_pair["usage"][k], via_agg["usage"][k], "{k}");
        }
    }
    // The pair served those: the prefill worker prefilled each of them.
    let n = reference()["cases"].as_array().unwrap().len() as f64;
    let pt = c.worker_metrics(p).await;
    assert_eq!(metric_value(&pt, "sglang:num_requests_total"), Some(n));
    assert!(pt.contains(r#"engine_type="prefill""#));
    assert!(c
        .worker_metrics(d)
        .await
        .contains(r#"engine_type="decode""#));

    // A two-turn chat: the second turn's prompt starts with the first's, which the decode
    // worker caches from the first turn, so it pulls only the rest.
    let q1 = "Name three rivers in Europe and say one thing about each.";
    let mut messages = vec![json!({"role": "user", "content": q1})];
    for turn in 0..2 {
        let body = json!({"model": dynamo_e2e::MODEL, "messages": messages, "max_tokens": 24,
                          "temperature": 0});
        let (_, _, x) = c
            .post("/v1/chat/completions", &pinned(body.clone(), agg))
            .await;
        let (st, _, y) = c.post("/v1/chat/completions", &pinned(body, dec)).await;
        assert_eq!(st, 200, "{y}");
        let answer = y["choices"][0]["message"]["content"].clone();
        assert_eq!(answer, x["choices"][0]["message"]["content"], "turn {turn}");
        let prompt = y["usage"]["prompt_tokens"].as_f64().unwrap();
        let cached = y["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_f64()
            .unwrap_or(0.0);
        let mb = metric_value(&c.worker_metrics(d).await, "sglang:kv_transfer_total_mb").unwrap();
        let pulled = (prompt / 16.0).ceil() - cached / 16.0;
        assert!(
            (mb - pulled * BLOCK_BYTES / 1e6).abs() < 1e-6,
            "turn {turn}: {mb} MB for {pulled} blocks"
        );
        if turn == 1 {
            assert!(
                cached >= 16.0,
                "the second turn reuses the first's blocks: {y}"
            );
        }
        messages.push(json!({"role": "assistant", "content": answer}));
        messages.push(json!({"role": "user", "content": "Which of them is the longest?"}));
    }
    drained(&c, &[p, d]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_drains_and_metrics_relate() {
    let mut c = Cluster::start(&[("DYN_ROUTER_MODE", "kv")]);
    let p = c.add_prefill(&["--chunked-prefill-size", "64"]);
    let d = c.add_decode(&[]);
    c.wait_instances(2, Duration::from_secs(30)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut body = requests::greedy_completion(
            format!("Request {i}: write a short note about the number {i} and its factors."),
            12,
        );
        body["ignore_eos"] = json!(true);
        let (url, http) = (c.url(), c.http.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (st, body) = t.await.unwrap();
        assert_eq!(st, 200, "{body}");
        assert!(body.contains(r#""completion_tokens":12"#), "{body}");
    }
    drained(&c, &[p, d]).await;
    let (pt, dt) = (c.worker_metrics(p).await, c.worker_metrics(d).await);
    let stage = |t: &str, s: &str| {
        metric_with(
            t,
            "sglang:per_stage_req_latency_seconds_count",
            &format!(r#"stage="{s}""#),
        )
    };
    for s in ["prefill_bootstrap", "prefill_transfer_kv_cache"] {
        assert_eq!(stage(&pt, s), Some(6.0), "{s}");
    }
    for s in [
        "decode_prepare",
        "decode_bootstrap",
        "decode_waiting",
        "decode_transferred",
    ] {
        assert_eq!(stage(&dt, s), Some(6.0), "{s}");
    }
    for t in [&pt, &dt] {
        assert_eq!(
            metric_value(t, "sglang:num_bootstrap_failed_reqs_total"),
            Some(0.0)
        );
        assert_eq!(
            metric_value(t, "sglang:num_transfer_failed_reqs_total"),
            Some(0.0)
        );
    }
    // One fresh prompt: both sides' transfer size is its blocks' KV bytes.
    let (st, _, v) = c
        .post(
            "/v1/completions",
            &requests::greedy_completion("Zebras and quasars: ".repeat(20), 3),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let prompt = v["usage"]["prompt_tokens"].as_f64().unwrap();
    let want = (prompt / 16.0).ceil() * BLOCK_BYTES / 1e6;
    for w in [p, d] {
        let mb = metric_value(&c.worker_metrics(w).await, "sglang:kv_transfer_total_mb").unwrap();
        assert!((mb - want).abs() < 1e-6, "worker {w}: {mb} MB, want {want}");
    }
    let dt = c.worker_metrics(d).await;
    assert!(metric_value(&dt, "sglang:kv_transfer_speed_gb_s").unwrap() > 0.0);
    assert!(metric_value(&dt, "sglang:kv_transfer_latency_ms").unwrap() > 0.0);
    // The frontend's per-worker gauges say which side each worker is.
    let f = c.frontend_metrics().await;
    assert!(f.contains(r#"worker_type="prefill""#), "{f}");
    assert!(f.contains(r#"worker_type="decode""#), "{f}");
}

/// A prompt long enough that its prefill (in 32-token chunks on one thread) takes a while.
fn long_prompt() -> Value {
    let ids: Vec<u32> = (0..2500u32).map(|i| 300 + (i * 7919) % 30_000).collect();
    requests::greedy_completion(json!(ids), 4)
}

/// Wait until one of `prefills` is sending a room; its index.
async fn sending(c: &Cluster, prefills: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for &p in prefills {
            let t = c.worker_metrics(p).await;
            if metric_value(&t, "sglang:num_prefill_inflight_queue_reqs") == Some(1.0) {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no prefill worker started a transfer"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of the decode worker's transfers reached `stage`.
fn stage_count(t: &str, stage: &str) -> f64 {
    metric_with(
        t,
        "sglang:per_stage_req_latency_seconds_count",
        &format!(r#"stage="{stage}""#),
    )
    .unwrap_or(0.0)
}

/// Wait until the decode worker `d` is receiving its `n`th room: connected and agreed with
/// the prefill side (`n` bootstraps done) while no more than `done` transfers completed.
async fn receiving(c: &Cluster, d: usize, n: f64, done: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = c.worker_metrics(d).await;
        let (boot, fin) = (
            stage_count(&t, "decode_bootstrap"),
            stage_count(&t, "decode_transferred"),
        );
        assert!(fin <= done, "the transfer completed before the kill: {t}");
        if boot >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the decode side never started receiving room {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefill_worker_killed_mid_transfer_is_retried_then_fails_cleanly() {
    let mut c = Cluster::start(&[]);
    let chunk = ["--chunked-prefill-size", "32"];
    let p1 = c.add_prefill(&chunk);
    let p2 = c.add_prefill(&chunk);
    let d = c.add_decode(&[]);
    let a = c.add_worker(&["--threads", "1"]);
    c.wait_instances(4, Duration::from_secs(30)).await.unwrap();
    let (dec, agg) = (c.instance_id(d), c.instance_id(a));
    let (url, http) = (c.url(), c.http.clone());
    let send_body = move |body: Value| {
        let (url, http) = (url.clone(), http.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{url}/v1/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let send = |instance: u64| send_body(pinned(long_prompt(), instance));
    let failures = async |c: &Cluster| {
        let t = c.worker_metrics(d).await;
        (
            metric_value(&t, "sglang:num_transfer_failed_reqs_total").unwrap(),
            metric_value(&t, "sglang:num_bootstrap_failed_reqs_total").unwrap(),
        )
    };
    // First: the prefill worker sending the room dies while the decode side is receiving it;
    // the request is retried on the other one, which serves it.
    let req = send(dec);
    let victim = sending(&c, &[p1, p2]).await;
    receiving(&c, d, 1.0, 0.0).await;
    c.workers[victim].child.kill();
    let (st, v) = req.await.unwrap();
    assert_eq!(st, 200, "retried on the other prefill worker: {v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(
        failures(&c).await,
        (1.0, 0.0),
        "the decode side counted one failed transfer and no failed bootstrap"
    );
    let other = if victim == p1 { p2 } else { p1 };
    let ot = c.worker_metrics(other).await;
    assert_eq!(
        metric_value(&ot, "sglang:num_requests_total"),
        Some(1.0),
        "the other prefill worker served the retry"
    );
    assert_eq!(stage_count(&ot, "prefill_transfer_kv_cache"), 1.0);
    // The retried answer is the undisturbed one: an aggregated worker's greedy text.
    let (st, reference) = send(agg).await.unwrap();
    assert_eq!(st, 200, "{reference}");
    assert_eq!(v["choices"][0]["text"], reference["choices"][0]["text"]);
    assert_eq!(v["usage"], reference["usage"]);

    // Second: the last prefill worker dies too; no other is left, the request fails cleanly.
    // (The decode side caches the prompt now, so a new prompt is needed for a transfer.)
    let mut ids = long_prompt()["prompt"].as_array().unwrap().clone();
    ids.reverse();
    let req = send_body(pinned(requests::greedy_completion(json!(ids), 4), dec));
    let victim = sending(&c, &[other]).await;
    receiving(&c, d, 3.0, 1.0).await;
    c.workers[victim].child.kill();
    let (st, v) = req.await.unwrap();
    assert_eq!(st, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("KV transfer from prefill worker"), "{msg}");
    assert_eq!(failures(&c).await, (2.0, 0.0));
    drained(&c, &[d]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_decode_worker_is_a_503_and_leaves_no_room_behind() {
    let mut c = Cluster::start(&[]);
    let p = c.add_prefill(&["--disaggregation-bootstrap-timeout", "1"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    let body = requests::greedy_completion("Hello there", 4);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 503, "{v}");
    assert!(error_message(&v).contains("no decode worker"), "{v}");
    // A decode worker that dies: the frontend cannot hand it the request; the room the
    // prefill worker opened expires and frees everything.
    let d = c.add_decode(&[]);
    c.wait_instances(2, Duration::from_secs(30)).await.unwrap();
    c.workers[d].child.kill();
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 503, "{v}");
    eventually("the room expired", async || {
        let t = c.worker_metrics(p).await;
        metric_value(&t, "sglang:num_bootstrap_failed_reqs_total") == Some(1.0)
    })
    .await;
    drained(&c, &[p]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_client_frees_blocks_on_both_sides() {
    let mut c = Cluster::start(&[]);
    let p = c.add_prefill(&["--chunked-prefill-size", "32"]);
    let d = c.add_decode(&[]);
    c.wait_instances(2, Duration::from_secs(30)).await.unwrap();
    let mut body = long_prompt();
    body["stream"] = json!(true);
    body["max_tokens"] = json!(200);
    let resp = tokio::spawn({
        let (url, http) = (c.url(), c.http.clone());
        async move {
            http.post(format!("{url}/v1/completions"))
                .json(&body)
                .send()
                .await
        }
    });
    // Both sides hold the request: the decode side is receiving the room's KV.
    sending(&c, &[p]).await;
    receiving(&c, d, 1.0, 0.0).await;
    resp.abort();
    let _ = resp.await;
    drained(&c, &[p, d]).await;
    for w in [p, d] {
        let t = c.worker_metrics(w).await;
        assert_eq!(
            metric_value(&t, "sglang:num_aborted_requests_total"),
            Some(1.0),
            "worker {w} aborted the request"
        );
    }
    // The pair still serves, in full and correctly: the streamed greedy text is the
    // reference's (its first five tokens, none of them a near tie), every token counted.
    let case = &reference()["cases"][0];
    assert_eq!(case["prompt"], "The capital of France is");
    let mut body = requests::greedy_completion(case["prompt"].clone(), 5);
    body["ignore_eos"] = json!(true);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = read_sse(c.send("/v1/completions", &body, &[]).await).await;
    assert!(done, "{chunks:?}");
    let text: String = chunks
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, " Paris.\n\nThe");
    assert!(case["text"].as_str().unwrap().starts_with(&text));
    let usage = chunks.iter().find(|e| e["usage"].is_object()).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 5, "{usage}");
}
