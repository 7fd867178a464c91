//! The inference engine of `dynamo-worker`: Llama-family models from GGUF or safetensors on
//! candle-core, SIMD kernels chosen at run time, a paged KV cache whose full blocks form a
//! radix tree shared across requests, and a continuous-batching scheduler thread (chunked
//! prefill, retraction, cancellation) with sampling. No runtime or HTTP dependency: the
//! worker binary adapts it to the request plane.

pub mod engine;
pub mod kernels;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod sampling;
mod scheduler;
pub mod trace;

pub use engine::{Engine, EngineConfig, EngineInfo, EngineStats};
pub use kv::PoolStats;

/// Why the engine refused to load or to take a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model: {0}")]
    Load(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the engine has stopped")]
    Stopped,
}
