//! `dynamo-frontend`: the OpenAI-compatible HTTP server. Flags → config → wiring.

#[path = "../../common/runtime_args.rs"]
mod runtime_args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use dynamo_llm::http::{self, AppState, FrontendMetrics, HttpConfig};
use dynamo_llm::models::ModelManager;
use dynamo_llm::router::{Router, RouterMode};
use dynamo_runtime::{CancellationToken, DistributedRuntime};

#[derive(Debug, Parser)]
#[command(
    name = "dynamo-frontend",
    version,
    about = "OpenAI-compatible HTTP frontend"
)]
struct Cli {
    /// HTTP port.
    #[arg(long, env = "DYN_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,
    /// HTTP listen address.
    #[arg(long, env = "DYN_HTTP_HOST", default_value = "0.0.0.0")]
    http_host: String,
    /// How to pick a worker: round-robin or random.
    #[arg(long, env = "DYN_ROUTER_MODE", default_value = "round-robin")]
    router_mode: RouterMode,
    /// Namespace whose workers this frontend serves.
    #[arg(long, env = "DYN_NAMESPACE", default_value = "dynamo")]
    namespace: String,
    /// Largest request body in MB (larger bodies get 413).
    #[arg(long, env = "DYN_HTTP_BODY_LIMIT_MB", default_value_t = 45)]
    body_limit_mb: usize,
    /// Always send a usage chunk at the end of streams.
    #[arg(long, env = "DYN_ENABLE_FORCE_INCLUDE_USAGE", default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    force_include_usage: bool,
    /// Model cache directory (default ~/.cache/dynamo/models).
    #[arg(long, env = "DYN_MODEL_CACHE")]
    model_cache: Option<PathBuf>,
    #[command(flatten)]
    rt: runtime_args::RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.rt.init_logging()?;
    let addr: SocketAddr = format!("{}:{}", cli.http_host, cli.http_port)
        .parse()
        .map_err(|e| anyhow::anyhow!("--http-host/--http-port: {e}"))?;
    anyhow::ensure!(cli.body_limit_mb > 0, "--body-limit-mb must be > 0");
    let cache = cli
        .model_cache
        .clone()
        .unwrap_or_else(|| dynamo_llm::model::default_cache_dir(std::env::var_os("HOME")));

    let drt = DistributedRuntime::connect(
        cli.rt.runtime_config(),
        dynamo_runtime::HealthState::new(std::time::Instant::now(), true, vec![]),
    )
    .await?;
    let registry = drt.metrics().clone();
    drt.metrics().track_span_export(telemetry.stats.clone())?;
    let metrics = FrontendMetrics::new(&registry);
    let instances = drt.watch_instances(&format!("instances.{}", cli.namespace));
    let models = ModelManager::start(instances, cache, metrics.clone());
    let state = Arc::new(AppState {
        drt: drt.clone(),
        models,
        router: Router::new(cli.router_mode),
        metrics,
        registry,
        config: HttpConfig {
            router_mode: cli.router_mode,
            body_limit: cli.body_limit_mb * 1024 * 1024,
            force_include_usage: cli.force_include_usage,
        },
    });
    let stop = CancellationToken::new();
    let (local, server) = http::serve(addr, state, stop.clone()).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} (--http-port / DYN_HTTP_PORT): {e}")
    })?;
    tracing::info!(%local, router_mode = ?cli.router_mode, "frontend listening");

    runtime_args::shutdown_signal().await;
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), server).await;
    drt.shutdown().await;
    telemetry.shutdown();
    Ok(())
}
