//! Per-worker event ordering for the index: events are applied in `event_id` order; a gap (or
//! a first event that is not id 0) starts a re-sync through the worker's query endpoint, and
//! events that arrive meanwhile wait in a buffer until the answer is applied. Pure state, no
//! I/O: the index task acts on what these methods return.

use dynamo_protocols::KvCacheEvent;

use super::budget::event_units;

/// How far past the next expected id an event may be: lost messages make small gaps; an id
/// further ahead is forged or corrupt, and re-syncing for it would never end (the worker's
/// answer can never reach it).
pub const MAX_GAP: u64 = 1 << 16;

/// How much may wait for a re-sync answer, in event units (one per event plus one per block):
/// past it new events are dropped, and the gap they leave is re-synced after the answer.
pub const MAX_HELD_UNITS: usize = 1 << 20;

/// What to do with an incoming event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply it now.
    Apply(KvCacheEvent),
    /// Already applied (or covered by a re-sync answer): drop it.
    Duplicate,
    /// Implausibly far ahead of what the worker has sent: drop it, no re-sync.
    Implausible,
    /// Held until a re-sync answer arrives.
    Held,
    /// The buffer of held events is full: dropped (the gap is re-synced after the answer).
    Overflow,
    /// Held, and a re-sync must start: `from` the first missing event id (`None`: the
    /// worker's whole state).
    Resync { from: Option<u64> },
}

/// Ordering state of one worker.
#[derive(Debug, Default)]
pub struct WorkerSync {
    last: Option<u64>,
    /// A re-sync answer arrived: the worker's position is known even when `last` is `None`
    /// (it had published nothing), so an id far past 0 is implausible, not a reason to ask
    /// again (the answer could never reach it).
    answered: bool,
    syncing: bool,
    held: Vec<KvCacheEvent>,
    /// Size of `held` in event units.
    held_units: usize,
    /// Held events the last answer already contained (see [`WorkerSync::take_covered`]).
    covered: Vec<KvCacheEvent>,
    /// Held events the last answer showed to be implausibly far ahead (see
    /// [`WorkerSync::take_rejected`]).
    rejected: Vec<KvCacheEvent>,
}

impl WorkerSync {
    /// The last applied event id.
    pub fn last(&self) -> Option<u64> {
        self.last
    }

    pub fn syncing(&self) -> bool {
        self.syncing
    }

    /// An event arrived from the worker.
    pub fn on_event(&mut self, ev: KvCacheEvent) -> Step {
        if self.syncing {
            let units = event_units(&ev);
            if self.held_units.saturating_add(units) > MAX_HELD_UNITS {
                return Step::Overflow;
            }
            self.held_units += units;
            self.held.push(ev);
            return Step::Held;
        }
        let expected = self.last.map_or(0, |l| l + 1);
        if ev.event_id < expected {
            return Step::Duplicate;
        }
        if ev.event_id == expected {
            self.last = Some(ev.event_id);
            return Step::Apply(ev);
        }
        if (self.last.is_some() || self.answered) && ev.event_id - expected > MAX_GAP {
            return Step::Implausible;
        }
        self.syncing = true;
        self.held_units = event_units(&ev);
        self.held.push(ev);
        Step::Resync {
            from: self.last.map(|l| l + 1),
        }
    }

    /// The worker was discovered: when nothing is known of it yet, fetch its whole state.
    /// Returns whether a re-sync must start.
    pub fn on_discovered(&mut self) -> bool {
        if self.syncing || self.last.is_some() {
            return false;
        }
        self.syncing = true;
        true
    }

    /// A re-sync answer covering events up to `last_event_id` was applied. Returns the held
    /// events to apply now, in order, and whether (from where) another re-sync must start.
    pub fn on_answer(
        &mut self,
        last_event_id: Option<u64>,
    ) -> (Vec<KvCacheEvent>, Option<Option<u64>>) {
        self.syncing = false;
        self.answered = true;
        if last_event_id.is_some() {
            self.last = last_event_id;
        }
        let mut held = std::mem::take(&mut self.held);
        self.held_units = 0;
        held.sort_by_key(|e| e.event_id);
        let mut apply = Vec::new();
        let mut again = None;
        for ev in held {
            let copy = self
                .last
                .is_some_and(|l| ev.event_id <= l)
                .then(|| ev.clone());
            let kept = ev.clone();
            match self.on_event(ev) {
                Step::Apply(e) => apply.push(e),
                Step::Duplicate => self.covered.extend(copy),
                Step::Implausible => self.rejected.push(kept),
                Step::Held | Step::Overflow => {}
                Step::Resync { from } => again = Some(from),
            }
        }
        (apply, again)
    }

    /// The events received while a re-sync was in flight whose effect arrived with its
    /// answer instead (the worker's state dump already held them): counted as applied, since
    /// the index reflects them, though they are not applied again.
    pub fn take_covered(&mut self) -> Vec<KvCacheEvent> {
        std::mem::take(&mut self.covered)
    }

    /// The held events the last answer showed to be implausibly far ahead: dropped, and
    /// counted as rejected like one arriving outside a re-sync.
    pub fn take_rejected(&mut self) -> Vec<KvCacheEvent> {
        std::mem::take(&mut self.rejected)
    }

    /// Give up on the missing events (nobody to ask): apply the held ones from the first.
    pub fn skip_gap(&mut self) -> Vec<KvCacheEvent> {
        let first = self.held.iter().map(|e| e.event_id).min();
        self.on_answer(first.map(|f| f.saturating_sub(1))).0
    }

    /// The re-sync failed: forget everything (the index task drops the worker's blocks); the
    /// next event starts a full re-sync.
    pub fn on_failed(&mut self) {
        *self = WorkerSync::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::KvCacheEventData;

    fn ev(id: u64) -> KvCacheEvent {
        KvCacheEvent {
            event_id: id,
            data: KvCacheEventData::Cleared,
            dp_rank: 0,
        }
    }

    fn ids(v: &[KvCacheEvent]) -> Vec<u64> {
        v.iter().map(|e| e.event_id).collect()
    }

    #[test]
    fn a_far_future_event_is_dropped_not_an_endless_resync() {
        let mut s = WorkerSync::default();
        assert_eq!(s.on_event(ev(0)), Step::Apply(ev(0)));
        assert_eq!(s.on_event(ev(u64::MAX / 2)), Step::Implausible);
        assert_eq!(s.on_event(ev(1)), Step::Apply(ev(1)));
        // Held during a re-sync, then dropped once the answer says where the worker is.
        assert_eq!(s.on_event(ev(5)), Step::Resync { from: Some(2) });
        assert_eq!(s.on_event(ev(u64::MAX - 1)), Step::Held);
        let (apply, again) = s.on_answer(Some(4));
        assert_eq!(ids(&apply), vec![5]);
        assert_eq!(again, None, "no further re-sync");
    }

    #[test]
    fn a_far_future_event_for_a_worker_that_sent_nothing_ends_after_one_answer() {
        let mut s = WorkerSync::default();
        assert!(s.on_discovered());
        assert_eq!(s.on_event(ev(u64::MAX / 2)), Step::Held);
        // The worker has published nothing: the forged id can never be reached.
        let (apply, again) = s.on_answer(None);
        assert!(apply.is_empty());
        assert_eq!(again, None, "no endless re-sync");
        assert_eq!(ids(&s.take_rejected()), vec![u64::MAX / 2]);
        assert_eq!(s.on_event(ev(u64::MAX / 2)), Step::Implausible);
        assert_eq!(s.on_event(ev(0)), Step::Apply(ev(0)));
        // A late router's first sight of a busy worker still fetches its state.
        let mut s = WorkerSync::default();
        assert_eq!(s.on_event(ev(MAX_GAP * 4)), Step::Resync { from: None });
    }

    #[test]
    fn in_order_events_apply_and_duplicates_drop() {
        let mut s = WorkerSync::default();
        assert_eq!(s.on_event(ev(0)), Step::Apply(ev(0)));
        assert_eq!(s.on_event(ev(1)), Step::Apply(ev(1)));
        assert_eq!(s.on_event(ev(1)), Step::Duplicate);
        assert_eq!(s.on_event(ev(0)), Step::Duplicate);
        assert_eq!(s.last(), Some(1));
    }

    #[test]
    fn a_gap_holds_later_events_until_the_answer() {
        let mut s = WorkerSync::default();
        s.on_event(ev(0));
        assert_eq!(s.on_event(ev(3)), Step::Resync { from: Some(1) });
        assert_eq!(s.on_event(ev(5)), Step::Held);
        assert_eq!(s.on_event(ev(4)), Step::Held);
        // The answer covered 1..=3 (the worker had published up to 3 when it answered).
        let (apply, again) = s.on_answer(Some(3));
        assert_eq!(
            ids(&apply),
            vec![4, 5],
            "3 was in the answer, 4 and 5 follow in order"
        );
        assert_eq!(again, None);
        assert_eq!(s.last(), Some(5));
    }

    #[test]
    fn held_events_the_answer_contained_are_reported_once() {
        let mut s = WorkerSync::default();
        assert!(s.on_discovered());
        assert_eq!(s.on_event(ev(0)), Step::Held);
        assert_eq!(s.on_event(ev(1)), Step::Held);
        let (apply, again) = s.on_answer(Some(0));
        assert_eq!(ids(&apply), vec![1], "1 came after the dump");
        assert_eq!(again, None);
        assert_eq!(ids(&s.take_covered()), vec![0], "0 was in the dump");
        assert!(s.take_covered().is_empty());
    }

    #[test]
    fn a_gap_inside_the_held_events_starts_another_resync() {
        let mut s = WorkerSync::default();
        s.on_event(ev(0));
        s.on_event(ev(2));
        s.on_event(ev(6));
        let (apply, again) = s.on_answer(Some(2));
        assert!(apply.is_empty());
        assert_eq!(again, Some(Some(3)));
        assert!(s.syncing());
        assert_eq!(s.on_event(ev(7)), Step::Held);
        let (apply, again) = s.on_answer(Some(6));
        assert_eq!(ids(&apply), vec![7]);
        assert_eq!(again, None);
    }

    #[test]
    fn events_held_for_a_resync_are_bounded_and_the_overflow_is_resynced() {
        use dynamo_protocols::kv_events::KvCacheRemoveData;
        let big = |id: u64| KvCacheEvent {
            event_id: id,
            data: KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: vec![7; MAX_HELD_UNITS / 4],
                medium: None,
            }),
            dp_rank: 0,
        };
        let mut s = WorkerSync::default();
        s.on_event(ev(0));
        assert_eq!(s.on_event(big(2)), Step::Resync { from: Some(1) });
        assert_eq!(s.on_event(big(3)), Step::Held);
        assert_eq!(s.on_event(big(4)), Step::Held);
        assert_eq!(
            s.on_event(big(5)),
            Step::Overflow,
            "a fourth would pass the bound"
        );
        assert_eq!(s.on_event(ev(6)), Step::Held, "a small one still fits");
        let (apply, again) = s.on_answer(Some(1));
        assert_eq!(ids(&apply), vec![2, 3, 4]);
        assert_eq!(again, Some(Some(5)), "the dropped event is fetched again");
        assert_eq!(s.held_units, event_units(&ev(6)), "only 6 waits now");
    }

    #[test]
    fn first_event_past_zero_fetches_the_whole_state() {
        let mut s = WorkerSync::default();
        assert_eq!(s.on_event(ev(40)), Step::Resync { from: None });
        let (apply, _) = s.on_answer(Some(41));
        assert!(apply.is_empty(), "40 is older than the dump");
        assert_eq!(s.on_event(ev(42)), Step::Apply(ev(42)));
    }

    #[test]
    fn discovery_syncs_once_and_failure_resets() {
        let mut s = WorkerSync::default();
        assert!(s.on_discovered());
        assert!(!s.on_discovered(), "already syncing");
        assert_eq!(s.on_event(ev(0)), Step::Held);
        // A worker that has published nothing answers with no last id.
        let (apply, again) = s.on_answer(None);
        assert_eq!(ids(&apply), vec![0]);
        assert_eq!(again, None);
        assert!(!s.on_discovered(), "known now");
        s.on_failed();
        assert_eq!(s.last(), None);
        assert_eq!(s.on_event(ev(9)), Step::Resync { from: None });
    }
}
