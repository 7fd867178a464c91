//! How much KV-event work may wait for the index thread. Events arrive from NATS faster than
//! the index may apply them (a flood from a misbehaving or hostile publisher); without a bound
//! they would pile up in the channel to the index thread. The forwarder takes units from this
//! budget before it hands an event over (waiting when none are left, so the backlog stays in
//! the NATS subscription's own bounded buffer, where overflow is a counted slow-consumer drop
//! and the event-id gap it leaves is re-synced), and the index thread gives them back once the
//! event is handled. One unit per event plus one per block it names.

use std::sync::Arc;

use dynamo_protocols::{KvCacheEvent, KvCacheEventData, RouterEvent};
use tokio::sync::Semaphore;

/// Default budget: about a million blocks of events in flight (tens of MiB decoded).
pub const DEFAULT_EVENT_BUDGET: u32 = 1 << 20;

/// The size of an event in budget units: one, plus one per block it names.
pub fn event_units(ev: &KvCacheEvent) -> usize {
    let blocks = match &ev.data {
        KvCacheEventData::Stored(s) => s.blocks.len(),
        KvCacheEventData::Removed(r) => r.block_hashes.len(),
        KvCacheEventData::Cleared => 0,
    };
    blocks.saturating_add(1)
}

/// Shared between the event forwarder and the index thread.
#[derive(Clone)]
pub struct EventBudget {
    sem: Arc<Semaphore>,
    units: u32,
}

impl EventBudget {
    pub fn new(units: u32) -> Self {
        let units = units.max(1);
        EventBudget {
            sem: Arc::new(Semaphore::new(units as usize)),
            units,
        }
    }

    /// What `ev` costs: one unit, plus one per block, never more than the whole budget (so
    /// the largest event still fits when nothing else waits).
    pub fn cost(&self, ev: &RouterEvent) -> u32 {
        u32::try_from(event_units(&ev.event))
            .unwrap_or(u32::MAX)
            .min(self.units)
    }

    /// Take `cost` units, waiting until the index thread has given enough back.
    pub async fn take(&self, cost: u32) {
        if let Ok(p) = self.sem.acquire_many(cost).await {
            p.forget();
        }
    }

    /// Units free right now (a forwarder about to wait can say so).
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Give back what an event handled by the index thread took.
    pub fn give(&self, cost: u32) {
        self.sem.add_permits(cost as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::kv_events::{KvCacheRemoveData, KvCacheStoreData, KvCacheStoredBlock};
    use futures::FutureExt;

    fn stored(n: usize) -> RouterEvent {
        let blocks = (0..n as u64)
            .map(|h| KvCacheStoredBlock {
                block_hash: h,
                tokens_hash: h,
                mm_extra_info: None,
            })
            .collect();
        RouterEvent {
            worker_id: 1,
            event: KvCacheEvent {
                event_id: 1,
                data: KvCacheEventData::Stored(KvCacheStoreData {
                    parent_hash: None,
                    blocks,
                    medium: None,
                }),
                dp_rank: 0,
            },
        }
    }

    #[test]
    fn cost_counts_blocks_and_never_exceeds_the_budget() {
        let b = EventBudget::new(100);
        assert_eq!(b.cost(&stored(0)), 1);
        assert_eq!(b.cost(&stored(7)), 8);
        assert_eq!(b.cost(&stored(1000)), 100);
        let mut removed = stored(0);
        removed.event.data = KvCacheEventData::Removed(KvCacheRemoveData {
            block_hashes: vec![1, 2, 3],
            medium: None,
        });
        assert_eq!(b.cost(&removed), 4);
    }

    #[test]
    fn a_spent_budget_waits_until_units_come_back() {
        let b = EventBudget::new(10);
        assert!(b.take(6).now_or_never().is_some());
        assert!(b.take(4).now_or_never().is_some());
        assert_eq!(b.available(), 0);
        let mut waiting = Box::pin(b.take(3));
        assert!((&mut waiting).now_or_never().is_none(), "nothing left");
        b.give(6);
        assert!(waiting.now_or_never().is_some(), "given back");
        assert_eq!(b.available(), 3);
    }
}
