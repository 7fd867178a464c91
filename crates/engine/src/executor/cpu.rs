//! The `cpu` executor: weights as loaded (quantized blocks or dense f32) and an f16 KV cache
//! in host memory, the forward pass on the engine's compute thread pool, and block export /
//! import as plain copies of the cache's f16 slots.

use dynamo_protocols::kv_transfer::{KvDtype, KvLayout};

use super::Executor;
use crate::kernels::ComputePool;
use crate::kv::KvCache;
use crate::model::{Model, ModelConfig, Scratch, SeqInput, Weights};
use crate::TransferError;

/// Weights, KV cache, scratch and threads of a forward pass on the CPU.
pub struct CpuExecutor {
    model: Model,
    kv: KvCache,
    scratch: Scratch,
    threads: ComputePool,
}

impl CpuExecutor {
    /// An executor over `weights` with a cache of `blocks` blocks of `page` tokens.
    pub fn new(weights: Weights, blocks: usize, page: usize, threads: ComputePool) -> Self {
        let c = &weights.cfg;
        let kv = KvCache::new(c.layers, blocks, page, c.kv_heads * c.head_dim);
        CpuExecutor {
            model: Model { w: weights },
            kv,
            scratch: Scratch::default(),
            threads,
        }
    }
}

fn put_u16s(out: &mut Vec<u8>, v: &[u16]) {
    out.reserve(v.len() * 2);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn get_u16s(dst: &mut [u16], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = u16::from_le_bytes([s[0], s[1]]);
    }
}

impl Executor for CpuExecutor {
    fn model(&self) -> &ModelConfig {
        &self.model.w.cfg
    }

    fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Vec<f32> {
        self.model
            .forward(&mut self.kv, seqs, &mut self.scratch, &self.threads)
    }

    fn weight_bytes(&self) -> usize {
        self.model.w.summary.bytes_per_token as usize
    }

    fn threads(&self) -> &ComputePool {
        &self.threads
    }

    fn kv_layout(&self) -> KvLayout {
        let c = &self.model.w.cfg;
        KvLayout {
            layers: c.layers as u32,
            kv_heads: c.kv_heads as u32,
            head_dim: c.head_dim as u32,
            dtype: KvDtype::F16,
            block_size: self.kv.page as u32,
        }
    }

    fn copy_prefix(&mut self, src: u32, dst: u32, tokens: usize) {
        self.kv.copy_prefix(src as usize, dst as usize, tokens);
    }

    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), TransferError> {
        super::export_header(self.kv_layout(), self.kv.blocks(), blocks, out)?;
        for &b in blocks {
            for layer in 0..self.kv.layers() {
                let (k, v) = self.kv.block(layer, b as usize);
                put_u16s(out, k);
                put_u16s(out, v);
            }
        }
        Ok(())
    }

    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), TransferError> {
        let ours = self.kv_layout();
        let payload = super::import_payload(ours, self.kv.blocks(), blocks, data)?;
        let half = ours.half_slab_bytes();
        let mut chunks = payload.chunks_exact(half);
        for &b in blocks {
            for layer in 0..self.kv.layers() {
                let (k, v) = self.kv.block_mut(layer, b as usize);
                get_u16s(k, chunks.next().expect("length checked by the header"));
                get_u16s(v, chunks.next().expect("length checked by the header"));
            }
        }
        Ok(())
    }
}
