//! KV block hashing, one implementation for engine, mocker and router: XXH3-64 with seed 1337
//! over each complete block's token ids as u32 little-endian (local hash), chained into
//! sequence hashes that identify the whole prefix.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of every block hash.
pub const KV_HASH_SEED: u64 = 1337;

/// Local (position-independent) hash of one block of token ids.
pub fn local_block_hash(tokens: &[u32]) -> u64 {
    let mut bytes = Vec::with_capacity(tokens.len() * 4);
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    xxh3_64_with_seed(&bytes, KV_HASH_SEED)
}

/// Local hashes of every complete `block_size` block of `tokens` (a trailing partial block is
/// not hashed).
pub fn block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    if block_size == 0 {
        return Vec::new();
    }
    tokens
        .chunks_exact(block_size)
        .map(local_block_hash)
        .collect()
}

/// The sequence hash of a block whose predecessor has sequence hash `prev`.
pub fn next_sequence_hash(prev: u64, local: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&prev.to_le_bytes());
    buf[8..].copy_from_slice(&local.to_le_bytes());
    xxh3_64_with_seed(&buf, KV_HASH_SEED)
}

/// The sequence hash of block `tokens` after a block with sequence hash `prev` (`None`: the
/// first block of a prompt, whose sequence hash is its local hash).
pub fn block_sequence_hash(prev: Option<u64>, tokens: &[u32]) -> u64 {
    let local = local_block_hash(tokens);
    prev.map_or(local, |p| next_sequence_hash(p, local))
}

/// Chain local hashes into sequence hashes: `seq[0] = local[0]`,
/// `seq[i] = xxh3(le(seq[i-1]) ‖ le(local[i]), 1337)`.
pub fn sequence_hashes(local: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(local.len());
    for (i, &h) in local.iter().enumerate() {
        if i == 0 {
            out.push(h);
        } else {
            out.push(next_sequence_hash(out[i - 1], h));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_blocks_are_not_hashed() {
        let toks: Vec<u32> = (0..35).collect();
        assert_eq!(block_hashes(&toks, 16).len(), 2);
        assert!(block_hashes(&toks, 0).is_empty());
    }

    #[test]
    fn hash_is_xxh3_of_le_u32_bytes() {
        let toks = [1u32, 2, 3, 4];
        let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
        assert_eq!(local_block_hash(&toks), xxh3_64_with_seed(&bytes, 1337));
    }

    #[test]
    fn sequence_hash_depends_on_prefix() {
        let a = block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let b = block_hashes(&[9, 9, 9, 9, 5, 6, 7, 8], 4);
        assert_eq!(a[1], b[1], "local hash is position independent");
        let sa = sequence_hashes(&a);
        let sb = sequence_hashes(&b);
        assert_eq!(sa[0], a[0]);
        assert_ne!(sa[1], sb[1], "sequence hash encodes the prefix");
    }
}
