//! The frontend's HTTP service (axum): OpenAI routes, `/health`, `/live`, `/metrics`; its
//! shared state; optional API keys on `/v1/*`; and its own accept loop: `TCP_NODELAY` (so
//! streamed chunks are not held back by Nagle's algorithm), a cap on open connections, and
//! header- and body-read timeouts, so slow or idle clients cannot hold the server.

pub mod admission;
mod choice_set;
mod dispatch;
mod fanout;
mod handlers;
mod jobs;
pub mod metrics;
mod migration;
mod pipeline;
mod token_pipe;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
    /// Keys accepted as `Authorization: Bearer <key>` on `/v1/*`; empty: no authentication.
    pub api_keys: Vec<String>,
    /// Longest wait for a request's headers, and for its body.
    pub header_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    /// Most open client connections; more are closed at once.
    pub max_connections: usize,
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
    let api = Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(handlers::list_models))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            handlers::require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(handlers::health))
        .route("/live", get(handlers::live))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            state.config.body_timeout,
        ))
        .with_state(state)
}

/// Bind `addr` and serve until `shutdown` fires (then let open requests finish). Returns the
/// bound address once listening.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let cfg = state.config.clone();
    let app = app(state);
    let handle = tokio::spawn(async move {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(cfg.header_timeout);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(cfg.max_connections.max(1)));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, max = cfg.max_connections, "connection limit reached; closing a new connection");
                drop(tcp);
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            let svc = hyper_util::service::TowerToHyperService::new(app.clone());
            // No upgrades are served (no websockets), so a plain HTTP/1 connection.
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        graceful.shutdown().await;
    });
    Ok((local, handle))
}
