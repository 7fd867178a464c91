//! The KV block pool and its radix tree of full blocks. A block is free, private to one
//! sequence (being filled), or a node of the tree (its tokens and prefix fixed, shared by any
//! number of sequences through reference counts). Unreferenced nodes stay cached and are
//! evicted leaf-first in LRU order when the free list runs dry. Every node insertion and
//! eviction becomes a KV event (stored / removed) with the router's block hashes. A prompt
//! that diverges inside a cached block finds the block sharing its longest token prefix
//! (`match_partial`), whose first tokens' K/V it copies rather than computes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use dynamo_protocols::hashing::{local_block_hash, next_sequence_hash};
use dynamo_protocols::kv_events::{EventBuffer, KvCacheEventData};

/// Node index; 0 is the root (no block).
pub type NodeId = u32;
pub const ROOT: NodeId = 0;

struct Node {
    parent: NodeId,
    children: HashMap<u64, NodeId>,
    /// Partial tails under this node: the unfinished last blocks of ended sequences, kept
    /// for their tokens' K/V (no hash, no event: the router's view stays full-block).
    partials: Vec<NodeId>,
    tokens: Box<[u32]>,
    local_hash: u64,
    seq_hash: u64,
    block: u32,
    refs: u32,
    last_use: u64,
    live: bool,
    /// Requests that used the block: the one that computed it, then each prefix hit.
    hits: u32,
}

impl Node {
    /// Nothing hangs under it: evictable once unreferenced.
    fn is_leaf(&self) -> bool {
        self.children.is_empty() && self.partials.is_empty()
    }
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub total: usize,
    pub free: usize,
    /// Blocks in tree nodes nobody references (reclaimable).
    pub evictable: usize,
    /// Blocks in tree nodes some sequence references.
    pub shared_in_use: usize,
    /// Blocks private to sequences.
    pub private_in_use: usize,
}

/// Block pool plus prefix tree.
pub struct BlockPool {
    page: usize,
    total: usize,
    free: Vec<u32>,
    nodes: Vec<Node>,
    free_nodes: Vec<NodeId>,
    lru: BinaryHeap<Reverse<(u64, NodeId)>>,
    tick: u64,
    unreferenced: usize,
    referenced: usize,
    events: EventBuffer,
    caching: bool,
    /// Full blocks evicted since the last [`BlockPool::take_evicted`], when tracked (a host
    /// tier keeps them).
    evicted: Option<Vec<Evicted>>,
    /// Full blocks stored since the last [`BlockPool::take_stored`], when tracked (a
    /// write-through host tier copies them).
    stored: Option<Vec<(NodeId, u64)>>,
    /// Full cached blocks by sequence hash (pinning finds them so).
    by_hash: HashMap<u64, NodeId>,
}

/// A full cached block leaving the pool: its chained hash, its parent's, its tokens, and the
/// block that still holds its K/V until the block's new owner writes it.
#[derive(Debug)]
pub struct Evicted {
    pub seq_hash: u64,
    pub parent_hash: Option<u64>,
    pub tokens: Box<[u32]>,
    pub block: u32,
}

impl BlockPool {
    /// `total` blocks of `page` tokens; `caching` off = no prefix sharing (blocks freed at
    /// sequence end).
    pub fn new(total: usize, page: usize, caching: bool) -> Self {
        let root = Node {
            parent: ROOT,
            children: HashMap::new(),
            partials: Vec::new(),
            tokens: Box::new([]),
            local_hash: 0,
            seq_hash: 0,
            block: u32::MAX,
            refs: 1,
            last_use: 0,
            live: true,
            hits: 0,
        };
        BlockPool {
            page,
            total,
            free: (0..total as u32).rev().collect(),
            nodes: vec![root],
            free_nodes: Vec::new(),
            lru: BinaryHeap::new(),
            tick: 0,
            unreferenced: 0,
            referenced: 0,
            events: EventBuffer::default(),
            caching,
            evicted: None,
            stored: None,
            by_hash: HashMap::new(),
        }
    }

    pub fn page(&self) -> usize {
        self.page
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks obtainable now: free plus evictable.
    pub fn available(&self) -> usize {
        self.free.len() + self.unreferenced
    }

    pub fn stats(&self) -> PoolStats {
        let shared = self.referenced;
        PoolStats {
            total: self.total,
            free: self.free.len(),
            evictable: self.unreferenced,
            shared_in_use: shared,
            private_in_use: self.total - self.free.len() - self.unreferenced - shared,
        }
    }

    /// Take the events produced since the last call.
    pub fn drain_events(&mut self) -> Vec<KvCacheEventData> {
        self.events.drain()
    }

    /// The longest chain of cached full blocks that prefixes `tokens`, at most `max_blocks`.
    pub fn match_prefix(&self, tokens: &[u32], max_blocks: usize) -> Vec<NodeId> {
        let mut out = Vec::new();
        if !self.caching {
            return out;
        }
        let mut cur = ROOT;
        for blk in tokens.chunks_exact(self.page).take(max_blocks) {
            let h = local_block_hash(blk);
            match self.nodes[cur as usize].children.get(&h) {
                Some(&n) if *self.nodes[n as usize].tokens == *blk => {
                    out.push(n);
                    cur = n;
                }
                _ => break,
            }
        }
        out
    }

    /// The cached block under `parent` (the last node of a full-block match, or the root)
    /// whose tokens share the longest prefix with `tokens`, and that prefix's length, at most
    /// `max` (below a block): the tokens a sequence diverging mid-block can copy instead of
    /// computing. `None` when no child shares a first token.
    pub fn match_partial(
        &self,
        parent: NodeId,
        tokens: &[u32],
        max: usize,
    ) -> Option<(NodeId, usize)> {
        if !self.caching || max == 0 || tokens.is_empty() {
            return None;
        }
        let limit = max.min(tokens.len()).min(self.page - 1);
        let p = &self.nodes[parent as usize];
        p.children
            .values()
            .chain(&p.partials)
            .map(|&n| {
                let t = &self.nodes[n as usize].tokens;
                let common = t
                    .iter()
                    .zip(&tokens[..limit])
                    .take_while(|(a, b)| a == b)
                    .count();
                (n, common)
            })
            .filter(|&(_, c)| c > 0)
            .max_by_key(|&(n, c)| (c, std::cmp::Reverse(n)))
    }

    /// How many of `nodes` are currently unreferenced (acquiring them lowers `available`).
    pub fn unreferenced_among(&self, nodes: &[NodeId]) -> usize {
        nodes
            .iter()
            .filter(|&&n| self.nodes[n as usize].refs == 0)
            .count()
    }

    pub fn block_of(&self, n: NodeId) -> u32 {
        self.nodes[n as usize].block
    }

    /// Reference nodes (a sequence starts using them).
    pub fn acquire(&mut self, nodes: &[NodeId]) {
        for &n in nodes {
            let node = &mut self.nodes[n as usize];
            if node.refs == 0 {
                self.unreferenced -= 1;
                self.referenced += 1;
            }
            node.refs += 1;
        }
    }

    /// Drop references; nodes nobody uses become evictable (most recently used last).
    pub fn release(&mut self, nodes: &[NodeId]) {
        self.tick += 1;
        for &n in nodes.iter().rev() {
            let node = &mut self.nodes[n as usize];
            debug_assert!(node.refs > 0);
            node.refs -= 1;
            node.last_use = self.tick;
            if node.refs == 0 {
                self.unreferenced += 1;
                self.referenced -= 1;
                if node.is_leaf() {
                    self.lru.push(Reverse((self.tick, n)));
                }
            }
        }
    }

    /// A block for a sequence's private use, evicting a cached block if needed.
    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(b) = self.free.pop() {
            return Some(b);
        }
        self.evict_one()?;
        self.free.pop()
    }

    /// Keep the full blocks that eviction drops, for [`BlockPool::take_evicted`].
    pub fn track_evictions(&mut self) {
        self.evicted.get_or_insert_with(Vec::new);
    }

    /// The full blocks evicted since the last call (their K/V must be read before the blocks
    /// are written again).
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        self.evicted
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Keep the full blocks stored in the tree, for [`BlockPool::take_stored`].
    pub fn track_stored(&mut self) {
        self.stored.get_or_insert_with(Vec::new);
    }

    /// The nodes stored since the last call that are still in the tree, as they were.
    pub fn take_stored(&mut self) -> Vec<NodeId> {
        let got = self.stored.as_mut().map(std::mem::take).unwrap_or_default();
        got.into_iter()
            .filter(|&(n, h)| {
                let node = &self.nodes[n as usize];
                node.live && node.seq_hash == h && node.tokens.len() == self.page
            })
            .map(|(n, _)| n)
            .collect()
    }

    /// Count a prefix hit on `nodes`; those whose count just reached `threshold` uses.
    pub fn hit(&mut self, nodes: &[NodeId], threshold: u32) -> Vec<NodeId> {
        let mut reached = Vec::new();
        for &n in nodes {
            let node = &mut self.nodes[n as usize];
            node.hits = node.hits.saturating_add(1);
            if node.hits == threshold {
                reached.push(n);
            }
        }
        reached
    }

    /// The cached full block with sequence hash `hash`.
    pub fn find(&self, hash: u64) -> Option<NodeId> {
        self.by_hash.get(&hash).copied()
    }

    /// Node `n` and its ancestors, root side first.
    pub fn chain_of(&self, n: NodeId) -> Vec<NodeId> {
        let mut chain = Vec::new();
        let mut cur = n;
        while cur != ROOT {
            chain.push(cur);
            cur = self.nodes[cur as usize].parent;
        }
        chain.reverse();
        chain
    }

    /// The sequence hash of node `n`'s parent (`None` under the root).
    pub fn parent_hash_of(&self, n: NodeId) -> Option<u64> {
        let p = self.nodes[n as usize].parent;
        (p != ROOT).then(|| self.nodes[p as usize].seq_hash)
    }

    /// The tokens of node `n`'s block.
    pub fn tokens_of(&self, n: NodeId) -> &[u32] {
        &self.nodes[n as usize].tokens
    }

    /// The chained hash of node `n` (the router's sequence hash of its block).
    pub fn seq_hash_of(&self, n: NodeId) -> u64 {
        self.nodes[n as usize].seq_hash
    }

    /// Return a private block.
    pub fn free_block(&mut self, b: u32) {
        self.free.push(b);
    }

    fn evict_one(&mut self) -> Option<()> {
        while let Some(Reverse((tick, n))) = self.lru.pop() {
            let node = &self.nodes[n as usize];
            if !node.live || node.refs > 0 || !node.is_leaf() || node.last_use != tick {
                continue; // stale heap entry
            }
            let (parent, h, seq_hash, block) =
                (node.parent, node.local_hash, node.seq_hash, node.block);
            let partial = node.tokens.len() < self.page;
            if partial {
                self.nodes[parent as usize].partials.retain(|&c| c != n);
            } else {
                self.nodes[parent as usize].children.remove(&h);
            }
            let parent_hash = (parent != ROOT).then(|| self.nodes[parent as usize].seq_hash);
            if !partial {
                self.by_hash.remove(&seq_hash);
            }
            let node = &mut self.nodes[n as usize];
            node.live = false;
            let tokens = std::mem::take(&mut node.tokens);
            if let (Some(ev), false) = (self.evicted.as_mut(), partial) {
                ev.push(Evicted {
                    seq_hash,
                    parent_hash,
                    tokens,
                    block,
                });
            }
            self.free_nodes.push(n);
            self.free.push(block);
            self.unreferenced -= 1;
            if !partial {
                self.events.removed(seq_hash);
            }
            let p = &self.nodes[parent as usize];
            if parent != ROOT && p.refs == 0 && p.is_leaf() {
                self.lru.push(Reverse((p.last_use, parent)));
            }
            return Some(());
        }
        None
    }

    /// Store `node` in a free slot (or a new one); its id.
    fn add_node(&mut self, node: Node) -> NodeId {
        match self.free_nodes.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as NodeId
            }
        }
    }

    /// Keep the unfinished last block `block` of an ended sequence (its first `tokens.len()`
    /// slots computed, following `parent`) as a partial tail: unreferenced, evictable, no
    /// event. Returns false (the caller frees the block) when caching is off or a tail under
    /// `parent` already holds these tokens or more of them.
    pub fn insert_partial(&mut self, parent: NodeId, tokens: &[u32], block: u32) -> bool {
        if !self.caching || tokens.is_empty() || tokens.len() >= self.page {
            return false;
        }
        let covered = self.nodes[parent as usize]
            .children
            .values()
            .chain(&self.nodes[parent as usize].partials)
            .any(|&n| self.nodes[n as usize].tokens.starts_with(tokens));
        if covered {
            return false;
        }
        self.tick += 1;
        let node = Node {
            parent,
            children: HashMap::new(),
            partials: Vec::new(),
            tokens: tokens.into(),
            local_hash: 0,
            seq_hash: 0,
            block,
            refs: 0,
            last_use: self.tick,
            live: true,
            hits: 0,
        };
        let id = self.add_node(node);
        self.nodes[parent as usize].partials.push(id);
        self.unreferenced += 1;
        self.lru.push(Reverse((self.tick, id)));
        true
    }

    /// Make the full private block `block` (holding `tokens`, following `parent`) a shared
    /// node. Returns the node and whether the caller's block was kept: if an identical node
    /// already exists, the caller must switch to its block (already referenced for it) and
    /// its own block has been freed.
    /// Without prefix caching the block stays private (`u32::MAX`, as after a collision): no
    /// tree node, no `stored` event, never evictable while in use.
    pub fn insert(&mut self, parent: NodeId, tokens: &[u32], block: u32) -> (NodeId, bool) {
        debug_assert_eq!(tokens.len(), self.page);
        if !self.caching {
            return (u32::MAX, true);
        }
        let h = local_block_hash(tokens);
        if let Some(&n) = self.nodes[parent as usize].children.get(&h) {
            if *self.nodes[n as usize].tokens == *tokens {
                self.acquire(&[n]);
                self.free.push(block);
                return (n, false);
            }
            // A local-hash collision with different tokens: keep the block private.
            return (u32::MAX, true);
        }
        let parent_hash = (parent != ROOT).then(|| self.nodes[parent as usize].seq_hash);
        let seq_hash = parent_hash.map_or(h, |p| next_sequence_hash(p, h));
        let node = Node {
            parent,
            children: HashMap::new(),
            partials: Vec::new(),
            tokens: tokens.into(),
            local_hash: h,
            seq_hash,
            block,
            refs: 1,
            last_use: self.tick,
            live: true,
            hits: 1,
        };
        let id = self.add_node(node);
        self.nodes[parent as usize].children.insert(h, id);
        self.by_hash.insert(seq_hash, id);
        self.referenced += 1;
        self.events.stored(parent_hash, seq_hash, h);
        if let Some(st) = self.stored.as_mut() {
            st.push((id, seq_hash));
        }
        (id, true)
    }
}

#[cfg(test)]
mod tests;
