//! Metrics under a scripted workload against frontend + a real worker with `--enable-metrics`
//! on a small KV pool: a repeated prefix, a cancelled stream, a retraction-forcing burst.
//! Checks relations between the `sglang:` families, the `dynamo_*` families and the
//! responses' usage; label sets; `promtool check metrics`; and a real Prometheus scraping both
//! processes and answering the queries dashboards use.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use dynamo_e2e::{metric_value, requests, run_ok, Child, Cluster, MODEL};
use futures::StreamExt;
use serde_json::json;

const POOL_TOKENS: &str = "512";

fn scheduler_labels() -> BTreeSet<&'static str> {
    [
        "model_name",
        "engine_type",
        "tp_rank",
        "pp_rank",
        "moe_ep_rank",
    ]
    .into()
}

/// Per-request families carry only `model_name` (SGLang's tokenizer collector).
const PER_REQUEST: &[&str] = &[
    "sglang:prompt_tokens_total",
    "sglang:generation_tokens_total",
    "sglang:cached_tokens_total",
    "sglang:num_requests_total",
    "sglang:num_aborted_requests_total",
    "sglang:time_to_first_token_seconds",
    "sglang:inter_token_latency_seconds",
    "sglang:e2e_request_latency_seconds",
    "sglang:num_retractions",
    "sglang:prompt_tokens_histogram",
    "sglang:generation_tokens_histogram",
];

/// promtool lints on names the specs fix (users' dashboards and alerts query them as they
/// are): SGLang's token histograms carry their type in the name, and Dynamo's tokenizer
/// latency is in `_ms`.
const SPEC_NAME_LINTS: &[&str] = &[
    "sglang:prompt_tokens_histogram metric name should not include type 'histogram'",
    "sglang:generation_tokens_histogram metric name should not include type 'histogram'",
    "dynamo_frontend_tokenizer_latency_ms metric names should not contain abbreviated units",
    // SGLang's disaggregation gauges, named as the spec names them.
    "sglang:kv_transfer_alloc_ms metric names should not contain abbreviated units",
    "sglang:kv_transfer_bootstrap_ms metric names should not contain abbreviated units",
    "sglang:kv_transfer_latency_ms metric names should not contain abbreviated units",
    "sglang:kv_transfer_speed_gb_s metric names should not contain abbreviated units",
    "sglang:kv_transfer_total_mb metric names should not contain abbreviated units",
    // SGLang's memory gauges (spec §9), named as the spec names them.
    "sglang:kv_cache_memory_usage_gb metric names should not contain abbreviated units",
    "sglang:weight_memory_usage_gb metric names should not contain abbreviated units",
];

async fn scrape(c: &Cluster) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", c.workers[0].system_port);
    c.http.get(url).send().await.unwrap().text().await.unwrap()
}

fn v(text: &str, name: &str) -> f64 {
    metric_value(text, name).unwrap_or_else(|| panic!("{name} missing from\n{text}"))
}

/// `# TYPE` of every family and the label names seen on its samples.
fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            out.entry(name.into()).or_default().0 = ty.into();
        } else if !line.starts_with('#') && !line.is_empty() {
            let key = line.rsplit_once(' ').unwrap().0;
            let (name, labels) = key.split_once('{').unwrap_or((key, ""));
            let fam = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| out.contains_key(*f)))
                .unwrap_or(name);
            let set = &mut out.entry(fam.into()).or_default().1;
            for kv in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|s| !s.is_empty())
            {
                let k = kv.split_once('=').unwrap().0;
                if k != "le" {
                    set.insert(k.to_string());
                }
            }
        }
    }
    out
}

struct Usage {
    prompt: u64,
    completion: u64,
    cached: u64,
}

async fn complete(c: &Cluster, prompt: &str, max_tokens: u32, ignore_eos: bool) -> Usage {
    let mut body = requests::greedy_completion(prompt, max_tokens);
    body["ignore_eos"] = json!(ignore_eos);
    let (st, _, r) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 200, "{r}");
    let u = &r["usage"];
    Usage {
        prompt: u["prompt_tokens"].as_u64().unwrap(),
        completion: u["completion_tokens"].as_u64().unwrap(),
        cached: u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    }
}

/// Poll the worker until `cond` holds on its metrics text.
async fn wait_metrics(c: &Cluster, what: &str, cond: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = scrape(c).await;
        if cond(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn promtool_problems(text: &str) -> Vec<String> {
    use std::io::Write;
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; ./tests/run.sh installs it)");
    p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    all.lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.ends_with("metric names should not contain ':'"))
        .filter(|l| !SPEC_NAME_LINTS.contains(l))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_and_runtime_metrics_under_a_scripted_workload() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&[
        "--threads",
        "2",
        "--enable-metrics",
        "--collect-tokens-histogram",
        "--max-total-tokens",
        POOL_TOKENS,
    ]);
    c.wait_instances(1, Duration::from_secs(30)).await.unwrap();
    let mut usages: Vec<Usage> = vec![];

    // 1. A repeated prefix: the second request is served mostly from the cache.
    let prefix = "You are a careful assistant. Answer in one short sentence, plainly, without \
        lists, and never repeat the question. Facts you may use: rivers flow downhill; \
        the sea is salty; mountains are tall; deserts are dry; forests hold many trees. ";
    usages.push(
        complete(
            &c,
            &format!("{prefix}Question: why is the sea salty?"),
            8,
            false,
        )
        .await,
    );
    usages.push(
        complete(
            &c,
            &format!("{prefix}Question: why are deserts dry?"),
            8,
            false,
        )
        .await,
    );
    assert!(
        usages[1].cached >= 32,
        "prefix reused: {}",
        usages[1].cached
    );
    let m = wait_metrics(&c, "cache_hit_rate", |m| {
        metric_value(m, "sglang:cache_hit_rate").unwrap_or(0.0) > 0.0
    })
    .await;
    let hit = v(&m, "sglang:cache_hit_rate");
    assert!(hit > 0.0 && hit <= 1.0, "cache_hit_rate {hit}");

    // 2. A cancelled stream: counted as aborted, in none of the finished-request families.
    let before = scrape(&c).await;
    let r = c
        .send(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "Count slowly:", "max_tokens": 400,
            "ignore_eos": true, "stream": true}),
            &[],
        )
        .await;
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    drop(body);
    let after = wait_metrics(&c, "the abort", |m| {
        metric_value(m, "sglang:num_aborted_requests_total") == Some(1.0)
            && metric_value(m, "sglang:num_running_reqs") == Some(0.0)
    })
    .await;
    for name in [
        "sglang:num_requests_total",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
        "sglang:e2e_request_latency_seconds_count",
        "sglang:num_retractions_count",
    ] {
        assert_eq!(
            v(&before, name),
            v(&after, name),
            "{name} moved on an abort"
        );
    }
    // What the aborted stream put into the live histograms (TTFT once, ITL per token).
    let ttft_abort = v(&after, "sglang:time_to_first_token_seconds_count")
        - v(&before, "sglang:time_to_first_token_seconds_count");
    let itl_abort = v(&after, "sglang:inter_token_latency_seconds_count")
        - v(&before, "sglang:inter_token_latency_seconds_count");
    assert_eq!(ttft_abort, 1.0);

    // 3. Eight requests that together need ~3x the 512-token pool: retraction, while a
    // poller watches the gauges.
    let poll = {
        let url = format!("http://127.0.0.1:{}/metrics", c.workers[0].system_port);
        let http = c.http.clone();
        tokio::spawn(async move {
            let (mut running, mut usage) = (0f64, 0f64);
            for _ in 0..400 {
                if let Ok(r) = http.get(&url).send().await {
                    let m = r.text().await.unwrap_or_default();
                    running =
                        running.max(metric_value(&m, "sglang:num_running_reqs").unwrap_or(0.0));
                    let u = metric_value(&m, "sglang:token_usage").unwrap_or(0.0);
                    assert!((0.0..=1.0).contains(&u), "token_usage {u}");
                    usage = usage.max(u);
                    if running > 0.0
                        && usage > 0.0
                        && metric_value(&m, "sglang:num_retracted_requests_total").unwrap_or(0.0)
                            > 0.0
                    {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            (running, usage)
        })
    };
    let topics = [
        "tides",
        "volcanoes",
        "glaciers",
        "comets",
        "coral",
        "bees",
        "clouds",
        "salt",
    ];
    let burst = futures::future::join_all(topics.iter().map(|t| {
        let c = &c;
        async move { complete(c, &format!("Write a long essay about {t}."), 160, true).await }
    }))
    .await;
    usages.extend(burst);
    let (running_seen, usage_seen) = poll.await.unwrap();
    assert!(running_seen > 0.0, "num_running_reqs never above 0");
    assert!(usage_seen > 0.0, "token_usage never above 0");

    // 4. Relations once idle.
    let m = wait_metrics(&c, "idle", |m| {
        metric_value(m, "sglang:num_running_reqs") == Some(0.0)
            && metric_value(m, "sglang:num_queue_reqs") == Some(0.0)
    })
    .await;
    let n = usages.len() as f64;
    let sum = |f: fn(&Usage) -> u64| usages.iter().map(f).sum::<u64>() as f64;
    assert_eq!(v(&m, "sglang:prompt_tokens_total"), sum(|u| u.prompt));
    assert_eq!(
        v(&m, "sglang:generation_tokens_total"),
        sum(|u| u.completion)
    );
    assert_eq!(v(&m, "sglang:cached_tokens_total"), sum(|u| u.cached));
    assert_eq!(v(&m, "sglang:num_requests_total"), n);
    for h in [
        "sglang:e2e_request_latency_seconds",
        "sglang:num_retractions",
        "sglang:prompt_tokens_histogram",
        "sglang:generation_tokens_histogram",
    ] {
        assert_eq!(v(&m, &format!("{h}_count")), n, "{h}_count");
    }
    assert_eq!(
        v(&m, "sglang:time_to_first_token_seconds_count"),
        n + ttft_abort
    );
    assert_eq!(
        v(&m, "sglang:inter_token_latency_seconds_count") - itl_abort,
        sum(|u| u.completion) - n,
        "ITL observations = generated tokens - requests"
    );
    assert_eq!(
        v(&m, "sglang:prompt_tokens_histogram_sum"),
        sum(|u| u.prompt)
    );
    assert!(
        v(&m, "sglang:num_retracted_requests_total") > 0.0,
        "no retraction on the small pool"
    );
    assert!(v(&m, "sglang:num_retractions_sum") >= 1.0);
    assert!(v(&m, "sglang:num_retracted_input_tokens_total") > 0.0);
    assert_eq!(v(&m, "sglang:num_running_reqs"), 0.0);
    assert_eq!(v(&m, "sglang:num_used_tokens"), 0.0);
    assert_eq!(v(&m, "sglang:token_usage"), 0.0);
    assert_eq!(v(&m, "sglang:max_total_num_tokens"), 512.0);
    assert_eq!(
        v(&m, "sglang:kv_used_tokens")
            + v(&m, "sglang:kv_available_tokens")
            + v(&m, "sglang:kv_evictable_tokens"),
        512.0
    );
    assert_eq!(v(&m, "sglang:num_pages"), 32.0);
    assert_eq!(v(&m, "sglang:page_size"), 16.0);
    // 512 KV slots of SmolLM2 (30 layers, K and V of 3 × 64 f16 each): 11.8 MB.
    assert_eq!(
        v(&m, "sglang:kv_cache_memory_usage_gb"),
        512.0 * 30.0 * 2.0 * 192.0 * 2.0 / 1e9
    );
    assert!(v(&m, "sglang:weight_memory_usage_gb") > 0.05);
    let hit = v(&m, "sglang:cache_hit_rate");
    assert!((0.0..=1.0).contains(&hit));
    assert!(v(&m, "sglang:engine_load_weights_time") > 0.0);
    assert!(v(&m, "sglang:engine_startup_time") >= v(&m, "sglang:engine_load_weights_time"));
    assert_eq!(v(&m, "dynamo_component_total_blocks"), 32.0);
    assert_eq!(v(&m, "dynamo_component_gpu_cache_usage_percent"), 0.0);
    assert!(v(&m, "dynamo_component_model_load_time_seconds") > 0.0);
    // realtime tokens: every prompt token is either computed or served from the cache, and
    // retraction recomputes some more.
    let rt = |mode: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("sglang:realtime_tokens_total{")
                    && l.contains(&format!("mode=\"{mode}\""))
            })
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
            .sum()
    };
    assert!(rt("prefill_compute") + rt("prefill_cache") >= sum(|u| u.prompt));
    // Each output token but a request's first comes from a decode step, except the one
    // sampled right after a retracted request's recomputation.
    let retracted = v(&m, "sglang:num_retracted_requests_total");
    assert!(rt("decode") + retracted >= sum(|u| u.completion) - n);

    // 5. Label sets and one exposition per family.
    let fams = families(&m);
    let mut sglang = 0;
    for (name, (ty, labels)) in &fams {
        if !name.starts_with("sglang:") {
            continue;
        }
        sglang += 1;
        assert!(!ty.is_empty(), "{name} has no # TYPE");
        let want: BTreeSet<String> = if name == "sglang:cached_tokens_total" {
            ["model_name".to_string(), "cache_source".to_string()].into()
        } else if PER_REQUEST.contains(&name.as_str()) {
            ["model_name".to_string()].into()
        } else {
            let mut w: BTreeSet<String> =
                scheduler_labels().iter().map(|s| s.to_string()).collect();
            match name.as_str() {
                "sglang:per_stage_req_latency_seconds" => w.insert("stage".into()),
                "sglang:realtime_tokens_total" | "sglang:cuda_graph_passes_total" => {
                    w.insert("mode".into())
                }
                "sglang:unpinned_blocks_total" => w.insert("reason".into()),
                _ => false,
            };
            w
        };
        assert_eq!(labels, &want, "labels of {name}");
    }
    assert_eq!(
        sglang,
        54,
        "sglang: families: {:?}",
        fams.keys().collect::<Vec<_>>()
    );
    for line in m.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert_eq!(
            m.matches(&format!("{line}\n")).count(),
            1,
            "duplicated {line}"
        );
    }
    for (name, (_, labels)) in fams.iter().filter(|(n, _)| {
        n.starts_with("dynamo_component_") && *n != "dynamo_component_uptime_seconds"
    }) {
        for l in ["dynamo_namespace", "dynamo_component", "dynamo_endpoint"] {
            assert!(labels.contains(l), "{name} lacks {l}");
        }
    }

    // 6. Frontend families agree with the same traffic (the aborted stream included).
    let f = c.frontend_metrics().await;
    assert_eq!(
        v(&f, "dynamo_frontend_input_sequence_tokens_count"),
        n + 1.0
    );
    assert!(v(&f, "dynamo_frontend_output_sequence_tokens_sum") >= sum(|u| u.completion));
    assert_eq!(
        v(&f, "dynamo_frontend_cached_tokens_sum"),
        sum(|u| u.cached)
    );
    assert_eq!(
        v(&f, "dynamo_frontend_time_to_first_token_seconds_count"),
        n + 1.0
    );
    assert_eq!(v(&f, "dynamo_frontend_model_total_kv_blocks"), 32.0);
    assert_eq!(v(&f, "dynamo_frontend_model_kv_cache_block_size"), 16.0);
    assert_eq!(v(&f, "dynamo_frontend_model_context_length"), 8192.0);
    assert_eq!(v(&f, "dynamo_frontend_inflight_requests"), 0.0);

    // 7. promtool: nothing but the colon lint every sglang: name triggers by design.
    assert_eq!(
        promtool_problems(&m),
        Vec::<String>::new(),
        "worker /metrics"
    );
    assert_eq!(
        promtool_problems(&f),
        Vec::<String>::new(),
        "frontend /metrics"
    );

    // 8. docs/observability/metrics.md lists exactly the live families, with their types.
    docs_match(&fams, &families(&f));

    // 9. A real Prometheus scrapes both and answers the dashboards' queries.
    prometheus_answers(&c).await;
}

fn docs_match(
    worker: &BTreeMap<String, (String, BTreeSet<String>)>,
    frontend: &BTreeMap<String, (String, BTreeSet<String>)>,
) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/observability/metrics.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let mut documented = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && cells[1].starts_with('`') {
            let name = cells[1].trim_matches('`');
            if name.starts_with("sglang:") || name.starts_with("dynamo_") {
                documented.insert(name.to_string(), cells[2].to_string());
            }
        }
    }
    let mut live = BTreeMap::new();
    for (name, (ty, _)) in worker.iter().chain(frontend) {
        if name.starts_with("sglang:") || name.starts_with("dynamo_") {
            live.insert(name.clone(), ty.clone());
        }
    }
    // Families that appear only once something happens that this workload avoids.
    let on_event = [
        "dynamo_frontend_model_migration_total",
        "dynamo_transport_nats_errors_total",
    ];
    for (name, ty) in &live {
        assert_eq!(documented.get(name), Some(ty), "{name} ({ty}) in the docs");
    }
    // Families of `--router-mode kv` (this frontend routes round-robin; tests/tests/e2e/router.rs
    // checks them live).
    let kv_mode = |n: &str| {
        n.starts_with("dynamo_router_")
            || n == "dynamo_component_kv_cache_events_applied"
            || n.starts_with("dynamo_frontend_worker_active_")
    };
    // Families of `--enable-hierarchical-cache` (tests/tests/e2e/hicache.rs checks them live).
    let hicache = |n: &str| super::hicache::HICACHE_FAMILIES.contains(&n);
    for name in documented.keys() {
        assert!(
            live.contains_key(name)
                || on_event.contains(&name.as_str())
                || kv_mode(name)
                || hicache(name),
            "documented {name} is not served"
        );
    }
}

async fn prometheus_answers(c: &Cluster) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = c.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: frontend\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n  - job_name: worker\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            c.http_port, c.workers[0].system_port
        ),
    )
    .unwrap();
    run_ok(Command::new("promtool").args(["check", "config"]).arg(&cfg));
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    let prom = Child::spawn("prometheus", cmd, c.dir.path()).expect("start prometheus");
    // Traffic while Prometheus scrapes, so rates and quantiles have samples.
    let queries = [
        "rate(sglang:generation_tokens_total[1m])",
        "histogram_quantile(0.99, rate(sglang:time_to_first_token_seconds_bucket[1m]))",
        "dynamo_component_gpu_cache_usage_percent",
        "rate(dynamo_frontend_requests_total[1m])",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<&str> = queries.to_vec();
    while !pending.is_empty() {
        complete(c, "Say hello.", 4, false).await;
        let mut still = vec![];
        for q in pending {
            let url = format!("http://127.0.0.1:{port}/api/v1/query");
            let r = c.http.get(&url).query(&[("query", q)]).send().await;
            let ok = match r {
                Ok(r) => {
                    let j: serde_json::Value = r.json().await.unwrap_or_default();
                    j["status"] == "success"
                        && j["data"]["result"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty())
                }
                Err(_) => false,
            };
            if !ok {
                still.push(q);
            }
        }
        pending = still;
        assert!(
            Instant::now() < deadline,
            "Prometheus gave no result for {pending:?}\n{}",
            prom.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
