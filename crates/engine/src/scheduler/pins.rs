//! Pinned KV blocks: a pin keeps a block, and every block before it in its prompt, from being
//! dropped until its TTL passes or it is unpinned. Without lower tiers a pin holds the block
//! in the KV pool (a reference, as a running request holds its prefix); with a host tier the
//! pool may still evict it, but it is then always copied to the host tier (whatever the write
//! policy), the host tier's LRU passes it over, and the storage tier's cap deletes its file
//! last. A waiting request that cannot be admitted because pins hold the pool releases them
//! (counted, logged) instead of waiting forever. Pins are bounded (half the pool without lower
//! tiers, half the host tier with them) so the tiers stay within their capacities.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Scheduler;
use crate::kv::NodeId;

/// One pin asked for: until when, and the blocks it covers (the block and its ancestors).
struct Pin {
    until: Instant,
    chain: Vec<u64>,
}

/// A block some pins cover: how many, and the pool node it references (pool-holding pins).
struct Covered {
    pins: u32,
    held: Option<NodeId>,
}

/// The pins, by the block hash they were asked for, and the blocks they cover.
#[derive(Default)]
pub(crate) struct Pins {
    asked: HashMap<u64, Pin>,
    covered: HashMap<u64, Covered>,
    next_expiry: Option<Instant>,
}

impl Pins {
    /// Block `hash` is covered by a pin.
    pub(crate) fn contains(&self, hash: u64) -> bool {
        self.covered.contains_key(&hash)
    }

    /// When the next pin expires.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.next_expiry
    }

    fn refresh_expiry(&mut self) {
        self.next_expiry = self.asked.values().map(|p| p.until).min();
    }
}

/// Why pins ended (the `reason` label of `unpinned_blocks_total`).
#[derive(Clone, Copy)]
pub(crate) enum Unpin {
    Expired,
    Request,
    Pressure,
}

impl Unpin {
    fn label(self) -> &'static str {
        match self {
            Unpin::Expired => "expired",
            Unpin::Request => "request",
            Unpin::Pressure => "pressure",
        }
    }
}

impl Scheduler {
    /// Pins reference pool blocks (no lower tier to move them to).
    fn pins_hold_the_pool(&self) -> bool {
        self.tiers.is_none()
    }

    fn pin_cap(&self) -> usize {
        match &self.tiers {
            None => self.pool.total() / 2,
            Some(t) => t.host.capacity() / 2,
        }
    }

    /// `hash` and the blocks before it that some tier holds, root side last.
    fn chain_hashes(&self, hash: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut cur = Some(hash);
        while let Some(h) = cur {
            if let Some(n) = self.pool.find(h) {
                out.push(h);
                cur = self.pool.parent_hash_of(n);
            } else if let Some(p) = self.tiers.as_ref().and_then(|t| t.host.parent_of(h)) {
                out.push(h);
                cur = p;
            } else {
                let stored = self.tiers.as_ref().and_then(|t| t.store.as_ref());
                if stored.is_some_and(|s| s.contains(h)) {
                    out.push(h);
                }
                break;
            }
        }
        out
    }

    /// Pin `hashes` (and their ancestors) for `ttl`; how many of `hashes` some tier holds
    /// and are now pinned (pinning a pinned block extends its TTL).
    pub(super) fn pin(&mut self, hashes: &[u64], ttl: Duration) -> usize {
        let until = Instant::now() + ttl;
        let mut count = 0;
        for &h in hashes {
            if let Some(p) = self.pins.asked.get_mut(&h) {
                p.until = p.until.max(until);
                count += 1;
                continue;
            }
            let chain = self.chain_hashes(h);
            if chain.is_empty() {
                continue;
            }
            let new = chain.iter().filter(|c| !self.pins.contains(**c)).count();
            if self.pins.covered.len() + new > self.pin_cap() {
                tracing::warn!(
                    block = format_args!("{h:016x}"),
                    pinned = self.pins.covered.len(),
                    "pin refused: the pin limit is reached"
                );
                continue;
            }
            for &c in &chain {
                if let Some(cov) = self.pins.covered.get_mut(&c) {
                    cov.pins += 1;
                    continue;
                }
                let held = match self.pool.find(c) {
                    Some(n) if self.pins_hold_the_pool() => {
                        self.pool.acquire(&[n]);
                        Some(n)
                    }
                    _ => None,
                };
                if let Some(t) = self.tiers.as_mut() {
                    t.host.set_pinned(c, true);
                    if let Some(st) = &t.store {
                        st.set_pinned(c, true);
                    }
                }
                self.pins.covered.insert(c, Covered { pins: 1, held });
            }
            self.pins.asked.insert(h, Pin { until, chain });
            count += 1;
        }
        self.pins.refresh_expiry();
        self.publish_pins();
        count
    }

    /// Unpin `hashes` (pins asked for by these hashes); how many were pinned. Blocks no
    /// other pin covers are released.
    pub(super) fn unpin(&mut self, hashes: &[u64], why: Unpin) -> usize {
        let mut count = 0;
        let mut released = 0u64;
        for h in hashes {
            let Some(p) = self.pins.asked.remove(h) else {
                continue;
            };
            count += 1;
            for c in p.chain {
                let Some(cov) = self.pins.covered.get_mut(&c) else {
                    continue;
                };
                cov.pins -= 1;
                if cov.pins > 0 {
                    continue;
                }
                let cov = self.pins.covered.remove(&c).expect("present");
                released += 1;
                if let Some(n) = cov.held {
                    self.pool.release(&[n]);
                }
                if let Some(t) = self.tiers.as_mut() {
                    t.host.set_pinned(c, false);
                    if let Some(st) = &t.store {
                        st.set_pinned(c, false);
                    }
                }
            }
        }
        if let (Some(m), true) = (&self.metrics, released > 0) {
            m.pins
                .unpinned
                .with_label_values(&[why.label()])
                .inc_by(released);
        }
        self.pins.refresh_expiry();
        self.publish_pins();
        count
    }

    /// Drop the pins whose TTL has passed.
    pub(super) fn expire_pins(&mut self, now: Instant) {
        if self.pins.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let gone: Vec<u64> = self
            .pins
            .asked
            .iter()
            .filter(|(_, p)| p.until <= now)
            .map(|(&h, _)| h)
            .collect();
        self.unpin(&gone, Unpin::Expired);
    }

    /// Pins hold pool blocks a waiting request needs and nothing runs that could free any:
    /// release every pin (logged, counted). Whether any was released.
    pub(super) fn release_pins_under_pressure(&mut self) -> bool {
        if !self.pins_hold_the_pool() || self.pins.asked.is_empty() {
            return false;
        }
        let all: Vec<u64> = self.pins.asked.keys().copied().collect();
        tracing::warn!(
            pins = all.len(),
            blocks = self.pins.covered.len(),
            "unpinning every pinned KV block: the pins left no room for a waiting request"
        );
        self.unpin(&all, Unpin::Pressure) > 0
    }

    /// Pin the prompt blocks of running requests that asked for it (`cache_control`, or the
    /// router's pin TTL) once their prompt is computed.
    pub(super) fn pin_requested(&mut self) {
        let page = self.pool.page();
        let mut todo = Vec::new();
        for s in &mut self.running {
            if s.pin_ttl.is_some() && s.computed >= s.prompt_len {
                let ttl = s.pin_ttl.take().expect("checked");
                let full = (s.prompt_len / page).min(s.nodes.len());
                if let Some(&last) = s.nodes[..full].last() {
                    todo.push((self.pool.seq_hash_of(last), ttl));
                }
            }
        }
        for (h, ttl) in todo {
            self.pin(&[h], ttl);
        }
    }

    fn publish_pins(&self) {
        if let Some(m) = &self.metrics {
            let tokens = self.pins.covered.len() * self.pool.page();
            m.pins.pinned_tokens.set(tokens as i64);
        }
    }
}
