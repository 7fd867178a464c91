//! The KV cache hierarchy through the whole stack: the KV router sends a prompt to the worker
//! holding its prefix in the host tier (which it hears about from the tier-tagged KV events)
//! rather than to one holding a shorter prefix in its KV pool; and a worker restarted on its
//! storage directory serves a long prefix from there (prefetched, loaded back, identical
//! greedy output).

use std::time::Duration;

use dynamo_e2e::requests::{self, pinned};
use dynamo_e2e::Cluster;
use serde_json::{json, Value};

fn prompt(salt: u32) -> Vec<u32> {
    (0..150)
        .map(|i| 400 + (i * 31 + salt * 7919) % 20_000)
        .collect()
}

/// A worker's `sglang:cached_tokens_total` for one cache source.
async fn cached_from(c: &Cluster, w: usize, source: &str) -> f64 {
    let m = c.worker_metrics(w).await;
    m.lines()
        .filter(|l| {
            l.starts_with("sglang:cached_tokens_total{")
                && l.contains(&format!("cache_source=\"{source}\""))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_router_prefers_the_worker_holding_the_prefix_in_its_host_tier() {
    let mut c = Cluster::start(&[("DYN_ROUTER_MODE", "kv")]);
    let args = [
        "--threads",
        "1",
        "--max-total-tokens",
        "256",
        "--enable-hierarchical-cache",
        "--enable-metrics",
    ];
    c.add_worker(&args);
    c.add_worker(&args);
    c.wait_instances(2, Duration::from_secs(60)).await.unwrap();
    let (a, b) = (c.instance_id(0), c.instance_id(1));
    let ask = |tokens: Vec<u32>, to: Option<u64>| {
        let body = requests::greedy_completion(json!(tokens), 8);
        let body = match to {
            Some(w) => pinned(body, w),
            None => body,
        };
        let c = &c;
        async move {
            let (st, _, v) = c.post("/v1/completions", &body).await;
            assert_eq!(st, 200, "{v}");
            v
        }
    };
    // A computes the prompt, then two others push it out of A's pool into A's host tier.
    let first = ask(prompt(0), Some(a)).await;
    for salt in 1..3 {
        ask(prompt(salt), Some(a)).await;
    }
    // B holds the prompt's first 2 blocks in its pool: a device-only router would pick B.
    let mut head = prompt(0)[..40].to_vec();
    head.extend(prompt(9)[..40].iter());
    ask(head, Some(b)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = cached_from(&c, 0, "host").await;
    let again: Value = ask(prompt(0), None).await;
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], 144,
        "routed to A, which loaded the 9 blocks back (B would have had 32): {again}"
    );
    // The engine counts a request just after its last token: poll.
    let mut got = 0.0;
    for _ in 0..100 {
        got = cached_from(&c, 0, "host").await - before;
        if got >= 144.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, 144.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_serves_a_prefix_from_its_storage_directory() {
    let dir = std::env::temp_dir().join(format!("dyn-e2e-hicache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap().to_string();
    let args = [
        "--threads",
        "2",
        "--max-total-tokens",
        "256",
        "--enable-hierarchical-cache",
        "--hicache-storage-backend",
        "file",
        "--hicache-storage-dir",
        &d,
        "--hicache-prefetch-threshold",
        "64",
        "--hicache-storage-prefetch-policy",
        "wait_complete",
        "--enable-metrics",
    ];
    let body = requests::greedy_completion(json!(prompt(0)), 8);
    let first = {
        let mut c = Cluster::start(&[]);
        c.add_worker(&args);
        c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
        let (st, _, v) = c.post("/v1/completions", &body).await;
        assert_eq!(st, 200, "{v}");
        // The backup thread writes the 9 full blocks.
        for _ in 0..500 {
            let n = std::fs::read_dir(&dir).map_or(0, |r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".kv"))
                    .count()
            });
            if n >= 9 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        v
    };
    let mut c = Cluster::start(&[]);
    c.add_worker(&args);
    c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
    let (st, _, again) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], 144,
        "{again}"
    );
    let mut got = 0.0;
    for _ in 0..100 {
        got = cached_from(&c, 0, "storage_file").await;
        if got >= 144.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, 144.0);
    let _ = std::fs::remove_dir_all(&dir);
}
