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
