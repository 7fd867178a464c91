//! Shared by the hierarchical-cache tests: an engine on the real model with a 16-block pool
//! (one 150-token prompt and its answer fit, not two of them), metrics on; greedy requests;
//! prompts that share nothing; reading a family from the engine's registry.

#![allow(dead_code)]

use dynamo_engine::kv::HiCacheConfig;
use dynamo_engine::metrics::MetricsConfig;
use dynamo_engine::{Engine, EngineConfig, EngineStats};
use dynamo_protocols::{PreprocessedRequest, SamplingOptions, StopConditions};

pub fn engine(hicache: Option<HiCacheConfig>) -> Engine {
    engine_on(dynamo_engine::executor::Device::Cpu, hicache)
}

pub fn engine_on(
    device: dynamo_engine::executor::Device,
    hicache: Option<HiCacheConfig>,
) -> Engine {
    let mut cfg = EngineConfig::new(dynamo_test_support::default_model());
    cfg.device = device;
    cfg.threads = 2;
    cfg.max_total_tokens = Some(16 * 16);
    cfg.hicache = hicache;
    cfg.metrics = Some(MetricsConfig::new("m"));
    Engine::load(cfg).unwrap()
}

pub fn request(tokens: Vec<u32>) -> PreprocessedRequest {
    PreprocessedRequest {
        sampling: SamplingOptions {
            temperature: Some(0.0),
            ..Default::default()
        },
        stop: StopConditions {
            max_tokens: Some(8),
            ignore_eos: true,
            ..Default::default()
        },
        ..PreprocessedRequest::new("m", tokens)
    }
}

/// `len` tokens that share no block with another salt's.
pub fn prompt_of(salt: u32, len: u32) -> Vec<u32> {
    (0..len)
        .map(|i| 400 + (i * 31 + salt * 7919) % 20_000)
        .collect()
}

pub fn prompt(salt: u32) -> Vec<u32> {
    prompt_of(salt, 150)
}

/// Generated tokens and cached prompt tokens.
pub async fn run(e: &Engine, tokens: Vec<u32>) -> (Vec<u32>, u32) {
    let mut rx = e.generate(request(tokens)).unwrap();
    let (mut out, mut cached) = (vec![], 0);
    while let Some(o) = rx.recv().await {
        out.extend(o.token_ids);
        if let Some(u) = o.usage {
            cached = u.cached_tokens;
        }
    }
    (out, cached)
}

pub async fn idle(e: &Engine) -> EngineStats {
    for _ in 0..500 {
        let s = e.stats();
        if s.running == 0 && s.waiting == 0 {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("not idle");
}

/// The sum of family `name`'s samples whose labels include every `labels` pair.
pub fn metric(e: &Engine, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = e.metrics().expect("metrics on").render();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let ok = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
