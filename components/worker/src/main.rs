//! `dynamo-worker`: loads the engine, serves it on `namespace/component/endpoint` of the
//! request plane, registers a model card for the frontend, publishes the engine's KV events
//! for the router, and serves its metrics on the system port. Flags → config → wiring.

mod card;
mod disagg_args;
mod engine_args;
mod handler;
mod hicache_args;
mod metrics_args;
mod pins;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use dynamo_common::model_fetch::resolve_or_fetch;
use dynamo_common::runtime_args::{shutdown_signal, RuntimeArgs};
use dynamo_common::system_args::SystemArgs;
use dynamo_common::worker_wiring::{self, ModelArgs};
use dynamo_engine::metrics::EngineType;
use dynamo_engine::trace::TraceConfig;
use dynamo_engine::Engine;
use dynamo_protocols::names::{defaults, worker as d};
use dynamo_protocols::DisaggregationMode;

#[derive(Debug, Parser)]
#[command(
    name = "dynamo-worker",
    version,
    about = "LLM worker: continuous-batching engine with a prefix-shared paged KV cache"
)]
struct Cli {
    #[command(flatten)]
    m: ModelArgs,
    #[command(flatten)]
    engine: engine_args::EngineArgs,
    #[command(flatten)]
    metrics: metrics_args::MetricsArgs,
    #[command(flatten)]
    disagg: disagg_args::DisaggArgs,
    /// Export the engine's own spans (service `sglang`: Bootstrap Room → Req → thread spans →
    /// stage slices) under each request's `handle_payload` span.
    #[arg(long)]
    enable_trace: bool,
    /// OTLP/gRPC endpoint of the engine's spans, `host:port`.
    #[arg(long, default_value = d::OTLP_TRACES_ENDPOINT)]
    otlp_traces_endpoint: String,
    #[command(flatten)]
    rt: RuntimeArgs,
    #[command(flatten)]
    system: SystemArgs,
    /// Test-only fault injection: the engine's scheduler panics after this many forward steps.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    fault_panic_after_steps: Option<u64>,
}

/// The engine's span export (service `sglang`) when `--enable-trace` is on.
fn engine_trace(cli: &Cli, served: &str) -> anyhow::Result<Option<TraceConfig>> {
    if !cli.enable_trace {
        return Ok(None);
    }
    let ep = &cli.otlp_traces_endpoint;
    if ep.contains("://") || !ep.contains(':') {
        anyhow::bail!("--otlp-traces-endpoint takes host:port (e.g. localhost:4317), got {ep:?}");
    }
    let (provider, _) =
        dynamo_telemetry::otel::provider(d::ENGINE_SERVICE_NAME, Some(&format!("http://{ep}")))?;
    Ok(Some(TraceConfig {
        provider,
        model: served.to_string(),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let telemetry = cli.rt.init_logging()?;
    let mode = cli.disagg.disaggregation_mode;
    if mode == DisaggregationMode::Prefill && cli.m.component == defaults::COMPONENT {
        cli.m.component = defaults::PREFILL_COMPONENT.to_string();
    }
    let room_timeout = cli.disagg.room_timeout()?;
    let bind = cli.disagg.bind()?;
    let id = cli.m.endpoint_id()?;
    let (spec, cache) = (cli.m.model.clone(), cli.m.cache_dir());
    let source = tokio::task::spawn_blocking(move || resolve_or_fetch(&spec, &cache))
        .await?
        .with_context(|| format!("--model {:?}", cli.m.model))?;
    let served = cli.m.served_name(|| {
        source
            .path()
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| cli.m.model.clone())
    });
    let mut cfg = cli.engine.config(source.path().to_path_buf())?;
    cfg.metrics = cli.metrics.config(&served)?.map(|mut m| {
        m.engine_type = match mode {
            DisaggregationMode::Null => EngineType::Unified,
            DisaggregationMode::Prefill => EngineType::Prefill,
            DisaggregationMode::Decode => EngineType::Decode,
        };
        m
    });
    cfg.trace = engine_trace(&cli, &served)?;
    #[cfg(feature = "fault-injection")]
    {
        cfg.panic_after_steps = cli.fault_panic_after_steps;
    }
    let tracer = cfg.trace.as_ref().map(|t| t.provider.clone());
    // The status server comes up first: /health says notready while the engine loads.
    let (drt, system_port) = worker_wiring::connect(&cli.rt, &cli.system).await?;
    drt.metrics().track_span_export(telemetry.stats.clone())?;
    let engine = tokio::task::spawn_blocking(move || Engine::load(cfg))
        .await?
        .with_context(|| format!("loading {}", source.path().display()))?;
    card::log_loaded(source.path(), &engine);
    let model_card = card::model_card(&served, source.path(), engine.info(), mode);
    let engine = Arc::new(engine);
    card::register_metrics(drt.metrics(), &id, &engine)?;
    let events = engine.take_kv_events();
    let role = match mode {
        DisaggregationMode::Null => handler::Role::Unified,
        DisaggregationMode::Prefill => {
            let advertise_host = cli.disagg.advertise_host();
            let server = dynamo_disagg::TransferServer::start(
                engine.clone(),
                dynamo_disagg::ServerConfig {
                    bind,
                    advertise_host: advertise_host.clone(),
                    model: served.clone(),
                    room_timeout,
                    handshake_timeout: std::time::Duration::from_secs(10),
                },
            )
            .await
            .with_context(|| format!("--disaggregation-bootstrap-port: cannot bind {bind}"))?;
            tracing::info!(bootstrap = %format!("{advertise_host}:{}", server.port()), "KV bootstrap server listening");
            handler::Role::Prefill(server)
        }
        DisaggregationMode::Decode => {
            handler::Role::Decode(dynamo_disagg::FetchConfig::new(served.clone()))
        }
    };
    let instance = drt
        .serve_endpoint(
            id.clone(),
            Arc::new(handler::EngineHandler {
                engine: engine.clone(),
                role,
            }),
            serde_json::to_value(&model_card)?,
            system_port,
        )
        .await?;
    if let Some(events) = events {
        let e = engine.clone();
        worker_wiring::spawn_kv_publisher(&drt, &cli.m, instance, events, move || {
            card::load_report(&e)
        });
    }
    drt.set_engine_routes(Arc::new(pins::PinRoutes(engine.clone())));
    pins::spawn_pin_subject(
        &drt,
        &cli.m.namespace,
        &cli.m.component,
        instance,
        engine.clone(),
    );
    tracing::info!(model = %served, endpoint = %id, disaggregation_mode = mode.as_str(), instance_id = %format!("{instance:x}"), "worker ready");

    let died = tokio::select! {
        _ = shutdown_signal() => None,
        reason = engine_death(&engine) => Some(reason),
    };
    if let Some(reason) = &died {
        // Fail health and leave discovery at once; the requests it held already ended.
        drt.health().set_failed(format!("engine stopped: {reason}"));
        tracing::error!(error = %reason, "the engine died; leaving discovery and exiting");
    }
    drt.shutdown().await;
    if let Some(p) = tracer {
        let _ = p.force_flush();
    }
    if let Some(reason) = died {
        telemetry.shutdown();
        anyhow::bail!("the engine died: {reason}");
    }
    tracing::info!("worker stopped");
    telemetry.shutdown();
    Ok(())
}

/// Resolves when the engine's scheduler thread has died, with why.
async fn engine_death(engine: &Engine) -> String {
    loop {
        if let Some(r) = engine.failure() {
            return r.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
