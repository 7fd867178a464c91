//! Decode matmul kernels alone (one activation row, as at batch 1): GB/s of weights streamed
//! by the Q4_1 and Q8_0 kernels on 1 and 2 threads, for a matrix that fits in L2 (the
//! kernel's own speed) and one far larger than L3 (what decode sees: every weight from DRAM
//! once per token). Where the two are close, the kernel, not memory, is the limit.
//!
//! `cargo bench -p dynamo-engine --bench kernels`

use std::time::Instant;

use dynamo_engine::kernels::{ActQ8, ComputePool, Input, Linear, Weight};

/// Random blocks with small positive f16 scales (and mins) so the sums stay finite.
fn blocks(n: usize, k: usize, bytes: usize) -> Vec<u8> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut b: Vec<u8> = (0..n * k / 32 * bytes)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    for blk in b.chunks_exact_mut(bytes) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
        if bytes == 20 {
            blk[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_bits().to_le_bytes());
        }
    }
    b
}

fn main() {
    let k = 576;
    println!("| kernel | threads | rows × {k} | MB | GB/s | ns per row |");
    println!("|---|---|---|---|---|---|");
    for threads in [1usize, 2] {
        let pool = ComputePool::new(threads).expect("pool");
        for (name, n) in [
            ("q4_1", 576),
            ("q4_1", 172_800),
            ("q8_0", 576),
            ("q8_0", 57_600),
        ] {
            let lin = if name == "q4_1" {
                Linear::q4_1(n, k, &blocks(n, k, 20)).expect("q4_1")
            } else {
                Linear::new(n, k, Weight::Q8_0(blocks(n, k, 34))).expect("q8_0")
            };
            let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut q = ActQ8::default();
            q.quantize_into(&x, 1, k, &pool);
            let input = Input {
                rows: 1,
                f32: &x,
                q8: Some(&q),
            };
            let mut out = vec![0f32; n];
            let reps = (400_000_000 / lin.bytes()).max(5);
            lin.forward(&input, &mut out, &pool);
            let t0 = Instant::now();
            for _ in 0..reps {
                lin.forward(&input, &mut out, &pool);
            }
            let dt = t0.elapsed().as_secs_f64();
            println!(
                "| {name} | {threads} | {n} | {:.1} | {:.2} | {:.1} |",
                lin.bytes() as f64 / 1e6,
                (lin.bytes() * reps) as f64 / dt / 1e9,
                dt / (reps * n) as f64 * 1e9
            );
        }
    }
}
