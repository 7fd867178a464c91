//! The KV router's metric families on the frontend's registry: `dynamo_router_*` (labelled by
//! `router_id`), `dynamo_component_kv_cache_events_applied{event_type,status}` and the
//! per-worker `dynamo_frontend_worker_active_*` gauges (the router's own view of load).

use dynamo_protocols::names::{component, frontend, router as n};
use dynamo_runtime::MetricsRegistry;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts,
};

use super::indexer::WorkerKey;

/// Handles to every router family; resolved for this router's id once.
#[derive(Clone)]
pub struct RouterMetrics {
    pub requests: IntCounter,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub isl: Histogram,
    pub osl: Histogram,
    pub kv_hit_rate: Histogram,
    pub block_hashing_ms: Histogram,
    pub seq_hashing_ms: Histogram,
    pub find_matches_ms: Histogram,
    pub scheduling_ms: Histogram,
    pub total_ms: Histogram,
    pub events_applied: IntCounterVec,
    pub active_decode_blocks: IntGaugeVec,
    pub active_prefill_tokens: IntGaugeVec,
    /// `worker_type` of the per-worker gauges: `prefill` or `decode` (aggregated workers
    /// report `decode`).
    pub worker_type: &'static str,
}

fn hist(reg: &MetricsRegistry, name: &str, help: &str, buckets: Vec<f64>, id: &str) -> Histogram {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets),
        &["router_id"],
    )
    .expect("valid");
    reg.register(Box::new(h.clone())).expect("unique");
    h.with_label_values(&[id])
}

/// Milliseconds from 1 µs to ~1 s.
fn overhead_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 21).expect("valid")
}

impl RouterMetrics {
    /// Register the families; `router_id` is this frontend's id (hex).
    pub fn new(reg: &MetricsRegistry, router_id: &str) -> Self {
        let id = router_id;
        let requests = IntCounterVec::new(
            Opts::new(n::REQUESTS_TOTAL, "Requests routed by the KV router"),
            &["router_id"],
        )
        .expect("valid");
        reg.register(Box::new(requests.clone())).expect("unique");
        let events_applied = IntCounterVec::new(
            Opts::new(
                component::KV_CACHE_EVENTS_APPLIED,
                "KV events applied to the router's index, by type and outcome",
            ),
            &["event_type", "status"],
        )
        .expect("valid");
        reg.register(Box::new(events_applied.clone()))
            .expect("unique");
        for t in ["stored", "removed", "cleared"] {
            for s in ["ok", "error"] {
                events_applied.with_label_values(&[t, s]);
            }
        }
        let per_worker = ["worker_id", "dp_rank", "worker_type"];
        let active_decode_blocks = IntGaugeVec::new(
            Opts::new(
                frontend::WORKER_ACTIVE_DECODE_BLOCKS,
                "KV blocks of the requests this router has active on each worker",
            ),
            &per_worker,
        )
        .expect("valid");
        reg.register(Box::new(active_decode_blocks.clone()))
            .expect("unique");
        let active_prefill_tokens = IntGaugeVec::new(
            Opts::new(
                frontend::WORKER_ACTIVE_PREFILL_TOKENS,
                "Prompt tokens routed to each worker whose first output token has not arrived",
            ),
            &per_worker,
        )
        .expect("valid");
        reg.register(Box::new(active_prefill_tokens.clone()))
            .expect("unique");
        let secs = exponential_buckets(0.001, 2.0, 20).expect("valid");
        let toks = exponential_buckets(1.0, 2.0, 18).expect("valid");
        RouterMetrics {
            requests: requests.with_label_values(&[id]),
            ttft: hist(reg, n::TIME_TO_FIRST_TOKEN_SECONDS, "Time to first token of routed requests", secs.clone(), id),
            itl: hist(reg, n::INTER_TOKEN_LATENCY_SECONDS, "Average inter-token latency of each routed request", secs, id),
            isl: hist(reg, n::INPUT_SEQUENCE_TOKENS, "Prompt tokens of routed requests", toks.clone(), id),
            osl: hist(reg, n::OUTPUT_SEQUENCE_TOKENS, "Output tokens of routed requests", toks, id),
            kv_hit_rate: hist(
                reg,
                n::KV_HIT_RATE,
                "Predicted cache hit rate at routing time: overlap blocks of the chosen worker / prompt blocks",
                (0..=10).map(|i| f64::from(i) / 10.0).collect(),
                id,
            ),
            block_hashing_ms: hist(reg, n::OVERHEAD_BLOCK_HASHING_MS, "Routing time spent hashing blocks", overhead_buckets(), id),
            seq_hashing_ms: hist(reg, n::OVERHEAD_SEQ_HASHING_MS, "Routing time spent chaining sequence hashes", overhead_buckets(), id),
            find_matches_ms: hist(reg, n::OVERHEAD_INDEXER_FIND_MATCHES_MS, "Routing time spent in the index lookup", overhead_buckets(), id),
            scheduling_ms: hist(reg, n::OVERHEAD_SCHEDULING_MS, "Routing time spent in the cost function", overhead_buckets(), id),
            total_ms: hist(reg, n::OVERHEAD_TOTAL_MS, "Whole routing decision", overhead_buckets(), id),
            events_applied,
            active_decode_blocks,
            active_prefill_tokens,
            worker_type: "decode",
        }
    }

    /// The same families for a router of prefill workers.
    pub fn for_prefill(&self) -> Self {
        RouterMetrics {
            worker_type: "prefill",
            ..self.clone()
        }
    }

    /// Count one applied (or rejected) event.
    pub fn event(&self, event_type: &str, ok: bool) {
        self.events_applied
            .with_label_values(&[event_type, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Publish a worker's load in the router's account.
    pub fn worker_load(&self, w: WorkerKey, blocks: u64, prefill_tokens: u64) {
        let (id, dp) = (w.0.to_string(), w.1.to_string());
        let l = [id.as_str(), dp.as_str(), self.worker_type];
        self.active_decode_blocks
            .with_label_values(&l)
            .set(blocks as i64);
        self.active_prefill_tokens
            .with_label_values(&l)
            .set(prefill_tokens as i64);
    }

    /// Drop a departed worker's gauges.
    pub fn forget_worker(&self, w: WorkerKey) {
        let (id, dp) = (w.0.to_string(), w.1.to_string());
        let l = [id.as_str(), dp.as_str(), self.worker_type];
        let _ = self.active_decode_blocks.remove_label_values(&l);
        let _ = self.active_prefill_tokens.remove_label_values(&l);
    }
}
