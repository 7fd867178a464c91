//! Pinning on the real model (16-block pool): a pinned prompt survives a flood that evicts
//! everything else and is served from the cache after it; without the pin it is computed
//! again. A pin expires after its TTL; unpinning releases it; pins that would leave a waiting
//! request no room are released rather than stall it; with a host tier a pinned block leaves
//! the pool for the host tier even under the selective write policy; a request's own pin TTL
//! pins its prompt.

mod hier;

use std::time::Duration;

use dynamo_engine::kv::{HiCacheConfig, WritePolicy};
use dynamo_engine::Engine;
use hier::{engine, idle, metric, prompt, prompt_of, run};

/// The sequence hash of `tokens`' last full block.
fn last_hash(tokens: &[u32]) -> u64 {
    use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
    *sequence_hashes(&block_hashes(tokens, 16))
        .last()
        .expect("a full block")
}

/// 100 tokens: 6 full blocks, within the pin limit of half the pool.
fn short() -> Vec<u32> {
    prompt_of(0, 100)
}

async fn flood(e: &Engine) {
    for salt in 1..3 {
        run(e, prompt(salt)).await;
    }
    idle(e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_prefix_survives_a_flood_until_unpinned_or_expired() {
    let e = engine(None);
    // Control: unpinned, the flood evicts it.
    run(&e, short()).await;
    flood(&e).await;
    assert_eq!(run(&e, short()).await.1, 0, "unpinned: computed again");

    // That run cached it again: pin it.
    let pinned = e
        .pin_blocks(vec![last_hash(&short())], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(pinned, 1);
    assert_eq!(
        metric(&e, "sglang:pinned_tokens", &[]),
        96.0,
        "6 blocks with ancestors"
    );
    flood(&e).await;
    let (_, cached) = run(&e, short()).await;
    assert!(cached >= 96, "pinned: served from the pool ({cached})");
    assert_eq!(metric(&e, "sglang:num_retracted_requests_total", &[]), 0.0);

    // Unpinned, it goes with the next flood.
    assert_eq!(e.unpin_blocks(vec![last_hash(&short())]).await.unwrap(), 1);
    assert_eq!(metric(&e, "sglang:pinned_tokens", &[]), 0.0);
    assert_eq!(
        metric(&e, "sglang:unpinned_blocks_total", &[("reason", "request")]),
        6.0
    );
    flood(&e).await;
    assert_eq!(run(&e, short()).await.1, 0);

    // A pin expires after its TTL, idle or not.
    let n = e
        .pin_blocks(vec![last_hash(&short())], Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(n, 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(&e, "sglang:pinned_tokens", &[]), 0.0);
    assert_eq!(
        metric(&e, "sglang:unpinned_blocks_total", &[("reason", "expired")]),
        6.0
    );
    // Unknown blocks are not pinned.
    assert_eq!(
        e.pin_blocks(vec![42], Duration::from_secs(5))
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_never_stall_a_request_that_needs_their_room() {
    let e = engine(None);
    run(&e, short()).await;
    let h = last_hash(&short());
    assert_eq!(
        e.pin_blocks(vec![h], Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    // 240 + 8 tokens need all 16 blocks.
    let big = prompt_of(5, 240);
    let done = tokio::time::timeout(Duration::from_secs(60), run(&e, big)).await;
    assert!(done.is_ok(), "the request ran");
    assert_eq!(
        metric(
            &e,
            "sglang:unpinned_blocks_total",
            &[("reason", "pressure")]
        ),
        6.0
    );
    assert_eq!(metric(&e, "sglang:pinned_tokens", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_host_tier_pinned_blocks_move_down_instead_of_vanishing() {
    let e = engine(Some(HiCacheConfig {
        write_policy: WritePolicy::WriteThroughSelective,
        ..HiCacheConfig::host(2.0)
    }));
    run(&e, short()).await;
    assert_eq!(
        e.pin_blocks(vec![last_hash(&short())], Duration::from_secs(60))
            .await
            .unwrap(),
        1
    );
    flood(&e).await;
    let before = idle(&e).await;
    let (_, cached) = run(&e, short()).await;
    let after = idle(&e).await;
    assert_eq!(cached, 96, "loaded back from the host tier");
    assert_eq!(after.host_loads - before.host_loads, 6);
    assert!(
        metric(
            &e,
            "sglang:hicache_dropped_tokens_total",
            &[("reason", "not_selected")]
        ) > 0.0,
        "the flood's own blocks, used once, were dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_can_pin_its_own_prompt() {
    let e = engine(None);
    let mut rx = e
        .generate(dynamo_protocols::PreprocessedRequest {
            cache_pin_ttl_secs: Some(60.0),
            ..hier::request(short())
        })
        .unwrap();
    while rx.recv().await.is_some() {}
    idle(&e).await;
    assert_eq!(metric(&e, "sglang:pinned_tokens", &[]), 96.0);
    flood(&e).await;
    assert!(run(&e, short()).await.1 >= 96);
    let bad = e.generate(dynamo_protocols::PreprocessedRequest {
        cache_pin_ttl_secs: Some(-1.0),
        ..hier::request(short())
    });
    assert!(bad.is_err(), "a negative TTL is refused");
}
