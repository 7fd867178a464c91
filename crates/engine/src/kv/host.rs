//! The host tier (L2) of the KV cache: full blocks copied out of the pool, kept in host
//! memory as export bytes (`dynamo_protocols::kv_transfer`, one block each) under their
//! chained block hash, with their tokens (a hit must match them, not just the hash) and where
//! they came from (the pool, or a prefetch from the storage tier), up to a capacity in blocks,
//! least recently used dropped first. A copy, not a relabelling: the pool's block is reused
//! once its bytes are here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

struct Entry {
    /// The parent block's sequence hash (`None`: the first block of a prompt).
    parent: Option<u64>,
    tokens: Box<[u32]>,
    bytes: Arc<[u8]>,
    from_storage: bool,
    /// Never dropped by the LRU while set.
    pinned: bool,
    last_use: u64,
}

/// A block found in the host tier.
pub struct HostHit {
    pub bytes: Arc<[u8]>,
    /// It arrived by a prefetch from the storage tier (not from the pool).
    pub from_storage: bool,
}

/// KV blocks in host memory.
pub struct HostTier {
    capacity: usize,
    blocks: HashMap<u64, Entry>,
    lru: BinaryHeap<Reverse<(u64, u64)>>,
    tick: u64,
}

impl HostTier {
    /// Room for `capacity` blocks.
    pub fn new(capacity: usize) -> Self {
        HostTier {
            capacity,
            blocks: HashMap::new(),
            lru: BinaryHeap::new(),
            tick: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Block `hash` is held (its tokens are not checked, its recency not changed).
    pub fn contains(&self, hash: u64) -> bool {
        self.blocks.contains_key(&hash)
    }

    /// Pin or unpin block `hash`; whether it is held.
    pub fn set_pinned(&mut self, hash: u64, pinned: bool) -> bool {
        self.blocks
            .get_mut(&hash)
            .map(|e| e.pinned = pinned)
            .is_some()
    }

    /// The parent of block `hash`, when held.
    pub fn parent_of(&self, hash: u64) -> Option<Option<u64>> {
        self.blocks.get(&hash).map(|e| e.parent)
    }

    /// Keep block `hash` (its parent's hash, `tokens` and export `bytes`), dropping the least recently used
    /// when full; the blocks dropped (the block itself when the capacity is 0).
    pub fn insert(
        &mut self,
        hash: u64,
        parent: Option<u64>,
        tokens: Box<[u32]>,
        bytes: Arc<[u8]>,
        from_storage: bool,
    ) -> Vec<u64> {
        if self.capacity == 0 {
            return vec![hash];
        }
        let last_use = self.touch();
        self.blocks.insert(
            hash,
            Entry {
                parent,
                tokens,
                bytes,
                from_storage,
                pinned: false,
                last_use,
            },
        );
        self.lru.push(Reverse((last_use, hash)));
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        while self.blocks.len() > self.capacity {
            let Some(Reverse((tick, h))) = self.lru.pop() else {
                break;
            };
            match self.blocks.get(&h) {
                Some(e) if e.last_use == tick && e.pinned => kept.push(Reverse((tick, h))),
                Some(e) if e.last_use == tick => {
                    self.blocks.remove(&h);
                    dropped.push(h);
                }
                _ => {}
            }
        }
        // Pinned blocks stay, past the capacity if nothing else is left to drop (the
        // scheduler bounds how many blocks may be pinned).
        self.lru.extend(kept);
        dropped
    }

    /// Block `hash` when it holds exactly `tokens` (marked used).
    pub fn get(&mut self, hash: u64, tokens: &[u32]) -> Option<HostHit> {
        let tick = self.touch();
        let e = self
            .blocks
            .get_mut(&hash)
            .filter(|e| *e.tokens == *tokens)?;
        e.last_use = tick;
        self.lru.push(Reverse((tick, hash)));
        Some(HostHit {
            bytes: e.bytes.clone(),
            from_storage: e.from_storage,
        })
    }

    /// The next use tick; the LRU heap is rebuilt when stale entries outnumber live ones
    /// (every hit pushes one), so it stays proportional to the blocks held.
    fn touch(&mut self) -> u64 {
        self.tick += 1;
        if self.lru.len() > 2 * self.blocks.len() + 64 {
            self.lru = self
                .blocks
                .iter()
                .map(|(&h, e)| Reverse((e.last_use, h)))
                .collect();
        }
        self.tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: u8) -> Arc<[u8]> {
        Arc::from(vec![v])
    }

    #[test]
    fn lru_capacity_and_token_check() {
        let mut t = HostTier::new(2);
        assert!(t.insert(1, None, vec![1].into(), b(10), false).is_empty());
        assert!(t.insert(2, None, vec![2].into(), b(20), true).is_empty());
        let hit = t.get(1, &[1]).expect("held");
        assert_eq!(&*hit.bytes, &[10u8][..], "1 is now the most recent");
        assert!(!hit.from_storage);
        assert!(t.get(2, &[2]).is_some_and(|h| h.from_storage));
        assert!(t.get(1, &[1]).is_some());
        assert_eq!(t.insert(3, None, vec![3].into(), b(30), false), vec![2]);
        assert!(t.get(2, &[2]).is_none(), "2 was the least recently used");
        assert!(
            t.get(1, &[9]).is_none(),
            "a hash whose tokens differ is no hit"
        );
        assert_eq!(t.len(), 2);
        assert!(t.contains(3) && !t.contains(2));
    }

    #[test]
    fn pinned_blocks_are_not_dropped() {
        let mut t = HostTier::new(2);
        t.insert(1, None, vec![1].into(), b(1), false);
        t.insert(2, Some(1), vec![2].into(), b(2), false);
        assert!(t.set_pinned(1, true));
        assert_eq!(t.insert(3, Some(2), vec![3].into(), b(3), false), vec![2]);
        assert!(t.contains(1), "pinned 1 was the oldest but stays");
        t.set_pinned(3, true);
        assert_eq!(
            t.insert(4, None, vec![4].into(), b(4), false),
            vec![4],
            "with both others pinned, only the new block can go"
        );
        t.set_pinned(1, false);
        t.set_pinned(3, false);
        t.insert(5, None, vec![5].into(), b(5), false);
        assert_eq!(t.len(), 2, "unpinned, the capacity holds again");
        assert_eq!(t.parent_of(5), Some(None));
    }

    #[test]
    fn repeated_hits_keep_the_heap_bounded() {
        let mut t = HostTier::new(4);
        for h in 0..4 {
            t.insert(h, None, vec![h as u32].into(), b(h as u8), false);
        }
        for i in 0..10_000u64 {
            assert!(t.get(i % 4, &[(i % 4) as u32]).is_some());
        }
        assert!(t.lru.len() <= 2 * 4 + 65, "heap grew to {}", t.lru.len());
        assert_eq!(t.insert(9, None, vec![9].into(), b(9), false), vec![0]);
        assert!(!t.contains(0), "0 was used longest ago");
    }
}
