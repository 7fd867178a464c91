//! A raw NATS peer for tests that play a hostile or broken participant of the request and
//! events planes: it publishes and requests arbitrary bytes, bypassing the runtime's typed API
//! on purpose. The one place outside `crates/runtime` that talks to NATS (see `tidy`).

use std::time::Duration;

/// A plain NATS connection to the cluster's server.
pub struct RawPeer {
    client: async_nats::Client,
}

impl RawPeer {
    pub async fn connect(url: &str) -> Self {
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("raw peer cannot connect to {url}: {e}"));
        RawPeer { client }
    }

    /// Publish `payload` on `subject` and flush it to the server.
    pub async fn publish(&self, subject: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(subject.to_string(), payload.into().into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    /// Publish `payload` on `subject` with `headers`, replies going to `reply`.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        reply: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Vec<u8>>,
    ) {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        self.client
            .publish_with_reply_and_headers(
                subject.to_string(),
                reply.to_string(),
                h,
                payload.into().into(),
            )
            .await
            .unwrap();
        self.client.flush().await.unwrap();
    }

    /// [`RawPeer::request`] with headers.
    pub async fn request_with_headers(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: impl Into<Vec<u8>>,
        wait: Duration,
    ) -> Option<Vec<u8>> {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        let fut = self
            .client
            .request_with_headers(subject.to_string(), h, payload.into().into());
        match tokio::time::timeout(wait, fut).await {
            Ok(Ok(m)) => Some(m.payload.to_vec()),
            _ => None,
        }
    }

    /// Request with `payload` on `subject`; the first answer's bytes, or None after `wait`.
    pub async fn request(
        &self,
        subject: &str,
        payload: impl Into<Vec<u8>>,
        wait: Duration,
    ) -> Option<Vec<u8>> {
        let fut = self
            .client
            .request(subject.to_string(), payload.into().into());
        match tokio::time::timeout(wait, fut).await {
            Ok(Ok(m)) => Some(m.payload.to_vec()),
            _ => None,
        }
    }
}
