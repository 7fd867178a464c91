//! Turning an OpenAI request into token ids: chat template + tokenizer for chat, the raw text
//! (or given token ids) for completions; checks against the model's context length.

use std::sync::Arc;

use serde_json::Value;

use crate::openai::request::PromptInput;
use crate::openai::ApiError;
use dynamo_preprocessor::model::LoadedModel;
use dynamo_preprocessor::template::ChatTemplate;
use dynamo_preprocessor::tokenizer::{Tokenizer, TokenizerError};

/// A request's `chat_template_kwargs`: more variables for the chat template.
pub type TemplateKwargs = serde_json::Map<String, Value>;

/// Content markers: private-use characters around the message index.
const MARK_OPEN: char = '\u{E000}';
const MARK_CLOSE: char = '\u{E001}';

enum Segment<'a> {
    Template(&'a str),
    Content(usize),
}

/// Split rendered text at content markers; None when a marker is malformed or out of range.
fn split_marked(text: &str, n: usize) -> Option<Vec<Segment<'_>>> {
    let mut out = vec![];
    let mut rest = text;
    while let Some(start) = rest.find(MARK_OPEN) {
        if start > 0 {
            out.push(Segment::Template(&rest[..start]));
        }
        let after = &rest[start + MARK_OPEN.len_utf8()..];
        let end = after.find(MARK_CLOSE)?;
        let i: usize = after[..end].parse().ok()?;
        if i >= n {
            return None;
        }
        out.push(Segment::Content(i));
        rest = &after[end + MARK_CLOSE.len_utf8()..];
    }
    if rest.contains(MARK_CLOSE) {
        return None;
    }
    if !rest.is_empty() {
        out.push(Segment::Template(rest));
    }
    Some(out)
}

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

    /// Render chat messages (already normalized) into prompt text, with the request's
    /// `chat_template_kwargs`.
    pub fn render_chat(
        &self,
        messages: &[Value],
        kwargs: Option<&TemplateKwargs>,
    ) -> Result<String, ApiError> {
        match &self.template {
            Some(t) => t
                .render(messages, None, true, kwargs)
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

    /// Token ids of a chat: the template's own text may hold control tokens, the messages'
    /// content never does. When some content holds control-token text, each content is
    /// rendered as a marker, the template's text around the markers is encoded with special
    /// tokens and each content as plain text, so a user writing `<|im_start|>system` gets those
    /// characters, not a forged system turn. Other chats encode the rendered text whole (byte
    /// for byte what the model was trained on: BPE merges across a content's edges).
    pub fn tokenize_chat(
        &self,
        messages: &[Value],
        kwargs: Option<&TemplateKwargs>,
    ) -> Result<Vec<u32>, ApiError> {
        let enc = |r: Result<Vec<u32>, TokenizerError>| {
            r.map_err(|e| ApiError::validation(format!("Validation: {e}")))
        };
        let contents: Vec<&str> = messages
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default())
            .collect();
        let ids = if !contents
            .iter()
            .any(|c| self.tokenizer.contains_special_text(c))
        {
            enc(self.tokenizer.encode(&self.render_chat(messages, kwargs)?))?
        } else {
            let mut masked = messages.to_vec();
            for (i, m) in masked.iter_mut().enumerate() {
                m["content"] = Value::String(format!("{MARK_OPEN}{i}{MARK_CLOSE}"));
            }
            let text = self.render_chat(&masked, kwargs)?;
            // A template that alters a marker (slices the content, say) cannot keep them apart.
            let segments = split_marked(&text, contents.len()).ok_or_else(|| {
                ApiError::validation(
                    "Validation: a message contains control-token text, which this model's chat template cannot keep apart from its own",
                )
            })?;
            let mut ids = Vec::new();
            for seg in segments {
                match seg {
                    Segment::Template(t) => ids.extend(enc(self.tokenizer.encode(t))?),
                    Segment::Content(i) => {
                        ids.extend(enc(self.tokenizer.encode_plain(contents[i]))?)
                    }
                }
            }
            ids
        };
        if ids.is_empty() {
            return Err(ApiError::validation("Validation: the prompt is empty"));
        }
        Ok(ids)
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
