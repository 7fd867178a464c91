//! The thread that owns the radix index: every change reaches it through one channel (KV
//! events, re-sync answers, workers joining and leaving, approximate-mode insertions); it is
//! the index's only writer and publishes each batch for the request path to read
//! ([`DualIndex`]), so lookups take no lock and wait for no other thread. It keeps each
//! worker's events in order ([`WorkerSync`]), asks for re-syncs through a callback, expires
//! approximate-mode blocks after their TTL, and counts applied events.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use dynamo_protocols::kv_events::{stored_blocks, DumpBlock, KvCacheStoreData, Medium};
use dynamo_protocols::{KvCacheEvent, KvCacheEventData, RouterEvent};
use tokio::sync::oneshot;

use super::budget::EventBudget;
use super::dual::DualIndex;
use super::indexer::{FastMap, RadixIndex, WorkerKey};
use super::metrics::RouterMetrics;
use super::sync::{Step, WorkerSync};

/// A worker's answer to a re-sync query, collected from all its messages.
#[derive(Debug, Default)]
pub struct SyncAnswer {
    pub last_event_id: Option<u64>,
    pub full: bool,
    pub blocks: Vec<DumpBlock>,
    pub events: Vec<KvCacheEvent>,
}

/// Messages to the index task.
pub enum IndexMsg {
    Event(RouterEvent),
    Answer {
        worker: u64,
        answer: Result<SyncAnswer, String>,
    },
    WorkerAdded(u64),
    WorkerRemoved(u64),
    /// Approximate mode: the router sent a request with these blocks to `worker`.
    Routed {
        worker: WorkerKey,
        local: Vec<u64>,
        seq: Vec<u64>,
    },
    /// Test and benchmark aid: answer with the number of blocks in the tree.
    Size(oneshot::Sender<usize>),
}

/// Asks `worker` for its state from an event id (`None`: everything); the answer comes back
/// as [`IndexMsg::Answer`].
pub type Resync = Box<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// The index task's state.
pub struct IndexTask {
    index: DualIndex,
    sync: HashMap<u64, WorkerSync>,
    resync: Option<Resync>,
    metrics: Option<RouterMetrics>,
    /// Approximate mode: expiry per (worker, sequence hash), and insertions in time order.
    ttl: Option<Duration>,
    expiry: FastMap<(WorkerKey, u64), Instant>,
    expiring: VecDeque<(Instant, WorkerKey, Vec<u64>)>,
    /// Units the event forwarder took for each event, given back once it is handled.
    budget: Option<EventBudget>,
}

fn kind(d: &KvCacheEventData) -> &'static str {
    match d {
        KvCacheEventData::Stored(_) => "stored",
        KvCacheEventData::Removed(_) => "removed",
        KvCacheEventData::Cleared => "cleared",
    }
}

impl IndexTask {
    /// `resync`: how to ask a worker for its state (`None`: events only, no re-sync).
    /// `ttl`: approximate mode's block lifetime (`None`: KV events mode).
    pub fn new(
        resync: Option<Resync>,
        metrics: Option<RouterMetrics>,
        ttl: Option<Duration>,
    ) -> Self {
        IndexTask {
            index: DualIndex::new(),
            sync: HashMap::new(),
            resync,
            metrics,
            ttl,
            expiry: FastMap::default(),
            expiring: VecDeque::new(),
            budget: None,
        }
    }

    /// Give each handled event's units back to `budget` (the forwarder took them).
    pub fn with_event_budget(mut self, budget: EventBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Run on the calling thread until every sender is gone (the router gives the index a
    /// thread of its own, so a lookup is answered without waiting for a turn on the async
    /// runtime's queues).
    pub fn run_blocking(mut self, rx: std::sync::mpsc::Receiver<IndexMsg>) {
        let tick = Duration::from_millis(500);
        let mut last = Instant::now();
        loop {
            match rx.recv_timeout(tick) {
                Ok(m) => {
                    self.handle(m);
                    // Whatever else is queued joins the same batch, then readers see it.
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if last.elapsed() >= tick {
                last = Instant::now();
                self.expire(last);
            }
            self.index.publish();
        }
    }

    fn apply(&mut self, worker: u64, ev: &KvCacheEvent) {
        let w = (worker, ev.dp_rank);
        let ok = match self.index.apply(w, &ev.data) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(worker = %format!("{worker:x}"), event_id = ev.event_id, error = %e, "KV event rejected");
                false
            }
        };
        if let Some(m) = &self.metrics {
            m.event(kind(&ev.data), ok);
        }
    }

    fn start_resync(&self, worker: u64, from: Option<u64>) {
        if let Some(r) = &self.resync {
            r(worker, from);
        }
    }

    /// Handle one message (also used directly by tests and benchmarks).
    pub fn handle(&mut self, m: IndexMsg) {
        match m {
            IndexMsg::Event(ev) => {
                let cost = self.budget.as_ref().map(|b| b.cost(&ev));
                self.event(ev);
                if let (Some(b), Some(c)) = (&self.budget, cost) {
                    b.give(c);
                }
            }
            IndexMsg::Answer { worker, answer } => self.answer(worker, answer),
            IndexMsg::WorkerAdded(w) => {
                if self.resync.is_some() && self.sync.entry(w).or_default().on_discovered() {
                    self.start_resync(w, None);
                }
            }
            IndexMsg::WorkerRemoved(w) => {
                self.sync.remove(&w);
                for k in self.ranks_of(w) {
                    self.index.remove_worker(k);
                }
            }
            IndexMsg::Routed { worker, local, seq } => self.routed(worker, &local, &seq),
            IndexMsg::Size(reply) => {
                let _ = reply.send(self.index.latest().node_count());
            }
        }
    }

    fn event(&mut self, RouterEvent { worker_id, event }: RouterEvent) {
        let (event_id, what) = (event.event_id, kind(&event.data));
        let step = self.sync.entry(worker_id).or_default().on_event(event);
        match step {
            Step::Apply(ev) => self.apply(worker_id, &ev),
            Step::Duplicate | Step::Held => {}
            Step::Implausible => {
                tracing::warn!(worker = %format!("{worker_id:x}"), event_id, "KV event id implausibly far ahead; dropped");
                if let Some(m) = &self.metrics {
                    m.event(what, false);
                }
            }
            Step::Overflow => {
                tracing::debug!(worker = %format!("{worker_id:x}"), event_id, "KV events held for a re-sync past the bound; dropped");
                if let Some(m) = &self.metrics {
                    m.event(what, false);
                }
            }
            Step::Resync { from } if self.resync.is_some() => {
                tracing::info!(worker = %format!("{worker_id:x}"), ?from, "KV event gap; re-syncing worker");
                self.start_resync(worker_id, from);
            }
            Step::Resync { .. } => {
                // No way to ask: carry on from the event after the gap.
                let s = self.sync.get_mut(&worker_id).expect("just used");
                for ev in s.skip_gap() {
                    self.apply(worker_id, &ev);
                }
            }
        }
    }

    fn answer(&mut self, worker: u64, answer: Result<SyncAnswer, String>) {
        let Some(s) = self.sync.get_mut(&worker) else {
            return; // left meanwhile
        };
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(worker = %format!("{worker:x}"), error = %e, "KV re-sync failed; dropping the worker's blocks until its next event");
                s.on_failed();
                for k in self.ranks_of(worker) {
                    self.index.clear(k);
                }
                return;
            }
        };
        if a.full {
            for k in self.ranks_of(worker) {
                self.index.clear(k);
            }
            for b in &a.blocks {
                let blk = stored_blocks(&[b.tokens_hash], &[b.block_hash]);
                let r = match b.medium {
                    None | Some(Medium::Device) => {
                        self.index.store((worker, 0), b.parent_hash, &blk)
                    }
                    // A lower tier's block: no parent, a member of that tier's set.
                    Some(m) => self.index.apply(
                        (worker, 0),
                        &KvCacheEventData::Stored(KvCacheStoreData {
                            parent_hash: None,
                            blocks: blk,
                            medium: Some(m),
                        }),
                    ),
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "dump block rejected");
                }
            }
        }
        for ev in &a.events {
            self.apply(worker, ev);
        }
        let s = self.sync.get_mut(&worker).expect("checked");
        let (held, again) = s.on_answer(a.last_event_id);
        let covered = s.take_covered();
        let rejected = s.take_rejected();
        for ev in &held {
            self.apply(worker, ev);
        }
        if let Some(m) = &self.metrics {
            for ev in &covered {
                m.event(kind(&ev.data), true);
            }
            for ev in &rejected {
                m.event(kind(&ev.data), false);
            }
        }
        if !rejected.is_empty() {
            tracing::warn!(worker = %format!("{worker:x}"), dropped = rejected.len(), "KV event ids implausibly far ahead; dropped");
        }
        tracing::debug!(worker = %format!("{worker:x}"), full = a.full, blocks = a.blocks.len(), events = a.events.len(), held = held.len(), "KV re-sync applied");
        if let Some(from) = again {
            self.start_resync(worker, from);
        }
    }

    /// The index's keys (data-parallel ranks) of instance `worker`.
    fn ranks_of(&self, worker: u64) -> Vec<WorkerKey> {
        let mut keys = self.index.latest().workers();
        keys.retain(|k| k.0 == worker);
        keys
    }

    fn routed(&mut self, w: WorkerKey, local: &[u64], seq: &[u64]) {
        let Some(ttl) = self.ttl else { return };
        let _ = self.index.store(w, None, &stored_blocks(local, seq));
        let until = Instant::now() + ttl;
        for &h in seq {
            self.expiry.insert((w, h), until);
        }
        self.expiring.push_back((until, w, seq.to_vec()));
    }

    /// Approximate mode: drop blocks whose TTL ran out and were not routed to again.
    pub fn expire(&mut self, now: Instant) {
        while let Some((t, _, _)) = self.expiring.front() {
            if *t > now {
                break;
            }
            let (_, w, seq) = self.expiring.pop_front().expect("checked");
            let gone: Vec<u64> = seq
                .into_iter()
                .filter(|h| match self.expiry.get(&(w, *h)) {
                    Some(&until) if until <= now => {
                        self.expiry.remove(&(w, *h));
                        true
                    }
                    _ => false,
                })
                .collect();
            self.index.remove(w, &gone);
        }
    }

    /// The index as of the last change (tests and benchmarks).
    pub fn index(&self) -> arc_swap::Guard<std::sync::Arc<RadixIndex>> {
        self.index.latest()
    }

    /// What the request path reads lookups from (the published copy).
    pub fn reader(&self) -> std::sync::Arc<arc_swap::ArcSwap<RadixIndex>> {
        self.index.reader()
    }
}

#[cfg(test)]
mod tests;
