//! Choosing a worker from overlaps and load (docs/router.md, "How a request is routed"):
//! `logit = overlap_weight × prefill_blocks + decode_blocks`, where a block the worker holds in
//! its host (disk) tier counts as the host (disk) hit weight of a cached one; lowest wins at
//! temperature 0
//! (ties broken at random), otherwise sampled from a softmax over the negated logits divided
//! by the largest one. Also the router's own account of what it sent where: per worker, the
//! blocks of its active requests and the prompt tokens still to prefill.

use rand::Rng;

use super::indexer::{FastMap as HashMap, LowerHits, WorkerKey};

/// One candidate's inputs to the cost function.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub worker: WorkerKey,
    /// Leading prompt blocks the worker caches.
    pub overlap_blocks: u32,
    /// The blocks after those that its host and disk tiers hold.
    pub lower: LowerHits,
    /// Blocks the worker holds for active requests (before this one).
    pub active_blocks: u64,
}

/// The cost function's inputs for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Costing {
    pub isl_tokens: usize,
    pub block_size: usize,
    pub overlap_weight: f64,
    /// What a host-tier block saves, as a fraction of a device-tier hit.
    pub host_weight: f64,
    /// What a disk-tier block saves.
    pub disk_weight: f64,
}

impl Costing {
    /// Blocks the request occupies: `ceil(isl / block_size)`.
    pub fn request_blocks(&self) -> u64 {
        self.isl_tokens.div_ceil(self.block_size.max(1)) as u64
    }

    /// Prompt still to compute on a worker with `overlap` cached blocks, in blocks.
    pub fn prefill_blocks(&self, overlap: u32) -> f64 {
        self.prefill_of(f64::from(overlap))
    }

    /// Prompt still to compute given `cached` (weighted) blocks, in blocks.
    fn prefill_of(&self, cached: f64) -> f64 {
        let bs = self.block_size.max(1) as f64;
        let isl = self.isl_tokens as f64;
        (isl - (cached * bs).min(isl)) / bs
    }

    /// `c`'s cached blocks, its lower tiers' weighted.
    pub fn cached_blocks(&self, c: &Candidate) -> f64 {
        f64::from(c.overlap_blocks)
            + self.host_weight * f64::from(c.lower.host)
            + self.disk_weight * f64::from(c.lower.disk)
    }

    /// `overlap_weight × prefill_blocks + decode_blocks` (decode blocks include this request).
    pub fn logit(&self, c: &Candidate) -> f64 {
        self.overlap_weight * self.prefill_of(self.cached_blocks(c))
            + (c.active_blocks + self.request_blocks()) as f64
    }
}

/// Index of the chosen candidate (`cands` non-empty).
pub fn choose(
    cands: &[Candidate],
    costing: &Costing,
    temperature: f64,
    rng: &mut impl Rng,
) -> usize {
    let logits: Vec<f64> = cands.iter().map(|c| costing.logit(c)).collect();
    choose_by_logit(&logits, temperature, rng)
}

/// Index of the lowest logit (temperature 0, ties at random) or a softmax sample.
pub fn choose_by_logit(logits: &[f64], temperature: f64, rng: &mut impl Rng) -> usize {
    if temperature <= 0.0 {
        let min = logits.iter().copied().fold(f64::INFINITY, f64::min);
        let best: Vec<usize> = (0..logits.len())
            .filter(|&i| logits[i] <= min + 1e-9)
            .collect();
        return best[rng.random_range(0..best.len())];
    }
    let probs = softmax_probabilities(logits, temperature);
    let mut x: f64 = rng.random_range(0.0..1.0);
    for (i, p) in probs.iter().enumerate() {
        if x < *p {
            return i;
        }
        x -= p;
    }
    probs.len() - 1
}

/// Selection probabilities at `temperature > 0`: logits divided by the largest, then
/// `p ∝ exp(−logit / T)`.
pub fn softmax_probabilities(logits: &[f64], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(0.0, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let z: Vec<f64> = logits.iter().map(|l| -l / scale / temperature).collect();
    let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - top).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// What one routed request holds on its worker, in the router's account.
#[derive(Debug, Clone, Copy)]
struct Held {
    worker: WorkerKey,
    blocks: u64,
    prefill_tokens: u64,
}

/// Per-worker totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    pub active_blocks: u64,
    pub prefill_tokens: u64,
    pub requests: u64,
}

/// The router's prediction of active blocks and pending prefill per worker.
#[derive(Debug, Default)]
pub struct ActiveLoad {
    requests: HashMap<u64, Held>,
    workers: HashMap<WorkerKey, WorkerLoad>,
    /// When this router last added or freed a request on each worker.
    changed: HashMap<WorkerKey, std::time::Instant>,
}

impl ActiveLoad {
    /// When this router last changed its account of `w` (a worker's own load report is only
    /// newer information if it was received after that).
    pub fn last_change(&self, w: WorkerKey) -> Option<std::time::Instant> {
        self.changed.get(&w).copied()
    }

    pub fn load(&self, w: WorkerKey) -> WorkerLoad {
        self.workers.get(&w).copied().unwrap_or_default()
    }

    /// A request was routed to `worker`. Returns the worker's new totals.
    pub fn add(
        &mut self,
        id: u64,
        worker: WorkerKey,
        blocks: u64,
        prefill_tokens: u64,
    ) -> WorkerLoad {
        self.requests.insert(
            id,
            Held {
                worker,
                blocks,
                prefill_tokens,
            },
        );
        self.changed.insert(worker, std::time::Instant::now());
        let l = self.workers.entry(worker).or_default();
        l.active_blocks += blocks;
        l.prefill_tokens += prefill_tokens;
        l.requests += 1;
        *l
    }

    /// The request's first token arrived: its prefill is done.
    pub fn prefill_done(&mut self, id: u64) -> Option<(WorkerKey, WorkerLoad)> {
        let h = self.requests.get_mut(&id)?;
        let tokens = std::mem::take(&mut h.prefill_tokens);
        let w = h.worker;
        let l = self.workers.get_mut(&w)?;
        l.prefill_tokens -= tokens;
        Some((w, *l))
    }

    /// The request ended (finished, failed or cancelled).
    pub fn free(&mut self, id: u64) -> Option<(WorkerKey, WorkerLoad)> {
        let h = self.requests.remove(&id)?;
        self.changed.insert(h.worker, std::time::Instant::now());
        let l = self.workers.get_mut(&h.worker)?;
        l.active_blocks -= h.blocks;
        l.prefill_tokens -= h.prefill_tokens;
        l.requests -= 1;
        let out = (h.worker, *l);
        if l.requests == 0 {
            self.workers.remove(&h.worker);
        }
        Some(out)
    }

    /// Forget a worker that left (its requests fail on their own).
    pub fn remove_worker(&mut self, worker: u64) {
        self.workers.retain(|w, _| w.0 != worker);
        self.changed.retain(|w, _| w.0 != worker);
        self.requests.retain(|_, h| h.worker.0 != worker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The spec's worked example (weight 1): W1 8 + 10 = 18, W2 5 + 5 = 10, W3 2 + 9 = 11.
    #[test]
    fn spec_worked_example_picks_w2() {
        let weight = 1.0;
        let terms = [(8.0, 10.0), (5.0, 5.0), (2.0, 9.0)];
        let logits: Vec<f64> = terms.iter().map(|(p, d)| weight * p + d).collect();
        assert_eq!(logits, vec![18.0, 10.0, 11.0]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(choose_by_logit(&logits, 0.0, &mut rng), 1, "W2");
        }
        // Through the cost function: a 9-block prompt; W1 caches 1 block and holds 1 active
        // block, W2 caches 4, W3 caches 7 (both idle): prefill 8/5/2, decode 10/9/9.
        let costing = Costing {
            isl_tokens: 16 * 9,
            block_size: 16,
            overlap_weight: weight,
            host_weight: 0.75,
            disk_weight: 0.25,
        };
        let c = |id, overlap, active| Candidate {
            worker: (id, 0),
            overlap_blocks: overlap,
            lower: LowerHits::default(),
            active_blocks: active,
        };
        let cands = [c(1, 1, 1), c(2, 4, 0), c(3, 7, 0)];
        let l: Vec<f64> = cands.iter().map(|x| costing.logit(x)).collect();
        assert_eq!(l, vec![18.0, 14.0, 11.0]);
        assert_eq!(choose(&cands, &costing, 0.0, &mut rng), 2);
    }

    #[test]
    fn lower_tier_blocks_count_at_their_weights() {
        let costing = |host| Costing {
            isl_tokens: 160,
            block_size: 16,
            overlap_weight: 1.0,
            host_weight: host,
            disk_weight: 0.25,
        };
        // A: the prompt's 9 blocks in its host tier; B: 2 blocks in its pool.
        let cands = [
            Candidate {
                worker: (1, 0),
                overlap_blocks: 0,
                lower: LowerHits { host: 9, disk: 0 },
                active_blocks: 0,
            },
            Candidate {
                worker: (2, 0),
                overlap_blocks: 2,
                lower: LowerHits::default(),
                active_blocks: 0,
            },
        ];
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(costing(0.75).cached_blocks(&cands[0]), 6.75);
        assert_eq!(
            choose(&cands, &costing(0.75), 0.0, &mut rng),
            0,
            "3.25 + 10 < 8 + 10"
        );
        assert_eq!(
            choose(&cands, &costing(0.0), 0.0, &mut rng),
            1,
            "host ignored"
        );
        let disk = Candidate {
            lower: LowerHits { host: 0, disk: 9 },
            ..cands[0]
        };
        assert_eq!(costing(0.75).cached_blocks(&disk), 2.25);
        assert_eq!(
            choose(&[disk, cands[1]], &costing(0.75), 0.0, &mut rng),
            0,
            "2.25 disk-weighted blocks beat 2 pool blocks"
        );
    }

    #[test]
    fn weight_trades_cache_hits_against_load() {
        let costing = |w| Costing {
            isl_tokens: 320,
            block_size: 16,
            overlap_weight: w,
            host_weight: 0.75,
            disk_weight: 0.25,
        };
        // A: whole prompt cached but 30 active blocks; B: nothing cached, idle.
        let cands = [
            Candidate {
                worker: (1, 0),
                overlap_blocks: 20,
                lower: LowerHits::default(),
                active_blocks: 30,
            },
            Candidate {
                worker: (2, 0),
                overlap_blocks: 0,
                lower: LowerHits::default(),
                active_blocks: 0,
            },
        ];
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(
            choose(&cands, &costing(1.0), 0.0, &mut rng),
            1,
            "20 + 20 < 0 + 50"
        );
        assert_eq!(
            choose(&cands, &costing(2.0), 0.0, &mut rng),
            0,
            "2×20 + 20 > 0 + 50"
        );
        assert_eq!(choose(&cands, &costing(0.0), 0.0, &mut rng), 1, "load only");
        // Partial last block: 330 tokens with 20 cached blocks leaves 10 tokens = 0.625 blocks.
        let c = Costing {
            isl_tokens: 330,
            ..costing(1.0)
        };
        assert_eq!(c.prefill_blocks(20), 10.0 / 16.0);
        assert_eq!(c.request_blocks(), 21);
    }

    #[test]
    fn ties_are_broken_at_random_and_softmax_follows_temperature() {
        let costing = Costing {
            isl_tokens: 64,
            block_size: 16,
            overlap_weight: 1.0,
            host_weight: 0.75,
            disk_weight: 0.25,
        };
        let idle = |id| Candidate {
            worker: (id, 0),
            overlap_blocks: 0,
            lower: LowerHits::default(),
            active_blocks: 0,
        };
        let cands = [idle(1), idle(2), idle(3)];
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[choose(&cands, &costing, 0.0, &mut rng)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        let p = softmax_probabilities(&[10.0, 20.0], 1.0);
        assert!((p[0] - 1.0 / (1.0 + (-0.5f64).exp())).abs() < 1e-12);
        let cold = softmax_probabilities(&[10.0, 20.0], 0.01);
        assert!(cold[0] > 0.999);
        let hot = softmax_probabilities(&[10.0, 20.0], 100.0);
        assert!((hot[0] - 0.5).abs() < 0.01);
    }

    #[test]
    fn active_load_adds_marks_prefill_and_frees() {
        let mut a = ActiveLoad::default();
        let w = (7, 0);
        a.add(1, w, 10, 100);
        let l = a.add(2, w, 4, 64);
        assert_eq!(
            l,
            WorkerLoad {
                active_blocks: 14,
                prefill_tokens: 164,
                requests: 2
            }
        );
        assert_eq!(a.prefill_done(1).unwrap().1.prefill_tokens, 64);
        assert!(a.prefill_done(1).is_some(), "idempotent");
        assert_eq!(a.load(w).prefill_tokens, 64);
        assert_eq!(
            a.free(2).unwrap().1,
            WorkerLoad {
                active_blocks: 10,
                prefill_tokens: 0,
                requests: 1
            }
        );
        assert!(a.free(2).is_none());
        a.free(1);
        assert_eq!(a.load(w), WorkerLoad::default());
        a.add(3, w, 1, 1);
        a.remove_worker(7);
        assert_eq!(a.load(w), WorkerLoad::default());
        assert!(a.free(3).is_none());
    }
}
