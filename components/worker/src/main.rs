//! `dynamo-worker`: loads the engine, serves it on `namespace/component/endpoint` of the
//! request plane, registers a model card for the frontend, publishes the engine's KV events
//! for the router, and serves its metrics on the system port. Flags → config → wiring.

#[path = "../../common/kv_metrics.rs"]
mod kv_metrics;
mod metrics_args;
#[path = "../../common/runtime_args.rs"]
mod runtime_args;
#[path = "../../common/system_args.rs"]
mod system_args;
#[path = "../../common/worker_wiring.rs"]
mod worker_wiring;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use dynamo_engine::trace::{TraceConfig, TraceRequest};
use dynamo_engine::{Engine, EngineConfig, EngineError};
use dynamo_llm::model;
use dynamo_protocols::LoadReport;
use dynamo_protocols::{EngineOutput, ModelCard, PreprocessedRequest};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{Handler, HandlerStream, RequestContext};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
}

#[derive(Debug, Parser)]
#[command(
    name = "dynamo-worker",
    version,
    about = "LLM worker: continuous-batching engine with a prefix-shared paged KV cache"
)]
struct Cli {
    #[command(flatten)]
    m: worker_wiring::ModelArgs,
    /// Tokens per KV page; also the KV block size reported to the router.
    #[arg(long, default_value_t = 16)]
    page_size: usize,
    /// Most requests in the running batch.
    #[arg(long, default_value_t = 64)]
    max_running_requests: usize,
    /// KV pool capacity in tokens (default: what --kv-cache-memory-mb holds).
    #[arg(long)]
    max_total_tokens: Option<usize>,
    /// Memory budget of the KV pool in MiB, used when --max-total-tokens is not given.
    #[arg(long, default_value_t = 1024)]
    kv_cache_memory_mb: usize,
    /// Most prompt tokens prefilled per iteration; longer prompts are split into chunks
    /// that share iterations with decoding requests.
    #[arg(long, default_value_t = 512)]
    chunked_prefill_size: usize,
    /// Override the model's context length.
    #[arg(long)]
    context_length: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Device to run on (only `cpu` in this build).
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// Do not share KV blocks between requests with a common prefix.
    #[arg(long)]
    disable_radix_cache: bool,
    #[command(flatten)]
    metrics: metrics_args::MetricsArgs,
    /// Export the engine's own spans (service `sglang`: Bootstrap Room → Req → thread spans →
    /// stage slices) under each request's `handle_payload` span.
    #[arg(long)]
    enable_trace: bool,
    /// OTLP/gRPC endpoint of the engine's spans, `host:port`.
    #[arg(long, default_value = "localhost:4317")]
    otlp_traces_endpoint: String,
    #[command(flatten)]
    rt: runtime_args::RuntimeArgs,
    #[command(flatten)]
    system: system_args::SystemArgs,
}

struct EngineHandler(Arc<Engine>);

impl Handler<PreprocessedRequest, EngineOutput> for EngineHandler {
    fn generate(
        &self,
        req: PreprocessedRequest,
        ctx: RequestContext,
    ) -> HandlerStream<EngineOutput> {
        // The engine's request id is the trace id, its spans' parent this request's span.
        let trace = ctx
            .traceparent
            .as_deref()
            .and_then(|tp| dynamo_telemetry::TraceContext::parse(tp).ok())
            .map(|parent| TraceRequest {
                rid: parent.trace_id_hex(),
                parent,
            });
        match self.0.generate_traced(req, trace) {
            Ok(rx) => worker_wiring::channel_stream(rx),
            Err(e) => {
                let kind = match e {
                    EngineError::InvalidRequest(_) => ErrorKind::InvalidRequest,
                    _ => ErrorKind::Internal,
                };
                worker_wiring::error_stream(kind, e.to_string())
            }
        }
    }
}

fn engine_config(cli: &Cli, model: PathBuf) -> anyhow::Result<EngineConfig> {
    if cli.device == DeviceKind::Cuda {
        anyhow::bail!(
            "--device cuda is not available in this build yet (CUDA support arrives with the \
             `cuda` feature); use --device cpu"
        );
    }
    let mut cfg = EngineConfig::new(model);
    cfg.page_size = cli.page_size;
    cfg.max_running_requests = cli.max_running_requests;
    cfg.max_total_tokens = cli.max_total_tokens;
    cfg.kv_cache_memory_bytes = cli.kv_cache_memory_mb << 20;
    cfg.chunked_prefill_size = cli.chunked_prefill_size;
    cfg.context_length = cli.context_length;
    if let Some(t) = cli.threads {
        cfg.threads = t;
    }
    cfg.enable_prefix_caching = !cli.disable_radix_cache;
    cfg.kv_events = true;
    Ok(cfg)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.rt.init_logging()?;
    let id = cli.m.endpoint_id()?;
    let cache = cli.m.cache_dir();
    let spec = cli.m.model.clone();
    let source = tokio::task::spawn_blocking(move || model::resolve(&spec, &cache, true))
        .await?
        .with_context(|| format!("--model {:?}", cli.m.model))?;
    let served = cli.m.served_name(|| {
        source
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| cli.m.model.clone())
    });
    let mut cfg = engine_config(&cli, source.path().to_path_buf())?;
    cfg.metrics = cli.metrics.config(&served)?;
    let engine_tracer = if cli.enable_trace {
        let ep = &cli.otlp_traces_endpoint;
        if ep.contains("://") || !ep.contains(':') {
            anyhow::bail!(
                "--otlp-traces-endpoint takes host:port (e.g. localhost:4317), got {ep:?}"
            );
        }
        let (provider, _) =
            dynamo_telemetry::otel::provider("sglang", Some(&format!("http://{ep}")))?;
        cfg.trace = Some(TraceConfig {
            provider: provider.clone(),
            model: served.clone(),
        });
        Some(provider)
    } else {
        None
    };
    // The status server comes up first: /health says notready while the engine loads.
    let (drt, system_port) = worker_wiring::connect(&cli.rt, &cli.system).await?;
    drt.metrics().track_span_export(telemetry.stats.clone())?;
    let engine = tokio::task::spawn_blocking(move || Engine::load(cfg))
        .await?
        .with_context(|| format!("loading {}", source.path().display()))?;
    let info = engine.info().clone();
    tracing::info!(
        model = %source.path().display(),
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
    let card = ModelCard {
        served_model_name: served.clone(),
        source: source.path().display().to_string(),
        context_length: info.context_length as u32,
        kv_cache_block_size: info.page_size as u32,
        total_kv_blocks: info.kv_blocks as u64,
        max_num_seqs: info.max_running_requests as u64,
        max_num_batched_tokens: info.chunked_prefill_size as u64,
    };

    let engine = Arc::new(engine);
    let e = engine.clone();
    kv_metrics::register(
        drt.metrics(),
        &id,
        info.load_time.as_secs_f64(),
        move || {
            let p = e.stats().pool;
            kv_metrics::KvSnapshot {
                total_blocks: p.total,
                used_blocks: p.shared_in_use + p.private_in_use,
            }
        },
    )?;
    if engine.metrics().is_some() {
        let e = engine.clone();
        drt.metrics()
            .add_text_source(move || e.metrics().map(|m| m.render()).unwrap_or_default());
    }
    let events = engine.take_kv_events();
    let instance = drt
        .serve_endpoint(
            id.clone(),
            Arc::new(EngineHandler(engine.clone())),
            serde_json::to_value(&card)?,
            system_port,
        )
        .await?;
    if let Some(events) = events {
        let e = engine.clone();
        let total = info.kv_blocks as u64;
        worker_wiring::spawn_kv_publisher(&drt, &cli.m, instance, events, move || {
            let s = e.stats();
            LoadReport {
                active_blocks: (s.pool.shared_in_use + s.pool.private_in_use) as u64,
                total_blocks: total,
                running: s.running as u64,
                waiting: s.waiting as u64,
                ..LoadReport::default()
            }
        });
    }
    tracing::info!(model = %served, endpoint = %id, instance_id = %format!("{instance:x}"), "worker ready");

    runtime_args::shutdown_signal().await;
    drt.shutdown().await;
    if let Some(p) = engine_tracer {
        let _ = p.force_flush();
    }
    telemetry.shutdown();
    tracing::info!("worker stopped");
    Ok(())
}
