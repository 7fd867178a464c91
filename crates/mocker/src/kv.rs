//! The mocker's KV block pool: a fixed number of blocks; full prompt blocks are identified by
//! their sequence hash and stay cached (reference-counted, LRU-evicted when unreferenced) so a
//! later request with the same prefix skips their prefill. Blocks entering and leaving the
//! cache produce the same stored/removed events as the real engine.

use std::collections::{BTreeMap, HashMap};

use dynamo_protocols::kv_events::{EventBuffer, KvCacheEventData};

/// A bounded pool of KV blocks with prefix reuse.
#[derive(Debug)]
pub struct BlockPool {
    total: usize,
    /// Blocks held by running sequences but not shareable (partial / generated blocks).
    private_used: usize,
    /// Shareable prompt blocks by sequence hash: (reference count, last use tick).
    cached: HashMap<u64, (usize, u64)>,
    /// Unreferenced cached blocks by last use tick, for LRU eviction.
    lru: BTreeMap<u64, u64>,
    tick: u64,
    events: EventBuffer,
}

impl BlockPool {
    pub fn new(total: usize) -> Self {
        BlockPool {
            total,
            private_used: 0,
            cached: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            events: EventBuffer::default(),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks referenced by running sequences.
    pub fn active(&self) -> usize {
        self.private_used + (self.cached.len() - self.lru.len())
    }

    /// Blocks that can be handed out now (free plus evictable).
    pub fn available(&self) -> usize {
        self.total - self.active()
    }

    /// How many leading blocks of `hashes` are cached.
    pub fn matched(&self, hashes: &[u64]) -> usize {
        hashes
            .iter()
            .take_while(|h| self.cached.contains_key(h))
            .count()
    }

    fn free(&self) -> usize {
        self.total - self.private_used - self.cached.len()
    }

    fn evict_one(&mut self) -> bool {
        let Some((&t, &h)) = self.lru.iter().next() else {
            return false;
        };
        self.lru.remove(&t);
        self.cached.remove(&h);
        self.events.removed(h);
        true
    }

    /// Take the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<KvCacheEventData> {
        self.events.drain()
    }

    fn make_room(&mut self, n: usize) -> bool {
        while self.free() < n {
            if !self.evict_one() {
                return false;
            }
        }
        true
    }

    /// Reference the prompt's full blocks (sequence `hashes`, local hashes `locals`) plus
    /// `extra` private blocks. Returns false (and changes nothing) when the pool cannot hold
    /// them.
    pub fn acquire(&mut self, hashes: &[u64], locals: &[u64], extra: usize) -> bool {
        let new_shared = hashes
            .iter()
            .filter(|h| !self.cached.contains_key(h))
            .count();
        // Matched-but-unreferenced blocks leave the evictable set, so count them as needed.
        let revived = hashes
            .iter()
            .filter(|h| self.cached.get(h).is_some_and(|(r, _)| *r == 0))
            .count();
        if self.available() < new_shared + extra + revived {
            return false;
        }
        for (i, h) in hashes.iter().enumerate() {
            self.tick += 1;
            if let Some((r, t)) = self.cached.get_mut(h) {
                if *r == 0 {
                    self.lru.remove(t);
                }
                *r += 1;
                *t = self.tick;
            } else {
                let ok = self.make_room(1);
                debug_assert!(ok);
                self.cached.insert(*h, (1, self.tick));
                let parent = i.checked_sub(1).map(|p| hashes[p]);
                self.events.stored(parent, *h, locals[i]);
            }
        }
        let ok = self.make_room(extra);
        debug_assert!(ok);
        self.private_used += extra;
        true
    }

    /// One more private block for a growing sequence.
    pub fn grow(&mut self) -> bool {
        if !self.make_room(1) {
            return false;
        }
        self.private_used += 1;
        true
    }

    /// Release a sequence's blocks: shared ones stay cached (evictable when unreferenced).
    pub fn release(&mut self, hashes: &[u64], private: usize) {
        for h in hashes {
            self.tick += 1;
            if let Some((r, t)) = self.cached.get_mut(h) {
                *r -= 1;
                *t = self.tick;
                if *r == 0 {
                    self.lru.insert(self.tick, *h);
                }
            }
        }
        self.private_used -= private;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::kv_events::{KvCacheRemoveData, KvCacheStoreData, KvCacheStoredBlock};

    #[test]
    fn prefix_reuse_and_lru_eviction() {
        let mut p = BlockPool::new(4);
        assert!(p.acquire(&[1, 2], &[1, 2], 1));
        assert_eq!(p.active(), 3);
        assert!(!p.acquire(&[7, 8], &[7, 8], 0), "only one block left");
        p.release(&[1, 2], 1);
        assert_eq!(p.active(), 0);
        assert_eq!(p.matched(&[1, 2, 3]), 2);
        // Reusing the cached prefix costs only the new block.
        assert!(p.acquire(&[1, 2, 3], &[1, 2, 3], 0));
        assert_eq!(p.active(), 3);
        p.release(&[1, 2, 3], 0);
        // A disjoint request evicts the least recently used blocks.
        assert!(p.acquire(&[10, 11, 12, 13], &[10, 11, 12, 13], 0));
        assert_eq!(p.matched(&[1]), 0);
        p.release(&[10, 11, 12, 13], 0);
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn cache_changes_produce_events() {
        let mut p = BlockPool::new(3);
        assert!(p.acquire(&[1, 2], &[11, 12], 0));
        let e = p.drain_events();
        assert_eq!(e.len(), 1);
        let KvCacheEventData::Stored(s) = &e[0] else {
            panic!("stored expected: {e:?}")
        };
        assert_eq!(s.parent_hash, None);
        let pairs: Vec<(u64, u64)> = s
            .blocks
            .iter()
            .map(|b| (b.block_hash, b.tokens_hash))
            .collect();
        assert_eq!(pairs, vec![(1, 11), (2, 12)]);
        p.release(&[1, 2], 0);
        // Reuse 1, store 3 under it; the pool is full so 2 (unreferenced) is evicted for 4.
        assert!(p.acquire(&[1, 3, 4], &[11, 13, 14], 0));
        let e = p.drain_events();
        assert_eq!(
            e,
            vec![
                KvCacheEventData::Stored(KvCacheStoreData {
                    parent_hash: Some(1),
                    blocks: vec![KvCacheStoredBlock {
                        block_hash: 3,
                        tokens_hash: 13,
                        mm_extra_info: None
                    }],
                    medium: None,
                }),
                KvCacheEventData::Removed(KvCacheRemoveData {
                    block_hashes: vec![2],
                    medium: None,
                }),
                KvCacheEventData::Stored(KvCacheStoreData {
                    parent_hash: Some(3),
                    blocks: vec![KvCacheStoredBlock {
                        block_hash: 4,
                        tokens_hash: 14,
                        mm_extra_info: None
                    }],
                    medium: None,
                }),
            ]
        );
        assert!(p.drain_events().is_empty());
    }

    #[test]
    fn growth_is_bounded() {
        let mut p = BlockPool::new(2);
        assert!(p.grow());
        assert!(p.grow());
        assert!(!p.grow());
        p.release(&[], 2);
        assert_eq!(p.available(), 2);
    }
}
