//! `dynamo-frontend`: the OpenAI-compatible HTTP server. Flags → config → wiring.

mod kv_args;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use dynamo_common::model_fetch::resolve_from_wire;
use dynamo_common::runtime_args::{self, RuntimeArgs};
use dynamo_kv_router::RouterMetrics;
use dynamo_llm::http::{self, AppState, FrontendMetrics, HttpConfig, KvRouting};
use dynamo_llm::models::{ModelManager, ModelResolver};
use dynamo_llm::router::{Router, RouterMode};
use dynamo_preprocessor::model::default_cache_dir;
use dynamo_protocols::names::{defaults, env};
use dynamo_runtime::{CancellationToken, DistributedRuntime};

#[derive(Debug, Parser)]
#[command(
    name = "dynamo-frontend",
    version,
    about = "OpenAI-compatible HTTP frontend"
)]
struct Cli {
    /// HTTP port.
    #[arg(long, env = env::DYN_HTTP_PORT, default_value_t = defaults::HTTP_PORT)]
    http_port: u16,
    /// HTTP listen address.
    #[arg(long, env = env::DYN_HTTP_HOST, default_value = defaults::HTTP_HOST)]
    http_host: String,
    /// How to pick a worker: round-robin, random, or kv (KV-cache-aware).
    #[arg(long, env = env::DYN_ROUTER_MODE, default_value = defaults::ROUTER_MODE)]
    router_mode: RouterMode,
    #[command(flatten)]
    kv: kv_args::KvArgs,
    /// Namespace whose workers this frontend serves.
    #[arg(long, env = env::DYN_NAMESPACE, default_value = defaults::NAMESPACE)]
    namespace: String,
    /// Largest request body in MB (larger bodies get 413).
    #[arg(long, env = env::DYN_HTTP_BODY_LIMIT_MB, default_value_t = defaults::HTTP_BODY_LIMIT_MB)]
    body_limit_mb: usize,
    /// Always send a usage chunk at the end of streams.
    #[arg(long, env = env::DYN_ENABLE_FORCE_INCLUDE_USAGE, default_value = "false",
          value_parser = clap::builder::BoolishValueParser::new())]
    force_include_usage: bool,
    /// Most requests per model in flight at once (handler start to last byte); past it a
    /// request is shed at once with the overload status and `Retry-After`. 0: no limit.
    #[arg(long, env = env::DYN_HTTP_MAX_INFLIGHT_REQUESTS, default_value_t = 0)]
    max_inflight_requests: usize,
    /// Status of shed requests: 503 (Service Unavailable), 429 (Too Many Requests) or 529.
    #[arg(long, env = env::DYN_HTTP_OVERLOAD_STATUS_CODE, default_value_t = 503,
          value_parser = overload_status)]
    overload_status_code: u16,
    /// Seconds a request may take in all; past it the request is cancelled on its worker and
    /// answered 504 (or its stream ends with an error event). 0: no deadline.
    #[arg(long, env = env::DYN_HTTP_REQUEST_TIMEOUT, default_value_t = 0)]
    request_timeout: u64,
    /// API keys clients must send as `Authorization: Bearer <key>` on /v1/* (comma-separated;
    /// /health, /live and /metrics stay open). Unset: no authentication.
    #[arg(long, env = env::DYN_HTTP_API_KEY, value_delimiter = ',', hide_env_values = true)]
    api_key: Vec<String>,
    /// Seconds a client may take to send a request's headers (slow clients are closed).
    #[arg(long, env = env::DYN_HTTP_HEADER_TIMEOUT, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, env = env::DYN_HTTP_BODY_TIMEOUT, default_value_t = 60)]
    body_timeout: u64,
    /// Most open client connections; further ones are closed at once.
    #[arg(long, env = env::DYN_HTTP_MAX_CONNECTIONS, default_value_t = 4096)]
    max_connections: usize,
    /// Times a request whose worker is lost mid-stream is moved to another worker.
    #[arg(long, env = env::DYN_MIGRATION_LIMIT, default_value_t = defaults::MIGRATION_LIMIT)]
    migration_limit: u32,
    /// A directory whose models workers may name by path in their model cards (besides the
    /// model cache); repeatable. Paths from discovery elsewhere are refused.
    #[arg(long)]
    allowed_model_dir: Vec<PathBuf>,
    /// Model cache directory (default ~/.cache/dynamo/models).
    #[arg(long, env = env::DYN_MODEL_CACHE)]
    model_cache: Option<PathBuf>,
    #[command(flatten)]
    rt: RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = cli.rt.init_logging()?;
    let addr: SocketAddr = format!("{}:{}", cli.http_host, cli.http_port)
        .parse()
        .map_err(|e| anyhow::anyhow!("--http-host/--http-port: {e}"))?;
    anyhow::ensure!(cli.body_limit_mb > 0, "--body-limit-mb must be > 0");
    anyhow::ensure!(cli.header_timeout > 0, "--header-timeout must be > 0");
    anyhow::ensure!(cli.body_timeout > 0, "--body-timeout must be > 0");
    anyhow::ensure!(cli.max_connections > 0, "--max-connections must be > 0");
    let kv_config = cli.kv.config()?;
    let cache = cli
        .model_cache
        .clone()
        .unwrap_or_else(|| default_cache_dir(std::env::var_os("HOME")));

    let drt = DistributedRuntime::connect(
        cli.rt.runtime_config(),
        dynamo_runtime::HealthState::new(std::time::Instant::now(), true, vec![]),
    )
    .await?;
    let registry = drt.metrics().clone();
    drt.metrics().track_span_export(telemetry.stats.clone())?;
    let metrics = FrontendMetrics::new(&registry);
    let instances = drt.watch_instances(&format!("instances.{}", cli.namespace));
    let allowed = cli.allowed_model_dir.clone();
    let resolve: ModelResolver = Arc::new(move |spec: &str| {
        resolve_from_wire(spec, &cache, &allowed).map_err(|e| format!("{e:#}").into())
    });
    let models = ModelManager::start(instances, resolve, metrics.clone());
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
            request_timeout: (cli.request_timeout > 0)
                .then(|| std::time::Duration::from_secs(cli.request_timeout)),
            migration_limit: cli.migration_limit,
            api_keys: cli
                .api_key
                .iter()
                .filter(|k| !k.is_empty())
                .cloned()
                .collect(),
            header_timeout: std::time::Duration::from_secs(cli.header_timeout),
            body_timeout: std::time::Duration::from_secs(cli.body_timeout),
            max_connections: cli.max_connections,
        },
        admission: http::admission::InflightLimiter::new(
            cli.max_inflight_requests,
            cli.overload_status_code,
        ),
    });
    let stop = CancellationToken::new();
    let (local, server) = http::serve(addr, state.clone(), stop.clone())
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} (--http-port / DYN_HTTP_PORT): {e}")
        })?;
    tracing::info!(%local, router_mode = ?cli.router_mode, "frontend listening");
    tokio::spawn(http::start_kv_routers(state.clone()));

    runtime_args::shutdown_signal().await;
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), server).await;
    drt.shutdown().await;
    telemetry.shutdown();
    Ok(())
}

fn overload_status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(c @ (503 | 429 | 529)) => Ok(c),
        _ => Err(format!("{s:?} is not one of 503, 429, 529")),
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
