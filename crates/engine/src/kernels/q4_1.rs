//! The in-memory Q4_1 layout. GGUF stores Q4_1 as 20-byte blocks of 32 weights (f16 scale
//! `d`, f16 min `m`, 16 bytes whose byte `j` holds weight `j` in its low nibble and weight
//! `j + 16` in its high nibble). At load, rows are repacked into 40-byte pairs of blocks:
//!
//! ```text
//! [d0 d1 m0 m1: 4 × f16] [32 bytes: byte j = w0[j] | w1[j] << 4]
//! ```
//!
//! so one 32-byte load, one mask and one shift give both blocks' weights in natural order
//! (what the GGUF layout needed two 16-byte halves, two masks and an insert for, per block),
//! and one f16 → f32 conversion gives both blocks' scales and mins. The values are the same
//! bytes, so every kernel computes exactly what it computed on the GGUF layout. A row with an
//! odd number of blocks ends with a half-filled pair (zero scale, min and weights).

use super::QK;

/// Bytes of one pair of blocks.
pub const PAIR_BYTES: usize = 40;
/// Bytes of one GGUF Q4_1 block.
const GGUF_BYTES: usize = 20;

/// Bytes of one repacked row of `k` inputs.
pub fn row_bytes(k: usize) -> usize {
    (k / QK).div_ceil(2) * PAIR_BYTES
}

/// Repack `n` GGUF Q4_1 rows of `k` inputs into the pair layout.
pub fn from_gguf(gguf: &[u8], n: usize, k: usize) -> Result<Vec<u8>, String> {
    if !k.is_multiple_of(QK) || gguf.len() != n * k / QK * GGUF_BYTES {
        return Err(format!("Q4_1 data does not match shape {n}x{k}"));
    }
    let nb = k / QK;
    let mut out = vec![0u8; n * row_bytes(k)];
    for (src, dst) in gguf
        .chunks_exact(nb * GGUF_BYTES)
        .zip(out.chunks_exact_mut(row_bytes(k)))
    {
        for (b, blk) in src.chunks_exact(GGUF_BYTES).enumerate() {
            let (pair, half) = (&mut dst[b / 2 * PAIR_BYTES..], b % 2);
            pair[2 * half..2 * half + 2].copy_from_slice(&blk[..2]);
            pair[4 + 2 * half..6 + 2 * half].copy_from_slice(&blk[2..4]);
            for j in 0..16 {
                let (lo, hi) = (blk[4 + j] & 0xF, blk[4 + j] >> 4);
                pair[8 + j] |= lo << (4 * half);
                pair[8 + 16 + j] |= hi << (4 * half);
            }
        }
    }
    Ok(out)
}

/// Block `b` of a repacked row: its scale, its min, and its 32 weights in natural order.
pub fn block(row: &[u8], b: usize) -> (f32, f32, [u8; QK]) {
    let (pair, half) = (&row[b / 2 * PAIR_BYTES..(b / 2 + 1) * PAIR_BYTES], b % 2);
    let f = |i: usize| super::f16_to_f32(u16::from_le_bytes([pair[i], pair[i + 1]]));
    let q = std::array::from_fn(|j| (pair[8 + j] >> (4 * half)) & 0xF);
    (f(2 * half), f(4 + 2 * half), q)
}
