//! Token ids to client text for one choice: the incremental detokenizer, stop strings, the
//! finish reason, token counts, the per-token log probabilities when asked (and their sum,
//! which ranks `best_of` choices), and the echoed prompt that starts a choice.

use std::time::Instant;

use dynamo_preprocessor::detok::{IncrementalDecoder, StopMatcher};
use dynamo_protocols::{EngineOutput, FinishReason};

use super::pipeline::Kind;
use crate::openai::request::GenParams;
use crate::preprocess::Preprocessor;

/// A completions prompt echoed at the start of each of its choices.
#[derive(Debug, Clone)]
pub struct Echo {
    pub text: std::sync::Arc<str>,
    pub ids: std::sync::Arc<[u32]>,
}

/// Token ids → text deltas, with stop strings and counting.
pub struct TokenPipe {
    dec: IncrementalDecoder,
    /// Log probabilities of the tokens consumed since the last `take_logprobs` (when the
    /// request asked), and the completion text's character offset of the next one.
    logprobs: Option<Vec<crate::openai::logprobs::Entry>>,
    text_offset: usize,
    /// Sum of the consumed tokens' log probabilities (when the worker sent them).
    pub cumulative_logprob: f64,
    /// Still to be sent before the first token's text.
    echo: Option<Echo>,
    /// Only the echoed prompt is shown: generated tokens are dropped, not counted.
    score_only: bool,
    stop: StopMatcher,
    pub completion_tokens: u32,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub finish: Option<&'static str>,
    pub(super) detok_time: std::time::Duration,
}

impl TokenPipe {
    pub fn new(
        pre: &Preprocessor,
        params: &GenParams,
        prompt_tokens: u32,
        echo: Option<Echo>,
    ) -> Self {
        TokenPipe {
            logprobs: params.logprobs.map(|_| Vec::new()),
            text_offset: 0,
            cumulative_logprob: 0.0,
            echo,
            score_only: params.score_only,
            dec: IncrementalDecoder::new(pre.tokenizer.clone(), true),
            stop: StopMatcher::new(params.stop.clone()),
            completion_tokens: 0,
            prompt_tokens,
            cached_tokens: 0,
            finish: None,
            detok_time: Default::default(),
        }
    }

    /// Consume one worker item; returns the text to send now. Items after the choice has
    /// finished (a stop string ended it here while its worker went on) are ignored.
    pub fn push(&mut self, out: &EngineOutput) -> String {
        let t0 = Instant::now();
        let mut text = String::new();
        if self.finish.is_some() {
            return text;
        }
        if let Some(e) = self.echo.take() {
            text.push_str(&e.text);
            if let Some(lp) = self.logprobs.as_mut() {
                // The first prompt token has no log probability (nothing precedes it).
                let scored = e.ids.iter().skip(1).zip(&out.prompt_logprobs);
                lp.push((e.ids[0], None));
                lp.extend(scored.map(|(&id, l)| (id, Some(l.clone()))));
            }
        }
        if self.score_only {
            if let Some(u) = out.usage {
                (self.prompt_tokens, self.cached_tokens) = (u.prompt_tokens, u.cached_tokens);
            }
            if out.finish_reason.is_some() {
                self.finish = Some("length");
            }
            self.detok_time += t0.elapsed();
            return text;
        }
        self.completion_tokens += out.token_ids.len() as u32;
        for (i, &id) in out.token_ids.iter().enumerate() {
            if let Some(l) = out.logprobs.get(i) {
                self.cumulative_logprob += f64::from(l.logprob);
                if let Some(lp) = self.logprobs.as_mut() {
                    lp.push((id, Some(l.clone())));
                }
            }
            let piece = self.dec.push(id);
            let o = self.stop.push(&piece);
            text.push_str(&o.text);
            if o.stopped {
                self.finish = Some("stop");
                break;
            }
        }
        if let Some(u) = out.usage {
            self.prompt_tokens = u.prompt_tokens;
            self.completion_tokens = u.completion_tokens;
            self.cached_tokens = u.cached_tokens;
        }
        if self.finish.is_none() {
            if let Some(r) = out.finish_reason {
                let tail = self.dec.flush();
                let o = self.stop.push(&tail);
                text.push_str(&o.text);
                if o.stopped {
                    self.finish = Some("stop");
                } else {
                    text.push_str(&self.stop.flush());
                    self.finish = Some(match r {
                        FinishReason::Eos | FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                        FinishReason::Cancelled => "cancelled",
                        FinishReason::Error => "error",
                    });
                }
            }
        }
        self.detok_time += t0.elapsed();
        text
    }

    /// The `logprobs` object of the tokens consumed since the last call (`None` when the
    /// request did not ask).
    pub fn take_logprobs(&mut self, pre: &Preprocessor, kind: Kind) -> Option<serde_json::Value> {
        let entries = std::mem::take(self.logprobs.as_mut()?);
        Some(self.format(pre, kind, &entries))
    }

    /// [`TokenPipe::take_logprobs`], `None` too when no token was consumed since the last call
    /// (a stream's closing chunk).
    pub fn take_pending_logprobs(
        &mut self,
        pre: &Preprocessor,
        kind: Kind,
    ) -> Option<serde_json::Value> {
        let entries = std::mem::take(self.logprobs.as_mut()?);
        (!entries.is_empty()).then(|| self.format(pre, kind, &entries))
    }

    fn format(
        &mut self,
        pre: &Preprocessor,
        kind: Kind,
        entries: &[crate::openai::logprobs::Entry],
    ) -> serde_json::Value {
        let tok = &pre.tokenizer;
        match kind {
            Kind::Chat => crate::openai::logprobs::chat(tok, entries),
            Kind::Completion => {
                crate::openai::logprobs::completion(tok, entries, &mut self.text_offset)
            }
        }
    }
}
