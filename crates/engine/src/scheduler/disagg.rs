//! The scheduler's part in disaggregated serving: a prefill request exports each block as its
//! chunk completes (and the sampled token at the end) into its room; a decode request waits
//! for its prompt's blocks to be reserved (prealloc queue), then for their bytes (transfer
//! queue), then joins the running batch with the prefill side's token as its first output.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use dynamo_protocols::kv_transfer::KvBlocksHeader;
use dynamo_protocols::TokenLogprob;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::emit::{cache_full_blocks, emit};
use super::{Scheduler, Seq};
use crate::disagg::{FramePool, RoomMsg};
use crate::executor::Executor;
use crate::metrics::DisaggStage;

/// What a request is to this engine.
pub(crate) enum Role {
    /// Aggregated: prompt and generation here.
    Unified,
    /// Prefill for a decode worker: the prompt and one token, exported into the room.
    Prefill(PrefillSide),
    /// Decode: the prompt's KV comes from a prefill worker.
    Decode(DecodeSide),
}

pub(crate) struct PrefillSide {
    pub room: tmpsc::UnboundedSender<RoomMsg>,
    /// Blocks sent so far.
    pub exported: u32,
    pub prompt_blocks: u32,
    pub done_sent: bool,
}

pub(crate) struct DecodeSide {
    pub id: u64,
    pub reserved: Option<oneshot::Sender<u32>>,
    pub failure: Arc<OnceLock<String>>,
    /// The next block the import must write.
    pub next_block: u32,
    pub reserved_at: Option<Instant>,
    pub transferred_at: Option<Instant>,
}

impl Role {
    /// The other side of a prefill request is gone (its room closed).
    pub(super) fn abandoned(&self) -> bool {
        match self {
            Role::Prefill(p) => p.room.is_closed(),
            _ => false,
        }
    }

    fn decode_id(&self) -> Option<u64> {
        match self {
            Role::Decode(d) => Some(d.id),
            _ => None,
        }
    }

    /// A token was sampled: a prefill request's room learns it (once).
    pub(super) fn sampled(&mut self, tok: u32, logprob: Option<&TokenLogprob>) {
        if let Role::Prefill(p) = self {
            if !p.done_sent {
                p.done_sent = true;
                let _ = p.room.send(RoomMsg::Done {
                    first_token: tok,
                    blocks: p.prompt_blocks,
                    logprob: logprob.cloned(),
                });
            }
        }
    }
}

/// Send a prefill request's newly completed blocks (all of them, the partial last one
/// included, once the prompt is done).
pub(super) fn export_ready(exec: &dyn Executor, frames: &FramePool, s: &mut Seq, page: usize) {
    let Role::Prefill(p) = &mut s.role else {
        return;
    };
    let upto = if s.computed >= s.prompt_len {
        s.prompt_len.div_ceil(page)
    } else {
        s.computed / page
    } as u32;
    if upto <= p.exported {
        return;
    }
    let mut data = frames.take_empty();
    match exec.export_blocks(&s.pages[p.exported as usize..upto as usize], &mut data) {
        Ok(()) => {
            let _ = p.room.send(RoomMsg::Blocks {
                first: p.exported,
                data,
            });
            p.exported = upto;
        }
        Err(e) => tracing::error!(error = %e, "cannot export prefill blocks"),
    }
}

impl Scheduler {
    /// Reserve the prompt blocks of waiting decode requests, FCFS, while the pool has room
    /// (one block of headroom when anything else runs).
    pub(super) fn reserve_decodes(&mut self) {
        let page = self.pool.page();
        while let Some(s) = self.prealloc.front() {
            let len = s.prompt_len;
            let nodes = self.pool.match_prefix(&s.tokens, len / page);
            let need = len.div_ceil(page) - nodes.len();
            let avail = self.pool.available() - self.pool.unreferenced_among(&nodes);
            let busy = !(self.running.is_empty() && self.transfer.is_empty());
            if avail < need + usize::from(busy) {
                break;
            }
            let mut s = self.prealloc.pop_front().expect("front exists");
            self.pool.acquire(&nodes);
            s.pages = nodes.iter().map(|&n| self.pool.block_of(n)).collect();
            s.nodes = nodes;
            let ok = Self::ensure_pages(&mut self.pool, &mut s, len);
            debug_assert!(ok, "reservation checked capacity");
            let held = s.nodes.len() as u32;
            s.cached = Some(held as usize * page);
            let now = Instant::now();
            if let Some(m) = &self.metrics {
                let waited = now.duration_since(s.arrival);
                m.disagg.stage(DisaggStage::DecodePrepare, waited);
                m.disagg.alloc_ms.set(waited.as_secs_f64() * 1e3);
                m.realtime_prefill_cache
                    .inc_by((held as usize * page) as u64);
            }
            if let Role::Decode(d) = &mut s.role {
                d.next_block = held;
                d.reserved_at = Some(now);
                if let Some(tx) = d.reserved.take() {
                    let _ = tx.send(held);
                }
            }
            self.transfer.push(*s);
        }
    }

    fn take_transfer(&mut self, id: u64) -> Option<Seq> {
        let i = self
            .transfer
            .iter()
            .position(|s| s.role.decode_id() == Some(id))?;
        Some(self.transfer.remove(i))
    }

    /// End a decode request whose import failed: blocks back, the caller told why.
    fn fail_transfer(&mut self, mut s: Seq, reason: String) {
        if let Role::Decode(d) = &s.role {
            let _ = d.failure.set(reason);
        }
        if let Some(m) = &self.metrics {
            m.disagg.transfer_failed.inc();
        }
        self.release(&mut s);
        self.end_trace(&mut s, Instant::now());
    }

    pub(super) fn import(&mut self, id: u64, first: u32, data: &[u8]) {
        let Some(mut s) = self.take_transfer(id) else {
            return;
        };
        let Role::Decode(d) = &mut s.role else {
            unreachable!("transfer queue holds decode requests")
        };
        let n = match KvBlocksHeader::decode(data) {
            Ok((h, _)) => h.blocks,
            Err(e) => return self.fail_transfer(s, format!("bad KV export: {e}")),
        };
        let end = first as usize + n as usize;
        if first != d.next_block || end > s.pages.len() {
            let msg = format!(
                "KV blocks {first}..{end} arrived where block {} of {} was expected",
                d.next_block,
                s.pages.len()
            );
            return self.fail_transfer(s, msg);
        }
        if let Err(e) = self.exec.import_blocks(&s.pages[first as usize..end], data) {
            return self.fail_transfer(s, e.to_string());
        }
        d.next_block = end as u32;
        self.transfer.push(s);
    }

    pub(super) fn import_done(&mut self, id: u64, first_token: u32, logprob: Option<TokenLogprob>) {
        let Some(mut s) = self.take_transfer(id) else {
            return;
        };
        let Role::Decode(d) = &mut s.role else {
            unreachable!("transfer queue holds decode requests")
        };
        if d.next_block as usize != s.pages.len() {
            let msg = format!(
                "the KV transfer ended after {} of {} blocks",
                d.next_block,
                s.pages.len()
            );
            return self.fail_transfer(s, msg);
        }
        let now = Instant::now();
        if let (Some(m), Some(r)) = (&self.metrics, d.reserved_at) {
            m.disagg
                .stage(DisaggStage::DecodeWaiting, now.duration_since(r));
        }
        d.transferred_at = Some(now);
        s.admitted = Some(now);
        if s.forks > 0 {
            // Several choices each sample their own first token: the prompt's last position
            // is computed again here (its K/V rewritten with the same values) for the logits
            // they share; the prefill side's token is not used.
            s.computed = s.prompt_len - 1;
            cache_full_blocks(&mut self.pool, &mut s);
            if let Some(t) = s.trace.as_mut() {
                t.admitted = Some(now);
            }
            self.ready.push_back(s);
            return;
        }
        s.computed = s.prompt_len;
        cache_full_blocks(&mut self.pool, &mut s);
        s.tokens.push(first_token);
        s.last_logprob = logprob.filter(|_| s.logprobs.is_some());
        s.sampler.observe(first_token);
        if let Some(t) = s.trace.as_mut() {
            t.admitted = Some(now);
        }
        let ctx = self.cfg.context_length;
        if emit(&mut s, ctx, self.metrics.as_deref(), &mut self.local, now) {
            self.release(&mut s);
            self.end_trace(&mut s, now);
        } else {
            self.ready.push_back(s);
        }
    }

    pub(super) fn import_abort(&mut self, id: u64, cancelled: bool) {
        let mut s = if let Some(i) = self
            .prealloc
            .iter()
            .position(|s| s.role.decode_id() == Some(id))
        {
            *self.prealloc.remove(i).expect("index found")
        } else if let Some(mut s) = self.take_transfer(id) {
            self.release(&mut s);
            s
        } else {
            return;
        };
        if cancelled {
            self.local.cancelled += 1;
            if let Some(m) = &self.metrics {
                m.aborted.inc();
            }
        }
        self.end_trace(&mut s, Instant::now());
    }

    /// A decode request that has joined the running batch after its transfer.
    pub(super) fn join_running(&mut self, mut s: Seq) {
        s.ticket = None;
        if let (Some(m), Role::Decode(d)) = (&self.metrics, &s.role) {
            if let Some(t) = d.transferred_at {
                m.disagg.stage(DisaggStage::DecodeTransferred, t.elapsed());
            }
        }
        self.running.push(s);
    }

    /// Decode requests whose client left before they joined the batch.
    pub(super) fn drop_cancelled_decodes(&mut self) {
        let now = Instant::now();
        let mut gone = 0;
        let (left, keep): (Vec<_>, Vec<_>) =
            self.prealloc.drain(..).partition(|s| s.tx.is_closed());
        self.prealloc.extend(keep);
        let mut ended: Vec<Seq> = left.into_iter().map(|b| *b).collect();
        let (left, keep): (Vec<_>, Vec<_>) =
            self.transfer.drain(..).partition(|s| s.tx.is_closed());
        self.transfer = keep;
        for mut s in left {
            self.release(&mut s);
            ended.push(s);
        }
        let (left, keep): (Vec<_>, Vec<_>) = self.ready.drain(..).partition(|s| s.tx.is_closed());
        self.ready.extend(keep);
        for mut s in left {
            self.release(&mut s);
            ended.push(s);
        }
        for mut s in ended {
            gone += 1;
            self.end_trace(&mut s, now);
        }
        if gone > 0 {
            self.local.cancelled += gone;
            if let Some(m) = &self.metrics {
                m.aborted.inc_by(gone);
            }
        }
    }

    /// The disaggregation gauges of this engine's side.
    pub(super) fn disagg_gauges(&self) {
        let Some(m) = &self.metrics else { return };
        let d = &m.disagg;
        let bootstrap = self
            .waiting
            .iter()
            .filter(|s| matches!(s.role, Role::Prefill(_)))
            .count();
        d.prefill_prealloc_queue.set(bootstrap as i64);
        d.decode_prealloc_queue.set(self.prealloc.len() as i64);
        d.decode_transfer_queue.set(self.transfer.len() as i64);
        let pending: usize = self.prealloc.iter().map(|s| s.prompt_len).sum();
        let total = self.pool.total() * self.pool.page();
        d.pending_prealloc_token_usage
            .set(pending as f64 / total.max(1) as f64);
    }
}
