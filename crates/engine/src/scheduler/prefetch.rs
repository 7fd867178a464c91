//! The scheduler's side of the storage tier: when a request arrives whose prompt continues
//! its cached prefix (pool, then host tier) with at least `--hicache-prefetch-threshold`
//! tokens of blocks the storage directory holds, those blocks are read on the storage
//! tier's prefetch thread into the host tier, and the request waits for them as the stop
//! policy says (other requests are admitted meanwhile). Each delivery arrives as a command on
//! the scheduler's channel, so a finished prefetch releases its request in the iteration it
//! arrives in, not when the queue is next scanned. The outcome is counted when the request is
//! admitted or goes away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use super::{Cmd, Scheduler, Seq};
use crate::kv::storage::{BlockRef, PrefetchEnd, Prefetched, StoreNews};
use dynamo_protocols::hashing::block_sequence_hash;
use dynamo_protocols::kv_events::Medium;

/// A request's prefetch in flight.
pub(crate) struct Prefetch {
    id: u64,
    cancel: Arc<AtomicBool>,
    /// The request waits until then (`None`: until the prefetch ends).
    until: Option<Instant>,
    end: Option<PrefetchEnd>,
}

/// How the storage tier's reading thread reaches the scheduler: the scheduler's channel,
/// held weakly in effect (the engine clears it when it drops, so the scheduler still sees
/// its channel close).
#[derive(Clone, Default)]
pub(crate) struct Wake(Arc<Mutex<Option<mpsc::Sender<Cmd>>>>);

impl Wake {
    pub(crate) fn new(tx: mpsc::Sender<Cmd>) -> Self {
        Wake(Arc::new(Mutex::new(Some(tx))))
    }

    pub(crate) fn send(&self, n: StoreNews) {
        if let Some(tx) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(Cmd::Storage(n));
        }
    }

    pub(crate) fn close(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Seq {
    /// Its storage prefetch holds it back from admission at `now`.
    pub(super) fn held_by_prefetch(&self, now: Instant) -> bool {
        self.prefetch
            .as_ref()
            .is_some_and(|f| f.end.is_none() && f.until.is_none_or(|u| now < u))
    }
}

impl Scheduler {
    /// A new request: start prefetching its storage continuation when long enough.
    pub(super) fn start_prefetch(&mut self, s: &mut Seq) {
        let Some(tiers) = self.tiers.as_mut() else {
            return;
        };
        let Some(store) = tiers.store.as_ref() else {
            return;
        };
        if s.wants_prompt_logprobs() {
            return;
        }
        let page = self.pool.page();
        let full = (s.tokens.len() - 1) / page;
        let device = self.pool.match_prefix(&s.tokens, full).len();
        let mut hash = None;
        let mut fetch = Vec::new();
        for k in 0..full {
            let tokens = &s.tokens[k * page..(k + 1) * page];
            let parent = hash;
            let seq = block_sequence_hash(parent, tokens);
            hash = Some(seq);
            if k < device || tiers.host.contains(seq) {
                continue;
            }
            if !store.contains(seq) {
                break;
            }
            fetch.push(BlockRef {
                hash: seq,
                parent,
                tokens: tokens.into(),
            });
        }
        if fetch.is_empty() || fetch.len() * page < store.cfg.prefetch_threshold {
            return;
        }
        let tokens = fetch.len() * page;
        let id = tiers.next_prefetch;
        tiers.next_prefetch += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let until = store.cfg.stop.wait_for(tokens).map(|d| Instant::now() + d);
        store.prefetch(id, fetch, cancel.clone());
        s.prefetch = Some(Prefetch {
            id,
            cancel,
            until,
            end: None,
        });
    }

    /// News from the storage tier's threads.
    pub(super) fn storage_news(&mut self, n: StoreNews) {
        match n {
            StoreNews::Prefetched(p) => self.prefetched(p),
            StoreNews::Changed { stored, removed } => {
                if let Some(t) = self.tiers.as_mut() {
                    t.events.stored_in(Medium::Disk, &stored);
                    t.events.removed_in(Medium::Disk, &removed);
                }
            }
        }
    }

    /// Blocks a prefetch read: into the host tier; its end marks the waiting request.
    fn prefetched(&mut self, p: Prefetched) {
        let Some(tiers) = self.tiers.as_mut() else {
            return;
        };
        let m = self.metrics.as_deref().and_then(|m| m.hicache.as_ref());
        let page = self.pool.page();
        for (b, bytes) in p.blocks {
            if !tiers.host.contains(b.hash) {
                let pinned = self.pins.contains(b.hash);
                super::hicache::keep(tiers, m, page, b, bytes.into(), true, pinned);
            }
        }
        if let Some(end) = p.end {
            let mine = self
                .waiting
                .iter_mut()
                .filter_map(|s| s.prefetch.as_mut())
                .find(|f| f.id == p.id);
            if let Some(f) = mine {
                f.end = Some(end);
            }
        }
    }

    /// The index of the first waiting request its prefetch does not hold back.
    pub(super) fn next_admissible(&self) -> Option<usize> {
        let now = Instant::now();
        self.waiting.iter().position(|s| !s.held_by_prefetch(now))
    }

    /// `s` leaves the waiting queue (admitted, or `gone`): its prefetch stops and its
    /// outcome is counted.
    pub(super) fn finish_prefetch(&self, s: &mut Seq, gone: bool) {
        let Some(f) = s.prefetch.take() else {
            return;
        };
        f.cancel.store(true, Ordering::Relaxed);
        let outcome = match (gone, f.end) {
            (true, _) => "cancelled",
            (false, Some(PrefetchEnd::Complete)) => "complete",
            (false, Some(PrefetchEnd::Failed)) => "failed",
            (false, Some(PrefetchEnd::Cancelled)) => "cancelled",
            (false, None) => match self.tiers.as_ref().and_then(|t| t.store.as_ref()) {
                Some(st) if st.cfg.stop == crate::kv::storage::PrefetchStop::BestEffort => {
                    "partial"
                }
                _ => "timeout",
            },
        };
        let storage = self
            .metrics
            .as_deref()
            .and_then(|m| m.hicache.as_ref())
            .and_then(|h| h.storage.as_ref());
        if let Some(m) = storage {
            m.outcomes.with_label_values(&[outcome]).inc();
        }
    }
}
