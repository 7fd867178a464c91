//! The byte format of one storage-tier file: one KV block under its chained block hash, with
//! a header that says whose block it is. A file is read only when every field of its header
//! equals the reader's (model identity, KV layout, block size, the hash asked for, the
//! block's tokens) and its checksum holds; anything else is a [`Reject`] the caller counts and
//! skips, never K/V loaded into a cache.
//!
//! Layout (little-endian):
//! `b"DYNKVFILE1"` · identity length `u32` · identity (UTF-8: model identity and KV layout) ·
//! block hash `u64` · token count `u32` · tokens (`u32` each) · payload length `u64` ·
//! checksum `u64` (xxh3-64 of every byte before it and of the payload) · payload (one block's
//! export bytes, `dynamo_protocols::kv_transfer`).

use xxhash_rust::xxh3::Xxh3;

const MAGIC: &[u8; 10] = b"DYNKVFILE1";

/// Why a file was not loaded (the `reason` label of the skip counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its header or its payload says, or unreadable.
    Truncated,
    /// Written for another model, KV layout, dtype or block size (or not a block file).
    Foreign,
    /// The bytes do not match the checksum.
    Checksum,
    /// Another block: its hash or tokens differ from the ones asked for.
    Mismatch,
}

impl Reject {
    pub const ALL: [Reject; 4] = [
        Reject::Truncated,
        Reject::Foreign,
        Reject::Checksum,
        Reject::Mismatch,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::Truncated => "truncated",
            Reject::Foreign => "foreign",
            Reject::Checksum => "checksum",
            Reject::Mismatch => "mismatch",
        }
    }
}

/// The file's bytes for block `hash` holding `tokens` with export `payload`, for a store of
/// `identity`.
pub fn encode(identity: &str, hash: u64, tokens: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + identity.len() + tokens.len() * 4 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(identity.len() as u32).to_le_bytes());
    out.extend_from_slice(identity.as_bytes());
    out.extend_from_slice(&hash.to_le_bytes());
    out.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    for t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut h = Xxh3::new();
    h.update(&out);
    h.update(payload);
    out.extend_from_slice(&h.digest().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A little-endian cursor that reports a short read as [`Reject::Truncated`].
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        let end = self.at.checked_add(n).ok_or(Reject::Truncated)?;
        let s = self.buf.get(self.at..end).ok_or(Reject::Truncated)?;
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, Reject> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, Reject> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The payload of `file` when it is block `hash` holding `tokens` for a store of `identity`.
pub fn decode<'a>(
    file: &'a [u8],
    identity: &str,
    hash: u64,
    tokens: &[u32],
) -> Result<&'a [u8], Reject> {
    let mut c = Cursor { buf: file, at: 0 };
    if c.take(MAGIC.len())? != MAGIC {
        return Err(Reject::Foreign);
    }
    let n = c.u32()? as usize;
    if c.take(n)? != identity.as_bytes() {
        return Err(Reject::Foreign);
    }
    let file_hash = c.u64()?;
    let count = c.u32()? as usize;
    let toks = c.take(count.checked_mul(4).ok_or(Reject::Truncated)?)?;
    let len = usize::try_from(c.u64()?).map_err(|_| Reject::Truncated)?;
    let covered = c.at;
    let sum = c.u64()?;
    let payload = c.take(len)?;
    if c.at != file.len() {
        return Err(Reject::Checksum);
    }
    let mut h = Xxh3::new();
    h.update(&file[..covered]);
    h.update(payload);
    if h.digest() != sum {
        return Err(Reject::Checksum);
    }
    let same_tokens = count == tokens.len()
        && toks
            .chunks_exact(4)
            .zip(tokens)
            .all(|(b, &t)| u32::from_le_bytes(b.try_into().expect("4 bytes")) == t);
    if file_hash != hash || !same_tokens {
        return Err(Reject::Mismatch);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_rejection() {
        let f = encode("model-a|layout", 7, &[1, 2, 3], b"kv bytes");
        assert_eq!(
            decode(&f, "model-a|layout", 7, &[1, 2, 3]),
            Ok(&b"kv bytes"[..])
        );
        assert_eq!(
            decode(&f, "model-b|layout", 7, &[1, 2, 3]),
            Err(Reject::Foreign)
        );
        assert_eq!(
            decode(&f, "model-a|layout", 8, &[1, 2, 3]),
            Err(Reject::Mismatch)
        );
        assert_eq!(
            decode(&f, "model-a|layout", 7, &[1, 2, 4]),
            Err(Reject::Mismatch)
        );
        for cut in [0, 5, 20, f.len() - 1] {
            assert_eq!(
                decode(&f[..cut], "model-a|layout", 7, &[1, 2, 3]),
                Err(Reject::Truncated),
                "cut at {cut}"
            );
        }
        for i in [30, f.len() - 3] {
            let mut g = f.clone();
            g[i] ^= 0x10;
            assert!(
                matches!(
                    decode(&g, "model-a|layout", 7, &[1, 2, 3]),
                    Err(Reject::Checksum | Reject::Mismatch)
                ),
                "flipped byte {i}"
            );
        }
        let mut long = f.clone();
        long.push(0);
        assert_eq!(
            decode(&long, "model-a|layout", 7, &[1, 2, 3]),
            Err(Reject::Checksum)
        );
    }
}
