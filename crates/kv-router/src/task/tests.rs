//! The index task against a simulated worker whose event stream loses and reorders events:
//! re-syncs go through the worker's own query answer ([`LocalState::answer`]), and afterwards
//! the router holds exactly what the worker caches. Also worker departure, failed re-syncs
//! and approximate mode's TTL.

use std::sync::{Arc, Mutex};

use dynamo_protocols::hashing::{block_hashes, sequence_hashes};
use dynamo_protocols::kv_events::{stored_blocks, KvCacheRemoveData, KvCacheStoreData, KvQuery};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::publisher::LocalState;

const W: u64 = 0xabc;

fn stored_data(local: &[u64], seq: &[u64]) -> KvCacheEventData {
    KvCacheEventData::Stored(KvCacheStoreData {
        parent_hash: None,
        blocks: stored_blocks(local, seq),
        medium: None,
    })
}

/// A worker caching prompts and evicting at random, numbering its events.
struct FakeWorker {
    state: LocalState,
    next: u64,
    cached: Vec<Vec<u64>>,
}

impl FakeWorker {
    fn event(&mut self, data: KvCacheEventData) -> KvCacheEvent {
        let ev = KvCacheEvent {
            event_id: self.next,
            data,
            dp_rank: 0,
        };
        self.next += 1;
        self.state.apply(&ev);
        ev
    }

    fn step(&mut self, rng: &mut StdRng) -> KvCacheEvent {
        match rng.random_range(0..10) {
            0..=6 => {
                let group = rng.random_range(0..5u32);
                let toks: Vec<u32> = (0..rng.random_range(1..6u32) * 4)
                    .map(|i| group * 100 + i)
                    .collect();
                let local = block_hashes(&toks, 4);
                let seq = sequence_hashes(&local);
                self.cached.push(seq.clone());
                self.event(stored_data(&local, &seq))
            }
            7..=8 if !self.cached.is_empty() => {
                let i = rng.random_range(0..self.cached.len());
                let seq = self.cached.swap_remove(i);
                // Evict a tail (leaves first, like the engine).
                let cut = rng.random_range(0..seq.len());
                self.event(KvCacheEventData::Removed(KvCacheRemoveData {
                    block_hashes: seq[cut..].to_vec(),
                    medium: None,
                }))
            }
            _ => {
                self.cached.clear();
                self.event(KvCacheEventData::Cleared)
            }
        }
    }
}

fn answer(state: &LocalState, from: Option<u64>) -> SyncAnswer {
    let mut a = SyncAnswer::default();
    for p in state.answer(&KvQuery {
        from_event_id: from,
    }) {
        a.full |= p.full;
        a.last_event_id = p.last_event_id;
        a.blocks.extend(p.blocks);
        a.events.extend(p.events);
    }
    a
}

fn deliver(task: &mut IndexTask, worker: u64, ev: KvCacheEvent) {
    task.handle(IndexMsg::Event(RouterEvent {
        worker_id: worker,
        event: ev,
    }));
}

#[test]
fn lost_and_reordered_events_are_repaired_by_resync() {
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let asked: Arc<Mutex<Vec<Option<u64>>>> = Default::default();
        let a2 = asked.clone();
        let mut task = IndexTask::new(
            Some(Box::new(move |w, from| {
                assert_eq!(w, W);
                a2.lock().unwrap().push(from);
            })),
            None,
            None,
        );
        let mut worker = FakeWorker {
            state: LocalState::default(),
            next: 0,
            cached: vec![],
        };
        let mut delayed: Vec<KvCacheEvent> = Vec::new();
        let mut resyncs = 0;
        let mut answer_pending = |task: &mut IndexTask, worker: &FakeWorker| {
            let pending: Vec<_> = asked.lock().unwrap().drain(..).collect();
            for from in &pending {
                resyncs += 1;
                task.handle(IndexMsg::Answer {
                    worker: W,
                    answer: Ok(answer(&worker.state, *from)),
                });
            }
            !pending.is_empty()
        };
        for _ in 0..300 {
            let ev = worker.step(&mut rng);
            match rng.random_range(0..20) {
                0 => {} // lost
                1 => delayed.push(ev),
                _ => deliver(&mut task, W, ev),
            }
            if rng.random_range(0..4) == 0 {
                for ev in delayed.drain(..) {
                    deliver(&mut task, W, ev);
                }
            }
            if rng.random_range(0..3) == 0 {
                answer_pending(&mut task, &worker);
            }
        }
        for ev in delayed.drain(..) {
            deliver(&mut task, W, ev);
        }
        while answer_pending(&mut task, &worker) {}
        // One more event in order: applied directly, no further re-sync.
        let ev = worker.step(&mut rng);
        deliver(&mut task, W, ev);
        assert!(asked.lock().unwrap().is_empty(), "seed {seed}: in sync");
        assert!(resyncs > 0, "seed {seed}: the lossy stream needed re-syncs");
        // Every prompt the worker could have cached: the router's overlap is the worker's
        // own leading run of cached blocks.
        for group in 0..5u32 {
            let toks: Vec<u32> = (0..20).map(|i| group * 100 + i).collect();
            let local = block_hashes(&toks, 4);
            let seq = sequence_hashes(&local);
            let want = seq
                .iter()
                .take_while(|h| worker.state.contains(**h))
                .count() as u32;
            let got = task
                .index()
                .find_matches_ro(&local)
                .first()
                .map_or(0, |m| m.1);
            assert_eq!(got, want, "seed {seed}, group {group}");
        }
        assert!(task.index().worker_blocks((W, 0)) <= worker.state.len());
    }
}

#[test]
fn removed_worker_and_failed_resync_drop_blocks() {
    let mut task = IndexTask::new(Some(Box::new(|_, _| {})), None, None);
    let local = block_hashes(&(0..32).collect::<Vec<u32>>(), 16);
    let seq = sequence_hashes(&local);
    let stored = |id| KvCacheEvent {
        event_id: id,
        data: stored_data(&local, &seq),
        dp_rank: 0,
    };
    for w in [1u64, 2] {
        deliver(&mut task, w, stored(0));
    }
    assert_eq!(
        task.index().find_matches_ro(&local),
        vec![((1, 0), 2), ((2, 0), 2)]
    );
    task.handle(IndexMsg::WorkerRemoved(1));
    assert_eq!(task.index().find_matches_ro(&local), vec![((2, 0), 2)]);
    // Worker 2 skips ahead; the re-sync fails: its blocks are dropped until it is back.
    deliver(&mut task, 2, stored(5));
    task.handle(IndexMsg::Answer {
        worker: 2,
        answer: Err("timeout".into()),
    });
    assert!(task.index().find_matches_ro(&local).is_empty());
}

#[test]
fn without_a_resync_path_the_stream_continues_after_a_gap() {
    let mut task = IndexTask::new(None, None, None);
    let local = block_hashes(&(0..16).collect::<Vec<u32>>(), 16);
    let seq = sequence_hashes(&local);
    deliver(
        &mut task,
        3,
        KvCacheEvent {
            event_id: 4,
            data: stored_data(&local, &seq),
            dp_rank: 0,
        },
    );
    assert_eq!(task.index().find_matches_ro(&local), vec![((3, 0), 1)]);
}

#[test]
fn approximate_mode_remembers_routes_until_the_ttl() {
    let ttl = Duration::from_secs(10);
    let mut task = IndexTask::new(None, None, Some(ttl));
    let local = block_hashes(&(0..48).collect::<Vec<u32>>(), 16);
    let seq = sequence_hashes(&local);
    let t0 = Instant::now();
    task.handle(IndexMsg::Routed {
        worker: (7, 0),
        local: local.clone(),
        seq: seq.clone(),
    });
    // The first routing's expiry lies in [t0 + ttl, t1 + ttl]; the second's after t1 + ttl.
    let t1 = Instant::now();
    assert_eq!(task.index().find_matches_ro(&local), vec![((7, 0), 3)]);
    task.expire(t0 + Duration::from_secs(5));
    assert_eq!(task.index().worker_blocks((7, 0)), 3);
    std::thread::sleep(Duration::from_millis(20));
    // Routed again for the first two blocks: those live on, the third expires.
    task.handle(IndexMsg::Routed {
        worker: (7, 0),
        local: local[..2].to_vec(),
        seq: seq[..2].to_vec(),
    });
    task.expire(t1 + ttl);
    assert_eq!(task.index().worker_blocks((7, 0)), 2);
    task.expire(t0 + 3 * ttl);
    assert_eq!(task.index().worker_blocks((7, 0)), 0);
    assert_eq!(task.index().node_count(), 0);
}

#[test]
fn every_handled_event_gives_its_budget_back() {
    let budget = EventBudget::new(1000);
    let mut t = IndexTask::new(None, None, None).with_event_budget(budget.clone());
    let local = block_hashes(&(0..16).collect::<Vec<u32>>(), 4);
    let seq = sequence_hashes(&local);
    // Applied, duplicate, implausible, held behind a gap: each is handed back once handled.
    for (id, data) in [
        (0, stored_data(&local, &seq)),
        (0, KvCacheEventData::Cleared),
        (u64::MAX / 2, KvCacheEventData::Cleared),
        (5, stored_data(&local, &seq)),
    ] {
        let ev = RouterEvent {
            worker_id: W,
            event: KvCacheEvent {
                event_id: id,
                data,
                dp_rank: 0,
            },
        };
        let cost = budget.cost(&ev);
        assert!(futures::FutureExt::now_or_never(budget.take(cost)).is_some());
        assert_eq!(budget.available(), 1000 - cost as usize);
        t.handle(IndexMsg::Event(ev));
        assert_eq!(budget.available(), 1000, "event {id}");
    }
}
