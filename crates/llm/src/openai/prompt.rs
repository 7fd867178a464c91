//! The completions `prompt` field, deserialized straight from the body without an intermediate
//! JSON tree: a string, a list of token ids, or a one-element list of either. A long token list
//! costs four bytes per id while it is read, not a `serde_json::Value` per id.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

/// What a completions `prompt` holds.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

const EXPECTED: &str = "a string, a list of token ids, or a list with one of those";

impl<'de> Deserialize<'de> for PromptInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PromptVisitor)
    }
}

struct PromptVisitor;

impl<'de> Visitor<'de> for PromptVisitor {
    type Value = PromptInput;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<PromptInput, E> {
        Ok(PromptInput::Text(s.to_string()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<PromptInput, E> {
        Ok(PromptInput::Text(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptInput, A::Error> {
        let mut tokens: Vec<u32> = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        let mut single: Option<PromptInput> = None;
        while let Some(e) = seq.next_element::<Elem>()? {
            match (e, &single) {
                (Elem::Token(t), None) => tokens.push(t),
                (Elem::Nested(p), None) if tokens.is_empty() => single = Some(p),
                (_, Some(_)) => {
                    return Err(de::Error::custom(
                        "a batch of several prompts is not supported by this server",
                    ))
                }
                (Elem::Nested(_), None) => {
                    return Err(de::Error::custom(format!("prompt must be {EXPECTED}")))
                }
            }
        }
        match single {
            Some(p) => Ok(p),
            None if tokens.is_empty() => Err(de::Error::custom("prompt must not be empty")),
            None => Ok(PromptInput::Tokens(tokens)),
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
        PromptVisitor.visit_str(s).map(Elem::Nested)
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Elem, E> {
        PromptVisitor.visit_string(s).map(Elem::Nested)
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
        serde_json::from_str::<PromptInput>(s).map_err(|e| e.to_string())
    }

    #[test]
    fn shapes() {
        assert_eq!(p(r#""hi""#).unwrap(), PromptInput::Text("hi".into()));
        assert_eq!(p("[1, 2]").unwrap(), PromptInput::Tokens(vec![1, 2]));
        assert_eq!(p("[[1, 2]]").unwrap(), PromptInput::Tokens(vec![1, 2]));
        assert_eq!(p(r#"["hi"]"#).unwrap(), PromptInput::Text("hi".into()));
        assert!(p(r#"["a", "b"]"#).unwrap_err().contains("batch"));
        assert!(p("[[1], [2]]").unwrap_err().contains("batch"));
        assert!(p("[1, [2]]").is_err());
        assert!(p(r#"[1, "a"]"#).is_err());
        assert!(p("[]").unwrap_err().contains("empty"));
        assert!(p("[[]]").unwrap_err().contains("empty"));
        assert!(p("5").is_err());
        assert!(p("[-1]").is_err());
        assert!(p("[4294967296]").unwrap_err().contains("out of range"));
        assert!(p("[1.5]").is_err());
    }
}
