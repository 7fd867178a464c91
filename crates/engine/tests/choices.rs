//! Several results from one prompt on the real model: `n` choices computed from one prefill
//! (prompt tokens counted once, KV shared), each choice reproducible from `seed + index`,
//! forked choices surviving retraction on a small pool; and the prompt's own tokens' log
//! probabilities, computed in full even when the prompt is cached.

use std::collections::BTreeMap;

use dynamo_engine::{Engine, EngineConfig};
use dynamo_preprocessor::model::{self, LoadedModel};
use dynamo_protocols::{EngineOutput, PreprocessedRequest, SamplingOptions, StopConditions};

fn engine(f: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(dynamo_test_support::default_model());
    cfg.threads = 2;
    cfg.max_total_tokens = Some(16_384);
    f(&mut cfg);
    Engine::load(cfg).unwrap()
}

fn prompt(text: &str) -> Vec<u32> {
    let m = LoadedModel::load(model::ModelSource::Gguf(
        dynamo_test_support::default_model(),
    ))
    .unwrap();
    m.tokenizer.encode(text).unwrap()
}

/// A 40-odd token prompt: two full blocks and a partial third.
const PROMPT: &str = "Here is a list of the eight planets of the solar system, in order from \
    the sun, with one surprising fact about each of them, written as a short sentence that a \
    child could read:";

/// The engine's statistics once it has gone idle (they are published per iteration).
async fn settled(eng: &Engine) -> dynamo_engine::EngineStats {
    for _ in 0..200 {
        let s = eng.stats();
        if s.running == 0 && s.waiting == 0 {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the engine did not go idle: {:?}", eng.stats());
}

fn request(
    tokens: Vec<u32>,
    max: u32,
    n: u32,
    temperature: f32,
    seed: Option<u64>,
) -> PreprocessedRequest {
    PreprocessedRequest {
        sampling: SamplingOptions {
            temperature: Some(temperature),
            seed,
            ..Default::default()
        },
        stop: StopConditions {
            max_tokens: Some(max),
            ignore_eos: true,
            ..Default::default()
        },
        n,
        ..PreprocessedRequest::new("m", tokens)
    }
}

/// Every item of the request's stream.
async fn outputs(eng: &Engine, req: PreprocessedRequest) -> Vec<EngineOutput> {
    let mut rx = eng.generate(req).unwrap();
    let mut all = vec![];
    while let Some(o) = rx.recv().await {
        all.push(o);
    }
    all
}

/// Each choice's tokens, with its finish count checked: one finish reason per choice.
fn by_choice(items: &[EngineOutput]) -> BTreeMap<u32, Vec<u32>> {
    let mut m: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut finished: BTreeMap<u32, usize> = BTreeMap::new();
    for o in items {
        m.entry(o.index).or_default().extend(&o.token_ids);
        if o.finish_reason.is_some() {
            *finished.entry(o.index).or_default() += 1;
        }
    }
    assert!(finished.values().all(|&c| c == 1), "{finished:?}");
    assert_eq!(finished.len(), m.len());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_come_from_one_prefill() {
    let p = prompt(PROMPT);
    assert!(p.len() > 32 && !p.len().is_multiple_of(16), "{}", p.len());
    let alone = engine(|_| {});
    let want = by_choice(&outputs(&alone, request(p.clone(), 8, 1, 0.0, None)).await)[&0].clone();
    drop(alone);

    let eng = engine(|_| {});
    let items = outputs(&eng, request(p.clone(), 8, 4, 0.0, None)).await;
    let got = by_choice(&items);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    for (i, toks) in &got {
        assert_eq!(
            toks, &want,
            "greedy choice {i} equals the single greedy answer"
        );
    }
    let s = settled(&eng).await;
    assert_eq!(
        s.prefill_tokens,
        p.len() as u64,
        "the prompt was computed once for four choices"
    );
    assert_eq!(
        s.decode_tokens,
        4 * 7,
        "each choice decodes its 7 later tokens"
    );
    assert_eq!(s.finished, 4);
    let usages: Vec<_> = items
        .iter()
        .filter_map(|o| o.usage.filter(|_| o.finish_reason.is_some()))
        .collect();
    assert_eq!(usages.len(), 4);
    assert!(usages
        .iter()
        .all(|u| u.prompt_tokens == p.len() as u32 && u.completion_tokens == 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_choice_is_reproducible_from_its_seed() {
    let p = prompt(PROMPT);
    let eng = engine(|_| {});
    let first = by_choice(&outputs(&eng, request(p.clone(), 12, 3, 1.0, Some(11))).await);
    let again = by_choice(&outputs(&eng, request(p.clone(), 12, 3, 1.0, Some(11))).await);
    assert_eq!(first, again, "the same seed gives the same choices");
    assert!(
        first[&0] != first[&1] || first[&1] != first[&2],
        "choices sample independently: {first:?}"
    );
    for i in 0..3u32 {
        let one = by_choice(
            &outputs(
                &eng,
                request(p.clone(), 12, 1, 1.0, Some(11 + u64::from(i))),
            )
            .await,
        );
        assert_eq!(
            one[&0],
            first[&i],
            "choice {i} is the single request seeded {}",
            11 + i
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_choices_survive_retraction_on_a_small_pool() {
    let p = prompt(PROMPT);
    // Sampled: greedy choices would be one sequence, whose blocks the cache deduplicates.
    let req = || request(p.clone(), 60, 4, 0.8, Some(5));
    let want = by_choice(&outputs(&engine(|_| {}), req()).await);
    // Each choice grows to 7 blocks; 12 blocks cannot hold four at once (they share two
    // prompt blocks), so choices are retracted and recompute their KV from the cache.
    let small = engine(|c| c.max_total_tokens = Some(16 * 12));
    let got = by_choice(&outputs(&small, req()).await);
    let stats = settled(&small).await;
    assert!(stats.retractions > 0, "{stats:?}");
    assert_eq!(got.len(), 4);
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_logprobs_score_every_prompt_token_from_its_prefix() {
    let p = prompt(PROMPT);
    let eng = engine(|_| {});
    let mut req = request(p.clone(), 1, 1, 0.0, None);
    req.prompt_logprobs = Some(2);
    let items = outputs(&eng, req.clone()).await;
    let lp = &items[0].prompt_logprobs;
    assert_eq!(
        lp.len(),
        p.len() - 1,
        "one entry per prompt token after the first"
    );
    assert!(items[1..].iter().all(|o| o.prompt_logprobs.is_empty()));
    assert!(lp.iter().all(|l| l.logprob <= 0.0 && l.top.len() == 2));
    // Position j's entry scores token j from tokens ..j: the same distribution a generation
    // from that prefix sees (its top alternatives), within rounding of a different batch.
    for j in [1, 17, p.len() - 1] {
        let mut g = request(p[..j].to_vec(), 1, 1, 0.0, None);
        g.logprobs = Some(2);
        let o = outputs(&eng, g).await;
        let top = &o[0].logprobs[0].top;
        let mine = &lp[j - 1].top;
        for (a, b) in top.iter().zip(mine) {
            assert_eq!(a.0, b.0, "position {j}: {top:?} vs {mine:?}");
            assert!(
                (a.1 - b.1).abs() < 2e-2,
                "position {j}: {top:?} vs {mine:?}"
            );
        }
        if top[0].0 == p[j] {
            assert!((lp[j - 1].logprob - top[0].1).abs() < 2e-2);
        }
    }
    // Cached now, yet computed again in full: the same values, no cached tokens.
    let again = outputs(&eng, req).await;
    assert_eq!(&again[0].prompt_logprobs, lp);
    assert_eq!(again[0].usage.unwrap().cached_tokens, 0);
}
