//! The engine's own Prometheus registry (`--enable-metrics`): SGLang's `sglang:` families with
//! SGLang's names, types, labels and default buckets. Per-request families (SGLang's
//! "tokenizer collector": tokens, requests, TTFT, ITL, e2e, retractions per request) carry
//! `model_name`; per-iteration families (the "scheduler collector") carry `model_name`,
//! `engine_type`, `tp_rank`, `pp_rank`, `moe_ep_rank`. Handles are resolved once here, so the
//! scheduler thread only does atomic updates: per-token observations (ITL) and one batch of
//! gauge stores per iteration. [`EngineMetrics::render`] gives the text exposition filtered
//! to `sglang:` for the worker's `/metrics`.

use std::time::{Duration, Instant};

mod disagg;
mod families;
mod hicache;
pub use disagg::{DisaggMetrics, DisaggStage};
use families::Families;
pub use hicache::StorageMetrics;
pub(crate) use hicache::{HiCacheMetrics, PinMetrics};

use prometheus::{Encoder, Gauge, Histogram, IntCounter, IntGauge, Registry, TextEncoder};

/// Role of the engine in the `engine_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineType {
    Unified,
    Prefill,
    Decode,
}

impl EngineType {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineType::Unified => "unified",
            EngineType::Prefill => "prefill",
            EngineType::Decode => "decode",
        }
    }
}

/// SGLang's default buckets.
pub mod buckets {
    pub const TTFT: &[f64] = &[
        0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
        200.0, 400.0,
    ];
    pub const ITL: &[f64] = &[
        0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
        0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0,
    ];
    pub const E2E: &[f64] = &[
        0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0,
        200.0, 400.0, 600.0, 1200.0, 1800.0, 2400.0,
    ];
    pub const QUEUE: &[f64] = &[
        0.0, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
        70.0, 80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0, 1000.0,
        1200.0, 1400.0, 1600.0, 1800.0, 2000.0, 2500.0, 3000.0,
    ];
    pub const TOKENS: &[f64] = &[
        100.0, 300.0, 500.0, 700.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0,
        8000.0, 9000.0, 10000.0, 12000.0, 15000.0, 20000.0, 22000.0, 25000.0, 30000.0, 35000.0,
        40000.0, 66000.0, 99000.0, 132000.0, 300000.0, 600000.0, 900000.0, 1100000.0,
    ];
    pub const RETRACTIONS: &[f64] = &[
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0,
        75.0, 100.0,
    ];

    /// `per_stage_req_latency_seconds`: 0.001 × 1.62ⁱ, 30 buckets.
    pub fn stages() -> Vec<f64> {
        prometheus::exponential_buckets(0.001, 1.62, 30).expect("valid buckets")
    }
}

/// What `--enable-metrics` and the bucket flags configure.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `model_name` label: the served model name.
    pub model_name: String,
    pub engine_type: EngineType,
    pub ttft_buckets: Vec<f64>,
    pub itl_buckets: Vec<f64>,
    pub e2e_buckets: Vec<f64>,
    /// `--collect-tokens-histogram`: also the prompt/generation length histograms.
    pub collect_tokens_histogram: bool,
    pub prompt_tokens_buckets: Vec<f64>,
    pub generation_tokens_buckets: Vec<f64>,
    /// Window of the interval gauges (`gen_throughput`, `cache_hit_rate`, `utilization`,
    /// `num_retracted_reqs`).
    pub interval: Duration,
    /// A host tier exists: its families are registered.
    pub hicache: bool,
    /// A storage tier exists below it: the storage families too.
    pub hicache_storage: bool,
}

impl MetricsConfig {
    pub fn new(model_name: impl Into<String>) -> Self {
        MetricsConfig {
            model_name: model_name.into(),
            engine_type: EngineType::Unified,
            ttft_buckets: buckets::TTFT.to_vec(),
            itl_buckets: buckets::ITL.to_vec(),
            e2e_buckets: buckets::E2E.to_vec(),
            collect_tokens_histogram: false,
            prompt_tokens_buckets: buckets::TOKENS.to_vec(),
            generation_tokens_buckets: buckets::TOKENS.to_vec(),
            interval: Duration::from_secs(1),
            hicache: false,
            hicache_storage: false,
        }
    }
}

/// Stages observed into `per_stage_req_latency_seconds{stage}`.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Submission until the scheduler thread takes the request.
    RequestProcess,
    /// First admission until the forward that completes the prompt.
    PrefillForward,
    /// One chunk's forward when the prompt is split into chunks.
    ChunkedPrefill,
}

/// Every handle the scheduler updates.
/// `cached_tokens_total`'s series, resolved at start: device always, host and storage_file
/// with their tiers.
pub(crate) struct CachedTokens {
    pub(crate) device: IntCounter,
    pub(crate) host: Option<IntCounter>,
    pub(crate) storage: Option<IntCounter>,
}

pub struct EngineMetrics {
    registry: Registry,
    pub(crate) interval: Duration,
    // per request (tokenizer collector)
    pub(crate) prompt_tokens: IntCounter,
    pub(crate) generation_tokens: IntCounter,
    /// `cached_tokens_total` by `cache_source`.
    pub(crate) cached_tokens: CachedTokens,
    pub(crate) requests: IntCounter,
    pub(crate) aborted: IntCounter,
    pub(crate) ttft: Histogram,
    pub(crate) itl: Histogram,
    pub(crate) e2e: Histogram,
    pub(crate) retractions_per_req: Histogram,
    pub(crate) prompt_hist: Option<Histogram>,
    pub(crate) generation_hist: Option<Histogram>,
    // per iteration (scheduler collector)
    pub(crate) queue_time: Histogram,
    stage: [Histogram; 3],
    pub(crate) running: IntGauge,
    pub(crate) queued: IntGauge,
    pub(crate) used_tokens: IntGauge,
    pub(crate) token_usage: Gauge,
    pub(crate) gen_throughput: Gauge,
    pub(crate) cache_hit_rate: Gauge,
    pub(crate) decode_sum_seq_lens: IntGauge,
    pub(crate) utilization: Gauge,
    pub(crate) new_token_ratio: Gauge,
    /// 1 when the last decode pass replayed a CUDA graph.
    pub(crate) is_cuda_graph: IntGauge,
    /// Decode passes by `mode`: `decode_cuda_graph` or `decode_none`.
    pub(crate) graph_passes: prometheus::IntCounterVec,
    /// The host tier's families (`--enable-hierarchical-cache`).
    pub(crate) hicache: Option<HiCacheMetrics>,
    pub(crate) pins: PinMetrics,
    pub(crate) kv_used: IntGauge,
    pub(crate) kv_available: IntGauge,
    pub(crate) kv_evictable: IntGauge,
    pub(crate) realtime_prefill_compute: IntCounter,
    pub(crate) realtime_prefill_cache: IntCounter,
    pub(crate) realtime_decode: IntCounter,
    pub(crate) retracted_reqs: IntGauge,
    pub(crate) retracted_requests: IntCounter,
    pub(crate) retracted_input: IntCounter,
    pub(crate) retracted_output: IntCounter,
    /// The disaggregation families.
    pub disagg: DisaggMetrics,
    max_total_tokens: IntGauge,
    page_size: IntGauge,
    num_pages: IntGauge,
    context_len: IntGauge,
    kv_memory_gb: Gauge,
    weight_memory_gb: Gauge,
    startup_time: Gauge,
    load_weights_time: Gauge,
}

/// Fixed facts about the engine, set once at load.
pub struct StaticFacts {
    pub max_total_tokens: usize,
    pub page_size: usize,
    pub num_pages: usize,
    pub context_len: usize,
    pub load_weights: Duration,
    /// Bytes of the KV cache and of the weights where the executor keeps them (device
    /// memory for a device executor).
    pub kv_bytes: usize,
    pub weight_bytes: usize,
}

fn check_buckets(flag: &str, b: &[f64]) -> Result<(), String> {
    if b.is_empty() || b.windows(2).any(|w| w[0] >= w[1]) || b.iter().any(|v| !v.is_finite()) {
        return Err(format!(
            "{flag}: buckets must be finite and strictly increasing, got {b:?}"
        ));
    }
    Ok(())
}

impl EngineMetrics {
    /// Build and register every family; an invalid bucket list is an error naming its flag.
    pub fn new(cfg: &MetricsConfig) -> Result<Self, String> {
        check_buckets("--bucket-time-to-first-token", &cfg.ttft_buckets)?;
        check_buckets("--bucket-inter-token-latency", &cfg.itl_buckets)?;
        check_buckets("--bucket-e2e-request-latency", &cfg.e2e_buckets)?;
        check_buckets("--prompt-tokens-buckets", &cfg.prompt_tokens_buckets)?;
        check_buckets(
            "--generation-tokens-buckets",
            &cfg.generation_tokens_buckets,
        )?;
        let r = Registry::new();
        let tok = [("model_name", cfg.model_name.as_str())];
        let sched = [
            ("model_name", cfg.model_name.as_str()),
            ("engine_type", cfg.engine_type.as_str()),
            ("tp_rank", "0"),
            ("pp_rank", "0"),
            ("moe_ep_rank", "0"),
        ];
        let f = Families(&r);

        let stage_vec = f.hist_vec(
            "per_stage_req_latency_seconds",
            "Time a request spends in each engine stage",
            &sched,
            buckets::stages(),
            "stage",
        )?;
        let realtime = f.counter_vec(
            "realtime_tokens_total",
            "Tokens processed, by mode: prefill_compute, prefill_cache, decode",
            &sched,
            "mode",
            &[],
        )?;
        let disagg = DisaggMetrics::new(f, &sched, &stage_vec)?;
        let hicache = if cfg.hicache {
            Some(HiCacheMetrics::new(f, &sched, cfg.hicache_storage)?)
        } else {
            None
        };
        let graph_passes = f.counter_vec(
            "cuda_graph_passes_total",
            "Decode forward passes, by mode: decode_cuda_graph (a replayed CUDA graph) or decode_none",
            &sched,
            "mode",
            &["decode_cuda_graph", "decode_none"],
        )?;

        let m = EngineMetrics {
            disagg,
            interval: cfg.interval,
            prompt_tokens: f.counter(
                "prompt_tokens_total",
                "Prompt tokens of finished requests",
                &tok,
            )?,
            generation_tokens: f.counter(
                "generation_tokens_total",
                "Generated tokens of finished requests",
                &tok,
            )?,
            cached_tokens: {
                let c = f.counter_vec(
                    "cached_tokens_total",
                    "Prompt tokens of finished requests served from a cache, by where the blocks were at arrival: device (the KV pool), host (the host tier), storage_file (the storage tier)",
                    &tok,
                    "cache_source",
                    &[],
                )?;
                CachedTokens {
                    device: c.with_label_values(&["device"]),
                    host: cfg.hicache.then(|| c.with_label_values(&["host"])),
                    storage: cfg
                        .hicache_storage
                        .then(|| c.with_label_values(&["storage_file"])),
                }
            },
            requests: f.counter("num_requests_total", "Finished requests", &tok)?,
            aborted: f.counter(
                "num_aborted_requests_total",
                "Requests aborted before they finished (client cancelled or disconnected)",
                &tok,
            )?,
            ttft: f.hist(
                "time_to_first_token_seconds",
                "Time from submission to the first output token",
                &tok,
                &cfg.ttft_buckets,
            )?,
            itl: f.hist(
                "inter_token_latency_seconds",
                "Time between consecutive output tokens of a request",
                &tok,
                &cfg.itl_buckets,
            )?,
            e2e: f.hist(
                "e2e_request_latency_seconds",
                "Time from submission to the last output token",
                &tok,
                &cfg.e2e_buckets,
            )?,
            retractions_per_req: f.hist(
                "num_retractions",
                "Retractions a finished request went through",
                &tok,
                buckets::RETRACTIONS,
            )?,
            prompt_hist: if cfg.collect_tokens_histogram {
                Some(f.hist(
                    "prompt_tokens_histogram",
                    "Prompt length of finished requests",
                    &tok,
                    &cfg.prompt_tokens_buckets,
                )?)
            } else {
                None
            },
            generation_hist: if cfg.collect_tokens_histogram {
                Some(f.hist(
                    "generation_tokens_histogram",
                    "Output length of finished requests",
                    &tok,
                    &cfg.generation_tokens_buckets,
                )?)
            } else {
                None
            },
            queue_time: f.hist(
                "queue_time_seconds",
                "Time from submission to first admission into the running batch",
                &sched,
                buckets::QUEUE,
            )?,
            stage: [
                stage_vec.with_label_values(&["request_process"]),
                stage_vec.with_label_values(&["prefill_forward"]),
                stage_vec.with_label_values(&["chunked_prefill"]),
            ],
            running: f.igauge("num_running_reqs", "Requests in the running batch", &sched)?,
            queued: f.igauge("num_queue_reqs", "Requests in the waiting queue", &sched)?,
            used_tokens: f.igauge(
                "num_used_tokens",
                "KV slots (tokens) held by running requests",
                &sched,
            )?,
            token_usage: f.gauge(
                "token_usage",
                "Fraction of the KV pool held by running requests (evictable cache excluded)",
                &sched,
            )?,
            gen_throughput: f.gauge(
                "gen_throughput",
                "Decode tokens per second over the last interval",
                &sched,
            )?,
            cache_hit_rate: f.gauge(
                "cache_hit_rate",
                "Prompt tokens served from the prefix cache / prompt tokens, over the requests admitted in the last interval with admissions",
                &sched,
            )?,
            decode_sum_seq_lens: f.igauge(
                "decode_sum_seq_lens",
                "Sum of the sequence lengths in the last decode batch",
                &sched,
            )?,
            utilization: f.gauge(
                "utilization",
                "Fraction of the last interval the scheduler spent in forward passes",
                &sched,
            )?,
            is_cuda_graph: f.igauge(
                "is_cuda_graph",
                "1 if the last decode pass ran as a replayed CUDA graph",
                &sched,
            )?,
            graph_passes,
            hicache,
            pins: PinMetrics::new(f, &sched)?,
            new_token_ratio: f.gauge(
                "new_token_ratio",
                "KV reserved for future tokens at admission / remaining max_tokens of running requests",
                &sched,
            )?,
            kv_used: f.igauge("kv_used_tokens", "KV tokens held by running requests", &sched)?,
            kv_available: f.igauge("kv_available_tokens", "Free KV tokens", &sched)?,
            kv_evictable: f.igauge(
                "kv_evictable_tokens",
                "KV tokens of cached blocks no request holds (reusable or evictable)",
                &sched,
            )?,
            realtime_prefill_compute: realtime.with_label_values(&["prefill_compute"]),
            realtime_prefill_cache: realtime.with_label_values(&["prefill_cache"]),
            realtime_decode: realtime.with_label_values(&["decode"]),
            retracted_reqs: f.igauge(
                "num_retracted_reqs",
                "Requests retracted in the last interval",
                &sched,
            )?,
            retracted_requests: f.counter(
                "num_retracted_requests_total",
                "Requests retracted (KV released, re-queued, recomputed later)",
                &sched,
            )?,
            retracted_input: f.counter(
                "num_retracted_input_tokens_total",
                "Prompt tokens of retracted requests",
                &sched,
            )?,
            retracted_output: f.counter(
                "num_retracted_output_tokens_total",
                "Output tokens whose KV was dropped by retraction",
                &sched,
            )?,
            max_total_tokens: f.igauge("max_total_num_tokens", "KV pool capacity in tokens", &sched)?,
            page_size: f.igauge("page_size", "Tokens per KV page", &sched)?,
            num_pages: f.igauge("num_pages", "KV pages in the pool", &sched)?,
            context_len: f.igauge("context_len", "Context length in tokens", &sched)?,
            kv_memory_gb: f.gauge(
                "kv_cache_memory_usage_gb",
                "GB of the KV cache where the executor keeps it (device memory on a GPU)",
                &sched,
            )?,
            weight_memory_gb: f.gauge(
                "weight_memory_usage_gb",
                "GB of the weights as the executor keeps them (f16 in device memory on a GPU)",
                &sched,
            )?,
            startup_time: f.gauge("engine_startup_time", "Seconds to start the engine", &sched)?,
            load_weights_time: f.gauge("engine_load_weights_time", "Seconds to load the weights", &sched)?,
            registry: r,
        };
        Ok(m)
    }

    /// Record the engine's fixed facts (once, at load).
    pub(crate) fn set_static(&self, f: &StaticFacts, startup: Duration) {
        self.max_total_tokens.set(f.max_total_tokens as i64);
        self.page_size.set(f.page_size as i64);
        self.num_pages.set(f.num_pages as i64);
        self.context_len.set(f.context_len as i64);
        self.kv_memory_gb.set(f.kv_bytes as f64 / 1e9);
        self.weight_memory_gb.set(f.weight_bytes as f64 / 1e9);
        self.load_weights_time.set(f.load_weights.as_secs_f64());
        self.startup_time.set(startup.as_secs_f64());
    }

    pub(crate) fn stage(&self, s: Stage, d: Duration) {
        self.stage[s as usize].observe(d.as_secs_f64());
    }

    /// Text exposition of every `sglang:` family.
    pub fn render(&self) -> String {
        let families: Vec<_> = self
            .registry
            .gather()
            .into_iter()
            .filter(|f| f.name().starts_with("sglang:"))
            .collect();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("text encoding of valid metrics");
        String::from_utf8(buf).expect("utf-8 text")
    }
}

/// The interval gauges' running sums, owned by the scheduler thread.
pub(crate) struct Window {
    start: Instant,
    busy: Duration,
    decode_tokens: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    retracted: u64,
}

impl Window {
    pub(crate) fn new(now: Instant) -> Self {
        Window {
            start: now,
            busy: Duration::ZERO,
            decode_tokens: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            retracted: 0,
        }
    }

    pub(crate) fn forward(&mut self, d: Duration, decode_tokens: u64) {
        self.busy += d;
        self.decode_tokens += decode_tokens;
    }

    pub(crate) fn admitted(&mut self, prompt: usize, cached: usize) {
        self.prompt_tokens += prompt as u64;
        self.cached_tokens += cached as u64;
    }

    pub(crate) fn retracted(&mut self) {
        self.retracted += 1;
    }

    /// Publish and restart the window once `interval` has passed; at idle, publish what the
    /// window holds and then the idle values (no throughput, no utilization), so the gauges
    /// fall back instead of freezing at their last busy value. `cache_hit_rate` keeps the
    /// rate of the last interval that admitted requests.
    pub(crate) fn tick(&mut self, m: &EngineMetrics, now: Instant, idle: bool) {
        let el = now.duration_since(self.start);
        if !idle && el < m.interval {
            return;
        }
        if self.prompt_tokens > 0 {
            m.cache_hit_rate
                .set(self.cached_tokens as f64 / self.prompt_tokens as f64);
        }
        if idle {
            m.gen_throughput.set(0.0);
            m.utilization.set(0.0);
            m.retracted_reqs.set(0);
        } else {
            let secs = el.as_secs_f64().max(1e-9);
            m.gen_throughput.set(self.decode_tokens as f64 / secs);
            m.utilization
                .set((self.busy.as_secs_f64() / secs).clamp(0.0, 1.0));
            m.retracted_reqs.set(self.retracted as i64);
        }
        *self = Window::new(now);
    }
}
