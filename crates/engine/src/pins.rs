//! Pinning KV blocks from outside the scheduler: [`Engine::pin_blocks`] and
//! [`Engine::unpin_blocks`] by sequence (block) hash, as the worker's `/engine/pin_blocks` and
//! request-plane pin subject call them, and a request's own pin TTL checked.

use std::time::Duration;

use dynamo_protocols::MAX_PIN_TTL_SECS;
use tokio::sync::oneshot;

use crate::scheduler::Cmd;
use crate::{Engine, EngineError, RequestError};

/// The longest pin.
pub const MAX_PIN_TTL: Duration = Duration::from_secs(MAX_PIN_TTL_SECS as u64);

/// A pin TTL in seconds, checked (more than 0, at most [`MAX_PIN_TTL`]).
pub fn pin_ttl(secs: f64) -> Result<Duration, RequestError> {
    if secs > 0.0 && secs <= MAX_PIN_TTL_SECS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(RequestError::PinTtl(secs.to_string()))
    }
}

/// A request's `cache_pin_ttl_secs`, checked.
pub(crate) fn request_ttl(secs: Option<f64>) -> Result<Option<Duration>, RequestError> {
    secs.map(pin_ttl).transpose()
}

impl Engine {
    /// Pin the blocks `hashes` (and the blocks before them) for `ttl` (at most
    /// [`MAX_PIN_TTL`]); how many of `hashes` some tier held and are now pinned.
    pub async fn pin_blocks(&self, hashes: Vec<u64>, ttl: Duration) -> Result<usize, EngineError> {
        self.pin_cmd(hashes, Some(ttl.min(MAX_PIN_TTL))).await
    }

    /// Unpin `hashes`; how many were pinned.
    pub async fn unpin_blocks(&self, hashes: Vec<u64>) -> Result<usize, EngineError> {
        self.pin_cmd(hashes, None).await
    }

    async fn pin_cmd(&self, hashes: Vec<u64>, ttl: Option<Duration>) -> Result<usize, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Pin { hashes, ttl, reply })
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }
}
