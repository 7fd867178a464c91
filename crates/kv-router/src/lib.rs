//! The KV-aware router (`--router-mode kv`): per worker component, a radix index of cached
//! blocks fed by the workers' KV events (or, in approximate mode, by its own routing
//! decisions with a TTL), the cost function over overlap and the router's account of active
//! blocks, and the tickets that keep that account right until each request ends. The worker
//! side (event, load and re-sync publishing) is in [`publisher`].

pub mod budget;
pub mod dual;
pub mod indexer;
mod intake;
pub mod metrics;
pub mod publisher;
pub mod scheduler;
pub mod sync;
pub mod task;

use dynamo_protocols::names::spans;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
use dynamo_protocols::kv_events::{
    kv_events_subject, kv_metrics_subject, kv_query_subject, KvQuery, KvQueryReply,
};
use dynamo_protocols::{LoadReport, RouterEvent};
use dynamo_runtime::{Events, InstanceMap, InstanceRecord};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::mpsc;
use tokio::sync::{oneshot, watch};

use budget::EventBudget;
pub use indexer::{FastMap, OverlapScores, RadixIndex, WorkerKey};
use intake::{collect_loads, forward_events, Members};
pub use metrics::RouterMetrics;
use scheduler::{ActiveLoad, Candidate, Costing};
use task::{IndexMsg, IndexTask, SyncAnswer};

/// How long a router start waits for nats-server to confirm its subscriptions.
const SUBSCRIPTION_FLUSH_BOUND: Duration = Duration::from_secs(2);
/// How long a worker's re-sync answer may take to arrive in full.
const RESYNC_DEADLINE: Duration = Duration::from_secs(5);

/// Settings from the frontend's flags.
#[derive(Debug, Clone)]
pub struct KvRouterConfig {
    /// `--kv-overlap-score-weight`.
    pub overlap_weight: f64,
    /// `--router-temperature`.
    pub temperature: f64,
    /// `--kv-events` (false: approximate mode).
    pub kv_events: bool,
    /// `--kv-cache-block-size` (default: the worker's card).
    pub block_size: Option<usize>,
    /// Approximate mode's block lifetime (`--router-ttl-secs`).
    pub ttl: Duration,
    /// A worker's load report counts for this long.
    pub load_fresh: Duration,
    /// `--router-host-cache-hit-weight`: a block in a worker's host tier against one in its
    /// KV pool.
    pub host_hit_weight: f64,
    /// `--router-disk-cache-hit-weight`: a block in its storage tier.
    pub disk_hit_weight: f64,
    /// `--router-pin-ttl-secs`: the chosen worker pins each routed prompt's blocks this long
    /// (`None`: no pins).
    pub pin_ttl: Option<Duration>,
}

impl Default for KvRouterConfig {
    fn default() -> Self {
        KvRouterConfig {
            overlap_weight: 1.0,
            temperature: 0.0,
            kv_events: true,
            block_size: None,
            ttl: Duration::from_secs(120),
            load_fresh: Duration::from_secs(3),
            host_hit_weight: 0.75,
            disk_hit_weight: 0.25,
            pin_ttl: None,
        }
    }
}

/// Why the router could not choose.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("no candidate workers")]
    NoCandidates,
    #[error("the KV index task stopped")]
    IndexGone,
}

/// The router of one worker component (`namespace.component`).
pub struct KvRouter {
    tx: mpsc::Sender<IndexMsg>,
    /// The published copy of the index: lookups read it directly.
    reader: Arc<arc_swap::ArcSwap<RadixIndex>>,
    cfg: KvRouterConfig,
    metrics: RouterMetrics,
    active: Mutex<ActiveLoad>,
    loads: Arc<Mutex<FastMap<u64, (LoadReport, Instant)>>>,
    rng: Mutex<StdRng>,
    next_id: AtomicU64,
}

/// The router's choice for one request.
pub struct Selection {
    /// Index into the candidates.
    pub index: usize,
    pub overlap_blocks: u32,
    pub ticket: RouteTicket,
}

/// Keeps the router's account of one routed request: prefill done at the first token, freed
/// (with the request-level router metrics) when dropped.
pub struct RouteTicket {
    router: Arc<KvRouter>,
    id: u64,
    start: Instant,
    first: Option<Instant>,
    tokens: u64,
}

impl RouteTicket {
    /// Output tokens arrived.
    pub fn on_tokens(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.tokens += n as u64;
        if self.first.is_none() {
            let now = Instant::now();
            self.first = Some(now);
            self.router
                .metrics
                .ttft
                .observe(now.duration_since(self.start).as_secs_f64());
            let done = self.router.active.lock().unwrap().prefill_done(self.id);
            if let Some((w, l)) = done {
                self.router
                    .metrics
                    .worker_load(w, l.active_blocks, l.prefill_tokens);
            }
        }
    }
}

impl Drop for RouteTicket {
    fn drop(&mut self) {
        let m = &self.router.metrics;
        m.osl.observe(self.tokens as f64);
        if let (Some(first), true) = (self.first, self.tokens > 1) {
            m.itl
                .observe(first.elapsed().as_secs_f64() / (self.tokens - 1) as f64);
        }
        let freed = self.router.active.lock().unwrap().free(self.id);
        if let Some((w, l)) = freed {
            m.worker_load(w, l.active_blocks, l.prefill_tokens);
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl KvRouter {
    /// Start the router for `namespace.component`: index task, event and load subscriptions,
    /// and the discovery watch that re-syncs new workers and drops departed ones. Returns once
    /// nats-server holds the subscriptions, so no event a worker publishes after this (for
    /// the request about to be routed, say) is missed; what came before, the re-sync fetches.
    pub async fn start(
        events: Events,
        namespace: &str,
        component: &str,
        instances: watch::Receiver<InstanceMap>,
        cfg: KvRouterConfig,
        metrics: RouterMetrics,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel();
        let rt = tokio::runtime::Handle::current();
        let resync: Option<task::Resync> = cfg.kv_events.then(|| {
            let events = events.clone();
            let tx = tx.clone();
            let (ns, comp) = (namespace.to_string(), component.to_string());
            let rt = rt.clone();
            Box::new(move |worker: u64, from: Option<u64>| {
                let (events, tx) = (events.clone(), tx.clone());
                let subject = kv_query_subject(&ns, &comp, worker);
                rt.spawn(async move {
                    let answer = query_worker(&events, &subject, from).await;
                    let _ = tx.send(IndexMsg::Answer { worker, answer });
                });
            }) as task::Resync
        });
        let ttl = (!cfg.kv_events).then_some(cfg.ttl);
        let budget = EventBudget::new(budget::DEFAULT_EVENT_BUDGET);
        let task =
            IndexTask::new(resync, Some(metrics.clone()), ttl).with_event_budget(budget.clone());
        let reader = task.reader();
        std::thread::Builder::new()
            // Only name-safe characters (a thread name with a NUL cannot be spawned).
            .name(format!(
                "kv-index-{}",
                component
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                    .collect::<String>()
            ))
            .spawn(move || task.run_blocking(rx))
            .expect("spawn the KV index thread");
        let loads: Arc<Mutex<FastMap<u64, (LoadReport, Instant)>>> = Default::default();
        if cfg.kv_events {
            match events
                .subscribe::<RouterEvent>(&kv_events_subject(namespace, component))
                .await
            {
                Ok(sub) => {
                    let members = Members::new(instances.clone(), namespace, component);
                    tokio::spawn(forward_events(sub, tx.clone(), members, budget));
                }
                Err(e) => tracing::error!(error = %e, "cannot subscribe to KV events"),
            }
        }
        match events
            .subscribe::<LoadReport>(&kv_metrics_subject(namespace, component))
            .await
        {
            Ok(sub) => {
                let members = Members::new(instances.clone(), namespace, component);
                tokio::spawn(collect_loads(sub, loads.clone(), members));
            }
            Err(e) => tracing::error!(error = %e, "cannot subscribe to worker loads"),
        }
        // The server has seen the subscriptions once a flush returns (same connection, in
        // order). Bounded: while NATS is reconnecting, requests fail on their own instead of
        // queueing behind the first one.
        if let Err(e) = events.flush(SUBSCRIPTION_FLUSH_BOUND).await {
            tracing::warn!(error = %e, "KV router subscriptions not confirmed");
        }
        let router = Arc::new(KvRouter {
            tx,
            reader,
            cfg,
            metrics,
            active: Mutex::new(ActiveLoad::default()),
            loads,
            rng: Mutex::new(StdRng::from_os_rng()),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(watch_workers(
            Arc::downgrade(&router),
            namespace.to_string(),
            component.to_string(),
            instances,
        ));
        router
    }

    pub fn config(&self) -> &KvRouterConfig {
        &self.cfg
    }

    /// Per-worker overlap of a prompt's blocks, from the published copy of the index (no
    /// lock, no hand-off to the index thread, which may be waiting for a CPU when the machine
    /// is busy).
    pub fn find_matches(&self, local: &[u64]) -> OverlapScores {
        self.reader.load().find_matches(local)
    }

    /// Blocks in the index.
    pub async fn index_size(&self) -> Result<usize, RouterError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(IndexMsg::Size(reply))
            .map_err(|_| RouterError::IndexGone)?;
        rx.await.map_err(|_| RouterError::IndexGone)
    }

    /// Choose among `candidates` for a prompt of `tokens`, recording the `kv_router.*` spans
    /// (under the caller's `kv_router.select_worker`) and the overhead metrics.
    pub fn select(
        self: &Arc<Self>,
        tokens: &[u32],
        candidates: &[Arc<InstanceRecord>],
    ) -> Result<Selection, RouterError> {
        if candidates.is_empty() {
            return Err(RouterError::NoCandidates);
        }
        let t0 = Instant::now();
        let bs = self
            .cfg
            .block_size
            .unwrap_or_else(|| card_block_size(&candidates[0]));
        let m = &self.metrics;
        let local = hash_blocks(tokens, bs);
        let t1 = Instant::now();
        m.block_hashing_ms.observe(ms(t1 - t0));
        let seq = chain_hashes(&local);
        let t2 = Instant::now();
        m.seq_hashing_ms.observe(ms(t2 - t1));
        let find = tracing::info_span!(
            spans::FIND_MATCHES,
            block_count = local.len() as i64,
            overlap_blocks = tracing::field::Empty,
            workers_matched = tracing::field::Empty,
        );
        let overlaps = if self.cfg.overlap_weight > 0.0 && !local.is_empty() {
            find.in_scope(|| self.reader.load().find_matches_seq(&seq))
        } else {
            OverlapScores::default()
        };
        find.record("overlap_blocks", i64::from(overlaps.best()));
        find.record("workers_matched", overlaps.scores.len() as i64);
        drop(find);
        let t3 = Instant::now();
        m.find_matches_ms.observe(ms(t3 - t2));

        let costing = Costing {
            isl_tokens: tokens.len(),
            block_size: bs,
            overlap_weight: self.cfg.overlap_weight,
            host_weight: self.cfg.host_hit_weight,
            disk_weight: self.cfg.disk_hit_weight,
        };
        let schedule = tracing::info_span!(
            spans::SCHEDULE,
            block_count = local.len() as i64,
            overlap_blocks = tracing::field::Empty,
            cached_tokens = tracing::field::Empty,
            pending_count = tracing::field::Empty,
            pending_isl_tokens = tracing::field::Empty,
            worker_id = tracing::field::Empty,
        );
        let _s = schedule.enter();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (index, overlap, load) = {
            let now = Instant::now();
            let reported = self.loads.lock().unwrap();
            let mut active = self.active.lock().unwrap();
            let cands: Vec<Candidate> = candidates
                .iter()
                .map(|c| {
                    let w = (c.instance_id, 0);
                    let tracked = active.load(w).active_blocks;
                    // A worker's own report counts (load other frontends sent there) when it
                    // is fresh and arrived well after this router last changed its account,
                    // so it cannot be a stale view of requests that already ended.
                    let settled = active
                        .last_change(w)
                        .map(|t| t + Duration::from_millis(100));
                    let seen = reported
                        .get(&c.instance_id)
                        .filter(|(_, at)| now.duration_since(*at) < self.cfg.load_fresh)
                        .filter(|(_, at)| settled.is_none_or(|s| *at > s))
                        .map_or(0, |(l, _)| l.active_blocks);
                    Candidate {
                        worker: w,
                        overlap_blocks: overlaps.get(w),
                        lower: overlaps.lower(w),
                        active_blocks: tracked.max(seen),
                    }
                })
                .collect();
            drop(reported);
            let index = scheduler::choose(
                &cands,
                &costing,
                self.cfg.temperature,
                &mut *self.rng.lock().unwrap(),
            );
            let c = cands[index];
            // Blocks a lower tier holds are loaded, not computed.
            let held = c.overlap_blocks + c.lower.host + c.lower.disk;
            let prefill = costing.isl_tokens - (held as usize * bs).min(tokens.len());
            let load = active.add(id, c.worker, costing.request_blocks(), prefill as u64);
            (index, c.overlap_blocks, load)
        };
        let chosen = candidates[index].instance_id;
        schedule.record("overlap_blocks", i64::from(overlap));
        schedule.record("cached_tokens", (overlap as usize * bs) as i64);
        schedule.record("pending_count", load.requests as i64);
        schedule.record("pending_isl_tokens", load.prefill_tokens as i64);
        schedule.record("worker_id", chosen);
        drop(_s);
        m.worker_load((chosen, 0), load.active_blocks, load.prefill_tokens);
        if !self.cfg.kv_events && !local.is_empty() {
            let _ = self.tx.send(IndexMsg::Routed {
                worker: (chosen, 0),
                local,
                seq,
            });
        }
        let t4 = Instant::now();
        m.scheduling_ms.observe(ms(t4 - t3));
        m.total_ms.observe(ms(t4 - t0));
        m.requests.inc();
        m.isl.observe(tokens.len() as f64);
        let blocks = costing.request_blocks().max(1);
        m.kv_hit_rate
            .observe((f64::from(overlap) / blocks as f64).min(1.0));
        Ok(Selection {
            index,
            overlap_blocks: overlap,
            ticket: RouteTicket {
                router: self.clone(),
                id,
                start: t0,
                first: None,
                tokens: 0,
            },
        })
    }
}

/// The KV block size in an instance's model card (16 when it names none).
pub fn card_block_size(inst: &InstanceRecord) -> usize {
    inst.card["kv_cache_block_size"]
        .as_u64()
        .map_or(16, |b| b as usize)
        .max(1)
}

/// Local hashes of a prompt's complete blocks, as the `kv_router.compute_block_hashes` span.
pub fn hash_blocks(tokens: &[u32], block_size: usize) -> Vec<u64> {
    tracing::info_span!(
        spans::COMPUTE_BLOCK_HASHES,
        isl_tokens = tokens.len() as i64,
        block_count = tracing::field::Empty,
    )
    .in_scope(|| {
        let h = block_hashes(tokens, block_size);
        tracing::Span::current().record("block_count", h.len() as i64);
        h
    })
}

/// Sequence hashes of those blocks, as the `kv_router.compute_seq_hashes` span.
pub fn chain_hashes(local: &[u64]) -> Vec<u64> {
    tracing::info_span!(
        spans::COMPUTE_SEQ_HASHES,
        seq_hash_count = local.len() as i64
    )
    .in_scope(|| sequence_hashes(local))
}

/// Ask one worker for its KV state and collect the answer's messages (5 s budget; a worker
/// that has registered but not yet subscribed to its query subject is asked again).
async fn query_worker(
    events: &Events,
    subject: &str,
    from: Option<u64>,
) -> Result<SyncAnswer, String> {
    let query = KvQuery {
        from_event_id: from,
    };
    let parts: Vec<KvQueryReply> = events
        .request_many(subject, &query, RESYNC_DEADLINE, |p: &KvQueryReply| p.done)
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = SyncAnswer::default();
    for part in parts {
        answer.full |= part.full;
        answer.last_event_id = part.last_event_id;
        answer.blocks.extend(part.blocks);
        answer.events.extend(part.events);
    }
    Ok(answer)
}

/// Follow discovery: new workers of this component are re-synced, departed ones dropped.
async fn watch_workers(
    router: std::sync::Weak<KvRouter>,
    namespace: String,
    component: String,
    mut rx: watch::Receiver<InstanceMap>,
) {
    let mut known: HashSet<u64> = HashSet::new();
    loop {
        let now: HashSet<u64> = rx
            .borrow_and_update()
            .values()
            .filter(|r| r.namespace == namespace && r.component == component)
            .map(|r| r.instance_id)
            .collect();
        let Some(r) = router.upgrade() else { return };
        for &w in now.difference(&known) {
            let _ = r.tx.send(IndexMsg::WorkerAdded(w));
        }
        for &w in known.difference(&now) {
            tracing::info!(worker = %format!("{w:x}"), "worker left; dropping its KV blocks");
            let _ = r.tx.send(IndexMsg::WorkerRemoved(w));
            r.active.lock().unwrap().remove_worker(w);
            r.loads.lock().unwrap().remove(&w);
            r.metrics.forget_worker((w, 0));
        }
        drop(r);
        known = now;
        if rx.changed().await.is_err() {
            return;
        }
    }
}
