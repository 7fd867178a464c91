//! The frontend's HTTP service (axum): OpenAI routes, `/health`, `/live`, `/metrics`; its
//! shared state; and serving with `TCP_NODELAY` so streamed chunks are not held back by
//! Nagle's algorithm.

pub mod admission;
mod dispatch;
mod handlers;
pub mod metrics;
mod migration;
mod pipeline;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use dynamo_runtime::{CancellationToken, DistributedRuntime, MetricsRegistry};

use crate::models::ModelManager;
use crate::router::{Router as WorkerRouter, RouterMode};
use dynamo_kv_router::{KvRouter, KvRouterConfig, RouterMetrics};
pub use metrics::FrontendMetrics;

/// Frontend settings (from flags).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub router_mode: RouterMode,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Always send a usage chunk on streams (`DYN_ENABLE_FORCE_INCLUDE_USAGE`).
    pub force_include_usage: bool,
    /// Whole-request deadline: past it the request is cancelled on its worker and answered
    /// 504 (or ended with an error event). None: no deadline.
    pub request_timeout: Option<std::time::Duration>,
    /// Worker failures a request may be moved past (`--migration-limit`).
    pub migration_limit: u32,
}

/// The KV routers of a frontend in `--router-mode kv`: one per worker component, started when
/// the first request for that component arrives.
pub struct KvRouting {
    pub config: KvRouterConfig,
    pub metrics: RouterMetrics,
    /// One cell per component: a router being started only holds up requests for its own
    /// component (a start waits on NATS, which may be down), never the map.
    routers: std::sync::Mutex<RouterCells>,
}

type RouterCells =
    std::collections::HashMap<(String, String), Arc<tokio::sync::OnceCell<Arc<KvRouter>>>>;

impl KvRouting {
    pub fn new(config: KvRouterConfig, metrics: RouterMetrics) -> Self {
        KvRouting {
            config,
            metrics,
            routers: Default::default(),
        }
    }

    /// The router of `namespace.component`, started on first use (the first request waits
    /// until its event subscriptions are in place).
    pub async fn router(
        &self,
        drt: &DistributedRuntime,
        models: &ModelManager,
        namespace: &str,
        component: &str,
    ) -> Arc<KvRouter> {
        let key = (namespace.to_string(), component.to_string());
        let cell = self.routers.lock().unwrap().entry(key).or_default().clone();
        cell.get_or_init(|| async {
            tracing::info!(
                namespace,
                component,
                kv_events = self.config.kv_events,
                "starting KV router"
            );
            // Prefill workers register under their own component; their gauges say so.
            let metrics = if component == dynamo_protocols::names::defaults::PREFILL_COMPONENT {
                self.metrics.for_prefill()
            } else {
                self.metrics.clone()
            };
            KvRouter::start(
                drt.events(),
                namespace,
                component,
                models.instances_rx(),
                self.config.clone(),
                metrics,
            )
            .await
        })
        .await
        .clone()
    }
}

/// Start each worker component's KV router as soon as discovery shows it (so its index is
/// filled before the first request); runs until discovery ends. Nothing to do without
/// `--router-mode kv`.
pub async fn start_kv_routers(state: Arc<AppState>) {
    let Some(kv) = &state.kv else { return };
    let mut rx = state.models.instances_rx();
    loop {
        let comps: std::collections::HashSet<(String, String)> = rx
            .borrow_and_update()
            .values()
            .filter(|r| r.card.get("kv_cache_block_size").is_some())
            .map(|r| (r.namespace.clone(), r.component.clone()))
            .collect();
        for (ns, c) in comps {
            kv.router(&state.drt, &state.models, &ns, &c).await;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// State shared by all handlers.
pub struct AppState {
    pub drt: DistributedRuntime,
    pub models: ModelManager,
    pub router: WorkerRouter,
    /// Present in `--router-mode kv`.
    pub kv: Option<KvRouting>,
    pub metrics: FrontendMetrics,
    pub registry: MetricsRegistry,
    pub config: HttpConfig,
    /// `--max-inflight-requests` per model.
    pub admission: admission::InflightLimiter,
}

/// Build the axum router.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::list_models))
        .route("/health", get(handlers::health))
        .route("/live", get(handlers::live))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Bind `addr` and serve until `shutdown` fires. Returns the bound address once listening.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let app = app(state);
    let handle = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((local, handle))
}
