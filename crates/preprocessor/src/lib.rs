//! What turns text into token ids and back, for the frontend (and the worker's model
//! resolution): model location and the model cache, GGUF / Hugging Face metadata, the
//! tokenizer, chat templates, the incremental detokenizer and stop-string matching. No HTTP,
//! no NATS, no downloads: fetching the default model is the binaries' and launch scripts' job.

pub mod detok;
pub mod model;
pub mod template;
pub mod tokenizer;
