//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their validation into
//! the parameters the pipeline uses. Bodies deserialize straight into the typed request (no
//! intermediate JSON tree); unknown fields (a typo such as `max_token`) and unsupported
//! features are rejected with a 400 that names them, never silently ignored.

use serde::Deserialize;
use serde_json::Value;

use dynamo_protocols::SamplingOptions;

use super::error::ApiError;
pub use super::prompt::{PromptInput, Prompts};

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Dynamo's extension object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvExt {
    pub ignore_eos: Option<bool>,
    pub top_k: Option<i32>,
    pub repetition_penalty: Option<f32>,
    pub min_tokens: Option<u32>,
    pub backend_instance_id: Option<u64>,
    /// `{"type": "ephemeral", "ttl": "5m"}`: pin the prompt's KV on its worker.
    pub cache_control: Option<Value>,
}

/// Temperatures below this sample greedily: dividing logits by a smaller one overflows to
/// infinities and NaN probabilities.
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-5;

/// A chat or completions request body. Both endpoints share one type so that no field needs
/// `#[serde(flatten)]` (which buffers the whole body and defeats `deny_unknown_fields`); the
/// handler checks that `messages` (chat) or `prompt` (completions), and only it, is present.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonParams {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub prompt: Option<Prompts>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub best_of: Option<u32>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
    pub logit_bias: Option<Value>,
    /// Chat only: more variables for the model's chat template (Qwen3's `enable_thinking`,
    /// say), as vLLM and SGLang take them.
    pub chat_template_kwargs: Option<serde_json::Map<String, Value>>,
    pub nvext: Option<NvExt>,
    /// Accepted and ignored: they do not change what is generated.
    pub user: Option<String>,
    pub metadata: Option<Value>,
    pub store: Option<bool>,
    pub service_tier: Option<String>,
    pub parallel_tool_calls: Option<bool>,
}

/// Most alternatives per token a completions request may ask (`logprobs`), as OpenAI's
/// legacy endpoint allows; chat's `top_logprobs` allows [`dynamo_protocols::MAX_TOP_LOGPROBS`].
pub const MAX_COMPLETION_LOGPROBS: u64 = 5;

/// Most choices one prompt may ask for (`n`, `best_of`).
pub const MAX_CHOICES: u32 = dynamo_protocols::MAX_CHOICES;

/// The validated generation parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    /// Choices returned per prompt.
    pub n: u32,
    /// Choices generated per prompt (`best_of` on completions, else `n`); the `n` with the
    /// highest cumulative log probability are returned.
    pub best_of: u32,
    /// Completions: the prompt's text (and, with `logprobs`, its tokens' log probabilities)
    /// starts each choice.
    pub echo: bool,
    /// `echo` with `max_tokens: 0`: the prompt alone (the worker samples one token, which is
    /// not shown or counted).
    pub score_only: bool,
    /// Per-token log probabilities with this many alternatives (`None`: not asked).
    pub logprobs: Option<u32>,
    pub max_tokens: Option<u32>,
    pub min_tokens: Option<u32>,
    pub sampling: SamplingOptions,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub backend_instance_id: Option<u64>,
    /// `nvext.cache_control`'s TTL: pin the prompt's blocks on the worker this long.
    pub cache_pin_ttl_secs: Option<f64>,
}

fn range(name: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::validation(format!(
            "Validation: {name} must be between {lo} and {hi}, got {x}"
        ))),
        _ => Ok(()),
    }
}

fn unsupported(what: &str) -> ApiError {
    ApiError::validation(format!(
        "Validation: {what} is not supported by this server"
    ))
}

impl CommonParams {
    /// Check ranges and unsupported features; produce the pipeline's parameters (`chat`: for
    /// `/v1/chat/completions`, whose `logprobs` differ from completions').
    pub fn validate(&self, force_usage: bool, chat: bool) -> Result<GenParams, ApiError> {
        let (n, best_of) = self.choices(chat)?;
        let echo = self.echo == Some(true);
        if echo && chat {
            return Err(ApiError::validation(
                "Validation: echo is a completions field; chat completions do not take it",
            ));
        }
        if self.suffix.is_some() {
            return Err(unsupported("suffix"));
        }
        if self
            .tools
            .as_ref()
            .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(unsupported("tools (tool calling)"));
        }
        if self
            .tool_choice
            .as_ref()
            .is_some_and(|t| !t.is_null() && t != "none")
        {
            return Err(unsupported("tool_choice"));
        }
        if let Some(rf) = &self.response_format {
            let kind = rf.get("type").and_then(|t| t.as_str());
            if !rf.is_null() && kind != Some("text") {
                return Err(unsupported("response_format other than text"));
            }
        }
        if self
            .logit_bias
            .as_ref()
            .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
        {
            return Err(unsupported("logit_bias"));
        }
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        if self.top_p == Some(0.0) {
            return Err(ApiError::validation(
                "Validation: top_p must be greater than 0",
            ));
        }
        range("min_p", self.min_p, 0.0, 1.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let nv = self.nvext.clone().unwrap_or_default();
        let rep = self.repetition_penalty.or(nv.repetition_penalty);
        range("repetition_penalty", rep, 0.0, 2.0)?;
        if rep == Some(0.0) {
            return Err(ApiError::validation(
                "Validation: repetition_penalty must be greater than 0",
            ));
        }
        let top_k = self.top_k.or(nv.top_k);
        if top_k.is_some_and(|k| k < -1) {
            return Err(ApiError::validation(
                "Validation: top_k must be -1 (disabled) or positive",
            ));
        }
        // max_completion_tokens wins; max_tokens is its deprecated alias.
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        // `echo` with `max_tokens: 0` scores the prompt and generates nothing.
        let score_only = echo && max_tokens == Some(0);
        if max_tokens == Some(0) && !score_only {
            return Err(ApiError::validation(
                "Validation: max_tokens must be at least 1 (0 only with echo, to score the prompt)",
            ));
        }
        let stop = match &self.stop {
            None => vec![],
            Some(StopSpec::One(s)) => vec![s.clone()],
            Some(StopSpec::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::validation(
                "Validation: at most 4 stop sequences are allowed",
            ));
        }
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::validation(
                "Validation: stop sequences must not be empty",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::validation(
                "Validation: stream_options is only allowed when stream is true",
            ));
        }
        let min_tokens = self.min_tokens.or(nv.min_tokens);
        if let (Some(min), Some(max)) = (min_tokens, max_tokens) {
            if min > max {
                return Err(ApiError::validation(
                    "Validation: min_tokens must not exceed max_tokens",
                ));
            }
        }
        if best_of > n && stream {
            return Err(ApiError::validation(
                "Validation: best_of greater than n cannot be streamed (the best are known at the end)",
            ));
        }
        Ok(GenParams {
            n,
            best_of,
            echo,
            score_only,
            logprobs: self.logprobs(chat)?,
            max_tokens,
            min_tokens,
            sampling: SamplingOptions {
                temperature: self.temperature.map(|t| {
                    if t < GREEDY_BELOW_TEMPERATURE {
                        0.0
                    } else {
                        t
                    }
                }),
                top_p: self.top_p,
                top_k: top_k.and_then(|k| (k > 0).then_some(k as u32)),
                min_p: self.min_p,
                seed: self.seed,
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                repetition_penalty: rep,
            },
            stop,
            stream,
            include_usage: stream
                && (force_usage
                    || self
                        .stream_options
                        .as_ref()
                        .is_some_and(|o| o.include_usage)),
            ignore_eos: self.ignore_eos.or(nv.ignore_eos).unwrap_or(false),
            backend_instance_id: nv.backend_instance_id,
            cache_pin_ttl_secs: nv
                .cache_control
                .as_ref()
                .map(super::cache_control::ttl_secs)
                .transpose()?,
        })
    }
}

impl CommonParams {
    /// `(n, best_of)`: 1 to [`MAX_CHOICES`] each, `best_of` (completions only) at least `n`.
    fn choices(&self, chat: bool) -> Result<(u32, u32), ApiError> {
        let check = |name: &str, v: u32| {
            if (1..=MAX_CHOICES).contains(&v) {
                Ok(v)
            } else {
                Err(ApiError::validation(format!(
                    "Validation: {name} must be between 1 and {MAX_CHOICES}, got {v}"
                )))
            }
        };
        let n = check("n", self.n.unwrap_or(1))?;
        let best_of = match self.best_of {
            None => n,
            Some(_) if chat => {
                return Err(ApiError::validation(
                    "Validation: best_of is a completions field; chat completions take n",
                ))
            }
            Some(b) => check("best_of", b)?,
        };
        if best_of < n {
            return Err(ApiError::validation(format!(
                "Validation: best_of ({best_of}) must be at least n ({n})"
            )));
        }
        Ok((n, best_of))
    }

    /// The log probabilities asked for: chat's `logprobs: true` with `top_logprobs` (0–20)
    /// alternatives, or completions' `logprobs: N` (0–5) alternatives.
    pub fn logprobs(&self, chat: bool) -> Result<Option<u32>, ApiError> {
        let int = |name: &str, v: &Value, max: u64| match v.as_u64() {
            Some(n) if n <= max => Ok(n as u32),
            _ => Err(ApiError::validation(format!(
                "Validation: {name} must be an integer between 0 and {max}, got {v}"
            ))),
        };
        let top = self.top_logprobs.as_ref().filter(|v| !v.is_null());
        if chat {
            let on = match &self.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => false,
                Some(Value::Bool(true)) => true,
                Some(v) => {
                    return Err(ApiError::validation(format!(
                        "Validation: logprobs must be a boolean for chat completions, got {v}"
                    )))
                }
            };
            let k = top
                .map(|v| int("top_logprobs", v, dynamo_protocols::MAX_TOP_LOGPROBS.into()))
                .transpose()?;
            if k.is_some() && !on {
                return Err(ApiError::validation(
                    "Validation: top_logprobs requires logprobs: true",
                ));
            }
            return Ok(on.then(|| k.unwrap_or(0)));
        }
        if top.is_some() {
            return Err(ApiError::validation(
                "Validation: top_logprobs is a chat completions field; completions take logprobs: N",
            ));
        }
        match self.logprobs.as_ref().filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => int("logprobs", v, MAX_COMPLETION_LOGPROBS).map(Some),
        }
    }
}

/// Flatten chat messages into `{role, content: string}` objects for the template.
pub fn normalize_messages(messages: &[Value]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::validation(
            "Validation: messages must not be empty",
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let obj = m.as_object().ok_or_else(|| {
                ApiError::validation(format!("Validation: messages[{i}] must be an object"))
            })?;
            let role = obj.get("role").and_then(|r| r.as_str()).ok_or_else(|| {
                ApiError::validation(format!("Validation: messages[{i}].role must be a string"))
            })?;
            if !matches!(role, "system" | "user" | "assistant" | "developer" | "tool") {
                return Err(ApiError::validation(format!(
                    "Validation: messages[{i}].role {role:?} is not one of system, user, assistant, developer, tool"
                )));
            }
            let content = match obj.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        match (p.get("type").and_then(|t| t.as_str()), p.get("text").and_then(|t| t.as_str())) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (kind, _) => {
                                return Err(unsupported(&format!(
                                    "content part of type {:?} in messages[{i}]",
                                    kind.unwrap_or("?")
                                )))
                            }
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(ApiError::validation(format!(
                        "Validation: messages[{i}].content must be a string or a list of text parts"
                    )))
                }
            };
            let mut out = serde_json::Map::new();
            out.insert("role".into(), Value::String(role.to_string()));
            out.insert("content".into(), Value::String(content));
            if let Some(name) = obj.get("name") {
                out.insert("name".into(), name.clone());
            }
            Ok(Value::Object(out))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value, ok: bool) {
        let p: CommonParams = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(p.validate(false, true).is_ok(), ok, "{body}");
    }

    #[test]
    fn validation_cases() {
        check(json!({}), true);
        check(
            json!({"n": 1, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3}),
            true,
        );
        check(json!({"n": 2}), true);
        check(json!({"n": 128}), true);
        check(json!({"n": 129}), false);
        check(json!({"n": 0}), false);
        check(json!({"best_of": 2}), false);
        check(json!({"temperature": 3.0}), false);
        check(json!({"top_p": 0.0}), false);
        check(json!({"max_tokens": 0}), false);
        check(json!({"stop": ["a","b","c","d","e"]}), false);
        check(json!({"stop": ""}), false);
        check(json!({"logprobs": false}), true);
        check(json!({"tools": [{"type":"function"}]}), false);
        check(json!({"response_format": {"type":"json_object"}}), false);
        check(json!({"response_format": {"type":"text"}}), true);
        check(json!({"stream_options": {"include_usage": true}}), false);
        check(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
            true,
        );
        check(json!({"echo": true}), false);
        check(json!({"echo": false}), true);
        check(json!({"top_k": -1}), true);
        check(json!({"top_k": -5}), false);
    }

    #[test]
    fn logprobs_ranges_per_endpoint() {
        let lp = |body: Value, chat: bool| {
            serde_json::from_value::<CommonParams>(body)
                .unwrap()
                .logprobs(chat)
                .map_err(|e| e.message)
        };
        assert_eq!(lp(json!({}), true), Ok(None));
        assert_eq!(lp(json!({"logprobs": true}), true), Ok(Some(0)));
        assert_eq!(
            lp(json!({"logprobs": true, "top_logprobs": 20}), true),
            Ok(Some(20))
        );
        assert!(lp(json!({"logprobs": true, "top_logprobs": 21}), true)
            .unwrap_err()
            .contains("top_logprobs"));
        assert!(lp(json!({"top_logprobs": 2}), true)
            .unwrap_err()
            .contains("requires logprobs"));
        assert!(lp(json!({"logprobs": 3}), true).is_err());
        assert_eq!(lp(json!({"logprobs": 5}), false), Ok(Some(5)));
        assert_eq!(lp(json!({"logprobs": 0}), false), Ok(Some(0)));
        assert!(lp(json!({"logprobs": 6}), false)
            .unwrap_err()
            .contains("logprobs"));
        assert!(lp(json!({"logprobs": true}), false).is_err());
        assert!(lp(json!({"logprobs": 1, "top_logprobs": 1}), false).is_err());
    }

    #[test]
    fn unknown_fields_are_named_and_tiny_temperatures_are_greedy() {
        for body in [
            json!({"max_token": 5}),
            json!({"nvext": {"ignore_eso": true}}),
            json!({"stream_options": {"include_usage": true, "x": 1}}),
        ] {
            let e = serde_json::from_value::<CommonParams>(body.clone()).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{body}: {e}");
        }
        let p: CommonParams = serde_json::from_value(json!({"temperature": 1e-40})).unwrap();
        assert_eq!(
            p.validate(false, true).unwrap().sampling.temperature,
            Some(0.0)
        );
        let p: CommonParams = serde_json::from_value(json!({"temperature": 0.5})).unwrap();
        assert_eq!(
            p.validate(false, true).unwrap().sampling.temperature,
            Some(0.5)
        );
    }

    #[test]
    fn choices_on_completions() {
        let v = |body: Value| {
            serde_json::from_value::<CommonParams>(body)
                .unwrap()
                .validate(false, false)
                .map(|g| (g.n, g.best_of, g.echo))
                .map_err(|e| e.message)
        };
        assert_eq!(v(json!({})), Ok((1, 1, false)));
        assert_eq!(v(json!({"n": 3, "echo": true})), Ok((3, 3, true)));
        assert_eq!(v(json!({"n": 2, "best_of": 5})), Ok((2, 5, false)));
        assert!(v(json!({"n": 3, "best_of": 2}))
            .unwrap_err()
            .contains("at least n"));
        assert!(v(json!({"best_of": 0})).unwrap_err().contains("best_of"));
        assert!(v(json!({"best_of": 129})).unwrap_err().contains("best_of"));
        assert!(v(json!({"best_of": 3, "stream": true}))
            .unwrap_err()
            .contains("streamed"));
        assert_eq!(
            v(json!({"n": 3, "best_of": 3, "stream": true})),
            Ok((3, 3, false))
        );
    }

    #[test]
    fn max_completion_tokens_wins_and_nvext_applies() {
        let p: CommonParams = serde_json::from_value(json!({
            "max_tokens": 10, "max_completion_tokens": 5, "nvext": {"ignore_eos": true, "top_k": 7}
        }))
        .unwrap();
        let g = p.validate(false, true).unwrap();
        assert_eq!(g.max_tokens, Some(5));
        assert!(g.ignore_eos);
        assert_eq!(g.sampling.top_k, Some(7));
    }

    #[test]
    fn messages_and_prompts() {
        assert!(normalize_messages(&[]).is_err());
        let m = normalize_messages(&[json!({"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]})]).unwrap();
        assert_eq!(m[0]["content"], "ab");
        assert!(
            normalize_messages(&[json!({"role":"user","content":[{"type":"image_url"}]})]).is_err()
        );
        assert!(normalize_messages(&[json!({"role":"wizard","content":"x"})]).is_err());
        assert!(normalize_messages(&[json!({"content":"x"})]).is_err());
    }
}
