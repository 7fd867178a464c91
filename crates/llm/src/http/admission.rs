//! Admission at the frontend: at most `--max-inflight-requests` requests per model from the
//! handler's start to the response's last byte. Past the limit a request is shed at once with
//! the configured overload status and `Retry-After`, before any tokenization or worker work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::openai::{ApiError, ErrorClass};

/// Per-model inflight counts against one limit (0: no limit). Counts exist only for models a
/// worker serves (the caller looks the model up first), so the map is bounded by discovery.
pub struct InflightLimiter {
    limit: usize,
    status: u16,
    counts: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

/// One admitted request's place; given back on drop.
pub struct Permit(Option<Arc<AtomicUsize>>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl InflightLimiter {
    /// `status`: what a shed request is answered with (503, 429 or 529).
    pub fn new(limit: usize, status: u16) -> Self {
        InflightLimiter {
            limit,
            status,
            counts: Mutex::default(),
        }
    }

    /// The status overload answers use.
    pub fn overload_status(&self) -> u16 {
        self.status
    }

    /// Take a place for a request of `model`, or the overload error.
    pub fn acquire(&self, model: &str) -> Result<Permit, ApiError> {
        if self.limit == 0 {
            return Ok(Permit(None));
        }
        let count = self
            .counts
            .lock()
            .unwrap()
            .entry(model.to_string())
            .or_default()
            .clone();
        let before = count.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(Some(count));
        if before >= self.limit {
            return Err(ApiError::new(
                ErrorClass::Overloaded {
                    status: self.status,
                },
                format!(
                    "model {model} has {before} requests in flight (--max-inflight-requests {}); retry later",
                    self.limit
                ),
            ));
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_model_and_frees_on_drop() {
        let l = InflightLimiter::new(2, 503);
        let a = l.acquire("m").unwrap();
        let _b = l.acquire("m").unwrap();
        let e = l.acquire("m").err().unwrap();
        assert_eq!(e.status().as_u16(), 503);
        assert_eq!(e.class.label(), "overload");
        let _other = l.acquire("n").unwrap();
        drop(a);
        let _c = l.acquire("m").unwrap();
        let off = InflightLimiter::new(0, 503);
        let many: Vec<_> = (0..100).map(|_| off.acquire("m").unwrap()).collect();
        assert_eq!(many.len(), 100);
    }
}
