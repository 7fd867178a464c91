//! One generation from dispatch to the last byte: send it to a worker (`dispatch`), stream its
//! token ids through the incremental detokenizer and the
//! stop-string matcher, and produce either one JSON body or SSE chunks. Records the per-request
//! frontend metrics; a client that disconnects cancels the request on the worker.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dynamo_protocols::PreprocessedRequest;
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{CallOptions, InstanceRecord, RuntimeError};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::migration::Generation;
pub use super::token_pipe::TokenPipe;
use super::AppState;
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
#[derive(Clone)]
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
    /// `--request-timeout` from the handler's start.
    pub deadline: Option<tokio::time::Instant>,
    /// 0 for the first dispatch; n after n migrations (`request.attempt` is n + 1).
    pub attempt: u32,
    /// Tokens generated before this attempt (appended to its prompt).
    pub migrated_tokens: u32,
}

/// Wait until `deadline`, or forever without one.
pub(super) async fn expired(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => futures::future::pending().await,
    }
}

fn timed_out(job: &Job) -> ApiError {
    ApiError::new(
        ErrorClass::Timeout,
        format!(
            "the request did not finish within --request-timeout ({:.0} s); it was cancelled",
            job.deadline
                .map(|d| d.duration_since(tokio::time::Instant::from_std(job.start)))
                .unwrap_or_default()
                .as_secs_f64()
        ),
    )
}

/// The worker's stream ended without a finish reason: the engine failed or the reply was
/// lost. An error, never a `length` finish.
fn truncated() -> ApiError {
    ApiError::new(
        ErrorClass::Internal,
        "the worker's stream ended without a finish reason",
    )
}

/// End a stream with an SSE `event: error` carrying `err`'s OpenAI body (no `[DONE]`), and
/// record the outcome.
async fn end_with_error(tx: &mpsc::Sender<Bytes>, guard: &mut RequestGuard, err: ApiError) {
    let msg = format!("event: error\ndata: {}\n\n", err.body());
    let _ = tx.send(Bytes::from(msg)).await;
    guard.finish(Some(err.class.label()));
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
    /// The handler counts this request's error itself (it was returned before any response
    /// was sent): the guard must not count it again, nor as a client that went away.
    reported: bool,
    /// `http-request`, kept open until the response is complete.
    span: tracing::Span,
    /// The request's place under `--max-inflight-requests`.
    _permit: super::admission::Permit,
}

impl RequestGuard {
    pub fn new(
        state: Arc<AppState>,
        model: &str,
        kind: Kind,
        stream: bool,
        start: Instant,
        span: tracing::Span,
        permit: super::admission::Permit,
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
            reported: false,
            span,
            _permit: permit,
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

    /// Pass an error on to the handler, which answers it and counts it.
    fn report<T>(&mut self, r: Result<T, ApiError>) -> Result<T, ApiError> {
        self.reported = r.is_err();
        r
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.first_token();
        let m = &self.state.metrics;
        m.inflight.with_label_values(&[&self.model]).dec();
        if !self.reported {
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
        }
        m.duration
            .with_label_values(&[&self.model])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// The client-facing error of a worker failure; `status` is what overload is answered with.
pub(super) fn map_runtime_error(e: RuntimeError, status: u16) -> ApiError {
    match e {
        RuntimeError::Remote {
            kind: ErrorKind::InvalidRequest,
            message,
        } => ApiError::validation(format!("Validation: {message}")),
        RuntimeError::Remote {
            kind: ErrorKind::Unavailable | ErrorKind::KvTransfer,
            message,
        } => ApiError::new(ErrorClass::Unavailable, message),
        RuntimeError::Remote {
            kind: ErrorKind::Overloaded,
            message,
        } => ApiError::new(ErrorClass::Overloaded { status }, message),
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
    let run = async {
        let mut gen = Generation::start(&state, &job).await?;
        let mut pipe = TokenPipe::new(&job.pre, &job.params, job.request.token_ids.len() as u32);
        let mut timing = Timing::new(&state, &job.model, job.start);
        let mut text = String::new();
        while let Some(item) = gen.next(&state, &job).await {
            let out = item?;
            timing.on_tokens(&mut guard, job.start, out.token_ids.len());
            text.push_str(&pipe.push(&out));
            if pipe.finish.is_some() {
                break;
            }
        }
        Ok::<_, ApiError>((pipe, text))
    };
    // Past the deadline the future is dropped, and with it the stream: the worker cancels.
    let r = tokio::select! {
        r = run => r,
        _ = expired(job.deadline) => Err(timed_out(&job)),
    };
    let (mut pipe, text) = guard.report(r)?;
    let finish = guard.report(pipe.finish.ok_or_else(truncated))?;
    let logprobs = pipe.take_logprobs(&job.pre, job.kind);
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
                logprobs,
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
                logprobs,
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
    logprobs: Option<serde_json::Value>,
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
                    logprobs,
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
                    logprobs,
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
    let start = async {
        let mut gen = Generation::start(&state, &job).await?;
        let first = match gen.next(&state, &job).await {
            Some(Ok(o)) => Some(o),
            Some(Err(e)) => return Err(e),
            None => None,
        };
        Ok((gen, first))
    };
    let r = tokio::select! {
        r = start => r,
        _ = expired(job.deadline) => Err(timed_out(&job)),
    };
    let (mut gen, first) = guard.report(r)?;
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
            loop {
                let item = match next.take() {
                    Some(i) => Some(i),
                    None => tokio::select! {
                        i = gen.next(&state, &job) => i,
                        _ = tx.closed() => return, // client gone: dropping `gen` cancels the worker
                        _ = expired(job.deadline) => {
                            end_with_error(&tx, &mut guard, timed_out(&job)).await;
                            return;
                        }
                    },
                };
                let Some(item) = item else { break };
                let out = match item {
                    Ok(o) => o,
                    Err(err) => {
                        end_with_error(&tx, &mut guard, err).await;
                        return;
                    }
                };
                timing.on_tokens(&mut guard, job.start, out.token_ids.len());
                let mut text = pipe.push(&out);
                // Fold items that are already here into the same chunk (fewer, larger SSE events
                // under load; never waits for more).
                while pipe.finish.is_none() {
                    match gen.ready() {
                        Some(Some(Ok(o))) => {
                            timing.on_tokens(&mut guard, job.start, o.token_ids.len());
                            text.push_str(&pipe.push(&o));
                        }
                        Some(other) => {
                            next = other;
                            break;
                        }
                        None => break,
                    }
                }
                if !text.is_empty()
                    || (!sent_role && job.kind == Kind::Chat && pipe.finish.is_none())
                {
                    let lp = pipe.take_logprobs(&job.pre, job.kind);
                    let c = chunk(&job, Some(&text), !sent_role, None, usage_field(None), lp);
                    sent_role = true;
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                if pipe.finish.is_some() {
                    break;
                }
            }
            drop(gen);
            let Some(finish) = pipe.finish else {
                end_with_error(&tx, &mut guard, truncated()).await;
                return;
            };
            // Tokens whose text was held back (a stop string's prefix) keep their logprobs.
            let lp = pipe.take_pending_logprobs(&job.pre, job.kind);
            let mut tail = chunk(&job, None, false, Some(finish), usage_field(None), lp).to_vec();
            if include_usage {
                let usage = Some(Some(pipe.usage()));
                tail.extend_from_slice(&chunk(&job, None, false, None, usage, None));
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
