//! The lower tiers of each worker's KV cache as the router sees them (KV events with `medium`
//! host or disk): per worker and tier, the set of sequence hashes it holds. A lower tier keeps
//! blocks without their ancestors, so these are sets, not a tree; a block the device tier drops
//! stays here as long as the worker's host or disk still has it. For a request, a worker's
//! lower-tier continuation is the run of the request's blocks right after its device overlap
//! that the host or disk tier holds (the host tier counted first).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use dynamo_protocols::kv_events::Medium;

use super::{FastMap, MixHasher, WorkerKey};

type FastSet = HashSet<u64, BuildHasherDefault<MixHasher>>;

/// Blocks of a request a worker can load instead of computing: from its host tier, from its
/// disk tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LowerHits {
    pub host: u32,
    pub disk: u32,
}

/// Per worker, its host-tier and disk-tier blocks.
#[derive(Debug, Clone, Default)]
pub struct LowerTiers {
    workers: FastMap<WorkerKey, [FastSet; 2]>,
}

fn tier(m: Medium) -> Option<usize> {
    Medium::lower_index(Some(m))
}

impl LowerTiers {
    /// `w`'s tier `m` now holds `hashes` (a device medium is not a lower tier: ignored).
    pub fn store(&mut self, w: WorkerKey, m: Medium, hashes: impl IntoIterator<Item = u64>) {
        if let Some(t) = tier(m) {
            self.workers.entry(w).or_default()[t].extend(hashes);
        }
    }

    /// `w`'s tier `m` no longer holds `hashes`.
    pub fn remove(&mut self, w: WorkerKey, m: Medium, hashes: &[u64]) {
        let (Some(t), Some(sets)) = (tier(m), self.workers.get_mut(&w)) else {
            return;
        };
        for h in hashes {
            sets[t].remove(h);
        }
        if sets.iter().all(HashSet::is_empty) {
            self.workers.remove(&w);
        }
    }

    /// `w` holds nothing in its lower tiers.
    pub fn clear(&mut self, w: WorkerKey) {
        self.workers.remove(&w);
    }

    /// Blocks `w` holds in tier `m`.
    pub fn blocks(&self, w: WorkerKey, m: Medium) -> usize {
        match (tier(m), self.workers.get(&w)) {
            (Some(t), Some(sets)) => sets[t].len(),
            _ => 0,
        }
    }

    /// For each worker with a lower tier: how many of `seq[device(w)..]` it holds there, in a
    /// run from the first (`device` gives each worker's device overlap).
    pub fn continuations(
        &self,
        seq: &[u64],
        device: impl Fn(WorkerKey) -> u32,
    ) -> FastMap<WorkerKey, LowerHits> {
        let mut out = FastMap::default();
        for (&w, [host, disk]) in &self.workers {
            let mut hits = LowerHits::default();
            for h in seq.iter().skip(device(w) as usize) {
                if host.contains(h) {
                    hits.host += 1;
                } else if disk.contains(h) {
                    hits.disk += 1;
                } else {
                    break;
                }
            }
            if hits != LowerHits::default() {
                out.insert(w, hits);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_after_the_device_overlap() {
        let mut t = LowerTiers::default();
        let w = (1, 0);
        t.store(w, Medium::Host, [12, 13]);
        t.store(w, Medium::Disk, [13, 14, 16]);
        let seq = [10, 11, 12, 13, 14, 15, 16];
        let c = t.continuations(&seq, |_| 2);
        assert_eq!(
            c[&w],
            LowerHits { host: 2, disk: 1 },
            "12, 13 host; 14 disk; 15 none"
        );
        // A device overlap past the lower run leaves nothing to add.
        assert!(t.continuations(&seq, |_| 5).is_empty());
        t.remove(w, Medium::Host, &[12]);
        assert!(t.continuations(&seq, |_| 2).is_empty(), "12 is gone");
        assert_eq!(t.blocks(w, Medium::Disk), 3);
        t.clear(w);
        assert_eq!(t.blocks(w, Medium::Disk), 0);
    }
}
