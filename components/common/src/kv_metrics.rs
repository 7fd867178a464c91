//! A worker's KV gauges on the runtime registry: `dynamo_component_total_blocks`,
//! `dynamo_component_gpu_cache_usage_percent` (a 0–1 fraction, as in Dynamo) and
//! `dynamo_component_model_load_time_seconds`, labelled with the worker's endpoint and read
//! from the engine on every scrape.

use dynamo_protocols::names::{component as n, labels};
use dynamo_runtime::{EndpointId, MetricsRegistry};
use prometheus::{Gauge, IntGauge, Opts};

/// KV occupancy as the engine reports it.
pub struct KvSnapshot {
    pub total_blocks: usize,
    pub used_blocks: usize,
}

/// Register the gauges of `id` and refresh them from `read` before every scrape.
pub fn register(
    reg: &MetricsRegistry,
    id: &EndpointId,
    load_seconds: f64,
    read: impl Fn() -> KvSnapshot + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let opts = |name: &str, help: &str| {
        Opts::new(name, help)
            .const_label(labels::NAMESPACE, id.namespace.as_str())
            .const_label(labels::COMPONENT, id.component.as_str())
            .const_label(labels::ENDPOINT, id.endpoint.as_str())
    };
    let total = IntGauge::with_opts(opts(n::TOTAL_BLOCKS, "KV cache blocks of the worker"))?;
    let usage = Gauge::with_opts(opts(
        n::GPU_CACHE_USAGE_PERCENT,
        "Fraction of the worker's KV cache blocks held by requests, 0.0-1.0",
    ))?;
    let load = Gauge::with_opts(opts(
        n::MODEL_LOAD_TIME_SECONDS,
        "Seconds the worker took to load its model",
    ))?;
    reg.register(Box::new(total.clone()))?;
    reg.register(Box::new(usage.clone()))?;
    reg.register(Box::new(load.clone()))?;
    load.set(load_seconds);
    reg.on_scrape(move || {
        let s = read();
        total.set(s.total_blocks as i64);
        usage.set(s.used_blocks as f64 / s.total_blocks.max(1) as f64);
    });
    Ok(())
}
