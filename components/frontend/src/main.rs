//! `dynamo-frontend`: the OpenAI-compatible HTTP server. Flags → config → wiring.

#[path = "../../common/runtime_args.rs"]
mod runtime_args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use dynamo_llm::http::{self, AppState, FrontendMetrics, HttpConfig, KvRouting};
use dynamo_llm::kv_router::{KvRouterConfig, RouterMetrics};
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
    /// How to pick a worker: round-robin, random, or kv (KV-cache-aware).
    #[arg(long, env = "DYN_ROUTER_MODE", default_value = "round-robin")]
    router_mode: RouterMode,
    #[command(flatten)]
    kv: KvArgs,
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

/// KV router flags (used with `--router-mode kv`).
#[derive(Debug, clap::Args)]
struct KvArgs {
    /// Weight of the blocks still to prefill against the worker's active blocks in the cost
    /// (higher favours cache hits and TTFT; 0 ignores the cache and balances load).
    #[arg(
        long,
        alias = "router-kv-overlap-score-weight",
        env = "DYN_KV_OVERLAP_SCORE_WEIGHT",
        default_value_t = 1.0
    )]
    kv_overlap_score_weight: f64,
    /// Softmax temperature of the worker choice (0: always the lowest cost).
    #[arg(long, env = "DYN_ROUTER_TEMPERATURE", default_value_t = 0.0)]
    router_temperature: f64,
    /// Follow the workers' KV events (default).
    #[arg(long, env = "DYN_KV_EVENTS", default_value = "true", overrides_with = "no_kv_events",
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1,
          default_missing_value = "true")]
    kv_events: bool,
    /// Approximate mode: no KV events; the router remembers where it sent each prompt's
    /// blocks for --router-ttl-secs.
    #[arg(long, overrides_with = "kv_events")]
    no_kv_events: bool,
    /// Lifetime of a routed prompt's blocks in approximate mode, in seconds.
    #[arg(long, default_value_t = 120.0)]
    router_ttl_secs: f64,
    /// KV block size in tokens (default: each worker's model card; must equal the engine's
    /// page size or no overlap is ever found).
    #[arg(long, env = "DYN_KV_CACHE_BLOCK_SIZE")]
    kv_cache_block_size: Option<usize>,
    /// Start with empty router state. This router keeps no state across restarts (its index
    /// is rebuilt from the workers at start), so this is always the behaviour; the flag is
    /// accepted for Dynamo launch-script compatibility.
    #[arg(long)]
    router_reset_states: bool,
}

impl KvArgs {
    fn config(&self) -> anyhow::Result<KvRouterConfig> {
        let w = self.kv_overlap_score_weight;
        anyhow::ensure!(
            w.is_finite() && w >= 0.0,
            "--kv-overlap-score-weight must be a number >= 0, got {w}"
        );
        let t = self.router_temperature;
        anyhow::ensure!(
            t.is_finite() && t >= 0.0,
            "--router-temperature must be a number >= 0, got {t}"
        );
        let ttl = self.router_ttl_secs;
        anyhow::ensure!(
            ttl.is_finite() && ttl > 0.0,
            "--router-ttl-secs must be > 0, got {ttl}"
        );
        if let Some(b) = self.kv_cache_block_size {
            anyhow::ensure!(b > 0, "--kv-cache-block-size must be > 0");
        }
        Ok(KvRouterConfig {
            overlap_weight: w,
            temperature: t,
            kv_events: self.kv_events && !self.no_kv_events,
            block_size: self.kv_cache_block_size,
            ttl: std::time::Duration::from_secs_f64(ttl),
            ..KvRouterConfig::default()
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.rt.init_logging()?;
    let addr: SocketAddr = format!("{}:{}", cli.http_host, cli.http_port)
        .parse()
        .map_err(|e| anyhow::anyhow!("--http-host/--http-port: {e}"))?;
    anyhow::ensure!(cli.body_limit_mb > 0, "--body-limit-mb must be > 0");
    let kv_config = cli.kv.config()?;
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
    let kv = (cli.router_mode == RouterMode::Kv).then(|| {
        // The frontend has no discovery instance; a random id labels its router metrics.
        let router_id = format!("{:016x}", rand_id());
        tracing::info!(%router_id, config = ?kv_config, "KV routing on");
        KvRouting::new(kv_config, RouterMetrics::new(&registry, &router_id))
    });
    let state = Arc::new(AppState {
        drt: drt.clone(),
        models,
        router: Router::new(cli.router_mode),
        kv,
        metrics,
        registry,
        config: HttpConfig {
            router_mode: cli.router_mode,
            body_limit: cli.body_limit_mb * 1024 * 1024,
            force_include_usage: cli.force_include_usage,
        },
    });
    let stop = CancellationToken::new();
    let (local, server) = http::serve(addr, state.clone(), stop.clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} (--http-port / DYN_HTTP_PORT): {e}")
        })?;
    tracing::info!(%local, router_mode = ?cli.router_mode, "frontend listening");
    if state.kv.is_some() {
        tokio::spawn(start_kv_routers(state.clone()));
    }

    runtime_args::shutdown_signal().await;
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), server).await;
    drt.shutdown().await;
    telemetry.shutdown();
    Ok(())
}

/// Start each worker component's KV router as soon as discovery shows it, so its index is
/// filled before the first request.
async fn start_kv_routers(state: Arc<AppState>) {
    let mut rx = state.models.instances_rx();
    loop {
        let comps: std::collections::HashSet<(String, String)> = rx
            .borrow_and_update()
            .values()
            .filter(|r| r.card.get("kv_cache_block_size").is_some())
            .map(|r| (r.namespace.clone(), r.component.clone()))
            .collect();
        if let Some(kv) = &state.kv {
            for (ns, c) in comps {
                kv.router(&state.drt, &state.models, &ns, &c).await;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}
