//! The scheduler thread: owns the model, the KV cache and the batch. Each iteration it drops
//! cancelled requests, gives every running sequence its next tokens (one for decode, a chunk
//! under the token budget for prefill), admits waiting requests FCFS after matching their
//! prefix in the radix tree (bounded by KV capacity), retracts the youngest sequence when a
//! decode step finds no free block, runs one batched forward, samples, streams tokens, and
//! publishes full blocks to the tree as they are computed. Disaggregated requests add two
//! queues before the batch (decode: blocks reserved, then KV imported) and an export after
//! each prefill chunk (`disagg`).

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use dynamo_protocols::{KvCacheEvent, TokenLogprob};
use tokio::sync::mpsc as tmpsc;

use crate::engine::EngineStats;
use crate::executor::Executor;
use crate::kv::BlockPool;
use crate::metrics::{EngineMetrics, Stage, Window};
use crate::model::{Logits, SeqInput};
use crate::trace::{Slice, TraceSink};

mod choices;
mod disagg;
mod emit;
mod hicache;
mod observe;
mod pins;
mod prefetch;
mod prefix;
mod seq;
use crate::disagg::FramePool;
use emit::{cache_full_blocks, emit};
use observe::{observe_decode, observe_prefill};

pub(crate) use disagg::{DecodeSide, PrefillSide, Role};
pub(crate) use hicache::build_tiers;
pub(crate) use prefetch::{Prefetch, Wake};
pub(crate) use seq::Seq;

pub(crate) enum Cmd {
    Add(Box<Seq>),
    /// Disaggregated decode: an export of prompt blocks `first..` for request `id`.
    Import {
        id: u64,
        first: u32,
        data: Vec<u8>,
    },
    /// Every block of request `id` is in: decode from `first_token` (with the prefill side's
    /// log probabilities of it, when asked).
    ImportDone {
        id: u64,
        first_token: u32,
        logprob: Option<TokenLogprob>,
    },
    /// The import of request `id` is abandoned (failed, or `cancelled` by its caller): free
    /// its blocks.
    ImportAbort {
        id: u64,
        cancelled: bool,
    },
    /// A storage prefetch's blocks, or blocks the storage directory gained or lost.
    Storage(crate::kv::storage::StoreNews),
    /// Pin blocks for `ttl` (`None`: unpin them); the count goes to `reply`.
    Pin {
        hashes: Vec<u64>,
        ttl: Option<std::time::Duration>,
        reply: tokio::sync::oneshot::Sender<usize>,
    },
}

pub(crate) struct SchedConfig {
    pub max_running: usize,
    pub chunk: usize,
    pub context_length: usize,
    /// Test-only: panic in the forward step after this many steps.
    pub panic_after_steps: Option<u64>,
}

/// What a scheduler thread is built from.
pub(crate) struct SchedulerParts {
    /// Runs the forward pass over the KV storage it owns.
    pub exec: Box<dyn Executor>,
    /// Which blocks of that storage hold what (radix tree, free list).
    pub pool: BlockPool,
    pub cfg: SchedConfig,
    pub rx: mpsc::Receiver<Cmd>,
    /// Where KV events go (`None`: not produced).
    pub events: Option<tmpsc::UnboundedSender<KvCacheEvent>>,
    /// Shared with [`crate::Engine::stats`], refreshed once per iteration.
    pub stats: Arc<Mutex<EngineStats>>,
    pub metrics: Option<Arc<EngineMetrics>>,
    pub trace: Option<TraceSink>,
    /// Buffers for KV exports and imports, shared with the engine's transfer callers.
    pub frames: FramePool,
    /// The tiers below the KV pool (`--enable-hierarchical-cache`).
    pub tiers: Option<crate::kv::Tiers>,
}

pub(crate) struct Scheduler {
    exec: Box<dyn Executor>,
    pool: BlockPool,
    cfg: SchedConfig,
    rx: mpsc::Receiver<Cmd>,
    events: Option<tmpsc::UnboundedSender<KvCacheEvent>>,
    event_id: u64,
    stats: Arc<Mutex<EngineStats>>,
    local: EngineStats,
    metrics: Option<Arc<EngineMetrics>>,
    window: Window,
    trace: Option<TraceSink>,
    frames: FramePool,
    tiers: Option<crate::kv::Tiers>,
    pins: pins::Pins,
    waiting: VecDeque<Box<Seq>>,
    running: Vec<Seq>,
    /// Disaggregated decode: waiting for blocks to be reserved, waiting for their KV, and
    /// ready to join the running batch.
    prealloc: VecDeque<Box<Seq>>,
    transfer: Vec<Seq>,
    ready: VecDeque<Seq>,
}

impl Scheduler {
    pub(crate) fn new(parts: SchedulerParts) -> Self {
        let SchedulerParts {
            exec,
            pool,
            cfg,
            rx,
            events,
            stats,
            metrics,
            trace,
            frames,
            tiers,
        } = parts;
        Scheduler {
            exec,
            pool,
            cfg,
            rx,
            events,
            event_id: 0,
            stats,
            local: EngineStats::default(),
            metrics,
            window: Window::new(Instant::now()),
            trace,
            frames,
            tiers,
            pins: pins::Pins::default(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            prealloc: VecDeque::new(),
            transfer: Vec::new(),
            ready: VecDeque::new(),
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Add(mut s) => {
                let now = Instant::now();
                if let Some(m) = &self.metrics {
                    m.stage(Stage::RequestProcess, now.duration_since(s.arrival));
                }
                if let Some(t) = s.trace.as_mut() {
                    t.received = Some(now);
                    t.slices.push((Slice::RequestProcess, now, Instant::now()));
                }
                if matches!(s.role, Role::Decode(_)) {
                    self.prealloc.push_back(s)
                } else {
                    self.start_prefetch(&mut s);
                    self.waiting.push_back(s)
                }
            }
            Cmd::Import { id, first, data } => {
                self.import(id, first, &data);
                self.frames.put(data);
            }
            Cmd::ImportDone {
                id,
                first_token,
                logprob,
            } => self.import_done(id, first_token, logprob),
            Cmd::ImportAbort { id, cancelled } => self.import_abort(id, cancelled),
            Cmd::Storage(n) => self.storage_news(n),
            Cmd::Pin { hashes, ttl, reply } => {
                let n = match ttl {
                    Some(t) => self.pin(&hashes, t),
                    None => self.unpin(&hashes, pins::Unpin::Request),
                };
                let _ = reply.send(n);
            }
        }
    }

    /// Nothing to compute now or later without a new command.
    fn idle(&self) -> bool {
        self.running.is_empty()
            && self.waiting.is_empty()
            && self.prealloc.is_empty()
            && self.ready.is_empty()
    }

    pub(crate) fn run(mut self) {
        loop {
            if self.idle() {
                self.publish(true);
                // Idle with pins: wake when the next one expires.
                let next = match self.pins.next_expiry() {
                    None => self.rx.recv().map_err(|_| true),
                    Some(t) => {
                        let wait = t.saturating_duration_since(Instant::now());
                        self.rx
                            .recv_timeout(wait)
                            .map_err(|e| matches!(e, mpsc::RecvTimeoutError::Disconnected))
                    }
                };
                match next {
                    Ok(cmd) => self.handle(cmd),
                    Err(true) => return,
                    Err(false) => {}
                }
            }
            self.expire_pins(Instant::now());
            while let Ok(cmd) = self.rx.try_recv() {
                self.handle(cmd);
            }
            self.drop_cancelled();
            self.reserve_decodes();
            let plan = self.schedule();
            // Blocks allocated now are written by the forward pass: what they held first.
            self.backup_evicted();
            if plan.is_empty() {
                self.publish(false);
                if let Ok(cmd) = self.rx.recv_timeout(std::time::Duration::from_millis(5)) {
                    self.handle(cmd);
                }
                continue;
            }
            self.stage_load_backs();
            self.step(&plan);
            self.write_through();
            self.pin_requested();
            self.local.iterations += 1;
            self.publish(false);
        }
    }

    fn drop_cancelled(&mut self) {
        self.drop_cancelled_decodes();
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].abandoned() {
                let mut s = self.running.remove(i);
                self.release(&mut s);
                // A request counts once, by its first choice.
                if s.choice == 0 {
                    self.local.cancelled += 1;
                    if let Some(m) = &self.metrics {
                        m.aborted.inc();
                    }
                }
                self.end_trace(&mut s, Instant::now());
            } else {
                i += 1;
            }
        }
        let (mut left, keep): (Vec<_>, Vec<_>) =
            self.waiting.drain(..).partition(|s| s.abandoned());
        self.waiting.extend(keep);
        for s in &mut left {
            self.finish_prefetch(s, true);
            self.end_trace(s, Instant::now());
        }
        let gone = left.iter().filter(|s| s.choice == 0).count() as u64;
        self.local.cancelled += gone;
        if let Some(m) = &self.metrics {
            m.aborted.inc_by(gone);
        }
    }

    /// Retract the youngest running sequence: its blocks go back (full ones stay cached),
    /// it waits at the head of the queue and recomputes its KV when readmitted.
    fn retract_youngest(&mut self) {
        if let Some(mut s) = self.running.pop() {
            self.release(&mut s);
            s.retractions += 1;
            if let Some(m) = &self.metrics {
                m.retracted_requests.inc();
                m.retracted_input.inc_by(s.prompt_len as u64);
                m.retracted_output.inc_by(s.generated() as u64);
                self.window.retracted();
            }
            self.waiting.push_front(Box::new(s));
            self.local.retractions += 1;
        }
    }

    /// Make `s` own pages for positions `< upto`; false when the pool is exhausted.
    fn ensure_pages(pool: &mut BlockPool, s: &mut Seq, upto: usize) -> bool {
        let page = pool.page();
        while s.pages.len() * page < upto {
            match pool.alloc() {
                Some(b) => s.pages.push(b),
                None => return false,
            }
        }
        true
    }

    /// Decide this iteration's work: `(index in running, tokens)`.
    fn schedule(&mut self) -> Vec<(usize, usize)> {
        let page = self.pool.page();
        loop {
            let mut plan = Vec::new();
            let mut budget = self.cfg.chunk;
            let mut i = 0;
            while i < self.running.len() {
                let s = &mut self.running[i];
                let remaining = s.tokens.len() - s.computed;
                if remaining == 1 {
                    let upto = s.computed + 1;
                    if Self::ensure_pages(&mut self.pool, s, upto) {
                        plan.push((i, 1));
                        i += 1;
                    } else {
                        // Only the tail is removed, so `plan` (indices < i) stays valid.
                        self.retract_youngest();
                    }
                    continue;
                }
                // Prefill chunk: within the budget and the pages obtainable.
                let fit = (s.pages.len() + self.pool.available()) * page - s.computed;
                let n = remaining.min(budget).min(fit);
                let upto = s.computed + n;
                if n > 0 && Self::ensure_pages(&mut self.pool, s, upto) {
                    plan.push((i, n));
                    budget -= n;
                }
                i += 1;
            }
            self.admit(&mut plan, &mut budget);
            if !plan.is_empty() || self.running.is_empty() {
                return plan;
            }
            // Nothing can run: every running sequence waits for blocks held by others.
            self.retract_youngest();
        }
    }

    fn admit(&mut self, plan: &mut Vec<(usize, usize)>, budget: &mut usize) {
        // Decode requests whose KV arrived hold their blocks already; they come first.
        while self.running.len() < self.cfg.max_running {
            let Some(mut s) = self.ready.pop_front() else {
                break;
            };
            let upto = s.computed + 1;
            if !Self::ensure_pages(&mut self.pool, &mut s, upto) {
                self.ready.push_front(s);
                break;
            }
            self.join_running(s);
            plan.push((self.running.len() - 1, 1));
        }
        let page = self.pool.page();
        while self.running.len() < self.cfg.max_running && *budget > 0 {
            // FCFS among the requests no storage prefetch holds back.
            let Some(at) = self.next_admissible() else {
                break;
            };
            let mut front = self.waiting.remove(at).expect("index in range");
            if self.defer_for_staging(&front) {
                // Its blocks are loaded back beside this pass; admitted with them next time.
                self.waiting.insert(at, front);
                break;
            }
            self.load_back(&mut front, false);
            self.waiting.insert(at, front);
            let s = &self.waiting[at];
            let len = s.tokens.len();
            // A prompt whose own log probabilities are wanted is computed in full.
            let nodes = if s.wants_prompt_logprobs() {
                Vec::new()
            } else {
                self.pool.match_prefix(&s.tokens, (len - 1) / page)
            };
            let need = len.div_ceil(page) - nodes.len();
            let avail = self.pool.available() - self.pool.unreferenced_among(&nodes);
            let headroom = self.running.len();
            if avail < need + headroom && !(self.running.is_empty() && avail >= need) {
                // Pins must not stall a request that nothing else could make room for.
                if self.running.is_empty() && self.release_pins_under_pressure() {
                    continue;
                }
                break;
            }
            let mut s = self.waiting.remove(at).expect("index in range");
            self.finish_prefetch(&mut s, false);
            self.pool.acquire(&nodes);
            self.note_hits(&nodes);
            s.pages = nodes.iter().map(|&n| self.pool.block_of(n)).collect();
            s.computed = nodes.len() * page;
            s.nodes = nodes;
            if s.wants_prompt_logprobs() {
                s.prompt_lp.clear();
            } else {
                self.reuse_partial_block(&mut s);
            }
            let first = s.admitted.is_none();
            if first {
                let now = Instant::now();
                s.admitted = Some(now);
                s.chunked = len - s.computed > self.cfg.chunk;
                if let Some(t) = s.trace.as_mut() {
                    t.admitted = Some(now);
                }
            }
            if let Some(m) = &self.metrics {
                m.realtime_prefill_cache.inc_by(s.computed as u64);
                if let Some(a) = s.admitted.filter(|_| first) {
                    m.queue_time
                        .observe(a.duration_since(s.arrival).as_secs_f64());
                    self.window.admitted(s.prompt_len, s.computed);
                }
            }
            if s.cached.is_none() {
                // Loaded-back tokens are credited to their tier, the rest to the pool.
                let (host, storage) = s.tier_tokens;
                let storage = storage.min(s.computed);
                s.tier_tokens = (host.min(s.computed - storage), storage);
                s.cached = Some(s.computed);
            }
            s.ticket = None;
            let n = (len - s.computed).min(*budget);
            let upto = s.computed + n;
            let ok = Self::ensure_pages(&mut self.pool, &mut s, upto);
            debug_assert!(ok, "admission checked capacity");
            self.running.push(*s);
            plan.push((self.running.len() - 1, n));
            *budget -= n;
        }
    }

    fn step(&mut self, plan: &[(usize, usize)]) {
        let inputs: Vec<SeqInput<'_>> = plan
            .iter()
            .map(|&(i, n)| {
                let s = &self.running[i];
                SeqInput {
                    tokens: &s.tokens[s.computed..s.computed + n],
                    start: s.computed,
                    pages: &s.pages,
                    logits: s.logits_wanted(n),
                }
            })
            .collect();
        let t0 = Instant::now();
        if self
            .cfg
            .panic_after_steps
            .is_some_and(|n| self.local.iterations >= n)
        {
            panic!("injected fault: the forward step panics (--fault-panic-after-steps)");
        }
        let logits = self.exec.forward(&inputs);
        let t1 = Instant::now();
        drop(inputs);
        let vocab = self.exec.model().vocab;
        // Rows of prompt tokens go to their sequences' prompt log probabilities.
        let logits = self.take_prompt_rows(plan, logits, vocab);
        let page = self.pool.page();

        // Advance, publish full blocks, collect who samples.
        let mut samplers: Vec<usize> = Vec::new();
        let (mut prefill, mut decode, mut decode_lens) = (0u64, 0u64, 0usize);
        let (bid, batch) = (self.local.iterations as u32, plan.len() as u32);
        for &(i, n) in plan {
            let s = &mut self.running[i];
            let completes = s.computed + n == s.tokens.len();
            // Prompt work, including a prompt's last token when chunking leaves it alone.
            if s.tokens.len() - s.computed > 1 || s.generated() == 0 {
                prefill += n as u64;
                observe_prefill(self.metrics.as_deref(), s, completes, t0, t1);
            } else {
                decode += 1;
                decode_lens += s.tokens.len();
                observe_decode(s, bid, batch, t0, t1);
            }
            s.computed += n;
            if s.computed == s.tokens.len() {
                samplers.push(i);
            }
            cache_full_blocks(&mut self.pool, s);
            disagg::export_ready(&*self.exec, &self.frames, s, page);
        }
        self.local.prefill_tokens += prefill;
        self.local.decode_tokens += decode;
        self.observe_forward(prefill, decode, decode_lens, t1 - t0);
        // The raw rows sibling choices will sample their first tokens from.
        let fork_rows = self.fork_rows(&samplers, &logits, vocab);
        // Sample in parallel (each sequence's generator is its own). `samplers` is ascending
        // and in the order of the logits rows.
        let mut logits = logits;
        let mut work: Vec<(&mut Seq, &mut [f32])> = self
            .running
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| samplers.binary_search(i).is_ok())
            .map(|(_, s)| s)
            .zip(logits.chunks_mut(vocab))
            .collect();
        self.exec.threads().chunks_mut(&mut work, 1, |_, item| {
            let (s, row) = &mut item[0];
            let banned = if s.generated() < s.min_new {
                s.stop_ids.clone()
            } else {
                Vec::new()
            };
            // Log probabilities from the raw logits, before the sampler changes them.
            let raw = s.logprobs.map(|k| crate::sampling::Logprobs::of(row, k));
            let tok = s.sampler.sample(row, &banned);
            s.last_logprob = raw.map(|r| r.token(tok));
            s.sampler.observe(tok);
            s.tokens.push(tok);
        });
        drop(work);
        // Emit and finish (the choices forked now emit their first tokens there too).
        let mut done = Vec::new();
        let now = Instant::now();
        self.fork_choices(fork_rows, &mut samplers, now);
        for &i in &samplers {
            let s = &mut self.running[i];
            if emit(
                s,
                self.cfg.context_length,
                self.metrics.as_deref(),
                &mut self.local,
                now,
            ) {
                done.push(i);
            }
        }
        done.sort_unstable();
        for &i in done.iter().rev() {
            let mut s = self.running.remove(i);
            self.release(&mut s);
            self.end_trace(&mut s, now);
        }
    }

    /// Events, statistics and metric gauges, once per iteration (and when going idle).
    fn publish(&mut self, idle: bool) {
        let mut evs = self.pool.drain_events();
        if let Some(t) = self.tiers.as_mut() {
            evs.extend(t.events.drain());
        }
        if let Some(tx) = &self.events {
            for data in evs {
                let ev = KvCacheEvent {
                    event_id: self.event_id,
                    data,
                    dp_rank: 0,
                };
                self.event_id += 1;
                let _ = tx.send(ev);
            }
        }
        self.local.running = self.running.len();
        self.local.waiting = self.waiting.len();
        self.local.pool = self.pool.stats();
        self.local.host_blocks = self.tiers.as_ref().map_or(0, |t| t.host.len());
        // The statistics (read by the dynamo_component_* KV gauges at scrape time) before the
        // sglang: gauges: a scrape that sees the engine idle in one sees it idle in both.
        if let Ok(mut s) = self.stats.lock() {
            *s = self.local.clone();
        }
        if let Some(m) = self.metrics.clone() {
            self.gauges(&m, idle);
            self.disagg_gauges();
            self.window.tick(&m, Instant::now(), idle);
        }
    }
}
