//! What `--enable-hierarchical-cache` configures (host tier size, write policy, storage tier)
//! and the tiers a scheduler owns once built from it.

use std::sync::Arc;

use dynamo_protocols::kv_events::EventBuffer;

use super::storage::{FileStore, StorageConfig};
use super::HostTier;

/// When a block of the KV pool is copied to the host tier (`--hicache-write-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// As soon as the block is computed and cached (SGLang's default): eviction never has
    /// to copy, and nothing the pool drops is lost.
    #[default]
    WriteThrough,
    /// Once the block has served a second request (a prefix hit): blocks used once are not
    /// copied and are dropped at eviction.
    WriteThroughSelective,
    /// When the pool evicts the block.
    WriteBack,
}

impl WritePolicy {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            WritePolicy::WriteThrough => "write_through",
            WritePolicy::WriteThroughSelective => "write_through_selective",
            WritePolicy::WriteBack => "write_back",
        }
    }
}

/// The hierarchy's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct HiCacheConfig {
    /// Host tier capacity relative to the KV pool (`--hicache-ratio`).
    pub ratio: f64,
    /// Host tier capacity in bytes (`--hicache-size`), winning over the ratio.
    pub size_bytes: Option<usize>,
    pub write_policy: WritePolicy,
    /// The storage tier below the host tier (`--hicache-storage-backend file`).
    pub storage: Option<StorageConfig>,
}

impl HiCacheConfig {
    /// A host tier `ratio` times the pool, written through, no storage tier.
    pub fn host(ratio: f64) -> Self {
        HiCacheConfig {
            ratio,
            size_bytes: None,
            write_policy: WritePolicy::default(),
            storage: None,
        }
    }
}

/// The tiers below the KV pool, owned by the scheduler thread.
pub struct Tiers {
    pub host: HostTier,
    pub policy: WritePolicy,
    pub store: Option<FileStore>,
    /// Ids of storage prefetches.
    pub next_prefetch: u64,
    /// KV events of the host and disk tiers, published after the pool's.
    pub events: EventBuffer,
}

impl Tiers {
    pub fn new(host: HostTier, policy: WritePolicy, store: Option<FileStore>) -> Self {
        Tiers {
            host,
            policy,
            store,
            next_prefetch: 0,
            events: EventBuffer::default(),
        }
    }
}

/// A block's export bytes, shared by the host tier and a pending storage backup.
pub type BlockBytes = Arc<[u8]>;
