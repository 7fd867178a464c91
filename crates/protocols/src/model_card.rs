//! The model card a worker publishes with its discovery record: what the frontend needs to
//! preprocess for that model and to validate requests.

use serde::{Deserialize, Serialize};

/// Published by every worker instance; the first instance of a model wins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelCard {
    /// Name clients use in `model`.
    pub served_model_name: String,
    /// Where the tokenizer and chat template come from: a GGUF file, a Hugging Face directory,
    /// or a model name known to the model cache. The frontend resolves it on its own machine.
    pub source: String,
    /// Maximum prompt + generated tokens.
    pub context_length: u32,
    /// KV block (page) size in tokens; the router hashes blocks of this size.
    pub kv_cache_block_size: u32,
    /// KV blocks the worker has in total (0 when unknown).
    #[serde(default)]
    pub total_kv_blocks: u64,
    /// Most sequences the worker runs at once (0 when unknown).
    #[serde(default)]
    pub max_num_seqs: u64,
    /// Most tokens in one batch (0 when unknown).
    #[serde(default)]
    pub max_num_batched_tokens: u64,
    /// The worker's role: aggregated (`null`), `prefill` or `decode`.
    #[serde(default)]
    pub disaggregation_mode: crate::DisaggregationMode,
    /// What the instance actually serves (architecture and shapes, context, block size): the
    /// frontend routes a model only to instances with the identity it first loaded, so an
    /// instance cannot serve something else under a model's name unnoticed.
    #[serde(default)]
    pub model_id: String,
    /// The worker returns per-token log probabilities when asked (a simulated engine cannot).
    #[serde(default)]
    pub logprobs: bool,
    /// The worker samples several choices from one prompt (`n > 1`) and returns prompt
    /// tokens' log probabilities.
    #[serde(default)]
    pub parallel_sampling: bool,
}
