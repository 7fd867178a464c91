//! The batched forward pass over sequences of different lengths and positions: token
//! embedding, per layer RMSNorm → stacked QKV (+ bias, Qwen2) → per-head Q/K RMSNorm (Qwen3)
//! → RoPE → write K/V into the paged cache →
//! grouped-query attention over each sequence's pages → output projection → RMSNorm →
//! SwiGLU MLP, then the final norm and LM head only for the rows that need logits.

use super::config::RopeStyle;
use super::load::Weights;
use crate::kernels::{self, rms_norm, ActQ8, ComputePool, Input, Linear};
use crate::kv::KvCache;

/// One sequence's slice of a batch: `tokens` at positions `start..start + tokens.len()`,
/// its page table, and which of its logits rows are wanted.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub start: usize,
    pub pages: &'a [u32],
    pub logits: Logits,
}

/// The logits rows a sequence's slice wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// A prefill chunk that is not the prompt's last.
    None,
    /// The last token's (to sample the next token).
    Last,
    /// Every token's (a prompt whose own tokens' log probabilities were asked for).
    All,
}

impl Logits {
    /// How many rows a slice of `tokens` tokens contributes.
    pub fn rows(self, tokens: usize) -> usize {
        match self {
            Logits::None => 0,
            Logits::Last => 1,
            Logits::All => tokens,
        }
    }
}

/// Buffers reused across forward calls (no per-step allocation once warm).
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    q8: ActQ8,
    cos: Vec<f32>,
    sin: Vec<f32>,
    tok_seq: Vec<u32>,
    tok_pos: Vec<u32>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// The model ready to run.
pub struct Model {
    pub w: Weights,
}

impl Model {
    fn lm_head(&self) -> &Linear {
        self.w.lm_head.as_ref().unwrap_or(&self.w.embed)
    }

    fn matmul(
        lin: &Linear,
        x: &[f32],
        rows: usize,
        q8: &mut ActQ8,
        out: &mut [f32],
        pool: &ComputePool,
    ) {
        if lin.needs_q8() {
            q8.quantize_into(x, rows, lin.k, pool);
        }
        let input = Input {
            rows,
            f32: &x[..rows * lin.k],
            q8: lin.needs_q8().then_some(&*q8),
        };
        lin.forward(&input, out, pool);
    }

    /// Run one batch; returns the logits (vocab-sized rows) each sequence asks for
    /// ([`Logits`]), in order, computed on `pool`.
    pub fn forward(
        &self,
        kv: &mut KvCache,
        seqs: &[SeqInput<'_>],
        s: &mut Scratch,
        pool: &ComputePool,
    ) -> Vec<f32> {
        let c = &self.w.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.heads, c.kv_heads);
        let hdim = c.hidden;
        let qkv_n = (nh + 2 * nkv) * hd;
        let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        if t == 0 {
            return Vec::new();
        }
        s.tok_seq.clear();
        s.tok_pos.clear();
        for (i, q) in seqs.iter().enumerate() {
            for j in 0..q.tokens.len() {
                s.tok_seq.push(i as u32);
                s.tok_pos.push((q.start + j) as u32);
            }
        }
        // RoPE tables for this batch's positions.
        let half = hd / 2;
        s.cos.resize(t * half, 0.0);
        s.sin.resize(t * half, 0.0);
        for (i, &p) in s.tok_pos.iter().enumerate() {
            for (j, f) in self.w.inv_freq.iter().enumerate() {
                let a = p as f32 * f;
                s.cos[i * half + j] = a.cos();
                s.sin[i * half + j] = a.sin();
            }
        }
        grow(&mut s.x, t * hdim);
        let toks = seqs.iter().flat_map(|q| q.tokens.iter());
        for (row, &tok) in s.x[..t * hdim].chunks_exact_mut(hdim).zip(toks) {
            self.w.embed.row_into(tok as usize % c.vocab, row);
        }
        grow(&mut s.h, t * hdim);
        grow(&mut s.qkv, t * qkv_n);
        grow(&mut s.att, t * nh * hd);
        grow(&mut s.tmp, t * hdim);
        grow(&mut s.gu, t * 2 * c.intermediate);
        grow(&mut s.act, t * c.intermediate);
        let page = kv.page;
        let slot = |seq: usize, pos: usize| -> usize {
            seqs[seq].pages[pos / page] as usize * page + pos % page
        };

        for (li, l) in self.w.layers.iter().enumerate() {
            norm_rows(
                &s.x[..t * hdim],
                &l.attn_norm,
                c.rms_eps,
                &mut s.h[..t * hdim],
                pool,
            );
            Self::matmul(&l.qkv, &s.h, t, &mut s.q8, &mut s.qkv, pool);
            // Bias and per-head norms where the family has them, RoPE on q and k heads, then
            // K/V into the cache.
            let (cos, sin, style) = (&s.cos, &s.sin, c.rope_style);
            let (bias, qk_norm, eps) = (l.qkv_bias.as_deref(), l.qk_norm.as_ref(), c.rms_eps);
            pool.chunks_mut(&mut s.qkv[..t * qkv_n], ROWS * qkv_n, |task, rows| {
                for (j, r) in rows.chunks_exact_mut(qkv_n).enumerate() {
                    let i = task * ROWS + j;
                    if let Some(b) = bias {
                        r.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                    }
                    if let Some((qn, kn)) = qk_norm {
                        for (k, h) in r[..(nh + nkv) * hd].chunks_exact_mut(hd).enumerate() {
                            norm_in_place(h, if k < nh { qn } else { kn }, eps);
                        }
                    }
                    let (cs, sn) = (
                        &cos[i * half..(i + 1) * half],
                        &sin[i * half..(i + 1) * half],
                    );
                    for h in r[..(nh + nkv) * hd].chunks_exact_mut(hd) {
                        rope(h, cs, sn, style);
                    }
                }
            });
            let kvd = nkv * hd;
            let (kc, vc) = kv.layer_mut(li);
            for i in 0..t {
                let sl = slot(s.tok_seq[i] as usize, s.tok_pos[i] as usize);
                let r = &s.qkv[i * qkv_n..(i + 1) * qkv_n];
                kernels::to_f16(
                    &r[nh * hd..nh * hd + kvd],
                    &mut kc[sl * kvd..(sl + 1) * kvd],
                );
                kernels::to_f16(&r[nh * hd + kvd..], &mut vc[sl * kvd..(sl + 1) * kvd]);
            }
            self.attention(kv, li, seqs, s, t, pool);
            Self::matmul(&l.o, &s.att, t, &mut s.q8, &mut s.tmp, pool);
            add_rows(&mut s.x[..t * hdim], &s.tmp[..t * hdim], pool);
            norm_rows(
                &s.x[..t * hdim],
                &l.ffn_norm,
                c.rms_eps,
                &mut s.h[..t * hdim],
                pool,
            );
            Self::matmul(&l.gate_up, &s.h, t, &mut s.q8, &mut s.gu, pool);
            let inter = c.intermediate;
            let gu_all = &s.gu[..t * 2 * inter];
            pool.chunks_mut(&mut s.act[..t * inter], ROWS * inter, |task, rows| {
                for (j, a) in rows.chunks_exact_mut(inter).enumerate() {
                    let r = task * ROWS + j;
                    let (g, u) = gu_all[r * 2 * inter..(r + 1) * 2 * inter].split_at(inter);
                    for ((a, g), u) in a.iter_mut().zip(g).zip(u) {
                        *a = g / (1.0 + (-g).exp()) * u;
                    }
                }
            });
            Self::matmul(&l.down, &s.act, t, &mut s.q8, &mut s.tmp, pool);
            add_rows(&mut s.x[..t * hdim], &s.tmp[..t * hdim], pool);
        }

        // Final norm and LM head for the rows that want logits.
        let mut last_rows = Vec::new();
        let mut end = 0;
        for q in seqs {
            let len = q.tokens.len();
            last_rows.extend(end + len - q.logits.rows(len)..end + len);
            end += len;
        }
        if last_rows.is_empty() {
            return Vec::new();
        }
        let n = last_rows.len();
        let mut sel = vec![0f32; n * hdim];
        for (i, &r) in last_rows.iter().enumerate() {
            rms_norm(
                &s.x[r * hdim..(r + 1) * hdim],
                &self.w.norm,
                c.rms_eps,
                &mut sel[i * hdim..(i + 1) * hdim],
            );
        }
        let head = self.lm_head();
        let mut logits = vec![0f32; n * head.n];
        Self::matmul(head, &sel, n, &mut s.q8, &mut logits, pool);
        logits
    }

    /// Grouped-query attention for every (token, KV head) pair, in parallel.
    fn attention(
        &self,
        kv: &KvCache,
        li: usize,
        seqs: &[SeqInput<'_>],
        s: &mut Scratch,
        t: usize,
        pool: &ComputePool,
    ) {
        let c = &self.w.cfg;
        let (hd, nh, nkv) = (c.head_dim, c.heads, c.kv_heads);
        let g = nh / nkv;
        let qkv_n = (nh + 2 * nkv) * hd;
        let kvd = nkv * hd;
        let scale = 1.0 / (hd as f32).sqrt();
        let (kc, vc) = kv.layer(li);
        let page = kv.page;
        let (qkv, tok_seq, tok_pos) = (&s.qkv, &s.tok_seq, &s.tok_pos);
        let items = t * nkv;
        let per = items.div_ceil(pool.threads() * 8).max(1);
        pool.chunks_mut(&mut s.att[..t * nh * hd], per * g * hd, |task, outs| {
            ATTENTION_BUFS.with_borrow_mut(|(scores, offs)| {
                for (j, out) in outs.chunks_exact_mut(g * hd).enumerate() {
                    let item = task * per + j;
                    let (ti, kh) = (item / nkv, item % nkv);
                    let seq = &seqs[tok_seq[ti] as usize];
                    let n = tok_pos[ti] as usize + 1;
                    scores.clear();
                    scores.resize(g * n, 0.0);
                    // Where this KV head's row of each cached position starts in the layer's cache.
                    offs.clear();
                    offs.extend(
                        (0..n).map(|j| {
                            (seq.pages[j / page] as usize * page + j % page) * kvd + kh * hd
                        }),
                    );
                    let q = &qkv[ti * qkv_n + kh * g * hd..ti * qkv_n + (kh + 1) * g * hd];
                    kernels::scores_f16(q, g, kc, offs, scale, scores);
                    for h in 0..g {
                        let sc = &mut scores[h * n..(h + 1) * n];
                        let m = sc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                        let mut sum = 0.0;
                        for v in sc.iter_mut() {
                            *v = (*v - m).exp();
                            sum += *v;
                        }
                        let inv = 1.0 / sum;
                        kernels::weighted_f16(sc, inv, vc, offs, &mut out[h * hd..(h + 1) * hd]);
                    }
                }
            });
        });
    }
}

/// RMSNorm of one head in place (Qwen3's Q/K norm).
fn norm_in_place(h: &mut [f32], w: &[f32], eps: f32) {
    let ms = h.iter().map(|x| x * x).sum::<f32>() / h.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    h.iter_mut().zip(w).for_each(|(x, w)| *x *= inv * w);
}

fn rope(h: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = h.len() / 2;
    match style {
        RopeStyle::Interleaved => {
            for i in 0..half {
                let (a, b) = (h[2 * i], h[2 * i + 1]);
                h[2 * i] = a * cos[i] - b * sin[i];
                h[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
        RopeStyle::Halves => {
            for i in 0..half {
                let (a, b) = (h[i], h[i + half]);
                h[i] = a * cos[i] - b * sin[i];
                h[i + half] = a * sin[i] + b * cos[i];
            }
        }
    }
}

thread_local! {
    /// Each compute thread's attention scores and cached-row offsets, reused across steps so
    /// the per-token loop does not allocate them.
    static ATTENTION_BUFS: std::cell::RefCell<(Vec<f32>, Vec<usize>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Rows per task of the element-wise steps.
const ROWS: usize = 16;

fn norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], pool: &ComputePool) {
    let k = w.len();
    pool.chunks_mut(out, ROWS * k, |i, o| {
        rms_norm(&x[i * ROWS * k..i * ROWS * k + o.len()], w, eps, o)
    });
}

fn add_rows(x: &mut [f32], y: &[f32], pool: &ComputePool) {
    const N: usize = 1 << 14;
    pool.chunks_mut(x, N, |i, a| {
        a.iter_mut().zip(&y[i * N..]).for_each(|(a, b)| *a += b)
    });
}
