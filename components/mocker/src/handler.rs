//! The mocker's request-plane handler: a tokenized request in, the simulated engine's output
//! stream out (or one error when it refuses the request).

use dynamo_common::worker_wiring;
use dynamo_mocker::MockEngine;
use dynamo_protocols::{EngineOutput, PreprocessedRequest};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{Handler, HandlerStream, RequestContext};

pub struct MockHandler(pub MockEngine);

impl Handler<PreprocessedRequest, EngineOutput> for MockHandler {
    fn generate(
        &self,
        req: PreprocessedRequest,
        _ctx: RequestContext,
    ) -> HandlerStream<EngineOutput> {
        match self.0.generate(req) {
            Ok(rx) => worker_wiring::channel_stream(rx),
            Err(e) => worker_wiring::error_stream(ErrorKind::InvalidRequest, e.to_string()),
        }
    }
}
