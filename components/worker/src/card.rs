//! What the worker tells the rest of the system about its engine: the model card registered
//! in discovery, the load reports the KV router reads, the `dynamo_component_*` KV gauges and
//! the engine's `sglang:` metrics on the system port, and the startup log line.

use std::path::Path;
use std::sync::Arc;

use dynamo_common::kv_metrics;
use dynamo_engine::{Engine, EngineInfo};
use dynamo_protocols::{LoadReport, ModelCard};
use dynamo_runtime::{EndpointId, MetricsRegistry};

/// The card the frontend loads the model from and sizes its metrics with.
pub fn model_card(
    served: &str,
    source: &Path,
    info: &EngineInfo,
    mode: dynamo_protocols::DisaggregationMode,
) -> ModelCard {
    ModelCard {
        served_model_name: served.to_string(),
        source: source.display().to_string(),
        context_length: info.context_length as u32,
        kv_cache_block_size: info.page_size as u32,
        total_kv_blocks: info.kv_blocks as u64,
        max_num_seqs: info.max_running_requests as u64,
        max_num_batched_tokens: info.chunked_prefill_size as u64,
        disaggregation_mode: mode,
        model_id: {
            let m = &info.model;
            format!(
                "{} hidden={} layers={} heads={}/{} head_dim={} vocab={} context={} block={}",
                m.architecture,
                m.hidden,
                m.layers,
                m.heads,
                m.kv_heads,
                m.head_dim,
                m.vocab,
                info.context_length,
                info.page_size
            )
        },
        logprobs: true,
        parallel_sampling: true,
    }
}

/// The engine's load as the KV router's cost function reads it.
pub fn load_report(engine: &Engine) -> LoadReport {
    let s = engine.stats();
    LoadReport {
        active_blocks: (s.pool.shared_in_use + s.pool.private_in_use) as u64,
        total_blocks: engine.info().kv_blocks as u64,
        running: s.running as u64,
        waiting: s.waiting as u64,
        ..LoadReport::default()
    }
}

/// Register the KV gauges of `id` and, with `--enable-metrics`, the engine's `sglang:`
/// families, both read on every scrape.
pub fn register_metrics(
    reg: &MetricsRegistry,
    id: &EndpointId,
    engine: &Arc<Engine>,
) -> anyhow::Result<()> {
    let e = engine.clone();
    kv_metrics::register(reg, id, engine.info().load_time.as_secs_f64(), move || {
        let p = e.stats().pool;
        kv_metrics::KvSnapshot {
            total_blocks: p.total,
            used_blocks: p.shared_in_use + p.private_in_use,
        }
    })?;
    if engine.metrics().is_some() {
        let e = engine.clone();
        reg.add_text_source(move || e.metrics().map(|m| m.render()).unwrap_or_default());
    }
    Ok(())
}

/// One log line with what was loaded.
pub fn log_loaded(source: &Path, engine: &Engine) {
    let info = engine.info();
    tracing::info!(
        model = %source.display(),
        params = info.weights.params,
        formats = %info.weights.formats(),
        weight_mb = info.weights.bytes_per_token / (1 << 20),
        layers = info.model.layers,
        hidden = info.model.hidden,
        kv_tokens = info.max_total_tokens,
        kv_blocks = info.kv_blocks,
        page_size = info.page_size,
        kv_mb = info.kv_bytes / (1 << 20),
        context_length = info.context_length,
        threads = info.threads,
        kernels = ?info.isa,
        metrics = engine.metrics().is_some(),
        load_s = info.load_time.as_secs_f64(),
        "engine loaded"
    );
}
