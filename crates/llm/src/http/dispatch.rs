//! Choosing the workers for one generation and sending it there. Aggregated: the KV router's
//! choice (with its ticket riding along the response stream) or round-robin / random with the
//! same routing spans, a pinned `backend_instance_id`, and trying the next candidate when an
//! instance does not answer. Disaggregated (the model has prefill workers): the decode-capable
//! worker is chosen first, among decode and aggregated workers together; an aggregated
//! choice serves the request alone, a decode choice gets it after a prefill worker (chosen
//! among the prefill workers, phase `Prefill`) has answered with the room's bootstrap info.
//! A failed KV transfer is retried once with another prefill worker. A request that asks for
//! its prompt's log probabilities skips the prefill worker: its decode worker computes it.

use dynamo_protocols::names::spans;
use std::sync::Arc;

use dynamo_protocols::{DisaggregationMode, EngineOutput};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{InstanceRecord, ResponseStream, RuntimeError};
use futures::StreamExt;
use tracing::Instrument;

use super::pipeline::{map_runtime_error, Job};
use super::AppState;
use crate::openai::{ApiError, ErrorClass};
use dynamo_kv_router::{card_block_size, chain_hashes, hash_blocks, KvRouter, RouteTicket};

/// The `phase` of a routing span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Aggregated,
    Prefill,
    Decode,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Aggregated => "Aggregated",
            Phase::Prefill => "Prefill",
            Phase::Decode => "Decode",
        }
    }
}

fn role(inst: &InstanceRecord) -> DisaggregationMode {
    inst.card
        .get("disaggregation_mode")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// The hashing and lookup spans of the non-KV modes: the same block and sequence hashes the
/// KV router computes (block size from the model card), with no index to look them up in.
fn routing_spans(job: &Job, instances: &[Arc<InstanceRecord>]) {
    let bs = instances.first().map_or(16, |i| card_block_size(i));
    let local = hash_blocks(&job.request.token_ids, bs);
    let seq = chain_hashes(&local);
    let _m = tracing::info_span!(
        spans::FIND_MATCHES,
        block_count = seq.len() as i64,
        overlap_blocks = 0
    )
    .entered();
}

/// Aborts the task that follows a prefill worker's stream when the request ends.
struct PrefillFollower(tokio::task::JoinHandle<()>);

impl Drop for PrefillFollower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A worker's response stream with the KV router's ticket for it (first token: prefill done;
/// dropped: the request's blocks leave the router's account), and, disaggregated, the
/// prefill worker's stream followed alongside.
pub struct Dispatched {
    /// The worker streaming the response (decode worker when disaggregated).
    pub instance_id: u64,
    stream: ResponseStream<EngineOutput>,
    ticket: Option<RouteTicket>,
    /// An item read ahead (the decode stream's first, checked for a transfer failure).
    first: Option<Result<EngineOutput, RuntimeError>>,
    _prefill: Option<PrefillFollower>,
}

impl futures::Stream for Dispatched {
    type Item = Result<EngineOutput, RuntimeError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        let p = match this.first.take() {
            Some(item) => std::task::Poll::Ready(Some(item)),
            None => this.stream.poll_next_unpin(cx),
        };
        if let (std::task::Poll::Ready(Some(Ok(o))), Some(t)) = (&p, this.ticket.as_mut()) {
            t.on_tokens(o.token_ids.len());
        }
        p
    }
}

/// The instances to try, best first, and the KV router's ticket and overlap for the first.
type Choice = (Vec<Arc<InstanceRecord>>, Option<RouteTicket>, u32);

/// Choose among `instances` for `job` (see [`Choice`]).
fn choose(
    state: &AppState,
    job: &Job,
    instances: &[Arc<InstanceRecord>],
    kv: Option<&Arc<KvRouter>>,
    pin: bool,
) -> Result<Choice, ApiError> {
    let n = instances.len();
    if let (Some(id), true) = (job.params.backend_instance_id, pin) {
        let pinned: Vec<_> = instances
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
            .in_scope(|| router.select(&job.request.token_ids, instances))
            .map_err(|e| ApiError::new(ErrorClass::Internal, format!("KV router: {e}")))?;
        let order = (0..n.min(3))
            .map(|k| instances[(sel.index + k) % n].clone())
            .collect();
        return Ok((order, Some(sel.ticket), sel.overlap_blocks));
    }
    let _s = select.enter();
    routing_spans(job, instances);
    let _c = tracing::info_span!(spans::SCHEDULE, overlap_blocks = 0).entered();
    let first = state.router.pick(n);
    let order = (0..n.min(3))
        .map(|k| instances[(first + k) % n].clone())
        .collect();
    Ok((order, None, 0))
}

/// The KV router of the component of `instances` (`--router-mode kv` only).
async fn kv_router(state: &AppState, instances: &[Arc<InstanceRecord>]) -> Option<Arc<KvRouter>> {
    let (kv, first) = (state.kv.as_ref()?, instances.first()?);
    Some(
        kv.router(
            &state.drt,
            &state.models,
            &first.namespace,
            &first.component,
        )
        .await,
    )
}

/// Send `request` to the first of `candidates` that answers, under a `route_request` span of
/// `phase`. Returns the instance and its stream.
async fn send(
    state: &AppState,
    job: &Job,
    request: &dynamo_protocols::PreprocessedRequest,
    candidates: &[Arc<InstanceRecord>],
    overlap: u32,
    phase: Phase,
) -> Result<(usize, ResponseStream<EngineOutput>), ApiError> {
    let mut last = None;
    for (k, inst) in candidates.iter().enumerate() {
        let alive = state.models.alive_fn(inst.instance_id);
        let route = tracing::info_span!(
            spans::ROUTE_REQUEST,
            otel.kind = "client",
            request_id = %job.call.request_id,
            worker_id = inst.instance_id,
            dp_rank = 0,
            overlap_blocks = if k == 0 { i64::from(overlap) } else { 0 },
            phase = phase.label(),
            request.attempt = i64::from(job.attempt) + 1,
            migration.generated_tokens = i64::from(job.migrated_tokens),
        );
        let mut call = job.call.clone();
        call.traceparent = dynamo_telemetry::context::span_context(&route).map(|c| c.to_header());
        match state
            .drt
            .call(inst, request, call, alive)
            .instrument(route)
            .await
        {
            Ok(stream) => return Ok((k, stream)),
            Err(e @ (RuntimeError::NoResponders { .. } | RuntimeError::AckTimeout(_))) => {
                tracing::warn!(instance = %format!("{:x}", inst.instance_id), phase = phase.label(), error = %e, "instance did not answer; trying another");
                last = Some(e);
            }
            // A full queue refuses before anything streamed: the next candidate may have room.
            Err(
                e @ RuntimeError::Remote {
                    kind: ErrorKind::Overloaded,
                    ..
                },
            ) => {
                tracing::debug!(instance = %format!("{:x}", inst.instance_id), phase = phase.label(), error = %e, "instance overloaded; trying another");
                last = Some(e);
            }
            Err(e) => return Err(map_runtime_error(e, state.admission.overload_status())),
        }
    }
    Err(map_runtime_error(
        last.unwrap_or(RuntimeError::ShuttingDown),
        state.admission.overload_status(),
    ))
}

fn unavailable(msg: String) -> ApiError {
    ApiError::new(ErrorClass::Unavailable, msg)
}

/// Send the request to its worker(s): aggregated, or prefill then decode.
pub async fn dispatch(state: &AppState, job: &Job) -> Result<Dispatched, ApiError> {
    let (mut agg, mut prefill, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    for i in &job.instances {
        match role(i) {
            DisaggregationMode::Null => agg.push(i.clone()),
            DisaggregationMode::Prefill => prefill.push(i.clone()),
            DisaggregationMode::Decode => decode.push(i.clone()),
        }
    }
    let model = &job.model;
    if prefill.is_empty() || decode.is_empty() {
        if agg.is_empty() {
            let msg = if prefill.is_empty() {
                format!("model {model} has decode workers but no prefill worker")
            } else {
                format!("model {model} has prefill workers but no decode worker")
            };
            return Err(unavailable(msg));
        }
        return aggregated(state, job, &agg).await;
    }
    // Decode and aggregated workers compete for the request; the winner decides the path.
    let mut targets = decode;
    targets.append(&mut agg);
    let kv = kv_router(state, &targets).await;
    let (order, ticket, overlap) = choose(state, job, &targets, kv.as_ref(), true)?;
    // A request for its prompt's own log probabilities is computed in full where it decodes
    // (every prompt position's logits are needed; an imported KV has none).
    let alone = job.request.prompt_logprobs.is_some();
    if alone
        || order
            .first()
            .is_some_and(|i| role(i) == DisaggregationMode::Null)
    {
        let (k, stream) =
            send(state, job, &job.request, &order, overlap, Phase::Aggregated).await?;
        return Ok(Dispatched {
            instance_id: order[k].instance_id,
            stream,
            ticket: ticket.filter(|_| k == 0),
            first: None,
            _prefill: None,
        });
    }
    let order: Vec<_> = order
        .into_iter()
        .filter(|i| role(i) == DisaggregationMode::Decode)
        .collect();
    disaggregated(state, job, order, ticket, overlap, &prefill).await
}

async fn aggregated(
    state: &AppState,
    job: &Job,
    agg: &[Arc<InstanceRecord>],
) -> Result<Dispatched, ApiError> {
    let kv = kv_router(state, agg).await;
    let (order, ticket, overlap) = choose(state, job, agg, kv.as_ref(), true)?;
    send_alone(state, job, &order, ticket, overlap).await
}

/// Send the request to the first of `order` that answers, to be served there alone.
async fn send_alone(
    state: &AppState,
    job: &Job,
    order: &[Arc<InstanceRecord>],
    ticket: Option<RouteTicket>,
    overlap: u32,
) -> Result<Dispatched, ApiError> {
    let (k, stream) = send(state, job, &job.request, order, overlap, Phase::Aggregated).await?;
    // When the router's pick did not answer, the request no longer counts against it.
    Ok(Dispatched {
        instance_id: order[k].instance_id,
        stream,
        ticket: ticket.filter(|_| k == 0),
        first: None,
        _prefill: None,
    })
}

/// Prefill on one of `prefill`, then decode on `decode_order`'s first that answers. A
/// transfer failure (the prefill worker died or refused) is retried once on another prefill
/// worker.
async fn disaggregated(
    state: &AppState,
    job: &Job,
    decode_order: Vec<Arc<InstanceRecord>>,
    mut decode_ticket: Option<RouteTicket>,
    overlap: u32,
    prefill: &[Arc<InstanceRecord>],
) -> Result<Dispatched, ApiError> {
    let mut excluded: Vec<u64> = Vec::new();
    let mut last = String::new();
    for _attempt in 0..2 {
        let candidates: Vec<_> = prefill
            .iter()
            .filter(|i| !excluded.contains(&i.instance_id))
            .cloned()
            .collect();
        if candidates.is_empty() {
            break;
        }
        let kv = kv_router(state, &candidates).await;
        let (p_order, p_ticket, p_overlap) = choose(state, job, &candidates, kv.as_ref(), false)?;
        let (pk, mut p_stream) = send(
            state,
            job,
            &job.request,
            &p_order,
            p_overlap,
            Phase::Prefill,
        )
        .await?;
        let p_inst = p_order[pk].clone();
        let info = match p_stream.next().await {
            Some(Ok(EngineOutput {
                bootstrap_info: Some(info),
                ..
            })) => info,
            Some(Err(e)) => return Err(map_runtime_error(e, state.admission.overload_status())),
            _ => {
                return Err(ApiError::new(
                    ErrorClass::Internal,
                    "the prefill worker answered without bootstrap info",
                ))
            }
        };
        // Follow the prefill stream to its end (the router's account of the prefill worker
        // is right while it computes; dropping it cancels the prefill).
        let mut p_ticket = p_ticket.filter(|_| pk == 0);
        let follower = PrefillFollower(tokio::spawn(async move {
            while let Some(item) = p_stream.next().await {
                match item {
                    Ok(o) => {
                        if let Some(t) = p_ticket.as_mut() {
                            t.on_tokens(o.token_ids.len());
                        }
                    }
                    Err(_) => break,
                }
            }
        }));
        let mut request = job.request.clone();
        request.bootstrap_info = Some(info);
        let (dk, mut stream) =
            send(state, job, &request, &decode_order, overlap, Phase::Decode).await?;
        if dk > 0 {
            decode_ticket = None;
        }
        match stream.next().await {
            Some(Err(RuntimeError::Remote {
                kind: ErrorKind::KvTransfer,
                message,
            })) => {
                tracing::warn!(prefill_instance = %format!("{:x}", p_inst.instance_id), error = %message, "KV transfer failed; retrying on another prefill worker");
                excluded.push(p_inst.instance_id);
                last = message;
                continue;
            }
            first => {
                return Ok(Dispatched {
                    instance_id: decode_order[dk].instance_id,
                    stream,
                    ticket: decode_ticket,
                    first,
                    _prefill: Some(follower),
                })
            }
        }
    }
    Err(unavailable(if last.is_empty() {
        format!("model {} has no prefill worker left to try", job.model)
    } else {
        last
    }))
}
