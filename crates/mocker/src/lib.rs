//! A simulated engine for routing, load and fault tests at scale without model compute: the
//! same request and output types as the real engine, a bounded KV block pool with prefix reuse
//! (block hashes from `dynamo_protocols::hashing`, same block size as the real engine),
//! continuous batching bounded by `max_num_seqs`, and timing from a simple model (prefill time
//! proportional to uncached prompt tokens, a per-iteration decode time) divided by
//! `speedup_ratio`; KV stored/removed events like the real engine's. Output tokens are a deterministic function of the prompt and position.

mod kv;
mod scheduler;

pub use kv::BlockPool;
pub use scheduler::{MockEngine, MockStats, MockerConfig, MockerError};
