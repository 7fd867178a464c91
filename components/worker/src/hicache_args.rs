//! The worker's hierarchical-cache flags (SGLang's names where SGLang has the flag), checked
//! and turned into the engine's [`HiCacheConfig`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use dynamo_engine::kv::storage::{PrefetchStop, StorageConfig};
use dynamo_engine::kv::{HiCacheConfig, WritePolicy};

/// The flag's values are SGLang's (`write_through` …), so the variants share a prefix.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WritePolicyArg {
    /// Copy each block to the host tier as soon as it is computed.
    #[value(name = "write_through")]
    WriteThrough,
    /// Copy a block once it served a second request.
    #[value(name = "write_through_selective")]
    WriteThroughSelective,
    /// Copy a block when the KV pool evicts it.
    #[value(name = "write_back")]
    WriteBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    /// One file per block in --hicache-storage-dir.
    File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrefetchPolicy {
    /// Admit the request when its turn comes with what has arrived.
    #[value(name = "best_effort")]
    BestEffort,
    /// Hold the request until every prefetched block has arrived.
    #[value(name = "wait_complete")]
    WaitComplete,
    /// Hold it until the blocks arrived or the prefetch timeout passed.
    Timeout,
}

/// The KV cache tiers below the KV pool.
#[derive(Debug, Clone, Args)]
pub struct HiCacheArgs {
    /// Keep cached KV blocks that leave the KV pool in a host-memory tier, and load them back
    /// for a prompt that continues them (instead of computing them again).
    #[arg(long)]
    pub enable_hierarchical_cache: bool,
    /// Host tier capacity relative to the KV pool (with --enable-hierarchical-cache).
    #[arg(long, default_value_t = 2.0)]
    pub hicache_ratio: f64,
    /// Host tier capacity in GB; wins over --hicache-ratio.
    #[arg(long)]
    pub hicache_size: Option<f64>,
    /// When a block is copied from the KV pool to the host tier.
    #[arg(long, value_enum, default_value = "write_through")]
    pub hicache_write_policy: WritePolicyArg,
    /// A storage tier below the host tier: `file` (one file per block, shareable by the
    /// workers of one model, kept across restarts).
    #[arg(long, value_enum)]
    pub hicache_storage_backend: Option<StorageBackend>,
    /// The file backend's directory.
    #[arg(long, default_value = "/tmp/hicache")]
    pub hicache_storage_dir: PathBuf,
    /// The file backend's cap in GB (least recently used files deleted past it).
    #[arg(long, default_value_t = 16.0)]
    pub hicache_storage_size: f64,
    /// Prefetch a request's blocks from storage when at least this many of its prompt tokens
    /// continue its cached prefix there.
    #[arg(long, default_value_t = 256)]
    pub hicache_prefetch_threshold: usize,
    /// How long a request waits for its prefetch.
    #[arg(long, value_enum, default_value = "best_effort")]
    pub hicache_storage_prefetch_policy: PrefetchPolicy,
    /// The timeout policy's base, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub hicache_prefetch_timeout_base: f64,
    /// The timeout policy's seconds per 1024 prefetched tokens (the timeout is capped at
    /// 30 s).
    #[arg(long, default_value_t = 0.1)]
    pub hicache_prefetch_timeout_per_ki_token: f64,
}

fn positive(flag: &str, v: f64) -> anyhow::Result<()> {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        anyhow::bail!("{flag} must be a positive number, got {v}");
    }
    Ok(())
}

impl HiCacheArgs {
    /// The engine's hierarchy config (`None` without --enable-hierarchical-cache).
    pub fn config(&self, radix_cache: bool) -> anyhow::Result<Option<HiCacheConfig>> {
        if !self.enable_hierarchical_cache {
            if self.hicache_storage_backend.is_some() {
                anyhow::bail!("--hicache-storage-backend needs --enable-hierarchical-cache");
            }
            return Ok(None);
        }
        positive("--hicache-ratio", self.hicache_ratio)?;
        if let Some(g) = self.hicache_size {
            positive("--hicache-size", g)?;
        }
        if !radix_cache {
            anyhow::bail!(
                "--enable-hierarchical-cache needs the radix cache (drop --disable-radix-cache)"
            );
        }
        let storage = match self.hicache_storage_backend {
            None => None,
            Some(StorageBackend::File) => {
                positive("--hicache-storage-size", self.hicache_storage_size)?;
                let secs = |flag: &str, v: f64| {
                    if !(0.0..=3600.0).contains(&v) {
                        anyhow::bail!("{flag} must be between 0 and 3600 seconds, got {v}");
                    }
                    Ok(Duration::from_secs_f64(v))
                };
                let base = secs(
                    "--hicache-prefetch-timeout-base",
                    self.hicache_prefetch_timeout_base,
                )?;
                let per_ki = secs(
                    "--hicache-prefetch-timeout-per-ki-token",
                    self.hicache_prefetch_timeout_per_ki_token,
                )?;
                let stop = match self.hicache_storage_prefetch_policy {
                    PrefetchPolicy::BestEffort => PrefetchStop::BestEffort,
                    PrefetchPolicy::WaitComplete => PrefetchStop::WaitComplete,
                    PrefetchPolicy::Timeout => PrefetchStop::Timeout {
                        base,
                        // per 1024 tokens on the flag, per 1000 in the engine
                        per_1k_tokens: per_ki.mul_f64(1000.0 / 1024.0),
                        max: Duration::from_secs(30),
                    },
                };
                Some(StorageConfig {
                    dir: self.hicache_storage_dir.clone(),
                    max_bytes: (self.hicache_storage_size * 1e9) as u64,
                    prefetch_threshold: self.hicache_prefetch_threshold,
                    stop,
                })
            }
        };
        Ok(Some(HiCacheConfig {
            ratio: self.hicache_ratio,
            size_bytes: self.hicache_size.map(|g| (g * 1e9) as usize),
            write_policy: match self.hicache_write_policy {
                WritePolicyArg::WriteThrough => WritePolicy::WriteThrough,
                WritePolicyArg::WriteThroughSelective => WritePolicy::WriteThroughSelective,
                WritePolicyArg::WriteBack => WritePolicy::WriteBack,
            },
            storage,
        }))
    }
}
