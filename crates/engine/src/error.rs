//! The engine's typed errors: loading and configuration, requests it cannot serve (each with
//! the values that made it so), KV block import, and a stopped scheduler.

use std::path::PathBuf;

use dynamo_protocols::kv_transfer::{KvHeaderError, KvLayout};

/// Why the engine refused to load, to take a request, or to import KV blocks.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model: {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot load model: {tensor} has the wrong shape")]
    WrongShape { tensor: String },
    /// A setting out of range (the message names the flag).
    #[error("{0}")]
    Config(String),
    #[error("cannot start the {what} thread: {reason}")]
    Spawn { what: &'static str, reason: String },
    #[error(transparent)]
    InvalidRequest(#[from] RequestError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("the engine has stopped")]
    Stopped,
    /// The waiting queue is full (a retryable refusal: another worker may take it).
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// Why a request cannot be served by this engine (a client error: 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    TokenOutOfVocab { token: u32, vocab: usize },
    #[error("the prompt has {prompt} tokens but the context length is {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("max_tokens must be at least 1")]
    ZeroMaxTokens,
    #[error(
        "prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the context length {context}"
    )]
    ExceedsContext {
        prompt: usize,
        max_tokens: u32,
        context: usize,
    },
    #[error("prompt plus max_tokens needs {need} KV tokens but the pool holds {capacity}")]
    ExceedsKvPool { need: usize, capacity: usize },
    #[error("{0}")]
    Sampling(String),
    #[error("logprobs: at most {max} alternatives per token, got {got}")]
    TooManyLogprobs { got: u32, max: u32 },
    #[error("n: between 1 and {max} choices per prompt, got {got}")]
    Choices { got: u32, max: u32 },
    #[error("{0}")]
    Disaggregated(&'static str),
    #[error("a pin TTL must be more than 0 and at most 86400 seconds, got {0}")]
    PinTtl(String),
}

/// Why KV blocks could not be exported or imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("bad KV block export: {0}")]
    Header(#[from] KvHeaderError),
    #[error("KV layouts differ: this engine has {ours}, the export has {theirs}")]
    LayoutMismatch { ours: KvLayout, theirs: KvLayout },
    #[error("{given} target blocks for an export of {exported}")]
    CountMismatch { given: usize, exported: usize },
    #[error("block {block} is outside the cache ({blocks} blocks)")]
    BlockOutOfRange { block: u32, blocks: usize },
}
