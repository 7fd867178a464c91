//! KV routing against round-robin with two real workers (the default model, one thread each)
//! on the same workload: 8 prefix groups, each a long system prompt shared by its requests,
//! with distinct user turns, sent one at a time over 3 rounds whose order makes round-robin put
//! a group on alternating workers. KV routing must show a higher engine cache hit rate
//! (`sglang:cached_tokens_total / sglang:prompt_tokens_total` over both workers, the quantity
//! `sglang:cache_hit_rate` reports per interval), compared as a ratio of the two runs in this
//! one test. The TTFT p50 of both runs is printed, not asserted: on a 2-core machine with CPU
//! steal it is noise-prone; the TTFT comparison is a benchmark (`tests/bench/router_scale.sh`).

use std::time::{Duration, Instant};

use dynamo_e2e::{Cluster, MODEL};
use serde_json::json;

const GROUPS: usize = 8;
const ROUNDS: usize = 3;

fn system_prompt(g: usize) -> String {
    let topics = [
        "astronomy",
        "baking",
        "chess",
        "databases",
        "ecology",
        "fencing",
        "geology",
        "harmony",
    ];
    format!(
        "You are the {} assistant of team {g}. {}",
        topics[g],
        format!(
            "Answer briefly and precisely about {} for team {g}, cite the basics first, avoid \
             speculation, and keep a friendly tone with every member of the team. ",
            topics[g]
        )
        .repeat(5)
    )
}

struct RunResult {
    hit_rate: f64,
    ttft_p50: f64,
    gauges: Vec<f64>,
}

async fn run(mode: &str) -> RunResult {
    let mut c = Cluster::start(&[("DYN_ROUTER_MODE", mode)]);
    for _ in 0..2 {
        c.add_worker(&["--threads", "1", "--enable-metrics"]);
    }
    c.wait_instances(2, Duration::from_secs(60)).await.unwrap();
    let mut ttfts = vec![];
    for round in 0..ROUNDS {
        // Rotating the group order by one per round alternates round-robin's worker per group.
        let order: Vec<usize> = (0..GROUPS).map(|j| (j + round) % GROUPS).collect();
        for pair in order.chunks(1) {
            let mut tasks = vec![];
            for &g in pair {
                let body = json!({
                    "model": MODEL,
                    "messages": [
                        {"role": "system", "content": system_prompt(g)},
                        {"role": "user", "content": format!("Question {round}: name one fact.")},
                    ],
                    "max_tokens": 2,
                    "stream": true,
                });
                let url = format!("{}/v1/chat/completions", c.url());
                let http = c.http.clone();
                // The frontend answers a stream once the first token is there: the time to
                // the response headers is the TTFT.
                tasks.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = http.post(url).json(&body).send().await.expect("sent");
                    let ttft = t0.elapsed().as_secs_f64();
                    assert_eq!(r.status(), 200);
                    let _ = r.bytes().await;
                    ttft
                }));
            }
            for t in tasks {
                ttfts.push(t.await.unwrap());
            }
        }
    }
    let (mut cached, mut prompt, mut gauges) = (0.0, 0.0, vec![]);
    for w in 0..2 {
        cached += c
            .worker_metric(w, "sglang:cached_tokens_total")
            .await
            .unwrap();
        prompt += c
            .worker_metric(w, "sglang:prompt_tokens_total")
            .await
            .unwrap();
        gauges.push(c.worker_metric(w, "sglang:cache_hit_rate").await.unwrap());
    }
    ttfts.sort_by(f64::total_cmp);
    RunResult {
        hit_rate: cached / prompt,
        ttft_p50: ttfts[ttfts.len() / 2],
        gauges,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_routing_beats_round_robin_on_shared_prefixes() {
    let rr = run("round-robin").await;
    let kv = run("kv").await;
    eprintln!(
        "round-robin: hit rate {:.3} (gauges {:?}), TTFT p50 {:.3} s; kv: hit rate {:.3} \
         (gauges {:?}), TTFT p50 {:.3} s",
        rr.hit_rate, rr.gauges, rr.ttft_p50, kv.hit_rate, kv.gauges, kv.ttft_p50
    );
    let hit_ratio = kv.hit_rate / rr.hit_rate;
    let ttft_ratio = kv.ttft_p50 / rr.ttft_p50;
    eprintln!("kv/round-robin: hit rate ×{hit_ratio:.2}, TTFT p50 ×{ttft_ratio:.2}");
    assert!(
        hit_ratio > 1.1,
        "KV routing hits the cache more: ×{hit_ratio:.2}"
    );
}
