//! Block pool and radix tree: prefix matching, sharing, LRU leaf-first eviction, events.

use super::*;
use dynamo_protocols::hashing::{block_hashes, sequence_hashes};

fn blk(start: u32) -> Vec<u32> {
    (start..start + 4).collect()
}

#[test]
fn insert_match_share_and_evict_in_lru_order() {
    let mut p = BlockPool::new(4, 4, true);
    // Sequence A fills two blocks and publishes them.
    let a0 = p.alloc().unwrap();
    let (n0, kept) = p.insert(ROOT, &blk(0), a0);
    assert!(kept);
    let a1 = p.alloc().unwrap();
    let (n1, _) = p.insert(n0, &blk(4), a1);
    let toks: Vec<u32> = (0..8).collect();
    assert_eq!(p.match_prefix(&toks, 10), vec![n0, n1]);
    assert_eq!(p.match_prefix(&toks, 1), vec![n0]);
    // Events: one stored run with the router's hashes.
    let ev = p.drain_events();
    let want = sequence_hashes(&block_hashes(&toks, 4));
    match &ev[..] {
        [KvCacheEventData::Stored(s)] => {
            assert_eq!(s.parent_hash, None);
            let got: Vec<u64> = s.blocks.iter().map(|b| b.block_hash).collect();
            assert_eq!(got, want);
            assert_eq!(s.blocks[1].tokens_hash, block_hashes(&toks, 4)[1]);
        }
        other => panic!("unexpected events {other:?}"),
    }
    // A second sequence shares them; an identical block inserted again dedups.
    p.acquire(&[n0, n1]);
    let b = p.alloc().unwrap();
    let (n, kept) = p.insert(ROOT, &blk(0), b);
    assert_eq!((n, kept), (n0, false));
    p.release(&[n0]);
    assert_eq!(p.stats().shared_in_use, 2);
    p.release(&[n0, n1]);
    p.release(&[n0, n1]);
    assert_eq!(p.stats().evictable, 2);
    assert_eq!(p.available(), 4);
    // Exhaust the free list: the leaf goes first, then its parent.
    let got: Vec<u32> = (0..4).map(|_| p.alloc().unwrap()).collect();
    assert_eq!(got.len(), 4);
    assert!(p.alloc().is_none());
    let ev = p.drain_events();
    match &ev[..] {
        [KvCacheEventData::Removed(r)] => assert_eq!(r.block_hashes, vec![want[1], want[0]]),
        other => panic!("unexpected events {other:?}"),
    }
    assert!(p.match_prefix(&toks, 10).is_empty());
}

#[test]
fn referenced_blocks_are_never_evicted() {
    let mut p = BlockPool::new(2, 4, true);
    let b = p.alloc().unwrap();
    let (n, _) = p.insert(ROOT, &blk(0), b);
    let _other = p.alloc().unwrap();
    assert!(p.alloc().is_none(), "the only cached block is referenced");
    p.release(&[n]);
    assert!(p.alloc().is_some());
}

#[test]
fn no_caching_means_no_matches() {
    let mut p = BlockPool::new(2, 4, false);
    let b = p.alloc().unwrap();
    // A full block offered to the tree stays private: no node, no event, not evictable.
    let (n, kept) = p.insert(ROOT, &blk(0), b);
    assert_eq!((n, kept), (u32::MAX, true));
    assert!(p.drain_events().is_empty());
    assert_eq!(p.stats().evictable, 0);
    assert!(p.match_prefix(&blk(0), 1).is_empty());
    let _other = p.alloc().unwrap();
    assert!(p.alloc().is_none(), "the private block is not evicted");
    p.free_block(b);
    assert!(p.alloc().is_some());
}

#[test]
fn partial_tails_are_matched_kept_without_events_and_evicted_like_leaves() {
    let mut p = BlockPool::new(3, 4, true);
    let a0 = p.alloc().unwrap();
    let (n0, _) = p.insert(ROOT, &blk(0), a0);
    p.drain_events();
    // A sequence ended with 3 tokens in its second block: kept as a tail under n0.
    let tail = p.alloc().unwrap();
    assert!(p.insert_partial(n0, &[4, 5, 6], tail));
    assert!(p.drain_events().is_empty(), "tails are not announced");
    assert!(
        !p.insert_partial(n0, &[4, 5], p.total as u32),
        "covered by the tail"
    );
    p.release(&[n0]);
    assert_eq!(p.stats().evictable, 2);
    // A prompt continuing 0..4 then 4, 5, 9: two of the tail's tokens match.
    assert_eq!(
        p.match_partial(n0, &[4, 5, 9], 3),
        Some((p.nodes[n0 as usize].partials[0], 2))
    );
    // Never past `max` (the prompt's last token is computed), never a whole block.
    assert_eq!(p.match_partial(n0, &[4, 5, 6, 7], 1).map(|m| m.1), Some(1));
    assert_eq!(p.match_partial(n0, &[8, 9], 2), None);
    // A full cached block diverging mid-block is matched too (at most page - 1 tokens).
    assert_eq!(
        p.match_partial(ROOT, &[0, 1, 2, 3, 4], 4)
            .map(|m| (m.0, m.1)),
        Some((n0, 3))
    );
    // Eviction: the tail (a leaf) goes first, then its parent, with one removed event.
    let _x = p.alloc().unwrap();
    assert!(p.alloc().is_some());
    assert!(p.drain_events().is_empty(), "evicting a tail is silent");
    assert!(p.alloc().is_some());
    assert!(matches!(
        &p.drain_events()[..],
        [KvCacheEventData::Removed(_)]
    ));
    assert!(p.alloc().is_none());
}
