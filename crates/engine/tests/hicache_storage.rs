//! The storage tier on the real model: blocks written through to a directory survive the
//! engine; a new engine on the directory prefetches a long prefix from it and serves it
//! instead of computing it (identical output); a file from another model, a truncated file,
//! a flipped byte and an oversized file are each skipped and counted, never loaded (and
//! replaced by the next backup); two engines writing one directory at once corrupt nothing;
//! the directory stays under its cap; a prompt whose storage continuation is under the
//! threshold is not prefetched; a request cancelled while its prefetch runs leaks no block.

mod hier;

use std::path::{Path, PathBuf};
use std::time::Duration;

use dynamo_engine::kv::storage::{self, format, PrefetchStop, StorageConfig};
use dynamo_engine::kv::{HiCacheConfig, WritePolicy};
use dynamo_engine::Engine;
use dynamo_protocols::hashing::{local_block_hash, next_sequence_hash};
use hier::{engine, idle, metric, prompt, run};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dyn-hicache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tiered(dir: &Path, stop: PrefetchStop, threshold: usize, max_bytes: u64) -> Engine {
    engine(Some(HiCacheConfig {
        write_policy: WritePolicy::WriteThrough,
        storage: Some(StorageConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            prefetch_threshold: threshold,
            stop,
        }),
        ..HiCacheConfig::host(2.0)
    }))
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "kv"))
        .collect();
    v.sort();
    v
}

/// Wait (10 s at most) until the directory holds `n` block files.
async fn files_settle(dir: &Path, n: usize) {
    for _ in 0..1000 {
        if block_files(dir).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} block files, wanted {n}", block_files(dir).len());
}

/// The chained hashes and tokens of `tokens`' full blocks.
fn blocks(tokens: &[u32]) -> Vec<(u64, Vec<u32>)> {
    let mut hash = None;
    tokens
        .chunks_exact(16)
        .map(|c| {
            let h = local_block_hash(c);
            let s = hash.map_or(h, |p| next_sequence_hash(p, h));
            hash = Some(s);
            (s, c.to_vec())
        })
        .collect()
}

fn path(dir: &Path, hash: u64) -> PathBuf {
    dir.join(format!("{hash:016x}.kv"))
}

fn identity(e: &Engine) -> String {
    storage::identity(&dynamo_test_support::default_model(), &e.info().kv_layout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_serves_a_prefix_from_storage() {
    let d = dir("restart");
    let first = {
        let a = tiered(&d, PrefetchStop::WaitComplete, 64, 1 << 30);
        let (out, _) = run(&a, prompt(0)).await;
        files_settle(&d, 9).await;
        out
    };
    let b = tiered(&d, PrefetchStop::WaitComplete, 64, 1 << 30);
    let before = idle(&b).await;
    let (out, cached) = run(&b, prompt(0)).await;
    let after = idle(&b).await;
    assert_eq!(out, first, "the same greedy output");
    assert_eq!(cached, 144, "9 blocks from storage");
    assert_eq!(after.prefill_tokens - before.prefill_tokens, 6);
    let m = |name, l: &[(&str, &str)]| metric(&b, name, l);
    assert_eq!(
        m(
            "sglang:cached_tokens_total",
            &[("cache_source", "storage_file")]
        ),
        144.0
    );
    assert_eq!(m("sglang:prefetched_tokens_total", &[]), 144.0);
    assert_eq!(
        m(
            "sglang:hicache_prefetch_outcomes_total",
            &[("outcome", "complete")]
        ),
        1.0
    );
    assert!(m("sglang:prefetch_bandwidth_count", &[]) >= 1.0);
    drop(b);

    // Under the threshold: not prefetched, computed.
    let c = tiered(&d, PrefetchStop::WaitComplete, 256, 1 << 30);
    let (out, cached) = run(&c, prompt(0)).await;
    assert_eq!(out, first);
    assert_eq!(
        cached, 0,
        "144 stored tokens are under a 256-token threshold"
    );
    assert_eq!(metric(&c, "sglang:prefetched_tokens_total", &[]), 0.0);
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_truncated_and_corrupt_files_are_skipped() {
    let d = dir("reject");
    let (outs, ident) = {
        let a = tiered(&d, PrefetchStop::WaitComplete, 64, 1 << 30);
        let mut outs = Vec::new();
        for salt in 0..4 {
            outs.push(run(&a, prompt(salt)).await.0);
        }
        files_settle(&d, 36).await;
        (outs, identity(&a))
    };
    // Block 4 of each prompt: another model's file, a truncated one, a flipped byte, and a
    // file far larger than a block (never read into memory).
    let victims: Vec<_> = (0..4)
        .map(|salt| blocks(&prompt(salt))[4].clone())
        .collect();
    let (h, t) = &victims[0];
    let good = std::fs::read(path(&d, *h)).unwrap();
    let payload = format::decode(&good, &ident, *h, t).unwrap().to_vec();
    let foreign = format::encode("model=other.gguf size=1 head=0 kv: same", *h, t, &payload);
    std::fs::write(path(&d, *h), foreign).unwrap();
    let (h, _) = &victims[1];
    let f = std::fs::read(path(&d, *h)).unwrap();
    std::fs::write(path(&d, *h), &f[..f.len() / 2]).unwrap();
    let (h, _) = &victims[2];
    let mut f = std::fs::read(path(&d, *h)).unwrap();
    let at = f.len() - 100;
    f[at] ^= 0x01;
    std::fs::write(path(&d, *h), f).unwrap();
    let (h, _) = &victims[3];
    std::fs::write(path(&d, *h), vec![7u8; 64 << 20]).unwrap();

    let b = tiered(&d, PrefetchStop::WaitComplete, 64, 1 << 30);
    for salt in 0..4 {
        let (out, cached) = run(&b, prompt(salt)).await;
        assert_eq!(out, outs[salt as usize], "salt {salt}: the same output");
        assert_eq!(
            cached, 64,
            "salt {salt}: only the 4 blocks before the bad one"
        );
    }
    for (reason, n) in [("foreign", 2.0), ("truncated", 1.0), ("checksum", 1.0)] {
        assert_eq!(
            metric(
                &b,
                "sglang:hicache_storage_rejected_files_total",
                &[("reason", reason)]
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(
        metric(
            &b,
            "sglang:hicache_prefetch_outcomes_total",
            &[("outcome", "failed")]
        ),
        4.0
    );
    // The blocks were computed again and written through: the files are good again.
    for _ in 0..500 {
        let ok = victims.iter().all(|(h, t)| {
            std::fs::read(path(&d, *h)).is_ok_and(|f| format::decode(&f, &ident, *h, t).is_ok())
        });
        if ok {
            let _ = std::fs::remove_dir_all(&d);
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rejected files were not replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_share_a_directory_and_it_stays_under_its_cap() {
    let d = dir("shared");
    let a = tiered(&d, PrefetchStop::BestEffort, 64, 1 << 30);
    let b = tiered(&d, PrefetchStop::BestEffort, 64, 1 << 30);
    // Both write the same four prompts' blocks at the same time.
    let (ra, rb) = tokio::join!(
        async {
            for salt in 0..4 {
                run(&a, prompt(salt)).await;
            }
        },
        async {
            for salt in 0..4 {
                run(&b, prompt(salt)).await;
            }
        }
    );
    let _ = (ra, rb);
    files_settle(&d, 36).await;
    let ident = identity(&a);
    drop((a, b));
    let known: std::collections::HashMap<u64, Vec<u32>> =
        (0..4).flat_map(|s| blocks(&prompt(s))).collect();
    let files = block_files(&d);
    assert_eq!(files.len(), 36, "one file per block");
    for f in &files {
        let name = f.file_stem().unwrap().to_str().unwrap();
        let h = u64::from_str_radix(name, 16).unwrap();
        let data = std::fs::read(f).unwrap();
        assert!(
            format::decode(&data, &ident, h, &known[&h]).is_ok(),
            "{name} reads back"
        );
    }
    let file_bytes = std::fs::metadata(&files[0]).unwrap().len();

    // A cap of 20 blocks' files under 6 prompts' worth of blocks.
    let cap = 20 * file_bytes;
    let c = tiered(&d, PrefetchStop::BestEffort, 64, cap);
    for salt in 4..10 {
        run(&c, prompt(salt)).await;
    }
    idle(&c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total: u64 = block_files(&d)
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    assert!(total <= cap, "{total} bytes in the directory, cap {cap}");
    assert!(
        metric(
            &c,
            "sglang:hicache_dropped_tokens_total",
            &[("reason", "storage_cap")]
        ) > 0.0
    );
    let leftovers = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0, "no temporary file left");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_during_its_prefetch_leaks_nothing() {
    let d = dir("cancel");
    {
        let a = tiered(&d, PrefetchStop::WaitComplete, 64, 1 << 30);
        run(&a, prompt(0)).await;
        files_settle(&d, 9).await;
    }
    let b = tiered(&d, PrefetchStop::WaitComplete, 64, 1 << 30);
    for _ in 0..5 {
        // Submitted and dropped at once: cancelled while its prefetch is in flight (or
        // just after).
        drop(b.generate(hier::request(prompt(0))).unwrap());
    }
    let s = idle(&b).await;
    assert_eq!(s.running + s.waiting, 0);
    assert_eq!(
        s.pool.private_in_use + s.pool.shared_in_use,
        0,
        "{:?}",
        s.pool
    );
    // The blocks that arrived went to the host tier; the prompt is served from there.
    let (_, cached) = run(&b, prompt(0)).await;
    assert_eq!(cached, 144);
    let cancelled = metric(
        &b,
        "sglang:hicache_prefetch_outcomes_total",
        &[("outcome", "cancelled")],
    );
    assert!(cancelled >= 1.0, "{cancelled}");
    let _ = std::fs::remove_dir_all(&d);
}
