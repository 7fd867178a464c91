//! The contract of every kernel the device executor launches, as one trait: buffers of f32
//! (activations, norms), f16 (weights, KV) and u32 (a step's plan) living wherever the
//! implementation keeps them, and operations over them whose inputs, indexing and results are
//! stated here once. [`super::HostOps`] implements it in plain Rust (the reference CI runs);
//! the CUDA implementation launches kernels with the same contract.

use crate::model::RopeStyle;

/// The attention shape of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    /// Width of one token's stacked Q, K and V row.
    pub fn qkv(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of one token's K (or V) in the cache.
    pub fn kv(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// A step's plan uploaded to the device (see [`super::plan::StepPlan`]).
pub struct StepBufs<O: DeviceOps + ?Sized> {
    pub tokens: O::U32,
    pub positions: O::U32,
    pub slots: O::U32,
    pub token_seq: O::U32,
    pub query_start: O::U32,
    pub context: O::U32,
    pub block_table: O::U32,
    pub table_width: usize,
    pub logit_rows: O::U32,
    /// Token rows, padding included.
    pub tokens_n: usize,
    pub logit_rows_n: usize,
    pub page: usize,
}

impl<O: DeviceOps> StepBufs<O> {
    /// Upload plan `p` of a cache of `page`-token blocks.
    pub fn upload(o: &mut O, p: &super::plan::StepPlan, page: usize) -> Self {
        StepBufs {
            tokens: o.u32_from(&p.tokens),
            positions: o.u32_from(&p.positions),
            slots: o.u32_from(&p.slots),
            token_seq: o.u32_from(&p.token_seq),
            query_start: o.u32_from(&p.query_start),
            context: o.u32_from(&p.context),
            block_table: o.u32_from(&p.block_table),
            table_width: p.table_width,
            logit_rows: o.u32_from(&p.logit_rows),
            tokens_n: p.tokens.len(),
            logit_rows_n: p.logit_rows.len(),
            page,
        }
    }
}

/// Buffers and kernels of a device. Sizes are in elements; every matrix is row-major.
pub trait DeviceOps: Send {
    type F32: Send;
    type F16: Send;
    type U32: Send;

    /// What runs the kernels (for logs and the device check).
    fn describe(&self) -> String;

    fn f32_zeros(&mut self, n: usize) -> Self::F32;
    fn f32_from(&mut self, x: &[f32]) -> Self::F32;
    fn f16_zeros(&mut self, n: usize) -> Self::F16;
    fn f16_from(&mut self, x: &[u16]) -> Self::F16;
    fn u32_from(&mut self, x: &[u32]) -> Self::U32;
    /// Overwrite the start of `x` with `data` (a persistent input of a graph).
    fn u32_write(&mut self, x: &mut Self::U32, data: &[u32]);
    /// Run `body`'s launches as the graph kept under `key`: the first call captures them (the
    /// body must launch the same kernels on the same buffers with the same scalars every time
    /// it is called with that key), later calls replay the capture instead of calling `body`.
    /// Returns whether a graph ran. The default has no graphs: it calls `body`.
    fn graph(&mut self, key: usize, body: &mut dyn FnMut(&mut Self)) -> bool
    where
        Self: Sized,
    {
        let _ = key;
        body(self);
        false
    }
    /// The first `n` elements, on the host.
    fn f32_to_host(&mut self, x: &Self::F32, n: usize) -> Vec<f32>;
    /// `out.len()` elements from `offset`.
    fn f16_read(&self, x: &Self::F16, offset: usize, out: &mut [u16]);
    fn f16_write(&mut self, x: &mut Self::F16, offset: usize, data: &[u16]);
    /// [`DeviceOps::f16_write`] on a copy engine: it may still be in flight on return and
    /// overlaps kernels until [`DeviceOps::fence_copies`]. `data` may be reused on return.
    /// The default writes at once.
    fn f16_write_async(&mut self, x: &mut Self::F16, offset: usize, data: &[u16]) {
        self.f16_write(x, offset, data);
    }
    /// Everything queued from now on (kernels, reads, writes) sees the async writes made so
    /// far. The default has none in flight.
    fn fence_copies(&self) {}
    /// `x[dst..dst + n] = x[src..src + n]` (the ranges do not overlap).
    fn f16_copy_within(&mut self, x: &mut Self::F16, src: usize, dst: usize, n: usize);

    /// `out[i] = table[tokens[i]]` as f32, rows of `k`, for `t` tokens.
    fn embed(
        &mut self,
        table: &Self::F16,
        k: usize,
        tokens: &Self::U32,
        t: usize,
        out: &mut Self::F32,
    );
    /// Per row of `k`: `out = x / sqrt(mean(x²) + eps) · w`, for `rows` rows.
    fn rms_norm(
        &mut self,
        x: &Self::F32,
        w: &Self::F32,
        rows: usize,
        k: usize,
        eps: f32,
        out: &mut Self::F32,
    );
    /// `out[rows × n] = x[rows × k] · wᵀ`, `w` being `n × k`.
    fn matmul(
        &mut self,
        x: &Self::F32,
        rows: usize,
        k: usize,
        w: &Self::F16,
        n: usize,
        out: &mut Self::F32,
    );
    /// On each of `t` stacked QKV rows: add `bias` (all of Q, K, V), RMS-normalize each Q and
    /// K head with its weight (`qk_norm`), and rotate each Q and K head by its token's
    /// position (angle `position · inv_freq[j]` for pair `j`; pairs are adjacent elements,
    /// `Interleaved`, or element `j` with `j + head_dim / 2`, `Halves`).
    #[allow(clippy::too_many_arguments)]
    fn qkv_prepare(
        &mut self,
        qkv: &mut Self::F32,
        t: usize,
        shape: AttnShape,
        bias: Option<&Self::F32>,
        qk_norm: Option<(&Self::F32, &Self::F32)>,
        eps: f32,
        positions: &Self::U32,
        inv_freq: &Self::F32,
        style: RopeStyle,
    );
    /// Each of `t` rows' K and V (f16) into its slot of the layer's cache (`slot · kv` on);
    /// a [`super::plan::NONE`] slot writes nothing.
    fn kv_write(
        &mut self,
        qkv: &Self::F32,
        t: usize,
        shape: AttnShape,
        slots: &Self::U32,
        k: &mut Self::F16,
        v: &mut Self::F16,
    );
    /// Causal grouped-query attention: token row `i` of sequence `s` at position `p` attends,
    /// with each query head `h`, to positions `0..=p` of `s` through KV head `h / (heads /
    /// kv_heads)`, reading position `j` at slot `block_table[s][j / page] · page + j % page`;
    /// scores scaled by `1/sqrt(head_dim)`, softmax, weighted sum of V. A row whose sequence
    /// has context 0 (padding) is zero. `out` is `rows × heads · head_dim`.
    fn attention(
        &mut self,
        qkv: &Self::F32,
        shape: AttnShape,
        step: &StepBufs<Self>,
        k: &Self::F16,
        v: &Self::F16,
        out: &mut Self::F32,
    );
    /// `out[r][j] = silu(gu[r][j]) · gu[r][inter + j]`.
    fn silu_mul(&mut self, gu: &Self::F32, rows: usize, inter: usize, out: &mut Self::F32);
    /// `x[..n] += y[..n]`.
    fn add(&mut self, x: &mut Self::F32, y: &Self::F32, n: usize);
    /// `out[i] = x[rows[i]]`, rows of `k`, for `n` rows.
    fn gather_rows(
        &mut self,
        x: &Self::F32,
        k: usize,
        rows: &Self::U32,
        n: usize,
        out: &mut Self::F32,
    );
}
