//! The worker's request-plane handler: a tokenized request in, the engine's output stream
//! out, with the engine's request id and span parent taken from the request's trace context.

use std::sync::Arc;

use dynamo_common::worker_wiring;
use dynamo_engine::trace::TraceRequest;
use dynamo_engine::{Engine, EngineError};
use dynamo_protocols::{EngineOutput, PreprocessedRequest};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{Handler, HandlerStream, RequestContext};

pub struct EngineHandler(pub Arc<Engine>);

impl Handler<PreprocessedRequest, EngineOutput> for EngineHandler {
    fn generate(
        &self,
        req: PreprocessedRequest,
        ctx: RequestContext,
    ) -> HandlerStream<EngineOutput> {
        // The engine's request id is the trace id, its spans' parent this request's span.
        let trace = ctx
            .traceparent
            .as_deref()
            .and_then(|tp| dynamo_telemetry::TraceContext::parse(tp).ok())
            .map(|parent| TraceRequest {
                rid: parent.trace_id_hex(),
                parent,
            });
        match self.0.generate_traced(req, trace) {
            Ok(rx) => worker_wiring::channel_stream(rx),
            Err(e) => {
                let kind = match e {
                    EngineError::InvalidRequest(_) => ErrorKind::InvalidRequest,
                    _ => ErrorKind::Internal,
                };
                worker_wiring::error_stream(kind, e.to_string())
            }
        }
    }
}
