//! The KV cache hierarchy through the whole stack: the KV router sends a prompt to the worker
//! holding its prefix in the host tier (which it hears about from the tier-tagged KV events)
//! rather than to one holding a shorter prefix in its KV pool; and a worker restarted on its
//! storage directory serves a long prefix from there (prefetched, loaded back, identical
//! greedy output).

use std::time::Duration;

use dynamo_e2e::requests::{self, pinned};
use dynamo_e2e::Cluster;
use serde_json::{json, Value};

/// The families a worker serves only with `--enable-hierarchical-cache` (and a storage
/// backend), all documented in docs/observability/metrics.md.
pub(super) const HICACHE_FAMILIES: &[&str] = &[
    "sglang:evicted_tokens_total",
    "sglang:eviction_duration_seconds",
    "sglang:load_back_tokens_total",
    "sglang:load_back_bytes_total",
    "sglang:load_back_duration_seconds",
    "sglang:hicache_backup_tokens_total",
    "sglang:hicache_backup_bytes_total",
    "sglang:hicache_backup_duration_seconds",
    "sglang:hicache_host_used_tokens",
    "sglang:hicache_host_total_tokens",
    "sglang:hicache_dropped_tokens_total",
    "sglang:prefetched_tokens_total",
    "sglang:backuped_tokens_total",
    "sglang:prefetch_pgs",
    "sglang:backup_pgs",
    "sglang:prefetch_bandwidth",
    "sglang:backup_bandwidth",
    "sglang:hicache_prefetch_outcomes_total",
    "sglang:hicache_storage_rejected_files_total",
    "sglang:hicache_storage_used_bytes",
];

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

/// [`cached_from`] once it reaches `want` (the engine counts a request just after its last
/// token), or after 5 s.
async fn cached_reaching(c: &Cluster, w: usize, source: &str, want: f64) -> f64 {
    let mut got = 0.0;
    for _ in 0..100 {
        got = cached_from(c, w, source).await;
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
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
    // The KV events arrive, and each worker's next load report (once a second) shows it idle:
    // a report sent while A still ran the flood must not make A look busy.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let before = cached_from(&c, 0, "host").await;
    let again: Value = ask(prompt(0), None).await;
    assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"], 144,
        "routed to A, which loaded the 9 blocks back (B would have had 32): {again}"
    );
    assert_eq!(
        cached_reaching(&c, 0, "host", before + 144.0).await - before,
        144.0
    );
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
    assert_eq!(cached_reaching(&c, 0, "storage_file", 144.0).await, 144.0);
    // Every hierarchy family the docs list is served, with a `# TYPE`.
    let m = c.worker_metrics(0).await;
    for f in HICACHE_FAMILIES {
        assert!(m.contains(&format!("# TYPE {f} ")), "{f} not served:\n{m}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sequence hash of `tokens`' last full block.
fn last_hash(tokens: &[u32]) -> u64 {
    use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
    *sequence_hashes(&block_hashes(tokens, 16))
        .last()
        .expect("a full block")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_through_the_system_port_the_request_plane_and_cache_control() {
    let mut c = Cluster::start(&[]);
    let w = c.add_worker(&[
        "--threads",
        "2",
        "--max-total-tokens",
        "256",
        "--enable-metrics",
    ]);
    c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
    let short = |salt: u32| prompt(salt)[..100].to_vec();
    let ask = |body: Value| {
        let c = &c;
        async move { c.post("/v1/completions", &body).await }
    };
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    let flood = || async {
        for salt in 1..3 {
            assert_eq!(
                ask(requests::greedy_completion(json!(prompt(salt)), 8))
                    .await
                    .0,
                200
            );
        }
    };
    let engine = |route: &str, body: Value| {
        let url = format!(
            "http://127.0.0.1:{}/engine/{route}",
            c.workers[w].system_port
        );
        let http = c.http.clone();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };

    // The system port: pin, survive a flood, unpin.
    assert_eq!(
        ask(requests::greedy_completion(json!(short(0)), 8)).await.0,
        200
    );
    let h = last_hash(&short(0));
    let (st, v) = engine("pin_blocks", json!({"block_hashes": [h], "ttl_secs": 60})).await;
    assert_eq!((st, &v), (200, &json!({"pinned": 1})));
    flood().await;
    let (_, _, v) = ask(requests::greedy_completion(json!(short(0)), 8)).await;
    assert!(
        cached(&v) >= Some(96),
        "pinned prefix served from the pool: {v}"
    );
    let (st, v) = engine("unpin_blocks", json!({"block_hashes": [h]})).await;
    assert_eq!((st, &v), (200, &json!({"unpinned": 1})));
    let (st, v) = engine("pin_blocks", json!({"block_hashes": "all"})).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(v["error"]["type"], "BadRequestError");
    let (st, v) = engine("pin_blocks", json!({"block_hashes": [h], "ttl_secs": -3})).await;
    assert_eq!(st, 400, "{v}");
    assert_eq!(engine("no_such_route", json!({})).await.0, 404);

    // The request plane.
    let nats = dynamo_e2e::peer::RawPeer::connect(&c.nats.url()).await;
    let subject =
        dynamo_protocols::kv_events::kv_pin_subject("dynamo", "backend", c.instance_id(w));
    let ask_pin = |body: Value| {
        let nats = &nats;
        let subject = subject.clone();
        async move {
            let r = nats
                .request(&subject, body.to_string(), Duration::from_secs(10))
                .await
                .expect("the worker answers");
            serde_json::from_slice::<Value>(&r).unwrap()
        }
    };
    assert_eq!(
        ask_pin(json!({"block_hashes": [h], "ttl_secs": 30})).await,
        json!({"count": 1})
    );
    assert_eq!(
        ask_pin(json!({"block_hashes": [h], "unpin": true})).await,
        json!({"count": 1})
    );

    // cache_control: the request pins its own prompt.
    let mut body = requests::greedy_completion(json!(short(5)), 8);
    body["nvext"] = json!({"cache_control": {"type": "ephemeral", "ttl": "5m"}});
    assert_eq!(ask(body).await.0, 200);
    let mut pinned = 0.0;
    for _ in 0..100 {
        pinned = c
            .worker_metric(w, "sglang:pinned_tokens")
            .await
            .unwrap_or(0.0);
        if pinned >= 96.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pinned, 96.0);
    flood().await;
    let (_, _, v) = ask(requests::greedy_completion(json!(short(5)), 8)).await;
    assert!(cached(&v) >= Some(96), "{v}");
    let mut bad = requests::greedy_completion(json!(short(5)), 8);
    bad["nvext"] = json!({"cache_control": {"type": "ephemeral", "ttl": "forever"}});
    let (st, _, v) = ask(bad).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cache_control"),
        "{v}"
    );
}
