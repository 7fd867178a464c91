//! The engine half of the device check (`dynamo-engine-check`, run by `tests/gpu/run.sh`):
//! teacher-forced logits of the reference prompts against a reference file (transformers'
//! five best tokens per position, `tests/fixtures/smollm2-transformers/generate.py`), greedy
//! generations through the engine, and timed cells (prefill at given lengths, decode at given
//! batch sizes, host time per step). Every figure lands in one JSON report; nothing here
//! asserts a speed.

use std::time::Instant;

use dynamo_protocols::{PreprocessedRequest, SamplingOptions, StopConditions};
use serde_json::{json, Value};

use crate::executor::{executor, Device};
use crate::kernels::ComputePool;
use crate::model::{load, Logits, SeqInput};
use crate::sampling::argmax;
use crate::{Engine, EngineConfig};

/// What to check.
pub struct CheckConfig {
    pub model: std::path::PathBuf,
    pub device: Device,
    /// Reference file (transformers' top-5 per position); `None`: skip the comparison.
    pub reference: Option<Value>,
    pub prefill_lengths: Vec<usize>,
    pub decode_batches: Vec<usize>,
    pub decode_tokens: usize,
    pub threads: usize,
}

/// Teacher-forced comparison of every reference case: per position, the largest difference
/// over the reference's five best tokens, and top-1 agreement where its best two are more
/// than `noise` apart.
fn compare(cfg: &CheckConfig, reference: &Value, noise: f32) -> Result<Value, String> {
    let w = load(&cfg.model).map_err(|e| e.to_string())?;
    let pool = ComputePool::new(cfg.threads)?;
    let (mut e, _) = executor(cfg.device, w, 64, 16, pool, None).map_err(|e| e.to_string())?;
    let vocab = e.model().vocab;
    let mut cases = Vec::new();
    let (mut worst_all, mut agree, mut decided) = (0f32, 0usize, 0usize);
    for case in reference["cases"].as_array().ok_or("reference: no cases")? {
        let toks: Vec<u32> =
            serde_json::from_value(case["tokens"].clone()).map_err(|e| e.to_string())?;
        let pages: Vec<u32> = (0..toks.len().div_ceil(16) as u32).collect();
        let t0 = Instant::now();
        let logits = e.forward(&[SeqInput {
            tokens: &toks,
            start: 0,
            pages: &pages,
            logits: Logits::All,
        }]);
        let took = t0.elapsed().as_secs_f64() * 1e3;
        let mut worst = 0f32;
        for (pos, top) in case["top"]
            .as_array()
            .ok_or("reference: no top")?
            .iter()
            .enumerate()
        {
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let top: Vec<(usize, f32)> = top
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| Some((e[0].as_u64()? as usize, e[1].as_f64()? as f32)))
                .collect();
            for &(id, v) in &top {
                worst = worst.max((row[id] - v).abs());
            }
            if top.len() > 1 && top[0].1 - top[1].1 > noise {
                decided += 1;
                agree += usize::from(argmax(row) as usize == top[0].0);
            }
        }
        worst_all = worst_all.max(worst);
        cases.push(json!({"tokens": toks.len(), "worst_logit_diff": worst, "forward_ms": took}));
    }
    // Host time per decode step, one sequence: the executor's own account of the time before
    // each step's download (plan, uploads, launches), over 32 steps.
    let toks: Vec<u32> = (0..16).map(|i| 1000 + i * 37).collect();
    let pages: Vec<u32> = (0..4).collect();
    e.forward(&[SeqInput {
        tokens: &toks,
        start: 0,
        pages: &pages,
        logits: Logits::Last,
    }]);
    let (h0, t0) = (e.host_seconds(), Instant::now());
    for i in 16..48 {
        let t = [1000 + i as u32];
        e.forward(&[SeqInput {
            tokens: &t,
            start: i,
            pages: &pages,
            logits: Logits::Last,
        }]);
    }
    let host_ms = (e.host_seconds() - h0) * 1e3 / 32.0;
    let step_ms = t0.elapsed().as_secs_f64() * 1e3 / 32.0;
    Ok(json!({
        "host_ms_per_decode_step": host_ms,
        "ms_per_decode_step": step_ms,
        "cases": cases,
        "worst_logit_diff": worst_all,
        "top1_agreement": if decided == 0 { 1.0 } else { agree as f64 / decided as f64 },
        "decided_positions": decided,
        "noise": noise,
    }))
}

fn engine(cfg: &CheckConfig, tokens: usize, graphs: bool) -> Result<Engine, String> {
    let mut e = EngineConfig::new(&cfg.model);
    e.device = cfg.device;
    e.cuda_graphs = graphs;
    e.threads = cfg.threads;
    e.max_total_tokens = Some(tokens);
    e.max_running_requests = cfg.decode_batches.iter().copied().max().unwrap_or(1).max(1);
    e.chunked_prefill_size = cfg
        .prefill_lengths
        .iter()
        .copied()
        .max()
        .unwrap_or(512)
        .max(512);
    e.enable_prefix_caching = false;
    Engine::load(e).map_err(|e| e.to_string())
}

fn request(prompt: Vec<u32>, max: usize) -> PreprocessedRequest {
    PreprocessedRequest {
        sampling: SamplingOptions {
            temperature: Some(0.0),
            ..Default::default()
        },
        stop: StopConditions {
            max_tokens: Some(max as u32),
            ignore_eos: true,
            ..Default::default()
        },
        ..PreprocessedRequest::new("check", prompt)
    }
}

fn prompt(len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|i| (1000 + (i * 7919 + salt * 104_729) % 30_000) as u32)
        .collect()
}

/// Seconds to the first token of every request and to the end, tokens generated.
fn run(eng: &Engine, reqs: Vec<PreprocessedRequest>) -> Result<(f64, f64, usize), String> {
    let t0 = Instant::now();
    let mut rxs = reqs
        .into_iter()
        .map(|r| eng.generate(r).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut first, mut n) = (0f64, 0usize);
    for rx in rxs.iter_mut() {
        let o = rx.blocking_recv().ok_or("stream ended")?;
        n += o.token_ids.len();
        first = first.max(t0.elapsed().as_secs_f64());
    }
    for rx in rxs.iter_mut() {
        while let Some(o) = rx.blocking_recv() {
            n += o.token_ids.len();
            if o.finish_reason.is_some() {
                break;
            }
        }
    }
    Ok((first, t0.elapsed().as_secs_f64(), n))
}

/// The timed cells: prefill at each length, then decode at each batch size with decode
/// graphs (padded buckets; replayed CUDA graphs on a GPU) and without.
fn bench(cfg: &CheckConfig) -> Result<Value, String> {
    let longest = cfg.prefill_lengths.iter().copied().max().unwrap_or(0);
    let batch = cfg.decode_batches.iter().copied().max().unwrap_or(1);
    let tokens = (longest + 64).max(batch * (128 + cfg.decode_tokens + 16)) + 1024;
    let mut report = json!({});
    for graphs in [true, false] {
        let eng = engine(cfg, tokens, graphs)?;
        run(&eng, vec![request(prompt(64, 99), 8)])?; // warm-up
        if graphs {
            let mut prefill = Vec::new();
            for &len in &cfg.prefill_lengths {
                let (first, _, _) = run(&eng, vec![request(prompt(len, len), 1)])?;
                prefill
                    .push(json!({"tokens": len, "ms": first * 1e3, "tok_s": len as f64 / first}));
            }
            report["prefill"] = json!(prefill);
            report["device"] = json!(eng.info().device);
        }
        let mut decode = Vec::new();
        for &b in &cfg.decode_batches {
            let reqs = (0..b)
                .map(|i| request(prompt(128, 1000 + i), cfg.decode_tokens))
                .collect();
            let (first, end, n) = run(&eng, reqs)?;
            let steps = cfg.decode_tokens.saturating_sub(1).max(1) as f64;
            let step_s = (end - first) / steps;
            // Each step reads every weight once: f16 on a device executor.
            let weight_bytes = eng.info().weights.params as f64 * 2.0;
            decode.push(json!({
                "batch": b,
                "tok_s": (n - b) as f64 / (end - first),
                "ms_per_step": step_s * 1e3,
                "weights_gb_s": weight_bytes / step_s / 1e9,
            }));
        }
        report[if graphs {
            "decode_graphs"
        } else {
            "decode_no_graphs"
        }] = json!(decode);
    }
    Ok(report)
}

/// Greedy continuations of the reference prompts through the engine.
fn greedy(cfg: &CheckConfig, reference: &Value) -> Result<Value, String> {
    let eng = engine(cfg, 4096, true)?;
    let mut out = Vec::new();
    for case in reference["cases"].as_array().into_iter().flatten() {
        let toks: Vec<u32> =
            serde_json::from_value(case["tokens"].clone()).map_err(|e| e.to_string())?;
        let mut rx = eng.generate(request(toks, 16)).map_err(|e| e.to_string())?;
        let mut ids = Vec::new();
        while let Some(o) = rx.blocking_recv() {
            ids.extend(o.token_ids);
        }
        out.push(json!(ids));
    }
    Ok(json!(out))
}

/// Run every part that `cfg` asks for; a part that fails is reported, not fatal.
pub fn run_check(cfg: &CheckConfig) -> Value {
    let part = |r: Result<Value, String>| r.unwrap_or_else(|e| json!({"error": e}));
    let mut report =
        json!({"device": cfg.device.to_string(), "model": cfg.model.display().to_string()});
    if let Some(r) = &cfg.reference {
        report["teacher_forced"] = part(compare(cfg, r, 0.35));
        report["greedy"] = part(greedy(cfg, r));
    }
    if !cfg.prefill_lengths.is_empty() || !cfg.decode_batches.is_empty() {
        report["bench"] = part(bench(cfg));
    }
    report
}
