//! KV-aware routing end to end with mockers (real nats-server, frontend in `--router-mode kv`,
//! mockers publishing KV events and load): shared prefixes land on the worker that caches
//! them, disjoint prompts spread by load, approximate mode routes repeats without events; and
//! the router's metrics and spans carry the decision. (Re-sync of a late router and removal
//! of a departed worker are tested in process in `crates/kv-router/tests/events_plane.rs`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_e2e::{metric_value, otel_env, requests, wait_trace, Cluster};
use serde_json::json;

fn kv_frontend(extra: &[(&str, &str)]) -> Cluster {
    let mut env = vec![("DYN_ROUTER_MODE", "kv")];
    env.extend_from_slice(extra);
    Cluster::start(&env)
}

/// A token prompt: `prefix_blocks` 16-token blocks from group `group`, then `tail` tokens
/// unique to `salt`.
fn prompt(group: u32, prefix_blocks: u32, salt: u32, tail: u32) -> Vec<u32> {
    let mut t: Vec<u32> = (0..prefix_blocks * 16)
        .map(|i| 1000 + (group * 977 + i) % 30_000)
        .collect();
    t.extend((0..tail).map(|i| 40_000 + (salt * 64 + i) % 9_000));
    t
}

async fn complete(c: &Cluster, tokens: &[u32], max_tokens: u32) -> serde_json::Value {
    let body = requests::completion(tokens, max_tokens);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{v}");
    v
}

fn applied(text: &str, event_type: &str, status: &str) -> f64 {
    let want = format!(
        "dynamo_component_kv_cache_events_applied{{event_type=\"{event_type}\",status=\"{status}\"}}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Wait until the frontend has applied at least `n` stored events.
async fn wait_stored(c: &Cluster, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.frontend_metrics().await;
        if applied(&m, "stored", "ok") >= n {
            return;
        }
        assert!(Instant::now() < deadline, "stored events not applied:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefix_follows_the_cache_and_disjoint_load_spreads() {
    let mut c = kv_frontend(&[]);
    for _ in 0..3 {
        c.add_mocker(&["--speedup-ratio", "10"]);
    }
    c.wait_instances(3, Duration::from_secs(20)).await.unwrap();

    // One request stores a 20-block prefix on some worker; every later request sharing it
    // (with a different tail) goes there and finds it cached.
    let first = complete(&c, &prompt(1, 20, 0, 5), 2).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    wait_stored(&c, 1.0).await;
    let before = c.served().await;
    let owner = (0..3)
        .find(|&i| before[i] == 1)
        .expect("one worker served it");
    for salt in 1..=6 {
        let v = complete(&c, &prompt(1, 20, salt, 5), 2).await;
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"], 320,
            "request {salt} hit the cached prefix: {v}"
        );
    }
    let after = c.served().await;
    assert_eq!(after[owner], 7, "all on the owner: {after:?}");

    // Disjoint prompts sent at once spread over the workers by the router's load account.
    let t0 = c.served().await;
    let mut tasks = vec![];
    let c = Arc::new(c);
    for g in 0..12 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            complete(&c, &prompt(100 + g, 4, g, 3), 200).await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let t1 = c.served().await;
    let per: Vec<u64> = (0..3).map(|i| t1[i] - t0[i]).collect();
    assert_eq!(per.iter().sum::<u64>(), 12);
    assert!(per.iter().all(|&n| n >= 3), "load spread: {per:?}");

    // The router's metrics: requests, predicted hit rate, overhead, per-worker gauges.
    let m = c.frontend_metrics().await;
    assert_eq!(metric_value(&m, "dynamo_router_requests_total"), Some(19.0));
    assert_eq!(
        metric_value(&m, "dynamo_router_kv_hit_rate_count"),
        Some(19.0)
    );
    // Six requests predicted 20 of 21 blocks cached: the hit-rate sum is 6 × 20/21.
    let sum = metric_value(&m, "dynamo_router_kv_hit_rate_sum").unwrap();
    assert!((sum - 6.0 * 20.0 / 21.0).abs() < 1e-6, "hit-rate sum {sum}");
    for h in [
        "dynamo_router_overhead_block_hashing_ms",
        "dynamo_router_overhead_seq_hashing_ms",
        "dynamo_router_overhead_indexer_find_matches_ms",
        "dynamo_router_overhead_scheduling_ms",
        "dynamo_router_overhead_total_ms",
        "dynamo_router_time_to_first_token_seconds",
        "dynamo_router_input_sequence_tokens",
        "dynamo_router_output_sequence_tokens",
    ] {
        assert_eq!(metric_value(&m, &format!("{h}_count")), Some(19.0), "{h}");
    }
    assert!(m.contains("router_id=\""), "router_id label");
    // Every request ended: the router's account is back to zero on every worker.
    assert_eq!(
        metric_value(&m, "dynamo_frontend_worker_active_decode_blocks"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "dynamo_frontend_worker_active_prefill_tokens"),
        Some(0.0)
    );
    assert!(m.contains("dynamo_frontend_worker_active_decode_blocks{dp_rank=\"0\",worker_id=\""));
    assert_eq!(applied(&m, "stored", "error"), 0.0, "{m}");
    assert!(applied(&m, "stored", "ok") >= 13.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approximate_mode_routes_repeats_without_events() {
    let mut c = kv_frontend(&[("DYN_KV_EVENTS", "false")]);
    for _ in 0..3 {
        c.add_mocker(&["--speedup-ratio", "1000"]);
    }
    c.wait_instances(3, Duration::from_secs(20)).await.unwrap();
    for salt in 0..6 {
        complete(&c, &prompt(3, 10, salt, 4), 2).await;
    }
    let s = c.served().await;
    assert!(s.contains(&6), "all repeats on one worker: {s:?}");
    let m = c.frontend_metrics().await;
    assert_eq!(applied(&m, "stored", "ok"), 0.0, "no events used: {m}");
    // The first request had no prediction, the other five predicted 10 of 11 blocks.
    let sum = metric_value(&m, "dynamo_router_kv_hit_rate_sum").unwrap();
    assert!((sum - 5.0 * 10.0 / 11.0).abs() < 1e-6, "hit-rate sum {sum}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_router_spans_carry_the_decision() {
    use dynamo_telemetry::receiver::{render, Receiver};
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ep = rx.endpoint();
    let mut c = kv_frontend(&otel_env(&ep, "dynamo-frontend"));
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(2, Duration::from_secs(20)).await.unwrap();
    let p = prompt(11, 6, 0, 7); // 103 tokens: 6 full blocks
    complete(&c, &p, 2).await;
    wait_stored(&c, 1.0).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = requests::completion(p, 2);
    let r = c
        .send(
            "/v1/completions",
            &body,
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
        )
        .await;
    assert_eq!(r.status(), 200);
    let names = [
        "kv_router.select_worker",
        "kv_router.compute_block_hashes",
        "kv_router.compute_seq_hashes",
        "kv_router.find_matches",
        "kv_router.schedule",
        "kv_router.route_request",
    ];
    let spans = wait_trace(&rx, trace, &names).await;
    let get = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
    let select = get("kv_router.select_worker");
    for n in &names[1..5] {
        assert_eq!(get(n).parent_span_id, select.span_id, "{n}");
    }
    let bh = get("kv_router.compute_block_hashes");
    assert_eq!(bh.attributes["isl_tokens"], json!(103));
    assert_eq!(bh.attributes["block_count"], json!(6));
    assert_eq!(
        get("kv_router.compute_seq_hashes").attributes["seq_hash_count"],
        json!(6)
    );
    let fm = get("kv_router.find_matches");
    assert_eq!(
        fm.attributes["overlap_blocks"],
        json!(6),
        "{}",
        render(&spans)
    );
    assert_eq!(fm.attributes["workers_matched"], json!(1));
    let sc = get("kv_router.schedule");
    assert_eq!(sc.attributes["overlap_blocks"], json!(6));
    assert_eq!(sc.attributes["cached_tokens"], json!(96));
    assert_eq!(sc.attributes["pending_count"], json!(1));
    assert_eq!(sc.attributes["pending_isl_tokens"], json!(7));
    let route = get("kv_router.route_request");
    assert_eq!(route.attributes["overlap_blocks"], json!(6));
    assert_eq!(route.attributes["worker_id"], sc.attributes["worker_id"]);
}
