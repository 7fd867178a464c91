//! KV cache events a worker publishes for the router (the JSON shape Dynamo's router
//! consumes, see docs/router.md): blocks stored (with their sequence and local hashes),
//! removed, or the whole cache cleared; the periodic load report; and the query a router
//! sends a worker to re-sync its view after a gap in `event_id`s or when it discovers the
//! worker.

use serde::{Deserialize, Serialize};

/// The NATS subject a component's workers publish [`RouterEvent`]s on.
pub fn kv_events_subject(namespace: &str, component: &str) -> String {
    format!("namespace.{namespace}.component.{component}.kv_events")
}

/// The NATS subject a component's workers publish [`LoadReport`]s on.
pub fn kv_metrics_subject(namespace: &str, component: &str) -> String {
    format!("namespace.{namespace}.component.{component}.kv_metrics")
}

/// The NATS subject one worker answers [`KvQuery`]s on (the spec's `worker_kv_indexer_query`).
pub fn kv_query_subject(namespace: &str, component: &str, instance_id: u64) -> String {
    format!("namespace.{namespace}.component.{component}.worker_kv_indexer_query.{instance_id:x}")
}

/// The NATS subject one worker answers [`PinRequest`]s on (request plane; the system port's
/// `POST /engine/pin_blocks` and `/engine/unpin_blocks` do the same).
pub fn kv_pin_subject(namespace: &str, component: &str, instance_id: u64) -> String {
    format!("namespace.{namespace}.component.{component}.kv_pin.{instance_id:x}")
}

/// Pin (or, with `unpin`, unpin) KV blocks by sequence hash; a pin covers the block and the
/// blocks before it and lasts `ttl_secs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    pub block_hashes: Vec<u64>,
    #[serde(default)]
    pub ttl_secs: Option<f64>,
    #[serde(default)]
    pub unpin: bool,
}

/// The answer to a [`PinRequest`]: how many of its blocks were pinned (or unpinned), or why
/// none could be.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinReply {
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A worker's load, published periodically.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct LoadReport {
    pub worker_id: u64,
    #[serde(default)]
    pub dp_rank: u32,
    /// KV blocks referenced by running requests.
    pub active_blocks: u64,
    pub total_blocks: u64,
    pub running: u64,
    pub waiting: u64,
}

/// A router asking a worker for its KV state: the events from `from_event_id` on when the
/// worker still has them, otherwise (or when `from_event_id` is `None`) its whole cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvQuery {
    pub from_event_id: Option<u64>,
}

/// One block of a full-state dump: parent (sequence hash, `None` at the root), then the
/// block's sequence and local hashes. Parents come before their children.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpBlock {
    pub parent_hash: Option<u64>,
    pub block_hash: u64,
    pub tokens_hash: u64,
    /// A lower tier's block (`None`: the device tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<Medium>,
}

/// One message of a worker's answer to a [`KvQuery`]; an answer is one or more messages on
/// the query's reply subject, the last with `done`. `full`: the blocks replace everything
/// the router knew of this worker; otherwise `events` are the requested range.
/// `last_event_id`: the last event the answer covers (`None`: the worker has sent none).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvQueryReply {
    pub last_event_id: Option<u64>,
    pub full: bool,
    #[serde(default)]
    pub blocks: Vec<DumpBlock>,
    #[serde(default)]
    pub events: Vec<KvCacheEvent>,
    pub done: bool,
}

/// One event from one worker; `event_id` increases by one per event from 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheEvent {
    pub event_id: u64,
    pub data: KvCacheEventData,
    #[serde(default)]
    pub dp_rank: u32,
}

/// What happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KvCacheEventData {
    Stored(KvCacheStoreData),
    Removed(KvCacheRemoveData),
    Cleared,
}

/// Which tier of a worker's KV cache an event is about (Dynamo's `medium`). Absent on the
/// wire means the device tier (the KV pool), so device events keep their original shape.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Medium {
    /// The KV pool the forward pass reads.
    Device,
    /// The host-memory tier below it.
    Host,
    /// The storage tier (files).
    Disk,
}

impl Medium {
    /// The tiers below the device, in order: the index of `medium`'s among them (`None`: the
    /// device tier, also when the field is absent).
    pub fn lower_index(medium: Option<Medium>) -> Option<usize> {
        match medium {
            None | Some(Medium::Device) => None,
            Some(Medium::Host) => Some(0),
            Some(Medium::Disk) => Some(1),
        }
    }
}

/// A run of blocks stored under `parent_hash` (`None`: at the root), in prefix order. In a
/// lower tier (`medium` host or disk) the blocks are a set, each named by its sequence hash,
/// and `parent_hash` is `None`: those tiers keep blocks without their ancestors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheStoreData {
    pub parent_hash: Option<u64>,
    pub blocks: Vec<KvCacheStoredBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<Medium>,
}

/// One stored block: `block_hash` is the sequence (chained) hash, `tokens_hash` the local one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheStoredBlock {
    pub block_hash: u64,
    pub tokens_hash: u64,
    #[serde(default)]
    pub mm_extra_info: Option<()>,
}

/// Stored-block entries from a run's local hashes and their sequence hashes.
pub fn stored_blocks(local: &[u64], seq: &[u64]) -> Vec<KvCacheStoredBlock> {
    local
        .iter()
        .zip(seq)
        .map(|(&l, &s)| KvCacheStoredBlock {
            block_hash: s,
            tokens_hash: l,
            mm_extra_info: None,
        })
        .collect()
}

/// A cache's changes not yet published, merged as they come: a block stored right under the
/// previous stored block extends that run; consecutive removals share one event.
#[derive(Debug, Clone, Default)]
pub struct EventBuffer(Vec<KvCacheEventData>);

impl EventBuffer {
    /// Block `block_hash` (local hash `tokens_hash`) stored under `parent` (`None`: the root).
    pub fn stored(&mut self, parent: Option<u64>, block_hash: u64, tokens_hash: u64) {
        let blk = KvCacheStoredBlock {
            block_hash,
            tokens_hash,
            mm_extra_info: None,
        };
        if let Some(KvCacheEventData::Stored(s)) = self.0.last_mut() {
            if s.medium.is_none()
                && parent.is_some()
                && s.blocks.last().map(|b| b.block_hash) == parent
            {
                s.blocks.push(blk);
                return;
            }
        }
        self.0.push(KvCacheEventData::Stored(KvCacheStoreData {
            parent_hash: parent,
            blocks: vec![blk],
            medium: None,
        }));
    }

    /// Block `block_hash` evicted.
    pub fn removed(&mut self, block_hash: u64) {
        if let Some(KvCacheEventData::Removed(r)) = self.0.last_mut() {
            if r.medium.is_none() {
                r.block_hashes.push(block_hash);
                return;
            }
        }
        self.0.push(KvCacheEventData::Removed(KvCacheRemoveData {
            block_hashes: vec![block_hash],
            medium: None,
        }));
    }

    /// Blocks (sequence hash, local hash) now held by lower tier `medium`.
    pub fn stored_in(&mut self, medium: Medium, blocks: &[(u64, u64)]) {
        if blocks.is_empty() {
            return;
        }
        let new = blocks
            .iter()
            .map(|&(block_hash, tokens_hash)| KvCacheStoredBlock {
                block_hash,
                tokens_hash,
                mm_extra_info: None,
            });
        if let Some(KvCacheEventData::Stored(s)) = self.0.last_mut() {
            if s.medium == Some(medium) {
                s.blocks.extend(new);
                return;
            }
        }
        self.0.push(KvCacheEventData::Stored(KvCacheStoreData {
            parent_hash: None,
            blocks: new.collect(),
            medium: Some(medium),
        }));
    }

    /// Blocks lower tier `medium` no longer holds.
    pub fn removed_in(&mut self, medium: Medium, hashes: &[u64]) {
        if hashes.is_empty() {
            return;
        }
        if let Some(KvCacheEventData::Removed(r)) = self.0.last_mut() {
            if r.medium == Some(medium) {
                r.block_hashes.extend_from_slice(hashes);
                return;
            }
        }
        self.0.push(KvCacheEventData::Removed(KvCacheRemoveData {
            block_hashes: hashes.to_vec(),
            medium: Some(medium),
        }));
    }

    /// Take what was buffered.
    pub fn drain(&mut self) -> Vec<KvCacheEventData> {
        std::mem::take(&mut self.0)
    }
}

/// Blocks evicted, by sequence hash, from the device tier or (`medium`) a lower one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheRemoveData {
    pub block_hashes: Vec<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<Medium>,
}

/// An event as the router sees it: tagged with the publishing worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouterEvent {
    pub worker_id: u64,
    pub event: KvCacheEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape_matches_the_spec() {
        let e = KvCacheEvent {
            event_id: 3,
            data: KvCacheEventData::Stored(KvCacheStoreData {
                parent_hash: None,
                blocks: vec![KvCacheStoredBlock {
                    block_hash: 10,
                    tokens_hash: 11,
                    mm_extra_info: None,
                }],
                medium: None,
            }),
            dp_rank: 0,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"event_id":3,"data":{"stored":{"parent_hash":null,
                "blocks":[{"block_hash":10,"tokens_hash":11,"mm_extra_info":null}]}},"dp_rank":0})
        );
        let c = serde_json::to_value(KvCacheEventData::Cleared).unwrap();
        assert_eq!(c, serde_json::json!("cleared"));
        let r: KvCacheEventData =
            serde_json::from_str(r#"{"removed":{"block_hashes":[1,2]}}"#).unwrap();
        assert_eq!(
            r,
            KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: vec![1, 2],
                medium: None,
            })
        );
        let h: KvCacheEventData =
            serde_json::from_str(r#"{"removed":{"block_hashes":[3],"medium":"host"}}"#).unwrap();
        assert_eq!(
            h,
            KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: vec![3],
                medium: Some(Medium::Host),
            })
        );
    }
}
