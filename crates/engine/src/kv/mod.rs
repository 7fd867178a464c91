//! KV cache: the paged K/V storage (one f16 slab per layer, addressed by block and offset),
//! the block pool with its radix tree of shared prefixes, and the tiers below it (host
//! memory, file storage) that keep blocks the pool lets go.

mod hierarchy;
mod host;
mod pool;
pub mod storage;

pub use hierarchy::{BlockBytes, HiCacheConfig, Tiers, WritePolicy};
pub use host::{HostHit, HostTier};
pub use pool::{BlockPool, Evicted, NodeId, PoolStats, ROOT};

/// K and V for every layer as f16 bits, `blocks × page` slots of `kv_heads × head_dim` each.
pub struct KvCache {
    pub page: usize,
    kv_dim: usize,
    layers: Vec<(Vec<u16>, Vec<u16>)>,
}

impl KvCache {
    pub fn new(layers: usize, blocks: usize, page: usize, kv_dim: usize) -> Self {
        let n = blocks * page * kv_dim;
        KvCache {
            page,
            kv_dim,
            layers: (0..layers)
                .map(|_| (vec![0u16; n], vec![0u16; n]))
                .collect(),
        }
    }

    /// Bytes per token slot across all layers (K and V).
    pub fn bytes_per_token(layers: usize, kv_dim: usize) -> usize {
        layers * 2 * kv_dim * std::mem::size_of::<u16>()
    }

    pub fn layer(&self, i: usize) -> (&[u16], &[u16]) {
        let (k, v) = &self.layers[i];
        (k, v)
    }

    pub fn layer_mut(&mut self, i: usize) -> (&mut [u16], &mut [u16]) {
        let (k, v) = &mut self.layers[i];
        (k, v)
    }

    /// Layers held.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Blocks held per layer.
    pub fn blocks(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |(k, _)| k.len() / (self.page * self.kv_dim).max(1))
    }

    /// Slots of one block in one layer's K (or V) slab.
    fn block_range(&self, block: usize) -> std::ops::Range<usize> {
        let n = self.page * self.kv_dim;
        block * n..(block + 1) * n
    }

    /// One block's K and V in layer `layer`.
    pub fn block(&self, layer: usize, block: usize) -> (&[u16], &[u16]) {
        let r = self.block_range(block);
        let (k, v) = &self.layers[layer];
        (&k[r.clone()], &v[r])
    }

    /// Copy the first `tokens` slots of block `src` into block `dst`, K and V of every layer.
    pub fn copy_prefix(&mut self, src: usize, dst: usize, tokens: usize) {
        let n = tokens.min(self.page) * self.kv_dim;
        let (from, to) = (self.block_range(src).start, self.block_range(dst).start);
        for (k, v) in &mut self.layers {
            k.copy_within(from..from + n, to);
            v.copy_within(from..from + n, to);
        }
    }

    /// One block's K and V in layer `layer`, to write.
    pub fn block_mut(&mut self, layer: usize, block: usize) -> (&mut [u16], &mut [u16]) {
        let r = self.block_range(block);
        let (k, v) = &mut self.layers[layer];
        (&mut k[r.clone()], &mut v[r])
    }
}
