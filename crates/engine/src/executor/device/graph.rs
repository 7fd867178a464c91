//! The forward pass as kernel calls (`pass`), and decode steps run the way a captured CUDA
//! graph needs them: padded to a batch bucket, with every input written into buffers that stay
//! put for that bucket and the same scalar arguments each time (a fixed block-table width,
//! logits for every row), so the first step of a bucket can be captured and later ones
//! replayed ([`DeviceOps::graph`]). On the plain-Rust ops the same padded path simply runs,
//! which is how CI checks the padding; capture and replay themselves need a GPU.

use std::collections::HashMap;

use super::ops::{AttnShape, DeviceOps, StepBufs};
use super::plan::{bucket_for, StepPlan, NONE};
use super::{DeviceModel, KvBufs, Scratch};
use crate::model::ModelConfig;

pub(super) fn shape(c: &ModelConfig) -> AttnShape {
    AttnShape {
        heads: c.heads,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
    }
}

impl<O: DeviceOps> Scratch<O> {
    /// Activations for `t` token rows.
    pub(super) fn new(o: &mut O, c: &ModelConfig, t: usize) -> Self {
        Scratch {
            tokens: t,
            x: o.f32_zeros(t * c.hidden),
            h: o.f32_zeros(t * c.hidden),
            qkv: o.f32_zeros(t * shape(c).qkv()),
            att: o.f32_zeros(t * c.heads * c.head_dim),
            tmp: o.f32_zeros(t * c.hidden.max(c.vocab)),
            gu: o.f32_zeros(t * 2 * c.intermediate),
            act: o.f32_zeros(t * c.intermediate),
        }
    }
}

/// One forward pass of `step` (its `tokens_n` rows): every layer, then the final norm and LM
/// head of its logit rows, whose logits are left in `s.tmp` (`logit_rows_n × vocab`). Only
/// launches: nothing is allocated or copied to the host, so it can be captured.
pub(super) fn pass<O: DeviceOps>(
    o: &mut O,
    c: &ModelConfig,
    m: &DeviceModel<O>,
    kv: &mut KvBufs<O>,
    s: &mut Scratch<O>,
    step: &StepBufs<O>,
) {
    let (t, sh) = (step.tokens_n, shape(c));
    let (hid, inter) = (c.hidden, c.intermediate);
    o.embed(&m.embed, hid, &step.tokens, t, &mut s.x);
    for (li, l) in m.layers.iter().enumerate() {
        o.rms_norm(&s.x, &l.attn_norm, t, hid, c.rms_eps, &mut s.h);
        o.matmul(&s.h, t, hid, &l.qkv, sh.qkv(), &mut s.qkv);
        let qk = l.qk_norm.as_ref().map(|(q, k)| (q, k));
        let bias = l.qkv_bias.as_ref();
        o.qkv_prepare(
            &mut s.qkv,
            t,
            sh,
            bias,
            qk,
            c.rms_eps,
            &step.positions,
            &m.inv_freq,
            c.rope_style,
        );
        o.kv_write(&s.qkv, t, sh, &step.slots, &mut kv.k[li], &mut kv.v[li]);
        o.attention(&s.qkv, sh, step, &kv.k[li], &kv.v[li], &mut s.att);
        o.matmul(&s.att, t, c.heads * c.head_dim, &l.o, hid, &mut s.tmp);
        o.add(&mut s.x, &s.tmp, t * hid);
        o.rms_norm(&s.x, &l.ffn_norm, t, hid, c.rms_eps, &mut s.h);
        o.matmul(&s.h, t, hid, &l.gate_up, 2 * inter, &mut s.gu);
        o.silu_mul(&s.gu, t, inter, &mut s.act);
        o.matmul(&s.act, t, inter, &l.down, hid, &mut s.tmp);
        o.add(&mut s.x, &s.tmp, t * hid);
    }
    let n = step.logit_rows_n;
    if n > 0 {
        // The residual stream is not needed past here: its rows take the normed ones.
        o.gather_rows(&s.x, hid, &step.logit_rows, n, &mut s.h);
        o.rms_norm(&s.h, &m.norm, n, hid, c.rms_eps, &mut s.x);
        let head = m.lm_head.as_ref().unwrap_or(&m.embed);
        o.matmul(&s.x, n, hid, head, c.vocab, &mut s.tmp);
    }
}

/// A bucket's persistent inputs and activations.
struct Bucket<O: DeviceOps> {
    step: StepBufs<O>,
    scratch: Scratch<O>,
}

/// Decode buckets, created on first use.
pub(super) struct Buckets<O: DeviceOps> {
    /// Block-table width of every bucket: enough pages for the longest sequence.
    width: usize,
    page: usize,
    buckets: HashMap<usize, Bucket<O>>,
}

impl<O: DeviceOps> Buckets<O> {
    pub(super) fn new(width: usize, page: usize) -> Self {
        Buckets {
            width,
            page,
            buckets: HashMap::new(),
        }
    }

    /// Run `p` through its bucket when it is a decode step that fits one: the logits of its
    /// wanted rows and whether a replayed graph ran (`p` is padded in place); `None`, `p`
    /// untouched, when it must run as it comes.
    /// The host time from `t0` to the results' download is added to `host`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn decode(
        &mut self,
        o: &mut O,
        c: &ModelConfig,
        m: &DeviceModel<O>,
        kv: &mut KvBufs<O>,
        p: &mut StepPlan,
        host: &mut std::time::Duration,
        t0: std::time::Instant,
    ) -> Option<(Vec<f32>, bool)> {
        let real = p.seqs();
        if !p.is_decode() || p.table_width > self.width {
            return None;
        }
        let size = bucket_for(real)?;
        let wanted = std::mem::take(&mut p.logit_rows);
        p.pad_decode(size);
        widen(p, self.width);
        p.logit_rows = (0..size as u32).collect();
        let page = self.page;
        let b = self.buckets.entry(size).or_insert_with(|| Bucket {
            step: StepBufs::upload(o, p, page),
            scratch: Scratch::new(o, c, size),
        });
        let st = &mut b.step;
        o.u32_write(&mut st.tokens, &p.tokens);
        o.u32_write(&mut st.positions, &p.positions);
        o.u32_write(&mut st.slots, &p.slots);
        o.u32_write(&mut st.token_seq, &p.token_seq);
        o.u32_write(&mut st.query_start, &p.query_start);
        o.u32_write(&mut st.context, &p.context);
        o.u32_write(&mut st.block_table, &p.block_table);
        o.u32_write(&mut st.logit_rows, &p.logit_rows);
        let (step, scratch) = (&b.step, &mut b.scratch);
        let ran = o.graph(size, &mut |o: &mut O| pass(o, c, m, kv, scratch, step));
        *host += t0.elapsed();
        let all = o.f32_to_host(&scratch.tmp, real * c.vocab);
        let mut logits = Vec::with_capacity(wanted.len() * c.vocab);
        for &r in &wanted {
            logits.extend_from_slice(&all[r as usize * c.vocab..(r as usize + 1) * c.vocab]);
        }
        Some((logits, ran))
    }
}

/// Give every sequence's block table `width` entries (padded with [`NONE`]).
fn widen(p: &mut StepPlan, width: usize) {
    let old = p.table_width;
    let mut t = Vec::with_capacity(p.seqs() * width);
    for row in p.block_table.chunks(old.max(1)).take(p.seqs()) {
        t.extend_from_slice(&row[..old]);
        t.extend(std::iter::repeat_n(NONE, width - old));
    }
    if old == 0 {
        t = vec![NONE; p.seqs() * width];
    }
    p.block_table = t;
    p.table_width = width;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Logits, SeqInput};

    #[test]
    fn widening_keeps_each_row_and_pads_it() {
        let (a, b) = ([1u32], [2u32]);
        let mut p = StepPlan::new(
            &[
                SeqInput {
                    tokens: &a,
                    start: 17,
                    pages: &[4, 6],
                    logits: Logits::Last,
                },
                SeqInput {
                    tokens: &b,
                    start: 0,
                    pages: &[9],
                    logits: Logits::Last,
                },
            ],
            16,
        );
        widen(&mut p, 4);
        assert_eq!(p.table_width, 4);
        assert_eq!(p.block_table, vec![4, 6, NONE, NONE, 9, NONE, NONE, NONE]);
    }
}
