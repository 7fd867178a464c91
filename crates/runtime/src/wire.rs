//! The request-plane wire format: header names and the envelope of every message a worker
//! sends back on the reply subject (ack, data, keepalive, final, error). Every message after
//! the ack carries a sequence number `n` (1, 2, …), so the caller detects a lost message as a
//! gap instead of waiting for one that never comes; keepalives prove the worker is alive while
//! it has nothing to send.

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// Header carrying the internal request id (used for cancellation).
pub const REQUEST_ID_HEADER: &str = "x-dynamo-request-id";
/// Header carrying the client's `x-request-id`.
pub const X_REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C trace context headers.
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";

/// How often a worker with nothing else to send says it is alive.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// Silence after which a caller takes the worker for lost (several keepalives missed).
pub const KEEPALIVE_LOSS: std::time::Duration = std::time::Duration::from_millis(1500);

/// One message on the reply subject. Serialized as `{"t":"…", …}`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t")]
pub enum Envelope<T> {
    /// The worker received the request and started it.
    #[serde(rename = "ack")]
    Ack,
    /// Streamed response items: usually one, several when the handler had more ready at once
    /// (fewer messages under load). `end` set: the stream ended right after them.
    #[serde(rename = "data")]
    Data {
        d: Vec<T>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        end: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
    },
    /// Nothing to send yet; the request is still being worked on.
    #[serde(rename = "alive")]
    Keepalive { n: Option<u64> },
    /// The stream ended normally.
    #[serde(rename = "final")]
    Final {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
    },
    /// The stream ended with an error (in place of the ack when the handler refused at once).
    #[serde(rename = "error")]
    Error {
        kind: ErrorKind,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
    },
}

impl<T> Envelope<T> {
    /// The sequence number of a post-ack message.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Envelope::Ack => None,
            Envelope::Data { n, .. }
            | Envelope::Keepalive { n }
            | Envelope::Final { n }
            | Envelope::Error { n, .. } => *n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shapes() {
        let d: Envelope<u32> = Envelope::Data {
            d: vec![7],
            end: false,
            n: Some(1),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"t":"data","d":[7],"n":1}"#
        );
        let d: Envelope<u32> = Envelope::Data {
            d: vec![7, 8],
            end: true,
            n: Some(2),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"t":"data","d":[7,8],"end":true,"n":2}"#
        );
        let k: Envelope<u32> = serde_json::from_str(r#"{"t":"alive","n":3}"#).unwrap();
        assert_eq!(k.seq(), Some(3));
        let e: Envelope<u32> =
            serde_json::from_str(r#"{"t":"error","kind":"invalid_request","message":"too long"}"#)
                .unwrap();
        assert_eq!(
            e,
            Envelope::Error {
                kind: ErrorKind::InvalidRequest,
                message: "too long".into(),
                n: None,
            }
        );
        let f: Envelope<u32> = serde_json::from_str(r#"{"t":"final"}"#).unwrap();
        assert_eq!(f, Envelope::Final { n: None });
    }
}
