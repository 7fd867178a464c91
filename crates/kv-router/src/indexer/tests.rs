//! The radix index against a model (per worker, the set of sequence hashes it caches; a
//! worker's overlap is the number of leading request sequence hashes in its set), over random
//! stored / removed / cleared / worker-removed sequences; plus the spec's edge cases.

use std::collections::{HashMap, HashSet};

use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

use dynamo_protocols::kv_events::stored_blocks as blocks;

/// A prompt from one of a few prefix groups, so workers share prefixes.
fn prompt(rng: &mut StdRng, bs: usize) -> Vec<u32> {
    let group = rng.random_range(0..4u32);
    let shared = rng.random_range(0..6usize) * bs;
    let tail = rng.random_range(1..5usize) * bs;
    let mut t: Vec<u32> = (0..shared as u32).map(|i| group * 1000 + i).collect();
    t.extend((0..tail).map(|_| rng.random_range(0..3u32) + 50_000));
    t
}

fn model_overlap(set: &HashSet<u64>, seq: &[u64]) -> u32 {
    seq.iter().take_while(|h| set.contains(h)).count() as u32
}

#[test]
fn random_event_sequences_match_the_model() {
    // 5 workers: the bitmap lookup (checked against the list walk too); 100: the list walk.
    random_sequences(5, 20, 400);
    random_sequences(100, 4, 1500);
}

fn random_sequences(n_workers: u64, seeds: u64, steps: usize) {
    let bs = 4;
    for seed in 0..seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut idx = RadixIndex::new();
        let mut model: HashMap<WorkerKey, HashSet<u64>> = HashMap::new();
        let workers: Vec<WorkerKey> = (0..n_workers).map(|i| (100 + i, (i % 2) as u32)).collect();
        for _step in 0..steps {
            let w = workers[rng.random_range(0..workers.len())];
            let set = model.entry(w).or_default();
            match rng.random_range(0..10) {
                0..=5 => {
                    // Store a run starting after the longest prefix this worker has.
                    let p = prompt(&mut rng, bs);
                    let local = block_hashes(&p, bs);
                    let seq = sequence_hashes(&local);
                    let k = model_overlap(set, &seq) as usize;
                    if k == seq.len() {
                        continue;
                    }
                    let parent = (k > 0).then(|| seq[k - 1]);
                    idx.store(w, parent, &blocks(&local[k..], &seq[k..]))
                        .expect("parent known");
                    set.extend(seq[k..].iter().copied());
                }
                6..=7 => {
                    let mut all: Vec<u64> = set.iter().copied().collect();
                    all.sort_unstable();
                    let n = rng.random_range(0..=all.len().min(3));
                    let mut gone = Vec::new();
                    for _ in 0..n {
                        let h = all.swap_remove(rng.random_range(0..all.len()));
                        gone.push(h);
                    }
                    gone.push(0xdead_beef); // unknown: ignored
                    idx.remove(w, &gone);
                    for h in gone {
                        set.remove(&h);
                    }
                }
                8 => {
                    idx.clear(w);
                    set.clear();
                }
                _ => {
                    idx.remove_worker(w);
                    model.remove(&w);
                }
            }
            // Queries: prompts of the same distribution.
            for _ in 0..3 {
                let p = prompt(&mut rng, bs);
                let seq = sequence_hashes(&block_hashes(&p, bs));
                let got = idx.find_matches(&block_hashes(&p, bs));
                if idx.slots.len() <= MASK_SLOTS {
                    assert_eq!(got, idx.find_matches_lists(&seq), "seed {seed}: both walks");
                }
                for (w, set) in &model {
                    assert_eq!(
                        got.get(*w),
                        model_overlap(set, &seq),
                        "seed {seed}: worker {w:?}"
                    );
                }
                for (w, &s) in &got.scores {
                    assert!(s > 0, "only workers with overlap are listed");
                    assert_eq!(got.tree_sizes[w], model[w].len());
                }
            }
            for (w, set) in &model {
                assert_eq!(idx.worker_blocks(*w), set.len());
            }
        }
        assert_eq!(
            idx.slots.len() > MASK_SLOTS,
            n_workers as usize > MASK_SLOTS
        );
        // Removing every worker frees every node.
        for w in &workers {
            idx.remove_worker(*w);
        }
        assert_eq!(idx.node_count(), 0, "seed {seed}");
        assert!(idx.by_key.is_empty());
    }
}

#[test]
fn unknown_parent_is_rejected_and_changes_nothing() {
    let mut idx = RadixIndex::new();
    let local = [1u64, 2];
    let seq = sequence_hashes(&local);
    let e = idx.store((1, 0), Some(77), &blocks(&local, &seq));
    assert_eq!(e, Err(IndexError::UnknownParent(77)));
    assert_eq!(idx.node_count(), 0);
    assert_eq!(idx.find_matches(&local).best(), 0);
}

#[test]
fn shared_prefix_nodes_hold_both_workers_and_survive_one_removal() {
    let mut idx = RadixIndex::new();
    let a = [10u64, 11, 12];
    let b = [10u64, 11, 20];
    let (sa, sb) = (sequence_hashes(&a), sequence_hashes(&b));
    idx.store((1, 0), None, &blocks(&a, &sa)).unwrap();
    idx.store((2, 0), None, &blocks(&b, &sb)).unwrap();
    assert_eq!(idx.node_count(), 4, "two shared nodes and two leaves");
    let m = idx.find_matches(&a);
    assert_eq!((m.get((1, 0)), m.get((2, 0))), (3, 2));
    // Worker 1 drops its first block: its match now stops at depth 0 although it still
    // caches the later ones (a prefix match is consecutive from the start).
    idx.remove((1, 0), &[sa[0]]);
    let m = idx.find_matches(&a);
    assert_eq!((m.get((1, 0)), m.get((2, 0))), (0, 2));
    idx.clear((2, 0));
    assert_eq!(idx.find_matches(&b).best(), 0);
    // Worker 1's blocks 2 and 3 still hang under the (now worker-less) first node.
    assert_eq!(idx.node_count(), 3);
    idx.remove((1, 0), &sa);
    assert_eq!(idx.node_count(), 0);
}

#[test]
fn stored_run_under_a_parent_extends_the_chain() {
    let mut idx = RadixIndex::new();
    let local = [5u64, 6, 7, 8];
    let seq = sequence_hashes(&local);
    idx.store((9, 0), None, &blocks(&local[..2], &seq[..2]))
        .unwrap();
    idx.store((9, 0), Some(seq[1]), &blocks(&local[2..], &seq[2..]))
        .unwrap();
    assert_eq!(idx.find_matches(&local).get((9, 0)), 4);
    assert_eq!(idx.find_matches(&[5, 6, 99]).get((9, 0)), 2);
    assert_eq!(
        idx.find_matches(&[6]).get((9, 0)),
        0,
        "keyed under the parent"
    );
    // dp ranks are separate workers.
    assert_eq!(idx.find_matches(&local).get((9, 1)), 0);
}

#[test]
fn one_node_under_two_block_hashes_is_freed_once() {
    let mut idx = RadixIndex::new();
    let w = (1, 0);
    // The same content (local hash 7 at the root) stored under two block hashes.
    idx.store(w, None, &blocks(&[7], &[100])).unwrap();
    idx.store(w, None, &blocks(&[7], &[200])).unwrap();
    assert_eq!(idx.node_count(), 1);
    assert_eq!(idx.remove(w, &[100]), 1);
    assert_eq!(
        idx.find_matches(&[7]).scores.get(&w),
        Some(&1),
        "still held under 200"
    );
    assert_eq!(idx.remove(w, &[200]), 1);
    assert_eq!(idx.node_count(), 0);
    // Two new nodes must get two ids: a double free would hand out one id twice.
    idx.store(w, None, &blocks(&[8], &[300])).unwrap();
    idx.store((2, 0), None, &blocks(&[9], &[400])).unwrap();
    assert_eq!(idx.node_count(), 2);
    assert_eq!(idx.find_matches(&[8]).scores.get(&w), Some(&1));
    assert_eq!(idx.find_matches(&[9]).scores.get(&(2, 0)), Some(&1));
    assert_eq!(idx.find_matches(&[8]).scores.get(&(2, 0)), None);
    // Clearing releases duplicates too.
    idx.store(w, None, &blocks(&[8], &[301])).unwrap();
    idx.clear(w);
    assert_eq!(idx.node_count(), 1);
}
