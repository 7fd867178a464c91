//! One request from dispatch to the last byte: send each of its prompts to a worker
//! (`dispatch`, `fanout`), stream every choice's token ids through its incremental detokenizer
//! and stop-string matcher (`choice_set`), and produce either one JSON body or SSE chunks, a
//! choice's chunks carrying its index. Records the per-request frontend metrics; a client that
//! disconnects cancels the request on its workers.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dynamo_protocols::PreprocessedRequest;
use dynamo_runtime::error::ErrorKind;
use dynamo_runtime::{CallOptions, InstanceRecord, RuntimeError};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::choice_set::ChoiceSet;
use super::fanout::Gens;
pub use super::token_pipe::Echo;
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

/// Everything one prompt's generation needs (a batch of prompts is one job each).
#[derive(Clone)]
pub struct Job {
    /// Completions with `echo`: the prompt that starts each of its choices.
    pub echo: Option<Echo>,
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

fn finish_metrics(state: &AppState, model: &str, set: &ChoiceSet, guard: &RequestGuard) {
    let pipes = set.pipes();
    let usage = set.usage();
    guard
        .span
        .record("output_tokens", i64::from(usage.completion_tokens));
    let m = &state.metrics;
    m.osl
        .with_label_values(&[model])
        .observe(f64::from(usage.completion_tokens));
    m.cached_tokens
        .with_label_values(&[model])
        .observe(f64::from(usage.prompt_tokens_details.cached_tokens));
    let detok: std::time::Duration = pipes.iter().map(|p| p.detok_time).sum();
    m.detokenize_ms.observe(detok.as_secs_f64() * 1e3);
}

/// Run to completion and build the unary body.
pub async fn unary(
    state: Arc<AppState>,
    jobs: Vec<Job>,
    mut guard: RequestGuard,
) -> Result<String, ApiError> {
    let job = &jobs[0];
    let run = async {
        let mut gens = Gens::start(&state, &jobs).await?;
        let mut set = ChoiceSet::new(&jobs);
        let mut timing = Timing::new(&state, &job.model, job.start);
        while let Some((j, item)) = gens.next(&state, &jobs).await {
            let out = item?;
            timing.on_tokens(&mut guard, job.start, out.token_ids.len());
            set.push(j, &out).map_err(misplaced)?;
            if set.done() {
                break;
            }
        }
        Ok::<_, ApiError>(set)
    };
    // Past the deadline the future is dropped, and with it the streams: the workers cancel.
    let r = tokio::select! {
        r = run => r,
        _ = expired(job.deadline) => Err(timed_out(job)),
    };
    let mut set = guard.report(r)?;
    if !set.done() {
        return guard.report(Err(truncated()));
    }
    finish_metrics(&state, &job.model, &set, &guard);
    guard.finish(None);
    let returned = set.returned();
    let mut texts = Vec::with_capacity(returned.len());
    let mut lps = Vec::with_capacity(returned.len());
    for &c in &returned {
        texts.push(set.take_text(c));
        lps.push(set.pipe(c).take_logprobs(&job.pre, job.kind));
    }
    let finish = |c: usize| set.pipes()[c].finish.unwrap_or("stop");
    let body = match job.kind {
        Kind::Chat => serde_json::to_string(&ChatCompletion {
            id: &job.id,
            object: "chat.completion",
            created: job.created,
            model: &job.model,
            choices: returned
                .iter()
                .zip(texts.iter().zip(lps))
                .enumerate()
                .map(|(i, (&c, (text, logprobs)))| ChatChoice {
                    index: i as u32,
                    message: ChatMessageOut {
                        role: "assistant",
                        content: text,
                    },
                    logprobs,
                    finish_reason: finish(c),
                })
                .collect(),
            usage: set.usage(),
        }),
        Kind::Completion => serde_json::to_string(&Completion {
            id: &job.id,
            object: "text_completion",
            created: job.created,
            model: &job.model,
            choices: returned
                .iter()
                .zip(texts.iter().zip(lps))
                .enumerate()
                .map(|(i, (&c, (text, logprobs)))| CompletionChoice {
                    index: i as u32,
                    text,
                    logprobs,
                    finish_reason: Some(finish(c)),
                })
                .collect(),
            usage: Some(Some(set.usage())),
        }),
    };
    Ok(body.expect("serializable"))
}

/// A worker's item for a choice its prompt does not have.
fn misplaced(msg: String) -> ApiError {
    ApiError::new(ErrorClass::Internal, msg)
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
    index: u32,
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
                    index,
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
                    index,
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

/// Start a streaming generation. Waits for the first worker item so that early failures
/// still get a proper HTTP status; then streams SSE chunks from a task.
pub async fn streaming(
    state: Arc<AppState>,
    jobs: Vec<Job>,
    mut guard: RequestGuard,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let deadline = jobs[0].deadline;
    let start = async {
        let mut gens = Gens::start(&state, &jobs).await?;
        let first = match gens.next(&state, &jobs).await {
            Some((_, Err(e))) => return Err(e),
            other => other,
        };
        Ok((gens, first))
    };
    let r = tokio::select! {
        r = start => r,
        _ = expired(deadline) => Err(timed_out(&jobs[0])),
    };
    let (gens, first) = guard.report(r)?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let span = guard.span.clone();
    tokio::spawn(stream_chunks(state, jobs, guard, gens, first, tx).instrument(span));
    Ok(rx)
}

/// The SSE task: each round takes an item and those already behind it, then sends one chunk
/// per choice that has new text (and the role, first, on chat), and one with the finish
/// reason of each choice that ended.
async fn stream_chunks(
    state: Arc<AppState>,
    jobs: Vec<Job>,
    mut guard: RequestGuard,
    mut gens: Gens,
    first: Option<super::fanout::Tagged>,
    tx: mpsc::Sender<Bytes>,
) {
    let job = &jobs[0];
    let mut set = ChoiceSet::new(&jobs);
    let mut timing = Timing::new(&state, &job.model, job.start);
    let include_usage = job.params.include_usage;
    let usage_field = |u: Option<UsageBody>| include_usage.then_some(u);
    let mut sent_role = vec![false; set.pipes().len()];
    let mut next = first.map(Some);
    // Each round's choices, in the order their items came (reused across rounds).
    let mut touched: Vec<usize> = Vec::new();
    loop {
        let item = match next.take() {
            Some(i) => i,
            None => tokio::select! {
                i = gens.next(&state, &jobs) => i,
                _ = tx.closed() => return, // client gone: dropping `gens` cancels the workers
                _ = expired(job.deadline) => {
                    end_with_error(&tx, &mut guard, timed_out(job)).await;
                    return;
                }
            },
        };
        let Some(mut item) = item else { break };
        loop {
            let placed = item.1.and_then(|o| {
                timing.on_tokens(&mut guard, job.start, o.token_ids.len());
                set.push(item.0, &o).map_err(misplaced)
            });
            match placed {
                Ok(c) if !touched.contains(&c) => touched.push(c),
                Ok(_) => {}
                Err(err) => {
                    end_with_error(&tx, &mut guard, err).await;
                    return;
                }
            }
            // Fold items that are already here into the same chunks (fewer, larger SSE
            // events under load; never waits for more).
            if set.done() {
                break;
            }
            match gens.ready() {
                Some(Some(i)) if i.1.is_ok() => item = i,
                Some(other) => {
                    next = Some(other);
                    break;
                }
                None => break,
            }
        }
        for c in touched.drain(..) {
            let text = set.take_text(c);
            let pipe = set.pipe(c);
            let role = !sent_role[c] && job.kind == Kind::Chat && pipe.finish.is_none();
            if !text.is_empty() || role {
                let lp = pipe.take_logprobs(&job.pre, job.kind);
                let first = !sent_role[c];
                let u = usage_field(None);
                let content = chunk(job, c as u32, Some(&text), first, None, u, lp);
                sent_role[c] = true;
                if tx.send(content).await.is_err() {
                    return;
                }
            }
            if set.newly_finished(c) {
                // Tokens whose text was held back (a stop string's prefix) keep their logprobs.
                let pipe = set.pipe(c);
                let lp = pipe.take_pending_logprobs(&job.pre, job.kind);
                let end = chunk(
                    job,
                    c as u32,
                    None,
                    false,
                    pipe.finish,
                    usage_field(None),
                    lp,
                );
                if tx.send(end).await.is_err() {
                    return;
                }
            }
        }
        if set.done() {
            break;
        }
    }
    drop(gens);
    if !set.done() {
        end_with_error(&tx, &mut guard, truncated()).await;
        return;
    }
    let mut tail = Vec::new();
    if include_usage {
        let usage = Some(Some(set.usage()));
        tail.extend_from_slice(&chunk(job, 0, None, false, None, usage, None));
    }
    tail.extend_from_slice(b"data: [DONE]\n\n");
    finish_metrics(&state, &job.model, &set, &guard);
    if tx.send(Bytes::from(tail)).await.is_ok() {
        guard.finish(None);
    }
}
