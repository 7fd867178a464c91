//! The engine's public face: configuration, loading (weights, KV pool sizing, the compute
//! thread pool, the scheduler thread), request validation and submission, statistics.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dynamo_protocols::kv_transfer::KvLayout;
use dynamo_protocols::{
    EngineOutput, KvCacheEvent, PreprocessedRequest, MAX_CHOICES, MAX_TOP_LOGPROBS,
};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::admission::{Admission, QueueLimits};
use crate::disagg::{FramePool, KvImport, RoomMsg};
use crate::kernels::{self, Isa, KernelChoice};
use crate::kv::{BlockPool, KvCache, PoolStats};
use crate::metrics::{EngineMetrics, MetricsConfig, StaticFacts};
use crate::model::{self, ModelConfig, WeightSummary};
use crate::sampling::{Sampler, SamplingParams};
use crate::scheduler::{Cmd, Role, SchedConfig, Scheduler, SchedulerParts, Seq, Wake};
use crate::trace::{SeqTrace, TraceConfig, TraceRequest, TraceSink};
use crate::{EngineError, RequestError};

/// Engine settings (the worker's flags).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// A `.gguf` file or a Hugging Face directory.
    pub model: PathBuf,
    /// Tokens per KV block (also the block size reported for routing).
    pub page_size: usize,
    /// Most sequences in the running batch.
    pub max_running_requests: usize,
    /// KV pool capacity in tokens; `None` = derived from `kv_cache_memory_bytes`.
    pub max_total_tokens: Option<usize>,
    /// Memory budget for the KV pool when `max_total_tokens` is not given.
    pub kv_cache_memory_bytes: usize,
    /// Most prompt tokens prefilled per iteration (longer prompts are chunked).
    pub chunked_prefill_size: usize,
    /// Override the model's context length.
    pub context_length: Option<usize>,
    /// Compute threads.
    pub threads: usize,
    /// Share KV blocks between requests with a common prefix.
    pub enable_prefix_caching: bool,
    /// Produce KV events (take them with [`Engine::take_kv_events`]).
    pub kv_events: bool,
    /// `--enable-metrics`: keep the `sglang:` registry ([`Engine::metrics`]).
    pub metrics: Option<MetricsConfig>,
    /// `--enable-trace`: build spans of traced requests ([`Engine::generate_traced`]).
    pub trace: Option<TraceConfig>,
    /// `--kernels`: which matrix kernels the process uses (fixed by the first engine loaded).
    pub kernels: KernelChoice,
    /// `--max-queued-requests` / `--max-queued-tokens`: the waiting queue's bounds.
    pub queue: QueueLimits,
    /// Test-only fault injection: the scheduler panics after this many forward steps.
    pub panic_after_steps: Option<u64>,
    /// `--device`: where the forward pass runs.
    pub device: crate::executor::Device,
    /// `--enable-hierarchical-cache`: keep evicted KV blocks in host memory and load them
    /// back for a prompt that continues them.
    pub hicache: Option<HiCacheConfig>,
    /// Decode steps of a device executor run padded to batch buckets and, on a GPU, as
    /// captured CUDA graphs (`--disable-cuda-graph` turns it off; the CPU executor has none).
    pub cuda_graphs: bool,
}

impl EngineConfig {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        EngineConfig {
            model: model.into(),
            page_size: 16,
            max_running_requests: 64,
            max_total_tokens: None,
            kv_cache_memory_bytes: 1 << 30,
            chunked_prefill_size: 512,
            context_length: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            enable_prefix_caching: true,
            kv_events: false,
            metrics: None,
            trace: None,
            kernels: KernelChoice::Auto,
            queue: QueueLimits::default(),
            panic_after_steps: None,
            device: crate::executor::Device::Cpu,
            cuda_graphs: true,
            hicache: None,
        }
    }
}

pub use crate::kv::HiCacheConfig;

/// What was loaded, for logs, the model card and metrics.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub model: ModelConfig,
    pub weights: WeightSummary,
    pub page_size: usize,
    pub kv_blocks: usize,
    pub max_total_tokens: usize,
    pub kv_bytes: usize,
    pub context_length: usize,
    pub max_running_requests: usize,
    pub chunked_prefill_size: usize,
    pub threads: usize,
    pub isa: Isa,
    /// What runs the forward pass (`--device`), described.
    pub device: String,
    pub load_time: Duration,
    /// The KV cache's layout (what a disaggregated peer must share).
    pub kv_layout: KvLayout,
    /// Blocks the host tier holds at most (0: no host tier).
    pub host_blocks: usize,
    /// Bytes of the weights as the executor keeps them (f16 on a device).
    pub weight_bytes: usize,
}

/// Counters and gauges refreshed once per scheduler iteration.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub pool: PoolStats,
    pub iterations: u64,
    pub retractions: u64,
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
    pub finished: u64,
    pub cancelled: u64,
    /// Host tier: blocks copied there on eviction, and loaded back.
    pub host_backups: u64,
    pub host_loads: u64,
    /// Of those, blocks loaded back ahead of admission, overlapping a forward pass (an
    /// executor that stages imports).
    pub host_loads_staged: u64,
    /// Blocks the host tier holds.
    pub host_blocks: usize,
}

/// Free transfer buffers an engine keeps (each up to one prefill chunk's blocks).
const FRAME_POOL_BUFFERS: usize = 4;

/// A running engine. Dropping it stops the scheduler once in-flight requests end.
pub struct Engine {
    pub(crate) tx: mpsc::Sender<Cmd>,
    info: EngineInfo,
    stats: Arc<Mutex<EngineStats>>,
    events: Mutex<Option<tmpsc::UnboundedReceiver<KvCacheEvent>>>,
    next_id: AtomicU64,
    metrics: Option<Arc<EngineMetrics>>,
    tracing: bool,
    frames: FramePool,
    admission: Arc<Admission>,
    /// Set once the scheduler thread has died, with why.
    failure: Arc<std::sync::OnceLock<String>>,
    /// The storage tier's way into the scheduler's channel, closed when the engine drops.
    wake: Wake,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.wake.close();
    }
}

impl Engine {
    /// Load the model and start the scheduler (blocking; seconds).
    pub fn load(cfg: EngineConfig) -> Result<Engine, EngineError> {
        let bad = |m: String| Err(EngineError::Config(m));
        if cfg.page_size == 0 || cfg.page_size > 1024 {
            return bad(format!(
                "--page-size must be in 1..=1024, got {}",
                cfg.page_size
            ));
        }
        if cfg.max_running_requests == 0 {
            return bad("--max-running-requests must be > 0".into());
        }
        if cfg.chunked_prefill_size == 0 {
            return bad("--chunked-prefill-size must be > 0".into());
        }
        if cfg.threads == 0 {
            return bad("--threads must be > 0".into());
        }
        let isa = kernels::select(cfg.kernels);
        if cfg.kernels == KernelChoice::Portable && isa != Isa::Portable {
            return bad("--kernels portable: this process already runs other kernels".into());
        }
        let metrics = match &cfg.metrics {
            Some(m) => {
                let mut m = m.clone();
                m.hicache = cfg.hicache.is_some();
                m.hicache_storage = cfg.hicache.as_ref().is_some_and(|h| h.storage.is_some());
                Some(Arc::new(
                    EngineMetrics::new(&m).map_err(EngineError::Config)?,
                ))
            }
            None => None,
        };
        let t0 = Instant::now();
        let weights = model::load(&cfg.model)?;
        let load_weights = t0.elapsed();
        let mc = weights.cfg.clone();
        let summary = weights.summary.clone();
        let context_length = cfg.context_length.unwrap_or(mc.context_length);
        if context_length == 0 {
            return bad("--context-length must be > 0".into());
        }
        let per_token = KvCache::bytes_per_token(mc.layers, mc.kv_heads * mc.head_dim);
        let tokens = cfg
            .max_total_tokens
            .unwrap_or(cfg.kv_cache_memory_bytes / per_token);
        let blocks = tokens / cfg.page_size;
        if blocks < 2 {
            return bad(format!(
                "KV pool of {tokens} tokens is too small (--max-total-tokens or the memory budget)"
            ));
        }
        let threads =
            kernels::ComputePool::new(cfg.threads).map_err(|reason| EngineError::Spawn {
                what: "compute pool",
                reason,
            })?;
        let graphs = cfg.cuda_graphs.then_some(context_length);
        let (exec, device) =
            crate::executor::executor(cfg.device, weights, blocks, cfg.page_size, threads, graphs)?;
        let kv_layout = exec.kv_layout();
        let info = EngineInfo {
            model: mc.clone(),
            weights: summary,
            page_size: cfg.page_size,
            kv_blocks: blocks,
            max_total_tokens: blocks * cfg.page_size,
            kv_bytes: blocks * cfg.page_size * per_token,
            context_length,
            max_running_requests: cfg.max_running_requests,
            chunked_prefill_size: cfg.chunked_prefill_size,
            threads: cfg.threads,
            isa,
            device,
            load_time: t0.elapsed(),
            kv_layout,
            host_blocks: 0,
            weight_bytes: exec.weight_bytes(),
        };
        let tracing = cfg.trace.is_some();
        let sink = match cfg.trace {
            Some(t) => {
                Some(
                    TraceSink::start(t.provider, t.model).map_err(|e| EngineError::Spawn {
                        what: "engine-trace",
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        let wake = Wake::new(tx.clone());
        let tiers = match &cfg.hicache {
            Some(h) => Some(crate::scheduler::build_tiers(
                h,
                &cfg.model,
                &info,
                metrics.as_deref(),
                wake.clone(),
            )?),
            None => None,
        };
        let host_blocks = tiers.as_ref().map_or(0, |t| t.host.capacity());
        let mut info = info;
        info.host_blocks = host_blocks;
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let (etx, erx) = if cfg.kv_events {
            let (a, b) = tmpsc::unbounded_channel();
            (Some(a), Some(b))
        } else {
            (None, None)
        };
        let frames = FramePool::new(FRAME_POOL_BUFFERS);
        let sched = Scheduler::new(SchedulerParts {
            exec,
            pool: {
                let mut p = BlockPool::new(blocks, cfg.page_size, cfg.enable_prefix_caching);
                if let Some(t) = tiers.as_ref().filter(|t| t.host.capacity() > 0) {
                    p.track_evictions();
                    // Only write-through drains the stored list; other policies never read it.
                    if t.policy == crate::kv::WritePolicy::WriteThrough {
                        p.track_stored();
                    }
                }
                p
            },
            cfg: SchedConfig {
                max_running: cfg.max_running_requests,
                chunk: cfg.chunked_prefill_size,
                context_length,
                panic_after_steps: cfg.panic_after_steps,
            },
            rx,
            events: etx,
            stats: stats.clone(),
            metrics: metrics.clone(),
            trace: sink,
            frames: frames.clone(),
            tiers,
        });
        let failure: Arc<std::sync::OnceLock<String>> = Arc::default();
        let failed = failure.clone();
        std::thread::Builder::new()
            .name("engine-scheduler".into())
            .spawn(move || {
                // A panic (here or re-raised from a compute task) ends the engine, visibly:
                // the scheduler and every request's channel are dropped, so each stream ends
                // without a finish reason, and `failure` says why.
                let run = std::panic::AssertUnwindSafe(move || sched.run());
                if let Err(p) = std::panic::catch_unwind(run) {
                    let msg = kernels::pool::panic_message(&*p);
                    tracing::error!(error = %msg, "the engine's scheduler panicked; the engine has stopped");
                    let _ = failed.set(msg);
                }
            })
            .map_err(|e| EngineError::Spawn {
                what: "engine-scheduler",
                reason: e.to_string(),
            })?;
        if let Some(m) = &metrics {
            let facts = StaticFacts {
                max_total_tokens: info.max_total_tokens,
                page_size: info.page_size,
                num_pages: info.kv_blocks,
                context_len: info.context_length,
                load_weights,
                kv_bytes: info.kv_bytes,
                weight_bytes: info.weight_bytes,
            };
            m.set_static(&facts, t0.elapsed());
        }
        Ok(Engine {
            tx,
            info,
            stats,
            events: Mutex::new(erx),
            next_id: AtomicU64::new(1),
            metrics,
            tracing,
            frames,
            admission: Admission::new(cfg.queue),
            failure,
            wake,
        })
    }

    /// Reused buffers for KV transfer frames: the transfer code reads block frames into
    /// them and gives exported frames back once they are sent.
    pub fn frame_pool(&self) -> &FramePool {
        &self.frames
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// Whether the engine builds spans (`--enable-trace`).
    pub fn traces(&self) -> bool {
        self.tracing
    }

    /// The `sglang:` registry when metrics are enabled.
    pub fn metrics(&self) -> Option<&EngineMetrics> {
        self.metrics.as_deref()
    }

    /// Why the engine stopped serving, once its scheduler thread has died.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Requests accepted but not yet running.
    pub fn queued(&self) -> usize {
        self.admission.waiting()
    }

    /// Latest per-iteration statistics.
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The KV event stream (once; `None` if not enabled or already taken).
    pub fn take_kv_events(&self) -> Option<tmpsc::UnboundedReceiver<KvCacheEvent>> {
        self.events.lock().ok()?.take()
    }

    fn send(&self, cmd: Cmd) -> Result<(), EngineError> {
        self.tx.send(cmd).map_err(|_| EngineError::Stopped)
    }

    /// Validate and queue a request; outputs stream on the returned channel. Dropping the
    /// receiver cancels the request and frees its KV blocks at the next iteration.
    pub fn generate(
        &self,
        req: PreprocessedRequest,
    ) -> Result<tmpsc::UnboundedReceiver<EngineOutput>, EngineError> {
        self.generate_traced(req, None)
    }

    /// [`Engine::generate`] with the caller's trace context: with `--enable-trace` the
    /// request's engine spans are built under it when it ends.
    pub fn generate_traced(
        &self,
        req: PreprocessedRequest,
        trace: Option<TraceRequest>,
    ) -> Result<tmpsc::UnboundedReceiver<EngineOutput>, EngineError> {
        let (seq, rx) = self.build(req, trace)?;
        self.send(Cmd::Add(Box::new(seq)))?;
        Ok(rx)
    }

    /// Disaggregated prefill: run the prompt and sample one token (`max_tokens` is checked
    /// as given, then treated as 1). The prompt's blocks arrive on the room channel as its
    /// chunks complete, then the sampled token; dropping the room receiver cancels the
    /// request.
    pub fn generate_prefill(
        &self,
        req: PreprocessedRequest,
        trace: Option<TraceRequest>,
    ) -> Result<
        (
            tmpsc::UnboundedReceiver<EngineOutput>,
            tmpsc::UnboundedReceiver<RoomMsg>,
        ),
        EngineError,
    > {
        if req.prompt_logprobs.is_some() {
            return Err(EngineError::InvalidRequest(RequestError::Disaggregated(
                "prompt log probabilities are computed where the prompt runs in full, not by a prefill worker",
            )));
        }
        let (mut seq, rx) = self.build(req, trace)?;
        let (room_tx, room_rx) = tmpsc::unbounded_channel();
        seq.max_new = 1;
        // The decode side forks the choices (it samples their first tokens itself).
        seq.forks = 0;
        seq.role = Role::Prefill(crate::scheduler::PrefillSide {
            room: room_tx,
            exported: 0,
            prompt_blocks: seq.prompt_len.div_ceil(self.info.page_size) as u32,
            done_sent: false,
        });
        self.send(Cmd::Add(Box::new(seq)))?;
        Ok((rx, room_rx))
    }

    /// Disaggregated decode: reserve the prompt's blocks, take their KV through the returned
    /// [`KvImport`], then generate from the prefill side's token on (streamed as the first
    /// output). The stream ends without a finish reason when the import fails
    /// ([`KvImport::failure`] says why).
    pub fn generate_decode(
        &self,
        req: PreprocessedRequest,
        trace: Option<TraceRequest>,
    ) -> Result<(tmpsc::UnboundedReceiver<EngineOutput>, KvImport), EngineError> {
        if req.prompt_logprobs.is_some() {
            return Err(EngineError::InvalidRequest(RequestError::Disaggregated(
                "prompt log probabilities need the prompt computed here, not imported",
            )));
        }
        let (mut seq, rx) = self.build(req, trace)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (res_tx, res_rx) = oneshot::channel();
        let failure = Arc::new(std::sync::OnceLock::new());
        let prompt_blocks = seq.prompt_len.div_ceil(self.info.page_size) as u32;
        seq.role = Role::Decode(crate::scheduler::DecodeSide {
            id,
            reserved: Some(res_tx),
            failure: failure.clone(),
            next_block: 0,
            reserved_at: None,
            transferred_at: None,
        });
        self.send(Cmd::Add(Box::new(seq)))?;
        Ok((
            rx,
            KvImport {
                id,
                tx: self.tx.clone(),
                reserved: Some(res_rx),
                failure,
                done: false,
                prompt_blocks,
            },
        ))
    }

    /// Validate `req` and build its scheduler state.
    fn build(
        &self,
        req: PreprocessedRequest,
        trace: Option<TraceRequest>,
    ) -> Result<(Seq, tmpsc::UnboundedReceiver<EngineOutput>), EngineError> {
        let inv = |e: RequestError| Err(EngineError::InvalidRequest(e));
        let prompt = req.token_ids;
        if prompt.is_empty() {
            return inv(RequestError::EmptyPrompt);
        }
        let vocab = self.info.model.vocab;
        if let Some(&token) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return inv(RequestError::TokenOutOfVocab { token, vocab });
        }
        let context = self.info.context_length;
        let room = context.saturating_sub(prompt.len());
        if room == 0 {
            return inv(RequestError::PromptTooLong {
                prompt: prompt.len(),
                context,
            });
        }
        if let Some(got) = req
            .logprobs
            .max(req.prompt_logprobs)
            .filter(|&k| k > MAX_TOP_LOGPROBS)
        {
            return inv(RequestError::TooManyLogprobs {
                got,
                max: MAX_TOP_LOGPROBS,
            });
        }
        if req.n == 0 || req.n > MAX_CHOICES {
            return inv(RequestError::Choices {
                got: req.n,
                max: MAX_CHOICES,
            });
        }
        let max_new = match req.stop.max_tokens {
            Some(0) => return inv(RequestError::ZeroMaxTokens),
            Some(max_tokens) if max_tokens as usize > room => {
                return inv(RequestError::ExceedsContext {
                    prompt: prompt.len(),
                    max_tokens,
                    context,
                })
            }
            Some(m) => m as usize,
            None => room,
        };
        let need = (prompt.len() + max_new).div_ceil(self.info.page_size);
        if need > self.info.kv_blocks {
            return inv(RequestError::ExceedsKvPool {
                need: need * self.info.page_size,
                capacity: self.info.max_total_tokens,
            });
        }
        let params = SamplingParams::from_options(&req.sampling).map_err(RequestError::Sampling)?;
        let mut stop_ids = req.stop.stop_token_ids.clone();
        if !req.stop.ignore_eos {
            stop_ids.extend(self.info.model.eos_token_ids.iter().copied());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let fallback_seed = id
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let sampler = Sampler::new(params, &prompt, fallback_seed);
        // Last: a refused request must not have taken a place.
        let ticket = self.admission.try_admit(prompt.len())?;
        let (tx, rx) = tmpsc::unbounded_channel();
        let trace = trace.filter(|_| self.tracing).map(|t| {
            Box::new(SeqTrace::new(
                t,
                max_new,
                req.sampling.temperature.map_or(1.0, f64::from),
                req.sampling.top_p.map_or(1.0, f64::from),
            ))
        });
        let mut seq = Seq::new(
            prompt,
            max_new,
            req.stop.min_tokens.unwrap_or(0) as usize,
            stop_ids,
            sampler,
            tx,
        );
        seq.trace = trace;
        seq.ticket = Some(ticket);
        seq.logprobs = req.logprobs.map(|k| k as usize);
        seq.prompt_logprobs = req.prompt_logprobs.map(|k| k as usize);
        seq.forks = req.n - 1;
        seq.fallback_seed = fallback_seed;
        seq.pin_ttl = crate::pins::request_ttl(req.cache_pin_ttl_secs)?;
        Ok((seq, rx))
    }
}
