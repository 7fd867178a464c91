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

use std::sync::{mpsc, Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use crate::scheduler::Cmd;
use crate::EngineError;

/// Reused buffers for KV exports and imports, shared by the engine and its transfer code. A
/// fresh multi-megabyte allocation is mapped by the kernel page by page while it is first
/// written, which on this path (a socket read or an export) halves the copy rate; a buffer
/// taken from here was written before and is mapped already. Holds at most `cap` buffers
/// (extra ones are freed), so its memory is bounded by `cap` times the largest frame: one
/// prefill chunk's blocks.
#[derive(Clone, Debug)]
pub struct FramePool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    cap: usize,
}

impl FramePool {
    pub fn new(cap: usize) -> Self {
        FramePool {
            free: Arc::new(Mutex::new(Vec::new())),
            cap,
        }
    }

    /// A buffer of exactly `len` bytes (its contents are stale: the caller overwrites them).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.pop();
        // Truncates, or zero-fills only the part past the buffer's last length.
        buf.resize(len, 0);
        buf
    }

    /// An empty buffer with whatever capacity the pool had.
    pub fn take_empty(&self) -> Vec<u8> {
        let mut buf = self.pop();
        buf.clear();
        buf
    }

    /// The largest free buffer (the one least likely to grow), or a new empty one.
    fn pop(&self) -> Vec<u8> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..free.len()).max_by_key(|&i| free[i].capacity());
        best.map(|i| free.swap_remove(i)).unwrap_or_default()
    }

    /// Give a buffer back.
    pub fn put(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < self.cap && buf.capacity() > 0 {
            free.push(buf);
        }
    }
}

/// What a prefill request's room yields, in order.
#[derive(Debug)]
pub enum RoomMsg {
    /// An export (`dynamo_protocols::kv_transfer` format) of the prompt's blocks
    /// `first..first + n`.
    Blocks { first: u32, data: Vec<u8> },
    /// The prompt is done: the token sampled after it (with its log probabilities when the
    /// request asked), and the prompt's block count.
    Done {
        first_token: u32,
        blocks: u32,
        logprob: Option<dynamo_protocols::TokenLogprob>,
    },
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

    /// Every block is written: decode from `first_token` on (its log probabilities from the
    /// prefill side, when the request asked for them).
    pub fn finish(
        mut self,
        first_token: u32,
        logprob: Option<dynamo_protocols::TokenLogprob>,
    ) -> Result<(), EngineError> {
        self.done = true;
        self.tx
            .send(Cmd::ImportDone {
                id: self.id,
                first_token,
                logprob,
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

#[cfg(test)]
mod tests {
    use super::FramePool;

    #[test]
    fn frame_pool_reuses_buffers_and_keeps_at_most_its_cap() {
        let pool = FramePool::new(2);
        let a = pool.take(1000);
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        pool.put(a);
        // The same allocation comes back, at the new length, and emptied on request.
        let b = pool.take(600);
        assert_eq!((b.len(), b.as_ptr()), (600, ptr));
        pool.put(b);
        let c = pool.take_empty();
        assert_eq!((c.len(), c.as_ptr()), (0, ptr));
        assert!(c.capacity() >= 1000);
        // The largest buffer is handed out first; past the cap, buffers are freed.
        for n in [10, 20, 30] {
            pool.put(vec![0; n]);
        }
        assert_eq!(pool.take(1).capacity(), 20);
        assert_eq!(pool.take(1).capacity(), 10);
        assert_eq!(pool.take_empty().capacity(), 0);
        drop(c);
    }
}
