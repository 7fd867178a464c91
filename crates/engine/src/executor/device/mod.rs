//! The device executor: the forward pass as a sequence of kernel calls on a [`DeviceOps`]
//! implementation, with weights (dequantized to f16), the paged f16 KV cache (same blocks,
//! block ids and slot layout as the CPU executor) and scratch in that implementation's
//! memory. Per step, the host builds a [`plan::StepPlan`] (token arrays, slots, block tables,
//! logit rows), uploads it, runs the layers and downloads only the logits rows. Block export
//! and import copy a block's slab per layer between device and host in the byte format of
//! `dynamo_protocols::kv_transfer`, so a device worker takes part in disaggregation like a CPU
//! one. With [`HostOps`] it runs in plain Rust: that is how CI checks everything but the
//! kernels themselves.

#[cfg(feature = "cuda")]
pub mod cuda;
mod graph;
mod host;
pub mod ops;
pub mod plan;

pub use host::HostOps;
pub use ops::{AttnShape, DeviceOps, StepBufs};

use dynamo_protocols::kv_transfer::{KvDtype, KvLayout};

use super::Executor;
use crate::kernels::{to_f16, ComputePool, Linear};
use crate::model::{ModelConfig, SeqInput, Weights};
use crate::TransferError;

/// One layer's weights on the device.
struct Layer<O: DeviceOps> {
    attn_norm: O::F32,
    qkv: O::F16,
    qkv_bias: Option<O::F32>,
    qk_norm: Option<(O::F32, O::F32)>,
    o: O::F16,
    ffn_norm: O::F32,
    gate_up: O::F16,
    down: O::F16,
}

/// Activations sized for `tokens` rows (grown on demand).
pub(super) struct Scratch<O: DeviceOps> {
    tokens: usize,
    x: O::F32,
    h: O::F32,
    qkv: O::F32,
    att: O::F32,
    tmp: O::F32,
    gu: O::F32,
    act: O::F32,
}

/// The weights on the device.
pub(super) struct DeviceModel<O: DeviceOps> {
    embed: O::F16,
    layers: Vec<Layer<O>>,
    norm: O::F32,
    /// `None`: tied to the embedding.
    lm_head: Option<O::F16>,
    inv_freq: O::F32,
}

/// Per layer, K and V: `blocks × page × kv_heads · head_dim` f16.
pub(super) struct KvBufs<O: DeviceOps> {
    k: Vec<O::F16>,
    v: Vec<O::F16>,
}

/// Weights, KV cache and scratch on a device, driven through `O`.
pub struct DeviceExecutor<O: DeviceOps> {
    ops: O,
    cfg: ModelConfig,
    m: DeviceModel<O>,
    kv: KvBufs<O>,
    page: usize,
    blocks: usize,
    scratch: Option<Scratch<O>>,
    /// Decode steps run padded to a bucket, from buffers that stay put (what a captured CUDA
    /// graph replays); `None`: every step is launched as it comes.
    graphs: Option<graph::Buckets<O>>,
    /// The last forward pass ran as a replayed graph.
    graph_ran: bool,
    /// Decode steps that ran padded to a bucket.
    bucketed: u64,
    /// Host time before each step's download, summed (`Executor::host_seconds`).
    host: std::time::Duration,
    /// Bytes of the weights on the device (f16 matrices, f32 norms).
    weight_bytes: usize,
    threads: ComputePool,
}

/// A weight matrix as f16 (whatever its format on the host).
fn half(l: &Linear) -> Vec<u16> {
    let f = l.to_f32();
    let mut h = vec![0u16; f.len()];
    to_f16(&f, &mut h);
    h
}

impl<O: DeviceOps> DeviceExecutor<O> {
    /// Move `weights` onto the device behind `ops` and allocate a cache of `blocks` blocks of
    /// `page` tokens; `threads` serve the work around the forward pass (sampling).
    pub fn new(
        mut ops: O,
        weights: Weights,
        blocks: usize,
        page: usize,
        threads: ComputePool,
    ) -> Self {
        let c = weights.cfg.clone();
        let w = &weights;
        let norms: usize = w.norm.len()
            + w.layers
                .iter()
                .map(|l| l.attn_norm.len() + l.ffn_norm.len())
                .sum::<usize>();
        let matrices: usize = w.embed.n * w.embed.k
            + w.lm_head.as_ref().map_or(0, |l| l.n * l.k)
            + w.layers
                .iter()
                .map(|l| {
                    [&l.qkv, &l.o, &l.gate_up, &l.down]
                        .iter()
                        .map(|m| m.n * m.k)
                        .sum::<usize>()
                })
                .sum::<usize>();
        let weight_bytes = matrices * 2 + norms * 4;
        let f16 = |ops: &mut O, l: &Linear| ops.f16_from(&half(l));
        let embed = f16(&mut ops, &weights.embed);
        let lm_head = weights.lm_head.as_ref().map(|l| f16(&mut ops, l));
        let layers = weights
            .layers
            .iter()
            .map(|l| Layer {
                attn_norm: ops.f32_from(&l.attn_norm),
                qkv: f16(&mut ops, &l.qkv),
                qkv_bias: l.qkv_bias.as_ref().map(|b| ops.f32_from(b)),
                qk_norm: l
                    .qk_norm
                    .as_ref()
                    .map(|(q, k)| (ops.f32_from(q), ops.f32_from(k))),
                o: f16(&mut ops, &l.o),
                ffn_norm: ops.f32_from(&l.ffn_norm),
                gate_up: f16(&mut ops, &l.gate_up),
                down: f16(&mut ops, &l.down),
            })
            .collect();
        let norm = ops.f32_from(&weights.norm);
        let inv_freq = ops.f32_from(&weights.inv_freq);
        let n = blocks * page * c.kv_heads * c.head_dim;
        let k = (0..c.layers).map(|_| ops.f16_zeros(n)).collect();
        let v = (0..c.layers).map(|_| ops.f16_zeros(n)).collect();
        DeviceExecutor {
            ops,
            cfg: c,
            m: DeviceModel {
                embed,
                layers,
                norm,
                lm_head,
                inv_freq,
            },
            kv: KvBufs { k, v },
            page,
            blocks,
            scratch: None,
            graphs: None,
            graph_ran: false,
            bucketed: 0,
            host: std::time::Duration::ZERO,
            weight_bytes,
            threads,
        }
    }

    /// Run decode steps of up to 256 sequences padded to a bucket from persistent buffers
    /// (sequences up to `context` tokens), which `O` may capture and replay as graphs.
    pub fn enable_graphs(&mut self, context: usize) {
        self.graphs = Some(graph::Buckets::new(context.div_ceil(self.page), self.page));
    }

    /// Decode steps run padded to a bucket so far.
    pub fn bucketed_steps(&self) -> u64 {
        self.bucketed
    }

    /// What runs the kernels.
    pub fn describe(&self) -> String {
        self.ops.describe()
    }

    /// Scratch for at least `t` token rows.
    fn scratch(&mut self, t: usize) -> Scratch<O> {
        match self.scratch.take() {
            Some(s) if s.tokens >= t => s,
            _ => Scratch::new(&mut self.ops, &self.cfg, t.next_power_of_two()),
        }
    }

    fn block_elems(&self) -> usize {
        self.page * self.cfg.kv_heads * self.cfg.head_dim
    }

    /// Write an export's blocks into `blocks`, on the copy engine when `staged`.
    fn import(&mut self, blocks: &[u32], data: &[u8], staged: bool) -> Result<(), TransferError> {
        let payload = super::import_payload(self.kv_layout(), self.blocks, blocks, data)?;
        let per = self.block_elems();
        let mut chunks = payload.chunks_exact(per * 2);
        let mut buf = vec![0u16; per];
        for &b in blocks {
            for li in 0..self.cfg.layers {
                for kv in [&mut self.kv.k[li], &mut self.kv.v[li]] {
                    let bytes = chunks.next().expect("length checked by the header");
                    for (d, s) in buf.iter_mut().zip(bytes.chunks_exact(2)) {
                        *d = u16::from_le_bytes([s[0], s[1]]);
                    }
                    if staged {
                        self.ops.f16_write_async(kv, b as usize * per, &buf);
                    } else {
                        self.ops.f16_write(kv, b as usize * per, &buf);
                    }
                }
            }
        }
        Ok(())
    }
}

impl<O: DeviceOps> Executor for DeviceExecutor<O> {
    fn model(&self) -> &ModelConfig {
        &self.cfg
    }

    fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Vec<f32> {
        // Staged imports land before this pass reads the cache.
        self.ops.fence_copies();
        let mut p = plan::StepPlan::new(seqs, self.page);
        let t = p.tokens.len();
        if t == 0 {
            return Vec::new();
        }
        self.graph_ran = false;
        let t0 = std::time::Instant::now();
        if let Some(b) = self.graphs.as_mut() {
            let (ops, kv, host) = (&mut self.ops, &mut self.kv, &mut self.host);
            if let Some((logits, ran)) = b.decode(ops, &self.cfg, &self.m, kv, &mut p, host, t0) {
                self.graph_ran = ran;
                self.bucketed += 1;
                return logits;
            }
        }
        let step = StepBufs::upload(&mut self.ops, &p, self.page);
        let mut s = self.scratch(t);
        let n = step.logit_rows_n;
        graph::pass(
            &mut self.ops,
            &self.cfg,
            &self.m,
            &mut self.kv,
            &mut s,
            &step,
        );
        self.host += t0.elapsed();
        let logits = if n == 0 {
            Vec::new()
        } else {
            self.ops.f32_to_host(&s.tmp, n * self.cfg.vocab)
        };
        self.scratch = Some(s);
        logits
    }

    fn graph_ran(&self) -> bool {
        self.graph_ran
    }

    fn host_seconds(&self) -> f64 {
        self.host.as_secs_f64()
    }

    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn threads(&self) -> &ComputePool {
        &self.threads
    }

    fn kv_layout(&self) -> KvLayout {
        KvLayout {
            layers: self.cfg.layers as u32,
            kv_heads: self.cfg.kv_heads as u32,
            head_dim: self.cfg.head_dim as u32,
            dtype: KvDtype::F16,
            block_size: self.page as u32,
        }
    }

    fn copy_prefix(&mut self, src: u32, dst: u32, tokens: usize) {
        self.ops.fence_copies();
        let per = self.block_elems();
        let n = tokens * self.cfg.kv_heads * self.cfg.head_dim;
        let (s, d) = (src as usize * per, dst as usize * per);
        for li in 0..self.cfg.layers {
            self.ops.f16_copy_within(&mut self.kv.k[li], s, d, n);
            self.ops.f16_copy_within(&mut self.kv.v[li], s, d, n);
        }
    }

    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), TransferError> {
        super::export_header(self.kv_layout(), self.blocks, blocks, out)?;
        self.ops.fence_copies();
        let per = self.block_elems();
        let mut buf = vec![0u16; per];
        for &b in blocks {
            for li in 0..self.cfg.layers {
                for slab in [&self.kv.k[li], &self.kv.v[li]] {
                    self.ops.f16_read(slab, b as usize * per, &mut buf);
                    for x in &buf {
                        out.extend_from_slice(&x.to_le_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), TransferError> {
        self.import(blocks, data, false)
    }

    fn stages_load_back(&self) -> bool {
        true
    }

    fn import_blocks_staged(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), TransferError> {
        self.import(blocks, data, true)
    }
}
