//! The host tier on the real model: with a KV pool too small for the working set, a long
//! prompt's blocks leave the pool under a flood of other prompts; without the host tier its
//! repeat is computed again, with it the repeat's full blocks are loaded back (its
//! `cached_tokens` count them, the engine computes only the tokens past them) and the output
//! is identical. Each write policy copies when it says: write-through as blocks are cached
//! (eviction copies nothing, drops nothing), write-back at eviction, selective only blocks
//! used twice while cached (a prefix used once is dropped).

mod hier;

use dynamo_engine::kv::{HiCacheConfig, WritePolicy};
use hier::{engine, idle, metric, prompt, run};

fn host(policy: WritePolicy) -> Option<HiCacheConfig> {
    Some(HiCacheConfig {
        write_policy: policy,
        ..HiCacheConfig::host(4.0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_prefix_is_loaded_back_from_the_host_tier() {
    let mut without: Option<Vec<u32>> = None;
    for policy in [
        None,
        Some(WritePolicy::WriteThrough),
        Some(WritePolicy::WriteBack),
    ] {
        let e = engine(policy.and_then(host));
        let (first, _) = run(&e, prompt(0)).await;
        // The output of a run without the hierarchy is every configuration's output.
        assert_eq!(&first, without.get_or_insert_with(|| first.clone()));
        let copied_early = metric(&e, "sglang:hicache_backup_tokens_total", &[]);
        // Two other long prompts push the first one's blocks out of the pool.
        for salt in 1..3 {
            run(&e, prompt(salt)).await;
        }
        let before = idle(&e).await;
        let (again, cached) = run(&e, prompt(0)).await;
        let after = idle(&e).await;
        assert_eq!(again, first, "{policy:?}: the same greedy output");
        let computed = after.prefill_tokens - before.prefill_tokens;
        let Some(policy) = policy else {
            assert_eq!(after.host_backups, 0);
            assert_eq!(cached, 0, "without the host tier the prefix was gone");
            assert_eq!(computed, 150);
            continue;
        };
        assert!(after.host_backups > 0, "{after:?}");
        assert_eq!(
            after.host_loads, 9,
            "{policy:?}: the prompt's 9 full blocks came back: {after:?}"
        );
        // The 6 tokens past the last full block were a partial tail, which the host tier
        // does not keep: they are computed again.
        assert_eq!(cached, 144, "the prompt's full blocks were reused");
        assert_eq!(computed, 6);
        let m = |name| metric(&e, name, &[]);
        assert_eq!(m("sglang:load_back_tokens_total"), 144.0);
        assert!(m("sglang:load_back_bytes_total") > 0.0);
        assert!(m("sglang:load_back_duration_seconds_count") >= 1.0);
        assert!(m("sglang:evicted_tokens_total") >= 144.0);
        assert_eq!(
            metric(
                &e,
                "sglang:cached_tokens_total",
                &[("cache_source", "host")]
            ),
            144.0
        );
        assert_eq!(m("sglang:hicache_dropped_tokens_total"), 0.0, "{policy:?}");
        let (used, total) = (
            m("sglang:hicache_host_used_tokens"),
            m("sglang:hicache_host_total_tokens"),
        );
        assert!(
            used > 0.0 && used <= total,
            "host tier {used} of {total} tokens"
        );
        assert!(m("sglang:eviction_duration_seconds_count") >= 1.0);
        match policy {
            WritePolicy::WriteThrough => {
                // The first prompt's 9 blocks were copied as they were computed.
                assert!(copied_early >= 144.0, "{copied_early}");
                assert!(m("sglang:hicache_backup_duration_seconds_count") >= 1.0);
            }
            _ => assert_eq!(copied_early, 0.0, "nothing copied before an eviction"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selective_write_through_keeps_only_blocks_used_twice() {
    let e = engine(host(WritePolicy::WriteThroughSelective));
    // Used once, then flooded out: dropped, computed again.
    run(&e, prompt(0)).await;
    for salt in 1..3 {
        run(&e, prompt(salt)).await;
    }
    idle(&e).await;
    let (_, cached) = run(&e, prompt(0)).await;
    assert_eq!(cached, 0, "a block used once is not kept");
    let dropped = metric(
        &e,
        "sglang:hicache_dropped_tokens_total",
        &[("reason", "not_selected")],
    );
    assert!(dropped >= 144.0, "{dropped}");
    // Used twice while cached (a prefix hit): copied then, and it survives the next flood.
    let (_, cached) = run(&e, prompt(0)).await;
    assert!(cached >= 144, "the second use hits the pool: {cached}");
    for salt in 1..3 {
        run(&e, prompt(salt)).await;
    }
    let before = idle(&e).await;
    let (_, cached) = run(&e, prompt(0)).await;
    let after = idle(&e).await;
    assert_eq!(cached, 144);
    assert_eq!(after.host_loads - before.host_loads, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_tier_stays_within_its_capacity_under_pressure() {
    // A host tier as large as the pool (16 blocks) under 6 prompts of 9 blocks each.
    let e = engine(host(WritePolicy::WriteThrough).map(|h| HiCacheConfig { ratio: 1.0, ..h }));
    for salt in 0..6 {
        run(&e, prompt(salt)).await;
    }
    let s = idle(&e).await;
    assert_eq!(s.host_blocks, 16, "full, not past full");
    assert_eq!(metric(&e, "sglang:hicache_host_used_tokens", &[]), 256.0);
    assert!(
        metric(
            &e,
            "sglang:hicache_dropped_tokens_total",
            &[("reason", "host_full")]
        ) > 0.0,
        "without a storage tier the host tier's LRU drops are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_executor_loads_back_ahead_of_admission() {
    // The reference device executor stages imports as a GPU would (here they complete at
    // once): a request waiting behind a running one gets its host-tier blocks before it is
    // admitted, and its output is what it was.
    let e = hier::engine_on(
        dynamo_engine::executor::Device::Reference,
        host(WritePolicy::WriteThrough),
    );
    let (first, _) = run(&e, prompt(0)).await;
    for salt in 1..3 {
        run(&e, prompt(salt)).await;
    }
    let before = idle(&e).await;
    // A long request holds 12 of the 16 blocks; the repeat waits for it.
    let long = {
        let mut r = hier::request(prompt(3));
        r.stop.max_tokens = Some(24);
        e.generate(r).unwrap()
    };
    let (again, cached) = run(&e, prompt(0)).await;
    drop(long);
    let after = idle(&e).await;
    assert_eq!(again, first, "the same greedy output");
    assert_eq!(cached, 144);
    // Staged blocks the long request's decoding evicted again are loaded once more.
    assert!(after.host_loads - before.host_loads >= 9, "{after:?}");
    assert!(
        after.host_loads_staged > before.host_loads_staged,
        "some blocks were staged while the long request ran: {after:?}"
    );
}
