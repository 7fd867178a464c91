//! The scheduler's observability hooks, kept out of the main loop's code: metric gauges once
//! per iteration, what one forward step records (stage timings, per-token latencies, span
//! slices), the per-request metric families at a request's end, and handing an ended
//! request's timestamps to the span builder.

use std::time::{Duration, Instant};

use super::{Scheduler, Seq};
use crate::metrics::{EngineMetrics, Stage};
use crate::trace::{Finished, Slice};

/// A prefill chunk of `s` ran from `t0` to `t1` (`completes`: it was the prompt's last).
pub(super) fn observe_prefill(
    m: Option<&EngineMetrics>,
    s: &mut Seq,
    completes: bool,
    t0: Instant,
    t1: Instant,
) {
    if s.generated() != 0 {
        return;
    }
    if let Some(t) = s.trace.as_mut() {
        if s.chunked {
            t.slices.push((Slice::ChunkedPrefill, t0, t1));
        }
        if let Some(a) = t.admitted.filter(|_| completes) {
            t.slices.push((Slice::PrefillForward, a, t1));
        }
    }
    if let Some(m) = m {
        if s.chunked {
            m.stage(Stage::ChunkedPrefill, t1 - t0);
        }
        if let Some(a) = s.admitted.filter(|_| completes) {
            m.stage(Stage::PrefillForward, t1.duration_since(a));
        }
    }
}

/// A decode step of `s` ran from `t0` to `t1` in batch `bid` of `batch` sequences.
pub(super) fn observe_decode(s: &mut Seq, bid: u32, batch: u32, t0: Instant, t1: Instant) {
    if let Some(t) = s.trace.as_mut() {
        t.slices.push((Slice::Decode { bid, batch }, t0, t1));
    }
}

/// `s` produced a token at `now`: TTFT or inter-token latency, and the span's first token.
pub(super) fn observe_token(m: Option<&EngineMetrics>, s: &mut Seq, now: Instant) {
    if let Some(m) = m {
        match s.last_token {
            // A request's time to first token is its first choice's.
            None if s.choice > 0 => {}
            None => m.ttft.observe(now.duration_since(s.arrival).as_secs_f64()),
            Some(t) => m.itl.observe(now.duration_since(t).as_secs_f64()),
        }
    }
    s.last_token = Some(now);
    if let Some(t) = s.trace.as_mut() {
        t.first_token.get_or_insert(now);
    }
}

impl Scheduler {
    /// One forward step's token counts and duration.
    pub(super) fn observe_forward(
        &mut self,
        prefill: u64,
        decode: u64,
        decode_lens: usize,
        took: Duration,
    ) {
        if let Some(m) = &self.metrics {
            if prefill == 0 && decode > 0 {
                let graph = self.exec.graph_ran();
                let mode = if graph {
                    "decode_cuda_graph"
                } else {
                    "decode_none"
                };
                m.graph_passes.with_label_values(&[mode]).inc();
                m.is_cuda_graph.set(i64::from(graph));
            }
            m.realtime_prefill_compute.inc_by(prefill);
            m.realtime_decode.inc_by(decode);
            m.decode_sum_seq_lens.set(decode_lens as i64);
            self.window.forward(took, decode);
        }
    }

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
/// histograms, aborted ones only the aborted counter. A request's later choices add their
/// generated tokens only: its prompt, cached tokens and latency are its first choice's.
pub(super) fn finished(m: &EngineMetrics, s: &Seq, aborted: bool, now: Instant) {
    let g = s.generated() as u64;
    if s.choice > 0 {
        if !aborted {
            m.generation_tokens.inc_by(g);
            if let Some(h) = &m.generation_hist {
                h.observe(g as f64);
            }
        }
        return;
    }
    if aborted {
        m.aborted.inc();
        return;
    }
    m.requests.inc();
    m.prompt_tokens.inc_by(s.prompt_len as u64);
    m.generation_tokens.inc_by(g);
    let cached = s.cached.unwrap_or(0);
    let (host, storage) = s.tier_tokens;
    let c = &m.cached_tokens;
    c.device
        .inc_by(cached.saturating_sub(host + storage) as u64);
    for (series, n) in [(&c.host, host), (&c.storage, storage)] {
        if let (Some(series), true) = (series, n > 0) {
            series.inc_by(n as u64);
        }
    }
    m.e2e.observe(now.duration_since(s.arrival).as_secs_f64());
    m.retractions_per_req.observe(f64::from(s.retractions));
    if let Some(h) = &m.prompt_hist {
        h.observe(s.prompt_len as f64);
    }
    if let Some(h) = &m.generation_hist {
        h.observe(g as f64);
    }
}
