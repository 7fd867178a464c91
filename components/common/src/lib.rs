//! Flags and wiring the binaries share, so each `main.rs` stays wiring only: the runtime's
//! flags (NATS, logging, span export, shutdown grace), the system status server's flags, the
//! worker binaries' model and endpoint flags with registration and KV publishing, the
//! `dynamo_component_*` KV gauges, and fetching the default model into the model cache.

pub mod kv_metrics;
pub mod model_fetch;
pub mod runtime_args;
pub mod system_args;
pub mod worker_wiring;
