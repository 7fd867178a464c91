//! KV router index benchmark (single thread): block events applied per second while building
//! an index of ~1M blocks over 64 workers, and `find_matches` p50/p99 for 8k-token prompts
//! (512 blocks of 16) against it; beside it, the same lookups done the naive way (each
//! worker's set of sequence hashes probed block by block) as the in-run baseline.
//! `cargo bench -p dynamo-kv-router --bench indexer`

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use dynamo_kv_router::RadixIndex;
use dynamo_protocols::hashing::sequence_hashes;
use dynamo_protocols::kv_events::{
    stored_blocks, KvCacheEventData, KvCacheRemoveData, KvCacheStoreData,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORKERS: u64 = 64;
const TARGET_BLOCKS: usize = 1_000_000;
const DOC_BLOCKS: usize = 512;

fn stored(local: &[u64], seq: &[u64], parent: Option<u64>) -> KvCacheEventData {
    KvCacheEventData::Stored(KvCacheStoreData {
        parent_hash: parent,
        blocks: stored_blocks(local, seq),
        medium: None,
    })
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut rng = StdRng::seed_from_u64(42);
    // 32 long documents (512 blocks), each cached by 8 workers to a random depth; then unique
    // 64-block runs per worker (16 events of 4 blocks: stored under their parent) up to 1M.
    let docs: Vec<Vec<u64>> = (0..32)
        .map(|_| (0..DOC_BLOCKS).map(|_| rng.random()).collect())
        .collect();
    let mut events: Vec<((u64, u32), KvCacheEventData)> = Vec::new();
    let mut naive: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut total = 0usize;
    for d in &docs {
        let seq = sequence_hashes(d);
        for _ in 0..8 {
            let w = rng.random_range(0..WORKERS);
            let depth = rng.random_range(64..=DOC_BLOCKS);
            events.push(((w, 0), stored(&d[..depth], &seq[..depth], None)));
            naive
                .entry(w)
                .or_default()
                .extend(seq[..depth].iter().copied());
            total += depth;
        }
    }
    let mut runs: Vec<((u64, u32), Vec<u64>)> = Vec::new();
    while total < TARGET_BLOCKS {
        let w = rng.random_range(0..WORKERS);
        let local: Vec<u64> = (0..64).map(|_| rng.random()).collect();
        let seq = sequence_hashes(&local);
        for c in 0..16 {
            let r = c * 4..c * 4 + 4;
            let parent = (c > 0).then(|| seq[c * 4 - 1]);
            events.push(((w, 0), stored(&local[r.clone()], &seq[r], parent)));
        }
        naive.entry(w).or_default().extend(seq.iter().copied());
        runs.push(((w, 0), seq));
        total += 64;
    }

    let mut idx = RadixIndex::new();
    let t0 = Instant::now();
    for (w, e) in &events {
        idx.apply(*w, e).expect("parents known");
    }
    let build = t0.elapsed().as_secs_f64();
    println!(
        "index build: {} block events in {} events -> {} nodes in {:.3} s = {:.2} M block events/s",
        total,
        events.len(),
        idx.node_count(),
        build,
        total as f64 / build / 1e6
    );

    // Lookups: 8k-token prompts along a document (full or diverging) or unrelated.
    let mut queries: Vec<Vec<u64>> = Vec::new();
    for i in 0..4000 {
        let mut q = docs[i % docs.len()].clone();
        match i % 4 {
            0 => {}
            1 | 2 => {
                let cut = rng.random_range(1..DOC_BLOCKS);
                for h in &mut q[cut..] {
                    *h = rng.random();
                }
            }
            _ => q.iter_mut().for_each(|h| *h = rng.random()),
        }
        queries.push(q);
    }
    let mut lat = Vec::with_capacity(queries.len());
    let mut matched = 0u64;
    for q in &queries {
        let t = Instant::now();
        let m = idx.find_matches(q);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        matched += u64::from(m.best());
    }
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    // As the router calls it: the sequence hashes were computed (and timed) before.
    let seqs: Vec<Vec<u64>> = queries.iter().map(|q| sequence_hashes(q)).collect();
    let mut lat_seq = Vec::with_capacity(seqs.len());
    for q in &seqs {
        let t = Instant::now();
        let m = idx.find_matches_seq(q);
        lat_seq.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(m);
    }
    let (s50, s99) = (pct(&mut lat_seq, 0.5), pct(&mut lat_seq, 0.99));
    // The same lookups again: the prompts' blocks now in the CPU caches, as popular prefixes
    // are on a busy router.
    let mut lat_warm = Vec::with_capacity(seqs.len());
    for q in &seqs {
        let t = Instant::now();
        std::hint::black_box(idx.find_matches_seq(q));
        lat_warm.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let (w50, w99) = (pct(&mut lat_warm, 0.5), pct(&mut lat_warm, 0.99));
    // Baseline: probe each worker's hash set along the prompt's sequence hashes.
    let mut base = Vec::with_capacity(queries.len());
    let mut base_matched = 0u64;
    for q in &queries {
        let t = Instant::now();
        let seq = sequence_hashes(q);
        let best = naive
            .values()
            .map(|s| seq.iter().take_while(|h| s.contains(h)).count())
            .max()
            .unwrap_or(0);
        base.push(t.elapsed().as_secs_f64() * 1e6);
        base_matched += best as u64;
    }
    assert_eq!(matched, base_matched, "both find the same overlaps");
    let (b50, b99) = (pct(&mut base, 0.5), pct(&mut base, 0.99));
    println!("find_matches (512-block prompts, {} lookups): p50 {p50:.1} us, p99 {p99:.1} us (incl. chaining the local hashes)", queries.len());
    println!("find_matches_seq (router path, hashes given): p50 {s50:.1} us, p99 {s99:.1} us");
    println!("find_matches_seq, second pass (warm caches):  p50 {w50:.1} us, p99 {w99:.1} us");
    println!("naive per-worker probe (baseline):          p50 {b50:.1} us, p99 {b99:.1} us");
    println!(
        "ratio baseline/index: p50 {:.1}x, p99 {:.1}x",
        b50 / p50,
        b99 / p99
    );

    // Removal throughput: drop every unique run block by block in 4-block events.
    let t0 = Instant::now();
    let mut removed = 0usize;
    for (w, seq) in &runs {
        for c in seq.chunks(4).rev() {
            idx.apply(
                *w,
                &KvCacheEventData::Removed(KvCacheRemoveData {
                    block_hashes: c.to_vec(),
                    medium: None,
                }),
            )
            .expect("remove");
            removed += c.len();
        }
    }
    let rm = t0.elapsed().as_secs_f64();
    println!(
        "removal: {removed} block events in {rm:.3} s = {:.2} M block events/s ({} nodes left)",
        removed as f64 / rm / 1e6,
        idx.node_count()
    );
}
