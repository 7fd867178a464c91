//! Distributed tracing, Dynamo side: frontend and a real worker export over OTLP/gRPC to the
//! `dynamo-trace` receiver (in-process library). One request is one trace across both
//! services, nested as the spec draws it (parent ids checked); an incoming `traceparent` is
//! continued and a malformed one starts a new root with a 200; `x-request-id` is on
//! `http-request` and `handle_payload`; JSONL log lines carry the span's trace id.

use std::time::{Duration, Instant};

use dynamo_e2e::{otel_env, requests, wait_trace, Cluster, WorkerKind, WorkerSpec};
use dynamo_telemetry::receiver::{render, Receiver, Span};
use serde_json::json;

fn one<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    let v: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(v.len(), 1, "{name} ×{}:\n{}", v.len(), render(spans));
    v[0]
}

async fn completion(c: &Cluster, headers: &[(&str, &str)]) -> (u16, String) {
    // Sampled at the default temperature: ignore_eos keeps the output at 4 tokens.
    let mut body = requests::completion("The capital of France is", 4);
    body["ignore_eos"] = serde_json::json!(true);
    let r = c.send("/v1/completions", &body, headers).await;
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_request_across_frontend_and_worker() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ep = rx.endpoint();
    let otel = |svc: &'static str, log: &'static str| {
        let mut env = otel_env(&ep, svc);
        env.push(("DYN_LOG", log));
        env
    };
    // The frontend logs at warn only: its (info) spans must be exported all the same.
    let mut c = Cluster::start(&otel("dynamo-frontend", "warn,dynamo_frontend=info"));
    let engine_ep = rx.host_port();
    c.spawn(
        WorkerSpec::new(WorkerKind::Engine)
            .args(&[
                "--threads",
                "2",
                "--enable-trace",
                "--otlp-traces-endpoint",
                &engine_ep,
                "--chunked-prefill-size",
                "16",
            ])
            .env(&otel("dynamo-worker-1", "info,dynamo_runtime=debug")),
    );
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();

    // An incoming traceparent is continued: same trace id, http-request under its span.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = "b7ad6b7169203331";
    let tp = format!("00-{trace}-{parent}-01");
    let (st, body) = completion(&c, &[("traceparent", &tp), ("x-request-id", "req-trace-1")]).await;
    assert_eq!(st, 200, "{body}");
    let spans = wait_trace(
        &rx,
        trace,
        &[
            "http-request",
            "kv_router.select_worker",
            "kv_router.compute_block_hashes",
            "kv_router.compute_seq_hashes",
            "kv_router.find_matches",
            "kv_router.schedule",
            "kv_router.route_request",
            "handle_payload",
            "Bootstrap Room 0x0",
            "prefill_forward",
            "decode_loop",
            "dispatch",
        ],
    )
    .await;
    eprintln!("{}", render(&spans));
    let http = one(&spans, "http-request");
    let select = one(&spans, "kv_router.select_worker");
    let schedule = one(&spans, "kv_router.schedule");
    let route = one(&spans, "kv_router.route_request");
    let handle = one(&spans, "handle_payload");
    assert_eq!(http.parent_span_id, parent);
    assert_eq!(select.parent_span_id, http.span_id);
    assert_eq!(schedule.parent_span_id, select.span_id);
    for n in [
        "kv_router.compute_block_hashes",
        "kv_router.compute_seq_hashes",
        "kv_router.find_matches",
    ] {
        assert_eq!(one(&spans, n).parent_span_id, select.span_id, "{n}");
    }
    let bh = one(&spans, "kv_router.compute_block_hashes");
    assert_eq!(bh.attributes["isl_tokens"], json!(5));
    assert_eq!(
        bh.attributes["block_count"],
        json!(0),
        "5 tokens: no complete 16-token block"
    );
    assert_eq!(route.parent_span_id, http.span_id);
    assert_eq!(handle.parent_span_id, route.span_id);
    assert!(spans.iter().all(|s| s.trace_id == trace));
    assert_eq!(http.service, "dynamo-frontend");
    assert_eq!(handle.service, "dynamo-worker-1");
    assert_eq!(http.attr_str("x_request_id"), Some("req-trace-1"));
    assert_eq!(handle.attr_str("x_request_id"), Some("req-trace-1"));
    assert_eq!(http.attr_str("uri"), Some("/v1/completions"));
    assert_eq!(http.attr_str("method"), Some("POST"));
    assert_eq!(http.attr_str("parent_id"), Some(parent));
    assert_eq!(http.attr_str("trace_id"), Some(trace));
    assert_eq!(http.attributes["input_tokens"], json!(5));
    assert_eq!(http.attributes["output_tokens"], json!(4));
    assert!(http.attributes["ttft_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(handle.attr_str("component"), Some("backend"));
    assert_eq!(handle.attr_str("endpoint"), Some("generate"));
    assert_eq!(handle.attr_str("namespace"), Some("dynamo"));
    assert_eq!(handle.attr_str("trace_id"), Some(trace));
    assert_eq!(handle.attr_str("parent_id"), Some(route.span_id.as_str()));
    assert_eq!(
        route.attributes["worker_id"],
        handle.attributes["instance_id"]
    );
    assert_eq!(route.attr_str("phase"), Some("Aggregated"));
    // Children lie within their parents in time.
    assert!(http.start_ns <= route.start_ns && route.start_ns <= handle.start_ns);
    assert!(handle.end_ns <= http.end_ns + 5_000_000);

    // Engine spans (service sglang) under handle_payload, SGLang's nesting.
    let room = one(&spans, "Bootstrap Room 0x0");
    assert_eq!(room.service, "sglang");
    assert_eq!(room.parent_span_id, handle.span_id);
    assert_eq!(room.attr_str("bootstrap_room"), Some("0x0"));
    let req = one(&spans, &format!(" Req {}", &trace[..8]));
    assert_eq!(req.parent_span_id, room.span_id);
    assert_eq!(req.attr_str("rid"), Some(trace), "rid is the trace id");
    assert_eq!(req.attributes["gen_ai.usage.prompt_tokens"], json!(5));
    let out_tokens = req.attributes["gen_ai.usage.completion_tokens"]
        .as_i64()
        .unwrap();
    assert_eq!(out_tokens, 4);
    for k in [
        "gen_ai.latency.time_to_first_token",
        "gen_ai.latency.time_in_queue",
        "gen_ai.latency.e2e",
        "gen_ai.request.id",
        "gen_ai.request.max_tokens",
        "gen_ai.request.temperature",
        "gen_ai.request.top_p",
        "gen_ai.response.model",
    ] {
        assert!(req.attributes.contains_key(k), "Req lacks {k}");
    }
    let sched = spans
        .iter()
        .find(|s| s.name.starts_with("Scheduler [TP 0] (host:"))
        .expect("scheduler thread span");
    let tok = spans
        .iter()
        .find(|s| s.name.starts_with("Tokenizer (host:"))
        .expect("tokenizer thread span");
    assert_eq!(sched.parent_span_id, req.span_id);
    assert_eq!(tok.parent_span_id, req.span_id);
    for n in ["request_process", "prefill_forward"] {
        assert_eq!(one(&spans, n).parent_span_id, sched.span_id, "{n}");
    }
    for n in ["tokenize", "dispatch"] {
        assert_eq!(one(&spans, n).parent_span_id, tok.span_id, "{n}");
    }
    let decodes: Vec<&Span> = spans.iter().filter(|s| s.name == "decode_loop").collect();
    assert_eq!(
        decodes.len() as i64,
        out_tokens - 1,
        "one decode_loop per decode iteration"
    );
    for d in &decodes {
        assert_eq!(d.parent_span_id, sched.span_id);
        assert_eq!(d.links.len(), 1, "linked to the previous slice");
        let (name, attrs) = &d.events[0];
        assert_eq!(name, "batch");
        assert_eq!(attrs["batch_size"], json!(1));
        assert!(attrs.contains_key("bid"));
    }
    assert_eq!(one(&spans, "prefill_forward").links.len(), 1);

    // The worker's JSONL lines inside handle_payload carry the same trace id.
    let log = c.workers[0].child.log_text();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "request received" && v["x_request_id"] == "req-trace-1")
        .unwrap_or_else(|| panic!("no JSONL line for the request:\n{log}"));
    assert_eq!(line["trace_id"], trace);
    assert_eq!(line["span_id"], handle.span_id.as_str());
    assert_eq!(line["span_name"], "handle_payload");
    for k in ["time", "level", "target", "file", "line"] {
        assert!(!line[k].is_null(), "JSONL lacks {k}: {line}");
    }

    // A prompt longer than --chunked-prefill-size: its chunks nest under prefill_forward,
    // linked in order.
    let trace3 = "1bf7651916cd43dd8448eb211c80319d";
    let long = "The quick brown fox jumps over the lazy dog while the cat watches from the warm \
        windowsill and the rain falls softly on the old stone roof of the quiet village house";
    let r = c
        .send(
            "/v1/completions",
            &requests::completion(long, 2),
            &[("traceparent", &format!("00-{trace3}-{parent}-01"))],
        )
        .await;
    assert_eq!(r.status(), 200);
    let usage: serde_json::Value = r.json().await.unwrap();
    let prompt_tokens = usage["usage"]["prompt_tokens"].as_u64().unwrap();
    // (Its first tokens may come from an earlier request's cached blocks.)
    let computed = prompt_tokens
        - usage["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
    let spans3 = wait_trace(
        &rx,
        trace3,
        &["prefill_forward", "chunked_prefill", "decode_loop"],
    )
    .await;
    let pf = one(&spans3, "prefill_forward");
    let mut chunks: Vec<&Span> = spans3
        .iter()
        .filter(|s| s.name == "chunked_prefill")
        .collect();
    chunks.sort_by_key(|s| s.start_ns);
    assert_eq!(
        chunks.len() as u64,
        computed.div_ceil(16),
        "{}",
        render(&spans3)
    );
    for (k, ch) in chunks.iter().enumerate() {
        assert_eq!(ch.parent_span_id, pf.span_id);
        let prev = if k == 0 {
            &pf.span_id
        } else {
            &chunks[k - 1].span_id
        };
        assert_eq!(
            &ch.links,
            &vec![prev.clone()],
            "chunk {k} links to the previous slice"
        );
    }

    // A malformed traceparent: 200, and the request gets a new root of its own.
    let before: Vec<String> = rx.trace_ids();
    let (st, body) = completion(
        &c,
        &[
            ("traceparent", "00-zz-nothex-01"),
            ("x-request-id", "req-trace-2"),
        ],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        let new: Vec<String> = rx
            .trace_ids()
            .into_iter()
            .filter(|t| !before.contains(t))
            .collect();
        let found = new.into_iter().find(|t| {
            let s = rx.trace(t);
            s.iter().any(|s| s.name == "handle_payload")
                && s.iter().any(|s| {
                    s.name == "http-request" && s.attr_str("x_request_id") == Some("req-trace-2")
                })
        });
        if let Some(t) = found {
            break rx.trace(&t);
        }
        assert!(
            Instant::now() < deadline,
            "no trace for the request with a malformed traceparent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let http = one(&fresh, "http-request");
    assert_eq!(http.parent_span_id, "", "a new root");
    assert!(!http.attributes.contains_key("parent_id"));
    assert_eq!(one(&fresh, "handle_payload").trace_id, http.trace_id);
}

/// With the collector unreachable (the port refuses) or hanging (it accepts connections and
/// never answers), requests are served as usual: export never sits on the request path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_does_not_stall_requests() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    collector_cannot_stall(&dead).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_accepts_and_hangs_does_not_stall_requests() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    // Accept every connection and hold it open without a byte in reply.
    std::thread::spawn(move || {
        let mut held = vec![];
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    collector_cannot_stall(&format!("http://{addr}")).await;
}

async fn collector_cannot_stall(endpoint: &str) {
    let env = [
        ("OTEL_EXPORT_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
    ];
    let host_port = endpoint.trim_start_matches("http://");
    let mut c = Cluster::start(&env);
    c.spawn(
        WorkerSpec::new(WorkerKind::Engine)
            .args(&[
                "--threads",
                "2",
                "--enable-trace",
                "--otlp-traces-endpoint",
                host_port,
            ])
            .env(&env),
    );
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    for i in 0..5 {
        let t0 = Instant::now();
        let (st, body) = completion(&c, &[("x-request-id", &format!("down-{i}"))]).await;
        assert_eq!(st, 200, "{body}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "request {i} waited on the exporter"
        );
    }
}
