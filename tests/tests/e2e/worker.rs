//! The real worker behind the frontend: greedy completions equal llama.cpp's reference text,
//! chat and streaming work, a repeated prompt reports cached tokens, KV events reach NATS,
//! bad requests get clear errors, `--device cuda` without a driver and unknown disaggregation
//! settings are refused with a message; a worker on `--device reference` (the GPU path's host
//! side on plain-Rust kernels) serves the reference text through the whole stack.

use std::process::Command;
use std::time::Duration;

use dynamo_e2e::{bin, error_message, read_sse, requests, Cluster};
use dynamo_protocols::kv_events::kv_events_subject;
use serde_json::json;

async fn cluster() -> Cluster {
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--threads", "2"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_completion_matches_reference_and_streams() {
    let c = cluster().await;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2-greedy.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &reference["cases"][0];
    let body = requests::greedy_completion(case["prompt"].clone(), 14);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["choices"][0]["text"], case["text_before_first_near_tie"],
        "{v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 14);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // Streaming gives the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = c.send("/v1/completions", &sbody, &[]).await;
    let (chunks, done) = read_sse(r).await;
    assert!(done);
    let text: String = chunks
        .iter()
        .filter_map(|ch| ch["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, case["text_before_first_near_tie"].as_str().unwrap());

    // Chat through the template ends on the end-of-turn token.
    let chat = json!({"model": dynamo_e2e::MODEL, "max_tokens": 40, "temperature": 0,
        "messages": [{"role": "user", "content": "What is 2+2?"}]});
    let (st, _, v) = c.post("/v1/chat/completions", &chat).await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.contains('4'), "{content:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_prefix_is_cached_and_kv_events_are_published() {
    let c = cluster().await;
    let drt = c.runtime().await;
    let mut events = drt
        .events()
        .subscribe::<dynamo_protocols::RouterEvent>(&kv_events_subject("dynamo", "backend"))
        .await
        .unwrap();
    let long =
        "Tell me about the history of the printing press and its effects on Europe. ".repeat(6);
    let body = requests::greedy_completion(long.as_str(), 4);
    let (_, _, a) = c.post("/v1/completions", &body).await;
    let (_, _, b) = c.post("/v1/completions", &body).await;
    assert_eq!(
        a["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{a}"
    );
    let prompt = b["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached,
        prompt - 1,
        "every prompt token but the last (whose logits are needed): {b}"
    );
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);

    let msg = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    let ev = msg.body;
    assert_eq!(ev.event.event_id, 0);
    match ev.event.data {
        dynamo_protocols::KvCacheEventData::Stored(s) => {
            assert_eq!(s.parent_hash, None);
            assert!(!s.blocks.is_empty());
        }
        other => panic!("first event should store blocks: {other:?}"),
    }
    let health = c.get_json("/health").await.unwrap();
    let ids: Vec<u64> = health["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["instance_id"].as_u64())
        .collect();
    assert_eq!(
        ids,
        vec![ev.worker_id],
        "events carry the worker's instance id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_rejects_what_it_cannot_serve() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--threads", "2", "--context-length", "64"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    let body = requests::completion("word ".repeat(80), 4);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains("context length"), "{v}");
    let ok = requests::completion("Hi", 2);
    assert_eq!(c.post("/v1/completions", &ok).await.0, 200);

    // Past what the frontend can check: a worker whose KV pool (64 tokens) cannot hold
    // prompt + max_tokens although the context (8192) can. The engine's own validation
    // answers, in place of the ack, and the frontend turns it into a 400 naming the pool.
    drop(c);
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--threads", "1", "--max-total-tokens", "64"]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    let (st, _, v) = c
        .post("/v1/completions", &requests::completion("Hi", 100))
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains("the pool holds 64"), "{v}");

    // The suite's worker is built with the `cuda` feature; this machine has no NVIDIA driver
    // (where one is found, the refusal is not expected and not checked).
    if !std::path::Path::new("/proc/driver/nvidia").exists() {
        let out = Command::new(bin("dynamo-worker"))
            .args(["--device", "cuda"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no NVIDIA driver found"), "{err}");
    }
    let out = Command::new(bin("dynamo-worker"))
        .args(["--device", "tpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cuda:N"), "{err}");
    // Disaggregation flags name what they accept.
    for (flag, value, accepted) in [
        ("--disaggregation-transfer-backend", "nixl", "tcp"),
        ("--disaggregation-mode", "both", "prefill, decode or null"),
    ] {
        let out = Command::new(bin("dynamo-worker"))
            .args([flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(flag) && err.contains(accepted), "{err}");
    }
}

/// Stop strings cut the text exactly before the stop string, unary and streamed alike, and
/// the usage of a stopped request is whole: its prompt's cached tokens included (the
/// worker reports usage with its first token, since a stopped request never reaches its last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_exactly_and_keep_the_usage() {
    let c = cluster().await;
    let prompt = "The printing press changed Europe in many ways. ".repeat(4) + "In short,";
    let body = requests::greedy_completion(prompt.as_str(), 40);
    // Twice: the second run finds the prompt's blocks cached.
    let _ = c.post("/v1/completions", &body).await;
    let (st, _, full) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{full}");
    let text = full["choices"][0]["text"].as_str().unwrap().to_string();
    let cached = full["usage"]["cached_tokens"].as_u64().unwrap_or(0);
    let cached = full["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(cached);
    assert!(cached >= 16, "the repeated prompt is cached: {full}");
    // A stop string from the middle of the text.
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() > 6, "{text:?}");
    let stop = words[words.len() / 2].to_string();
    let want = &text[..text.find(&stop).unwrap()];

    let mut stopped = body.clone();
    stopped["stop"] = json!([stop]);
    let (st, _, v) = c.post("/v1/completions", &stopped).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), want, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], full["usage"]["prompt_tokens"], "{v}");
    let n = u["completion_tokens"].as_u64().unwrap();
    assert!(n > 0 && n < 40, "{v}");
    assert_eq!(u["prompt_tokens_details"]["cached_tokens"], cached, "{v}");

    stopped["stream"] = json!(true);
    stopped["stream_options"] = json!({"include_usage": true});
    let r = c.send("/v1/completions", &stopped, &[]).await;
    let (events, done) = read_sse(r).await;
    assert!(done);
    let streamed: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, want);
    let finish = events
        .iter()
        .rev()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("stop"));
    let su = events
        .iter()
        .rev()
        .find_map(|e| e["usage"].is_object().then(|| e["usage"].clone()))
        .expect("usage chunk");
    assert_eq!(su["prompt_tokens_details"]["cached_tokens"], cached, "{su}");
    assert_eq!(su["prompt_tokens"], full["usage"]["prompt_tokens"], "{su}");
}

/// The device executor's host side behind a real worker, frontend and NATS: the first
/// reference case's answer (its f32 arithmetic follows transformers, which leaves llama.cpp's
/// text after the first sentence), with the engine's metrics reporting it like any worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_the_reference_device_serves_the_reference_text() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&[
        "--threads",
        "2",
        "--device",
        "reference",
        "--max-total-tokens",
        "1024",
        "--enable-metrics",
    ]);
    c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/smollm2-greedy.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &reference["cases"][0];
    let body = requests::greedy_completion(case["prompt"].clone(), 8);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap();
    let want = case["text_before_first_near_tie"].as_str().unwrap();
    let sentence = &want[..=want.find('.').unwrap()];
    assert!(text.starts_with(sentence), "{text:?} vs {want:?}");
    // The engine counts a request's tokens just after its last one is sent.
    let mut generated = 0.0;
    for _ in 0..50 {
        generated = c
            .worker_metric(0, "sglang:generation_tokens_total")
            .await
            .unwrap_or(0.0);
        if generated >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(generated, 8.0);
    // Its decode passes ran padded to buckets, as the CUDA executor runs them, but no graph
    // was replayed (the reference ops capture none).
    let m = c.worker_metrics(0).await;
    let passes = |mode: &str| {
        dynamo_e2e::metric_with(
            &m,
            "sglang:cuda_graph_passes_total",
            &format!("mode=\"{mode}\""),
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(passes("decode_none"), 7.0, "{m}");
    assert_eq!(passes("decode_cuda_graph"), 0.0);
    assert_eq!(
        dynamo_e2e::metric_value(&m, "sglang:is_cuda_graph"),
        Some(0.0)
    );
}

/// `--enable-hierarchical-cache` behind the frontend: on a 16-block pool a long prompt pushed
/// out by two others is served again from the host tier (its cached tokens in the usage) with
/// the same text, and the host tier's families report the copies both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_tier_serves_an_evicted_prefix() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&[
        "--threads",
        "2",
        "--max-total-tokens",
        "256",
        "--enable-hierarchical-cache",
        "--enable-metrics",
    ]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    let prompt = |salt: u32| -> Vec<u32> {
        (0..150)
            .map(|i| 400 + (i * 31 + salt * 7919) % 20_000)
            .collect()
    };
    let c = &c;
    let ask = |salt: u32| {
        let body = requests::greedy_completion(json!(prompt(salt)), 8);
        async move { c.post("/v1/completions", &body).await }
    };
    let (st, _, first) = ask(0).await;
    assert_eq!(st, 200, "{first}");
    for salt in 1..3 {
        assert_eq!(ask(salt).await.0, 200);
    }
    let (_, _, again) = ask(0).await;
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], 144,
        "{again}"
    );
    let m = c.worker_metrics(0).await;
    let v = |n: &str| dynamo_e2e::metric_value(&m, n).unwrap_or(-1.0);
    assert_eq!(v("sglang:load_back_tokens_total"), 144.0, "{m}");
    assert!(v("sglang:evicted_tokens_total") >= 144.0);
    assert!(v("sglang:hicache_host_used_tokens") > 0.0);
    assert_eq!(
        v("sglang:hicache_host_total_tokens"),
        512.0,
        "twice the 256-token pool"
    );
}
