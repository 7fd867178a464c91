//! Token sampling: repetition / frequency / presence penalties, temperature, top-k, top-p,
//! min-p, and a per-request generator seeded from `seed`, advanced once per token — so the
//! same request gives the same tokens across runs and batch compositions (the logits are
//! batch-invariant too).

use std::collections::{HashMap, HashSet};

use dynamo_protocols::SamplingOptions;

/// Validated sampling parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: Option<u64>,
}

/// Temperatures below this sample greedily.
pub const GREEDY_BELOW_TEMPERATURE: f32 = 1e-5;

impl SamplingParams {
    /// Engine defaults (temperature 1, no truncation, no penalties) where unset.
    pub fn from_options(o: &SamplingOptions) -> Result<Self, String> {
        let p = SamplingParams {
            temperature: o.temperature.unwrap_or(1.0),
            top_k: o.top_k.map(|k| k as usize).unwrap_or(0),
            top_p: o.top_p.unwrap_or(1.0),
            min_p: o.min_p.unwrap_or(0.0),
            repetition_penalty: o.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
            presence_penalty: o.presence_penalty.unwrap_or(0.0),
            seed: o.seed,
        };
        if !(p.temperature >= 0.0 && p.temperature.is_finite()) {
            return Err(format!("temperature must be >= 0, got {}", p.temperature));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", p.top_p));
        }
        if !(0.0..=1.0).contains(&p.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", p.min_p));
        }
        if !(p.repetition_penalty > 0.0 && p.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                p.repetition_penalty
            ));
        }
        if !p.frequency_penalty.is_finite() || !p.presence_penalty.is_finite() {
            return Err("penalties must be finite".into());
        }
        Ok(p)
    }

    /// Greedy at temperature 0, below [`GREEDY_BELOW_TEMPERATURE`] (dividing logits by a
    /// smaller one overflows to NaN probabilities), or with `top_k == 1`.
    pub fn greedy(&self) -> bool {
        self.temperature < GREEDY_BELOW_TEMPERATURE || self.top_k == 1
    }
}

/// xoshiro256** seeded through splitmix64.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let r = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Per-request sampling state.
pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    counts: HashMap<u32, u32>,
    prompt: HashSet<u32>,
}

impl Sampler {
    /// `fallback_seed` is used when the request has no seed (differs per request).
    pub fn new(params: SamplingParams, prompt: &[u32], fallback_seed: u64) -> Self {
        let prompt = if params.repetition_penalty != 1.0 {
            prompt.iter().copied().collect()
        } else {
            HashSet::new()
        };
        Sampler {
            rng: Rng::new(params.seed.unwrap_or(fallback_seed)),
            params,
            counts: HashMap::new(),
            prompt,
        }
    }

    /// Record a generated token (for penalties).
    pub fn observe(&mut self, tok: u32) {
        let p = &self.params;
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 || p.repetition_penalty != 1.0 {
            *self.counts.entry(tok).or_default() += 1;
        }
    }

    /// Choose the next token from `logits` (modified in place); `banned` get no probability.
    pub fn sample(&mut self, logits: &mut [f32], banned: &[u32]) -> u32 {
        let p = self.params.clone();
        for &b in banned {
            if let Some(l) = logits.get_mut(b as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt.iter().chain(self.counts.keys());
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
                }
            }
        }
        if p.greedy() {
            return argmax(logits);
        }
        // Softmax at temperature.
        let inv_t = 1.0 / p.temperature;
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for l in logits.iter_mut() {
            *l = ((*l - m) * inv_t).exp();
            sum += *l;
        }
        for l in logits.iter_mut() {
            *l /= sum;
        }
        let probs: &[f32] = logits;
        let vocab = probs.len();
        let k = if p.top_k == 0 || p.top_k >= vocab {
            vocab
        } else {
            p.top_k
        };
        let u = self.rng.next_f32();
        if k == vocab && p.top_p >= 1.0 {
            // No truncation by rank: walk the vocabulary in id order.
            let thresh = p.min_p * probs.iter().fold(0f32, |a, &b| a.max(b));
            let total: f32 = probs.iter().filter(|&&x| x >= thresh).sum();
            let mut acc = 0f32;
            let target = u * total;
            let mut last = 0;
            for (i, &x) in probs.iter().enumerate() {
                if x >= thresh && x > 0.0 {
                    acc += x;
                    last = i;
                    if acc > target {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        // Rank-truncated: find the smallest sorted prefix that covers top_p (within top_k).
        let mut idx: Vec<u32> = (0..vocab as u32).collect();
        let desc = |a: &u32, b: &u32| {
            probs[*b as usize]
                .total_cmp(&probs[*a as usize])
                .then(a.cmp(b))
        };
        let mut m = k.min(64);
        loop {
            if m < vocab {
                idx.select_nth_unstable_by(m - 1, desc);
            }
            idx[..m].sort_unstable_by(desc);
            let covered: f32 = idx[..m].iter().map(|&i| probs[i as usize]).sum();
            if m == k || covered >= p.top_p {
                break;
            }
            m = (m * 8).min(k);
        }
        let mut cut = m;
        let mut acc = 0f32;
        for (j, &i) in idx[..m].iter().enumerate() {
            acc += probs[i as usize];
            if acc >= p.top_p {
                cut = j + 1;
                break;
            }
        }
        let thresh = p.min_p * probs[idx[0] as usize];
        let cands: Vec<u32> = idx[..cut]
            .iter()
            .copied()
            .filter(|&i| probs[i as usize] >= thresh)
            .collect();
        let total: f32 = cands.iter().map(|&i| probs[i as usize]).sum();
        let target = u * total;
        let mut acc = 0f32;
        for &i in &cands {
            acc += probs[i as usize];
            if acc > target {
                return i;
            }
        }
        *cands.last().unwrap_or(&idx[0])
    }
}

/// Index of the largest value (lowest index on ties).
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// A position's raw log probabilities, taken before sampling changes the logits: the log of
/// the softmax normalizer, and the `k` best tokens. The raw row is kept in this thread's
/// buffer (reused, no allocation per token) until [`Logprobs::token`], which must run on the
/// same thread before the next [`Logprobs::of`] there.
pub struct Logprobs {
    lse: f32,
    top: Vec<(u32, f32)>,
}

thread_local! {
    /// The raw logits of the row [`Logprobs::of`] last read on this thread.
    static RAW_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Logprobs {
    pub fn of(logits: &[f32], k: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let lse = max + sum.ln() as f32;
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k > 0 {
            for (i, &l) in logits.iter().enumerate() {
                if top.len() < k || l > top[top.len() - 1].1 {
                    let at = top.partition_point(|&(_, x)| x >= l);
                    top.insert(at, (i as u32, l));
                    top.truncate(k);
                }
            }
        }
        for t in &mut top {
            t.1 -= lse;
        }
        RAW_ROW.with_borrow_mut(|r| {
            r.clear();
            r.extend_from_slice(logits);
        });
        Logprobs { lse, top }
    }

    /// The sampled token's entry.
    pub fn token(self, tok: u32) -> dynamo_protocols::TokenLogprob {
        let raw = RAW_ROW.with_borrow(|r| r[tok as usize]);
        dynamo_protocols::TokenLogprob {
            logprob: raw - self.lse,
            top: self.top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(t: f32) -> SamplingParams {
        SamplingParams::from_options(&SamplingOptions {
            temperature: Some(t),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn greedy_and_banned() {
        let mut s = Sampler::new(params(0.0), &[], 1);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[1]), 2);
        // A denormal temperature is greedy, not NaN probabilities and token 0 forever.
        let mut s = Sampler::new(params(1e-39), &[], 1);
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn seeded_sampling_reproduces_and_truncates() {
        let logits: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let mut p = params(0.8);
        p.seed = Some(42);
        p.top_k = 5;
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone(), &[], 0);
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p), "same seed, same tokens");
        let mut top: Vec<usize> = (0..1000).collect();
        top.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]).then(x.cmp(&y)));
        assert!(
            a.iter().all(|t| top[..5].contains(&(*t as usize))),
            "top-k respected"
        );
        p.top_k = 0;
        p.top_p = 0.05;
        let b = run(&p);
        assert!(
            b.iter().all(|&t| logits[t as usize] >= 9.9),
            "top-p keeps only the head"
        );
        p.seed = Some(43);
        p.top_p = 1.0;
        assert_ne!(run(&p), a);
    }

    #[test]
    fn penalties_move_logits() {
        let mut p = params(0.0);
        p.presence_penalty = 5.0;
        let mut s = Sampler::new(p, &[], 0);
        s.observe(0);
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 1);
        let mut p = params(0.0);
        p.repetition_penalty = 2.0;
        let mut s = Sampler::new(p, &[0], 0);
        assert_eq!(s.sample(&mut [3.0, 2.0], &[]), 1, "3/2 < 2");
    }

    #[test]
    fn bad_values_rejected() {
        let bad = SamplingOptions {
            top_p: Some(0.0),
            ..Default::default()
        };
        assert!(SamplingParams::from_options(&bad).is_err());
    }
}
