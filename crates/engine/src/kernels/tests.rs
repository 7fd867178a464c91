//! Kernel tests: SIMD against the portable loops against a dequantized f32 reference, and the
//! row-tile invariance the scheduler's batch invariance rests on.

use super::*;

/// Small deterministic generator (no rand dependency in the engine).
fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn q4_1_weights(n: usize, k: usize, seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n * k / QK {
        let d = half::f16::from_f32(0.01 + lcg(seed).abs() * 0.05);
        let m = half::f16::from_f32(lcg(seed) * 0.2);
        out.extend(d.to_bits().to_le_bytes());
        out.extend(m.to_bits().to_le_bytes());
        for _ in 0..16 {
            out.push((lcg(seed).abs() * 255.0) as u8);
        }
    }
    out
}

fn q8_0_weights(n: usize, k: usize, seed: &mut u64) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n * k / QK {
        out.extend(
            half::f16::from_f32(0.01 + lcg(seed).abs() * 0.02)
                .to_bits()
                .to_le_bytes(),
        );
        for _ in 0..QK {
            out.push((lcg(seed) * 127.0) as i8 as u8);
        }
    }
    out
}

fn check(lin: &Linear, t: usize, seed: &mut u64) {
    let pool = ComputePool::new(2).unwrap();
    let x: Vec<f32> = (0..t * lin.k).map(|_| lcg(seed)).collect();
    let mut q = ActQ8::default();
    if lin.needs_q8() {
        q.quantize_into(&x, t, lin.k, &pool);
    }
    let input = Input {
        rows: t,
        f32: &x,
        q8: Some(&q),
    };
    let mut out = vec![0f32; t * lin.n];
    lin.forward(&input, &mut out, &pool);
    // Reference: dequantized weights · dequantized activations (what the integer kernel
    // computes exactly, up to float rounding).
    let w = lin.to_f32();
    for r in 0..t {
        let xr: Vec<f32> = if lin.needs_q8() {
            (0..lin.k)
                .map(|j| f32::from(q.qs[r * lin.k + j]) * q.d[(r * lin.k + j) / QK])
                .collect()
        } else {
            x[r * lin.k..(r + 1) * lin.k].to_vec()
        };
        for c in 0..lin.n {
            let want: f32 = (0..lin.k).map(|j| w[c * lin.k + j] * xr[j]).sum();
            let got = out[r * lin.n + c];
            assert!(
                (want - got).abs() <= 1e-3 * (1.0 + want.abs()),
                "row {r} col {c}: {got} vs {want}"
            );
        }
    }
    // Batch invariance: each row alone gives bit-identical results.
    for r in 0..t {
        let mut q1 = ActQ8::default();
        if lin.needs_q8() {
            q1.quantize_into(&x[r * lin.k..(r + 1) * lin.k], 1, lin.k, &pool);
        }
        let one = Input {
            rows: 1,
            f32: &x[r * lin.k..(r + 1) * lin.k],
            q8: Some(&q1),
        };
        let mut o1 = vec![0f32; lin.n];
        lin.forward(&one, &mut o1, &pool);
        assert_eq!(
            o1,
            out[r * lin.n..(r + 1) * lin.n],
            "row {r} differs alone vs batched"
        );
    }
}

#[test]
fn q4_1_matches_reference_and_is_tile_invariant() {
    let mut seed = 7;
    let (n, k) = (70, 128);
    let lin = Linear::q4_1(n, k, &q4_1_weights(n, k, &mut seed)).unwrap();
    for t in [1, 3, 5, 9, 40] {
        check(&lin, t, &mut seed);
    }
}

/// llama.cpp's AVX2 Q4_1 · Q8_1 dot product written out lane by lane from the GGUF bytes:
/// per block, 8 integer lanes of 4 products each scaled by `f32(d) · da` and fused into 8
/// float accumulators, `m · s` fused into a scalar sum, then the lanes added pairwise
/// (4 + 4, 2 + 2, 1 + 1) plus the sum.
fn q4_1_lanes_reference(gguf_row: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let f = |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    let mut acc = [0f32; 8];
    let mut summ = 0f32;
    for (b, blk) in gguf_row.chunks_exact(20).enumerate() {
        let w: Vec<i32> = (0..QK)
            .map(|j| {
                i32::from(if j < 16 {
                    blk[4 + j] & 0xF
                } else {
                    blk[4 + j - 16] >> 4
                })
            })
            .collect();
        let sc = f(&blk[..2]) * d[b];
        for (l, acc) in acc.iter_mut().enumerate() {
            let p: i32 = (4 * l..4 * l + 4)
                .map(|j| w[j] * i32::from(qs[b * QK + j]))
                .sum();
            *acc = sc.mul_add(p as f32, *acc);
        }
        summ = f(&blk[2..4]).mul_add(s[b], summ);
    }
    let h: Vec<f32> = (0..4).map(|i| acc[i] + acc[i + 4]).collect();
    ((h[0] + h[2]) + (h[1] + h[3])) + summ
}

/// The SIMD kernel on the repacked layout gives, in every tile shape (decode's 4-row tiles,
/// prefill's unpacked 4-activation groups, the ragged edges), exactly the bits of the
/// lane-by-lane reference on the GGUF bytes, for even and odd block counts.
/// Whether this CPU runs the AVX2 kernels; says so on stderr when a test is skipped for it.
fn avx2_or_skip(test: &str) -> bool {
    let ok = avx2::available() && isa() == Isa::Avx2;
    if !ok {
        eprintln!("SKIPPED {test}: this CPU has no AVX2+FMA (the portable kernels are tested by the other kernel tests)");
    }
    ok
}

#[test]
fn q4_1_simd_is_bit_exact_to_the_lane_reference() {
    if !avx2_or_skip("q4_1_simd_is_bit_exact_to_the_lane_reference") {
        return;
    }
    let mut seed = 21;
    for (n, k) in [(13, 96), (9, 576), (6, 64)] {
        let gguf = q4_1_weights(n, k, &mut seed);
        let lin = Linear::q4_1(n, k, &gguf).unwrap();
        let pool = ComputePool::new(2).unwrap();
        for t in [1, 2, 5, 12, 37] {
            let x: Vec<f32> = (0..t * k).map(|_| lcg(&mut seed) * 3.0).collect();
            let mut q = ActQ8::default();
            q.quantize_into(&x, t, k, &pool);
            let mut out = vec![0f32; t * n];
            lin.forward(
                &Input {
                    rows: t,
                    f32: &x,
                    q8: Some(&q),
                },
                &mut out,
                &pool,
            );
            let rb = k / QK * 20;
            for r in 0..t {
                let a = q.row(r);
                for c in 0..n {
                    let want = q4_1_lanes_reference(&gguf[c * rb..(c + 1) * rb], a.qs, a.d, a.s);
                    assert_eq!(
                        out[r * n + c].to_bits(),
                        want.to_bits(),
                        "k {k} t {t} row {r} col {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn q4_1_repack_round_trips_every_block() {
    let mut seed = 17;
    for (n, k) in [(3, 96), (2, 64)] {
        let gguf = q4_1_weights(n, k, &mut seed);
        let lin = Linear::q4_1(n, k, &gguf).unwrap();
        for r in 0..n {
            let row = lin.row_f32(r);
            for (b, blk) in gguf[r * k / QK * 20..(r + 1) * k / QK * 20]
                .chunks_exact(20)
                .enumerate()
            {
                let f = |i: usize| {
                    half::f16::from_bits(u16::from_le_bytes([blk[i], blk[i + 1]])).to_f32()
                };
                for j in 0..QK {
                    let q = if j < 16 {
                        blk[4 + j] & 0xF
                    } else {
                        blk[4 + j - 16] >> 4
                    };
                    assert_eq!(
                        row[b * QK + j],
                        f(0) * f32::from(q) + f(2),
                        "row {r} block {b} weight {j}"
                    );
                }
            }
        }
    }
    assert!(Linear::q4_1(2, 64, &[0u8; 79]).is_err());
}

#[test]
fn q8_0_matches_reference_and_is_tile_invariant() {
    let mut seed = 11;
    let (n, k) = (33, 96);
    let lin = Linear::new(n, k, Weight::Q8_0(q8_0_weights(n, k, &mut seed))).unwrap();
    for t in [1, 2, 7, 33] {
        check(&lin, t, &mut seed);
    }
}

#[test]
fn f32_matches_reference_and_is_tile_invariant() {
    let mut seed = 13;
    let (n, k) = (17, 72);
    let w: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
    let lin = Linear::new(n, k, Weight::F32(w)).unwrap();
    for t in [1, 4, 6, 50] {
        check(&lin, t, &mut seed);
    }
}

#[test]
fn simd_and_portable_agree() {
    let mut seed = 5;
    let (n, k) = (8, 256);
    let w = q4_1::from_gguf(&q4_1_weights(n, k, &mut seed), n, k).unwrap();
    let x: Vec<f32> = (0..3 * k).map(|_| lcg(&mut seed)).collect();
    let mut q = ActQ8::default();
    q.quantize_into(&x, 3, k, &ComputePool::new(1).unwrap());
    let rows: Vec<ActRow> = (0..3).map(|r| q.row(r)).collect();
    if !avx2_or_skip("simd_and_portable_agree") {
        return;
    }
    for c in 0..n {
        let wr = &w[c * q4_1::row_bytes(k)..(c + 1) * q4_1::row_bytes(k)];
        let mut a = [0f32; 3];
        let mut b = [0f32; 3];
        scalar::q4_1(wr, &rows, &mut a);
        avx2::q4_1(wr, &rows, &mut b);
        for i in 0..3 {
            assert!(
                (a[i] - b[i]).abs() <= 1e-4 * (1.0 + a[i].abs()),
                "{a:?} vs {b:?}"
            );
        }
    }
}

#[test]
fn concat_stacks_rows_and_widens_mixed_formats() {
    let mut seed = 3;
    let a = Linear::q4_1(4, 96, &q4_1_weights(4, 96, &mut seed)).unwrap();
    let b = Linear::q4_1(2, 96, &q4_1_weights(2, 96, &mut seed)).unwrap();
    let c = Linear::new(3, 96, Weight::Q8_0(q8_0_weights(3, 96, &mut seed))).unwrap();
    let ab = Linear::concat(vec![a.clone(), b.clone()]).unwrap();
    assert!(matches!(ab.w, Weight::Q4_1(_)));
    assert_eq!(ab.row_f32(5), b.row_f32(1));
    let abc = Linear::concat(vec![a, b, c.clone()]).unwrap();
    assert!(matches!(abc.w, Weight::F32(_)));
    assert_eq!(abc.row_f32(8), c.row_f32(2));
}

/// The fused attention kernels give bit-identical results to one `dot_f16` / `axpy_f16` call
/// per key (what attention did before, and still does for odd head sizes), SIMD and portable.
#[test]
fn attention_kernels_match_per_key_calls() {
    let mut seed = 11;
    for (hd, g, n) in [(64, 3, 37), (72, 2, 5), (20, 4, 9), (128, 5, 17)] {
        let rows = n + 3;
        let kv: Vec<u16> = (0..rows * hd)
            .map(|_| half::f16::from_f32(lcg(&mut seed)).to_bits())
            .collect();
        let q: Vec<f32> = (0..g * hd).map(|_| lcg(&mut seed)).collect();
        // Scattered rows, as a paged cache gives them.
        let offs: Vec<usize> = (0..n).map(|j| ((j * 7) % rows) * hd).collect();
        let mut got = vec![0f32; g * n];
        scores_f16(&q, g, &kv, &offs, 0.125, &mut got);
        for h in 0..g {
            for (j, &o) in offs.iter().enumerate() {
                let want = dot_f16(&q[h * hd..(h + 1) * hd], &kv[o..o + hd]) * 0.125;
                assert_eq!(
                    got[h * n + j].to_bits(),
                    want.to_bits(),
                    "hd {hd} h {h} j {j}"
                );
            }
        }
        let w: Vec<f32> = (0..n).map(|_| lcg(&mut seed).abs()).collect();
        let mut out = vec![1f32; hd];
        weighted_f16(&w, 0.3, &kv, &offs, &mut out);
        let mut want = vec![0f32; hd];
        for (j, &o) in offs.iter().enumerate() {
            axpy_f16(&mut want, w[j] * 0.3, &kv[o..o + hd]);
        }
        assert_eq!(out, want, "hd {hd}");
        // The portable path agrees with itself the same way.
        let mut p = vec![0f32; g * n];
        scalar_scores_f16(&q, g, &kv, &offs, 0.125, &mut p, scalar::dot_f16);
        let mut p2 = vec![0f32; hd];
        scalar_weighted_f16(&w, 0.3, &kv, &offs, &mut p2, scalar::axpy_f16);
        for (a, b) in p.iter().zip(&got) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
        for (a, b) in p2.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
        }
    }
}
