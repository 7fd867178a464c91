//! The byte format of exported KV blocks, shared by every side that moves KV between
//! engines (disaggregated transfer, a host tier): a fixed 32-byte little-endian header that
//! states the layout (layers, KV heads, head size, dtype, block size) and the block count,
//! then for each block, for each layer, its K slots and then its V slots. An importer checks
//! the header against its own layout before it touches a byte of its cache.

use std::fmt;

/// The first four bytes of every export.
pub const MAGIC: [u8; 4] = *b"DYKV";
/// Version of the layout below.
pub const VERSION: u16 = 1;
/// Bytes of the header.
pub const HEADER_BYTES: usize = 32;

/// Element type of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    F16,
    Bf16,
    F32,
}

impl KvDtype {
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::F32 => 4,
        }
    }

    fn code(self) -> u16 {
        match self {
            KvDtype::F16 => 1,
            KvDtype::Bf16 => 2,
            KvDtype::F32 => 3,
        }
    }

    fn from_code(c: u16) -> Option<Self> {
        match c {
            1 => Some(KvDtype::F16),
            2 => Some(KvDtype::Bf16),
            3 => Some(KvDtype::F32),
            _ => None,
        }
    }
}

/// How one engine's KV cache is laid out: two caches can exchange blocks only when these are
/// equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KvLayout {
    pub layers: u32,
    pub kv_heads: u32,
    pub head_dim: u32,
    pub dtype: KvDtype,
    /// Tokens per block.
    pub block_size: u32,
}

impl KvLayout {
    /// Bytes of one token's K and V across all layers.
    pub fn bytes_per_token(&self) -> usize {
        self.layers as usize
            * 2
            * self.kv_heads as usize
            * self.head_dim as usize
            * self.dtype.bytes()
    }

    /// Bytes of one block's K (or V) in one layer.
    pub fn half_slab_bytes(&self) -> usize {
        self.block_size as usize
            * self.kv_heads as usize
            * self.head_dim as usize
            * self.dtype.bytes()
    }

    /// Bytes of one block across all layers.
    pub fn block_bytes(&self) -> usize {
        self.block_size as usize * self.bytes_per_token()
    }
}

impl fmt::Display for KvLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "layers={} kv_heads={} head_dim={} dtype={:?} block_size={}",
            self.layers, self.kv_heads, self.head_dim, self.dtype, self.block_size
        )
    }
}

/// The header of an export: its layout and how many blocks follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvBlocksHeader {
    pub layout: KvLayout,
    pub blocks: u32,
}

/// Why bytes are not a valid export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvHeaderError {
    /// Fewer bytes than a header.
    Short(usize),
    BadMagic([u8; 4]),
    UnsupportedVersion(u16),
    UnknownDtype(u16),
    /// The payload is not `blocks × block_bytes` long.
    Length {
        expected: usize,
        got: usize,
    },
}

impl fmt::Display for KvHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvHeaderError::Short(n) => write!(f, "{n} bytes is shorter than a KV block header"),
            KvHeaderError::BadMagic(m) => write!(f, "not a KV block export (magic {m:?})"),
            KvHeaderError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "KV block export version {v} (this build reads {VERSION})"
                )
            }
            KvHeaderError::UnknownDtype(c) => write!(f, "unknown KV dtype code {c}"),
            KvHeaderError::Length { expected, got } => write!(
                f,
                "KV block payload is {got} bytes where the header announces {expected}"
            ),
        }
    }
}

impl std::error::Error for KvHeaderError {}

impl KvBlocksHeader {
    /// Bytes of the payload the header announces.
    pub fn payload_bytes(&self) -> usize {
        self.blocks as usize * self.layout.block_bytes()
    }

    /// Append the header's 32 bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let l = &self.layout;
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&l.dtype.code().to_le_bytes());
        for v in [l.layers, l.kv_heads, l.head_dim, l.block_size, self.blocks] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[0u8; 4]);
    }

    /// Read a header and check that exactly its payload follows; returns the payload.
    pub fn decode(bytes: &[u8]) -> Result<(Self, &[u8]), KvHeaderError> {
        if bytes.len() < HEADER_BYTES {
            return Err(KvHeaderError::Short(bytes.len()));
        }
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(KvHeaderError::BadMagic(magic));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let version = u16_at(4);
        if version != VERSION {
            return Err(KvHeaderError::UnsupportedVersion(version));
        }
        let dtype = KvDtype::from_code(u16_at(6)).ok_or(KvHeaderError::UnknownDtype(u16_at(6)))?;
        let header = KvBlocksHeader {
            layout: KvLayout {
                layers: u32_at(8),
                kv_heads: u32_at(12),
                head_dim: u32_at(16),
                dtype,
                block_size: u32_at(20),
            },
            blocks: u32_at(24),
        };
        let payload = &bytes[HEADER_BYTES..];
        // Checked: a hostile header's product must not wrap around to the payload's length.
        let l = &header.layout;
        let expected = [
            l.layers,
            2,
            l.kv_heads,
            l.head_dim,
            l.block_size,
            header.blocks,
        ]
        .iter()
        .try_fold(l.dtype.bytes(), |acc, &v| acc.checked_mul(v as usize))
        .unwrap_or(usize::MAX);
        if payload.len() != expected {
            return Err(KvHeaderError::Length {
                expected,
                got: payload.len(),
            });
        }
        Ok((header, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout {
            layers: 2,
            kv_heads: 3,
            head_dim: 4,
            dtype: KvDtype::F16,
            block_size: 5,
        }
    }

    #[test]
    fn header_round_trips_and_checks_what_follows() {
        let h = KvBlocksHeader {
            layout: layout(),
            blocks: 2,
        };
        assert_eq!(h.layout.bytes_per_token(), 2 * 2 * 3 * 4 * 2);
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(bytes.len(), HEADER_BYTES);
        bytes.resize(HEADER_BYTES + h.payload_bytes(), 7);
        let (back, payload) = KvBlocksHeader::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload.len(), 2 * 5 * h.layout.bytes_per_token());

        let cases: Vec<(Vec<u8>, KvHeaderError)> = vec![
            (bytes[..10].to_vec(), KvHeaderError::Short(10)),
            (
                [b"NOPE".as_slice(), &bytes[4..]].concat(),
                KvHeaderError::BadMagic(*b"NOPE"),
            ),
            (
                bytes[..bytes.len() - 1].to_vec(),
                KvHeaderError::Length {
                    expected: h.payload_bytes(),
                    got: h.payload_bytes() - 1,
                },
            ),
            (
                {
                    let mut b = bytes.clone();
                    b[4] = 9;
                    b
                },
                KvHeaderError::UnsupportedVersion(9),
            ),
            (
                {
                    let mut b = bytes.clone();
                    b[6] = 0;
                    b
                },
                KvHeaderError::UnknownDtype(0),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(KvBlocksHeader::decode(&input).unwrap_err(), want);
        }
    }
}
