//! `dynamo-mocker`: a worker that registers like a real one (model card from a real model's
//! metadata, so the frontend preprocesses for real) but simulates the engine, and publishes KV
//! events and load for the KV router like a real worker. Flags → config → wiring.

mod card;
mod handler;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use dynamo_common::model_fetch::resolve_or_fetch;
use dynamo_common::runtime_args::{shutdown_signal, RuntimeArgs};
use dynamo_common::system_args::SystemArgs;
use dynamo_common::worker_wiring::{self, ModelArgs};
use dynamo_mocker::{MockEngine, MockerConfig};
use dynamo_preprocessor::model::ModelInfo;
use dynamo_protocols::names::mocker as mk;

#[derive(Debug, Parser)]
#[command(
    name = "dynamo-mocker",
    version,
    about = "Simulated LLM worker for routing and load tests"
)]
struct Cli {
    #[command(flatten)]
    m: ModelArgs,
    /// Divide all simulated times by this (100000 ≈ no simulated compute).
    #[arg(long, default_value_t = mk::SPEEDUP_RATIO)]
    speedup_ratio: f64,
    /// Most sequences running at once.
    #[arg(long, default_value_t = mk::MAX_NUM_SEQS)]
    max_num_seqs: usize,
    /// Most prompt tokens prefilled per iteration.
    #[arg(long, default_value_t = mk::MAX_NUM_BATCHED_TOKENS)]
    max_num_batched_tokens: usize,
    /// KV blocks in the simulated pool.
    #[arg(long, default_value_t = mk::NUM_GPU_BLOCKS)]
    num_gpu_blocks: usize,
    /// KV block size in tokens (the real engine's --page-size).
    #[arg(long, default_value_t = mk::BLOCK_SIZE)]
    block_size: usize,
    /// Override the model's context length.
    #[arg(long)]
    context_length: Option<usize>,
    #[command(flatten)]
    rt: RuntimeArgs,
    #[command(flatten)]
    system: SystemArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.rt.init_logging()?;
    anyhow::ensure!(cli.speedup_ratio > 0.0, "--speedup-ratio must be > 0");
    anyhow::ensure!(cli.block_size > 0, "--block-size must be > 0");
    anyhow::ensure!(cli.max_num_seqs > 0, "--max-num-seqs must be > 0");
    let id = cli.m.endpoint_id()?;

    let cache = cli.m.cache_dir();
    let spec = cli.m.model.clone();
    // Only the name and context length are needed: no tokenizer is built.
    let (source, info) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let src = resolve_or_fetch(&spec, &cache)?;
        let info = ModelInfo::read(&src)?;
        Ok((src, info))
    })
    .await?
    .with_context(|| format!("loading model {:?}", cli.m.model))?;
    let served = cli.m.served_name(|| info.name.clone());
    let cfg = MockerConfig {
        block_size: cli.block_size,
        num_blocks: cli.num_gpu_blocks,
        max_num_seqs: cli.max_num_seqs,
        max_num_batched_tokens: cli.max_num_batched_tokens,
        speedup_ratio: cli.speedup_ratio,
        context_length: cli.context_length.unwrap_or(info.context_length as usize),
        ..MockerConfig::default()
    };
    let card = card::model_card(&served, source.path(), &cfg);

    let (drt, system_port) = worker_wiring::connect(&cli.rt, &cli.system).await?;
    drt.metrics().track_span_export(telemetry.stats.clone())?;
    let engine = MockEngine::start(cfg);
    let events = engine.take_kv_events();
    let stats = engine.clone();
    let instance = drt
        .serve_endpoint(
            id.clone(),
            Arc::new(handler::MockHandler(engine)),
            serde_json::to_value(&card)?,
            system_port,
        )
        .await?;
    if let Some(events) = events {
        worker_wiring::spawn_kv_publisher(&drt, &cli.m, instance, events, move || {
            card::load_report(&stats)
        });
    }
    tracing::info!(model = %served, endpoint = %id, instance_id = %format!("{instance:x}"), "mocker ready");

    shutdown_signal().await;
    drt.shutdown().await;
    telemetry.shutdown();
    tracing::info!("mocker stopped");
    Ok(())
}
