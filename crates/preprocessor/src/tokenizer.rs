//! The tokenizer: built from a GGUF's `tokenizer.ggml.*` metadata (byte-level BPE with the
//! pre-tokenizer `tokenizer.ggml.pre` names: SmolLM/GPT-2, Qwen2/Qwen3, Llama 3; control
//! tokens as special tokens) or loaded from a Hugging Face
//! `tokenizer.json`. For byte-level vocabularies it also keeps each token's raw bytes, which
//! makes incremental detokenization exact and cheap.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::model::GgufMetadata;

/// Tokenizer plus what preprocessing needs around it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token matching off: for text a user wrote, in which
    /// `<|im_start|>` is characters, never a control token.
    plain: tokenizers::Tokenizer,
    /// The text of every special token.
    special_texts: Vec<String>,
    /// Raw bytes of each token id (byte-level vocabularies only).
    bytes: Option<Vec<Vec<u8>>>,
    /// Whether each id is a special (control) token.
    special: Vec<bool>,
    bos: Option<String>,
    eos: Option<String>,
    eos_ids: Vec<u32>,
}

/// Why a tokenizer could not be built, or text not encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot build tokenizer: {0}")]
    Build(String),
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("cannot decode token ids: {0}")]
    Decode(String),
}

fn plain_of(inner: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
    let mut plain = inner.clone();
    plain.set_encode_special_tokens(true);
    plain
}

fn special_texts_of(inner: &tokenizers::Tokenizer) -> Vec<String> {
    inner
        .get_added_tokens_decoder()
        .into_values()
        .filter(|t| t.special && !t.content.is_empty())
        .map(|t| t.content)
        .collect()
}

/// GPT-2's byte ↔ printable-character table: byte `b` is written as `table[b]`.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid code point")
        };
    }
    table
}

/// Raw bytes of byte-level token strings; `None` for a string with a char outside the table.
fn byte_level_bytes(tokens: &[String]) -> Vec<Option<Vec<u8>>> {
    let table = byte_to_char_table();
    let mut inverse = std::collections::HashMap::with_capacity(256);
    for (b, c) in table.iter().enumerate() {
        inverse.insert(*c, b as u8);
    }
    tokens
        .iter()
        .map(|t| t.chars().map(|c| inverse.get(&c).copied()).collect())
        .collect()
}

/// The split regex of a `tokenizer.ggml.pre` that has its own (as its `tokenizer.json`
/// states it): Qwen2/Qwen3 split digits one by one, Llama 3 in groups of up to three.
fn pre_split(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "llama-bpe" | "llama3" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        _ => None,
    }
}

impl Tokenizer {
    /// Build from GGUF metadata (`tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(md: &GgufMetadata) -> Result<Self, TokenizerError> {
        let err = TokenizerError::Build;
        let kind = md
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if kind != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model {kind:?} is not supported (only byte-level BPE, \"gpt2\")"
            )));
        }
        let tokens: Vec<String> = md
            .strings("tokenizer.ggml.tokens")
            .ok_or_else(|| err("missing tokenizer.ggml.tokens".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let types: Vec<u64> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let merges: Vec<(String, String)> = md
            .strings("tokenizer.ggml.merges")
            .ok_or_else(|| err("missing tokenizer.ggml.merges".into()))?
            .into_iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                (a.to_string(), b.to_string())
            })
            .collect();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        // SmolLM ("smollm") and most GPT-2-style vocabularies: digits split one by one, then
        // GPT-2's byte-level regex split.
        let pre = md
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
        let pre_tok: PreTokenizerWrapper = match pre_split(pre) {
            // Qwen2/Qwen3 and Llama 3: their own split regex, then bytes (no GPT-2 regex).
            Some(re) => {
                let split = Split::new(
                    SplitPattern::Regex(re.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| err(e.to_string()))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            None if pre == "smollm" || pre == "starcoder" => {
                Sequence::new(vec![Digits::new(true).into(), byte_level]).into()
            }
            None => byte_level,
        };
        inner.with_pre_tokenizer(Some(pre_tok));
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
        // Control (3) and user-defined (4) tokens are matched in text as whole tokens.
        let special: Vec<bool> = types.iter().map(|t| *t == 3).collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(s, t)| AddedToken::from(s.clone(), *t == 3))
            .collect();
        inner.add_special_tokens(&added);
        let id_text = |key: &str| {
            md.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|id| tokens.get(id as usize).cloned())
        };
        let eos_ids: Vec<u32> = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| vec![v as u32])
            .unwrap_or_default();
        let raw = byte_level_bytes(&tokens);
        let bytes = tokens
            .iter()
            .zip(raw)
            .zip(&special)
            .map(|((t, b), sp)| if *sp { Some(t.as_bytes().to_vec()) } else { b })
            .collect::<Option<Vec<_>>>();
        Ok(Tokenizer {
            bos: id_text("tokenizer.ggml.bos_token_id"),
            eos: id_text("tokenizer.ggml.eos_token_id"),
            plain: plain_of(&inner),
            special_texts: special_texts_of(&inner),
            inner,
            bytes,
            special,
            eos_ids,
        })
    }

    /// Load `tokenizer.json` from a Hugging Face directory; BOS/EOS from the configs.
    pub fn from_hf_dir(
        dir: &Path,
        config: &serde_json::Value,
        tok_config: Option<&serde_json::Value>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let text_of = |v: Option<&serde_json::Value>| -> Option<String> {
            match v? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        let bos = text_of(tok_config.and_then(|c| c.get("bos_token")));
        let eos = text_of(tok_config.and_then(|c| c.get("eos_token")));
        let mut eos_ids: Vec<u32> = match config.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|v| v as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => vec![],
        };
        if let Some(id) = eos.as_deref().and_then(|t| inner.token_to_id(t)) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let size = inner.get_vocab_size(true);
        let mut special = vec![false; size];
        for (id, tok) in inner.get_added_tokens_decoder() {
            if tok.special && (id as usize) < size {
                special[id as usize] = true;
            }
        }
        let bytes = if matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            let tokens: Vec<String> = (0..size as u32)
                .map(|i| inner.id_to_token(i).unwrap_or_default())
                .collect();
            let raw = byte_level_bytes(&tokens);
            tokens
                .iter()
                .zip(raw)
                .zip(&special)
                .map(|((t, b), sp)| if *sp { Some(t.as_bytes().to_vec()) } else { b })
                .collect::<Option<Vec<_>>>()
        } else {
            None
        };
        Ok(Tokenizer {
            plain: plain_of(&inner),
            special_texts: special_texts_of(&inner),
            inner,
            bytes,
            special,
            bos,
            eos,
            eos_ids,
        })
    }

    /// Token ids of `text`; special-token text is matched as special tokens; no BOS is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.inner
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Token ids of user-written `text`: special-token text is encoded as ordinary characters.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.plain
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Whether `text` contains the text of any special token.
    pub fn contains_special_text(&self, text: &str) -> bool {
        self.special_texts.iter().any(|t| text.contains(t.as_str()))
    }

    /// Text of `ids` (lossy for incomplete UTF-8).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(bytes) = &self.bytes {
            let mut out = Vec::new();
            for &id in ids {
                if skip_special && self.is_special(id) {
                    continue;
                }
                if let Some(b) = bytes.get(id as usize) {
                    out.extend_from_slice(b);
                }
            }
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Raw bytes of one token (byte-level vocabularies).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.as_ref()?.get(id as usize).map(|v| v.as_slice())
    }

    /// Whether the vocabulary is byte-level (exact incremental decoding available).
    pub fn is_byte_level(&self) -> bool {
        self.bytes.is_some()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Vocabulary size with added tokens (computed once: the `tokenizers` call builds and
    /// drops a copy of the whole vocabulary on every call).
    pub fn vocab_size(&self) -> usize {
        self.special.len()
    }

    pub fn bos_text(&self) -> Option<&str> {
        self.bos.as_deref()
    }

    pub fn eos_text(&self) -> Option<&str> {
        self.eos.as_deref()
    }

    /// Token ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_char_table();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }
}
