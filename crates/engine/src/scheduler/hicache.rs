//! The scheduler's side of the host tier: full blocks the pool evicts are read out of the
//! executor (one block's export) before anything writes their block again, and kept in the
//! [`HostTier`]; before a waiting request is matched against the radix tree, the blocks of its
//! prompt that follow the cached prefix and sit in the host tier are loaded back (imported
//! into fresh blocks and inserted in the tree, where the request's match finds them).

use super::{Scheduler, Seq};
use crate::kv::HostTier;
use dynamo_protocols::hashing::{local_block_hash, next_sequence_hash};

impl Scheduler {
    /// Copy the blocks the pool evicted since the last call into the host tier. Must run
    /// after every allocation and before the allocated blocks are written.
    pub(super) fn backup_evicted(&mut self) {
        let Some(host) = self.host.as_mut() else {
            return;
        };
        let page = self.pool.page() as u64;
        for ev in self.pool.take_evicted() {
            let mut bytes = Vec::new();
            if self.exec.export_blocks(&[ev.block], &mut bytes).is_ok() {
                host.insert(ev.seq_hash, ev.tokens, bytes);
                self.local.host_backups += 1;
                if let Some(h) = self.metrics.as_ref().and_then(|m| m.hicache.as_ref()) {
                    h.evicted_tokens.inc_by(page);
                }
            }
        }
        if let Some(h) = self.metrics.as_ref().and_then(|m| m.hicache.as_ref()) {
            h.host_used.set((host.len() as u64 * page) as i64);
        }
    }

    /// A block for the scheduler's own use (evicted blocks backed up first).
    fn alloc_backed_up(&mut self) -> Option<u32> {
        let b = self.pool.alloc();
        self.backup_evicted();
        b
    }

    /// Load back the host-tier blocks that continue `s`'s cached prefix, as unreferenced
    /// cached blocks of the tree (the next match finds them). Stops at the first block the
    /// host tier does not hold, or when no block can be had.
    pub(super) fn load_back(&mut self, s: &Seq) {
        if self.host.as_ref().is_none_or(HostTier::is_empty) || s.wants_prompt_logprobs() {
            return;
        }
        let page = self.pool.page();
        let len = s.tokens.len();
        let full = (len - 1) / page;
        let mut held = self.pool.match_prefix(&s.tokens, full);
        if held.len() == full {
            return;
        }
        // Hold the chain while blocks are taken: allocation may evict.
        self.pool.acquire(&held);
        let mut hash = held.last().map(|&n| self.pool.seq_hash_of(n));
        let mut loaded = 0;
        for k in held.len()..full {
            let tokens = &s.tokens[k * page..(k + 1) * page];
            let h = local_block_hash(tokens);
            let seq = hash.map_or(h, |p| next_sequence_hash(p, h));
            let host = self.host.as_mut().expect("checked above");
            let Some(bytes) = host.get(seq, tokens).map(<[u8]>::to_vec) else {
                break;
            };
            let Some(b) = self.alloc_backed_up() else {
                break;
            };
            if self.exec.import_blocks(&[b], &bytes).is_err() {
                self.pool.free_block(b);
                break;
            }
            let parent = held.last().copied().unwrap_or(crate::kv::ROOT);
            let (node, _) = self.pool.insert(parent, tokens, b);
            if node == u32::MAX {
                self.pool.free_block(b);
                break;
            }
            held.push(node);
            hash = Some(seq);
            loaded += 1;
        }
        self.pool.release(&held);
        self.local.host_loads += loaded;
        if let Some(h) = self.metrics.as_ref().and_then(|m| m.hicache.as_ref()) {
            h.load_back_tokens.inc_by((loaded as usize * page) as u64);
        }
    }
}
