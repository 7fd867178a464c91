//! Portable kernels (any CPU): the same formats and the same per-row arithmetic order as the
//! SIMD ones, in plain loops. Also the reference the SIMD kernels are tested against.

use super::{f16_to_f32, q4_1 as layout, ActQ8, ActRow, Q8_0_BYTES, QK};

/// One pair-layout Q4_1 weight row against each activation row (each row's `d` has one entry
/// per block).
pub fn q4_1(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
    for (row, o) in rows.iter().zip(out.iter_mut()) {
        let mut acc = 0f32;
        let mut summ = 0f32;
        for b in 0..row.d.len() {
            let (dw, mw, q) = layout::block(w, b);
            let a = &row.qs[b * QK..(b + 1) * QK];
            let isum: i32 = q
                .iter()
                .zip(a)
                .map(|(&q, &x)| i32::from(q) * i32::from(x))
                .sum();
            acc += dw * row.d[b] * isum as f32;
            summ += mw * row.s[b];
        }
        *o = acc + summ;
    }
}

pub fn q8_0(w: &[u8], rows: &[ActRow], out: &mut [f32]) {
    for (row, o) in rows.iter().zip(out.iter_mut()) {
        let mut acc = 0f32;
        for (b, blk) in w.chunks_exact(Q8_0_BYTES).enumerate() {
            let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
            let a = &row.qs[b * QK..(b + 1) * QK];
            let isum: i32 = blk[2..]
                .iter()
                .zip(a)
                .map(|(&q, &x)| i32::from(q as i8) * i32::from(x))
                .sum();
            acc += dw * row.d[b] * isum as f32;
        }
        *o = acc;
    }
}

pub fn f32_dot(w: &[f32], rows: &[&[f32]], out: &mut [f32]) {
    for (row, o) in rows.iter().zip(out.iter_mut()) {
        *o = dot(w, row);
    }
}

pub fn dot_f16(q: &[f32], k: &[u16]) -> f32 {
    let mut lanes = [0f32; 8];
    let n = q.len().min(k.len());
    let n8 = n - n % 8;
    for i in (0..n8).step_by(8) {
        for l in 0..8 {
            lanes[l] += q[i + l] * f16_to_f32(k[i + l]);
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for i in n8..n {
        s += q[i] * f16_to_f32(k[i]);
    }
    s
}

pub fn axpy_f16(acc: &mut [f32], w: f32, v: &[u16]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a += w * f16_to_f32(*x);
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, like the SIMD lanes, so long dot products keep precision.
    let mut lanes = [0f32; 8];
    let n = a.len().min(b.len());
    let n8 = n - n % 8;
    for i in (0..n8).step_by(8) {
        for l in 0..8 {
            lanes[l] += a[i + l] * b[i + l];
        }
    }
    let mut s: f32 = lanes.iter().sum();
    for i in n8..n {
        s += a[i] * b[i];
    }
    s
}

/// Output rows `r0..r1` × columns `c0..c1` for Q4_1 weights (row stride `c1 - c0`).
pub fn q4_1_region(
    w: &[u8],
    x: &ActQ8,
    rows: (usize, usize),
    cols: (usize, usize),
    out: &mut [f32],
) {
    region(w, layout::row_bytes(x.k), x, rows, cols, out, q4_1)
}

/// As [`q4_1_region`] for Q8_0 weights.
pub fn q8_0_region(
    w: &[u8],
    x: &ActQ8,
    rows: (usize, usize),
    cols: (usize, usize),
    out: &mut [f32],
) {
    region(w, x.k / QK * Q8_0_BYTES, x, rows, cols, out, q8_0)
}

fn region(
    w: &[u8],
    rb: usize,
    x: &ActQ8,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    out: &mut [f32],
    kernel: fn(&[u8], &[ActRow], &mut [f32]),
) {
    let ld = c1 - c0;
    for c in c0..c1 {
        for r in r0..r1 {
            let mut o = [0f32];
            kernel(&w[c * rb..(c + 1) * rb], &[x.row(r)], &mut o);
            out[(r - r0) * ld + (c - c0)] = o[0];
        }
    }
}

pub fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    super::quantize_blocks(x, qs, d, s)
}
