//! Admission to the engine's waiting queue: a bound on the requests and prompt tokens that
//! have been accepted but not yet admitted to the running batch. A request past either bound is
//! refused at once ([`EngineError::Overloaded`]) instead of queueing without limit; its
//! [`Ticket`] is given back when the scheduler first admits it, or when it is dropped unserved.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::EngineError;

/// Waiting-queue limits; 0 means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_requests: usize,
    pub max_tokens: usize,
}

/// Counts of what waits now.
#[derive(Debug, Default)]
pub struct Admission {
    limits: QueueLimits,
    requests: AtomicUsize,
    tokens: AtomicUsize,
}

/// One waiting request's share of the queue; released on drop.
#[derive(Debug)]
pub struct Ticket {
    adm: Arc<Admission>,
    tokens: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.adm.requests.fetch_sub(1, Ordering::AcqRel);
        self.adm.tokens.fetch_sub(self.tokens, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(limits: QueueLimits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            ..Default::default()
        })
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Take a place for a request of `tokens` prompt tokens, or say why there is none. A
    /// single request larger than the token bound is still admitted into an empty queue, so
    /// every request the engine can serve is servable.
    pub fn try_admit(self: &Arc<Self>, tokens: usize) -> Result<Ticket, EngineError> {
        let n = self.requests.fetch_add(1, Ordering::AcqRel);
        let t = self.tokens.fetch_add(tokens, Ordering::AcqRel);
        let ticket = Ticket {
            adm: self.clone(),
            tokens,
        };
        let l = self.limits;
        if l.max_requests > 0 && n >= l.max_requests {
            return Err(EngineError::Overloaded(format!(
                "the waiting queue holds {n} requests (--max-queued-requests {})",
                l.max_requests
            )));
        }
        if l.max_tokens > 0 && n > 0 && t + tokens > l.max_tokens {
            return Err(EngineError::Overloaded(format!(
                "the waiting queue holds {t} prompt tokens; {tokens} more exceed --max-queued-tokens {}",
                l.max_tokens
            )));
        }
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_requests_and_tokens_and_releases_on_drop() {
        let a = Admission::new(QueueLimits {
            max_requests: 2,
            max_tokens: 100,
        });
        let t1 = a.try_admit(60).unwrap();
        assert!(matches!(a.try_admit(50), Err(EngineError::Overloaded(_))));
        let t2 = a.try_admit(40).unwrap();
        assert!(matches!(a.try_admit(1), Err(EngineError::Overloaded(_))));
        assert_eq!(a.waiting(), 2);
        drop((t1, t2));
        assert_eq!(a.waiting(), 0);
        // A request bigger than the token bound still gets an empty queue.
        let _big = a.try_admit(500).unwrap();
        let unlimited = Admission::new(QueueLimits::default());
        let many: Vec<_> = (0..1000)
            .map(|_| unlimited.try_admit(1 << 20).unwrap())
            .collect();
        assert_eq!(unlimited.waiting(), many.len());
    }
}
