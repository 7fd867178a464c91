//! Wire types shared by the frontend, the workers (engine and mocker) and the router, the byte
//! format of exported KV blocks, plus the names users see (env vars, flag defaults, span
//! names, metric names, label names) defined once.
//!
//! Everything here is plain serde data: no I/O, no runtime.

pub mod disagg;
pub mod hashing;
pub mod kv_events;
pub mod kv_transfer;
pub mod model_card;
pub mod names;
pub mod request;

pub use disagg::{BootstrapInfo, DisaggregationMode};
pub use kv_events::{KvCacheEvent, KvCacheEventData, LoadReport, RouterEvent};
pub use model_card::ModelCard;
pub use request::{
    EngineOutput, FinishReason, PreprocessedRequest, SamplingOptions, StopConditions, TokenLogprob,
    Usage, MAX_CHOICES, MAX_PIN_TTL_SECS, MAX_TOP_LOGPROBS,
};
