//! What happens after a forward step to one sequence: its computed full blocks join the
//! radix tree (so other requests and KV events see them), and its newest token (or its end)
//! is streamed to the client, with the per-request metrics when it finishes.

use std::time::Instant;

use dynamo_protocols::{EngineOutput, FinishReason, Usage};

use super::observe::{finished, observe_token};
use super::Seq;
use crate::engine::EngineStats;
use crate::kv::{BlockPool, ROOT};
use crate::metrics::EngineMetrics;

/// Stream `s`'s newest token (or its end); true when `s` is finished (or its client gone).
pub(super) fn emit(
    s: &mut Seq,
    context_length: usize,
    metrics: Option<&EngineMetrics>,
    local: &mut EngineStats,
    now: Instant,
) -> bool {
    observe_token(metrics, s, now);
    let tok = *s.tokens.last().expect("sampled");
    s.role.sampled(tok, s.last_logprob.as_ref());
    let g = s.generated();
    let is_stop = g > s.min_new && s.stop_ids.contains(&tok);
    let reason = if is_stop {
        Some(FinishReason::Eos)
    } else if g >= s.max_new || s.tokens.len() >= context_length {
        Some(FinishReason::Length)
    } else {
        None
    };
    let out = EngineOutput {
        token_ids: if is_stop { vec![] } else { vec![tok] },
        finish_reason: reason,
        // On the first token too: a request the frontend ends early (a stop string) still
        // reports its prompt's cached tokens.
        usage: (reason.is_some() || g == 1).then(|| Usage {
            prompt_tokens: s.prompt_len as u32,
            completion_tokens: g as u32,
            cached_tokens: s.cached.unwrap_or(0) as u32,
        }),
        bootstrap_info: None,
        logprobs: match s.last_logprob.take() {
            Some(l) if !is_stop => vec![l],
            _ => vec![],
        },
        index: s.choice,
        prompt_logprobs: if g == 1 {
            s.take_prompt_logprobs()
        } else {
            Vec::new()
        },
    };
    let gone = s.tx.send(out).is_err();
    if reason.is_some() || gone {
        if gone {
            local.cancelled += 1;
        } else {
            local.finished += 1;
        }
        if let Some(m) = metrics {
            finished(m, s, gone, now);
        }
        return true;
    }
    false
}

/// Publish `s`'s computed full blocks to the radix tree (a block another request cached first
/// replaces `s`'s copy).
pub(super) fn cache_full_blocks(pool: &mut BlockPool, s: &mut Seq) {
    let page = pool.page();
    while s.cacheable && s.nodes.len() < s.computed / page {
        let k = s.nodes.len();
        let parent = s.nodes.last().copied().unwrap_or(ROOT);
        let (node, kept) = pool.insert(parent, &s.tokens[k * page..(k + 1) * page], s.pages[k]);
        if node == u32::MAX {
            s.cacheable = false;
            break;
        }
        if !kept {
            s.pages[k] = pool.block_of(node);
        }
        s.nodes.push(node);
    }
}
