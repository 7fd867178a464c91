//! `POST /engine/{route}` on the system status server: JSON calls into the process's engine
//! (e.g. `pin_blocks`), which the worker registers once its engine is loaded. Before that
//! every route answers 503; an unknown route 404; a bad body 400; all errors as an
//! OpenAI-style JSON error.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// Why an engine route failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such route.
    NotFound,
    /// The body is not what the route takes.
    BadRequest(String),
    /// The engine cannot answer now.
    Unavailable(String),
}

/// What an engine route answers.
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<Value, RouteError>> + Send>>;

/// The engine's routes.
pub trait EngineRoutes: Send + Sync {
    /// Answer `POST /engine/{route}` with JSON `body`.
    fn call(&self, route: &str, body: Value) -> RouteFuture;
}

/// Where the engine's routes are registered (empty until the engine is loaded).
#[derive(Clone, Default)]
pub struct EngineRouteSlot(Arc<OnceLock<Arc<dyn EngineRoutes>>>);

impl EngineRouteSlot {
    /// Register the routes; false when some were registered already.
    pub fn set(&self, routes: Arc<dyn EngineRoutes>) -> bool {
        self.0.set(routes).is_ok()
    }
}

fn error(code: StatusCode, kind: &str, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "code": code.as_u16()}});
    (code, Json(body)).into_response()
}

pub(crate) async fn handle(
    State(slot): State<EngineRouteSlot>,
    Path(route): Path<String>,
    body: Bytes,
) -> Response {
    let Some(routes) = slot.0.get().cloned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the engine is not loaded yet".into(),
        );
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequestError",
                    format!("the body is not JSON: {e}"),
                )
            }
        }
    };
    match routes.call(&route, body).await {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(RouteError::NotFound) => error(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            format!("no engine route {route:?}"),
        ),
        Err(RouteError::BadRequest(m)) => error(StatusCode::BAD_REQUEST, "BadRequestError", m),
        Err(RouteError::Unavailable(m)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m)
        }
    }
}
