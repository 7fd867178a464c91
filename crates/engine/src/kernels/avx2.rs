//! AVX2 + FMA + F16C kernels, used only after run-time detection (`available`). Each function
//! is monomorphised over the row-tile size so accumulators stay in registers; the arithmetic
//! for one row is the same in every tile size.
#![allow(unsafe_code)]

#[cfg(not(target_arch = "x86_64"))]
pub use super::scalar::{axpy_f16, dot_f16, f32_dot, q4_1, q8_0};

#[cfg(not(target_arch = "x86_64"))]
pub fn available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
pub use imp::*;

#[cfg(target_arch = "x86_64")]
mod imp {
    use crate::kernels::{ActRow, Q4_1_BYTES, Q8_0_BYTES, QK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

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

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_r<const R: usize>(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
        let nb = w.len() / Q4_1_BYTES;
        let mask = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut summ = [0f32; R];
        let wp = w.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * Q4_1_BYTES);
            let (dw, mw) = f16x2(blk);
            let q = _mm_loadu_si128(blk.add(4).cast());
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
            let wv = _mm256_set_m128i(hi, lo);
            for r in 0..R {
                let row = rows.get_unchecked(r);
                let av = _mm256_loadu_si256(row.qs.as_ptr().add(b * QK).cast());
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, av), ones);
                let sc = _mm256_set1_ps(dw * *row.d.get_unchecked(b));
                acc[r] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[r]);
                summ[r] += mw * *row.s.get_unchecked(b);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]) + summ[r];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_r<const R: usize>(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
        let nb = w.len() / Q8_0_BYTES;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        let wp = w.as_ptr();
        for b in 0..nb {
            let blk = wp.add(b * Q8_0_BYTES);
            let (dw, _) = f16x2(blk);
            let wv = _mm256_loadu_si256(blk.add(2).cast());
            let ax = _mm256_sign_epi8(wv, wv);
            for r in 0..R {
                let row = rows.get_unchecked(r);
                let av = _mm256_loadu_si256(row.qs.as_ptr().add(b * QK).cast());
                let sy = _mm256_sign_epi8(av, wv);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                let sc = _mm256_set1_ps(dw * *row.d.get_unchecked(b));
                acc[r] = _mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(p), acc[r]);
            }
        }
        for r in 0..R {
            out[r] = hsum(acc[r]);
        }
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

    pub fn q4_1(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
        let nb = w.len() / Q4_1_BYTES;
        assert!(rows
            .iter()
            .all(|r| r.qs.len() >= nb * QK && r.d.len() >= nb && r.s.len() >= nb));
        assert!(out.len() >= rows.len());
        by_rows!(q4_1_r, w, rows, out)
    }

    pub fn q8_0(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
        let nb = w.len() / Q8_0_BYTES;
        assert!(rows
            .iter()
            .all(|r| r.qs.len() >= nb * QK && r.d.len() >= nb));
        assert!(out.len() >= rows.len());
        by_rows!(q8_0_r, w, rows, out)
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
}
