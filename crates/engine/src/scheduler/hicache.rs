//! The scheduler's side of the host tier. Blocks go down by the write policy: write-through
//! copies each block once it is computed and cached, write-through-selective once it served a
//! second request, write-back when the pool evicts it (and any policy copies an evicted block
//! the host tier lacks, except selective's blocks used once, which are dropped). Every copy
//! is one block's export, made before anything writes the block again, and is also queued for
//! the storage tier. Before a waiting request is matched against the radix tree, the blocks
//! of its prompt that follow the cached prefix and sit in the host tier are loaded back
//! (imported into fresh blocks and inserted in the tree, where the request's match finds
//! them).

use std::path::Path;
use std::time::Instant;

use super::{Scheduler, Seq, Wake};
use crate::engine::EngineInfo;
use crate::kv::storage::{self, BlockRef, FileStore};
use crate::kv::{BlockBytes, HiCacheConfig, HostTier, NodeId, Tiers, WritePolicy};
use crate::metrics::{EngineMetrics, HiCacheMetrics};
use crate::EngineError;
use dynamo_protocols::hashing::{block_sequence_hash, local_block_hash};
use dynamo_protocols::kv_events::Medium;

/// Waiting requests whose load-back is staged per forward pass (those admitted next).
const STAGED_REQUESTS: usize = 2;

/// The tiers `cfg` asks for below the pool `info` describes: the host tier's capacity in
/// blocks from `--hicache-size` (one block's export bytes each), else the ratio; the storage
/// directory opened and indexed, its prefetches delivered through `wake`.
pub(crate) fn build_tiers(
    cfg: &HiCacheConfig,
    model: &Path,
    info: &EngineInfo,
    metrics: Option<&EngineMetrics>,
    wake: Wake,
) -> Result<Tiers, EngineError> {
    let block_bytes = info.kv_layout.block_bytes().max(1);
    let cap = match cfg.size_bytes {
        Some(b) => b / block_bytes,
        None => (info.kv_blocks as f64 * cfg.ratio) as usize,
    };
    let hm = metrics.and_then(|m| m.hicache.as_ref());
    if let Some(h) = hm {
        h.host_total.set((cap * info.page_size) as i64);
    }
    let store = match &cfg.storage {
        Some(sc) => {
            let identity = storage::identity(model, &info.kv_layout);
            let sm = hm.and_then(|h| h.storage.clone());
            let notify: storage::Notify = std::sync::Arc::new(move |n| wake.send(n));
            let shape = storage::BlockShape {
                page: info.page_size,
                export_bytes: dynamo_protocols::kv_transfer::HEADER_BYTES
                    + info.kv_layout.block_bytes(),
            };
            let st = FileStore::open(sc.clone(), identity, shape, sm, notify).map_err(|e| {
                EngineError::Config(format!("--hicache-storage-dir {}: {e}", sc.dir.display()))
            })?;
            let (files, bytes) = st.usage();
            tracing::info!(dir = %sc.dir.display(), files, bytes, "storage tier opened");
            Some(st)
        }
        None => None,
    };
    Ok(Tiers::new(HostTier::new(cap), cfg.write_policy, store))
}

/// Keep block `hash` in the host tier (and queue it for storage unless it came from there),
/// counting what the tiers drop.
pub(super) fn keep(
    tiers: &mut Tiers,
    m: Option<&HiCacheMetrics>,
    page: usize,
    block: BlockRef,
    bytes: BlockBytes,
    from_storage: bool,
    pinned: bool,
) {
    let BlockRef {
        hash,
        parent,
        tokens,
    } = block;
    let page = page as u64;
    if let (Some(store), false) = (&tiers.store, from_storage) {
        if !store.backup(hash, tokens.clone(), bytes.clone()) {
            if let Some(m) = m {
                m.dropped
                    .with_label_values(&["storage_queue_full"])
                    .inc_by(page);
            }
        }
    }
    let local = local_block_hash(&tokens);
    let dropped = tiers.host.insert(hash, parent, tokens, bytes, from_storage);
    if pinned {
        tiers.host.set_pinned(hash, true);
    }
    tiers.events.stored_in(Medium::Host, &[(hash, local)]);
    tiers.events.removed_in(Medium::Host, &dropped);
    if let (Some(m), false, true) = (m, dropped.is_empty(), tiers.store.is_none()) {
        m.dropped
            .with_label_values(&["host_full"])
            .inc_by(dropped.len() as u64 * page);
    }
    if let Some(m) = m {
        m.host_used.set((tiers.host.len() as u64 * page) as i64);
    }
}

/// Export pool block `block` (holding `b`) into the host tier; the bytes copied, or `None`
/// when the export failed.
fn copy_to_host(
    exec: &dyn crate::executor::Executor,
    tiers: &mut Tiers,
    m: Option<&HiCacheMetrics>,
    page: usize,
    block: u32,
    b: BlockRef,
    pinned: bool,
) -> Option<u64> {
    let mut out = Vec::new();
    exec.export_blocks(&[block], &mut out).ok()?;
    let n = out.len() as u64;
    keep(tiers, m, page, b, out.into(), false, pinned);
    Some(n)
}

impl Scheduler {
    fn hicache_metrics(&self) -> Option<&HiCacheMetrics> {
        self.metrics.as_deref().and_then(|m| m.hicache.as_ref())
    }

    /// Deal with the blocks the pool evicted since the last call: those the host tier lacks
    /// are copied there (selective policy: dropped). Must run after every allocation and
    /// before the allocated blocks are written.
    pub(super) fn backup_evicted(&mut self) {
        let Some(tiers) = self.tiers.as_mut() else {
            return;
        };
        let evicted = self.pool.take_evicted();
        if evicted.is_empty() {
            return;
        }
        let m = self.metrics.as_deref().and_then(|m| m.hicache.as_ref());
        let page = self.pool.page();
        let t0 = Instant::now();
        let (mut kept, mut copied, mut bytes) = (0u64, 0u64, 0u64);
        for ev in evicted {
            if tiers.host.contains(ev.seq_hash) {
                kept += 1;
                continue;
            }
            let pinned = self.pins.contains(ev.seq_hash);
            let reason = if tiers.policy == WritePolicy::WriteThroughSelective && !pinned {
                Some("not_selected")
            } else {
                let b = BlockRef {
                    hash: ev.seq_hash,
                    parent: ev.parent_hash,
                    tokens: ev.tokens,
                };
                match copy_to_host(&*self.exec, tiers, m, page, ev.block, b, pinned) {
                    Some(n) => {
                        bytes += n;
                        copied += 1;
                        None
                    }
                    None => Some("export_failed"),
                }
            };
            if let (Some(r), Some(m)) = (reason, m) {
                m.dropped.with_label_values(&[r]).inc_by(page as u64);
            }
        }
        self.local.host_backups += copied;
        if let Some(m) = m {
            // The whole eviction's time, copies (write-back) or none (written through).
            m.eviction_duration.observe(t0.elapsed().as_secs_f64());
            m.evicted_tokens.inc_by((kept + copied) * page as u64);
            m.backup_tokens.inc_by(copied * page as u64);
            m.backup_bytes.inc_by(bytes);
        }
    }

    /// Copy `nodes` (cached, fully computed) to the host tier where it lacks them.
    fn copy_down(&mut self, nodes: &[NodeId]) {
        let Some(tiers) = self.tiers.as_mut() else {
            return;
        };
        let m = self.metrics.as_deref().and_then(|m| m.hicache.as_ref());
        let page = self.pool.page();
        let t0 = Instant::now();
        let (mut copied, mut bytes) = (0u64, 0u64);
        for &n in nodes {
            let hash = self.pool.seq_hash_of(n);
            if tiers.host.contains(hash) {
                continue;
            }
            let b = BlockRef {
                hash,
                parent: self.pool.parent_hash_of(n),
                tokens: self.pool.tokens_of(n).into(),
            };
            let pinned = self.pins.contains(hash);
            let block = self.pool.block_of(n);
            if let Some(n) = copy_to_host(&*self.exec, tiers, m, page, block, b, pinned) {
                bytes += n;
                copied += 1;
            }
        }
        self.local.host_backups += copied;
        if let (Some(m), true) = (m, copied > 0) {
            m.backup_duration.observe(t0.elapsed().as_secs_f64());
            m.backup_tokens.inc_by(copied * page as u64);
            m.backup_bytes.inc_by(bytes);
        }
    }

    /// Write-through: copy the blocks cached since the last call.
    pub(super) fn write_through(&mut self) {
        if self
            .tiers
            .as_ref()
            .is_some_and(|t| t.policy == WritePolicy::WriteThrough)
        {
            let nodes = self.pool.take_stored();
            self.copy_down(&nodes);
        }
    }

    /// A request matched `nodes`: under the selective policy, copy those now used twice.
    pub(super) fn note_hits(&mut self, nodes: &[NodeId]) {
        if self
            .tiers
            .as_ref()
            .is_some_and(|t| t.policy == WritePolicy::WriteThroughSelective)
        {
            let hot = self.pool.hit(nodes, 2);
            self.copy_down(&hot);
        }
    }

    /// A block for the scheduler's own use (evicted blocks backed up first).
    fn alloc_backed_up(&mut self) -> Option<u32> {
        let b = self.pool.alloc();
        self.backup_evicted();
        b
    }

    /// Before this iteration's forward pass, on an executor that stages load-back: start
    /// loading back the host-tier blocks of the next waiting requests, so the copies overlap
    /// the pass and the requests find their blocks cached when admitted.
    pub(super) fn stage_load_backs(&mut self) {
        if !self.exec.stages_load_back() || self.tiers.as_ref().is_none_or(|t| t.host.is_empty()) {
            return;
        }
        let now = std::time::Instant::now();
        let mut staged = 0;
        let mut i = 0;
        while staged < STAGED_REQUESTS && i < self.waiting.len() {
            if self.waiting[i].held_by_prefetch(now) {
                i += 1;
                continue;
            }
            let mut s = self.waiting.remove(i).expect("index in range");
            self.load_back(&mut s, true);
            s.load_back_staged = true;
            self.waiting.insert(i, s);
            staged += 1;
            i += 1;
        }
    }

    /// The block after `s`'s cached prefix sits in the host tier: a staging executor loads it
    /// back ahead of admission (once; after that, at admission).
    pub(super) fn defer_for_staging(&self, s: &Seq) -> bool {
        if !self.exec.stages_load_back() || self.running.is_empty() || s.load_back_staged {
            return false;
        }
        let Some(tiers) = self.tiers.as_ref().filter(|t| !t.host.is_empty()) else {
            return false;
        };
        if s.wants_prompt_logprobs() {
            return false;
        }
        let page = self.pool.page();
        let full = (s.tokens.len() - 1) / page;
        let held = self.pool.match_prefix(&s.tokens, full);
        if held.len() == full {
            return false;
        }
        let k = held.len();
        let prev = held.last().map(|&n| self.pool.seq_hash_of(n));
        let seq = block_sequence_hash(prev, &s.tokens[k * page..(k + 1) * page]);
        tiers.host.contains(seq)
    }

    /// Load back the host-tier blocks that continue `s`'s cached prefix, as unreferenced
    /// cached blocks of the tree (the next match finds them); `staged`: with the executor's
    /// staged import (in place before the next pass). Stops at the first block the host tier
    /// does not hold, or when no block can be had. Before its first admission the tokens
    /// loaded are credited to `s` by where they came from (`cached_tokens_total`).
    pub(super) fn load_back(&mut self, s: &mut Seq, staged: bool) {
        if self.tiers.as_ref().is_none_or(|t| t.host.is_empty()) || s.wants_prompt_logprobs() {
            return;
        }
        let page = self.pool.page();
        let len = s.tokens.len();
        let full = (len - 1) / page;
        let mut held = self.pool.match_prefix(&s.tokens, full);
        if held.len() == full {
            return;
        }
        let t0 = Instant::now();
        // Hold the chain while blocks are taken: allocation may evict.
        self.pool.acquire(&held);
        let mut hash = held.last().map(|&n| self.pool.seq_hash_of(n));
        let (mut loaded, mut from_storage, mut bytes) = (0usize, 0usize, 0u64);
        for k in held.len()..full {
            let tokens = &s.tokens[k * page..(k + 1) * page];
            let seq = block_sequence_hash(hash, tokens);
            let tiers = self.tiers.as_mut().expect("checked above");
            let Some(hit) = tiers.host.get(seq, tokens) else {
                break;
            };
            let Some(b) = self.alloc_backed_up() else {
                break;
            };
            let imported = if staged {
                self.exec.import_blocks_staged(&[b], &hit.bytes)
            } else {
                self.exec.import_blocks(&[b], &hit.bytes)
            };
            if imported.is_err() {
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
            bytes += hit.bytes.len() as u64;
            from_storage += usize::from(hit.from_storage);
        }
        self.pool.release(&held);
        if s.cached.is_none() {
            s.tier_tokens.0 += (loaded - from_storage) * page;
            s.tier_tokens.1 += from_storage * page;
        }
        self.local.host_loads += loaded as u64;
        if staged {
            self.local.host_loads_staged += loaded as u64;
        }
        if let (Some(m), true) = (self.hicache_metrics(), loaded > 0) {
            m.load_back_tokens.inc_by((loaded * page) as u64);
            m.load_back_bytes.inc_by(bytes);
            m.load_back_duration.observe(t0.elapsed().as_secs_f64());
        }
    }
}
