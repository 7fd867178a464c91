//! HTTP handlers: parse and validate the body (every failure becomes an OpenAI-style error with
//! its status), preprocess, and hand over to the pipeline; plus models, health, liveness and
//! metrics.

use dynamo_protocols::names::spans;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use dynamo_protocols::{PreprocessedRequest, StopConditions};
use dynamo_runtime::CallOptions;
use futures::StreamExt;
use serde_json::json;
use tracing::Instrument;

use super::jobs::{tokenize, Parsed, Prompt};
use super::pipeline::{self, Job, Kind, RequestGuard};
use super::AppState;
use crate::models::Lookup;
use crate::openai::request::{normalize_messages, CommonParams};
use crate::openai::response::{unix_now, ModelList, ModelObject};
use crate::openai::{ApiError, ErrorClass};

/// Most choices one request may generate (prompts of a batch × `best_of`).
const MAX_REQUEST_CHOICES: usize = 1024;

/// Prompts longer than this are tokenized on the blocking pool.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<(CommonParams, usize), ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorClass::PayloadTooLarge,
                "request body is larger than the server's limit",
            )
        } else if body_timed_out(&r) {
            ApiError::new(
                ErrorClass::RequestTimeout,
                "the request body did not arrive within --body-timeout",
            )
        } else {
            ApiError::validation(format!("cannot read request body: {r}"))
        }
    })?;
    // Straight into the typed request: malformed JSON and wrong or unknown fields both come
    // back from serde with a position.
    let req = serde_json::from_slice::<CommonParams>(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::validation(format!("Validation: {e}")),
        _ => ApiError::validation(format!("malformed JSON body: {e}")),
    })?;
    Ok((req, bytes.len()))
}

/// Whether reading the body failed because it did not arrive in time.
fn body_timed_out(r: &BytesRejection) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(r);
    while let Some(err) = e {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        e = err.source();
    }
    false
}

/// The request's model name, and the field the endpoint needs present with the one it forbids
/// absent.
fn endpoint_fields(r: &CommonParams, chat: bool) -> Result<String, ApiError> {
    let model = r
        .model
        .clone()
        .ok_or_else(|| ApiError::validation("Validation: missing field `model`"))?;
    let (need, have, other, other_present) = if chat {
        (
            "messages",
            r.messages.is_some(),
            "prompt",
            r.prompt.is_some(),
        )
    } else {
        (
            "prompt",
            r.prompt.is_some(),
            "messages",
            r.messages.is_some(),
        )
    };
    if other_present {
        return Err(ApiError::validation(format!(
            "Validation: unknown field `{other}` for this endpoint (it takes `{need}`)"
        )));
    }
    if !chat && r.chat_template_kwargs.is_some() {
        return Err(ApiError::validation(
            "Validation: `chat_template_kwargs` is a chat completions field; completions take no template",
        ));
    }
    if !have {
        return Err(ApiError::validation(format!(
            "Validation: missing field `{need}`"
        )));
    }
    Ok(model)
}

/// W3C Trace Context caps `tracestate` at 32 members; 512 characters is the length a vendor
/// may truncate to. A longer one is dropped rather than copied into every hop and log line.
const MAX_TRACESTATE: usize = 512;

fn request_ids(headers: &HeaderMap) -> (String, Option<String>) {
    let internal = format!("{:032x}", rand::random::<u128>());
    let x = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_string);
    (internal, x)
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The request's root span (or a child of an incoming valid `traceparent`; a malformed one is
/// ignored and the request proceeds under a new root).
fn request_span(
    headers: &HeaderMap,
    uri: &Uri,
    version: Version,
    x_request_id: Option<&str>,
) -> tracing::Span {
    let e = tracing::field::Empty;
    let span = tracing::info_span!(
        spans::HTTP_REQUEST,
        otel.kind = "server",
        method = "POST",
        uri = %uri,
        version = ?version,
        trace_id = e,
        span_id = e,
        parent_id = e,
        x_request_id = e,
        input_tokens = e,
        output_tokens = e,
        ttft_ms = e,
    );
    let tp = headers.get("traceparent").and_then(|v| v.to_str().ok());
    if let Some(p) = dynamo_telemetry::context::continue_from(&span, tp) {
        span.record("parent_id", format!("{:016x}", p.span_id));
    }
    if let Some(c) = dynamo_telemetry::context::span_context(&span) {
        span.record("trace_id", c.trace_id_hex());
        span.record("span_id", format!("{:016x}", c.span_id));
    }
    if let Some(x) = x_request_id {
        span.record("x_request_id", x);
    }
    span
}

/// The incoming `tracestate` to propagate, if it is text within the W3C length.
fn incoming_tracestate(headers: &HeaderMap) -> Option<String> {
    headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_TRACESTATE)
        .map(str::to_string)
}

async fn handle(
    state: Arc<AppState>,
    headers: HeaderMap,
    (uri, version): (Uri, Version),
    kind: Kind,
    parsed: Result<Parsed, (String, ApiError)>,
) -> Response {
    let start = Instant::now();
    let (internal_id, x_request_id) = request_ids(&headers);
    let shown_id = x_request_id.clone().unwrap_or_else(|| internal_id.clone());
    let span = request_span(&headers, &uri, version, x_request_id.as_deref());
    let resp = match run(
        state.clone(),
        &headers,
        kind,
        parsed,
        start,
        (internal_id, x_request_id),
        span.clone(),
    )
    .instrument(span)
    .await
    {
        Ok(r) => r,
        Err((model, stream, e)) => {
            // A model no worker serves gets one shared label: an unauthenticated client must
            // not mint a series per made-up name.
            let label = state.models.metric_label(&model);
            state
                .metrics
                .count(label, kind.endpoint_label(), stream, Some(e.class.label()));
            e.into_response()
        }
    };
    with_request_id(resp, &shown_id)
}

async fn run(
    state: Arc<AppState>,
    headers: &HeaderMap,
    kind: Kind,
    parsed: Result<Parsed, (String, ApiError)>,
    start: Instant,
    (internal_id, x_request_id): (String, Option<String>),
    span: tracing::Span,
) -> Result<Response, (String, bool, ApiError)> {
    let p = parsed.map_err(|(m, e)| (m, false, e))?;
    let stream = p.params.stream;
    let model = p.model.clone();
    let fail = |e: ApiError| (model.clone(), stream, e);
    let (entry, instances) = match state.models.lookup(&p.model) {
        Lookup::Ready(e, i) => (e, i),
        Lookup::Unknown => {
            return Err(fail(ApiError::new(
                ErrorClass::NotFound,
                format!("Model not found: {}", p.model),
            )))
        }
        Lookup::Loading => {
            return Err(fail(ApiError::new(
                ErrorClass::Unavailable,
                format!("model {} is still loading", p.model),
            )))
        }
        Lookup::NoInstances => {
            return Err(fail(ApiError::new(
                ErrorClass::Unavailable,
                format!("no live worker serves model {}", p.model),
            )))
        }
    };
    if p.params.logprobs.is_some() && !entry.card.logprobs {
        return Err(fail(ApiError::validation(format!(
            "Validation: logprobs: model {} cannot return log probabilities",
            p.model
        ))));
    }
    let prompt_logprobs = p.params.logprobs.filter(|_| p.params.echo);
    if (p.params.best_of > 1 || prompt_logprobs.is_some()) && !entry.card.parallel_sampling {
        return Err(fail(ApiError::validation(format!(
            "Validation: model {} cannot sample several choices per prompt or score prompts (n, best_of, echo with logprobs)",
            p.model
        ))));
    }
    // Shed before any tokenization or worker work.
    let permit = state.admission.acquire(&model).map_err(fail)?;
    let pre = entry.pre.clone();
    let t0 = Instant::now();
    let prompts = {
        let pre = pre.clone();
        let echo = p.params.echo;
        let work = move || tokenize(&pre, p.prompt, echo);
        if p.body_len > INLINE_TOKENIZE_BYTES {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| fail(ApiError::new(ErrorClass::Internal, e.to_string())))?
        } else {
            work()
        }
    }
    .map_err(fail)?;
    state
        .metrics
        .tokenize_ms
        .observe(t0.elapsed().as_secs_f64() * 1e3);
    let id_prefix = match kind {
        Kind::Chat => "chatcmpl-",
        Kind::Completion => "cmpl-",
    };
    let id = format!("{id_prefix}{internal_id}");
    let created = unix_now();
    let deadline = state
        .config
        .request_timeout
        .map(|t| tokio::time::Instant::from_std(start) + t);
    // With best_of > n the choices are ranked by their log probabilities, shown or not.
    let ranked = p.params.best_of > p.params.n;
    let engine_logprobs = p.params.logprobs.or(ranked.then_some(0));
    let mut jobs = Vec::with_capacity(prompts.len());
    let mut input_tokens = 0;
    for (k, (token_ids, echo)) in prompts.into_iter().enumerate() {
        // Scoring a prompt samples one token nobody sees (the engine generates at least one).
        let asked = if p.params.score_only {
            Some(1)
        } else {
            p.params.max_tokens
        };
        let max_tokens = pre.check_length(token_ids.len(), asked).map_err(fail)?;
        state
            .metrics
            .isl
            .with_label_values(&[&model])
            .observe(token_ids.len() as f64);
        input_tokens += token_ids.len();
        jobs.push(Job {
            kind,
            model: model.clone(),
            id: id.clone(),
            created,
            request: PreprocessedRequest {
                model: model.clone(),
                token_ids,
                sampling: p.params.sampling.clone(),
                stop: StopConditions {
                    max_tokens: Some(max_tokens),
                    min_tokens: p.params.min_tokens,
                    stop_token_ids: vec![],
                    ignore_eos: p.params.ignore_eos,
                },
                bootstrap_info: None,
                logprobs: engine_logprobs,
                prompt_logprobs,
                n: p.params.best_of,
                // The client's cache_control, else the KV router's --router-pin-ttl-secs.
                cache_pin_ttl_secs: p.params.cache_pin_ttl_secs.or_else(|| {
                    let kv = state.kv.as_ref()?;
                    kv.config.pin_ttl.map(|d| d.as_secs_f64())
                }),
            },
            echo,
            params: p.params.clone(),
            pre: pre.clone(),
            instances: instances.clone(),
            call: CallOptions {
                // Each prompt of a batch is its own request on its worker.
                request_id: if k == 0 {
                    internal_id.clone()
                } else {
                    format!("{internal_id}-{k}")
                },
                x_request_id: x_request_id.clone(),
                // Set per dispatch attempt to the `kv_router.route_request` span.
                traceparent: None,
                tracestate: incoming_tracestate(headers),
            },
            start,
            deadline,
            attempt: 0,
            migrated_tokens: 0,
        });
    }
    span.record("input_tokens", input_tokens as i64);
    let guard = RequestGuard::new(state.clone(), &model, kind, stream, start, span, permit);
    if stream {
        let rx = pipeline::streaming(state, jobs, guard)
            .await
            .map_err(fail)?;
        let body = Body::from_stream(
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
                .map(Ok::<_, std::convert::Infallible>),
        );
        Ok((
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response())
    } else {
        let body = pipeline::unary(state, jobs, guard).await.map_err(fail)?;
        Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let force = state.config.force_include_usage;
    let parsed = parse_body(body)
        .map_err(|e| (String::new(), e))
        .and_then(|(r, body_len)| {
            let model = endpoint_fields(&r, true).map_err(|e| (String::new(), e))?;
            let params = r.validate(force, true).map_err(|e| (model.clone(), e))?;
            let msgs = normalize_messages(r.messages.as_deref().unwrap_or_default())
                .map_err(|e| (model.clone(), e))?;
            Ok(Parsed {
                model,
                body_len,
                params,
                prompt: Prompt::Chat(msgs, r.chat_template_kwargs),
            })
        });
    handle(state, headers, (uri, version), Kind::Chat, parsed).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let force = state.config.force_include_usage;
    let parsed = parse_body(body)
        .map_err(|e| (String::new(), e))
        .and_then(|(mut r, body_len)| {
            let model = endpoint_fields(&r, false).map_err(|e| (String::new(), e))?;
            let params = r.validate(force, false).map_err(|e| (model.clone(), e))?;
            let prompt = r.prompt.take().expect("checked by endpoint_fields");
            let choices = prompt.0.len() * params.best_of as usize;
            if choices > MAX_REQUEST_CHOICES {
                return Err((
                    model,
                    ApiError::validation(format!(
                        "Validation: prompt: {} prompts × {} choices each is {choices} choices; at most {MAX_REQUEST_CHOICES} per request",
                        prompt.0.len(),
                        params.best_of
                    )),
                ));
            }
            Ok(Parsed {
                model,
                body_len,
                params,
                prompt: Prompt::Completion(prompt),
            })
        });
    handle(state, headers, (uri, version), Kind::Completion, parsed).await
}

pub async fn list_models(State(state): State<Arc<AppState>>) -> Response {
    let names = state.models.list();
    let created = unix_now();
    let body = ModelList {
        object: "list",
        data: names
            .iter()
            .map(|n| ModelObject {
                id: n,
                object: "model",
                created,
                owned_by: "nvidia",
            })
            .collect(),
    };
    axum::Json(serde_json::to_value(&body).expect("serializable")).into_response()
}

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    // The spec's body, with a status a load balancer can act on.
    let unhealthy = |message: &str| {
        let body = json!({"status": "unhealthy", "message": message, "instances": []});
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    };
    if !state.drt.health().is_ready() {
        // NATS is down: no request can reach a worker now.
        return unhealthy("NATS disconnected");
    }
    // Only instances of models ready to serve: a model whose tokenizer and template are still
    // loading (or cannot load) would answer 503 to a request.
    let inst = state.models.ready_instances();
    if inst.is_empty() {
        return unhealthy("No endpoints available");
    }
    let mut endpoints: Vec<String> = inst.iter().map(|i| i.endpoint_id().uri()).collect();
    endpoints.sort();
    endpoints.dedup();
    let instances: Vec<_> = inst
        .iter()
        .map(|i| {
            json!({
                "component": i.component,
                "endpoint": i.endpoint,
                "instance_id": i.instance_id,
                "namespace": i.namespace,
                "transport": {"nats_tcp": i.subject},
            })
        })
        .collect();
    axum::Json(json!({"status": "healthy", "endpoints": endpoints, "instances": instances}))
        .into_response()
}

pub async fn live() -> Response {
    axum::Json(json!({"status": "live", "message": "Service is live"})).into_response()
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.registry.render(),
    )
        .into_response()
}

/// `/v1/*` with `--api-key`: only requests carrying `Authorization: Bearer <one of the keys>`
/// (compared in constant time) get through; others get 401 with the OpenAI error body.
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let keys = &state.config.api_keys;
    if keys.is_empty() {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| keys.iter().any(|k| same(k.as_bytes(), g.as_bytes())));
    if !ok {
        let msg = if given.is_some() {
            "Incorrect API key provided"
        } else {
            "Missing API key: send Authorization: Bearer <key>"
        };
        return ApiError::new(ErrorClass::Unauthorized, msg).into_response();
    }
    next.run(req).await
}

/// Constant-time equality (the time does not depend on where the inputs differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn not_found() -> Response {
    ApiError::new(ErrorClass::NotFound, "no such route").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracestate_is_capped() {
        let mut h = HeaderMap::new();
        h.insert("tracestate", HeaderValue::from_static("vendor=abc"));
        assert_eq!(incoming_tracestate(&h).as_deref(), Some("vendor=abc"));
        let long = format!("v={}", "x".repeat(MAX_TRACESTATE));
        h.insert("tracestate", HeaderValue::from_str(&long).unwrap());
        assert_eq!(incoming_tracestate(&h), None);
    }
}
