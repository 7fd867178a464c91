//! Every choice of a request: `best_of` (or `n`) per prompt, in the order OpenAI numbers them
//! (prompt by prompt, choices within a prompt), each with its own [`TokenPipe`]; which ones
//! are returned (all, or the `n` of each prompt with the highest cumulative log probability
//! when `best_of > n`); and the request's usage (each prompt counted once, every generated
//! token of every choice counted).

use dynamo_protocols::EngineOutput;

use super::pipeline::Job;
use super::token_pipe::TokenPipe;
use crate::openai::response::UsageBody;

pub struct ChoiceSet {
    pipes: Vec<TokenPipe>,
    /// Choices generated per prompt, and returned per prompt.
    per_prompt: usize,
    n: usize,
    /// Text of each choice not yet taken.
    texts: Vec<String>,
    /// Choices whose end has been announced to the client (streaming).
    announced: Vec<bool>,
}

impl ChoiceSet {
    pub fn new(jobs: &[Job]) -> Self {
        let head = &jobs[0];
        let per_prompt = head.params.best_of as usize;
        let mut pipes = Vec::with_capacity(jobs.len() * per_prompt);
        for job in jobs {
            let echo = job.echo.clone();
            for _ in 0..per_prompt {
                pipes.push(TokenPipe::new(
                    &job.pre,
                    &job.params,
                    job.request.token_ids.len() as u32,
                    echo.clone(),
                ));
            }
        }
        let total = pipes.len();
        ChoiceSet {
            pipes,
            per_prompt,
            n: head.params.n as usize,
            texts: vec![String::new(); total],
            announced: vec![false; total],
        }
    }

    /// Consume an item of prompt `job`'s generation; returns the choice it belongs to. An
    /// index outside the prompt's choices is the worker's fault: an error.
    pub fn push(&mut self, job: usize, out: &EngineOutput) -> Result<usize, ApiErrorMsg> {
        let i = out.index as usize;
        if i >= self.per_prompt {
            return Err(format!(
                "the worker sent choice {i} of a prompt with {} choices",
                self.per_prompt
            ));
        }
        let c = job * self.per_prompt + i;
        let text = self.pipes[c].push(out);
        self.texts[c].push_str(&text);
        Ok(c)
    }

    pub fn pipe(&mut self, c: usize) -> &mut TokenPipe {
        &mut self.pipes[c]
    }

    pub fn pipes(&self) -> &[TokenPipe] {
        &self.pipes
    }

    /// The text of choice `c` since the last call.
    pub fn take_text(&mut self, c: usize) -> String {
        std::mem::take(&mut self.texts[c])
    }

    /// Whether choice `c` has finished and that was not yet announced; marks it announced.
    pub fn newly_finished(&mut self, c: usize) -> bool {
        let fresh = self.pipes[c].finish.is_some() && !self.announced[c];
        self.announced[c] |= fresh;
        fresh
    }

    /// Every choice has finished.
    pub fn done(&self) -> bool {
        self.pipes.iter().all(|p| p.finish.is_some())
    }

    /// The choices returned, in response order: all of them, or per prompt the `n` with the
    /// highest cumulative log probability (best first, as vLLM orders `best_of`).
    pub fn returned(&self) -> Vec<usize> {
        if self.per_prompt == self.n {
            return (0..self.pipes.len()).collect();
        }
        let mut out = Vec::with_capacity(self.pipes.len() / self.per_prompt * self.n);
        for first in (0..self.pipes.len()).step_by(self.per_prompt) {
            let mut idx: Vec<usize> = (first..first + self.per_prompt).collect();
            idx.sort_by(|&a, &b| {
                let (a, b) = (&self.pipes[a], &self.pipes[b]);
                b.cumulative_logprob.total_cmp(&a.cumulative_logprob)
            });
            out.extend(idx.into_iter().take(self.n));
        }
        out
    }

    /// Each prompt once (as its first choice reported it), every choice's generated tokens.
    pub fn usage(&self) -> UsageBody {
        let (mut prompt, mut cached) = (0, 0);
        for p in self.pipes.iter().step_by(self.per_prompt) {
            prompt += p.prompt_tokens;
            cached += p.cached_tokens;
        }
        let completion = self.pipes.iter().map(|p| p.completion_tokens).sum();
        UsageBody::new(prompt, completion, cached)
    }
}

/// Why an item could not be placed.
pub type ApiErrorMsg = String;
