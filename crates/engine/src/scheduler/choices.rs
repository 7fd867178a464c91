//! More than one result from a prompt. `n > 1`: the sequence that computes the prompt forks,
//! once its prompt is done, into sibling choices that share its KV (full blocks through the
//! radix tree, the unfinished last block copied) and sample their first tokens from the same
//! logits row, each with its own generator (choice `i` seeded with `seed + i`); no prompt
//! token is computed twice. Prompt log probabilities: a prefill that asked for them gets
//! every row of its chunks back, scored against the prompt's next token.

use std::time::Instant;

use super::emit::emit;
use super::{Logits, Scheduler, Seq};
use crate::sampling::{Logprobs, Sampler};

impl Seq {
    /// The prompt's own log probabilities are still to be computed.
    pub(super) fn wants_prompt_logprobs(&self) -> bool {
        self.prompt_logprobs.is_some() && self.generated() == 0
    }

    /// The logits rows a slice of `n` tokens from `computed` on needs.
    pub(super) fn logits_wanted(&self, n: usize) -> Logits {
        if self.wants_prompt_logprobs() {
            Logits::All
        } else if self.computed + n == self.tokens.len() {
            Logits::Last
        } else {
            Logits::None
        }
    }

    /// The prompt log probabilities computed so far, to stream with the first token.
    pub(super) fn take_prompt_logprobs(&mut self) -> Vec<dynamo_protocols::TokenLogprob> {
        std::mem::take(&mut self.prompt_lp)
    }
}

impl Scheduler {
    /// Score the rows of prompt tokens (sequences that asked for their prompt's log
    /// probabilities) and return only the rows to sample from, in plan order. Runs before the
    /// plan's sequences advance.
    pub(super) fn take_prompt_rows(
        &mut self,
        plan: &[(usize, usize)],
        logits: Vec<f32>,
        vocab: usize,
    ) -> Vec<f32> {
        if !plan
            .iter()
            .any(|&(i, _)| self.running[i].wants_prompt_logprobs())
        {
            return logits;
        }
        let mut keep = Vec::with_capacity(plan.len() * vocab);
        let mut rows = logits.chunks(vocab);
        for &(i, n) in plan {
            let s = &mut self.running[i];
            let want = s.logits_wanted(n);
            for r in 0..want.rows(n) {
                let row = rows.next().expect("one row per wanted logits");
                let pos = s.computed + r;
                if want == Logits::All && pos + 1 < s.prompt_len {
                    let k = s.prompt_logprobs.unwrap_or(0);
                    let next = s.tokens[pos + 1];
                    s.prompt_lp.push(Logprobs::of(row, k).token(next));
                } else {
                    keep.extend_from_slice(row);
                }
            }
        }
        keep
    }

    /// Copies of the rows that sequences with choices to fork sample from (`samplers` holds
    /// the running indices in the order of `logits`' rows).
    pub(super) fn fork_rows(
        &self,
        samplers: &[usize],
        logits: &[f32],
        vocab: usize,
    ) -> Vec<(usize, Vec<f32>)> {
        samplers
            .iter()
            .zip(logits.chunks(vocab))
            .filter(|(&i, _)| {
                let s = &self.running[i];
                s.forks > 0 && s.generated() == 0
            })
            .map(|(&i, row)| (i, row.to_vec()))
            .collect()
    }

    /// Fork each sequence of `rows` (its prompt just computed, its own first token sampled)
    /// into its sibling choices. Choices that fit the running batch join it and are added to
    /// `samplers` (their first token is emitted with the others); the rest emit their first
    /// token now and wait, without KV, to be admitted like a retracted sequence.
    pub(super) fn fork_choices(
        &mut self,
        rows: Vec<(usize, Vec<f32>)>,
        samplers: &mut Vec<usize>,
        now: Instant,
    ) {
        for (i, row) in rows {
            let forks = std::mem::take(&mut self.running[i].forks);
            for choice in 1..=forks {
                let mut c = self.sibling(i, choice, &row);
                let shared =
                    self.running.len() < self.cfg.max_running && self.share_prompt(i, &mut c);
                if shared {
                    self.running.push(c);
                    samplers.push(self.running.len() - 1);
                } else {
                    let ctx = self.cfg.context_length;
                    if !emit(&mut c, ctx, self.metrics.as_deref(), &mut self.local, now) {
                        self.waiting.push_front(Box::new(c));
                    }
                }
            }
        }
    }

    /// Choice `choice` of running sequence `i`: the same prompt and limits, its own generator,
    /// its first token sampled from `row` (the raw logits at the prompt's end).
    fn sibling(&self, i: usize, choice: u32, row: &[f32]) -> Seq {
        let p = &self.running[i];
        let prompt = p.tokens[..p.prompt_len].to_vec();
        let mut params = p.sampler.params.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(u64::from(choice)));
        let fallback = p
            .fallback_seed
            .wrapping_add(u64::from(choice).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let sampler = Sampler::new(params, &prompt, fallback);
        let mut c = Seq::new(
            prompt,
            p.max_new,
            p.min_new,
            p.stop_ids.clone(),
            sampler,
            p.tx.clone(),
        );
        c.choice = choice;
        c.arrival = p.arrival;
        c.admitted = p.admitted;
        c.cached = p.cached;
        c.chunked = p.chunked;
        c.logprobs = p.logprobs;
        // Every choice's first item carries the prompt's log probabilities (an echo of the
        // prompt starts each choice).
        c.prompt_logprobs = p.prompt_logprobs;
        c.prompt_lp = p.prompt_lp.clone();
        let banned = if c.min_new > 0 {
            c.stop_ids.clone()
        } else {
            Vec::new()
        };
        let mut row = row.to_vec();
        let raw = c.logprobs.map(|k| Logprobs::of(&row, k));
        let tok = c.sampler.sample(&mut row, &banned);
        c.last_logprob = raw.map(|r| r.token(tok));
        c.sampler.observe(tok);
        c.tokens.push(tok);
        c
    }

    /// Give `c` the prompt KV of running sequence `i`: its cached full blocks shared, the rest
    /// copied into blocks of `c`'s own. False (and `c` holds nothing) when blocks run out.
    fn share_prompt(&mut self, i: usize, c: &mut Seq) -> bool {
        let page = self.pool.page();
        let p = &self.running[i];
        let (nodes, pages, len) = (p.nodes.clone(), p.pages.clone(), p.prompt_len);
        self.pool.acquire(&nodes);
        c.pages = nodes.iter().map(|&n| self.pool.block_of(n)).collect();
        c.nodes = nodes;
        c.computed = c.nodes.len() * page;
        c.cacheable = p.cacheable;
        while c.computed < len {
            let got = self.pool.alloc();
            self.backup_evicted();
            let Some(b) = got else {
                self.release(c);
                return false;
            };
            let k = c.pages.len();
            let n = (len - k * page).min(page);
            self.exec.copy_prefix(pages[k], b, n);
            c.pages.push(b);
            c.computed += n;
        }
        true
    }
}
