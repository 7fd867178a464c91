//! The worker's engine flags (SGLang's names), checked and turned into the engine's config.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use dynamo_engine::executor::Device;
use dynamo_engine::kernels::KernelChoice;
use dynamo_engine::EngineConfig;
use dynamo_protocols::names::{env, worker as d};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kernels {
    /// The fastest kernels the CPU supports (AVX2+FMA, else portable).
    Auto,
    /// The portable loops everywhere.
    Portable,
}

/// How the engine runs: KV pages and pool, batch, prefill chunking, threads, device.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Tokens per KV page; also the KV block size reported to the router.
    #[arg(long, default_value_t = d::PAGE_SIZE)]
    pub page_size: usize,
    /// Most requests in the running batch.
    #[arg(long, default_value_t = d::MAX_RUNNING_REQUESTS)]
    pub max_running_requests: usize,
    /// KV pool capacity in tokens (default: what --kv-cache-memory-mb holds).
    #[arg(long)]
    pub max_total_tokens: Option<usize>,
    /// Memory budget of the KV pool in MiB, used when --max-total-tokens is not given.
    #[arg(long, default_value_t = d::KV_CACHE_MEMORY_MB)]
    pub kv_cache_memory_mb: usize,
    /// Most prompt tokens prefilled per iteration; longer prompts are split into chunks
    /// that share iterations with decoding requests.
    #[arg(long, default_value_t = d::CHUNKED_PREFILL_SIZE)]
    pub chunked_prefill_size: usize,
    /// Override the model's context length.
    #[arg(long)]
    pub context_length: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N` (GPU N; a build with the
    /// `cuda` feature), or `reference` (the GPU path on plain-Rust kernels: slow, for
    /// checking it without a GPU).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// Run every decode step of a GPU device as it comes, without padding it to a batch
    /// bucket and replaying a captured CUDA graph.
    #[arg(long)]
    pub disable_cuda_graph: bool,
    /// Matrix kernels: `auto` (AVX2+FMA when the CPU has them) or `portable`.
    #[arg(long, value_enum, env = env::DYN_ENGINE_KERNELS, default_value = "auto")]
    pub kernels: Kernels,
    /// Do not share KV blocks between requests with a common prefix.
    #[arg(long)]
    pub disable_radix_cache: bool,
    #[command(flatten)]
    pub hicache: crate::hicache_args::HiCacheArgs,
    /// Most requests waiting for the running batch; past it a request is refused at once
    /// (the frontend tries another worker, then answers 503 with Retry-After). 0: no limit.
    #[arg(long, default_value_t = d::MAX_QUEUED_REQUESTS)]
    pub max_queued_requests: usize,
    /// Most prompt tokens waiting for the running batch (a lone request larger than this is
    /// still taken into an empty queue). 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_queued_tokens: usize,
}

fn parse_device(s: &str) -> Result<Device, String> {
    s.parse()
}

impl EngineArgs {
    /// The engine's config for `model` (metrics and tracing are added by the caller).
    pub fn config(&self, model: PathBuf) -> anyhow::Result<EngineConfig> {
        // Before NATS and the weights: a device this build or machine cannot drive says so.
        dynamo_engine::executor::probe(self.device).map_err(anyhow::Error::msg)?;
        let mut cfg = EngineConfig::new(model);
        cfg.device = self.device;
        cfg.cuda_graphs = !self.disable_cuda_graph;
        cfg.page_size = self.page_size;
        cfg.max_running_requests = self.max_running_requests;
        cfg.max_total_tokens = self.max_total_tokens;
        cfg.kv_cache_memory_bytes = self.kv_cache_memory_mb << 20;
        cfg.chunked_prefill_size = self.chunked_prefill_size;
        cfg.context_length = self.context_length;
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg.kernels = match self.kernels {
            Kernels::Auto => KernelChoice::Auto,
            Kernels::Portable => KernelChoice::Portable,
        };
        cfg.enable_prefix_caching = !self.disable_radix_cache;
        cfg.hicache = self.hicache.config(!self.disable_radix_cache)?;
        cfg.queue = dynamo_engine::admission::QueueLimits {
            max_requests: self.max_queued_requests,
            max_tokens: self.max_queued_tokens,
        };
        // Load reports ride with the KV events; without prefix sharing the pool stores no
        // block, so no KV event is published.
        cfg.kv_events = true;
        Ok(cfg)
    }
}
