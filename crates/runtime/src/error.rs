//! Typed errors of the runtime: classified once, near their cause.

use serde::{Deserialize, Serialize};

/// Failures of runtime operations (connecting, discovery, calling an endpoint).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("NATS operation failed: {0}")]
    Nats(String),
    #[error("discovery bucket error: {0}")]
    Discovery(String),
    #[error("no worker answered on {subject}")]
    NoResponders { subject: String },
    #[error("worker did not acknowledge the request within {0:?}")]
    AckTimeout(std::time::Duration),
    #[error("worker stopped responding (no message for {0:?})")]
    StreamTimeout(std::time::Duration),
    #[error("worker instance {0:x} left while the request was in flight")]
    InstanceLost(u64),
    #[error("worker failed the request ({kind:?}): {message}")]
    Remote { kind: ErrorKind, message: String },
    #[error("malformed message from worker: {0}")]
    Protocol(String),
    /// A reply message was lost (a sequence gap): the stream cannot be trusted to complete.
    #[error("lost reply messages: expected #{expected}, got #{got}")]
    Gap { expected: u64, got: u64 },
    #[error("cannot bind system status server on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("runtime is shutting down")]
    ShuttingDown,
}

/// Class of an error reported by a handler, carried over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was invalid for this worker (e.g. longer than its context).
    InvalidRequest,
    /// The worker is shutting down or cannot serve now.
    Unavailable,
    /// The worker's queue is full: another worker may take the request, or retry later.
    Overloaded,
    /// The engine failed.
    Internal,
    /// The request payload could not be decoded.
    Deserialization,
    /// Disaggregated decode: the prompt's KV could not be fetched from the prefill worker
    /// (another prefill worker may succeed).
    KvTransfer,
}

/// An error a handler returns for one request.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize, PartialEq)]
#[error("{kind:?}: {message}")]
pub struct HandlerError {
    pub kind: ErrorKind,
    pub message: String,
}

impl HandlerError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            message: message.into(),
        }
    }
}
