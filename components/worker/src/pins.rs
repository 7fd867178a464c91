//! Pinning KV blocks on this worker from outside: `POST /engine/pin_blocks` and
//! `/engine/unpin_blocks` on the system port (JSON `{"block_hashes": [...], "ttl_secs": N}` →
//! `{"pinned": n}` / `{"unpinned": n}`) and the same as [`PinRequest`]s on the instance's
//! request-plane pin subject.

use std::sync::Arc;
use std::time::Duration;

use dynamo_engine::pins::pin_ttl;
use dynamo_engine::Engine;
use dynamo_protocols::kv_events::{kv_pin_subject, PinReply, PinRequest};
use dynamo_runtime::{DistributedRuntime, EngineRoutes, RouteError, RouteFuture};
use serde_json::{json, Value};

/// Pins without a TTL last this long.
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Pin or unpin as `req` asks; the count, or why the request is bad.
async fn apply(engine: &Engine, req: PinRequest) -> Result<usize, String> {
    if req.block_hashes.len() > 100_000 {
        return Err("at most 100000 block_hashes per call".into());
    }
    if req.unpin {
        return engine
            .unpin_blocks(req.block_hashes)
            .await
            .map_err(|e| e.to_string());
    }
    let ttl = match req.ttl_secs {
        None => DEFAULT_TTL,
        Some(s) => pin_ttl(s).map_err(|e| format!("ttl_secs: {e}"))?,
    };
    engine
        .pin_blocks(req.block_hashes, ttl)
        .await
        .map_err(|e| e.to_string())
}

/// The system port's engine routes.
pub struct PinRoutes(pub Arc<Engine>);

impl EngineRoutes for PinRoutes {
    fn call(&self, route: &str, body: Value) -> RouteFuture {
        let engine = self.0.clone();
        let (unpin, key) = match route {
            "pin_blocks" => (false, "pinned"),
            "unpin_blocks" => (true, "unpinned"),
            _ => return Box::pin(async { Err(RouteError::NotFound) }),
        };
        Box::pin(async move {
            let mut req: PinRequest = serde_json::from_value(body).map_err(|e| {
                RouteError::BadRequest(format!(
                    "expected {{\"block_hashes\": [u64, ...], \"ttl_secs\": number}}: {e}"
                ))
            })?;
            req.unpin = unpin;
            let n = apply(&engine, req).await.map_err(RouteError::BadRequest)?;
            Ok(json!({ key: n }))
        })
    }
}

/// Answer pin requests on this instance's request-plane pin subject until shutdown.
pub fn spawn_pin_subject(
    drt: &DistributedRuntime,
    namespace: &str,
    component: &str,
    instance: u64,
    engine: Arc<Engine>,
) {
    let plane = drt.events();
    let stop = drt.stopping();
    let subject = kv_pin_subject(namespace, component, instance);
    tokio::spawn(async move {
        let mut sub = match plane.subscribe::<PinRequest>(&subject).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, %subject, "cannot serve pin requests");
                return;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = sub.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply) = msg.reply else { continue };
            let answer = match apply(&engine, msg.body).await {
                Ok(count) => PinReply { count, error: None },
                Err(e) => PinReply {
                    count: 0,
                    error: Some(e),
                },
            };
            if let Err(e) = reply.send(&answer).await {
                tracing::debug!(error = %e, "cannot answer a pin request");
            }
        }
    });
}
