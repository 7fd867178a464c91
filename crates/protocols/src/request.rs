//! The request the frontend sends to a worker (token ids plus sampling and stop conditions)
//! and the items a worker streams back.

use serde::{Deserialize, Serialize};

/// A tokenized request, as sent over the request plane to one worker instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PreprocessedRequest {
    /// Served model name the request was addressed to.
    pub model: String,
    /// Prompt token ids (chat template already applied).
    pub token_ids: Vec<u32>,
    #[serde(default)]
    pub sampling: SamplingOptions,
    #[serde(default)]
    pub stop: StopConditions,
    /// Disaggregated decode: where this request's prompt KV waits (set by the frontend from
    /// the prefill worker's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_info: Option<crate::BootstrapInfo>,
    /// Return each generated token's log probability and this many alternatives (0–20):
    /// from the raw logits, before temperature, penalties and truncation (vLLM's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Also return the prompt tokens' log probabilities (each from the logits of the position
    /// before it; the first token has none) with this many alternatives. The prompt is then
    /// computed in full: its prefix is not taken from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<u32>,
    /// Choices to sample from this prompt (1 to [`MAX_CHOICES`]): the prompt is computed once
    /// and its KV shared by every choice; choice `i` samples with `seed + i`. Outputs carry
    /// their choice's [`EngineOutput::index`].
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub n: u32,
    /// Pin the prompt's KV blocks on the worker for this many seconds (more than 0, at most
    /// [`MAX_PIN_TTL_SECS`]) once it is computed (`nvext.cache_control`, or the KV router's
    /// `--router-pin-ttl-secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_pin_ttl_secs: Option<f64>,
}

/// The longest a KV pin may last, in seconds (a day), wherever a pin is asked for.
pub const MAX_PIN_TTL_SECS: f64 = 86_400.0;

impl PreprocessedRequest {
    /// A request for `token_ids` with every option at its default (engine sampling defaults,
    /// no stop conditions, one choice, no log probabilities).
    pub fn new(model: impl Into<String>, token_ids: Vec<u32>) -> Self {
        PreprocessedRequest {
            model: model.into(),
            token_ids,
            sampling: SamplingOptions::default(),
            stop: StopConditions::default(),
            bootstrap_info: None,
            logprobs: None,
            prompt_logprobs: None,
            n: 1,
            cache_pin_ttl_secs: None,
        }
    }
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Most choices one request may ask for (OpenAI's limit on `n`).
pub const MAX_CHOICES: u32 = 128;

/// Most alternatives a request may ask per generated token.
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// One generated token's log probability and the most likely alternatives at its position,
/// best first (`[token id, log probability]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<(u32, f32)>,
}

/// Sampling parameters; `None` means the engine default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SamplingOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
}

/// When the engine must stop generating.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StopConditions {
    /// Maximum number of new tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Minimum number of new tokens before EOS / stop tokens are honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tokens: Option<u32>,
    /// Token ids that end generation (in addition to the model's EOS unless `ignore_eos`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past EOS.
    #[serde(default)]
    pub ignore_eos: bool,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// EOS or a stop token id.
    Eos,
    /// A stop string matched (set by the frontend).
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
    /// The request was cancelled.
    Cancelled,
    /// The engine failed the request.
    Error,
}

impl FinishReason {
    /// OpenAI's `finish_reason` string.
    pub fn as_openai(&self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Token accounting reported by the worker with the last item.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache.
    #[serde(default)]
    pub cached_tokens: u32,
}

/// One streamed item: new token ids, and on the last item a finish reason and usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineOutput {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_ids: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// A prefill worker's first item: where the decode worker fetches this request's KV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_info: Option<crate::BootstrapInfo>,
    /// With `PreprocessedRequest::logprobs`: one entry per id of `token_ids`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// Which choice this item belongs to (0 to `n - 1`); each choice ends with its own
    /// finish reason and usage.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub index: u32,
    /// With `PreprocessedRequest::prompt_logprobs`, on choice 0's first item: one entry per
    /// prompt token after the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompt_logprobs: Vec<TokenLogprob>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_with_defaults() {
        let json = r#"{"model":"m","token_ids":[1,2,3]}"#;
        let req: PreprocessedRequest = serde_json::from_str(json).unwrap();
        assert_eq!(req.token_ids, vec![1, 2, 3]);
        assert_eq!(req.sampling, SamplingOptions::default());
        let back = serde_json::to_string(&req).unwrap();
        let again: PreprocessedRequest = serde_json::from_str(&back).unwrap();
        assert_eq!(req, again);
    }

    #[test]
    fn finish_reasons_map_to_openai() {
        assert_eq!(FinishReason::Eos.as_openai(), "stop");
        assert_eq!(FinishReason::Length.as_openai(), "length");
        let s = serde_json::to_string(&FinishReason::Cancelled).unwrap();
        assert_eq!(s, "\"cancelled\"");
    }
}
