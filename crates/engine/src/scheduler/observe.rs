//! The scheduler's observability hooks off the main loop's path: metric gauges once per
//! iteration, the per-request metric families at a request's end, and handing an ended
//! request's timestamps to the span builder.

use std::time::Instant;

use super::{Scheduler, Seq};
use crate::metrics::EngineMetrics;
use crate::trace::Finished;

impl Scheduler {
    pub(super) fn gauges(&self, m: &EngineMetrics, idle: bool) {
        let (p, page) = (&self.local.pool, self.pool.page());
        let used = (p.shared_in_use + p.private_in_use) * page;
        m.running.set(self.running.len() as i64);
        m.queued.set(self.waiting.len() as i64);
        m.used_tokens.set(used as i64);
        m.kv_used.set(used as i64);
        m.kv_available.set((p.free * page) as i64);
        m.kv_evictable.set((p.evictable * page) as i64);
        m.token_usage
            .set(used as f64 / (p.total * page).max(1) as f64);
        // Admission keeps one page of headroom per running request for the tokens they
        // have yet to generate (retraction covers the rest).
        let remaining: usize = self
            .running
            .iter()
            .map(|s| s.max_new.saturating_sub(s.generated()))
            .sum();
        let reserved = (self.running.len() * page).min(remaining);
        m.new_token_ratio
            .set(reserved as f64 / remaining.max(1) as f64);
        if idle {
            m.decode_sum_seq_lens.set(0);
        }
    }

    /// Hand a request that ended (finished or aborted) to the span builder.
    pub(super) fn end_trace(&self, s: &mut Seq, now: Instant) {
        if let (Some(sink), Some(t)) = (&self.trace, s.trace.take()) {
            sink.send(Finished {
                trace: *t,
                end: now,
                prompt_tokens: s.prompt_len,
                completion_tokens: s.generated(),
            });
        }
    }
}

/// Per-request families at the end of a request: completed requests feed the totals and
/// histograms, aborted ones only the aborted counter.
pub(super) fn finished(m: &EngineMetrics, s: &Seq, aborted: bool, now: Instant) {
    if aborted {
        m.aborted.inc();
        return;
    }
    let g = s.generated() as u64;
    m.requests.inc();
    m.prompt_tokens.inc_by(s.prompt_len as u64);
    m.generation_tokens.inc_by(g);
    m.cached_tokens.inc_by(s.cached.unwrap_or(0) as u64);
    m.e2e.observe(now.duration_since(s.arrival).as_secs_f64());
    m.retractions_per_req.observe(f64::from(s.retractions));
    if let Some(h) = &m.prompt_hist {
        h.observe(s.prompt_len as f64);
    }
    if let Some(h) = &m.generation_hist {
        h.observe(g as f64);
    }
}
