//! One request's state on the scheduler thread: its tokens and limits, its sampler and output
//! channel, its page table and the tree blocks it holds, what it has computed, its choice
//! within the request and the siblings still to fork, and its observability timestamps.

use std::time::Instant;

use dynamo_protocols::{EngineOutput, TokenLogprob};
use tokio::sync::mpsc as tmpsc;

use super::Role;
use crate::kv::NodeId;
use crate::sampling::Sampler;
use crate::trace::SeqTrace;

/// One request's state on the scheduler thread.
pub(crate) struct Seq {
    pub(super) tokens: Vec<u32>,
    pub(crate) prompt_len: usize,
    pub(crate) max_new: usize,
    pub(super) min_new: usize,
    pub(super) stop_ids: Vec<u32>,
    pub(super) sampler: Sampler,
    pub(super) tx: tmpsc::UnboundedSender<EngineOutput>,
    /// Page table; `pages[..nodes.len()]` are shared tree blocks.
    pub(super) pages: Vec<u32>,
    pub(super) nodes: Vec<NodeId>,
    /// Tokens whose K/V are in the cache.
    pub(super) computed: usize,
    /// Prompt tokens served from the prefix cache at first admission.
    pub(super) cached: Option<usize>,
    /// Of those, tokens loaded back from the host tier that came from the pool and from the
    /// storage tier (the rest were in the pool).
    pub(super) tier_tokens: (usize, usize),
    /// A staging executor already loaded its host-tier blocks back once ahead of admission.
    pub(super) load_back_staged: bool,
    /// Pin the prompt's blocks for this long once computed (`cache_control`, router pins).
    pub(crate) pin_ttl: Option<std::time::Duration>,
    /// Its storage prefetch, while it waits.
    pub(super) prefetch: Option<super::Prefetch>,
    /// False after a hash collision: later blocks stay private.
    pub(super) cacheable: bool,
    /// Submission time, first admission, last output token (metrics).
    pub(super) arrival: Instant,
    pub(super) admitted: Option<Instant>,
    pub(super) last_token: Option<Instant>,
    pub(super) retractions: u32,
    /// The prompt needed more than one prefill chunk at first admission.
    pub(super) chunked: bool,
    /// Stage timestamps for the engine's spans (`--enable-trace` and a traced request).
    pub(crate) trace: Option<Box<SeqTrace>>,
    /// Aggregated, or one side of a disaggregated request.
    pub(crate) role: Role,
    /// Its place in the bounded waiting queue, given back when it first runs.
    pub(crate) ticket: Option<crate::admission::Ticket>,
    /// Log probabilities wanted, with this many alternatives per token.
    pub(crate) logprobs: Option<usize>,
    /// The newest token's, until it is streamed.
    pub(super) last_logprob: Option<TokenLogprob>,
    /// Which choice of its request this sequence is (0 for the one that computes the prompt).
    pub(crate) choice: u32,
    /// Sibling choices to fork when the prompt is computed (`n - 1`), and the seed their
    /// generators derive from when the request has none.
    pub(crate) forks: u32,
    pub(crate) fallback_seed: u64,
    /// The prompt's own tokens' log probabilities wanted, with this many alternatives; and
    /// those computed so far (for prompt tokens `1..`).
    pub(crate) prompt_logprobs: Option<usize>,
    pub(super) prompt_lp: Vec<TokenLogprob>,
}

impl Seq {
    pub(crate) fn new(
        prompt: Vec<u32>,
        max_new: usize,
        min_new: usize,
        stop_ids: Vec<u32>,
        sampler: Sampler,
        tx: tmpsc::UnboundedSender<EngineOutput>,
    ) -> Self {
        Seq {
            prompt_len: prompt.len(),
            tokens: prompt,
            max_new,
            min_new,
            stop_ids,
            sampler,
            tx,
            pages: Vec::new(),
            nodes: Vec::new(),
            computed: 0,
            cached: None,
            tier_tokens: (0, 0),
            load_back_staged: false,
            pin_ttl: None,
            prefetch: None,
            cacheable: true,
            arrival: Instant::now(),
            admitted: None,
            last_token: None,
            retractions: 0,
            chunked: false,
            trace: None,
            role: Role::Unified,
            ticket: None,
            logprobs: None,
            last_logprob: None,
            choice: 0,
            forks: 0,
            fallback_seed: 0,
            prompt_logprobs: None,
            prompt_lp: Vec::new(),
        }
    }

    /// The request's client (or, for a prefill request, its room) is gone.
    pub(super) fn abandoned(&self) -> bool {
        self.tx.is_closed() || self.role.abandoned()
    }

    pub(super) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}
