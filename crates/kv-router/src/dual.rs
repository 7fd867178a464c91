//! Two copies of the radix index so that lookups never wait: the index thread (the only
//! writer) applies changes to the copy no reader is using, then publishes it through an
//! [`ArcSwap`]; the copy it replaced gets the same changes replayed when the next changes come.
//! Requests read the published copy directly, without a lock and without a hand-off to the
//! index thread.

use std::sync::Arc;

use arc_swap::ArcSwap;
use dynamo_protocols::kv_events::{KvCacheEventData, KvCacheStoredBlock};

use super::indexer::{IndexError, RadixIndex, WorkerKey};

/// One change, kept to be replayed on the other copy.
#[derive(Debug, Clone)]
enum Op {
    Apply(WorkerKey, KvCacheEventData),
    Store(WorkerKey, Option<u64>, Vec<KvCacheStoredBlock>),
    Remove(WorkerKey, Vec<u64>),
    RemoveWorker(WorkerKey),
    Clear(WorkerKey),
}

fn replay(idx: &mut RadixIndex, op: &Op) {
    // Replays repeat what the other copy did, errors included.
    match op {
        Op::Apply(w, d) => {
            let _ = idx.apply(*w, d);
        }
        Op::Store(w, p, b) => {
            let _ = idx.store(*w, *p, b);
        }
        Op::Remove(w, h) => {
            idx.remove(*w, h);
        }
        Op::RemoveWorker(w) => idx.remove_worker(*w),
        Op::Clear(w) => idx.clear(*w),
    }
}

/// The writer's side of the two copies.
pub struct DualIndex {
    published: Arc<ArcSwap<RadixIndex>>,
    /// The copy being written (not published while a batch is open).
    spare: Arc<RadixIndex>,
    /// Changes the spare copy has not seen yet (applied to the published one).
    behind: Vec<Op>,
    /// Changes of the open batch.
    batch: Vec<Op>,
    open: bool,
}

impl Default for DualIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl DualIndex {
    pub fn new() -> Self {
        DualIndex {
            published: Arc::new(ArcSwap::from_pointee(RadixIndex::new())),
            spare: Arc::new(RadixIndex::new()),
            behind: Vec::new(),
            batch: Vec::new(),
            open: false,
        }
    }

    /// What readers load lookups from.
    pub fn reader(&self) -> Arc<ArcSwap<RadixIndex>> {
        self.published.clone()
    }

    /// The spare copy, exclusively, brought up to date; opens a batch.
    fn write(&mut self) -> &mut RadixIndex {
        if !self.open {
            // Readers that loaded this copy before it was replaced hold it for one lookup.
            while Arc::get_mut(&mut self.spare).is_none() {
                std::thread::yield_now();
            }
            let idx = Arc::get_mut(&mut self.spare).expect("exclusive");
            for op in self.behind.drain(..) {
                replay(idx, &op);
            }
            self.open = true;
        }
        Arc::get_mut(&mut self.spare).expect("exclusive while the batch is open")
    }

    /// Publish the open batch (no-op without one).
    pub fn publish(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        let old = self.published.swap(self.spare.clone());
        self.spare = old;
        self.behind = std::mem::take(&mut self.batch);
    }

    /// The most recent state (the open batch's copy, else the published one).
    pub fn latest(&self) -> arc_swap::Guard<Arc<RadixIndex>> {
        if self.open {
            // The spare is ahead while a batch is open; hand it out through a fresh guard.
            arc_swap::Guard::from_inner(self.spare.clone())
        } else {
            self.published.load()
        }
    }

    pub fn apply(&mut self, w: WorkerKey, data: &KvCacheEventData) -> Result<(), IndexError> {
        let r = self.write().apply(w, data);
        self.batch.push(Op::Apply(w, data.clone()));
        r
    }

    pub fn store(
        &mut self,
        w: WorkerKey,
        parent: Option<u64>,
        blocks: &[KvCacheStoredBlock],
    ) -> Result<(), IndexError> {
        let r = self.write().store(w, parent, blocks);
        self.batch.push(Op::Store(w, parent, blocks.to_vec()));
        r
    }

    pub fn remove(&mut self, w: WorkerKey, hashes: &[u64]) -> usize {
        let n = self.write().remove(w, hashes);
        self.batch.push(Op::Remove(w, hashes.to_vec()));
        n
    }

    pub fn clear(&mut self, w: WorkerKey) {
        self.write().clear(w);
        self.batch.push(Op::Clear(w));
    }

    pub fn remove_worker(&mut self, w: WorkerKey) {
        self.write().remove_worker(w);
        self.batch.push(Op::RemoveWorker(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
    use dynamo_protocols::kv_events::stored_blocks;

    fn blocks(toks: &[u32]) -> (Vec<u64>, Vec<KvCacheStoredBlock>) {
        let local = block_hashes(toks, 4);
        let seq = sequence_hashes(&local);
        let b = stored_blocks(&local, &seq);
        (local, b)
    }

    #[test]
    fn readers_see_published_batches_and_both_copies_converge() {
        let mut d = DualIndex::new();
        let r = d.reader();
        let (la, ba) = blocks(&(0..16).collect::<Vec<u32>>());
        let (lb, bb) = blocks(&(100..108).collect::<Vec<u32>>());
        d.store((1, 0), None, &ba).unwrap();
        assert_eq!(r.load().find_matches_ro(&la), vec![], "not published yet");
        assert_eq!(d.latest().find_matches_ro(&la), vec![((1, 0), 4)]);
        d.publish();
        assert_eq!(r.load().find_matches_ro(&la), vec![((1, 0), 4)]);
        // A reader holding the old copy does not block the next batch from being published
        // later; the writer waits for it only when it needs that copy.
        let held = r.load_full();
        d.store((2, 0), None, &bb).unwrap();
        d.remove((1, 0), &[ba[3].block_hash]);
        drop(held);
        d.publish();
        assert_eq!(r.load().find_matches_ro(&la), vec![((1, 0), 3)]);
        assert_eq!(r.load().find_matches_ro(&lb), vec![((2, 0), 2)]);
        // The other copy catches up on the next batch.
        d.remove_worker((2, 0));
        d.publish();
        assert_eq!(r.load().find_matches_ro(&la), vec![((1, 0), 3)]);
        assert!(r.load().find_matches_ro(&lb).is_empty());
        d.clear((1, 0));
        d.publish();
        assert_eq!(r.load().node_count(), 0);
        d.store((3, 0), None, &ba).unwrap();
        d.publish();
        d.store((3, 0), None, &bb).unwrap();
        d.publish();
        assert_eq!(r.load().find_matches_ro(&la), vec![((3, 0), 4)]);
        assert_eq!(r.load().node_count(), 6);
    }
}
