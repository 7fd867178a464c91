//! Choosing the worker for one generation and sending it there: the KV router's choice (with
//! its ticket riding along the response stream) or round-robin / random with the same routing
//! spans, a pinned `backend_instance_id`, and trying the next candidate when an instance does
//! not answer.

use dynamo_protocols::names::spans;
use std::sync::Arc;

use dynamo_protocols::EngineOutput;
use dynamo_runtime::{InstanceRecord, ResponseStream, RuntimeError};
use futures::StreamExt;
use tracing::Instrument;

use super::pipeline::{map_runtime_error, Job};
use super::AppState;
use crate::openai::{ApiError, ErrorClass};
use dynamo_kv_router::{card_block_size, chain_hashes, hash_blocks, KvRouter, RouteTicket};

/// The hashing and lookup spans of the non-KV modes: the same block and sequence hashes the
/// KV router computes (block size from the model card), with no index to look them up in.
fn routing_spans(job: &Job) {
    let bs = job.instances.first().map_or(16, |i| card_block_size(i));
    let local = hash_blocks(&job.request.token_ids, bs);
    let seq = chain_hashes(&local);
    let _m = tracing::info_span!(
        spans::FIND_MATCHES,
        block_count = seq.len() as i64,
        overlap_blocks = 0
    )
    .entered();
}

/// A worker's response stream with the KV router's ticket for it (first token: prefill done;
/// dropped: the request's blocks leave the router's account).
pub struct Dispatched {
    stream: ResponseStream<EngineOutput>,
    ticket: Option<RouteTicket>,
}

impl futures::Stream for Dispatched {
    type Item = Result<EngineOutput, RuntimeError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let p = this.stream.poll_next_unpin(cx);
        if let (std::task::Poll::Ready(Some(Ok(o))), Some(t)) = (&p, this.ticket.as_mut()) {
            t.on_tokens(o.token_ids.len());
        }
        p
    }
}

/// The instances to try, best first, and the KV router's ticket and overlap for the first.
type Choice = (Vec<Arc<InstanceRecord>>, Option<RouteTicket>, u32);

/// Choose the instances to try for `job` (see [`Choice`]).
fn choose(state: &AppState, job: &Job, kv: Option<&Arc<KvRouter>>) -> Result<Choice, ApiError> {
    let n = job.instances.len();
    if let Some(id) = job.params.backend_instance_id {
        let pinned: Vec<_> = job
            .instances
            .iter()
            .filter(|i| i.instance_id == id)
            .cloned()
            .collect();
        if pinned.is_empty() {
            return Err(ApiError::validation(format!(
                "Validation: nvext.backend_instance_id {id} is not a live instance of this model"
            )));
        }
        return Ok((pinned, None, 0));
    }
    let select = tracing::info_span!(spans::SELECT_WORKER);
    if let Some(router) = kv {
        let sel = select
            .in_scope(|| router.select(&job.request.token_ids, &job.instances))
            .map_err(|e| ApiError::new(ErrorClass::Internal, format!("KV router: {e}")))?;
        let order = (0..n.min(3))
            .map(|k| job.instances[(sel.index + k) % n].clone())
            .collect();
        return Ok((order, Some(sel.ticket), sel.overlap_blocks));
    }
    let _s = select.enter();
    routing_spans(job);
    let _c = tracing::info_span!(spans::SCHEDULE, overlap_blocks = 0).entered();
    let first = state.router.pick(n);
    let order = (0..n.min(3))
        .map(|k| job.instances[(first + k) % n].clone())
        .collect();
    Ok((order, None, 0))
}

/// Send the request to a worker, trying others when an instance does not answer.
pub async fn dispatch(state: &AppState, job: &Job) -> Result<Dispatched, ApiError> {
    let kv = match (&state.kv, job.instances.first()) {
        (Some(kv), Some(first)) => Some(
            kv.router(
                &state.drt,
                &state.models,
                &first.namespace,
                &first.component,
            )
            .await,
        ),
        _ => None,
    };
    let (candidates, mut ticket, overlap) = choose(state, job, kv.as_ref())?;
    let mut last = None;
    for (k, inst) in candidates.iter().enumerate() {
        if k > 0 {
            // The router's pick did not answer: this request no longer counts against it.
            ticket = None;
        }
        let alive = state.models.alive_fn(inst.instance_id);
        let route = tracing::info_span!(
            spans::ROUTE_REQUEST,
            otel.kind = "client",
            request_id = %job.call.request_id,
            worker_id = inst.instance_id,
            dp_rank = 0,
            overlap_blocks = if k == 0 { i64::from(overlap) } else { 0 },
            phase = "Aggregated",
        );
        let mut call = job.call.clone();
        call.traceparent = dynamo_telemetry::context::span_context(&route).map(|c| c.to_header());
        match state
            .drt
            .call(inst, &job.request, call, alive)
            .instrument(route)
            .await
        {
            Ok(stream) => return Ok(Dispatched { stream, ticket }),
            Err(e @ (RuntimeError::NoResponders { .. } | RuntimeError::AckTimeout(_))) => {
                tracing::warn!(instance = %format!("{:x}", inst.instance_id), error = %e, "instance did not answer; trying another");
                last = Some(e);
            }
            Err(e) => return Err(map_runtime_error(e)),
        }
    }
    Err(map_runtime_error(
        last.unwrap_or(RuntimeError::ShuttingDown),
    ))
}
