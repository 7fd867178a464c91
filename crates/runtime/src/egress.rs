//! Calling an endpoint instance: publish the request with a private reply inbox, wait for the
//! worker's acknowledgement, then stream its items. Dropping the stream before the final
//! message asks the worker to cancel the request.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::{Client, HeaderMap, Subscriber};
use futures::{Future, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::addressing::EndpointId;
use crate::error::RuntimeError;
use crate::wire::{self, Envelope};

/// How often a waiting stream checks that its worker is still heard from.
const ALIVE_CHECK: Duration = Duration::from_millis(250);

/// Headers and limits of one call.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Internal request id; generated when empty.
    pub request_id: String,
    pub x_request_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Sends cancellation when dropped while armed.
struct CancelGuard {
    client: Client,
    subject: String,
    request_id: String,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let client = self.client.clone();
        let subject = std::mem::take(&mut self.subject);
        let id = std::mem::take(&mut self.request_id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = client.publish(subject, id.into_bytes().into()).await {
                    tracing::warn!(error = %e, "could not send cancellation");
                }
            });
        }
    }
}

/// The responses of one call. Ends after the worker's final message; yields `Err` once on a
/// remote error, a timeout or a lost instance, then ends.
pub struct ResponseStream<T> {
    sub: Subscriber,
    guard: CancelGuard,
    stream_timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    alive_check: Pin<Box<tokio::time::Sleep>>,
    alive: Box<dyn Fn() -> bool + Send + Sync>,
    instance_id: u64,
    /// Items received but not yet yielded, and whether the stream ended after them.
    buffered: std::collections::VecDeque<T>,
    ended: bool,
    /// When the last message arrived (keepalives included): silence past
    /// [`wire::KEEPALIVE_LOSS`] means the worker is gone, whatever discovery says yet.
    last_heard: tokio::time::Instant,
    /// The sequence number the next post-ack message must carry.
    expected: u64,
    done: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

// Never pinned structurally: the buffered items are plain values moved out by `pop_front`.
impl<T> Unpin for ResponseStream<T> {}

impl<T> ResponseStream<T> {
    /// The internal request id of this call.
    pub fn request_id(&self) -> &str {
        &self.guard.request_id
    }

    /// The worker ended the request (final message or its error): nothing to cancel.
    fn finish(&mut self) {
        self.done = true;
        self.guard.armed = false;
    }

    /// This side gives up (timeout, undecodable message, lost subscription or instance): the
    /// guard stays armed so dropping the stream tells the worker to stop computing.
    fn abandon(&mut self) {
        self.done = true;
    }
}

impl<T: DeserializeOwned> Stream for ResponseStream<T> {
    type Item = Result<T, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(item) = this.buffered.pop_front() {
            return Poll::Ready(Some(Ok(item)));
        }
        if this.ended {
            this.finish();
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.sub.poll_next_unpin(cx) {
                Poll::Ready(Some(msg)) => {
                    let now = tokio::time::Instant::now();
                    this.last_heard = now;
                    let env = serde_json::from_slice::<Envelope<T>>(&msg.payload);
                    if let Some(n) = env.as_ref().ok().and_then(Envelope::seq) {
                        if n < this.expected {
                            continue; // a duplicate delivery
                        }
                        if n > this.expected {
                            let expected = this.expected;
                            this.abandon();
                            tracing::warn!(expected, got = n, "reply stream lost messages");
                            return Poll::Ready(Some(Err(RuntimeError::Gap { expected, got: n })));
                        }
                        this.expected = n + 1;
                    }
                    if !matches!(env, Ok(Envelope::Keepalive { .. })) {
                        // Keepalives prove liveness, not progress: the stream timeout is
                        // about results.
                        this.timer.as_mut().reset(now + this.stream_timeout);
                    }
                    match env {
                        Ok(Envelope::Ack | Envelope::Keepalive { .. }) => continue,
                        Ok(Envelope::Data { d, end, .. }) => {
                            this.buffered.extend(d);
                            if end {
                                // Nothing more will come: stop cancelling on drop.
                                this.guard.armed = false;
                                this.ended = true;
                            }
                            match this.buffered.pop_front() {
                                Some(item) => return Poll::Ready(Some(Ok(item))),
                                None if end => {
                                    this.finish();
                                    return Poll::Ready(None);
                                }
                                None => continue,
                            }
                        }
                        Ok(Envelope::Final { .. }) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Envelope::Error { kind, message, .. }) => {
                            this.finish();
                            return Poll::Ready(Some(Err(RuntimeError::Remote { kind, message })));
                        }
                        Err(e) => {
                            this.abandon();
                            return Poll::Ready(Some(Err(RuntimeError::Protocol(e.to_string()))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.abandon();
                    return Poll::Ready(Some(Err(RuntimeError::Nats(
                        "reply subscription closed".into(),
                    ))));
                }
                Poll::Pending => break,
            }
        }
        // Nothing arrived: check the instance is still alive every so often, and give up
        // after the stream timeout.
        if this.timer.as_mut().poll(cx).is_ready() {
            this.abandon();
            return Poll::Ready(Some(Err(RuntimeError::StreamTimeout(this.stream_timeout))));
        }
        while this.alive_check.as_mut().poll(cx).is_ready() {
            let silent = this.last_heard.elapsed();
            // Lost: keepalives stopped, or discovery already dropped a silent instance.
            if silent > wire::KEEPALIVE_LOSS || (silent > ALIVE_CHECK && !(this.alive)()) {
                this.abandon();
                return Poll::Ready(Some(Err(RuntimeError::InstanceLost(this.instance_id))));
            }
            let next = tokio::time::Instant::now() + ALIVE_CHECK;
            this.alive_check.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// Publish `request` to one instance and wait for its acknowledgement.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &Client,
    id: &EndpointId,
    instance_id: u64,
    request: &Req,
    opts: CallOptions,
    ack_timeout: Duration,
    stream_timeout: Duration,
    alive: Box<dyn Fn() -> bool + Send + Sync>,
) -> Result<ResponseStream<Resp>, RuntimeError> {
    let subject = id.instance_subject(instance_id);
    let payload = serde_json::to_vec(request).map_err(|e| RuntimeError::Protocol(e.to_string()))?;
    let request_id = if opts.request_id.is_empty() {
        format!("{:032x}", rand::random::<u128>())
    } else {
        opts.request_id
    };
    let mut headers = HeaderMap::new();
    headers.insert(wire::REQUEST_ID_HEADER, request_id.as_str());
    if let Some(v) = &opts.x_request_id {
        headers.insert(wire::X_REQUEST_ID_HEADER, v.as_str());
    }
    if let Some(v) = &opts.traceparent {
        headers.insert(wire::TRACEPARENT_HEADER, v.as_str());
    }
    if let Some(v) = &opts.tracestate {
        headers.insert(wire::TRACESTATE_HEADER, v.as_str());
    }
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| RuntimeError::Nats(e.to_string()))?;
    client
        .publish_with_reply_and_headers(subject.clone(), inbox, headers, payload.into())
        .await
        .map_err(|e| RuntimeError::Nats(e.to_string()))?;
    // The first message is the worker's ack, or the server's "no responders" status.
    let first = match tokio::time::timeout(ack_timeout, sub.next()).await {
        Ok(first) => first,
        Err(_) => {
            // The caller will try another instance: make sure this one never runs it too.
            let _ = client
                .publish(
                    id.cancel_subject(instance_id),
                    request_id.into_bytes().into(),
                )
                .await;
            return Err(RuntimeError::AckTimeout(ack_timeout));
        }
    };
    let Some(first) = first else {
        return Err(RuntimeError::Nats("reply subscription closed".into()));
    };
    if first.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
        return Err(RuntimeError::NoResponders { subject });
    }
    match serde_json::from_slice::<Envelope<serde_json::Value>>(&first.payload) {
        Ok(Envelope::Ack) => {}
        Ok(Envelope::Error { kind, message, .. }) => {
            return Err(RuntimeError::Remote { kind, message });
        }
        Ok(_) => return Err(RuntimeError::Protocol("expected ack first".into())),
        Err(e) => return Err(RuntimeError::Protocol(e.to_string())),
    }
    Ok(ResponseStream {
        sub,
        guard: CancelGuard {
            client: client.clone(),
            subject: id.cancel_subject(instance_id),
            request_id,
            armed: true,
        },
        stream_timeout,
        timer: Box::pin(tokio::time::sleep(stream_timeout)),
        alive_check: Box::pin(tokio::time::sleep(ALIVE_CHECK)),
        alive,
        instance_id,
        buffered: Default::default(),
        ended: false,
        last_heard: tokio::time::Instant::now(),
        expected: 1,
        done: false,
        _t: std::marker::PhantomData,
    })
}
