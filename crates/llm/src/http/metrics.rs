//! The frontend's `dynamo_frontend_*` metric families, registered on the process registry.

use dynamo_protocols::names::frontend as n;
use dynamo_runtime::MetricsRegistry;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts,
};

/// Handles to every frontend family.
#[derive(Clone)]
pub struct FrontendMetrics {
    pub requests: IntCounterVec,
    pub inflight: IntGaugeVec,
    pub queued: IntGaugeVec,
    pub disconnected: IntGauge,
    pub duration: HistogramVec,
    pub ttft: HistogramVec,
    pub itl: HistogramVec,
    pub isl: HistogramVec,
    pub osl: HistogramVec,
    pub output_tokens: IntCounterVec,
    pub cached_tokens: HistogramVec,
    pub tokenize_ms: Histogram,
    pub detokenize_ms: Histogram,
    pub model_total_kv_blocks: IntGaugeVec,
    pub model_max_num_seqs: IntGaugeVec,
    pub model_max_num_batched_tokens: IntGaugeVec,
    pub model_context_length: IntGaugeVec,
    pub model_kv_cache_block_size: IntGaugeVec,
    /// Requests moved to another worker after theirs was lost, by `migration_type`
    /// (`new_request`: before any token; `ongoing_request`: mid-stream).
    pub migrations: IntCounterVec,
}

fn hist(
    reg: &MetricsRegistry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let h =
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid");
    reg.register(Box::new(h.clone())).expect("unique");
    h
}

fn gauge(reg: &MetricsRegistry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["model"]).expect("valid");
    reg.register(Box::new(g.clone())).expect("unique");
    g
}

impl FrontendMetrics {
    pub fn new(reg: &MetricsRegistry) -> Self {
        let m = &["model"];
        let requests = IntCounterVec::new(
            Opts::new(n::REQUESTS_TOTAL, "LLM requests handled by the frontend"),
            &["model", "endpoint", "request_type", "status", "error_type"],
        )
        .expect("valid");
        reg.register(Box::new(requests.clone())).expect("unique");
        let output_tokens = IntCounterVec::new(
            Opts::new(
                n::OUTPUT_TOKENS_TOTAL,
                "Output tokens generated, updated as they stream",
            ),
            m,
        )
        .expect("valid");
        reg.register(Box::new(output_tokens.clone()))
            .expect("unique");
        let disconnected = IntGauge::new(
            n::DISCONNECTED_CLIENTS,
            "Clients that disconnected before their response completed",
        )
        .expect("valid");
        reg.register(Box::new(disconnected.clone()))
            .expect("unique");
        let inflight = gauge(
            reg,
            n::INFLIGHT_REQUESTS,
            "Requests from handler start until the response is complete",
        );
        let queued = gauge(
            reg,
            n::QUEUED_REQUESTS,
            "Requests from handler start until their first token",
        );
        // Seconds: 1 ms … ~480 s; ITL 1 ms … ~2 s; token counts: powers of two to 128k.
        let secs = exponential_buckets(0.001, 2.0, 20).expect("valid");
        let itl = exponential_buckets(0.001, 1.5, 20).expect("valid");
        let toks = exponential_buckets(1.0, 2.0, 18).expect("valid");
        let ms = exponential_buckets(0.001, 2.0, 20).expect("valid");
        let tok_lat = HistogramVec::new(
            HistogramOpts::new(
                n::TOKENIZER_LATENCY_MS,
                "Tokenizer time per request in milliseconds",
            )
            .buckets(ms),
            &["operation"],
        )
        .expect("valid");
        reg.register(Box::new(tok_lat.clone())).expect("unique");
        let migrations = IntCounterVec::new(
            Opts::new(
                n::MODEL_MIGRATION_TOTAL,
                "Requests moved to another worker after theirs was lost",
            ),
            &["model", "migration_type"],
        )
        .expect("valid");
        reg.register(Box::new(migrations.clone())).expect("unique");
        FrontendMetrics {
            migrations,
            requests,
            inflight,
            queued,
            disconnected,
            duration: hist(
                reg,
                n::REQUEST_DURATION_SECONDS,
                "Whole request duration",
                secs.clone(),
                m,
            ),
            ttft: hist(
                reg,
                n::TIME_TO_FIRST_TOKEN_SECONDS,
                "Time to first token at the frontend",
                secs,
                m,
            ),
            itl: hist(
                reg,
                n::INTER_TOKEN_LATENCY_SECONDS,
                "Inter-token latency",
                itl,
                m,
            ),
            isl: hist(
                reg,
                n::INPUT_SEQUENCE_TOKENS,
                "Input sequence length in tokens",
                toks.clone(),
                m,
            ),
            osl: hist(
                reg,
                n::OUTPUT_SEQUENCE_TOKENS,
                "Output sequence length in tokens",
                toks.clone(),
                m,
            ),
            output_tokens,
            cached_tokens: hist(
                reg,
                n::CACHED_TOKENS,
                "Prompt tokens served from the prefix cache per request",
                toks,
                m,
            ),
            tokenize_ms: tok_lat.with_label_values(&["tokenize"]),
            detokenize_ms: tok_lat.with_label_values(&["detokenize"]),
            model_total_kv_blocks: gauge(
                reg,
                n::MODEL_TOTAL_KV_BLOCKS,
                "KV blocks of the model's worker (from its runtime config)",
            ),
            model_max_num_seqs: gauge(
                reg,
                n::MODEL_MAX_NUM_SEQS,
                "Max running sequences of the model's worker",
            ),
            model_max_num_batched_tokens: gauge(
                reg,
                n::MODEL_MAX_NUM_BATCHED_TOKENS,
                "Max batched tokens of the model's worker",
            ),
            model_context_length: gauge(
                reg,
                n::MODEL_CONTEXT_LENGTH,
                "Context length from the model card",
            ),
            model_kv_cache_block_size: gauge(
                reg,
                n::MODEL_KV_CACHE_BLOCK_SIZE,
                "KV cache block size from the model card",
            ),
        }
    }

    /// A model became servable: its per-request series exist from now on, at 0, so that the
    /// first requests are an increase `rate()` sees (a series born with its first sample
    /// shows none), and a dashboard has data from the first scrape after the model is ready.
    /// Error series still appear with their first error: their label sets are open-ended.
    pub fn model_ready(&self, model: &str) {
        for h in [
            &self.duration,
            &self.ttft,
            &self.itl,
            &self.isl,
            &self.osl,
            &self.cached_tokens,
        ] {
            h.with_label_values(&[model]);
        }
        self.output_tokens.with_label_values(&[model]);
        for endpoint in ["chat_completions", "completions"] {
            for rt in ["unary", "stream"] {
                self.requests
                    .with_label_values(&[model, endpoint, rt, "success", ""]);
            }
        }
    }

    /// Count a finished request.
    pub fn count(&self, model: &str, endpoint: &str, stream: bool, error: Option<&str>) {
        let rt = if stream { "stream" } else { "unary" };
        let (status, et) = match error {
            None => ("success", ""),
            Some(e) => ("error", e),
        };
        self.requests
            .with_label_values(&[model, endpoint, rt, status, et])
            .inc();
    }
}
