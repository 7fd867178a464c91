//! The frontend: OpenAI protocol types and validation, turning requests into token ids
//! (through `dynamo-preprocessor`), the model registry derived from discovery, worker
//! selection (round-robin, random, or the KV-aware router of `dynamo-kv-router`), dispatch
//! over the request plane, and the HTTP service with its `dynamo_frontend_*` metrics.

pub mod http;
pub mod models;
pub mod openai;
pub mod preprocess;
pub mod router;
