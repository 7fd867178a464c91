//! The frontend's KV router flags (used with `--router-mode kv`), checked and turned into the
//! router's config.

use dynamo_kv_router::KvRouterConfig;
use dynamo_protocols::names::{defaults, env};

/// KV router flags (used with `--router-mode kv`).
#[derive(Debug, clap::Args)]
pub struct KvArgs {
    /// Weight of the blocks still to prefill against the worker's active blocks in the cost
    /// (higher favours cache hits and TTFT; 0 ignores the cache and balances load).
    #[arg(
        long,
        alias = "router-kv-overlap-score-weight",
        env = env::DYN_KV_OVERLAP_SCORE_WEIGHT,
        default_value_t = 1.0
    )]
    kv_overlap_score_weight: f64,
    /// Softmax temperature of the worker choice (0: always the lowest cost).
    #[arg(long, env = env::DYN_ROUTER_TEMPERATURE, default_value_t = 0.0)]
    router_temperature: f64,
    /// Follow the workers' KV events (default).
    #[arg(long, env = env::DYN_KV_EVENTS, default_value = "true", overrides_with = "no_kv_events",
          value_parser = clap::builder::BoolishValueParser::new(), num_args = 0..=1,
          default_missing_value = "true")]
    kv_events: bool,
    /// Approximate mode: no KV events; the router remembers where it sent each prompt's
    /// blocks for --router-ttl-secs.
    #[arg(long, overrides_with = "kv_events")]
    no_kv_events: bool,
    /// Lifetime of a routed prompt's blocks in approximate mode, in seconds.
    #[arg(long, default_value_t = defaults::ROUTER_TTL_SECS)]
    router_ttl_secs: f64,
    /// KV block size in tokens (default: each worker's model card; must equal the engine's
    /// page size or no overlap is ever found).
    #[arg(long, env = env::DYN_KV_CACHE_BLOCK_SIZE)]
    kv_cache_block_size: Option<usize>,
    /// What a prompt block a worker holds in its host KV tier saves, as a fraction of one in
    /// its KV pool (it is loaded back, not computed).
    #[arg(long, default_value_t = 0.75)]
    router_host_cache_hit_weight: f64,
    /// The same for a block in its storage (disk) tier.
    #[arg(long, default_value_t = 0.25)]
    router_disk_cache_hit_weight: f64,
    /// Have the chosen worker pin each routed prompt's KV blocks for this many seconds, so a
    /// conversation's prefix stays cached between its turns (0: off).
    #[arg(long, default_value_t = 0.0)]
    router_pin_ttl_secs: f64,
    /// Start with empty router state. This router keeps no state across restarts (its index
    /// is rebuilt from the workers at start), so this is always the behaviour; the flag is
    /// accepted for Dynamo launch-script compatibility.
    #[arg(long)]
    router_reset_states: bool,
}

impl KvArgs {
    pub fn config(&self) -> anyhow::Result<KvRouterConfig> {
        let w = self.kv_overlap_score_weight;
        anyhow::ensure!(
            w.is_finite() && w >= 0.0,
            "--kv-overlap-score-weight must be a number >= 0, got {w}"
        );
        let t = self.router_temperature;
        anyhow::ensure!(
            t.is_finite() && t >= 0.0,
            "--router-temperature must be a number >= 0, got {t}"
        );
        let ttl = self.router_ttl_secs;
        anyhow::ensure!(
            ttl.is_finite() && ttl > 0.0,
            "--router-ttl-secs must be > 0, got {ttl}"
        );
        for (flag, v) in [
            (
                "--router-host-cache-hit-weight",
                self.router_host_cache_hit_weight,
            ),
            (
                "--router-disk-cache-hit-weight",
                self.router_disk_cache_hit_weight,
            ),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&v),
                "{flag} must be between 0 and 1, got {v}"
            );
        }
        let pin = self.router_pin_ttl_secs;
        anyhow::ensure!(
            (0.0..=dynamo_protocols::MAX_PIN_TTL_SECS).contains(&pin),
            "--router-pin-ttl-secs must be between 0 and {}, got {pin}",
            dynamo_protocols::MAX_PIN_TTL_SECS
        );
        if let Some(b) = self.kv_cache_block_size {
            anyhow::ensure!(b > 0, "--kv-cache-block-size must be > 0");
        }
        Ok(KvRouterConfig {
            overlap_weight: w,
            temperature: t,
            kv_events: self.kv_events && !self.no_kv_events,
            block_size: self.kv_cache_block_size,
            ttl: std::time::Duration::from_secs_f64(ttl),
            host_hit_weight: self.router_host_cache_hit_weight,
            disk_hit_weight: self.router_disk_cache_hit_weight,
            pin_ttl: (pin > 0.0).then(|| std::time::Duration::from_secs_f64(pin)),
            ..KvRouterConfig::default()
        })
    }
}
