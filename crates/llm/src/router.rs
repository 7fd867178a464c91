//! `--router-mode` and the stateless choices (round-robin, random); the KV-aware mode is in
//! [`dynamo_kv_router`].

use std::sync::atomic::{AtomicUsize, Ordering};

/// `--router-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterMode {
    RoundRobin,
    Random,
    /// KV-aware: overlap with each worker's cached blocks and its load.
    Kv,
}

impl std::str::FromStr for RouterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" | "round_robin" => Ok(RouterMode::RoundRobin),
            "random" => Ok(RouterMode::Random),
            "kv" => Ok(RouterMode::Kv),
            other => Err(format!(
                "unknown router mode {other:?}; use round-robin, random or kv"
            )),
        }
    }
}

/// Picks an index into a candidate list.
#[derive(Debug)]
pub struct Router {
    mode: RouterMode,
    next: AtomicUsize,
}

impl Router {
    pub fn new(mode: RouterMode) -> Self {
        Router {
            mode,
            next: AtomicUsize::new(0),
        }
    }

    /// Index of the instance to try first among `n` candidates (`n > 0`).
    pub fn pick(&self, n: usize) -> usize {
        match self.mode {
            RouterMode::RoundRobin | RouterMode::Kv => {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            }
            RouterMode::Random => rand::random_range(0..n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_and_random_stays_in_range() {
        let r = Router::new(RouterMode::RoundRobin);
        let picks: Vec<usize> = (0..6).map(|_| r.pick(3)).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        let r = Router::new(RouterMode::Random);
        assert!((0..100).all(|_| r.pick(4) < 4));
        assert_eq!("kv".parse::<RouterMode>().unwrap(), RouterMode::Kv);
        assert!("least-loaded".parse::<RouterMode>().is_err());
        assert_eq!("random".parse::<RouterMode>().unwrap(), RouterMode::Random);
    }
}
