//! SGLang's disaggregation families (`sglang:num_prefill_prealloc_queue_reqs` …
//! `sglang:kv_transfer_*`, `sglang:pending_prealloc_token_usage`, the PD stages of
//! `sglang:per_stage_req_latency_seconds`). Registered on every engine (an aggregated one
//! keeps them at zero, as SGLang does); the scheduler sets the queue gauges, and the worker's
//! transfer server and client set the transfer gauges and failure counters and observe the
//! bootstrap and transfer stages.

use std::time::Duration;

use prometheus::{Gauge, Histogram, HistogramVec, IntCounter, IntGauge};

/// The disaggregation stages of `per_stage_req_latency_seconds{stage}`.
#[derive(Debug, Clone, Copy)]
pub enum DisaggStage {
    /// Prefill side: the request's arrival until its decode peer connected for the KV.
    PrefillBootstrap,
    /// Prefill side: the peer connected until the last block was sent.
    PrefillTransferKvCache,
    /// Decode side: arrival until the prompt's blocks were reserved.
    DecodePrepare,
    /// Decode side: connecting to the prefill side and agreeing on the layout.
    DecodeBootstrap,
    /// Decode side: blocks reserved until the last one arrived.
    DecodeWaiting,
    /// Decode side: KV complete until the request joined the running batch.
    DecodeTransferred,
}

impl DisaggStage {
    pub const ALL: [DisaggStage; 6] = [
        DisaggStage::PrefillBootstrap,
        DisaggStage::PrefillTransferKvCache,
        DisaggStage::DecodePrepare,
        DisaggStage::DecodeBootstrap,
        DisaggStage::DecodeWaiting,
        DisaggStage::DecodeTransferred,
    ];

    /// The `stage` label.
    pub fn label(self) -> &'static str {
        match self {
            DisaggStage::PrefillBootstrap => "prefill_bootstrap",
            DisaggStage::PrefillTransferKvCache => "prefill_transfer_kv_cache",
            DisaggStage::DecodePrepare => "decode_prepare",
            DisaggStage::DecodeBootstrap => "decode_bootstrap",
            DisaggStage::DecodeWaiting => "decode_waiting",
            DisaggStage::DecodeTransferred => "decode_transferred",
        }
    }
}

/// Handles of the disaggregation families.
pub struct DisaggMetrics {
    pub prefill_prealloc_queue: IntGauge,
    pub prefill_inflight_queue: IntGauge,
    pub decode_prealloc_queue: IntGauge,
    pub decode_transfer_queue: IntGauge,
    pub bootstrap_failed: IntCounter,
    pub transfer_failed: IntCounter,
    pub speed_gb_s: Gauge,
    pub latency_ms: Gauge,
    pub bootstrap_ms: Gauge,
    pub alloc_ms: Gauge,
    pub total_mb: Gauge,
    pub pending_prealloc_token_usage: Gauge,
    stages: Vec<Histogram>,
}

impl DisaggMetrics {
    /// Register the families with the scheduler labels; `stages` is the registered
    /// `per_stage_req_latency_seconds`.
    pub(crate) fn new(
        f: super::Families<'_>,
        labels: &[(&str, &str)],
        stages: &HistogramVec,
    ) -> Result<Self, String> {
        let igauge = |name: &str, help: &str| f.igauge(name, help, labels);
        let gauge = |name: &str, help: &str| f.gauge(name, help, labels);
        let counter = |name: &str, help: &str| f.counter(name, help, labels);
        Ok(DisaggMetrics {
            prefill_prealloc_queue: igauge(
                "num_prefill_prealloc_queue_reqs",
                "Prefill side: requests waiting to be prefilled for a decode worker",
            )?,
            prefill_inflight_queue: igauge(
                "num_prefill_inflight_queue_reqs",
                "Prefill side: rooms whose KV is waiting for or being sent to a decode worker",
            )?,
            decode_prealloc_queue: igauge(
                "num_decode_prealloc_queue_reqs",
                "Decode side: requests waiting for their prompt's KV blocks to be reserved",
            )?,
            decode_transfer_queue: igauge(
                "num_decode_transfer_queue_reqs",
                "Decode side: requests waiting for their prompt's KV to arrive",
            )?,
            bootstrap_failed: counter(
                "num_bootstrap_failed_reqs_total",
                "Requests whose transfer connection could not be set up (or whose room expired unclaimed)",
            )?,
            transfer_failed: counter(
                "num_transfer_failed_reqs_total",
                "Requests whose KV transfer failed after it started",
            )?,
            speed_gb_s: gauge("kv_transfer_speed_gb_s", "Last KV transfer's speed, GB/s")?,
            latency_ms: gauge("kv_transfer_latency_ms", "Last KV transfer's duration, ms")?,
            bootstrap_ms: gauge(
                "kv_transfer_bootstrap_ms",
                "Last transfer connection's set-up (connect and layout check), ms",
            )?,
            alloc_ms: gauge(
                "kv_transfer_alloc_ms",
                "Last decode request's wait for its KV blocks to be reserved, ms",
            )?,
            total_mb: gauge("kv_transfer_total_mb", "Last KV transfer's size, MB")?,
            pending_prealloc_token_usage: gauge(
                "pending_prealloc_token_usage",
                "Prompt tokens of requests waiting for reservation / KV pool tokens",
            )?,
            stages: DisaggStage::ALL
                .iter()
                .map(|s| stages.with_label_values(&[s.label()]))
                .collect(),
        })
    }

    /// Observe one stage's duration.
    pub fn stage(&self, s: DisaggStage, d: Duration) {
        self.stages[s as usize].observe(d.as_secs_f64());
    }

    /// One finished transfer of `bytes` that took `took` from start to last block, `wire` of
    /// it moving block payloads (the rest waits for the prefill the transfer overlaps): the
    /// speed is the wire's.
    pub fn transfer(&self, bytes: usize, took: Duration, wire: Duration) {
        self.total_mb.set(bytes as f64 / 1e6);
        self.latency_ms.set(took.as_secs_f64() * 1e3);
        self.speed_gb_s
            .set(bytes as f64 / 1e9 / wire.as_secs_f64().max(1e-9));
    }
}
