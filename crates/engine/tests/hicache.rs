//! The host tier on the real model: with a KV pool too small for the working set, a long
//! prompt's blocks leave the pool under a flood of other prompts; without the host tier its
//! repeat is computed again, with it the repeat's full blocks are loaded back (its
//! `cached_tokens` count them, the engine computes only the tokens past them) and the output
//! is identical.

use dynamo_engine::engine::HiCacheConfig;
use dynamo_engine::{Engine, EngineConfig};
use dynamo_protocols::{PreprocessedRequest, SamplingOptions, StopConditions};

fn engine(hicache: bool) -> Engine {
    let mut cfg = EngineConfig::new(dynamo_test_support::default_model());
    cfg.threads = 2;
    // 16 blocks: one 150-token prompt (10 blocks) and its answer fit, not two of them.
    cfg.max_total_tokens = Some(16 * 16);
    cfg.hicache = hicache.then_some(HiCacheConfig {
        ratio: 4.0,
        size_bytes: None,
    });
    Engine::load(cfg).unwrap()
}

fn request(tokens: Vec<u32>) -> PreprocessedRequest {
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

fn prompt(salt: u32) -> Vec<u32> {
    (0..150)
        .map(|i| 400 + (i * 31 + salt * 7919) % 20_000)
        .collect()
}

/// Generated tokens and cached prompt tokens.
async fn run(e: &Engine, tokens: Vec<u32>) -> (Vec<u32>, u32) {
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

async fn idle(e: &Engine) -> dynamo_engine::EngineStats {
    for _ in 0..200 {
        let s = e.stats();
        if s.running == 0 && s.waiting == 0 {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("not idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_prefix_is_loaded_back_from_the_host_tier() {
    for hicache in [false, true] {
        let e = engine(hicache);
        let (first, _) = run(&e, prompt(0)).await;
        // Two other long prompts push the first one's blocks out of the pool.
        for salt in 1..3 {
            run(&e, prompt(salt)).await;
        }
        let before = idle(&e).await;
        let (again, cached) = run(&e, prompt(0)).await;
        let after = idle(&e).await;
        assert_eq!(again, first, "hicache {hicache}: the same greedy output");
        let computed = after.prefill_tokens - before.prefill_tokens;
        if hicache {
            assert!(after.host_backups > 0, "{after:?}");
            assert_eq!(
                after.host_loads, 9,
                "the prompt's 9 full blocks came back: {after:?}"
            );
            // The 6 tokens past the last full block were a partial tail, which the host tier
            // does not keep: they are computed again.
            assert_eq!(cached, 144, "the prompt's full blocks were reused");
            assert_eq!(computed, 6);
        } else {
            assert_eq!(after.host_backups, 0);
            assert_eq!(cached, 0, "without the host tier the prefix was gone");
            assert_eq!(computed, 150);
        }
    }
}
