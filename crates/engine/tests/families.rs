//! Every supported model family against Hugging Face `transformers`: tiny random-weight Llama,
//! Qwen2 (Q/K/V bias) and Qwen3 (per-head Q/K norm, explicit head_dim, tied head) models, each
//! as a safetensors directory and as a GGUF file (`fixtures/tiny/generate.py` wrote them and
//! `reference.json`). For three prompts — short, past two block boundaries, and one that
//! shares the second's first two blocks — the last position's logits are within `TOLERANCE`
//! of transformers' (the engine keeps K/V in f16, transformers in f32) and the greedy
//! continuation is the same; through the engine, the third prompt is served from the
//! second's cached blocks and still continues the same.

use std::path::{Path, PathBuf};

use dynamo_engine::kernels::ComputePool;
use dynamo_engine::kv::KvCache;
use dynamo_engine::model::{load, Logits, Model, Scratch, SeqInput};
use dynamo_engine::{Engine, EngineConfig};
use dynamo_protocols::{EngineOutput, PreprocessedRequest, SamplingOptions, StopConditions};
use serde_json::Value;

/// Largest difference allowed between one of our logits and transformers' (logits here span
/// about ±15; the f16 KV cache is the main source of difference; seen: at most 0.026).
const TOLERANCE: f32 = 0.05;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The family's model files: the safetensors directory and the GGUF file.
fn sources(family: &str) -> [PathBuf; 2] {
    [
        fixtures().join(family),
        fixtures().join(format!("{family}.gguf")),
    ]
}

/// Last-position logits of `prompt` and `steps` greedy tokens, on a fresh cache.
fn run(model: &Model, prompt: &[u32], steps: usize, pool: &ComputePool) -> (Vec<f32>, Vec<u32>) {
    let c = &model.w.cfg;
    let mut kv = KvCache::new(c.layers, 8, 16, c.kv_heads * c.head_dim);
    let pages: Vec<u32> = (0..8).collect();
    let mut s = Scratch::default();
    let mut toks = prompt.to_vec();
    let (mut start, mut first) = (0, None);
    for _ in 0..steps {
        let inp = [SeqInput {
            tokens: &toks[start..],
            start,
            pages: &pages,
            logits: Logits::Last,
        }];
        let logits = model.forward(&mut kv, &inp, &mut s, pool);
        start = toks.len();
        toks.push(dynamo_engine::sampling::argmax(&logits));
        first.get_or_insert(logits);
    }
    (first.unwrap(), toks[prompt.len()..].to_vec())
}

#[test]
fn each_family_matches_transformers_from_safetensors_and_gguf() {
    let r = reference();
    let pool = ComputePool::new(2).unwrap();
    for (family, want) in r["families"].as_object().unwrap() {
        for src in sources(family) {
            let w = load(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
            assert_eq!(w.cfg.architecture, *family, "{}", src.display());
            let model = Model { w };
            for (i, case) in want["cases"].as_array().unwrap().iter().enumerate() {
                let prompt = ids(&case["tokens"]);
                let greedy = ids(&case["greedy"]);
                let (logits, got) = run(&model, &prompt, greedy.len(), &pool);
                let theirs: Vec<f32> = case["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(logits.len(), theirs.len());
                let worst = logits
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst <= TOLERANCE,
                    "{family} {} prompt {i}: logits differ by up to {worst}",
                    src.display()
                );
                assert_eq!(got, greedy, "{family} {} prompt {i}", src.display());
            }
        }
    }
}

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
        ..PreprocessedRequest::new("m", prompt)
    }
}

/// Generated ids and the final usage's cached tokens.
async fn generate(e: &Engine, req: PreprocessedRequest) -> (Vec<u32>, u32) {
    let mut rx = e.generate(req).unwrap();
    let (mut toks, mut cached) = (Vec::new(), 0);
    while let Some(EngineOutput {
        token_ids, usage, ..
    }) = rx.recv().await
    {
        toks.extend(token_ids);
        if let Some(u) = usage {
            cached = u.cached_tokens;
        }
    }
    (toks, cached)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_family_continues_the_same_from_a_cached_prefix() {
    let r = reference();
    for (family, want) in r["families"].as_object().unwrap() {
        for src in sources(family) {
            let mut cfg = EngineConfig::new(src.clone());
            cfg.threads = 2;
            cfg.max_total_tokens = Some(1024);
            let e = Engine::load(cfg).unwrap();
            let cases = want["cases"].as_array().unwrap();
            for (i, case) in cases.iter().enumerate().skip(1) {
                let greedy = ids(&case["greedy"]);
                let (got, cached) =
                    generate(&e, request(ids(&case["tokens"]), greedy.len() as u32)).await;
                assert_eq!(got, greedy, "{family} {} prompt {i}", src.display());
                if i == 2 {
                    assert_eq!(
                        cached,
                        32,
                        "{family} {}: the shared two blocks came from the cache",
                        src.display()
                    );
                }
            }
        }
    }
}
