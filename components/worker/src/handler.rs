//! The worker's request-plane handler, one per role: aggregated (a tokenized request in, the
//! engine's output stream out), prefill (answers at once with the bootstrap info of a new
//! room, then runs the prompt while the transfer server streams its KV), and decode (pulls
//! the room's KV from the prefill worker into reserved blocks, then streams the generation;
//! a failed transfer ends the stream with a `kv_transfer` error the frontend may retry). The
//! engine's request id is the trace id, its spans' parent the request's span.

use std::sync::Arc;

use dynamo_common::worker_wiring;
use dynamo_disagg::{FetchConfig, TransferServer};
use dynamo_engine::trace::{RoomTrace, TraceRequest};
use dynamo_engine::{Engine, EngineError};
use dynamo_protocols::{EngineOutput, PreprocessedRequest};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{Handler, HandlerError, HandlerStream, RequestContext};
use dynamo_telemetry::TraceContext;
use futures::StreamExt;

/// What the worker does with a request.
pub enum Role {
    Unified,
    Prefill(TransferServer),
    Decode(FetchConfig),
}

pub struct EngineHandler {
    pub engine: Arc<Engine>,
    pub role: Role,
}

fn refused(e: EngineError) -> HandlerStream<EngineOutput> {
    let kind = match e {
        EngineError::InvalidRequest(_) => ErrorKind::InvalidRequest,
        EngineError::Overloaded(_) => ErrorKind::Overloaded,
        _ => ErrorKind::Internal,
    };
    worker_wiring::error_stream(kind, e.to_string())
}

/// The request's trace context, when it has one.
fn parent(ctx: &RequestContext) -> Option<TraceContext> {
    ctx.traceparent
        .as_deref()
        .and_then(|tp| TraceContext::parse(tp).ok())
}

fn trace(parent: Option<TraceContext>, room: RoomTrace) -> Option<TraceRequest> {
    parent.map(|parent| TraceRequest {
        rid: parent.trace_id_hex(),
        parent,
        room,
    })
}

impl Handler<PreprocessedRequest, EngineOutput> for EngineHandler {
    fn generate(
        &self,
        req: PreprocessedRequest,
        ctx: RequestContext,
    ) -> HandlerStream<EngineOutput> {
        let parent = parent(&ctx);
        match &self.role {
            Role::Unified => match self
                .engine
                .generate_traced(req, trace(parent, RoomTrace::Unified))
            {
                Ok(rx) => worker_wiring::channel_stream(rx),
                Err(e) => refused(e),
            },
            Role::Prefill(server) => self.prefill(server, req, parent),
            Role::Decode(cfg) => self.decode(cfg, req, parent),
        }
    }
}

impl EngineHandler {
    fn prefill(
        &self,
        server: &TransferServer,
        req: PreprocessedRequest,
        parent: Option<TraceContext>,
    ) -> HandlerStream<EngineOutput> {
        let room = dynamo_disagg::new_room();
        let span_id = rand::random::<u64>() | 1;
        // The decode side's engine spans join this room span (when both trace).
        let room_tp = parent
            .as_ref()
            .filter(|_| self.engine.traces())
            .map(|p| format!("00-{}-{span_id:016x}-01", p.trace_id_hex()));
        let trace = trace(parent, RoomTrace::Prefill { room, span_id });
        match self.engine.generate_prefill(req, trace) {
            Ok((out, room_rx)) => {
                let info = server.open_room(room, room_rx, room_tp);
                let first = EngineOutput {
                    bootstrap_info: Some(info),
                    ..EngineOutput::default()
                };
                futures::stream::once(async move { Ok(first) })
                    .chain(worker_wiring::channel_stream(out))
                    .boxed()
            }
            Err(e) => refused(e),
        }
    }

    fn decode(
        &self,
        cfg: &FetchConfig,
        req: PreprocessedRequest,
        parent: Option<TraceContext>,
    ) -> HandlerStream<EngineOutput> {
        if req.bootstrap_info.is_none() && req.prompt_logprobs.is_some() {
            // The prompt's own log probabilities need every position's logits: this worker
            // computes the prompt itself rather than importing its KV.
            return match self
                .engine
                .generate_traced(req, trace(parent, RoomTrace::Unified))
            {
                Ok(rx) => worker_wiring::channel_stream(rx),
                Err(e) => refused(e),
            };
        }
        let Some(info) = req.bootstrap_info.clone() else {
            return worker_wiring::error_stream(
                ErrorKind::InvalidRequest,
                "bootstrap_info is required for disaggregated decode".into(),
            );
        };
        let room_span = info
            .room_traceparent
            .as_deref()
            .and_then(|tp| TraceContext::parse(tp).ok());
        let room = RoomTrace::Decode {
            room: info.bootstrap_room,
            room_span,
        };
        let (rx, import) = match self.engine.generate_decode(req, trace(parent, room)) {
            Ok(v) => v,
            Err(e) => return refused(e),
        };
        let failure = import.failure();
        let task = tokio::spawn(dynamo_disagg::fetch(
            self.engine.clone(),
            info,
            import,
            cfg.clone(),
        ));
        // The transfer stops when the stream is dropped (the client cancelled).
        let abort = AbortOnDrop(task);
        futures::stream::unfold(
            (rx, Some(abort), false),
            move |(mut rx, abort, finished)| {
                let failure = failure.clone();
                async move {
                    abort.as_ref()?;
                    match rx.recv().await {
                        Some(o) => {
                            let fin = finished || o.finish_reason.is_some();
                            Some((Ok(o), (rx, abort, fin)))
                        }
                        None if finished => None,
                        None => {
                            let msg = failure.get().cloned().unwrap_or_else(|| {
                                "the engine ended the request before its KV arrived".into()
                            });
                            Some((
                                Err(HandlerError::new(ErrorKind::KvTransfer, msg)),
                                (rx, None, true),
                            ))
                        }
                    }
                }
            },
        )
        .boxed()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), dynamo_disagg::TransferFailure>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
