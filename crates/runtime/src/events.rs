//! The events plane: typed messages on NATS subjects that are not requests — KV events and
//! load reports (publish / subscribe), routers' re-sync queries and their multi-message
//! answers (request-many with a deadline), and a bounded flush that confirms subscriptions.
//! Other crates reach NATS only through this and the request plane; the subjects themselves
//! are named in `dynamo_protocols::kv_events`.

use std::marker::PhantomData;
use std::time::Duration;

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How often a query that found no subscriber yet is asked again within its deadline.
const NO_RESPONDERS_RETRY: Duration = Duration::from_millis(200);

/// Why an events-plane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot encode a message for {subject}: {reason}")]
    Encode { subject: String, reason: String },
    #[error("cannot decode a message on {subject}: {reason}")]
    Decode { subject: String, reason: String },
    #[error("cannot publish on {subject}: {reason}")]
    Publish { subject: String, reason: String },
    #[error("cannot subscribe to {subject}: {reason}")]
    Subscribe { subject: String, reason: String },
    #[error("NATS flush failed: {0}")]
    Flush(String),
    #[error("NATS did not confirm a flush within {0:?}")]
    FlushTimeout(Duration),
    #[error("no complete answer on {subject} within {deadline:?}")]
    Deadline { subject: String, deadline: Duration },
    #[error("the answer subscription for {subject} closed")]
    Closed { subject: String },
}

/// Handle to the events plane of one NATS connection; cheap to clone.
#[derive(Clone)]
pub struct Events {
    client: async_nats::Client,
}

impl Events {
    pub(crate) fn new(client: async_nats::Client) -> Self {
        Events { client }
    }

    /// Publish `msg` as JSON on `subject`.
    pub async fn publish<T: Serialize>(&self, subject: &str, msg: &T) -> Result<(), EventsError> {
        let body = encode(subject, msg)?;
        self.client
            .publish(subject.to_string(), body)
            .await
            .map_err(|e| EventsError::Publish {
                subject: subject.to_string(),
                reason: e.to_string(),
            })
    }

    /// Subscribe to `subject`; messages arrive decoded as `T`.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        subject: &str,
    ) -> Result<Subscription<T>, EventsError> {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| EventsError::Subscribe {
                subject: subject.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Subscription {
            sub,
            subject: subject.to_string(),
            client: self.client.clone(),
            _t: PhantomData,
        })
    }

    /// Wait until nats-server has processed everything this connection sent so far (its
    /// subscriptions included), at most `bound`: while NATS is reconnecting a caller gets an
    /// error instead of waiting for the reconnect.
    pub async fn flush(&self, bound: Duration) -> Result<(), EventsError> {
        match tokio::time::timeout(bound, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EventsError::Flush(e.to_string())),
            Err(_) => Err(EventsError::FlushTimeout(bound)),
        }
    }

    /// Send `query` to the one subscriber of `subject` and collect its answer messages until
    /// `done` says the last one came, within `deadline`. A subject with no subscriber yet
    /// (NATS "no responders": a worker registered but not yet listening) is asked again every
    /// 200 ms within the deadline.
    pub async fn request_many<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: &str,
        query: &Q,
        deadline: Duration,
        mut done: impl FnMut(&A) -> bool,
    ) -> Result<Vec<A>, EventsError> {
        let body = encode(subject, query)?;
        let inbox = self.client.new_inbox();
        let mut sub =
            self.client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| EventsError::Subscribe {
                    subject: inbox.clone(),
                    reason: e.to_string(),
                })?;
        let ask = || async {
            self.client
                .publish_with_reply(subject.to_string(), inbox.clone(), body.clone())
                .await
                .map_err(|e| EventsError::Publish {
                    subject: subject.to_string(),
                    reason: e.to_string(),
                })
        };
        ask().await?;
        let mut parts = Vec::new();
        let timer = tokio::time::sleep(deadline);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                _ = &mut timer => {
                    return Err(EventsError::Deadline { subject: subject.to_string(), deadline });
                }
                m = sub.next() => {
                    let Some(m) = m else {
                        return Err(EventsError::Closed { subject: subject.to_string() });
                    };
                    if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                        tokio::time::sleep(NO_RESPONDERS_RETRY).await;
                        ask().await?;
                        continue;
                    }
                    let part: A = decode(subject, &m.payload)?;
                    let last = done(&part);
                    parts.push(part);
                    if last {
                        return Ok(parts);
                    }
                }
            }
        }
    }
}

/// A subscription whose messages decode as `T`.
pub struct Subscription<T> {
    sub: async_nats::Subscriber,
    subject: String,
    client: async_nats::Client,
    _t: PhantomData<fn() -> T>,
}

/// One received message and, for a query, where to answer it.
pub struct Message<T> {
    pub body: T,
    pub reply: Option<Replier>,
}

/// Where the answer to one query goes.
pub struct Replier {
    client: async_nats::Client,
    subject: String,
}

impl Replier {
    /// Send one answer message (a query may be answered with several).
    pub async fn send<A: Serialize>(&self, msg: &A) -> Result<(), EventsError> {
        let body = encode(&self.subject, msg)?;
        self.client
            .publish(self.subject.clone(), body)
            .await
            .map_err(|e| EventsError::Publish {
                subject: self.subject.clone(),
                reason: e.to_string(),
            })
    }
}

impl<T: DeserializeOwned> Subscription<T> {
    /// The next message that decodes (one that does not is logged and skipped); `None` once
    /// the subscription has ended.
    pub async fn next(&mut self) -> Option<Message<T>> {
        loop {
            let m = self.sub.next().await?;
            match decode::<T>(&self.subject, &m.payload) {
                Ok(body) => {
                    return Some(Message {
                        body,
                        reply: m.reply.map(|s| Replier {
                            client: self.client.clone(),
                            subject: s.to_string(),
                        }),
                    })
                }
                Err(e) => tracing::warn!(error = %e, "skipping an undecodable message"),
            }
        }
    }

    /// The subject this subscription listens on.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

fn encode<T: Serialize>(subject: &str, msg: &T) -> Result<bytes::Bytes, EventsError> {
    serde_json::to_vec(msg)
        .map(bytes::Bytes::from)
        .map_err(|e| EventsError::Encode {
            subject: subject.to_string(),
            reason: e.to_string(),
        })
}

fn decode<T: DeserializeOwned>(subject: &str, payload: &[u8]) -> Result<T, EventsError> {
    serde_json::from_slice(payload).map_err(|e| EventsError::Decode {
        subject: subject.to_string(),
        reason: e.to_string(),
    })
}
