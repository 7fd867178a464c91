//! The executor seam: what owns the model's weights, the KV storage and the scratch buffers,
//! runs the batched forward pass, and copies KV blocks out to bytes and back in (the format of
//! `dynamo_protocols::kv_transfer`). The scheduler, the radix cache, KV events, metrics and
//! spans see only [`Executor`]; which device holds the tensors is the executor's business.
//! [`CpuExecutor`] runs hand-written SIMD kernels over host memory; [`DeviceExecutor`] runs
//! the forward pass as kernel calls on a [`device::DeviceOps`] implementation (the plain-Rust
//! reference [`device::HostOps`], or CUDA behind the `cuda` feature).

mod cpu;
pub mod device;
mod select;

pub use cpu::CpuExecutor;
pub use device::DeviceExecutor;
pub use select::{executor, probe, Device, NO_CUDA_FEATURE};

use dynamo_protocols::kv_transfer::{KvBlocksHeader, KvLayout};

use crate::kernels::ComputePool;
use crate::model::{ModelConfig, SeqInput};
use crate::TransferError;

/// Runs the model over a paged KV cache it owns.
pub trait Executor: Send {
    /// The model's shape and tokens.
    fn model(&self) -> &ModelConfig;

    /// Run one batch: write each sequence's new tokens' K/V into its pages, and return the
    /// logits rows (vocab-sized) each sequence asks for (`SeqInput::logits`), in order.
    fn forward(&mut self, seqs: &[SeqInput<'_>]) -> Vec<f32>;

    /// The last [`Executor::forward`] replayed a captured (CUDA) graph.
    fn graph_ran(&self) -> bool {
        false
    }

    /// Seconds the host has spent in [`Executor::forward`] before waiting for the device's
    /// results (building plans, uploading them, enqueuing launches), summed; 0 when the host
    /// computes everything itself.
    fn host_seconds(&self) -> f64 {
        0.0
    }

    /// Bytes of the weights as this executor keeps them.
    fn weight_bytes(&self) -> usize;

    /// Host threads for work around the forward pass (sampling).
    fn threads(&self) -> &ComputePool;

    /// The cache's layout (what a peer's export must match to be imported).
    fn kv_layout(&self) -> KvLayout;

    /// Bytes of one token's K and V across all layers.
    fn kv_bytes_per_token(&self) -> usize {
        self.kv_layout().bytes_per_token()
    }

    /// Copy the K/V of the first `tokens` slots of block `src` into block `dst`, in every
    /// layer (a prompt reusing part of a cached block starts from its own copy).
    fn copy_prefix(&mut self, src: u32, dst: u32, tokens: usize);

    /// Append the header and the K/V of `blocks` (in that order) to `out`.
    fn export_blocks(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<(), TransferError>;

    /// Write an export's blocks into `blocks` (one target per exported block, in order),
    /// after checking its header against [`Executor::kv_layout`]. Nothing is written when a
    /// check fails.
    fn import_blocks(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), TransferError>;

    /// Whether the scheduler should load host-tier blocks back ahead of admission, while
    /// other sequences' forward passes run ([`Executor::import_blocks_staged`]): a device
    /// executor, whose copies can run beside its kernels. The CPU executor copies with the
    /// cores that compute, so it loads back at admission instead.
    fn stages_load_back(&self) -> bool {
        false
    }

    /// [`Executor::import_blocks`], where the writes may still be in flight when this returns:
    /// they overlap the forward passes queued after it and are in place before any later
    /// forward pass, export or copy reads the blocks. By default done at once.
    fn import_blocks_staged(&mut self, blocks: &[u32], data: &[u8]) -> Result<(), TransferError> {
        self.import_blocks(blocks, data)
    }
}

/// Check an export against an executor with `layout` and `total` blocks, for the `targets` it
/// is to be imported into; its payload (every block's K then V slab per layer, in order).
pub(crate) fn import_payload<'a>(
    layout: KvLayout,
    total: usize,
    targets: &[u32],
    data: &'a [u8],
) -> Result<&'a [u8], TransferError> {
    let (header, payload) = KvBlocksHeader::decode(data)?;
    if header.layout != layout {
        return Err(TransferError::LayoutMismatch {
            ours: layout,
            theirs: header.layout,
        });
    }
    if header.blocks as usize != targets.len() {
        return Err(TransferError::CountMismatch {
            given: targets.len(),
            exported: header.blocks as usize,
        });
    }
    check_blocks(total, targets)?;
    Ok(payload)
}

/// Start an export of `blocks` (of an executor with `layout` and `total` blocks): the header.
pub(crate) fn export_header(
    layout: KvLayout,
    total: usize,
    blocks: &[u32],
    out: &mut Vec<u8>,
) -> Result<(), TransferError> {
    check_blocks(total, blocks)?;
    let header = KvBlocksHeader {
        layout,
        blocks: blocks.len() as u32,
    };
    out.reserve(dynamo_protocols::kv_transfer::HEADER_BYTES + header.payload_bytes());
    header.encode(out);
    Ok(())
}

fn check_blocks(total: usize, blocks: &[u32]) -> Result<(), TransferError> {
    match blocks.iter().find(|&&b| b as usize >= total) {
        Some(&block) => Err(TransferError::BlockOutOfRange {
            block,
            blocks: total,
        }),
        None => Ok(()),
    }
}
