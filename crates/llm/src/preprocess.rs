//! Turning an OpenAI request into token ids: chat template + tokenizer for chat, the raw text
//! (or given token ids) for completions; checks against the model's context length.

use std::sync::Arc;

use serde_json::Value;

use crate::openai::request::PromptInput;
use crate::openai::ApiError;
use dynamo_preprocessor::model::LoadedModel;
use dynamo_preprocessor::template::ChatTemplate;
use dynamo_preprocessor::tokenizer::Tokenizer;

/// Per-model preprocessing state, shared by all requests for the model.
pub struct Preprocessor {
    pub tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    pub context_length: u32,
}

impl Preprocessor {
    pub fn new(model: LoadedModel, context_length: Option<u32>) -> Self {
        Preprocessor {
            context_length: context_length.unwrap_or(model.context_length),
            tokenizer: Arc::new(model.tokenizer),
            template: model.chat_template,
        }
    }

    /// Render chat messages (already normalized) into prompt text.
    pub fn render_chat(&self, messages: &[Value]) -> Result<String, ApiError> {
        match &self.template {
            Some(t) => t
                .render(messages, None, true)
                .map_err(|e| ApiError::validation(format!("Validation: {e}"))),
            None => {
                // No template: plain "role: content" lines, then the assistant turn.
                let mut s = String::new();
                for m in messages {
                    s.push_str(m["role"].as_str().unwrap_or(""));
                    s.push_str(": ");
                    s.push_str(m["content"].as_str().unwrap_or(""));
                    s.push('\n');
                }
                s.push_str("assistant: ");
                Ok(s)
            }
        }
    }

    /// Token ids of a prompt.
    pub fn tokenize(&self, prompt: &PromptInput) -> Result<Vec<u32>, ApiError> {
        let ids = match prompt {
            PromptInput::Text(t) => self
                .tokenizer
                .encode(t)
                .map_err(|e| ApiError::validation(format!("Validation: {e}")))?,
            PromptInput::Tokens(ids) => {
                let vocab = self.tokenizer.vocab_size() as u32;
                if let Some(bad) = ids.iter().find(|t| **t >= vocab) {
                    return Err(ApiError::validation(format!(
                        "Validation: token id {bad} is outside the vocabulary (size {vocab})"
                    )));
                }
                ids.clone()
            }
        };
        if ids.is_empty() {
            return Err(ApiError::validation("Validation: the prompt is empty"));
        }
        Ok(ids)
    }

    /// Check the prompt and `max_tokens` fit the context; return the effective max tokens.
    pub fn check_length(
        &self,
        prompt_len: usize,
        max_tokens: Option<u32>,
    ) -> Result<u32, ApiError> {
        let ctx = self.context_length as usize;
        if prompt_len >= ctx {
            return Err(ApiError::validation(format!(
                "Validation: the prompt has {prompt_len} tokens, which does not fit the model's context length of {ctx} tokens"
            )));
        }
        let room = (ctx - prompt_len) as u32;
        match max_tokens {
            Some(m) if m > room => Err(ApiError::validation(format!(
                "Validation: prompt ({prompt_len} tokens) + max_tokens ({m}) exceeds the model's context length of {ctx} tokens"
            ))),
            Some(m) => Ok(m),
            None => Ok(room),
        }
    }
}
