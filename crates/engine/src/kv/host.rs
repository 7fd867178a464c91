//! The host tier (L2) of the KV cache: full blocks the pool evicted, kept in host memory as
//! export bytes (`dynamo_protocols::kv_transfer`, one block each) under their chained block
//! hash, with their tokens (a hit must match them, not just the hash), up to a capacity in
//! blocks, least recently used dropped first. A copy, not a relabelling: the pool's block is
//! reused once its bytes are here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

struct Entry {
    tokens: Box<[u32]>,
    bytes: Vec<u8>,
    last_use: u64,
}

/// Evicted KV blocks in host memory.
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

    /// Keep block `hash` (its `tokens` and export `bytes`), dropping the least recently used
    /// when full; how many were dropped.
    pub fn insert(&mut self, hash: u64, tokens: Box<[u32]>, bytes: Vec<u8>) -> usize {
        if self.capacity == 0 {
            return 1;
        }
        self.tick += 1;
        let last_use = self.tick;
        self.blocks.insert(
            hash,
            Entry {
                tokens,
                bytes,
                last_use,
            },
        );
        self.lru.push(Reverse((last_use, hash)));
        let mut dropped = 0;
        while self.blocks.len() > self.capacity {
            let Some(Reverse((tick, h))) = self.lru.pop() else {
                break;
            };
            if self.blocks.get(&h).is_some_and(|e| e.last_use == tick) {
                self.blocks.remove(&h);
                dropped += 1;
            }
        }
        dropped
    }

    /// The export bytes of block `hash` when it holds exactly `tokens` (marked used).
    pub fn get(&mut self, hash: u64, tokens: &[u32]) -> Option<&[u8]> {
        self.tick += 1;
        let tick = self.tick;
        let e = self
            .blocks
            .get_mut(&hash)
            .filter(|e| *e.tokens == *tokens)?;
        e.last_use = tick;
        self.lru.push(Reverse((tick, hash)));
        Some(&e.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_capacity_and_token_check() {
        let mut t = HostTier::new(2);
        assert_eq!(t.insert(1, vec![1].into(), vec![10]), 0);
        assert_eq!(t.insert(2, vec![2].into(), vec![20]), 0);
        assert_eq!(
            t.get(1, &[1]),
            Some(&[10u8][..]),
            "1 is now the most recent"
        );
        assert_eq!(t.insert(3, vec![3].into(), vec![30]), 1);
        assert!(t.get(2, &[2]).is_none(), "2 was the least recently used");
        assert!(
            t.get(1, &[9]).is_none(),
            "a hash whose tokens differ is no hit"
        );
        assert_eq!(t.len(), 2);
    }
}
