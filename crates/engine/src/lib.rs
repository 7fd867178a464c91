//! The inference engine of `dynamo-worker`: Llama-family models from GGUF or safetensors,
//! an executor seam that owns weights, KV storage and scratch and runs the forward pass (today
//! the `cpu` executor: SIMD kernels chosen at run time over host memory) and moves KV blocks
//! in and out as bytes, a paged KV cache whose full blocks form a radix tree shared across
//! requests, and a continuous-batching scheduler thread (chunked prefill, retraction,
//! cancellation) with sampling. No runtime or HTTP dependency: the worker binary adapts it to
//! the request plane.

pub mod admission;
pub mod check;
pub mod disagg;
pub mod engine;
mod error;
pub mod executor;
pub mod kernels;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod pins;
pub mod sampling;
mod scheduler;
pub mod trace;

pub use engine::{Engine, EngineConfig, EngineInfo, EngineStats};
pub use error::{EngineError, RequestError, TransferError};
pub use executor::{CpuExecutor, Executor};
pub use kv::PoolStats;
