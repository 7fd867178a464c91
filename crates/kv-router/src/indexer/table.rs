//! The index's maps from a hash to a node id (the path map, and each worker's block table) as
//! an open-addressing table with linear probing: each 16-byte slot holds its key and value
//! together, so a probe costs one cache line where a general-purpose map reads a control byte
//! and a bucket in two. Keys are hashes
//! already (uniform), so the home slot is a multiply-shift of the key; removals shift the
//! following entries back (no tombstones), and the table doubles past half full.

/// Marks an empty slot; a real key of 0 is stored as [`ZERO_KEY`].
const EMPTY: u64 = 0;
const ZERO_KEY: u64 = 0x9E37_79B9_7F4A_7C15;
const MIN_BITS: u32 = 4;

#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
struct Slot {
    key: u64,
    value: u32,
}

/// Hash → node id.
#[derive(Debug, Clone)]
pub(super) struct IdMap {
    slots: Vec<Slot>,
    bits: u32,
    len: usize,
}

fn norm(key: u64) -> u64 {
    if key == EMPTY {
        ZERO_KEY
    } else {
        key
    }
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            slots: vec![Slot::default(); 1 << MIN_BITS],
            bits: MIN_BITS,
            len: 0,
        }
    }
}

impl IdMap {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The slot holding `key`, or the empty slot that ends its probe run.
    fn find(&self, key: u64) -> usize {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key || k == EMPTY {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Ask the CPU to start loading `key`'s home slot (a hint; no effect on the contents).
    #[inline]
    #[allow(unsafe_code)]
    pub(super) fn prefetch(&self, key: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot: *const Slot = &self.slots[self.home(norm(key))];
            // SAFETY: a prefetch of a valid address reads nothing and cannot fault.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast())
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    pub(super) fn get(&self, key: u64) -> Option<u32> {
        let s = &self.slots[self.find(norm(key))];
        (s.key != EMPTY).then_some(s.value)
    }

    /// The value of `key`, inserting `make()` when it is absent.
    pub(super) fn get_or_insert_with(&mut self, key: u64, make: impl FnOnce() -> u32) -> u32 {
        let key = norm(key);
        let mut i = self.find(key);
        if self.slots[i].key == key {
            return self.slots[i].value;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
            i = self.find(key);
        }
        let value = make();
        self.slots[i] = Slot { key, value };
        self.len += 1;
        value
    }

    pub(super) fn contains(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Set `key` to `value`; returns the value it replaced.
    pub(super) fn insert(&mut self, key: u64, value: u32) -> Option<u32> {
        let key = norm(key);
        let mut i = self.find(key);
        if self.slots[i].key == key {
            return Some(std::mem::replace(&mut self.slots[i].value, value));
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
            i = self.find(key);
        }
        self.slots[i] = Slot { key, value };
        self.len += 1;
        None
    }

    /// The values, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != EMPTY)
            .map(|s| s.value)
    }

    pub(super) fn remove(&mut self, key: u64) -> Option<u32> {
        let mut hole = self.find(norm(key));
        if self.slots[hole].key == EMPTY {
            return None;
        }
        let value = self.slots[hole].value;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let k = self.slots[j].key;
            if k == EMPTY {
                break;
            }
            // An entry whose home lies cyclically in (hole, j] is reachable where it is;
            // any other would be cut off from its home by the hole, so it moves into it.
            let home = self.home(k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole].key = EMPTY;
        self.len -= 1;
        Some(value)
    }

    fn grow(&mut self) {
        self.bits += 1;
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); 1 << self.bits]);
        for s in old.into_iter().filter(|s| s.key != EMPTY) {
            let i = self.find(s.key);
            self.slots[i] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// Random inserts and removals (keys from a small range, so runs collide and wrap) against
    /// a `HashMap`, every key checked after each step.
    #[test]
    fn matches_a_hashmap_under_random_inserts_and_removals() {
        for seed in 0..10 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut t = IdMap::default();
            let mut model: HashMap<u64, u32> = HashMap::new();
            // Keys that share home slots: few distinct high bits after the multiply.
            let keys: Vec<u64> = (0..200).map(|_| rng.random_range(0..u64::MAX)).collect();
            for step in 0..4000u32 {
                let k = keys[rng.random_range(0..keys.len())];
                let r = rng.random_range(0..20);
                if r < 8 {
                    let got = t.get_or_insert_with(k, || step);
                    assert_eq!(got, *model.entry(k).or_insert(step));
                } else if r < 11 {
                    assert_eq!(t.insert(k, step), model.insert(k, step));
                } else {
                    assert_eq!(t.remove(k), model.remove(&k));
                }
                assert_eq!(t.len(), model.len());
                if step % 97 == 0 {
                    for k in &keys {
                        assert_eq!(t.get(*k), model.get(k).copied(), "seed {seed} step {step}");
                    }
                }
            }
            for k in &keys {
                assert_eq!(t.get(*k), model.get(k).copied());
                assert_eq!(t.contains(*k), model.contains_key(k));
            }
            let mut got: Vec<u32> = t.values().collect();
            let mut want: Vec<u32> = model.values().copied().collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn key_zero_is_a_key() {
        let mut t = IdMap::default();
        assert_eq!(t.get(0), None);
        assert_eq!(t.get_or_insert_with(0, || 7), 7);
        assert_eq!(t.get(0), Some(7));
        assert_eq!(t.remove(0), Some(7));
        assert!(t.is_empty());
    }
}
