//! Request bodies the tests send, built in one place: a chat or a completion for the default
//! model, to which a test adds the fields it is about.

use serde_json::{json, Value};

use crate::MODEL;

/// A chat completion with one user message.
pub fn chat(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
           "max_tokens": max_tokens, "stream": stream})
}

/// A completion of `prompt` (text, or token ids as a JSON array).
pub fn completion(prompt: impl Into<Value>, max_tokens: u32) -> Value {
    json!({"model": MODEL, "prompt": prompt.into(), "max_tokens": max_tokens})
}

/// [`completion`] at temperature 0.
pub fn greedy_completion(prompt: impl Into<Value>, max_tokens: u32) -> Value {
    let mut b = completion(prompt, max_tokens);
    b["temperature"] = json!(0);
    b
}

/// `body` pinned to one worker instance (`nvext.backend_instance_id`), past the router.
pub fn pinned(mut body: Value, instance: u64) -> Value {
    body["nvext"] = json!({ "backend_instance_id": instance });
    body
}
