//! Disaggregated serving, the engine's side. A prefill request ([`crate::Engine::generate_prefill`])
//! runs its prompt and one sampled token like any request, and as each prefill chunk finishes
//! the scheduler exports the blocks it completed into the request's room channel
//! ([`RoomMsg`]), ending with the sampled token. A decode request
//! ([`crate::Engine::generate_decode`]) waits in the prealloc queue until its prompt's blocks
//! can be reserved (blocks it already caches are shared, not reserved), then in the transfer
//! queue while the caller writes the missing blocks through its [`KvImport`]; when the caller
//! finishes, the imported full blocks join the radix tree (KV events announce them) and the
//! request decodes from the prefill side's token on. Moving the bytes between machines is the
//! caller's business (the worker's transfer server and client).

use std::sync::{mpsc, Arc, OnceLock};

use tokio::sync::oneshot;

use crate::scheduler::Cmd;
use crate::EngineError;

/// What a prefill request's room yields, in order.
#[derive(Debug)]
pub enum RoomMsg {
    /// An export (`dynamo_protocols::kv_transfer` format) of the prompt's blocks
    /// `first..first + n`.
    Blocks { first: u32, data: Vec<u8> },
    /// The prompt is done: the token sampled after it, and the prompt's block count.
    Done { first_token: u32, blocks: u32 },
}

/// The caller's end of a decode request's KV import. Dropping it before
/// [`KvImport::finish`] aborts the request and frees its reserved blocks.
pub struct KvImport {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Cmd>,
    pub(crate) reserved: Option<oneshot::Receiver<u32>>,
    pub(crate) failure: Arc<OnceLock<String>>,
    pub(crate) done: bool,
    /// Blocks the prompt occupies (the last one may be partial).
    pub prompt_blocks: u32,
}

impl KvImport {
    /// Wait until the prompt's blocks are reserved; returns how many leading blocks the
    /// engine holds already (its prefix cache), which the peer need not send.
    pub async fn reserved(&mut self) -> Result<u32, EngineError> {
        let rx = self.reserved.take().ok_or(EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Write an export of the prompt's blocks `first..` into the reserved blocks.
    pub fn write(&self, first: u32, data: Vec<u8>) -> Result<(), EngineError> {
        self.tx
            .send(Cmd::Import {
                id: self.id,
                first,
                data,
            })
            .map_err(|_| EngineError::Stopped)
    }

    /// Every block is written: decode from `first_token` on.
    pub fn finish(mut self, first_token: u32) -> Result<(), EngineError> {
        self.done = true;
        self.tx
            .send(Cmd::ImportDone {
                id: self.id,
                first_token,
            })
            .map_err(|_| EngineError::Stopped)
    }

    /// Give up: the request ends with `reason` (see [`KvImport::failure`]) and its blocks are
    /// freed.
    pub fn fail(self, reason: String) {
        let _ = self.failure.set(reason);
        drop(self);
    }

    /// Why the request failed, once it has: set by [`KvImport::fail`] or by the engine (an
    /// export it could not import). The request's output stream ends without a finish
    /// reason when this is set.
    pub fn failure(&self) -> Arc<OnceLock<String>> {
        self.failure.clone()
    }
}

impl Drop for KvImport {
    fn drop(&mut self) {
        if !self.done {
            // Dropped without a failure: the caller went away (the client cancelled).
            let cancelled = self
                .failure
                .set("the KV import was abandoned".into())
                .is_ok();
            let _ = self.tx.send(Cmd::ImportAbort {
                id: self.id,
                cancelled,
            });
        }
    }
}
