//! The `logprobs` objects of responses, from the engine's per-token entries: chat's
//! `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}` and
//! completions' `{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`.
//! Tokens are shown as their text (bytes that are not whole UTF-8 characters become U+FFFD;
//! `bytes` keeps them exact).

use dynamo_preprocessor::tokenizer::Tokenizer;
use dynamo_protocols::TokenLogprob;
use serde_json::{json, Map, Value};

/// One token and its log probabilities (`None`: an echoed prompt's first token, which has
/// none).
pub type Entry = (u32, Option<TokenLogprob>);

fn bytes_of(tok: &Tokenizer, id: u32) -> Vec<u8> {
    match tok.token_bytes(id) {
        Some(b) => b.to_vec(),
        None => tok.decode(&[id], false).unwrap_or_default().into_bytes(),
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's `logprobs` for `entries`.
pub fn chat(tok: &Tokenizer, entries: &[Entry]) -> Value {
    let one = |id: u32, lp: f32| {
        let b = bytes_of(tok, id);
        json!({"token": text_of(&b), "logprob": lp, "bytes": b})
    };
    let content: Vec<Value> = entries
        .iter()
        .filter_map(|(id, l)| Some((id, l.as_ref()?)))
        .map(|(id, l)| {
            let mut v = one(*id, l.logprob);
            v["top_logprobs"] = l.top.iter().map(|&(t, lp)| one(t, lp)).collect();
            v
        })
        .collect();
    json!({ "content": content })
}

/// Completions' `logprobs` for `entries`, whose text starts at character `offset` of the
/// choice's text (advanced past them).
pub fn completion(tok: &Tokenizer, entries: &[Entry], offset: &mut usize) -> Value {
    let (mut tokens, mut lps, mut tops, mut offs) = (vec![], vec![], vec![], vec![]);
    for (id, l) in entries {
        let text = text_of(&bytes_of(tok, *id));
        offs.push(*offset);
        *offset += text.chars().count();
        tokens.push(text);
        let Some(l) = l else {
            lps.push(Value::Null);
            tops.push(Value::Null);
            continue;
        };
        lps.push(json!(l.logprob));
        // A map from token text to log probability: the alternatives and the sampled token
        // (OpenAI's and vLLM's shape); a text that repeats keeps its best.
        let mut top = Map::new();
        for &(t, lp) in l.top.iter().chain(std::iter::once(&(*id, l.logprob))) {
            top.entry(text_of(&bytes_of(tok, t))).or_insert(json!(lp));
        }
        tops.push(Value::Object(top));
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offs})
}
