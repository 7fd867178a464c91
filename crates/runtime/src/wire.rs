//! The request-plane wire format: header names and the envelope of every message a worker
//! sends back on the reply subject (ack, data, final, error).

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// Header carrying the internal request id (used for cancellation).
pub const REQUEST_ID_HEADER: &str = "x-dynamo-request-id";
/// Header carrying the client's `x-request-id`.
pub const X_REQUEST_ID_HEADER: &str = "x-request-id";
/// W3C trace context headers.
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const TRACESTATE_HEADER: &str = "tracestate";

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
    },
    /// The stream ended normally.
    #[serde(rename = "final")]
    Final,
    /// The stream ended with an error.
    #[serde(rename = "error")]
    Error { kind: ErrorKind, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_shapes() {
        let d: Envelope<u32> = Envelope::Data {
            d: vec![7],
            end: false,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"t":"data","d":[7]}"#
        );
        let d: Envelope<u32> = Envelope::Data {
            d: vec![7, 8],
            end: true,
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"t":"data","d":[7,8],"end":true}"#
        );
        let e: Envelope<u32> =
            serde_json::from_str(r#"{"t":"error","kind":"invalid_request","message":"too long"}"#)
                .unwrap();
        assert_eq!(
            e,
            Envelope::Error {
                kind: ErrorKind::InvalidRequest,
                message: "too long".into()
            }
        );
        let f: Envelope<u32> = serde_json::from_str(r#"{"t":"final"}"#).unwrap();
        assert_eq!(f, Envelope::Final);
    }
}
