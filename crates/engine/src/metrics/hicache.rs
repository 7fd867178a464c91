//! SGLang's hierarchical-cache families, registered when `--enable-hierarchical-cache` is on:
//! the radix-cache collector's (eviction and load-back between the KV pool and the host tier,
//! with their durations), the newer host-pool gauges and backup counters, the tokens the
//! hierarchy dropped (by reason), and with a storage backend the storage
//! collector's (prefetch and backup tokens, pages per batch, bandwidth) plus the prefetch
//! outcomes and the files skipped. Also pinning's families, on every engine.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

/// `eviction_duration_seconds` / `load_back_duration_seconds` buckets (SGLang's default).
pub const DURATION: &[f64] = &[
    0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.01, 0.02, 0.03, 0.04, 0.05,
    0.1, 0.2, 0.5, 1.0,
];
/// `prefetch_pgs` / `backup_pgs` buckets.
const PAGES: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0];
/// `prefetch_bandwidth` / `backup_bandwidth` buckets, GB/s.
const BANDWIDTH: &[f64] = &[0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0];

/// The `reason` values of `hicache_dropped_tokens_total`.
pub const DROP_REASONS: [&str; 6] = [
    "host_full",
    "not_selected",
    "export_failed",
    "storage_cap",
    "storage_queue_full",
    "storage_write_failed",
];
/// The `outcome` values of `hicache_prefetch_outcomes_total`.
pub const PREFETCH_OUTCOMES: [&str; 5] = ["complete", "partial", "timeout", "failed", "cancelled"];

/// The host tier's families.
pub(crate) struct HiCacheMetrics {
    pub(crate) evicted_tokens: IntCounter,
    pub(crate) eviction_duration: Histogram,
    pub(crate) load_back_tokens: IntCounter,
    pub(crate) load_back_bytes: IntCounter,
    pub(crate) load_back_duration: Histogram,
    pub(crate) backup_tokens: IntCounter,
    pub(crate) backup_bytes: IntCounter,
    pub(crate) backup_duration: Histogram,
    pub(crate) host_used: IntGauge,
    pub(crate) host_total: IntGauge,
    pub(crate) dropped: IntCounterVec,
    pub(crate) storage: Option<StorageMetrics>,
}

/// The storage tier's families (shared with its I/O threads).
#[derive(Clone)]
pub struct StorageMetrics {
    pub(crate) prefetched_tokens: IntCounter,
    pub(crate) backuped_tokens: IntCounter,
    pub(crate) prefetch_pgs: Histogram,
    pub(crate) backup_pgs: Histogram,
    pub(crate) prefetch_bandwidth: Histogram,
    pub(crate) backup_bandwidth: Histogram,
    pub(crate) outcomes: IntCounterVec,
    pub(crate) rejected: IntCounterVec,
    pub(crate) used_bytes: IntGauge,
    /// `hicache_dropped_tokens_total`, for what the storage threads drop.
    pub(crate) dropped: IntCounterVec,
}

impl HiCacheMetrics {
    /// Register with the scheduler labels; the storage families too when `storage`.
    pub(crate) fn new(
        f: super::Families<'_>,
        labels: &[(&str, &str)],
        storage: bool,
    ) -> Result<Self, String> {
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
            labels.iter().chain(extra).copied().collect()
        };
        let counter = |name: &str, help: &str, extra: &[(&'static str, &'static str)]| {
            f.counter(name, help, &with(extra))
        };
        let igauge = |name: &str, help: &str, extra: &[(&'static str, &'static str)]| {
            f.igauge(name, help, &with(extra))
        };
        let hist = |name: &str, help: &str, extra: &[(&'static str, &'static str)], b: &[f64]| {
            f.hist(name, help, &with(extra), b)
        };
        let vec = |name: &str,
                   help: &str,
                   extra: &[(&'static str, &'static str)],
                   label: &str,
                   values: &[&str]| {
            f.counter_vec(name, help, &with(extra), label, values)
        };
        let dropped = vec(
            "hicache_dropped_tokens_total",
            "Tokens of cached blocks that left a tier with no lower tier keeping them, by reason",
            &[],
            "reason",
            &DROP_REASONS,
        )?;
        let storage = if storage {
            let file = [("storage_backend", "file")];
            Some(StorageMetrics {
                prefetched_tokens: counter(
                    "prefetched_tokens_total",
                    "Prompt tokens prefetched from the storage tier into the host tier",
                    &file,
                )?,
                backuped_tokens: counter(
                    "backuped_tokens_total",
                    "Tokens written to the storage tier",
                    &file,
                )?,
                prefetch_pgs: hist("prefetch_pgs", "Pages per prefetch", &file, PAGES)?,
                backup_pgs: hist("backup_pgs", "Pages per storage backup batch", &file, PAGES)?,
                prefetch_bandwidth: hist(
                    "prefetch_bandwidth",
                    "Storage prefetch bandwidth, GB/s",
                    &file,
                    BANDWIDTH,
                )?,
                backup_bandwidth: hist(
                    "backup_bandwidth",
                    "Storage backup bandwidth, GB/s",
                    &file,
                    BANDWIDTH,
                )?,
                outcomes: vec(
                    "hicache_prefetch_outcomes_total",
                    "Storage prefetches by how they ended for their request: complete, partial (admitted before the last block), timeout, failed (a block missing or rejected), cancelled",
                    &file,
                    "outcome",
                    &PREFETCH_OUTCOMES,
                )?,
                rejected: vec(
                    "hicache_storage_rejected_files_total",
                    "Storage-tier files skipped instead of loaded, by reason: truncated, foreign (another model, layout, dtype or block size), checksum, mismatch (another block)",
                    &file,
                    "reason",
                    &crate::kv::storage::Reject::ALL.map(crate::kv::storage::Reject::label),
                )?,
                used_bytes: igauge(
                    "hicache_storage_used_bytes",
                    "Bytes of block files in the storage directory, as this worker last counted them",
                    &file,
                )?,
                dropped: dropped.clone(),
            })
        } else {
            None
        };
        Ok(HiCacheMetrics {
            evicted_tokens: counter(
                "evicted_tokens_total",
                "Tokens of cached blocks evicted from the KV pool with a copy in the host tier",
                &[],
            )?,
            eviction_duration: hist(
                "eviction_duration_seconds",
                "Time to copy a batch of evicted blocks from the KV pool to the host tier",
                &[],
                DURATION,
            )?,
            load_back_tokens: counter(
                "load_back_tokens_total",
                "Tokens loaded back from the host tier into the KV pool",
                &[],
            )?,
            load_back_bytes: counter(
                "load_back_bytes_total",
                "Bytes loaded back from the host tier into the KV pool",
                &[],
            )?,
            load_back_duration: hist(
                "load_back_duration_seconds",
                "Time to load a request's blocks back from the host tier into the KV pool",
                &[],
                DURATION,
            )?,
            backup_tokens: counter(
                "hicache_backup_tokens_total",
                "Tokens copied from the KV pool to the host tier (write-through, or at eviction)",
                &[],
            )?,
            backup_bytes: counter(
                "hicache_backup_bytes_total",
                "Bytes copied from the KV pool to the host tier",
                &[],
            )?,
            backup_duration: hist(
                "hicache_backup_duration_seconds",
                "Time to copy a batch of new blocks from the KV pool to the host tier (write-through)",
                &[],
                DURATION,
            )?,
            host_used: igauge("hicache_host_used_tokens", "Tokens the host tier holds", &[])?,
            host_total: igauge(
                "hicache_host_total_tokens",
                "Tokens the host tier can hold",
                &[],
            )?,
            dropped,
            storage,
        })
    }
}

/// Pinning's families (registered on every engine: pins work without lower tiers too).
pub(crate) struct PinMetrics {
    pub(crate) pinned_tokens: IntGauge,
    pub(crate) unpinned: IntCounterVec,
}

impl PinMetrics {
    pub(crate) fn new(f: super::Families<'_>, labels: &[(&str, &str)]) -> Result<Self, String> {
        let pinned_tokens = f.igauge(
            "pinned_tokens",
            "Tokens of pinned KV blocks (kept in some tier until their pin expires)",
            labels,
        )?;
        let unpinned = f.counter_vec(
            "unpinned_blocks_total",
            "Pinned blocks released, by reason: expired, request (unpin call), pressure (a waiting request needed the room)",
            labels,
            "reason",
            &["expired", "request", "pressure"],
        )?;
        Ok(PinMetrics {
            pinned_tokens,
            unpinned,
        })
    }
}
