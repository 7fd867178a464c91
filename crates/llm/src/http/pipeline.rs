//! One generation from dispatch to the last byte: pick a worker (trying the next one when an
//! instance does not answer), stream its token ids through the incremental detokenizer and the
//! stop-string matcher, and produce either one JSON body or SSE chunks. Records the per-request
//! frontend metrics; a client that disconnects cancels the request on the worker.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dynamo_protocols::{EngineOutput, FinishReason, PreprocessedRequest};
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{CallOptions, InstanceRecord, ResponseStream, RuntimeError};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::AppState;
use crate::detok::{IncrementalDecoder, StopMatcher};
use crate::kv_router::RouteTicket;
use crate::openai::request::GenParams;
use crate::openai::response::*;
use crate::openai::{ApiError, ErrorClass};
use crate::preprocess::Preprocessor;

/// Chat or plain completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

impl Kind {
    pub fn endpoint_label(self) -> &'static str {
        match self {
            Kind::Chat => "chat_completions",
            Kind::Completion => "completions",
        }
    }
}

/// Everything one generation needs.
pub struct Job {
    pub kind: Kind,
    pub model: String,
    pub id: String,
    pub created: u64,
    pub params: GenParams,
    pub request: PreprocessedRequest,
    pub pre: Arc<Preprocessor>,
    pub instances: Vec<Arc<InstanceRecord>>,
    pub call: CallOptions,
    pub start: Instant,
}

/// Keeps the inflight/queued gauges right on every exit path and records the outcome.
pub struct RequestGuard {
    state: Arc<AppState>,
    model: String,
    kind: Kind,
    stream: bool,
    start: Instant,
    queued: bool,
    outcome: Option<Option<&'static str>>,
    /// `http-request`, kept open until the response is complete.
    span: tracing::Span,
}

impl RequestGuard {
    pub fn new(
        state: Arc<AppState>,
        model: &str,
        kind: Kind,
        stream: bool,
        start: Instant,
        span: tracing::Span,
    ) -> Self {
        state.metrics.inflight.with_label_values(&[model]).inc();
        state.metrics.queued.with_label_values(&[model]).inc();
        RequestGuard {
            state,
            model: model.to_string(),
            kind,
            stream,
            start,
            queued: true,
            outcome: None,
            span,
        }
    }

    fn first_token(&mut self) {
        if self.queued {
            self.queued = false;
            self.span
                .record("ttft_ms", self.start.elapsed().as_secs_f64() * 1e3);
            self.state
                .metrics
                .queued
                .with_label_values(&[&self.model])
                .dec();
        }
    }

    pub fn finish(&mut self, error: Option<&'static str>) {
        self.outcome = Some(error);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.first_token();
        let m = &self.state.metrics;
        m.inflight.with_label_values(&[&self.model]).dec();
        let outcome = match self.outcome {
            Some(o) => o,
            None => {
                // Dropped before finishing: the client went away.
                m.disconnected.inc();
                Some(ErrorClass::Cancelled.label())
            }
        };
        m.count(
            &self.model,
            self.kind.endpoint_label(),
            self.stream,
            outcome,
        );
        m.duration
            .with_label_values(&[&self.model])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

fn map_runtime_error(e: RuntimeError) -> ApiError {
    match e {
        RuntimeError::Remote {
            kind: ErrorKind::InvalidRequest,
            message,
        } => ApiError::validation(format!("Validation: {message}")),
        RuntimeError::Remote {
            kind: ErrorKind::Unavailable,
            message,
        } => ApiError::new(ErrorClass::Unavailable, message),
        RuntimeError::NoResponders { .. }
        | RuntimeError::AckTimeout(_)
        | RuntimeError::InstanceLost(_) => ApiError::new(
            ErrorClass::Unavailable,
            format!("no live worker could take the request: {e}"),
        ),
        RuntimeError::ShuttingDown => {
            ApiError::new(ErrorClass::Unavailable, "frontend is shutting down")
        }
        other => ApiError::new(ErrorClass::Internal, format!("worker error: {other}")),
    }
}

/// The hashing and lookup spans of the non-KV modes: the same block and sequence hashes the
/// KV router computes (block size from the model card), with no index to look them up in.
fn routing_spans(job: &Job) {
    use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
    let toks = &job.request.token_ids;
    let bs = job
        .instances
        .first()
        .and_then(|i| i.card["kv_cache_block_size"].as_u64())
        .unwrap_or(16)
        .max(1) as usize;
    let local = tracing::info_span!(
        "kv_router.compute_block_hashes",
        isl_tokens = toks.len() as i64,
        block_count = tracing::field::Empty,
    )
    .in_scope(|| {
        let h = block_hashes(toks, bs);
        tracing::Span::current().record("block_count", h.len() as i64);
        h
    });
    let seq = tracing::info_span!(
        "kv_router.compute_seq_hashes",
        seq_hash_count = local.len() as i64
    )
    .in_scope(|| sequence_hashes(&local));
    let _m = tracing::info_span!(
        "kv_router.find_matches",
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
async fn choose(
    state: &AppState,
    job: &Job,
) -> Result<(Vec<Arc<InstanceRecord>>, Option<RouteTicket>, u32), ApiError> {
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
    let select = tracing::info_span!("kv_router.select_worker");
    if let Some(kv) = &state.kv {
        let first = &job.instances[0];
        let router = kv.router(
            &state.drt,
            &state.models,
            &first.namespace,
            &first.component,
        );
        let sel = router
            .select(&job.request.token_ids, &job.instances)
            .instrument(select)
            .await
            .map_err(|e| ApiError::new(ErrorClass::Internal, format!("KV router: {e}")))?;
        let order = (0..n.min(3))
            .map(|k| job.instances[(sel.index + k) % n].clone())
            .collect();
        return Ok((order, Some(sel.ticket), sel.overlap_blocks));
    }
    let _s = select.enter();
    routing_spans(job);
    let _c = tracing::info_span!("kv_router.schedule", overlap_blocks = 0).entered();
    let first = state.router.pick(n);
    let order = (0..n.min(3))
        .map(|k| job.instances[(first + k) % n].clone())
        .collect();
    Ok((order, None, 0))
}

/// Send the request to a worker, trying others when an instance does not answer.
pub async fn dispatch(state: &AppState, job: &Job) -> Result<Dispatched, ApiError> {
    let (candidates, mut ticket, overlap) = choose(state, job).await?;
    let mut last = None;
    for (k, inst) in candidates.iter().enumerate() {
        if k > 0 {
            // The router's pick did not answer: this request no longer counts against it.
            ticket = None;
        }
        let alive = state.models.alive_fn(inst.instance_id);
        let route = tracing::info_span!(
            "kv_router.route_request",
            otel.kind = "client",
            request_id = %job.call.request_id,
            worker_id = inst.instance_id,
            dp_rank = 0,
            overlap_blocks = if k == 0 { overlap } else { 0 },
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

/// Token ids → text deltas, with stop strings and counting.
pub struct TokenPipe {
    dec: IncrementalDecoder,
    stop: StopMatcher,
    pub completion_tokens: u32,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub finish: Option<&'static str>,
    detok_time: std::time::Duration,
}

impl TokenPipe {
    pub fn new(pre: &Preprocessor, params: &GenParams, prompt_tokens: u32) -> Self {
        TokenPipe {
            dec: IncrementalDecoder::new(pre.tokenizer.clone(), true),
            stop: StopMatcher::new(params.stop.clone()),
            completion_tokens: 0,
            prompt_tokens,
            cached_tokens: 0,
            finish: None,
            detok_time: Default::default(),
        }
    }

    /// Consume one worker item; returns the text to send now.
    pub fn push(&mut self, out: &EngineOutput) -> String {
        let t0 = Instant::now();
        let mut text = String::new();
        self.completion_tokens += out.token_ids.len() as u32;
        if self.finish.is_none() {
            for &id in &out.token_ids {
                let piece = self.dec.push(id);
                let o = self.stop.push(&piece);
                text.push_str(&o.text);
                if o.stopped {
                    self.finish = Some("stop");
                    break;
                }
            }
        }
        if let Some(u) = out.usage {
            self.prompt_tokens = u.prompt_tokens;
            self.completion_tokens = u.completion_tokens;
            self.cached_tokens = u.cached_tokens;
        }
        if self.finish.is_none() {
            if let Some(r) = out.finish_reason {
                let tail = self.dec.flush();
                let o = self.stop.push(&tail);
                text.push_str(&o.text);
                if o.stopped {
                    self.finish = Some("stop");
                } else {
                    text.push_str(&self.stop.flush());
                    self.finish = Some(match r {
                        FinishReason::Eos | FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                        FinishReason::Cancelled => "cancelled",
                        FinishReason::Error => "error",
                    });
                }
            }
        }
        self.detok_time += t0.elapsed();
        text
    }

    pub fn usage(&self) -> UsageBody {
        UsageBody::new(
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
        )
    }
}

/// Per-token timing metrics, with the model's metric handles resolved once per request (no
/// label lookup per token).
struct Timing {
    last: Instant,
    first: bool,
    output_tokens: prometheus::IntCounter,
    ttft: prometheus::Histogram,
    itl: prometheus::Histogram,
}

impl Timing {
    fn new(state: &AppState, model: &str, start: Instant) -> Self {
        let m = &state.metrics;
        Timing {
            last: start,
            first: true,
            output_tokens: m.output_tokens.with_label_values(&[model]),
            ttft: m.ttft.with_label_values(&[model]),
            itl: m.itl.with_label_values(&[model]),
        }
    }

    fn on_tokens(&mut self, guard: &mut RequestGuard, start: Instant, n: usize) {
        if n == 0 {
            return;
        }
        let now = Instant::now();
        self.output_tokens.inc_by(n as u64);
        if self.first {
            self.first = false;
            guard.first_token();
            self.ttft.observe(now.duration_since(start).as_secs_f64());
            // Tokens that came with the first one: zero gap each.
            for _ in 1..n {
                self.itl.observe(0.0);
            }
        } else {
            let gap = now.duration_since(self.last).as_secs_f64() / n as f64;
            for _ in 0..n {
                self.itl.observe(gap);
            }
        }
        self.last = now;
    }
}

fn finish_metrics(state: &AppState, model: &str, pipe: &TokenPipe, guard: &RequestGuard) {
    guard
        .span
        .record("output_tokens", i64::from(pipe.completion_tokens));
    let m = &state.metrics;
    m.osl
        .with_label_values(&[model])
        .observe(pipe.completion_tokens as f64);
    m.cached_tokens
        .with_label_values(&[model])
        .observe(pipe.cached_tokens as f64);
    m.detokenize_ms.observe(pipe.detok_time.as_secs_f64() * 1e3);
}

/// Run to completion and build the unary body.
pub async fn unary(
    state: Arc<AppState>,
    job: Job,
    mut guard: RequestGuard,
) -> Result<String, ApiError> {
    let mut stream = dispatch(&state, &job).await?;
    let mut pipe = TokenPipe::new(&job.pre, &job.params, job.request.token_ids.len() as u32);
    let mut timing = Timing::new(&state, &job.model, job.start);
    let mut text = String::new();
    while let Some(item) = stream.next().await {
        let out = item.map_err(map_runtime_error)?;
        timing.on_tokens(&mut guard, job.start, out.token_ids.len());
        text.push_str(&pipe.push(&out));
        if pipe.finish.is_some() {
            break;
        }
    }
    drop(stream);
    let finish = pipe.finish.unwrap_or("length");
    finish_metrics(&state, &job.model, &pipe, &guard);
    guard.finish(None);
    let body = match job.kind {
        Kind::Chat => serde_json::to_string(&ChatCompletion {
            id: &job.id,
            object: "chat.completion",
            created: job.created,
            model: &job.model,
            choices: [ChatChoice {
                index: 0,
                message: ChatMessageOut {
                    role: "assistant",
                    content: &text,
                },
                logprobs: None,
                finish_reason: finish,
            }],
            usage: pipe.usage(),
        }),
        Kind::Completion => serde_json::to_string(&Completion {
            id: &job.id,
            object: "text_completion",
            created: job.created,
            model: &job.model,
            choices: vec![CompletionChoice {
                index: 0,
                text: &text,
                logprobs: None,
                finish_reason: Some(finish),
            }],
            usage: Some(Some(pipe.usage())),
        }),
    };
    Ok(body.expect("serializable"))
}

fn sse(json: String) -> Bytes {
    let mut s = String::with_capacity(json.len() + 8);
    s.push_str("data: ");
    s.push_str(&json);
    s.push_str("\n\n");
    Bytes::from(s)
}

fn chunk(
    job: &Job,
    text: Option<&str>,
    first: bool,
    finish: Option<&str>,
    usage: Option<Option<UsageBody>>,
) -> Bytes {
    let json = match job.kind {
        Kind::Chat => serde_json::to_string(&ChatChunk {
            id: &job.id,
            object: "chat.completion.chunk",
            created: job.created,
            model: &job.model,
            choices: if text.is_none() && finish.is_none() {
                vec![]
            } else {
                vec![ChatChunkChoice {
                    index: 0,
                    delta: ChatDelta {
                        role: first.then_some("assistant"),
                        content: text,
                    },
                    logprobs: None,
                    finish_reason: finish,
                }]
            },
            usage,
        }),
        Kind::Completion => serde_json::to_string(&Completion {
            id: &job.id,
            object: "text_completion",
            created: job.created,
            model: &job.model,
            choices: if text.is_none() && finish.is_none() {
                vec![]
            } else {
                vec![CompletionChoice {
                    index: 0,
                    text: text.unwrap_or(""),
                    logprobs: None,
                    finish_reason: finish,
                }]
            },
            usage,
        }),
    };
    sse(json.expect("serializable"))
}

/// Start a streaming generation. Waits for the worker's first item so that early failures
/// still get a proper HTTP status; then streams SSE chunks from a task.
pub async fn streaming(
    state: Arc<AppState>,
    job: Job,
    mut guard: RequestGuard,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let mut stream = dispatch(&state, &job).await?;
    let first = match stream.next().await {
        Some(Ok(o)) => Some(o),
        Some(Err(e)) => return Err(map_runtime_error(e)),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let span = guard.span.clone();
    tokio::spawn(
        async move {
            let mut pipe =
                TokenPipe::new(&job.pre, &job.params, job.request.token_ids.len() as u32);
            let mut timing = Timing::new(&state, &job.model, job.start);
            let include_usage = job.params.include_usage;
            let usage_field = |u: Option<UsageBody>| include_usage.then_some(u);
            let mut sent_role = false;
            let mut next = first.map(Ok);
            let mut ended = false;
            loop {
                let item = match next.take() {
                    Some(i) => Some(i),
                    None if ended => None,
                    None => tokio::select! {
                        i = stream.next() => i,
                        _ = tx.closed() => return, // client gone: dropping `stream` cancels the worker
                    },
                };
                let Some(item) = item else { break };
                let out = match item {
                    Ok(o) => o,
                    Err(e) => {
                        let err = map_runtime_error(e);
                        let msg = format!("event: error\ndata: {}\n\n", err.body());
                        let _ = tx.send(Bytes::from(msg)).await;
                        guard.finish(Some(err.class.label()));
                        return;
                    }
                };
                timing.on_tokens(&mut guard, job.start, out.token_ids.len());
                let mut text = pipe.push(&out);
                // Fold items that are already here into the same chunk (fewer, larger SSE events
                // under load; never waits for more).
                while pipe.finish.is_none() {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(o))) => {
                            timing.on_tokens(&mut guard, job.start, o.token_ids.len());
                            text.push_str(&pipe.push(&o));
                        }
                        Some(other) => {
                            next = other;
                            if next.is_none() {
                                ended = true;
                            }
                            break;
                        }
                        None => break,
                    }
                }
                if !text.is_empty()
                    || (!sent_role && job.kind == Kind::Chat && pipe.finish.is_none())
                {
                    let c = chunk(&job, Some(&text), !sent_role, None, usage_field(None));
                    sent_role = true;
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                if pipe.finish.is_some() {
                    break;
                }
            }
            drop(stream);
            let finish = pipe.finish.unwrap_or("length");
            let mut tail = chunk(&job, None, false, Some(finish), usage_field(None)).to_vec();
            if include_usage {
                tail.extend_from_slice(&chunk(&job, None, false, None, Some(Some(pipe.usage()))));
            }
            tail.extend_from_slice(b"data: [DONE]\n\n");
            finish_metrics(&state, &job.model, &pipe, &guard);
            if tx.send(Bytes::from(tail)).await.is_ok() {
                guard.finish(None);
            }
        }
        .instrument(span),
    );
    Ok(rx)
}
