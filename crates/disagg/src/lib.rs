//! Disaggregated prefill/decode between two workers over TCP. The prefill worker runs a
//! [`TransferServer`] on its bootstrap port: each prefill request opens a *room* (a random
//! 63-bit id) that collects the blocks its engine exports as prefill chunks complete
//! (`dynamo_engine::disagg::RoomMsg`). The decode worker's [`fetch`] connects, states its
//! model and KV layout (the server refuses a mismatch, naming both sides' values), waits for
//! its own engine to reserve the prompt's blocks, tells the server how many leading blocks it
//! caches already, and writes the rest into its engine as they arrive, block-granular and
//! streamed while the prefill side is still computing. Rooms that nobody claims expire after
//! a bound; either side's failure ends the request cleanly on the other and is counted in
//! `sglang:num_bootstrap_failed_reqs_total` / `sglang:num_transfer_failed_reqs_total`.

mod client;
mod server;
pub mod wire;

pub use client::{fetch, FetchConfig};
pub use server::{ServerConfig, TransferServer};

use dynamo_protocols::kv_transfer::{KvBlocksHeader, KvHeaderError, HEADER_BYTES};

/// `--disaggregation-transfer-backend`: how KV moves between workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferBackend {
    /// Block frames over a TCP connection per request.
    Tcp,
}

impl std::str::FromStr for TransferBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(TransferBackend::Tcp),
            other => Err(format!(
                "unknown transfer backend {other:?}; this build has: tcp (nixl and mooncake need RDMA hardware and are not built)"
            )),
        }
    }
}

/// Why a transfer did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransferFailure {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Io(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer refused (its message names the reason).
    #[error("{0}")]
    Refused(String),
    /// This side refused the peer.
    #[error("{0}")]
    Incompatible(String),
    #[error("no frame from the peer for {0:?}")]
    Timeout(std::time::Duration),
    #[error("the engine stopped")]
    EngineStopped,
}

impl TransferFailure {
    fn io(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            TransferFailure::Io("the peer closed the connection".into())
        } else {
            TransferFailure::Io(e.to_string())
        }
    }
}

/// Drop the first `k` blocks of an export (they are cached on the receiving side).
pub fn skip_blocks(data: &[u8], k: u32) -> Result<Vec<u8>, KvHeaderError> {
    let (h, payload) = KvBlocksHeader::decode(data)?;
    let k = k.min(h.blocks);
    let bb = h.layout.block_bytes();
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() - k as usize * bb);
    KvBlocksHeader {
        layout: h.layout,
        blocks: h.blocks - k,
    }
    .encode(&mut out);
    out.extend_from_slice(&payload[k as usize * bb..]);
    Ok(out)
}

/// A random room id (63 bits, never 0: room 0 means aggregated).
pub fn new_room() -> u64 {
    loop {
        let r = rand::random::<u64>() >> 1;
        if r != 0 {
            return r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::kv_transfer::{KvDtype, KvLayout};

    #[test]
    fn skipping_blocks_keeps_the_rest_and_a_valid_header() {
        let layout = KvLayout {
            layers: 2,
            kv_heads: 1,
            head_dim: 2,
            dtype: KvDtype::F32,
            block_size: 2,
        };
        let bb = layout.block_bytes();
        let mut data = Vec::new();
        KvBlocksHeader { layout, blocks: 3 }.encode(&mut data);
        for b in 0..3u8 {
            data.extend(std::iter::repeat_n(b, bb));
        }
        let cut = skip_blocks(&data, 2).unwrap();
        let (h, rest) = KvBlocksHeader::decode(&cut).unwrap();
        assert_eq!(h.blocks, 1);
        assert_eq!(rest, vec![2u8; bb].as_slice());
        let none = skip_blocks(&data, 5).unwrap();
        assert_eq!(KvBlocksHeader::decode(&none).unwrap().0.blocks, 0);
        assert!("nixl"
            .parse::<TransferBackend>()
            .unwrap_err()
            .contains("tcp"));
        assert!((0..100)
            .map(|_| new_room())
            .all(|r| r != 0 && r < (1 << 63)));
    }
}
