//! The mocker's scheduler task: admits waiting requests under the sequence and KV limits,
//! "runs" one iteration (sleeping for the simulated time), emits one token per running
//! sequence, finishes or cancels sequences, and retracts the youngest when KV runs out.

use std::collections::VecDeque;
use std::time::Duration;

use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
use dynamo_protocols::{EngineOutput, FinishReason, KvCacheEvent, PreprocessedRequest, Usage};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

use crate::kv::BlockPool;

/// Mocker settings (flags of `dynamo-mocker`).
#[derive(Debug, Clone)]
pub struct MockerConfig {
    /// KV block size in tokens (same as the real engine's page size).
    pub block_size: usize,
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Most prompt tokens prefilled in one iteration.
    pub max_num_batched_tokens: usize,
    /// Simulated time is divided by this.
    pub speedup_ratio: f64,
    /// Simulated prefill cost per uncached prompt token.
    pub prefill_us_per_token: f64,
    /// Simulated cost of one decode iteration.
    pub decode_us_base: f64,
    /// Extra simulated decode cost per running sequence.
    pub decode_us_per_seq: f64,
    /// Longest prompt + output accepted.
    pub context_length: usize,
    /// Output token ids are drawn from this range.
    pub token_range: (u32, u32),
}

impl Default for MockerConfig {
    fn default() -> Self {
        MockerConfig {
            block_size: 16,
            num_blocks: 16_384,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            speedup_ratio: 1.0,
            prefill_us_per_token: 20.0,
            decode_us_base: 8_000.0,
            decode_us_per_seq: 30.0,
            context_length: 8192,
            token_range: (1000, 20_000),
        }
    }
}

/// A request the mocker cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MockerError {
    #[error(
        "prompt of {prompt} tokens plus max_tokens {max} exceeds the context length {context}"
    )]
    TooLong {
        prompt: usize,
        max: usize,
        context: usize,
    },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("prompt plus max_tokens needs {need} KV blocks but the pool has {total}")]
    TooBigForPool { need: usize, total: usize },
    #[error("the mocker engine has stopped")]
    Stopped,
}

struct Seq {
    prompt: Vec<u32>,
    /// Sequence hashes of the prompt's full blocks.
    hashes: Vec<u64>,
    /// Local hashes of the same blocks.
    locals: Vec<u64>,
    max_tokens: usize,
    generated: usize,
    private_blocks: usize,
    cached_tokens: usize,
    prompt_hash: u64,
    tx: mpsc::UnboundedSender<EngineOutput>,
}

impl Seq {
    fn len(&self) -> usize {
        self.prompt.len() + self.generated
    }
    /// Blocks this sequence needs beyond the shared prompt blocks.
    fn private_needed(&self, block_size: usize) -> usize {
        self.len().div_ceil(block_size) - self.hashes.len()
    }
    fn token_at(&self, pos: usize, range: (u32, u32)) -> u32 {
        let mut x = self.prompt_hash ^ (pos as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        range.0 + (x % u64::from(range.1 - range.0)) as u32
    }
}

/// Handle to a running mocker engine.
#[derive(Clone)]
pub struct MockEngine {
    tx: mpsc::UnboundedSender<Seq>,
    cfg: MockerConfig,
    events: Arc<Mutex<Option<mpsc::UnboundedReceiver<KvCacheEvent>>>>,
    stats: Arc<Mutex<MockStats>>,
}

/// The mocker's load, updated every iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MockStats {
    pub active_blocks: usize,
    pub total_blocks: usize,
    pub running: usize,
    pub waiting: usize,
}

impl MockEngine {
    /// Start the scheduler task on the current tokio runtime.
    pub fn start(cfg: MockerConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (etx, erx) = mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(MockStats {
            total_blocks: cfg.num_blocks,
            ..MockStats::default()
        }));
        tokio::spawn(run(cfg.clone(), rx, etx, stats.clone()));
        MockEngine {
            tx,
            cfg,
            events: Arc::new(Mutex::new(Some(erx))),
            stats,
        }
    }

    /// The KV event stream (once).
    pub fn take_kv_events(&self) -> Option<mpsc::UnboundedReceiver<KvCacheEvent>> {
        self.events.lock().ok()?.take()
    }

    /// Load as of the last iteration.
    pub fn stats(&self) -> MockStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn config(&self) -> &MockerConfig {
        &self.cfg
    }

    /// Submit a request; outputs arrive on the returned channel. Dropping the receiver
    /// cancels the request and frees its blocks.
    pub fn generate(
        &self,
        req: PreprocessedRequest,
    ) -> Result<mpsc::UnboundedReceiver<EngineOutput>, MockerError> {
        let prompt = req.token_ids;
        if prompt.is_empty() {
            return Err(MockerError::EmptyPrompt);
        }
        let context = self.cfg.context_length;
        let room = context.saturating_sub(prompt.len());
        let max_tokens = req.stop.max_tokens.map(|m| m as usize).unwrap_or(room);
        if prompt.len() + max_tokens > context || room == 0 {
            return Err(MockerError::TooLong {
                prompt: prompt.len(),
                max: max_tokens,
                context,
            });
        }
        let need = (prompt.len() + max_tokens).div_ceil(self.cfg.block_size) + 1;
        if need > self.cfg.num_blocks {
            return Err(MockerError::TooBigForPool {
                need,
                total: self.cfg.num_blocks,
            });
        }
        let locals = block_hashes(&prompt, self.cfg.block_size);
        let hashes = sequence_hashes(&locals);
        let prompt_hash = hashes.last().copied().unwrap_or(0)
            ^ prompt.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, t| {
                (h ^ u64::from(*t)).wrapping_mul(0x100_0000_01b3)
            });
        let (tx, rx) = mpsc::unbounded_channel();
        let seq = Seq {
            prompt,
            hashes,
            locals,
            max_tokens: max_tokens.max(1),
            generated: 0,
            private_blocks: 0,
            cached_tokens: 0,
            prompt_hash,
            tx,
        };
        self.tx.send(seq).map_err(|_| MockerError::Stopped)?;
        Ok(rx)
    }
}

async fn run(
    cfg: MockerConfig,
    mut rx: mpsc::UnboundedReceiver<Seq>,
    events: mpsc::UnboundedSender<KvCacheEvent>,
    stats: Arc<Mutex<MockStats>>,
) {
    let mut pool = BlockPool::new(cfg.num_blocks);
    let mut waiting: VecDeque<Seq> = VecDeque::new();
    let mut running: Vec<Seq> = Vec::new();
    let mut event_id = 0u64;
    loop {
        for data in pool.drain_events() {
            let _ = events.send(KvCacheEvent {
                event_id,
                data,
                dp_rank: 0,
            });
            event_id += 1;
        }
        if let Ok(mut s) = stats.lock() {
            s.active_blocks = pool.active();
            s.running = running.len();
            s.waiting = waiting.len();
        }
        if waiting.is_empty() && running.is_empty() {
            match rx.recv().await {
                Some(s) => waiting.push_back(s),
                None => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            waiting.push_back(s);
        }
        // Drop cancelled sequences.
        let release = |pool: &mut BlockPool, s: &Seq| pool.release(&s.hashes, s.private_blocks);
        running.retain(|s| {
            let keep = !s.tx.is_closed();
            if !keep {
                release(&mut pool, s);
            }
            keep
        });
        waiting.retain(|s| !s.tx.is_closed());

        // Admit under the sequence, token and KV limits (FCFS).
        let mut prefill_tokens = 0usize;
        while running.len() < cfg.max_num_seqs {
            let Some(front) = waiting.front() else { break };
            let matched = pool.matched(&front.hashes);
            let new_tokens = front.len() - matched * cfg.block_size;
            if prefill_tokens > 0 && prefill_tokens + new_tokens > cfg.max_num_batched_tokens {
                break;
            }
            let private = front.private_needed(cfg.block_size) + 1;
            if !pool.acquire(&front.hashes, &front.locals, private) {
                break;
            }
            let mut s = waiting.pop_front().expect("front exists");
            s.private_blocks = private;
            if s.generated == 0 {
                s.cached_tokens = matched * cfg.block_size;
            }
            prefill_tokens += new_tokens;
            running.push(s);
        }
        if running.is_empty() {
            // Nothing fits (should not happen: requests larger than the pool are refused).
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }

        let us = cfg.prefill_us_per_token * prefill_tokens as f64
            + cfg.decode_us_base
            + cfg.decode_us_per_seq * running.len() as f64;
        let sim = Duration::from_secs_f64(us / 1e6 / cfg.speedup_ratio.max(1e-9));
        if sim >= Duration::from_micros(200) {
            tokio::time::sleep(sim).await;
        } else {
            tokio::task::yield_now().await;
        }

        // One token per running sequence; grow KV or retract the youngest when full.
        let mut i = 0;
        while i < running.len() {
            let need_block = {
                let s = &running[i];
                s.private_needed(cfg.block_size) + 1 > s.private_blocks
            };
            if need_block && !pool.grow() {
                // Retract the youngest sequence (it restarts later from its prompt plus what it
                // already generated; tokens already sent are not sent again).
                let victim = running.pop().expect("non-empty");
                release(&mut pool, &victim);
                let mut victim = victim;
                victim.private_blocks = 0;
                waiting.push_front(victim);
                continue;
            }
            let s = &mut running[i];
            if need_block {
                s.private_blocks += 1;
            }
            let pos = s.generated;
            let tok = s.token_at(pos, cfg.token_range);
            s.generated += 1;
            let done = s.generated >= s.max_tokens;
            let out = EngineOutput {
                token_ids: vec![tok],
                finish_reason: done.then_some(FinishReason::Length),
                usage: done.then_some(Usage {
                    prompt_tokens: s.prompt.len() as u32,
                    completion_tokens: s.generated as u32,
                    cached_tokens: s.cached_tokens as u32,
                }),
                ..Default::default()
            };
            let closed = s.tx.send(out).is_err();
            if done || closed {
                let s = running.swap_remove(i);
                release(&mut pool, &s);
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::StopConditions;

    fn req(tokens: Vec<u32>, max: u32) -> PreprocessedRequest {
        PreprocessedRequest {
            sampling: Default::default(),
            stop: StopConditions {
                max_tokens: Some(max),
                ..Default::default()
            },
            ..PreprocessedRequest::new("m", tokens)
        }
    }

    async fn collect(mut rx: mpsc::UnboundedReceiver<EngineOutput>) -> (Vec<u32>, Usage) {
        let mut toks = vec![];
        while let Some(o) = rx.recv().await {
            toks.extend(o.token_ids);
            if let Some(u) = o.usage {
                return (toks, u);
            }
        }
        panic!("stream ended without usage");
    }

    fn fast() -> MockerConfig {
        MockerConfig {
            speedup_ratio: 1e6,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn deterministic_output_and_prefix_reuse() {
        let eng = MockEngine::start(fast());
        let prompt: Vec<u32> = (0..40).collect();
        let (a, ua) = collect(eng.generate(req(prompt.clone(), 8)).unwrap()).await;
        let (b, ub) = collect(eng.generate(req(prompt.clone(), 8)).unwrap()).await;
        assert_eq!(a, b);
        assert_eq!(a.len(), 8);
        assert_eq!(ua.cached_tokens, 0);
        assert_eq!(ub.cached_tokens, 32, "two full blocks reused");
        assert_eq!(ub.prompt_tokens, 40);
    }

    #[tokio::test]
    async fn small_pool_retracts_but_completes_everything() {
        let eng = MockEngine::start(MockerConfig {
            num_blocks: 12,
            max_num_seqs: 8,
            ..fast()
        });
        let mut handles = vec![];
        for i in 0..8u32 {
            let prompt: Vec<u32> = (0..20).map(|t| t + i * 100).collect();
            let rx = eng.generate(req(prompt.clone(), 30)).unwrap();
            handles.push(tokio::spawn(collect(rx)));
        }
        for h in handles {
            let (toks, u) = h.await.unwrap();
            assert_eq!(toks.len(), 30, "no token lost or duplicated");
            assert_eq!(u.completion_tokens, 30);
        }
    }

    #[tokio::test]
    async fn rejects_too_long_and_empty() {
        let eng = MockEngine::start(MockerConfig {
            context_length: 64,
            ..fast()
        });
        assert!(matches!(
            eng.generate(req((0..60).collect(), 10)),
            Err(MockerError::TooLong { .. })
        ));
        assert_eq!(
            eng.generate(req(vec![], 1)).unwrap_err(),
            MockerError::EmptyPrompt
        );
    }
}
