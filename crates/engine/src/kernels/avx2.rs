//! AVX2 + FMA + F16C kernels, used only after run-time detection (`available`). Each function
//! is monomorphised over the row-tile size so accumulators stay in registers; the arithmetic
//! for one row is the same in every tile size.
#![allow(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
pub use super::scalar::{axpy_f16, dot_f16, f32_dot, q4_1, q4_1_region, q8_0_region, quantize};

#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
pub fn scores_f16(q: &[f32], g: usize, kc: &[u16], offs: &[usize], scale: f32, out: &mut [f32]) {
    super::scalar_scores_f16(q, g, kc, offs, scale, out, dot_f16)
}

#[cfg(not(target_arch = "x86_64"))]
pub fn weighted_f16(w: &[f32], inv: f32, vc: &[u16], offs: &[usize], out: &mut [f32]) {
    super::scalar_weighted_f16(w, inv, vc, offs, out, axpy_f16)
}

#[cfg(target_arch = "x86_64")]
pub use imp::*;

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // tile loops index several arrays in lockstep
mod imp {
    use crate::kernels::q4_1::{row_bytes, PAIR_BYTES};
    use crate::kernels::{ActQ8, ActRow, Q8_0_BYTES, QK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// How far ahead of the weight block being read to prefetch, in bytes. Decode streams
    /// every weight once per token from DRAM; the hardware prefetcher alone left a core at
    /// ~4–5 GB/s, and prefetching 2–4 KB ahead took decode at batch 1 from ~55 to ~95 tok/s
    /// (A/B of the engine bench, 2 threads; 1 KB gave ~85). Prefetch never faults, so running
    /// past the end of a matrix is harmless.
    const PF: usize = 3072;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Two consecutive f16 values at `p` as f32.
    #[inline(always)]
    unsafe fn f16x2(p: *const u8) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    /// The 32 weights of both blocks of the pair at `p` (pair layout, see `kernels::q4_1`),
    /// in natural order, one byte each.
    #[inline(always)]
    unsafe fn q4_1_pair(p: *const u8, mask: __m256i) -> (__m256i, __m256i) {
        let v = _mm256_loadu_si256(p.add(8).cast());
        (
            _mm256_and_si256(v, mask),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), mask),
        )
    }

    /// Block `b` (of a pair whose weights are `wv`, scales and mins `hdr` = `[d0 d1 m0 m1]`)
    /// into the accumulators of `RW` weight rows × `RA` activation rows: `acc += (d·da) ·
    /// Σ₄(w·q)` per lane and `summ += m·s`, the per-block arithmetic of llama.cpp's Q4_1 ·
    /// Q8_1 dot product.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn q4_1_block<const RW: usize, const RA: usize, const H: usize>(
        wv: &[__m256i; RW],
        hdr: &[__m128; RW],
        acts: &[ActRow; RA],
        b: usize,
        ones: __m256i,
        acc: &mut [[__m256; RA]; RW],
        summ: &mut [[f32; RA]; RW],
    ) {
        for a in 0..RA {
            let r = acts.get_unchecked(a);
            let av = _mm256_loadu_si256(r.qs.as_ptr().add(b * QK).cast());
            let ad = _mm_set1_ps(*r.d.get_unchecked(b));
            let s = *r.s.get_unchecked(b);
            for i in 0..RW {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv[i], av), ones);
                let sc = _mm_mul_ps(hdr[i], ad);
                let sc = if H == 0 { sc } else { _mm_movehdup_ps(sc) };
                acc[i][a] =
                    _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p), acc[i][a]);
                let m = if H == 0 {
                    _mm_movehl_ps(hdr[i], hdr[i])
                } else {
                    _mm_shuffle_ps(hdr[i], hdr[i], 3)
                };
                summ[i][a] = _mm_cvtss_f32(m).mul_add(s, summ[i][a]);
            }
        }
    }

    /// `RW` weight rows (pair layout) × `RA` activation rows of Q4_1 · Q8_1 dot products over
    /// `nb` blocks. Each pair has its own accumulators and the same operation sequence
    /// whatever the tile shape.
    #[inline(always)]
    unsafe fn q4_1_tile<const RW: usize, const RA: usize>(
        w: &[&[u8]; RW],
        acts: &[ActRow; RA],
        nb: usize,
        out: &mut [[f32; RA]; RW],
    ) {
        let mask = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); RA]; RW];
        let mut summ = [[0f32; RA]; RW];
        let mut b = 0;
        while b < nb {
            let mut lo = [_mm256_setzero_si256(); RW];
            let mut hi = [_mm256_setzero_si256(); RW];
            let mut hdr = [_mm_setzero_ps(); RW];
            for i in 0..RW {
                let p = w.get_unchecked(i).as_ptr().add(b / 2 * PAIR_BYTES);
                _mm_prefetch(p.wrapping_add(PF).cast(), _MM_HINT_T0);
                hdr[i] = _mm_cvtph_ps(_mm_loadl_epi64(p.cast()));
                (lo[i], hi[i]) = q4_1_pair(p, mask);
            }
            q4_1_block::<RW, RA, 0>(&lo, &hdr, acts, b, ones, &mut acc, &mut summ);
            if b + 1 < nb {
                q4_1_block::<RW, RA, 1>(&hi, &hdr, acts, b + 1, ones, &mut acc, &mut summ);
            }
            b += 2;
        }
        for i in 0..RW {
            for a in 0..RA {
                out[i][a] = hsum(acc[i][a]) + summ[i][a];
            }
        }
    }

    /// One Q4_1 weight row (pair layout) unpacked for [`q4_1_tile_g4`]: per block the 32
    /// weights as bytes in `unp`, and its scale and min as f32 in `dm`. Prefill unpacks each
    /// weight row once per region and reuses it for every group of 4 activation rows.
    #[inline(always)]
    unsafe fn unpack_q4_1_row(w: &[u8], nb: usize, unp: &mut [u8], dm: &mut [f32]) {
        debug_assert!(unp.len() >= nb * QK && dm.len() >= nb * 2);
        let mask = _mm256_set1_epi8(0x0F);
        let mut h = [0f32; 4];
        for b in (0..nb).step_by(2) {
            let p = w.as_ptr().add(b / 2 * PAIR_BYTES);
            _mm_storeu_ps(h.as_mut_ptr(), _mm_cvtph_ps(_mm_loadl_epi64(p.cast())));
            let (lo, hi) = q4_1_pair(p, mask);
            _mm256_storeu_si256(unp.as_mut_ptr().add(b * QK).cast(), lo);
            *dm.get_unchecked_mut(2 * b) = h[0];
            *dm.get_unchecked_mut(2 * b + 1) = h[2];
            if b + 1 < nb {
                _mm256_storeu_si256(unp.as_mut_ptr().add((b + 1) * QK).cast(), hi);
                *dm.get_unchecked_mut(2 * b + 2) = h[1];
                *dm.get_unchecked_mut(2 * b + 3) = h[3];
            }
        }
    }

    /// [`q4_1_tile`] for one (unpacked, see [`unpack_q4_1_row`]) weight row against an
    /// aligned group of 4 activation rows, with the 4 rows' scales multiplied and their min
    /// terms accumulated as one vector each. The per-pair arithmetic (`dw·da` rounded once,
    /// `mw·s` fused into the sum) is the same.
    #[inline(always)]
    unsafe fn q4_1_tile_g4(unp: &[u8], dm: &[f32], x: &ActQ8, r: usize, out: &mut [[f32; 4]; 1]) {
        let nb = unp.len() / QK;
        let g = r / 4;
        let d4 = x.d4.as_ptr().add(g * nb * 4);
        let s4 = x.s4.as_ptr().add(g * nb * 4);
        let qs: [*const i8; 4] = std::array::from_fn(|a| x.qs.as_ptr().add((r + a) * x.k));
        let ones = _mm256_set1_epi16(1);
        let idx: [__m256i; 4] = std::array::from_fn(|a| _mm256_set1_epi32(a as i32));
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut summ = _mm_setzero_ps();
        for b in 0..nb {
            let wv = _mm256_loadu_si256(unp.as_ptr().add(b * QK).cast());
            let (dw, mw) = (*dm.get_unchecked(2 * b), *dm.get_unchecked(2 * b + 1));
            let sc4 = _mm_mul_ps(_mm_set1_ps(dw), _mm_loadu_ps(d4.add(b * 4)));
            summ = _mm_fmadd_ps(_mm_set1_ps(mw), _mm_loadu_ps(s4.add(b * 4)), summ);
            let sc8 = _mm256_castps128_ps256(sc4);
            for a in 0..4 {
                let av = _mm256_loadu_si256(qs[a].add(b * QK).cast());
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
                let sc = _mm256_permutevar8x32_ps(sc8, idx[a]);
                acc[a] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[a]);
            }
        }
        let mut sm = [0f32; 4];
        _mm_storeu_ps(sm.as_mut_ptr(), summ);
        for a in 0..4 {
            out[0][a] = hsum(acc[a]) + sm[a];
        }
    }

    /// Q8_0 weights · Q8_0 activations, tiled like [`q4_1_tile`].
    #[inline(always)]
    unsafe fn q8_0_tile<const RW: usize, const RA: usize>(
        w: &[&[u8]; RW],
        acts: &[ActRow; RA],
        nb: usize,
        out: &mut [[f32; RA]; RW],
    ) {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); RA]; RW];
        for b in 0..nb {
            let mut av = [_mm256_setzero_si256(); RA];
            let mut ad = [0f32; RA];
            for a in 0..RA {
                let r = acts.get_unchecked(a);
                av[a] = _mm256_loadu_si256(r.qs.as_ptr().add(b * QK).cast());
                ad[a] = *r.d.get_unchecked(b);
            }
            for i in 0..RW {
                let blk = w.get_unchecked(i).as_ptr().add(b * Q8_0_BYTES);
                _mm_prefetch(blk.wrapping_add(PF).cast(), _MM_HINT_T0);
                let (dw, _) = f16x2(blk);
                let wv = _mm256_loadu_si256(blk.add(2).cast());
                let ax = _mm256_sign_epi8(wv, wv);
                for a in 0..RA {
                    let sy = _mm256_sign_epi8(av[a], wv);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                    let sc = _mm256_set1_ps(dw * ad[a]);
                    acc[i][a] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[i][a]);
                }
            }
        }
        for i in 0..RW {
            for a in 0..RA {
                out[i][a] = hsum(acc[i][a]);
            }
        }
    }

    /// Walk a region of the output in tiles: up to 4 weight rows when there are few
    /// activation rows (decode), 2 × 4 otherwise (prefill). `out` has row stride `c1 - c0`.
    macro_rules! region {
        ($name:ident, $tile:ident, $row_bytes:expr, $g4:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(
                w: &[u8],
                x: &ActQ8,
                (r0, r1): (usize, usize),
                (c0, c1): (usize, usize),
                out: &mut [f32],
            ) {
                let nb = x.k / QK;
                let rb: usize = $row_bytes(x.k);
                let ld = c1 - c0;
                let wide = if r1 - r0 <= 2 { 4 } else { 1 };
                // The unpacked weight row of the 4-row groups (Q4_1 only), and which row it is.
                let (mut unp, mut dm, mut unpacked) = if $g4 && wide == 1 {
                    (vec![0u8; nb * QK], vec![0f32; nb * 2], usize::MAX)
                } else {
                    (Vec::new(), Vec::new(), usize::MAX)
                };
                let mut c = c0;
                while c < c1 {
                    let rw = wide.min(c1 - c);
                    let mut r = r0;
                    while r < r1 {
                        let ra = (r1 - r).min(4);
                        macro_rules! go {
                            ($rw:literal, $ra:literal) => {{
                                // Plain loops, not `array::from_fn`: its closures were not
                                // inlined here and cost ~3% of decode.
                                let mut ws: [&[u8]; $rw] = [&[]; $rw];
                                for i in 0..$rw {
                                    ws[i] = w.get_unchecked((c + i) * rb..(c + i + 1) * rb);
                                }
                                let mut acts: [ActRow; $ra] = [x.row(r); $ra];
                                for a in 0..$ra {
                                    acts[a] = x.row(r + a);
                                }
                                let mut res = [[0f32; $ra]; $rw];
                                $tile::<$rw, $ra>(&ws, &acts, nb, &mut res);
                                for i in 0..$rw {
                                    for a in 0..$ra {
                                        out[(r - r0 + a) * ld + (c - c0 + i)] = res[i][a];
                                    }
                                }
                            }};
                        }
                        if $g4
                            && rw == 1
                            && ra == 4
                            && r % 4 == 0
                            && (r / 4 + 1) * nb * 4 <= x.d4.len()
                        {
                            if unpacked != c {
                                unpack_q4_1_row(&w[c * rb..(c + 1) * rb], nb, &mut unp, &mut dm);
                                unpacked = c;
                            }
                            let mut res = [[0f32; 4]; 1];
                            q4_1_tile_g4(&unp, &dm, x, r, &mut res);
                            for a in 0..4 {
                                out[(r - r0 + a) * ld + (c - c0)] = res[0][a];
                            }
                            r += 4;
                            continue;
                        }
                        match (rw, ra) {
                            (4, 1) => go!(4, 1),
                            (4, 2) => go!(4, 2),
                            (3, 1) => go!(3, 1),
                            (3, 2) => go!(3, 2),
                            (2, 1) => go!(2, 1),
                            (2, 2) => go!(2, 2),
                            (2, 3) => go!(2, 3),
                            (2, 4) => go!(2, 4),
                            (1, 1) => go!(1, 1),
                            (1, 2) => go!(1, 2),
                            (1, 3) => go!(1, 3),
                            (1, 4) => go!(1, 4),
                            _ => unreachable!("tile {rw}x{ra}"),
                        }
                        r += ra;
                    }
                    c += rw;
                }
            }
        };
    }
    region!(q4_1_region_impl, q4_1_tile, row_bytes, true);
    region!(q8_0_region_impl, q8_0_tile, |k| k / QK * Q8_0_BYTES, false);

    /// Bounds the region kernels rely on: `w` holds `cols.1` rows of `row_bytes` bytes,
    /// `x` holds `rows.1` rows, `out` the region.
    fn check(
        w: &[u8],
        row_bytes: usize,
        x: &ActQ8,
        rows: (usize, usize),
        cols: (usize, usize),
        out: &[f32],
    ) {
        assert!(w.len() >= cols.1 * row_bytes && x.rows >= rows.1);
        assert!(out.len() >= (rows.1 - rows.0) * (cols.1 - cols.0));
    }

    /// Output rows `r0..r1` × columns `c0..c1` of `x · Wᵀ` for Q4_1 weights.
    pub fn q4_1_region(
        w: &[u8],
        x: &ActQ8,
        rows: (usize, usize),
        cols: (usize, usize),
        out: &mut [f32],
    ) {
        check(w, row_bytes(x.k), x, rows, cols, out);
        // SAFETY: `available()` was checked by kernels::isa; bounds checked above.
        unsafe { q4_1_region_impl(w, x, rows, cols, out) }
    }

    /// As [`q4_1_region`] for Q8_0 weights.
    pub fn q8_0_region(
        w: &[u8],
        x: &ActQ8,
        rows: (usize, usize),
        cols: (usize, usize),
        out: &mut [f32],
    ) {
        check(w, x.k / QK * Q8_0_BYTES, x, rows, cols, out);
        // SAFETY: as above.
        unsafe { q8_0_region_impl(w, x, rows, cols, out) }
    }

    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_one(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
        for (a, o) in rows.iter().zip(out.iter_mut()) {
            let mut res = [[0f32; 1]; 1];
            q4_1_tile::<1, 1>(&[w], &[*a], a.d.len(), &mut res);
            *o = res[0][0];
        }
    }

    /// One weight row (pair layout) against each activation row (tests).
    #[cfg(test)]
    pub fn q4_1(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
        assert!(rows.iter().all(|r| r.qs.len() >= r.d.len() * QK
            && r.s.len() >= r.d.len()
            && w.len() >= row_bytes(r.d.len() * QK)));
        assert!(out.len() >= rows.len());
        // SAFETY: as above.
        unsafe { q4_1_one(w, rows, out) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn quantize_rows(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        crate::kernels::quantize_blocks(x, qs, d, s)
    }

    /// Quantize with SSE4.1 rounding available (ties-to-even without a libm call).
    pub fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        // SAFETY: as above; the body is safe code compiled with the features enabled.
        unsafe { quantize_rows(x, qs, d, s) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn f32_r<const R: usize>(w: &[f32], rows: &[&[f32]], out: &mut [f32]) {
        let k = w.len();
        let k8 = k - k % 8;
        let mut acc = [_mm256_setzero_ps(); R];
        let mut i = 0;
        while i < k8 {
            let wv = _mm256_loadu_ps(w.as_ptr().add(i));
            for r in 0..R {
                let xv = _mm256_loadu_ps(rows.get_unchecked(r).as_ptr().add(i));
                acc[r] = _mm256_fmadd_ps(xv, wv, acc[r]);
            }
            i += 8;
        }
        for r in 0..R {
            let mut s = hsum(acc[r]);
            for j in k8..k {
                s += w[j] * rows[r][j];
            }
            out[r] = s;
        }
    }

    macro_rules! by_rows {
        ($f:ident, $w:expr, $rows:expr, $out:expr) => {{
            // SAFETY: `available()` was checked by the caller (kernels::isa) before any of
            // these entry points is used; slices are bounds-checked below.
            unsafe {
                match $rows.len() {
                    1 => $f::<1>($w, $rows, $out),
                    2 => $f::<2>($w, $rows, $out),
                    3 => $f::<3>($w, $rows, $out),
                    4 => $f::<4>($w, $rows, $out),
                    n => panic!("row tile of {n}"),
                }
            }
        }};
    }

    pub fn f32_dot(w: &[f32], rows: &[&[f32]], out: &mut [f32]) {
        assert!(rows.iter().all(|r| r.len() >= w.len()));
        assert!(out.len() >= rows.len());
        by_rows!(f32_r, w, rows, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_impl(q: &[f32], k: &[u16]) -> f32 {
        let n = q.len().min(k.len());
        let n8 = n - n % 8;
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < n8 {
            let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(i).cast()));
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), kv, acc);
            i += 8;
        }
        let mut s = hsum(acc);
        for j in n8..n {
            s += q[j] * half::f16::from_bits(k[j]).to_f32();
        }
        s
    }

    pub fn dot_f16(q: &[f32], k: &[u16]) -> f32 {
        // SAFETY: called only when `available()` (see kernels::isa); lengths clamped inside.
        unsafe { dot_f16_impl(q, k) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_f16_impl(acc: &mut [f32], w: f32, v: &[u16]) {
        let n = acc.len().min(v.len());
        let n8 = n - n % 8;
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i < n8 {
            let a = _mm256_loadu_ps(acc.as_ptr().add(i));
            let x = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
            _mm256_storeu_ps(acc.as_mut_ptr().add(i), _mm256_fmadd_ps(wv, x, a));
            i += 8;
        }
        for j in n8..n {
            acc[j] += w * half::f16::from_bits(v[j]).to_f32();
        }
    }

    pub fn axpy_f16(acc: &mut [f32], w: f32, v: &[u16]) {
        // SAFETY: called only when `available()` (see kernels::isa); lengths clamped inside.
        unsafe { axpy_f16_impl(acc, w, v) }
    }

    /// [`super::scores_f16`] for `hd` a multiple of 8: each key row is converted once and
    /// dotted with up to 4 heads at a time, each head's sum in the order [`dot_f16`] uses.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores_f16_impl(
        q: &[f32],
        g: usize,
        kc: &[u16],
        offs: &[usize],
        scale: f32,
        out: &mut [f32],
    ) {
        let (hd, n) = (q.len() / g, offs.len());
        for (j, &o) in offs.iter().enumerate() {
            let k = kc.as_ptr().add(o);
            let mut h0 = 0;
            while h0 < g {
                let m = (g - h0).min(4);
                let mut acc = [_mm256_setzero_ps(); 4];
                for i in (0..hd).step_by(8) {
                    let kv = _mm256_cvtph_ps(_mm_loadu_si128(k.add(i).cast()));
                    for h in 0..m {
                        let qv = _mm256_loadu_ps(q.as_ptr().add((h0 + h) * hd + i));
                        acc[h] = _mm256_fmadd_ps(qv, kv, acc[h]);
                    }
                }
                for h in 0..m {
                    *out.get_unchecked_mut((h0 + h) * n + j) = hsum(acc[h]) * scale;
                }
                h0 += m;
            }
        }
    }

    pub fn scores_f16(
        q: &[f32],
        g: usize,
        kc: &[u16],
        offs: &[usize],
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = q.len() / g;
        if !hd.is_multiple_of(8) {
            return crate::kernels::scalar_scores_f16(q, g, kc, offs, scale, out, dot_f16);
        }
        assert!(g * hd == q.len() && out.len() >= g * offs.len());
        assert!(offs.iter().all(|&o| o + hd <= kc.len()));
        // SAFETY: `available()` checked by kernels::isa; bounds asserted above.
        unsafe { scores_f16_impl(q, g, kc, offs, scale, out) }
    }

    /// `M` 8-float chunks of the output from dimension `d0`, accumulated in registers over
    /// every key in order (per element the same fused multiply-adds as [`axpy_f16`] calls).
    #[inline(always)]
    unsafe fn weighted_pass<const M: usize>(
        w: &[f32],
        inv: f32,
        vc: &[u16],
        offs: &[usize],
        d0: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); M];
        for (j, &o) in offs.iter().enumerate() {
            let wv = _mm256_set1_ps(*w.get_unchecked(j) * inv);
            let v = vc.as_ptr().add(o + d0);
            for c in 0..M {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(v.add(8 * c).cast()));
                acc[c] = _mm256_fmadd_ps(wv, x, acc[c]);
            }
        }
        for c in 0..M {
            _mm256_storeu_ps(out.as_mut_ptr().add(d0 + 8 * c), acc[c]);
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_f16_impl(w: &[f32], inv: f32, vc: &[u16], offs: &[usize], out: &mut [f32]) {
        let hd = out.len();
        let mut d0 = 0;
        while d0 + 64 <= hd {
            weighted_pass::<8>(w, inv, vc, offs, d0, out);
            d0 += 64;
        }
        while d0 < hd {
            weighted_pass::<1>(w, inv, vc, offs, d0, out);
            d0 += 8;
        }
    }

    pub fn weighted_f16(w: &[f32], inv: f32, vc: &[u16], offs: &[usize], out: &mut [f32]) {
        let hd = out.len();
        if !hd.is_multiple_of(8) {
            return crate::kernels::scalar_weighted_f16(w, inv, vc, offs, out, axpy_f16);
        }
        assert!(w.len() >= offs.len());
        assert!(offs.iter().all(|&o| o + hd <= vc.len()));
        // SAFETY: `available()` checked by kernels::isa; bounds asserted above.
        unsafe { weighted_f16_impl(w, inv, vc, offs, out) }
    }
}
