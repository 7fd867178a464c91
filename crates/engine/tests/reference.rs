//! The engine on the real model, without NATS or HTTP: greedy output against llama.cpp's
//! reference ids, batch invariance, prefix caching, retraction on a small pool, cancellation.

use std::path::PathBuf;
use std::time::Duration;

use dynamo_engine::{Engine, EngineConfig};
use dynamo_preprocessor::model::{self, LoadedModel};
use dynamo_protocols::{
    EngineOutput, FinishReason, PreprocessedRequest, SamplingOptions, StopConditions,
};
use tokio::sync::mpsc::UnboundedReceiver;

fn model_path() -> PathBuf {
    dynamo_test_support::default_model()
}

fn tokenizer() -> LoadedModel {
    LoadedModel::load(model::ModelSource::Gguf(model_path())).unwrap()
}

fn engine(f: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(model_path());
    cfg.threads = 2;
    cfg.max_total_tokens = Some(16_384);
    f(&mut cfg);
    Engine::load(cfg).unwrap()
}

fn greedy(tokens: Vec<u32>, max: u32) -> PreprocessedRequest {
    PreprocessedRequest {
        sampling: SamplingOptions {
            temperature: Some(0.0),
            ..Default::default()
        },
        stop: StopConditions {
            max_tokens: Some(max),
            ..Default::default()
        },
        ..PreprocessedRequest::new("m", tokens)
    }
}

/// Tokens (EOS appended when the stream ended on it), finish reason, cached tokens.
async fn collect(
    mut rx: UnboundedReceiver<EngineOutput>,
    eos: u32,
) -> (Vec<u32>, FinishReason, u32) {
    let mut toks = vec![];
    while let Some(o) = rx.recv().await {
        toks.extend(o.token_ids);
        if let Some(r) = o.finish_reason {
            if r == FinishReason::Eos {
                toks.push(eos);
            }
            return (toks, r, o.usage.map_or(0, |u| u.cached_tokens));
        }
    }
    panic!("stream ended without a finish reason");
}

/// llama.cpp's greedy reference; provenance and comparison rule in `tests/fixtures/README.md`.
fn reference() -> serde_json::Value {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2-greedy.json");
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_matches_llama_cpp_reference() {
    let tok = tokenizer();
    let eng = engine(|_| {});
    let eos = eng.info().model.eos_token_ids[0];
    // Exact agreement measured on 2026-12-04 for each prompt, per kernel set (the AVX2 and
    // portable kernels round differently): a numerical regression that loses agreement fails
    // here even where the 0.2 rule below requires little (fibonacci: nothing).
    let floors: [usize; 5] = match eng.info().isa {
        dynamo_engine::kernels::Isa::Avx2 => [19, 10, 21, 11, 7],
        dynamo_engine::kernels::Isa::Portable => [48, 9, 48, 8, 7],
    };
    let cases = reference()["cases"].as_array().unwrap().clone();
    assert_eq!(cases.len(), floors.len(), "one floor per reference prompt");
    for (case, floor) in cases.iter().zip(floors) {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let near_tie = case["tokens_before_first_near_tie"].as_u64().unwrap() as usize;
        let gaps: Vec<f64> = serde_json::from_value(case["top2_logprob_gap"].clone()).unwrap();
        // Steps where llama.cpp's own top-2 gap is below NOISE are decided by rounding: on
        // this model, evaluations that differ only in where they round (f16 vs f32 K/V,
        // activation quantization; llama.cpp vs candle 0.11 vs this engine) move top-2 gaps
        // by 0.1–0.3. Exact agreement is required up to the first such step; the teacher-
        // forced test below checks every step of the reference.
        const NOISE: f64 = 0.2;
        let exact = gaps.iter().position(|&g| g < NOISE).unwrap_or(gaps.len());
        let ids = tok.tokenizer.encode(prompt).unwrap();
        let rx = eng.generate(greedy(ids, want.len() as u32)).unwrap();
        let (got, _, _) = collect(rx, eos).await;
        let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{prompt:?}: matches {agree}/{} tokens (required {exact}; llama.cpp's first gap < 0.05 at {near_tie})",
            want.len()
        );
        assert!(
            agree >= exact.min(want.len()),
            "{prompt:?}: diverged at token {agree}, before the first near-tie at {exact}\n got {got:?}\nwant {want:?}"
        );
        assert!(
            agree >= floor,
            "{prompt:?}: agrees on {agree} tokens, fewer than the {floor} measured ({:?} kernels)",
            eng.info().isa
        );
    }
}

fn prompt_ids(tok: &LoadedModel, i: usize, shared: &str) -> Vec<u32> {
    let text = format!(
        "{shared}Question {i}: name {} animals that live in {}.",
        i + 2,
        [
            "the sea",
            "forests",
            "deserts",
            "the arctic",
            "rivers",
            "caves",
            "mountains",
            "cities"
        ][i % 8]
    );
    tok.tokenizer.encode(&text.repeat(1 + i % 3)).unwrap()
}

async fn run_all(eng: &Engine, prompts: &[Vec<u32>], max: u32) -> Vec<Vec<u32>> {
    run_reqs(
        eng,
        prompts.iter().map(|p| greedy(p.clone(), max)).collect(),
    )
    .await
}

async fn run_reqs(eng: &Engine, reqs: Vec<PreprocessedRequest>) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = reqs.into_iter().map(|r| eng.generate(r).unwrap()).collect();
    let mut out = vec![];
    for rx in rxs {
        out.push(collect(rx, 2).await.0);
    }
    out
}

/// Feed llama.cpp's continuation token by token: at every step its token must be this
/// engine's top choice or within NOISE logits of it. Measured (2026-11-28): top choice at
/// 194 of 199 steps; the 5 others are 0.20 and 0.31 behind at two steps the reference itself
/// marks as near-ties (gap < 0.05), 0.32 at the step where llama.cpp on this machine also
/// leaves the reference, and under 0.15 elsewhere.
#[test]
fn reference_tokens_are_top_choices_under_teacher_forcing() {
    use dynamo_engine::kv::KvCache;
    use dynamo_engine::model::{load, Logits, Model, Scratch, SeqInput};
    const NOISE: f32 = 0.35;
    let tok = tokenizer();
    let w = load(&model_path()).unwrap();
    let c = w.cfg.clone();
    let model = Model { w };
    let pool = rayon_pool();
    let (mut steps, mut top1) = (0, 0);
    for case in reference()["cases"].as_array().unwrap() {
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).unwrap();
        let mut toks = tok
            .tokenizer
            .encode(case["prompt"].as_str().unwrap())
            .unwrap();
        let mut kv = KvCache::new(c.layers, 8, 16, c.kv_heads * c.head_dim);
        let pages: Vec<u32> = (0..8).collect();
        let mut s = Scratch::default();
        let mut start = 0;
        for (i, &next) in want.iter().enumerate() {
            let inp = [SeqInput {
                tokens: &toks[start..],
                start,
                pages: &pages,
                logits: Logits::Last,
            }];
            let logits = model.forward(&mut kv, &inp, &mut s, &pool);
            start = toks.len();
            let best = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let behind = best - logits[next as usize];
            assert!(
                behind <= NOISE,
                "{:?} step {i}: llama.cpp's token {next} is {behind:.3} logits behind our best",
                case["prompt"]
            );
            steps += 1;
            top1 += usize::from(behind == 0.0);
            toks.push(next);
        }
    }
    eprintln!("teacher-forced: llama.cpp's token is our top choice at {top1}/{steps} steps");
    assert!(
        top1 * 100 >= steps * 95,
        "top-1 agreement {top1}/{steps} below 95%"
    );
}

fn rayon_pool() -> dynamo_engine::kernels::ComputePool {
    dynamo_engine::kernels::ComputePool::new(2).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_invariance_with_and_without_shared_prefix() {
    let tok = tokenizer();
    // Small chunks so prompts are split and mixed with other sequences' decode steps.
    let eng = engine(|c| c.chunked_prefill_size = 24);
    let shared = "You are a careful assistant. Answer briefly and precisely, in one sentence. ";
    for prefix in ["", shared] {
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt_ids(&tok, i, prefix)).collect();
        let batched = run_all(&eng, &prompts, 12).await;
        let eng_alone = engine(|c| c.enable_prefix_caching = false);
        for (i, p) in prompts.iter().enumerate() {
            let alone = run_all(&eng_alone, std::slice::from_ref(p), 12).await;
            assert_eq!(
                alone[0],
                batched[i],
                "prompt {i} (prefix {:?}) differs alone vs batched",
                !prefix.is_empty()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_prefix_is_served_from_cache() {
    let eng = engine(|_| {});
    let prefix: Vec<u32> = (0..200).map(|i| 1000 + (i * 7) % 5000).collect();
    let mut a = prefix.clone();
    a.extend([42, 43, 44]);
    let mut b = prefix.clone();
    b.extend([52, 53, 54, 55]);
    let (_, _, cached_a) = collect(eng.generate(greedy(a, 4)).unwrap(), 2).await;
    let before = eng.stats().prefill_tokens;
    let (_, _, cached_b) = collect(eng.generate(greedy(b, 4)).unwrap(), 2).await;
    let computed = eng.stats().prefill_tokens - before;
    assert_eq!(cached_a, 0);
    assert_eq!(
        cached_b, 200,
        "the shared 200-token prefix: 12 full blocks and 8 tokens of a's last block"
    );
    assert_eq!(computed, 204 - 200, "only the rest is prefilled");
}

/// Token-granular prefix reuse: a repeated prompt computes only its last token (the rest,
/// its partial last block included, comes from the cache, whether that block was kept as an
/// ended request's tail or became full during decoding); a prompt diverging inside a cached
/// block reuses the block's matching tokens; the output is what a cold engine gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_and_mid_block_prompts_reuse_every_matching_token() {
    let eng = engine(|_| {});
    let cold = engine(|_| {});
    let run = async |e: &Engine, p: &Vec<u32>, max: u32| {
        let before = e.stats().prefill_tokens;
        let (toks, _, cached) = collect(e.generate(greedy(p.clone(), max)).unwrap(), 2).await;
        (toks, cached, e.stats().prefill_tokens - before)
    };
    for (max, what) in [
        (4, "an ended request's tail"),
        (40, "a block filled by decoding"),
    ] {
        // A fresh 134-token prompt per case.
        let p: Vec<u32> = (0..134).map(|i| 1000 + (i * 11 + max * 7) % 7000).collect();
        let (first, cached, _) = run(&eng, &p, max).await;
        assert_eq!(cached, 0);
        let (again, cached, computed) = run(&eng, &p, max).await;
        assert_eq!(cached as usize, p.len() - 1, "{what}");
        assert_eq!(computed, 1, "{what}: only the last token is prefilled");
        assert_eq!(again, first, "{what}");
        // Diverging inside the last block: its matching tokens are reused.
        let mut q = p.clone();
        let n = q.len();
        q[n - 3] = 6000 + max;
        let (out, cached, computed) = run(&eng, &q, max).await;
        assert_eq!(cached as usize, n - 3, "{what}: up to the changed token");
        assert_eq!(computed, 3);
        assert_eq!(out, run(&cold, &q, max).await.0, "{what}: as computed cold");
    }
    // A prompt of whole blocks, repeated: its last block is cached full; 31 of 32 reused.
    let p: Vec<u32> = (0..32).map(|i| 2000 + i * 3).collect();
    let (first, _, _) = run(&eng, &p, 4).await;
    let (again, cached, computed) = run(&eng, &p, 4).await;
    assert_eq!((cached, computed), (31, 1));
    assert_eq!(again, first);
}

/// Log probabilities come from the raw logits: at temperature 0 the sampled token is the best
/// alternative and its logprob that alternative's; at a high temperature (a flatter sampling
/// distribution) the reported values are the same raw ones; none without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_the_raw_distribution_of_each_generated_token() {
    let eng = engine(|_| {});
    let tok = tokenizer();
    let prompt = tok.tokenizer.encode("The capital of France is").unwrap();
    let outputs = async |req: PreprocessedRequest| {
        let mut rx = eng.generate(req).unwrap();
        let mut all = vec![];
        while let Some(o) = rx.recv().await {
            all.push(o);
        }
        all
    };
    let mut req = greedy(prompt.clone(), 6);
    req.stop.ignore_eos = true;
    req.logprobs = Some(5);
    let greedy_out = outputs(req.clone()).await;
    let mut n = 0;
    for o in &greedy_out {
        assert_eq!(o.logprobs.len(), o.token_ids.len(), "{o:?}");
        for (id, lp) in o.token_ids.iter().zip(&o.logprobs) {
            n += 1;
            assert_eq!(lp.top.len(), 5);
            assert_eq!(lp.top[0].0, *id, "greedy samples the best token");
            assert_eq!(lp.top[0].1, lp.logprob);
            assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1), "{lp:?}");
            let mass: f32 = lp.top.iter().map(|t| t.1.exp()).sum();
            assert!(lp.logprob <= 0.0 && mass <= 1.0 + 1e-4, "{lp:?}");
        }
    }
    assert_eq!(n, 6);
    // The same first position at temperature 1.9: the raw values, not the flattened ones.
    req.sampling.temperature = Some(1.9);
    req.sampling.seed = Some(7);
    let hot = outputs(req.clone()).await;
    let (a, b) = (&greedy_out[0].logprobs[0], &hot[0].logprobs[0]);
    assert_eq!(
        a.top, b.top,
        "position 0's alternatives do not depend on temperature"
    );
    // Not asked: none.
    req.logprobs = None;
    assert!(outputs(req).await.iter().all(|o| o.logprobs.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retraction_on_a_small_pool_keeps_every_token() {
    let tok = tokenizer();
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt_ids(&tok, i, "")).collect();
    let reqs = || -> Vec<PreprocessedRequest> {
        prompts
            .iter()
            .map(|p| {
                let mut r = greedy(p.clone(), 60);
                r.stop.ignore_eos = true;
                r
            })
            .collect()
    };
    let big = engine(|_| {});
    let want = run_reqs(&big, reqs()).await;
    drop(big);
    // Each sequence grows to 5–7 blocks; 12 blocks hold two at a time, so admitted
    // sequences run out of blocks while decoding and the youngest are retracted.
    let small = engine(|c| c.max_total_tokens = Some(16 * 12));
    let got = run_reqs(&small, reqs()).await;
    let lens: Vec<(usize, usize)> = prompts
        .iter()
        .zip(&want)
        .map(|(p, w)| (p.len(), w.len()))
        .collect();
    assert!(
        small.stats().retractions > 0,
        "the small pool forced retractions: {:?} {lens:?}",
        small.stats()
    );
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_under_load_frees_every_block() {
    let eng = engine(|c| c.max_total_tokens = Some(4096));
    let mut keep = vec![];
    for i in 0..6u32 {
        let p: Vec<u32> = (0..60).map(|t| 500 + t + i * 61).collect();
        let mut rx = eng.generate(greedy(p, 200)).unwrap();
        // Wait for the first token, then drop half of them mid-stream.
        let first = rx.recv().await.unwrap();
        assert_eq!(first.token_ids.len(), 1);
        if i % 2 == 0 {
            drop(rx);
        } else {
            keep.push(rx);
        }
    }
    drop(keep);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = eng.stats();
        if s.running == 0
            && s.waiting == 0
            && s.pool.private_in_use == 0
            && s.pool.shared_in_use == 0
        {
            assert_eq!(s.pool.free + s.pool.evictable, s.pool.total);
            // Cancelled, not run to completion: all six ended as cancellations, and far
            // fewer tokens were decoded than the 6 x 200 a natural finish needs.
            assert_eq!((s.cancelled, s.finished), (6, 0), "{s:?}");
            assert!(s.decode_tokens < 6 * 200 / 4, "{s:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks still referenced: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
