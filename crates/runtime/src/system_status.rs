//! The system status server (`DYN_SYSTEM_PORT`): `/metrics` (Prometheus text), `/health` and
//! `/live` (JSON; 503 while not ready, 200 once every served endpoint is ready), and the
//! engine's routes under `POST /engine/{route}` (`engine_routes`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::RuntimeError;
use crate::metrics::MetricsRegistry;

/// Readiness of this process's endpoints.
#[derive(Clone)]
pub struct HealthState {
    inner: Arc<Mutex<HealthInner>>,
    start: Instant,
    /// Cleared while the NATS connection is down: the process cannot take requests then.
    nats: Arc<std::sync::atomic::AtomicBool>,
}

struct HealthInner {
    endpoints: BTreeMap<String, bool>,
    starting_ready: bool,
    /// Endpoint names that must be ready; empty means all registered ones.
    required: Vec<String>,
    /// Why the process can no longer serve (its engine died), once it cannot.
    failed: Option<String>,
}

#[derive(Serialize)]
struct Uptime {
    secs: u64,
    nanos: u32,
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    endpoints: BTreeMap<String, &'static str>,
    uptime: Uptime,
}

impl HealthState {
    /// `starting_ready` mirrors `DYN_SYSTEM_STARTING_HEALTH_STATUS=ready`; `required` mirrors
    /// `DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS`.
    pub fn new(start: Instant, starting_ready: bool, required: Vec<String>) -> Self {
        HealthState {
            inner: Arc::new(Mutex::new(HealthInner {
                endpoints: BTreeMap::new(),
                starting_ready,
                required,
                failed: None,
            })),
            start,
            nats: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// The flag the NATS connection's events keep current.
    pub fn nats_connected(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.nats.clone()
    }

    /// The process can no longer serve (for good): health fails from now on.
    pub fn set_failed(&self, reason: impl Into<String>) {
        self.inner.lock().unwrap().failed = Some(reason.into());
    }

    /// Why the process cannot serve, if it cannot for good.
    pub fn failed(&self) -> Option<String> {
        self.inner.lock().unwrap().failed.clone()
    }

    /// Mark an endpoint as (not) serving.
    pub fn set_endpoint(&self, name: &str, ready: bool) {
        self.inner
            .lock()
            .unwrap()
            .endpoints
            .insert(name.to_string(), ready);
    }

    /// Whether the process reports ready.
    pub fn is_ready(&self) -> bool {
        if !self.nats.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let g = self.inner.lock().unwrap();
        if g.failed.is_some() {
            return false;
        }
        if g.endpoints.is_empty() {
            return g.starting_ready;
        }
        if g.required.is_empty() {
            g.endpoints.values().all(|r| *r)
        } else {
            g.required
                .iter()
                .all(|n| g.endpoints.get(n).copied().unwrap_or(false))
        }
    }

    fn body(&self) -> (bool, HealthBody) {
        let ready = self.is_ready();
        let g = self.inner.lock().unwrap();
        let up = self.start.elapsed();
        let endpoints = g
            .endpoints
            .iter()
            .map(|(k, v)| (k.clone(), if *v { "ready" } else { "notready" }))
            .collect();
        (
            ready,
            HealthBody {
                status: if ready { "ready" } else { "notready" },
                endpoints,
                uptime: Uptime {
                    secs: up.as_secs(),
                    nanos: up.subsec_nanos(),
                },
            },
        )
    }
}

#[derive(Clone)]
struct AppState {
    health: HealthState,
    metrics: MetricsRegistry,
}

async fn health(State(s): State<AppState>) -> Response {
    let (ready, body) = s.health.body();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let json = serde_json::to_string(&body).expect("serializable");
    (code, [(header::CONTENT_TYPE, "application/json")], json).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Paths of the status server (overridable like `DYN_SYSTEM_HEALTH_PATH`).
#[derive(Debug, Clone)]
pub struct StatusPaths {
    pub health: String,
    pub live: String,
}

impl Default for StatusPaths {
    fn default() -> Self {
        StatusPaths {
            health: "/health".into(),
            live: "/live".into(),
        }
    }
}

/// Bind the status server and serve until `shutdown` fires. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    paths: StatusPaths,
    health_state: HealthState,
    registry: MetricsRegistry,
    engine: crate::engine_routes::EngineRouteSlot,
    shutdown: CancellationToken,
) -> Result<SocketAddr, RuntimeError> {
    let engine_routes = Router::new()
        .route(
            "/engine/{route}",
            axum::routing::post(crate::engine_routes::handle),
        )
        .with_state(engine);
    let app = Router::new()
        .route(&paths.health, get(health))
        .route(&paths.live, get(health))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            health: health_state,
            metrics: registry,
        })
        .merge(engine_routes);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| RuntimeError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let local = listener.local_addr().map_err(|e| RuntimeError::Bind {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "system status server failed");
        }
    });
    tracing::info!(%local, "system status server listening");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_rules() {
        let h = HealthState::new(Instant::now(), false, vec![]);
        assert!(!h.is_ready(), "no endpoints yet: not ready");
        h.set_endpoint("generate", false);
        assert!(!h.is_ready());
        h.set_endpoint("generate", true);
        assert!(h.is_ready());
        let (_, body) = h.body();
        assert_eq!(body.status, "ready");
        assert_eq!(body.endpoints["generate"], "ready");

        let starting = HealthState::new(Instant::now(), true, vec![]);
        assert!(starting.is_ready());

        let req = HealthState::new(Instant::now(), false, vec!["generate".into()]);
        req.set_endpoint("load_metrics", true);
        assert!(!req.is_ready());
        req.set_endpoint("generate", true);
        assert!(req.is_ready());
    }
}
