//! Engine benchmark (no NATS, no HTTP), the cells llama.cpp's tools measure: prefill tok/s of
//! a 512-token prompt (`llama-bench -p 512`), decode tok/s of one sequence (`-n 128`), and
//! aggregate decode tok/s of 4 and 8 concurrent sequences with 128-token prompts and 128
//! output tokens (`llama-batched-bench -npp 128 -ntg 128`). Prints one `RESULT name value`
//! line per cell for `tests/bench/engine_vs_llamacpp.sh`.
//!
//! The `agg8` cell (aggregate tok/s of 8 sequences) is the one `tests/bench/metrics_overhead.sh`
//! runs with `DYN_BENCH_METRICS=0` and `1`.
//!
//! The `choices4` cell (opt-in) is what `n = 4` costs: one request for four sampled choices of
//! a 512-token prompt against four requests for one choice each, sent together, and against
//! one request for one choice (alternated, median of 3 rounds each).
//!
//! `cargo bench -p dynamo-engine --bench engine` (env: `DYN_BENCH_MODEL`, `DYN_BENCH_THREADS`,
//! `DYN_BENCH_METRICS`,
//! `DYN_BENCH_ONLY=prefill512,decode1,decode4,decode8,agg8,choices4`).

use std::time::Instant;

use dynamo_engine::metrics::MetricsConfig;
use dynamo_engine::{Engine, EngineConfig};
use dynamo_protocols::{PreprocessedRequest, SamplingOptions, StopConditions};

fn request(prompt: Vec<u32>, max: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        sampling: SamplingOptions {
            temperature: Some(0.0),
            ..Default::default()
        },
        stop: StopConditions {
            max_tokens: Some(max),
            ignore_eos: true,
            ..Default::default()
        },
        ..PreprocessedRequest::new("bench", prompt)
    }
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    let mut x = 0x9E37_79B9u32 ^ salt.wrapping_mul(0x85EB_CA6B);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            1000 + x % 30_000
        })
        .collect()
}

/// Run `n` concurrent requests; returns (seconds until every sequence had its first token,
/// seconds until all finished, tokens generated).
fn run(eng: &Engine, prompts: Vec<Vec<u32>>, max: u32) -> (f64, f64, usize) {
    let t0 = Instant::now();
    let mut rxs: Vec<_> = prompts
        .into_iter()
        .map(|p| eng.generate(request(p, max)).expect("request accepted"))
        .collect();
    let mut first = 0f64;
    let mut total = 0;
    for rx in rxs.iter_mut() {
        let o = rx.blocking_recv().expect("first token");
        total += o.token_ids.len();
        first = first.max(t0.elapsed().as_secs_f64());
    }
    for rx in rxs.iter_mut() {
        while let Some(o) = rx.blocking_recv() {
            total += o.token_ids.len();
            if o.finish_reason.is_some() {
                break;
            }
        }
    }
    (first, t0.elapsed().as_secs_f64(), total)
}

fn main() {
    let model = std::env::var("DYN_BENCH_MODEL").unwrap_or_else(|_| {
        format!(
            "{}/.cache/dynamo/models/SmolLM2-135M-Instruct.Q4_1.gguf",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let threads: usize = std::env::var("DYN_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let mut cfg = EngineConfig::new(&model);
    cfg.threads = threads;
    cfg.chunked_prefill_size = 1024;
    cfg.max_total_tokens = Some(16_384);
    cfg.enable_prefix_caching = false;
    if std::env::var("DYN_BENCH_METRICS").is_ok_and(|v| v == "1") {
        cfg.metrics = Some(MetricsConfig::new("bench"));
    }
    let eng = Engine::load(cfg).expect("model loads (run ./launch/agg.sh or tests/run.sh once)");
    println!("# {model}, {threads} threads, kernels {:?}", eng.info().isa);
    // Warm up buffers and pages.
    run(&eng, vec![prompt(64, 99)], 8);

    let only = std::env::var("DYN_BENCH_ONLY").unwrap_or_default();
    let want = |cell: &str| only.is_empty() || only.split(',').any(|c| c == cell);
    let reps = if want("prefill512") { 3 } else { 0 };
    let mut best = f64::MAX;
    for r in 0..reps {
        let (first, _, _) = run(&eng, vec![prompt(512, r)], 1);
        best = best.min(first);
    }
    if reps > 0 {
        println!("RESULT prefill512_tok_s {:.1}", 512.0 / best);
    }
    if want("decode1") {
        // Mean of three runs (llama-bench averages its repetitions too).
        let rates: Vec<f64> = (0..3)
            .map(|r| {
                let (first, end, n) = run(&eng, vec![prompt(16, 7 + r)], 128);
                (n - 1) as f64 / (end - first)
            })
            .collect();
        println!(
            "RESULT decode1_tok_s {:.1}",
            rates.iter().sum::<f64>() / 3.0
        );
    }
    for batch in [4usize, 8] {
        if !want(&format!("decode{batch}")) {
            continue;
        }
        let prompts = (0..batch).map(|i| prompt(128, 100 + i as u32)).collect();
        let (first, end, n) = run(&eng, prompts, 128);
        println!(
            "RESULT decode{batch}_tok_s {:.1}",
            (n - batch) as f64 / (end - first)
        );
        println!("RESULT total{batch}_tok_s {:.1}", n as f64 / end);
    }
    if only.split(',').any(|c| c == "agg8") {
        aggregate8(&eng);
    }
    if only.split(',').any(|c| c == "choices4") {
        choices4(&eng);
    }
}

/// Seconds to finish `copies` requests of `n` sampled choices each, all sent at once.
fn sampled(eng: &Engine, prompt: &[u32], n: u32, copies: usize, max: u32) -> f64 {
    let t0 = Instant::now();
    let mut rxs: Vec<_> = (0..copies)
        .map(|i| {
            let mut r = request(prompt.to_vec(), max);
            r.n = n;
            r.sampling.temperature = Some(0.8);
            r.sampling.seed = Some(i as u64 * 1000);
            eng.generate(r).expect("request accepted")
        })
        .collect();
    for rx in rxs.iter_mut() {
        let mut finished = 0;
        while let Some(o) = rx.blocking_recv() {
            finished += u32::from(o.finish_reason.is_some());
            if finished == n {
                break;
            }
        }
    }
    t0.elapsed().as_secs_f64()
}

/// `n = 4` on one request against four single-choice requests and one (512-token prompt, 64
/// tokens per choice).
fn choices4(eng: &Engine) {
    let p = prompt(512, 77);
    let (mut one4, mut four1, mut one1) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        one4.push(sampled(eng, &p, 4, 1, 64));
        four1.push(sampled(eng, &p, 1, 4, 64));
        one1.push(sampled(eng, &p, 1, 1, 64));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[1]
    };
    let (a, b, c) = (median(&mut one4), median(&mut four1), median(&mut one1));
    println!("RESULT choices4_n4_s {a:.3}");
    println!("RESULT choices4_four_requests_s {b:.3}");
    println!("RESULT choices4_n1_s {c:.3}");
    println!("RESULT choices4_n4_over_four_requests {:.2}", a / b);
    println!("RESULT choices4_n4_over_n1 {:.2}", a / c);
}

/// Aggregate tok/s of 8 concurrent sequences (128-token prompts, 64 output tokens), median of
/// 3 rounds, on this engine (`--enable-metrics` when `DYN_BENCH_METRICS=1`).
/// `tests/bench/metrics_overhead.sh` alternates processes with metrics off and on: two engines
/// in one process run at different speeds (up to 13% apart with identical settings here), so
/// the comparison is between processes.
fn aggregate8(eng: &Engine) {
    let mut rates: Vec<f64> = (0..3u32)
        .map(|r| {
            let prompts = (0..8).map(|i| prompt(128, 200 + 8 * r + i)).collect();
            let (_, end, n) = run(eng, prompts, 64);
            n as f64 / end
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!("RESULT agg8_tok_s {:.1}", rates[1]);
}
