//! Turning streamed token ids back into text: an incremental decoder that never emits broken
//! UTF-8 (bytes of an incomplete character wait for the next token), and a stop-string matcher
//! that holds back text which could still become a stop string, so stop text never leaks.

use std::sync::Arc;

use crate::tokenizer::Tokenizer;

/// Incremental detokenizer for one sequence.
pub struct IncrementalDecoder {
    tok: Arc<Tokenizer>,
    skip_special: bool,
    /// Byte-level: bytes not yet forming complete characters.
    pending: Vec<u8>,
    /// Generic path: all ids so far and the offsets of text already emitted.
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new(tok: Arc<Tokenizer>, skip_special: bool) -> Self {
        IncrementalDecoder {
            tok,
            skip_special,
            pending: Vec::new(),
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Add one token; returns the newly complete text (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.skip_special && self.tok.is_special(id) {
            return String::new();
        }
        if self.tok.is_byte_level() {
            if let Some(b) = self.tok.token_bytes(id) {
                self.pending.extend_from_slice(b);
            }
            return self.take_valid();
        }
        self.push_generic(id)
    }

    fn take_valid(&mut self) -> String {
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) => match e.error_len() {
                // An incomplete character at the end: keep it for the next token.
                None => e.valid_up_to(),
                // Invalid bytes in the middle: they can never become valid; emit lossily.
                Some(_) => {
                    let s = String::from_utf8_lossy(&self.pending).into_owned();
                    self.pending.clear();
                    return s;
                }
            },
        };
        let rest = self.pending.split_off(valid);
        let done = std::mem::replace(&mut self.pending, rest);
        String::from_utf8(done).expect("checked valid")
    }

    fn push_generic(&mut self, id: u32) -> String {
        self.ids.push(id);
        let prefix = self
            .tok
            .decode(
                &self.ids[self.prefix_offset..self.read_offset],
                self.skip_special,
            )
            .unwrap_or_default();
        let full = self
            .tok
            .decode(&self.ids[self.prefix_offset..], self.skip_special)
            .unwrap_or_default();
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let new = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            new
        } else {
            String::new()
        }
    }

    /// Text still held at the end of the sequence (an incomplete character, rendered lossily).
    pub fn flush(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

/// Holds back text that may be the start of a stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

/// What the matcher lets through.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to send to the client.
    pub text: String,
    /// A stop string matched; generation must end and `text` is the last text.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Feed new text.
    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stopped {
            return StopOutput {
                text: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutput {
                text: text.to_string(),
                stopped: false,
            };
        }
        self.held.push_str(text);
        // Earliest match of any stop string.
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let out = self.held[..pos].to_string();
            self.held.clear();
            return StopOutput {
                text: out,
                stopped: true,
            };
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            let max = s.len().saturating_sub(1).min(self.held.len());
            for k in (1..=max).rev() {
                let start = self.held.len() - k;
                if self.held.is_char_boundary(start) && s.starts_with(&self.held[start..]) {
                    keep = keep.max(k);
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutput {
            text: out,
            stopped: false,
        }
    }

    /// End of generation without a stop match: release what was held.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.text);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_strings_are_never_leaked() {
        let cases: &[(&[&str], &[&str], &str, bool)] = &[
            (&[], &["a", "b"], "ab", false),
            (&["STOP"], &["hello ST", "OP world"], "hello ", true),
            (&["STOP"], &["hello S", "T", "ARTS"], "hello STARTS", false),
            (&["\n\n"], &["line\n", "\nnext"], "line", true),
            (&["ab", "b"], &["xab"], "x", true),
            (&["é!"], &["caf", "é", "!"], "caf", true),
            (&["end"], &["the en"], "the en", false),
        ];
        for (stops, pieces, want, stopped) in cases {
            assert_eq!(
                run(stops, pieces),
                (want.to_string(), *stopped),
                "{stops:?} {pieces:?}"
            );
        }
    }

    #[test]
    fn held_text_is_released_as_soon_as_it_cannot_match() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abS").text, "ab");
        assert_eq!(m.push("x").text, "Sx");
    }
}
