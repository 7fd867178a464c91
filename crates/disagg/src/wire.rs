//! Frames of the transfer connection: one kind byte, a little-endian u32 length, the payload.
//! The control half is async; the decode side reads block frames with blocking reads on a
//! thread of its own (see `client`).
//! Control frames carry JSON (bounded small); block frames carry the first block's index (u32
//! LE) and an export in `dynamo_protocols::kv_transfer` format (bounded by
//! [`MAX_BLOCKS_FRAME`]). Anything else is a protocol error, never a panic or an unbounded
//! allocation.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::TransferFailure;

pub const HELLO: u8 = 1;
pub const WELCOME: u8 = 2;
pub const START: u8 = 3;
pub const BLOCKS: u8 = 4;
pub const DONE: u8 = 5;
pub const ERROR: u8 = 6;
pub const HEARTBEAT: u8 = 7;

/// Largest control frame.
pub const MAX_CONTROL_FRAME: usize = 64 << 10;
/// Largest block frame (one prefill chunk's blocks).
pub const MAX_BLOCKS_FRAME: usize = 1 << 30;

/// The `{"message": …}` of an error frame.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorMsg {
    pub message: String,
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

pub async fn write_json<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    kind: u8,
    v: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).expect("wire types serialize");
    write_frame(w, kind, &body).await
}

/// A block frame: the header and the first block's index in one write, then the export.
pub async fn write_blocks<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    first: u32,
    export: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; 9];
    head[0] = BLOCKS;
    head[1..5].copy_from_slice(&((4 + export.len()) as u32).to_le_bytes());
    head[5..].copy_from_slice(&first.to_le_bytes());
    w.write_all(&head).await?;
    w.write_all(export).await
}

/// The kind and payload length of a frame header, checked against the kind's bound (before
/// anything is allocated).
pub fn check_header(head: [u8; 5]) -> Result<(u8, usize), TransferFailure> {
    let kind = head[0];
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let bound = if kind == BLOCKS {
        MAX_BLOCKS_FRAME
    } else {
        MAX_CONTROL_FRAME
    };
    if !(HELLO..=HEARTBEAT).contains(&kind) || len > bound {
        return Err(TransferFailure::Protocol(format!(
            "frame kind {kind} of {len} bytes"
        )));
    }
    Ok((kind, len))
}

/// Read one frame.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> Result<(u8, Vec<u8>), TransferFailure> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await.map_err(TransferFailure::io)?;
    let (kind, len) = check_header(head)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(TransferFailure::io)?;
    Ok((kind, buf))
}

pub fn parse<T: DeserializeOwned>(kind: u8, body: &[u8]) -> Result<T, TransferFailure> {
    serde_json::from_slice(body)
        .map_err(|e| TransferFailure::Protocol(format!("frame kind {kind}: {e}")))
}

/// The remote error of an error frame.
pub fn remote_error(body: &[u8]) -> TransferFailure {
    match serde_json::from_slice::<ErrorMsg>(body) {
        Ok(e) => TransferFailure::Refused(e.message),
        Err(e) => TransferFailure::Protocol(format!("error frame: {e}")),
    }
}
