//! The router's radix index of cached KV blocks (docs/router.md, "Where the index comes from"): a tree of
//! blocks keyed by local block hash under their parent, each node holding the set of workers
//! that cache it; per-worker lookup tables from the engine's block hash to the node (for
//! removals and for finding a stored run's parent); `find_matches` giving each worker's
//! number of leading blocks cached. Plain data: the index thread is its only writer (through
//! `DualIndex`); lookups take `&self`.
//!
//! The (parent, local hash) edges live in one flat map keyed by the router's own chained hash
//! of the path (`chain(parent's key, local)`, the root's children keyed by their local hash:
//! the spec's sequence hash of the local hashes), whatever ids the engine uses for its blocks.
//! A lookup then probes one independent key per depth, so the CPU overlaps the cache misses of
//! consecutive depths instead of waiting for each parent before the child. The map is our own
//! open-addressing table (`table.rs`: key and node id in one slot, one cache line per probe).
//! Which workers cache a node is split by worker slot: slots 0–63 are bits in a dense array
//! beside the nodes (a path's nodes, created in order, sit next to each other there), any
//! higher slots a list in the node. While a router knows at most 64 workers a lookup reads one
//! table slot per depth and a few bitmap lines; past 64 it also reads the nodes' lists.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use dynamo_protocols::hashing::{next_sequence_hash, sequence_hashes};
use dynamo_protocols::kv_events::{KvCacheEventData, KvCacheStoredBlock, Medium};
use smallvec::SmallVec;
use table::IdMap;

mod lower;
mod table;

pub use lower::{LowerHits, LowerTiers};

/// A worker (instance id) and data-parallel rank.
pub type WorkerKey = (u64, u32);

type NodeId = u32;
const ROOT: NodeId = 0;

/// Hasher for keys that are already uniformly distributed hashes (block hashes): one
/// multiply-xorshift instead of SipHash.
#[derive(Default, Clone, Copy)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
}

/// A `HashMap` with [`MixHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<MixHasher>>;

/// How many depths ahead a lookup asks for the path map's slots.
const AHEAD: usize = 16;

/// Worker slots below this are bits in the nodes' bitmaps; the others are listed in the node.
const MASK_SLOTS: usize = 64;

/// The slots of a bitmap, lowest first.
fn mask_slots(mut m: u64) -> impl Iterator<Item = u32> {
    std::iter::from_fn(move || {
        (m != 0).then(|| {
            let s = m.trailing_zeros();
            m &= m - 1;
            s
        })
    })
}

#[derive(Debug, Clone)]
struct Node {
    parent: NodeId,
    /// Chained hash of the path from the root (the key in `by_key`).
    key: u64,
    /// Worker slots of 64 and above caching this block (the lower ones are in `masks`).
    high_slots: SmallVec<[u32; 2]>,
    children: u32,
}

#[derive(Debug, Default)]
struct WorkerSlot {
    key: Option<WorkerKey>,
    /// Sequence hash → node.
    blocks: IdMap,
    /// Nodes that more than one of this worker's block hashes map to (a worker, or a forged
    /// peer, stored the same content under two hashes): the extra references, so the worker
    /// leaves such a node only when its last hash does, and the node is freed once.
    dups: FastMap<NodeId, u32>,
}

/// Why an event could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("stored event names parent block {0:#x}, which this worker does not cache")]
    UnknownParent(u64),
}

/// Per-worker overlap of one request with the index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OverlapScores {
    /// Leading blocks of the request each worker caches (workers with none are absent).
    pub scores: FastMap<WorkerKey, u32>,
    /// Blocks each of those workers caches in total.
    pub tree_sizes: FastMap<WorkerKey, usize>,
    /// Blocks right after each worker's device overlap that its host or disk tier holds
    /// (workers with none are absent).
    pub lower: FastMap<WorkerKey, LowerHits>,
}

impl OverlapScores {
    pub fn get(&self, w: WorkerKey) -> u32 {
        self.scores.get(&w).copied().unwrap_or(0)
    }
    /// `w`'s lower-tier continuation.
    pub fn lower(&self, w: WorkerKey) -> LowerHits {
        self.lower.get(&w).copied().unwrap_or_default()
    }
    /// The highest overlap of any worker.
    pub fn best(&self) -> u32 {
        self.scores.values().copied().max().unwrap_or(0)
    }
}

/// The radix index.
#[derive(Debug)]
pub struct RadixIndex {
    nodes: Vec<Node>,
    free_nodes: Vec<NodeId>,
    /// Path key → node.
    by_key: IdMap,
    /// Per node, the bitmap of the worker slots below 64 caching it.
    masks: Vec<u64>,
    slots: Vec<WorkerSlot>,
    free_slots: Vec<u32>,
    slot_of: HashMap<WorkerKey, u32>,
    /// The workers' host and disk tiers.
    lower: LowerTiers,
}

impl Default for RadixIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl RadixIndex {
    pub fn new() -> Self {
        RadixIndex {
            nodes: vec![Node {
                parent: ROOT,
                key: 0,
                high_slots: SmallVec::new(),
                children: 0,
            }],
            free_nodes: Vec::new(),
            by_key: IdMap::default(),
            masks: vec![0],
            slots: Vec::new(),
            free_slots: Vec::new(),
            slot_of: HashMap::new(),
            lower: LowerTiers::default(),
        }
    }

    /// Blocks in the tree (nodes other than the root).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - 1 - self.free_nodes.len()
    }

    /// Workers with at least one block, or known through an event.
    pub fn workers(&self) -> Vec<WorkerKey> {
        self.slot_of.keys().copied().collect()
    }

    /// Blocks `w` caches.
    pub fn worker_blocks(&self, w: WorkerKey) -> usize {
        self.slot_of
            .get(&w)
            .map_or(0, |&s| self.slots[s as usize].blocks.len())
    }

    /// Whether `w` caches the block with sequence hash `h`.
    pub fn has_block(&self, w: WorkerKey, h: u64) -> bool {
        self.slot_of
            .get(&w)
            .is_some_and(|&s| self.slots[s as usize].blocks.contains(h))
    }

    fn slot(&mut self, w: WorkerKey) -> u32 {
        if let Some(&s) = self.slot_of.get(&w) {
            return s;
        }
        let s = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(WorkerSlot::default());
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[s as usize].key = Some(w);
        self.slot_of.insert(w, s);
        s
    }

    /// Apply one event of worker `w`.
    pub fn apply(&mut self, w: WorkerKey, data: &KvCacheEventData) -> Result<(), IndexError> {
        match data {
            KvCacheEventData::Stored(s) => match s.medium {
                None | Some(Medium::Device) => self.store(w, s.parent_hash, &s.blocks),
                Some(m) => {
                    self.lower
                        .store(w, m, s.blocks.iter().map(|b| b.block_hash));
                    Ok(())
                }
            },
            KvCacheEventData::Removed(r) => {
                match r.medium {
                    None | Some(Medium::Device) => {
                        self.remove(w, &r.block_hashes);
                    }
                    Some(m) => self.lower.remove(w, m, &r.block_hashes),
                }
                Ok(())
            }
            KvCacheEventData::Cleared => {
                self.clear(w);
                Ok(())
            }
        }
    }

    /// Blocks `w` holds in lower tier `m` (host, disk).
    pub fn lower_blocks(&self, w: WorkerKey, m: Medium) -> usize {
        self.lower.blocks(w, m)
    }

    /// Blocks stored by `w` under `parent_hash` (`None`: the root), in prefix order.
    pub fn store(
        &mut self,
        w: WorkerKey,
        parent_hash: Option<u64>,
        blocks: &[KvCacheStoredBlock],
    ) -> Result<(), IndexError> {
        let slot = self.slot(w);
        let mut cur = match parent_hash {
            None => ROOT,
            Some(p) => match self.slots[slot as usize].blocks.get(p) {
                Some(n) => n,
                None => return Err(IndexError::UnknownParent(p)),
            },
        };
        if blocks.len() > 1 {
            self.prefetch_run(slot, cur, blocks);
        }
        for b in blocks {
            cur = self.store_one(slot, cur, b.block_hash, b.tokens_hash);
        }
        Ok(())
    }

    /// Start loading the table slots a stored run will touch, so that their cache misses
    /// overlap instead of each insertion waiting for its own (the keys need no memory: they
    /// chain from the parent's).
    fn prefetch_run(&self, slot: u32, parent: NodeId, blocks: &[KvCacheStoredBlock]) {
        let mut key = (parent != ROOT).then(|| self.nodes[parent as usize].key);
        let table = &self.slots[slot as usize].blocks;
        for b in blocks {
            let k = key.map_or(b.tokens_hash, |p| next_sequence_hash(p, b.tokens_hash));
            key = Some(k);
            self.by_key.prefetch(k);
            table.prefetch(b.block_hash);
        }
    }

    /// Store one block for `slot` under node `parent`; returns its node.
    fn store_one(&mut self, slot: u32, parent: NodeId, block_hash: u64, local: u64) -> NodeId {
        let key = if parent == ROOT {
            local
        } else {
            next_sequence_hash(self.nodes[parent as usize].key, local)
        };
        // One probe for both the lookup and the insertion.
        let (nodes, free, masks) = (&mut self.nodes, &mut self.free_nodes, &mut self.masks);
        let child = self.by_key.get_or_insert_with(key, || {
            let node = Node {
                parent,
                key,
                high_slots: SmallVec::new(),
                children: 0,
            };
            nodes[parent as usize].children += 1;
            match free.pop() {
                Some(id) => {
                    nodes[id as usize] = node;
                    masks[id as usize] = 0;
                    id
                }
                None => {
                    nodes.push(node);
                    masks.push(0);
                    (nodes.len() - 1) as NodeId
                }
            }
        });
        let had = if (slot as usize) < MASK_SLOTS {
            let had = self.masks[child as usize] & (1 << slot) != 0;
            self.masks[child as usize] |= 1 << slot;
            had
        } else {
            let ws = &mut self.nodes[child as usize].high_slots;
            let had = ws.contains(&slot);
            if !had {
                ws.push(slot);
            }
            had
        };
        let old = self.slots[slot as usize].blocks.insert(block_hash, child);
        if old == Some(child) {
            return child; // the same block stored again
        }
        if had {
            *self.slots[slot as usize].dups.entry(child).or_default() += 1;
        }
        if let Some(old) = old {
            // The engine reused a sequence hash for another position: drop the stale one.
            self.drop_worker_from(slot, old);
        }
        child
    }

    /// Blocks removed by `w`, by sequence hash; unknown hashes are ignored (already gone).
    /// Returns how many were known.
    pub fn remove(&mut self, w: WorkerKey, hashes: &[u64]) -> usize {
        let Some(&slot) = self.slot_of.get(&w) else {
            return 0;
        };
        let mut known = 0;
        for h in hashes {
            if let Some(n) = self.slots[slot as usize].blocks.remove(*h) {
                known += 1;
                self.drop_worker_from(slot, n);
            }
        }
        known
    }

    /// Everything `w` caches is gone (the worker stays known).
    pub fn clear(&mut self, w: WorkerKey) {
        self.lower.clear(w);
        let Some(&slot) = self.slot_of.get(&w) else {
            return;
        };
        let blocks = std::mem::take(&mut self.slots[slot as usize].blocks);
        for n in blocks.values() {
            self.drop_worker_from(slot, n);
        }
    }

    /// `w` left: drop its blocks and forget it.
    pub fn remove_worker(&mut self, w: WorkerKey) {
        self.clear(w);
        if let Some(slot) = self.slot_of.remove(&w) {
            self.slots[slot as usize].key = None;
            self.slots[slot as usize].blocks = IdMap::default();
            self.slots[slot as usize].dups = FastMap::default();
            self.free_slots.push(slot);
        }
    }

    fn drop_worker_from(&mut self, slot: u32, n: NodeId) {
        let dups = &mut self.slots[slot as usize].dups;
        if let Some(c) = dups.get_mut(&n) {
            // Another of the worker's hashes still maps here.
            *c -= 1;
            if *c == 0 {
                dups.remove(&n);
            }
            return;
        }
        if (slot as usize) < MASK_SLOTS {
            self.masks[n as usize] &= !(1 << slot);
        } else {
            let ws = &mut self.nodes[n as usize].high_slots;
            if let Some(i) = ws.iter().position(|&s| s == slot) {
                ws.swap_remove(i);
            }
        }
        self.prune(n);
    }

    /// Free `n` and its ancestors while they have no workers and no children.
    fn prune(&mut self, mut n: NodeId) {
        while n != ROOT {
            let node = &self.nodes[n as usize];
            if self.masks[n as usize] != 0 || !node.high_slots.is_empty() || node.children > 0 {
                return;
            }
            let (parent, key) = (node.parent, node.key);
            self.by_key.remove(key);
            self.nodes[n as usize].high_slots = SmallVec::new();
            self.free_nodes.push(n);
            self.nodes[parent as usize].children -= 1;
            n = parent;
        }
    }

    /// Each worker's count of consecutive leading blocks of `local_hashes` it caches.
    pub fn find_matches(&self, local_hashes: &[u64]) -> OverlapScores {
        self.find_matches_seq(&sequence_hashes(local_hashes))
    }

    /// [`RadixIndex::find_matches`] given the request's sequence hashes (the chain of its local
    /// hashes, which the router computes anyway).
    pub fn find_matches_seq(&self, seq_hashes: &[u64]) -> OverlapScores {
        let mut s = if self.slots.len() <= MASK_SLOTS {
            self.find_matches_masks(seq_hashes)
        } else {
            self.find_matches_lists(seq_hashes)
        };
        let lower = self.lower.continuations(seq_hashes, |w| s.get(w));
        s.lower = lower;
        s
    }

    /// The lookup while every slot has a bit: the nodes' bitmaps only.
    fn find_matches_masks(&self, seq_hashes: &[u64]) -> OverlapScores {
        let mut out = OverlapScores::default();
        let mut active = 0u64;
        let mut depth = 0u32;
        for h in seq_hashes.iter().take(AHEAD) {
            self.by_key.prefetch(*h);
        }
        for (i, h) in seq_hashes.iter().enumerate() {
            if let Some(next) = seq_hashes.get(i + AHEAD) {
                self.by_key.prefetch(*next);
            }
            let Some(n) = self.by_key.get(*h) else { break };
            let mask = self.masks[n as usize];
            let next = if i == 0 { mask } else { active & mask };
            for s in mask_slots(active & !next) {
                self.score(&mut out, s, i as u32);
            }
            active = next;
            if active == 0 {
                break;
            }
            depth = i as u32 + 1;
        }
        for s in mask_slots(active) {
            self.score(&mut out, s, depth);
        }
        out
    }

    /// Record `blocks` of overlap for worker slot `s`.
    fn score(&self, out: &mut OverlapScores, s: u32, blocks: u32) {
        let slot = &self.slots[s as usize];
        let key = slot.key.expect("live slot");
        out.scores.insert(key, blocks);
        out.tree_sizes.insert(key, slot.blocks.len());
    }

    /// The lookup through the nodes' bitmaps and lists (any number of slots).
    fn find_matches_lists(&self, seq_hashes: &[u64]) -> OverlapScores {
        let mut out = OverlapScores::default();
        let mut path: SmallVec<[NodeId; 64]> = SmallVec::new();
        // Phase 1: independent probes (see the module docs); phase 2: the worker sets.
        for h in seq_hashes {
            match self.by_key.get(*h) {
                Some(n) => path.push(n),
                None => break,
            }
        }
        let mut active: SmallVec<[u32; 16]> = SmallVec::new();
        // Per worker slot, the last depth whose node listed it.
        let mut seen: SmallVec<[u32; 64]> = smallvec::smallvec![u32::MAX; self.slots.len()];
        let mut depth = 0u32;
        for (i, &n) in path.iter().enumerate() {
            let ws = mask_slots(self.masks[n as usize])
                .chain(self.nodes[n as usize].high_slots.iter().copied());
            if i == 0 {
                active.extend(ws);
            } else {
                for s in ws {
                    seen[s as usize] = i as u32;
                }
                active.retain(|s| {
                    let keep = seen[*s as usize] == i as u32;
                    if !keep {
                        self.score(&mut out, *s, i as u32);
                    }
                    keep
                });
            }
            if active.is_empty() {
                break;
            }
            depth = i as u32 + 1;
        }
        for s in active {
            self.score(&mut out, s, depth);
        }
        out
    }

    /// Overlaps as sorted (worker, blocks) pairs (tests, tools).
    pub fn find_matches_ro(&self, local_hashes: &[u64]) -> Vec<(WorkerKey, u32)> {
        let mut out: Vec<(WorkerKey, u32)> =
            self.find_matches(local_hashes).scores.into_iter().collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests;
