//! Serving an endpoint: subscribe to the instance's subject, run the handler for each request
//! on its own task, stream its items back on the reply subject as envelopes, honour
//! cancellation messages, and record the `dynamo_component_*` work-handler metrics.

use dynamo_protocols::names::spans;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::{Client, HeaderMap, Message};
use futures::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addressing::EndpointId;
use crate::error::{ErrorKind, HandlerError};
use crate::metrics::EndpointMetrics;
use crate::wire::{self, Envelope};
use tracing::Instrument;

/// Most items sent in one message.
const MAX_BATCH: usize = 64;

/// Sequence numbers of one request's post-ack messages: 1, 2, …
#[derive(Default)]
struct Seq(u64);

impl Seq {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// The stream of items a handler produces for one request.
pub type HandlerStream<T> = Pin<Box<dyn Stream<Item = Result<T, HandlerError>> + Send>>;

/// Per-request context handed to a handler.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Internal request id (the caller's `x-dynamo-request-id`).
    pub request_id: String,
    /// The client's `x-request-id`, if any.
    pub x_request_id: Option<String>,
    /// W3C `traceparent` of this request's `handle_payload` span (a child of the caller's
    /// span, or a new root): the parent for the engine's spans.
    pub traceparent: Option<String>,
    /// Fires when the caller cancels or the process stops.
    pub cancel: CancellationToken,
}

/// Something that turns a request into a stream of responses. Implemented by engines.
pub trait Handler<Req, Resp>: Send + Sync + 'static {
    fn generate(&self, request: Req, ctx: RequestContext) -> HandlerStream<Resp>;
}

/// Shared state of one served endpoint.
pub(crate) struct Ingress<Req, Resp> {
    pub client: Client,
    pub id: EndpointId,
    pub instance_id: u64,
    pub handler: Arc<dyn Handler<Req, Resp>>,
    pub metrics: EndpointMetrics,
    pub inflight: Mutex<HashMap<String, CancellationToken>>,
    /// Ids cancelled before their request arrived (a caller gave up on a slow ack and went
    /// elsewhere): refused if they arrive later. Bounded: the oldest are forgotten.
    pub cancelled_early: Mutex<EarlyCancels>,
}

/// A bounded set of ids, forgetting the oldest first; looked up on every request.
#[derive(Default)]
pub(crate) struct EarlyCancels {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl EarlyCancels {
    fn insert(&mut self, id: &str) {
        if self.ids.contains(id) {
            return;
        }
        if self.order.len() >= EARLY_CANCELS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
    }

    /// Whether `id` was cancelled early (forgetting it: an id is refused once).
    fn take(&mut self, id: &str) -> bool {
        if !self.ids.remove(id) {
            return false;
        }
        self.order.retain(|x| x != id);
        true
    }
}

/// How many early cancellations an endpoint remembers.
const EARLY_CANCELS: usize = 1024;

fn header(h: Option<&HeaderMap>, name: &str) -> Option<String> {
    h.and_then(|h| h.get(name)).map(|v| v.as_str().to_string())
}

impl<Req, Resp> Ingress<Req, Resp>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    fn count_error(&self, kind: &str) {
        self.metrics.error(kind);
    }

    async fn send(&self, reply: &async_nats::Subject, env: Envelope<Resp>) -> Result<(), ()> {
        // Serialize before awaiting so the future does not hold a borrow of `Resp`.
        let payload = serde_json::to_vec(&env).map_err(|_| ());
        drop(env);
        let payload = payload?;
        let len = payload.len() as u64;
        self.client
            .publish(reply.clone(), payload.into())
            .await
            .map_err(|_| ())?;
        self.metrics.response_bytes.inc_by(len);
        Ok(())
    }

    /// Answer a request with an error in place of the ack (nothing streamed yet), counted
    /// under `error_type`.
    async fn refuse(
        &self,
        reply: &async_nats::Subject,
        error_type: &str,
        kind: ErrorKind,
        message: String,
    ) {
        self.count_error(error_type);
        let env = Envelope::Error {
            kind,
            message,
            n: None,
        };
        if self.send(reply, env).await.is_err() {
            self.count_error("publish_response");
        }
    }

    /// Cancel one in-flight request (a cancellation message arrived); remember an id that is
    /// not running yet, so that it never starts.
    pub fn cancel(&self, request_id: &str) {
        // Under the in-flight lock (then the early set's, the order `handle` takes them in):
        // a request registering now either is found here or finds its id in the early set.
        let inflight = self.inflight.lock().unwrap();
        if let Some(tok) = inflight.get(request_id) {
            tok.cancel();
            return;
        }
        self.cancelled_early.lock().unwrap().insert(request_id);
    }

    pub async fn handle(self: Arc<Self>, msg: Message, process_stop: CancellationToken) {
        let start = Instant::now();
        let m = &self.metrics;
        m.requests.inc();
        m.request_bytes.inc_by(msg.payload.len() as u64);
        m.inflight.inc();
        let span = self.span(&msg);
        self.serve_one(msg, process_stop).instrument(span).await;
        m.inflight.dec();
        m.duration.observe(start.elapsed().as_secs_f64());
    }

    /// `handle_payload`, a child of the caller's context from the message headers.
    fn span(&self, msg: &Message) -> tracing::Span {
        let h = msg.headers.as_ref();
        let e = tracing::field::Empty;
        let span = tracing::info_span!(
            spans::HANDLE_PAYLOAD,
            component = %self.id.component,
            endpoint = %self.id.endpoint,
            namespace = %self.id.namespace,
            instance_id = self.instance_id,
            trace_id = e,
            parent_id = e,
            x_request_id = e,
            x_dynamo_request_id = e,
            tracestate = e,
        );
        let tp = header(h, wire::TRACEPARENT_HEADER);
        if let Some(p) = dynamo_telemetry::context::continue_from(&span, tp.as_deref()) {
            span.record("parent_id", format!("{:016x}", p.span_id));
        }
        if let Some(c) = dynamo_telemetry::context::span_context(&span) {
            span.record("trace_id", c.trace_id_hex());
        }
        for (field, name) in [
            ("x_request_id", wire::X_REQUEST_ID_HEADER),
            ("x_dynamo_request_id", wire::REQUEST_ID_HEADER),
            ("tracestate", wire::TRACESTATE_HEADER),
        ] {
            if let Some(v) = header(h, name) {
                span.record(field, v);
            }
        }
        span
    }

    async fn serve_one(&self, msg: Message, process_stop: CancellationToken) {
        let Some(reply) = msg.reply.clone() else {
            self.count_error("invalid_message");
            tracing::warn!(subject = %msg.subject, "request without reply subject dropped");
            return;
        };
        let headers = msg.headers.as_ref();
        let request_id = header(headers, wire::REQUEST_ID_HEADER)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let request: Req = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("cannot decode request: {e}");
                self.refuse(
                    &reply,
                    "deserialization",
                    ErrorKind::Deserialization,
                    message,
                )
                .await;
                return;
            }
        };
        let cancel = process_stop.child_token();
        // At most one execution per request id: a second message with a running id (a retry
        // that raced a slow ack, or a forged id) is refused, never takes over the first one's
        // cancel token. An id cancelled before it arrived never starts; checking that under the
        // in-flight lock closes the gap in which a cancellation arriving at the same moment
        // would find neither a running request nor a recorded one.
        let duplicate = {
            let mut inflight = self.inflight.lock().unwrap();
            if self.cancelled_early.lock().unwrap().take(&request_id) {
                drop(inflight);
                tracing::debug!(%request_id, endpoint = %self.id, "request cancelled before it arrived");
                return;
            }
            match inflight.entry(request_id.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(cancel.clone());
                    false
                }
            }
        };
        if duplicate {
            tracing::warn!(%request_id, endpoint = %self.id, "duplicate request id refused");
            let message = format!("request {request_id} is already running here");
            self.refuse(
                &reply,
                "duplicate_request",
                ErrorKind::InvalidRequest,
                message,
            )
            .await;
            return;
        }
        let ctx = RequestContext {
            request_id: request_id.clone(),
            x_request_id: header(headers, wire::X_REQUEST_ID_HEADER),
            traceparent: dynamo_telemetry::context::span_context(&tracing::Span::current())
                .map(|c| c.to_header()),
            cancel: cancel.clone(),
        };
        tracing::debug!(%request_id, endpoint = %self.id, "request received");
        let mut stream = self.handler.generate(request, ctx);
        // A handler that refuses at once (a full queue, an invalid request) answers in place
        // of the ack, so the caller can try another instance before anything streamed.
        let early = stream.next().now_or_never();
        if let Some(Some(Err(e))) = early {
            self.inflight.lock().unwrap().remove(&request_id);
            self.refuse(&reply, "generate", e.kind, e.message).await;
            return;
        }
        if self.send(&reply, Envelope::Ack).await.is_err() {
            self.count_error("publish_response");
        }
        let mut stream = match early {
            Some(Some(first)) => futures::stream::once(async move { first })
                .chain(stream)
                .boxed(),
            Some(None) => futures::stream::empty().boxed(),
            None => stream,
        };
        let mut failed = false;
        let mut ended = false;
        let mut seq = Seq::default();
        let mut keepalive = tokio::time::interval_at(
            tokio::time::Instant::now() + wire::KEEPALIVE_INTERVAL,
            wire::KEEPALIVE_INTERVAL,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !ended {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    tracing::debug!(%request_id, endpoint = %self.id, "request cancelled");
                    break;
                }
                item = stream.next() => item,
                _ = keepalive.tick() => {
                    // Nothing to send for a while (a long prefill): say the request is alive.
                    if self.send(&reply, Envelope::Keepalive { n: Some(seq.next()) }).await.is_err() {
                        self.count_error("publish_response");
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            // Send what is ready now as one message; never wait for more.
            let mut batch = Vec::new();
            let mut error = None;
            let mut next = Some(item);
            while let Some(item) = next.take() {
                match item {
                    Ok(r) => batch.push(r),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
                match stream.next().now_or_never() {
                    Some(Some(i)) => next = Some(i),
                    Some(None) => ended = true,
                    None => {}
                }
            }
            if !batch.is_empty() {
                let env = Envelope::Data {
                    d: batch,
                    end: ended && error.is_none(),
                    n: Some(seq.next()),
                };
                keepalive.reset();
                if self.send(&reply, env).await.is_err() {
                    self.count_error("publish_response");
                    failed = true;
                    break;
                }
            }
            if let Some(e) = error {
                self.count_error("generate");
                let env = Envelope::Error {
                    kind: e.kind,
                    message: e.message,
                    n: Some(seq.next()),
                };
                if self.send(&reply, env).await.is_err() {
                    self.count_error("publish_response");
                }
                failed = true;
                break;
            }
        }
        drop(stream);
        let cancelled = cancel.is_cancelled();
        self.inflight.lock().unwrap().remove(&request_id);
        if !failed
            && !cancelled
            && !ended
            && self
                .send(
                    &reply,
                    Envelope::Final {
                        n: Some(seq.next()),
                    },
                )
                .await
                .is_err()
        {
            self.count_error("publish_final");
        }
    }
}

/// Run the subscription loops of one endpoint until `stop` fires; requests run on `tracker`.
pub(crate) async fn run<Req, Resp>(
    ingress: Arc<Ingress<Req, Resp>>,
    mut requests: async_nats::Subscriber,
    mut cancels: async_nats::Subscriber,
    stop: CancellationToken,
    process_stop: CancellationToken,
    tracker: TaskTracker,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = requests.next() => {
                let Some(msg) = msg else { break };
                let ing = ingress.clone();
                tracker.spawn(ing.handle(msg, process_stop.clone()));
            }
            msg = cancels.next() => {
                if let Some(msg) = msg {
                    if let Ok(id) = std::str::from_utf8(&msg.payload) {
                        ingress.cancel(id);
                    }
                }
            }
        }
    }
    let _ = requests.unsubscribe().await;
    // Keep honouring cancellations while in-flight requests drain.
    tokio::spawn(async move {
        while let Some(msg) = cancels.next().await {
            if let Ok(id) = std::str::from_utf8(&msg.payload) {
                ingress.cancel(id);
            }
        }
    });
}
