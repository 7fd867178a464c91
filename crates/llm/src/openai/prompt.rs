//! The completions `prompt` field, deserialized straight from the body without an intermediate
//! JSON tree: a string, a list of token ids, or a batch (a list of strings and token-id lists,
//! one choice per prompt). A long token list costs four bytes per id while it is read, not a
//! `serde_json::Value` per id.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// One prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// A completions `prompt`: one prompt, or a batch of them in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts(pub Vec<PromptInput>);

/// Most prompts in one batch.
pub const MAX_BATCH_PROMPTS: usize = 256;

const EXPECTED: &str =
    "a string, a list of token ids, or a list of strings and token-id lists (a batch)";

impl<'de> Deserialize<'de> for Prompts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> Visitor<'de> for PromptVisitor {
    type Value = Prompts;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Prompts, E> {
        Ok(Prompts(vec![PromptInput::Text(s.to_string())]))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Prompts, E> {
        Ok(Prompts(vec![PromptInput::Text(s)]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Prompts, A::Error> {
        let mut tokens: Vec<u32> = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        let mut batch: Vec<PromptInput> = Vec::new();
        while let Some(e) = seq.next_element::<Elem>()? {
            match e {
                Elem::Token(t) if batch.is_empty() => tokens.push(t),
                Elem::Nested(p) if tokens.is_empty() => {
                    if batch.len() == MAX_BATCH_PROMPTS {
                        return Err(de::Error::custom(format!(
                            "a batch holds at most {MAX_BATCH_PROMPTS} prompts"
                        )));
                    }
                    batch.push(p)
                }
                _ => return Err(de::Error::custom(format!("prompt must be {EXPECTED}"))),
            }
        }
        if !batch.is_empty() {
            Ok(Prompts(batch))
        } else if tokens.is_empty() {
            Err(de::Error::custom("prompt must not be empty"))
        } else {
            Ok(Prompts(vec![PromptInput::Tokens(tokens)]))
        }
    }
}

/// One element of a prompt list: a token id, or a nested prompt (string or token list).
enum Elem {
    Token(u32),
    Nested(PromptInput),
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElemVisitor)
    }
}

struct ElemVisitor;

impl<'de> Visitor<'de> for ElemVisitor {
    type Value = Elem;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a token id (0 to 4294967295), a string, or a list of token ids")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Elem, E> {
        u32::try_from(v)
            .map(Elem::Token)
            .map_err(|_| E::custom(format!("token id {v} is out of range")))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Elem, E> {
        Ok(Elem::Nested(PromptInput::Text(s.to_string())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Elem, E> {
        Ok(Elem::Nested(PromptInput::Text(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
        let mut tokens: Vec<u32> = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(t) = seq.next_element::<u32>()? {
            tokens.push(t);
        }
        if tokens.is_empty() {
            return Err(de::Error::custom("prompt must not be empty"));
        }
        Ok(Elem::Nested(PromptInput::Tokens(tokens)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<PromptInput, String> {
        let mut b = batch(s)?;
        assert_eq!(b.len(), 1, "{s}");
        Ok(b.remove(0))
    }

    fn batch(s: &str) -> Result<Vec<PromptInput>, String> {
        serde_json::from_str::<Prompts>(s)
            .map(|p| p.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn shapes() {
        use PromptInput::{Text, Tokens};
        assert_eq!(p(r#""hi""#).unwrap(), Text("hi".into()));
        assert_eq!(p("[1, 2]").unwrap(), Tokens(vec![1, 2]));
        assert_eq!(p("[[1, 2]]").unwrap(), Tokens(vec![1, 2]));
        assert_eq!(p(r#"["hi"]"#).unwrap(), Text("hi".into()));
        assert_eq!(
            batch(r#"["a", "b"]"#).unwrap(),
            vec![Text("a".into()), Text("b".into())]
        );
        assert_eq!(
            batch(r#"[[1], "b", [2, 3]]"#).unwrap(),
            vec![Tokens(vec![1]), Text("b".into()), Tokens(vec![2, 3])]
        );
        let many = format!("[{}]", vec!["\"x\""; MAX_BATCH_PROMPTS + 1].join(","));
        assert!(batch(&many).unwrap_err().contains("at most"));
        assert!(p("[1, [2]]").is_err());
        assert!(p("[[2], 1]").is_err());
        assert!(p(r#"["a", 1]"#).is_err());
        assert!(p(r#"[1, "a"]"#).is_err());
        assert!(p("[]").unwrap_err().contains("empty"));
        assert!(p("[[]]").unwrap_err().contains("empty"));
        assert!(p("5").is_err());
        assert!(p("[-1]").is_err());
        assert!(p("[4294967296]").unwrap_err().contains("out of range"));
        assert!(p("[1.5]").is_err());
    }
}
