//! KV cache events a worker publishes for the router (JSON shape of `../shared/spec/kv-router.md`
//! §2): blocks stored (with their sequence and local hashes), removed, or the whole cache
//! cleared; and the periodic load report.

use serde::{Deserialize, Serialize};

/// The NATS subject a component's workers publish [`RouterEvent`]s on.
pub fn kv_events_subject(namespace: &str, component: &str) -> String {
    format!("namespace.{namespace}.component.{component}.kv_events")
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

/// A run of blocks stored under `parent_hash` (`None`: at the root), in prefix order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheStoreData {
    pub parent_hash: Option<u64>,
    pub blocks: Vec<KvCacheStoredBlock>,
}

/// One stored block: `block_hash` is the sequence (chained) hash, `tokens_hash` the local one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheStoredBlock {
    pub block_hash: u64,
    pub tokens_hash: u64,
    #[serde(default)]
    pub mm_extra_info: Option<()>,
}

/// Blocks evicted, by sequence hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KvCacheRemoveData {
    pub block_hashes: Vec<u64>,
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
                block_hashes: vec![1, 2]
            })
        );
    }
}
