//! Matrix kernels of the forward pass (and the compute thread pool they run on): weight formats kept as loaded (GGUF Q4_1 / Q8_0 blocks,
//! or dense f32), activations quantized once per matmul into 8-bit blocks (like llama.cpp's
//! Q8_1), and integer dot products selected at run time (AVX2+FMA when the CPU has them, a
//! portable loop otherwise — never a build for the host CPU only).
//!
//! Every output element is computed by the same code path in the same order whatever the
//! batch size or the row tile it falls in, so a sequence gets bit-identical logits alone or
//! batched (batch invariance).

mod avx2;
pub mod pool;
pub mod q4_1;
mod scalar;

pub use pool::ComputePool;

use std::sync::OnceLock;

/// Elements per quantization block (all formats used here).
pub const QK: usize = 32;
/// Bytes of one GGUF Q8_0 block: f16 scale, 32 signed bytes.
pub const Q8_0_BYTES: usize = 34;

/// Which instruction set the kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx2,
    Portable,
}

/// Which kernels to use (the worker's `--kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The fastest the CPU supports.
    #[default]
    Auto,
    /// The portable loops, even where AVX2 is available (for comparison and debugging).
    Portable,
}

static ISA: OnceLock<Isa> = OnceLock::new();

/// Fix the process's kernels (once: the first call, or the first [`isa`], decides; a later
/// different choice is ignored and the kernels in use are returned).
pub fn select(choice: KernelChoice) -> Isa {
    *ISA.get_or_init(|| match choice {
        KernelChoice::Portable => Isa::Portable,
        KernelChoice::Auto if avx2::available() => Isa::Avx2,
        KernelChoice::Auto => Isa::Portable,
    })
}

/// The kernels in use (detected on first use unless [`select`] came first).
pub fn isa() -> Isa {
    select(KernelChoice::Auto)
}

/// f16 bits → f32, through a table (the conversion sits in the kernels' inner loops).
#[inline(always)]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    let t = TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    });
    t[bits as usize]
}

/// Activations quantized per 32-element block: `x ≈ d · q`, `s = d · Σq` (both rounded to f16
/// precision as llama.cpp stores them).
#[derive(Debug, Default, Clone)]
pub struct ActQ8 {
    pub rows: usize,
    pub k: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    /// `d` and `s` of each complete group of 4 rows, block-major (`[group][block][row]`), so
    /// the prefill kernel loads the 4 rows' scales of a block with one instruction.
    pub d4: Vec<f32>,
    pub s4: Vec<f32>,
}

impl ActQ8 {
    /// Quantize `rows` rows of length `k` (a multiple of 32) from `x`, reusing buffers.
    pub fn quantize_into(&mut self, x: &[f32], rows: usize, k: usize, pool: &ComputePool) {
        debug_assert_eq!(k % QK, 0);
        debug_assert!(x.len() >= rows * k);
        self.rows = rows;
        self.k = k;
        let nb = rows * k / QK;
        self.qs.resize(rows * k, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        let xs = &x[..rows * k];
        let quant = |x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]| {
            if isa() == Isa::Avx2 {
                avx2::quantize(x, q, d, s)
            } else {
                scalar::quantize(x, q, d, s)
            }
        };
        if rows >= 16 {
            // Whole rows per task: quantize into per-row pieces of the three buffers.
            let nb = k / QK;
            let per = rows.div_ceil(pool.threads() * 2);
            pool.chunks_mut3(
                (&mut self.qs, per * k),
                (&mut self.d, per * nb),
                (&mut self.s, per * nb),
                |i, q, d, s| quant(&xs[i * per * k..i * per * k + q.len()], q, d, s),
            );
        } else {
            quant(xs, &mut self.qs, &mut self.d, &mut self.s);
        }
        let (nb, groups) = (k / QK, rows / 4);
        self.d4.resize(groups * nb * 4, 0.0);
        self.s4.resize(groups * nb * 4, 0.0);
        for g in 0..groups {
            for j in 0..4 {
                for b in 0..nb {
                    self.d4[(g * nb + b) * 4 + j] = self.d[(g * 4 + j) * nb + b];
                    self.s4[(g * nb + b) * 4 + j] = self.s[(g * 4 + j) * nb + b];
                }
            }
        }
    }

    #[inline(always)]
    fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.k / QK;
        ActRow {
            qs: &self.qs[r * self.k..(r + 1) * self.k],
            d: &self.d[r * nb..(r + 1) * nb],
            s: &self.s[r * nb..(r + 1) * nb],
        }
    }
}

/// Quantize consecutive 32-element blocks: `d = f16(amax / 127)`, `q = round_even(x · (127 /
/// amax))`,
/// `s = f16(d · Σq)` (llama.cpp's Q8_1 and Q8_0 activation formats).
#[inline(always)]
pub(crate) fn quantize_blocks(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    for (((xb, qb), d), s) in x
        .chunks_exact(QK)
        .zip(qs.chunks_exact_mut(QK))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
    {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dd = amax / 127.0;
        // `127 / amax`, not `1 / dd`: the two round differently, and llama.cpp uses this one.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        *d = half::f16::from_f32(dd).to_f32();
        *s = half::f16::from_f32(sum as f32 * dd).to_f32();
    }
}

/// One quantized activation row.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// A weight matrix of `n` output rows by `k` inputs.
#[derive(Debug, Clone)]
pub enum Weight {
    /// Q4_1 blocks repacked in pairs ([`q4_1`]), row-major; build with [`Linear::q4_1`].
    Q4_1(Vec<u8>),
    /// GGUF Q8_0 blocks, row-major.
    Q8_0(Vec<u8>),
    /// Dense f32, row-major.
    F32(Vec<f32>),
}

/// A linear layer `y = x · Wᵀ`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub n: usize,
    pub k: usize,
    pub w: Weight,
}

/// The input of a matmul, in the forms the weight formats need.
pub struct Input<'a> {
    pub rows: usize,
    pub f32: &'a [f32],
    pub q8: Option<&'a ActQ8>,
}

impl Linear {
    pub fn new(n: usize, k: usize, w: Weight) -> Result<Self, String> {
        let ok = match &w {
            Weight::Q4_1(b) => k.is_multiple_of(QK) && b.len() == n * q4_1::row_bytes(k),
            Weight::Q8_0(b) => k.is_multiple_of(QK) && b.len() == n * k / QK * Q8_0_BYTES,
            Weight::F32(v) => v.len() == n * k,
        };
        if ok {
            Ok(Linear { n, k, w })
        } else {
            Err(format!("weight data does not match shape {n}x{k}"))
        }
    }

    /// A layer from GGUF Q4_1 data (`n` rows of `k` inputs), repacked for the kernels.
    pub fn q4_1(n: usize, k: usize, gguf: &[u8]) -> Result<Self, String> {
        Linear::new(n, k, Weight::Q4_1(q4_1::from_gguf(gguf, n, k)?))
    }

    /// Whether the input must be quantized for this layer.
    pub fn needs_q8(&self) -> bool {
        !matches!(self.w, Weight::F32(_))
    }

    /// Bytes of weight data (read once per forward).
    pub fn bytes(&self) -> usize {
        match &self.w {
            Weight::Q4_1(b) | Weight::Q8_0(b) => b.len(),
            Weight::F32(v) => v.len() * 4,
        }
    }

    /// Stack layers with the same input size into one (rows concatenated), so one dispatch
    /// computes them all. Mixed formats are widened to f32.
    pub fn concat(parts: Vec<Linear>) -> Result<Linear, String> {
        let k = parts.first().ok_or("nothing to concatenate")?.k;
        if parts.iter().any(|p| p.k != k) {
            return Err("input sizes differ".into());
        }
        let n = parts.iter().map(|p| p.n).sum();
        let same = |f: fn(&Weight) -> bool| parts.iter().all(|p| f(&p.w));
        let w = if same(|w| matches!(w, Weight::Q4_1(_))) {
            Weight::Q4_1(parts.iter().flat_map(|p| p.raw_bytes()).copied().collect())
        } else if same(|w| matches!(w, Weight::Q8_0(_))) {
            Weight::Q8_0(parts.iter().flat_map(|p| p.raw_bytes()).copied().collect())
        } else {
            Weight::F32(parts.iter().flat_map(|p| p.to_f32()).collect())
        };
        Linear::new(n, k, w)
    }

    fn raw_bytes(&self) -> &[u8] {
        match &self.w {
            Weight::Q4_1(b) | Weight::Q8_0(b) => b,
            Weight::F32(_) => &[],
        }
    }

    /// Dequantized copy of the whole matrix.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.n).flat_map(|r| self.row_f32(r)).collect()
    }

    /// Dequantize one row.
    pub fn row_f32(&self, r: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.k];
        self.row_into(r, &mut out);
        out
    }

    /// Dequantize one row into `out` (`k` values; the embedding lookup, no allocation).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let nb = self.k / QK;
        let out = &mut out[..self.k];
        match &self.w {
            Weight::F32(v) => out.copy_from_slice(&v[r * self.k..(r + 1) * self.k]),
            Weight::Q8_0(b) => {
                let row = &b[r * nb * Q8_0_BYTES..(r + 1) * nb * Q8_0_BYTES];
                for (blk, o) in row.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
                    let d = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                    for (o, &q) in o.iter_mut().zip(&blk[2..]) {
                        *o = d * f32::from(q as i8);
                    }
                }
            }
            Weight::Q4_1(b) => {
                let rb = q4_1::row_bytes(self.k);
                let row = &b[r * rb..(r + 1) * rb];
                for (i, o) in out.chunks_exact_mut(QK).enumerate() {
                    let (d, m, q) = q4_1::block(row, i);
                    for (o, &q) in o.iter_mut().zip(&q) {
                        *o = d * f32::from(q) + m;
                    }
                }
            }
        }
    }

    /// `out[r · n + c] = x[r] · W[c]` for every input row, in parallel on `pool`: by input
    /// rows when there are many (prefill), by output columns otherwise (decode).
    pub fn forward(&self, x: &Input<'_>, out: &mut [f32], pool: &ComputePool) {
        let (t, n) = (x.rows, self.n);
        assert!(out.len() >= t * n, "output buffer too small");
        let out = &mut out[..t * n];
        let threads = pool.threads();
        if t >= 8 * threads {
            let per = t.div_ceil(threads * 2).next_multiple_of(4);
            pool.chunks_mut(out, per * n, |i, o| {
                self.compute(x, i * per, i * per + o.len() / n, 0, n, o)
            });
        } else if t == 1 {
            // One row: output columns are contiguous, so tasks write their own piece.
            let tasks = if n * self.k >= 1 << 16 {
                threads * 4
            } else {
                1
            };
            let per = n.div_ceil(tasks).next_multiple_of(8);
            pool.chunks_mut(out, per, |i, o| {
                self.compute(x, 0, 1, i * per, i * per + o.len(), o)
            });
        } else {
            let tasks = if n * self.k * t >= 1 << 16 {
                threads * 4
            } else {
                1
            };
            let per = n.div_ceil(tasks).next_multiple_of(8);
            let mut bufs: Vec<Vec<f32>> = (0..n.div_ceil(per)).map(|_| Vec::new()).collect();
            pool.chunks_mut(&mut bufs, 1, |i, b| {
                let (c0, c1) = (i * per, ((i + 1) * per).min(n));
                b[0] = vec![0f32; t * (c1 - c0)];
                self.compute(x, 0, t, c0, c1, &mut b[0]);
            });
            for (i, buf) in bufs.iter().enumerate() {
                let (c0, w) = (i * per, buf.len() / t);
                for r in 0..t {
                    out[r * n + c0..r * n + c0 + w].copy_from_slice(&buf[r * w..(r + 1) * w]);
                }
            }
        }
    }

    /// Rows `r0..r1` × columns `c0..c1` into `out` (row stride `c1 - c0`).
    fn compute(&self, x: &Input<'_>, r0: usize, r1: usize, c0: usize, c1: usize, out: &mut [f32]) {
        let avx = isa() == Isa::Avx2;
        match &self.w {
            Weight::Q4_1(b) => {
                let q8 = x.q8.expect("Q4_1 weights need quantized input");
                if avx {
                    avx2::q4_1_region(b, q8, (r0, r1), (c0, c1), out)
                } else {
                    scalar::q4_1_region(b, q8, (r0, r1), (c0, c1), out)
                }
            }
            Weight::Q8_0(b) => {
                let q8 = x.q8.expect("Q8_0 weights need quantized input");
                if avx {
                    avx2::q8_0_region(b, q8, (r0, r1), (c0, c1), out)
                } else {
                    scalar::q8_0_region(b, q8, (r0, r1), (c0, c1), out)
                }
            }
            Weight::F32(v) => {
                let ld = c1 - c0;
                for c in c0..c1 {
                    let w = &v[c * self.k..(c + 1) * self.k];
                    let mut r = r0;
                    while r < r1 {
                        let take = (r1 - r).min(4);
                        let rows: [&[f32]; 4] = std::array::from_fn(|i| {
                            let rr = r + i.min(take - 1);
                            &x.f32[rr * self.k..(rr + 1) * self.k]
                        });
                        let mut res = [0f32; 4];
                        if avx {
                            avx2::f32_dot(w, &rows[..take], &mut res[..take])
                        } else {
                            scalar::f32_dot(w, &rows[..take], &mut res[..take])
                        }
                        for (i, v) in res[..take].iter().enumerate() {
                            out[(r - r0 + i) * ld + (c - c0)] = *v;
                        }
                        r += take;
                    }
                }
            }
        }
    }
}

/// RMS norm of each `k`-row of `x` into `out`, scaled by `w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let k = w.len();
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        let ss = (xr.iter().map(|&v| f64::from(v * v)).sum::<f64>() / k as f64) as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// Attention helpers over f16 K/V (SIMD when available): `q · k`.
pub fn dot_f16(q: &[f32], k: &[u16]) -> f32 {
    if isa() == Isa::Avx2 {
        avx2::dot_f16(q, k)
    } else {
        scalar::dot_f16(q, k)
    }
}

/// `acc += w · v` with `v` in f16.
pub fn axpy_f16(acc: &mut [f32], w: f32, v: &[u16]) {
    if isa() == Isa::Avx2 {
        avx2::axpy_f16(acc, w, v)
    } else {
        scalar::axpy_f16(acc, w, v)
    }
}

/// Attention scores of the `g` query heads in `q` (head-major, `g × hd`) that share one KV
/// head, against the key rows at `offs` in `kc` (f16): `out[h · n + j] = (q_h · K_j) · scale`
/// with `n = offs.len()`. Each score is computed exactly as [`dot_f16`] would.
pub fn scores_f16(q: &[f32], g: usize, kc: &[u16], offs: &[usize], scale: f32, out: &mut [f32]) {
    if isa() == Isa::Avx2 {
        avx2::scores_f16(q, g, kc, offs, scale, out)
    } else {
        scalar_scores_f16(q, g, kc, offs, scale, out, scalar::dot_f16)
    }
}

/// `out = Σ_j (w_j · inv) · V_j` over the value rows at `offs` in `vc` (f16), `out.len()` wide;
/// per element the same operations, in the same order, as [`axpy_f16`] from zero.
pub fn weighted_f16(w: &[f32], inv: f32, vc: &[u16], offs: &[usize], out: &mut [f32]) {
    if isa() == Isa::Avx2 {
        avx2::weighted_f16(w, inv, vc, offs, out)
    } else {
        scalar_weighted_f16(w, inv, vc, offs, out, scalar::axpy_f16)
    }
}

/// [`scores_f16`] one dot product at a time (portable path, odd head sizes).
pub(crate) fn scalar_scores_f16(
    q: &[f32],
    g: usize,
    kc: &[u16],
    offs: &[usize],
    scale: f32,
    out: &mut [f32],
    dot: fn(&[f32], &[u16]) -> f32,
) {
    let (hd, n) = (q.len() / g, offs.len());
    for (j, &o) in offs.iter().enumerate() {
        for h in 0..g {
            out[h * n + j] = dot(&q[h * hd..(h + 1) * hd], &kc[o..o + hd]) * scale;
        }
    }
}

/// [`weighted_f16`] one `axpy` at a time (portable path, odd head sizes).
pub(crate) fn scalar_weighted_f16(
    w: &[f32],
    inv: f32,
    vc: &[u16],
    offs: &[usize],
    out: &mut [f32],
    axpy: fn(&mut [f32], f32, &[u16]),
) {
    let hd = out.len();
    out.fill(0.0);
    for (j, &o) in offs.iter().enumerate() {
        axpy(out, w[j] * inv, &vc[o..o + hd]);
    }
}

/// f32 → f16 bits (round to nearest even).
pub fn to_f16(x: &[f32], out: &mut [u16]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = half::f16::from_f32(*v).to_bits();
    }
}

#[cfg(test)]
mod tests;
