//! The worker side of KV routing, shared by `dynamo-worker` and `dynamo-mocker`: publishes the
//! engine's KV events (tagged with the instance id) on the component's `kv_events` subject,
//! publishes load once a second on `kv_metrics`, and answers routers' re-sync queries on the
//! instance's `worker_kv_indexer_query` subject from a mirror of its cache and a window of
//! recent events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use dynamo_protocols::kv_events::{
    kv_events_subject, kv_metrics_subject, kv_query_subject, DumpBlock, KvQuery, KvQueryReply,
    Medium,
};
use dynamo_protocols::{KvCacheEvent, KvCacheEventData, LoadReport, RouterEvent};
use dynamo_runtime::{CancellationToken, Events};
use tokio::sync::mpsc::UnboundedReceiver;

/// Events kept for range answers.
const EVENT_WINDOW: usize = 4096;
/// Blocks or events per answer message (keeps messages well under NATS's 1 MB payload).
const CHUNK: usize = 4096;

/// The worker's mirror of its own cache (device tier as a tree, lower tiers as sets),
/// rebuilt from the events it publishes.
#[derive(Debug, Default)]
pub struct LocalState {
    /// Sequence hash → (parent sequence hash, local hash).
    blocks: HashMap<u64, (Option<u64>, u64)>,
    /// The host and disk tiers: sequence hash → local hash.
    lower: [HashMap<u64, u64>; 2],
    recent: VecDeque<KvCacheEvent>,
    last: Option<u64>,
}

impl LocalState {
    pub fn apply(&mut self, ev: &KvCacheEvent) {
        match &ev.data {
            KvCacheEventData::Stored(s) => match Medium::lower_index(s.medium) {
                None => {
                    let mut parent = s.parent_hash;
                    for b in &s.blocks {
                        self.blocks.insert(b.block_hash, (parent, b.tokens_hash));
                        parent = Some(b.block_hash);
                    }
                }
                Some(t) => {
                    for b in &s.blocks {
                        self.lower[t].insert(b.block_hash, b.tokens_hash);
                    }
                }
            },
            KvCacheEventData::Removed(r) => {
                for h in &r.block_hashes {
                    match Medium::lower_index(r.medium) {
                        None => self.blocks.remove(h).map(|_| ()),
                        Some(t) => self.lower[t].remove(h).map(|_| ()),
                    };
                }
            }
            KvCacheEventData::Cleared => {
                self.blocks.clear();
                self.lower.iter_mut().for_each(HashMap::clear);
            }
        }
        self.last = Some(ev.event_id);
        self.recent.push_back(ev.clone());
        if self.recent.len() > EVENT_WINDOW {
            self.recent.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn contains(&self, block_hash: u64) -> bool {
        self.blocks.contains_key(&block_hash)
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Every device block whose ancestors are all cached, parents first (a block under an
    /// evicted parent is unreachable by a prefix match and is left out), then every host and
    /// disk block.
    pub fn dump(&self) -> Vec<DumpBlock> {
        let mut out = Vec::with_capacity(self.blocks.len());
        let mut done: HashSet<u64> = HashSet::with_capacity(self.blocks.len());
        let mut orphan: HashSet<u64> = HashSet::new();
        let mut chain = Vec::new();
        for &h in self.blocks.keys() {
            chain.clear();
            let mut cur = Some(h);
            let reachable = loop {
                match cur {
                    None => break true,
                    Some(c) if done.contains(&c) => break true,
                    Some(c) if orphan.contains(&c) => break false,
                    Some(c) => match self.blocks.get(&c) {
                        Some(&(p, _)) => {
                            chain.push(c);
                            cur = p;
                        }
                        None => break false,
                    },
                }
            };
            if !reachable {
                orphan.extend(chain.iter().copied());
                continue;
            }
            for &c in chain.iter().rev() {
                let (p, l) = self.blocks[&c];
                out.push(DumpBlock {
                    parent_hash: p,
                    block_hash: c,
                    tokens_hash: l,
                    medium: None,
                });
                done.insert(c);
            }
        }
        for (t, medium) in [Medium::Host, Medium::Disk].into_iter().enumerate() {
            out.extend(self.lower[t].iter().map(|(&h, &l)| DumpBlock {
                parent_hash: None,
                block_hash: h,
                tokens_hash: l,
                medium: Some(medium),
            }));
        }
        out
    }

    /// The answer to `q`, in messages: the requested events when the window still holds them,
    /// else the whole cache.
    pub fn answer(&self, q: &KvQuery) -> Vec<KvQueryReply> {
        let in_window = match (q.from_event_id, self.last) {
            (Some(f), Some(l)) if f > l => Some(Vec::new()),
            (Some(f), Some(_)) if self.recent.front().is_some_and(|e| e.event_id <= f) => Some(
                self.recent
                    .iter()
                    .filter(|e| e.event_id >= f)
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            (Some(_), None) => Some(Vec::new()),
            _ => None,
        };
        let last = self.last;
        let mut out = Vec::new();
        match in_window {
            Some(events) => {
                for c in events.chunks(CHUNK) {
                    out.push(KvQueryReply {
                        last_event_id: last,
                        full: false,
                        blocks: vec![],
                        events: c.to_vec(),
                        done: false,
                    });
                }
            }
            None => {
                let blocks = self.dump();
                for (i, c) in blocks.chunks(CHUNK).enumerate() {
                    out.push(KvQueryReply {
                        last_event_id: last,
                        full: i == 0,
                        blocks: c.to_vec(),
                        events: vec![],
                        done: false,
                    });
                }
                if out.is_empty() {
                    out.push(KvQueryReply {
                        last_event_id: last,
                        full: true,
                        blocks: vec![],
                        events: vec![],
                        done: false,
                    });
                }
            }
        }
        if out.is_empty() {
            out.push(KvQueryReply {
                last_event_id: last,
                full: false,
                blocks: vec![],
                events: vec![],
                done: true,
            });
        }
        out.last_mut().expect("non-empty").done = true;
        out
    }
}

/// Where a worker publishes.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub namespace: String,
    pub component: String,
    pub instance_id: u64,
    /// How often load is published.
    pub load_interval: Duration,
}

/// Publish `events` and `load()` for the worker and answer re-sync queries, until `stop`.
pub async fn run_publisher(
    plane: Events,
    cfg: PublisherConfig,
    mut events: UnboundedReceiver<KvCacheEvent>,
    load: impl Fn() -> LoadReport + Send + 'static,
    stop: CancellationToken,
) {
    let ev_subject = kv_events_subject(&cfg.namespace, &cfg.component);
    let load_subject = kv_metrics_subject(&cfg.namespace, &cfg.component);
    let q_subject = kv_query_subject(&cfg.namespace, &cfg.component, cfg.instance_id);
    let mut queries = match plane.subscribe::<KvQuery>(&q_subject).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve KV re-sync queries");
            None
        }
    };
    let mut state = LocalState::default();
    let mut tick = tokio::time::interval(cfg.load_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.recv() => {
                let Some(ev) = ev else { return };
                state.apply(&ev);
                let msg = RouterEvent { worker_id: cfg.instance_id, event: ev };
                if let Err(e) = plane.publish(&ev_subject, &msg).await {
                    tracing::warn!(error = %e, "cannot publish KV event");
                }
            }
            q = async { match queries.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                let Some(msg) = q else { queries = None; continue };
                let Some(reply) = msg.reply else { continue };
                let parts = state.answer(&msg.body);
                tracing::debug!(from = ?msg.body.from_event_id, messages = parts.len(), blocks = state.len(), "answering KV re-sync query");
                for p in parts {
                    if let Err(e) = reply.send(&p).await {
                        tracing::warn!(error = %e, "cannot answer KV re-sync query");
                        break;
                    }
                }
            }
            _ = tick.tick() => {
                let mut l = load();
                l.worker_id = cfg.instance_id;
                if let Err(e) = plane.publish(&load_subject, &l).await {
                    tracing::debug!(error = %e, "cannot publish load");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocols::kv_events::{KvCacheRemoveData, KvCacheStoreData, KvCacheStoredBlock};

    fn stored(id: u64, parent: Option<u64>, hashes: &[u64]) -> KvCacheEvent {
        KvCacheEvent {
            event_id: id,
            data: KvCacheEventData::Stored(KvCacheStoreData {
                parent_hash: parent,
                blocks: hashes
                    .iter()
                    .map(|&h| KvCacheStoredBlock {
                        block_hash: h,
                        tokens_hash: h + 1000,
                        mm_extra_info: None,
                    })
                    .collect(),
                medium: None,
            }),
            dp_rank: 0,
        }
    }

    #[test]
    fn lower_tiers_are_mirrored_and_dumped_as_sets() {
        let mut s = LocalState::default();
        s.apply(&stored(0, None, &[1, 2]));
        let mut buf = dynamo_protocols::kv_events::EventBuffer::default();
        buf.removed(2);
        buf.stored_in(Medium::Host, &[(2, 0), (7, 0)]);
        buf.removed_in(Medium::Host, &[7]);
        buf.stored_in(Medium::Disk, &[(9, 0)]);
        for (i, data) in buf.drain().into_iter().enumerate() {
            s.apply(&KvCacheEvent {
                event_id: 1 + i as u64,
                data,
                dp_rank: 0,
            });
        }
        let d = s.dump();
        let pick = |m: Option<Medium>| -> Vec<u64> {
            d.iter()
                .filter(|b| b.medium == m)
                .map(|b| b.block_hash)
                .collect()
        };
        assert_eq!(pick(None), vec![1], "2 left the pool");
        assert_eq!(
            pick(Some(Medium::Host)),
            vec![2],
            "and stayed on the host; 7 left it"
        );
        assert_eq!(pick(Some(Medium::Disk)), vec![9]);
        assert!(d
            .iter()
            .filter(|b| b.medium.is_some())
            .all(|b| b.parent_hash.is_none()));
    }

    #[test]
    fn dump_lists_parents_first_and_skips_orphans() {
        let mut s = LocalState::default();
        s.apply(&stored(0, None, &[1, 2, 3]));
        s.apply(&stored(1, Some(2), &[4]));
        s.apply(&stored(2, None, &[10, 11]));
        s.apply(&KvCacheEvent {
            event_id: 3,
            data: KvCacheEventData::Removed(KvCacheRemoveData {
                block_hashes: vec![10],
                medium: None,
            }),
            dp_rank: 0,
        });
        let d = s.dump();
        let order: Vec<u64> = d.iter().map(|b| b.block_hash).collect();
        assert_eq!(d.len(), 4, "11 is under an evicted parent: {order:?}");
        let pos = |h| order.iter().position(|&x| x == h).unwrap();
        assert!(pos(1) < pos(2) && pos(2) < pos(3) && pos(2) < pos(4));
        assert_eq!(d[pos(4)].parent_hash, Some(2));
        assert_eq!(d[pos(1)].tokens_hash, 1001);
    }

    #[test]
    fn answers_from_the_window_or_with_the_whole_cache() {
        let mut s = LocalState::default();
        let a = s.answer(&KvQuery {
            from_event_id: None,
        });
        assert_eq!(a.len(), 1);
        assert!(a[0].full && a[0].done && a[0].blocks.is_empty() && a[0].last_event_id.is_none());
        for i in 0..10 {
            s.apply(&stored(i, if i == 0 { None } else { Some(i - 1) }, &[i]));
        }
        let a = s.answer(&KvQuery {
            from_event_id: Some(7),
        });
        assert_eq!(a.len(), 1);
        assert!(!a[0].full);
        let ids: Vec<u64> = a[0].events.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, vec![7, 8, 9]);
        assert_eq!(a[0].last_event_id, Some(9));
        let a = s.answer(&KvQuery {
            from_event_id: Some(10),
        });
        assert!(a[0].events.is_empty() && !a[0].full && a[0].done);
        // Older than the window: the whole cache, in chunks.
        for i in 10..(EVENT_WINDOW as u64 + 20) {
            s.apply(&stored(i, Some(i - 1), &[i]));
        }
        let a = s.answer(&KvQuery {
            from_event_id: Some(3),
        });
        assert!(a[0].full);
        assert!(a.iter().skip(1).all(|p| !p.full));
        assert!(a.iter().rev().skip(1).all(|p| !p.done) && a.last().unwrap().done);
        let n: usize = a.iter().map(|p| p.blocks.len()).sum();
        assert_eq!(n, s.len());
        assert!(a.len() >= 2);
    }
}
