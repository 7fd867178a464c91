//! What the router takes in from the events plane: KV events and load reports, admitted only
//! from discovered instances of its component, loads only when plausible for the pool the
//! worker announced, events handed to the index thread within the event budget.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamo_protocols::{LoadReport, RouterEvent};
use dynamo_runtime::{InstanceMap, InstanceRecord, Subscription};
use std::sync::mpsc;
use tokio::sync::watch;

use crate::budget::EventBudget;
use crate::indexer::FastMap;
use crate::task::IndexMsg;

/// The instances of this router's component in discovery: KV events and load reports are
/// taken only from them (anyone on NATS can publish on the subjects; an unknown `worker_id`
/// would otherwise grow the index and attract traffic).
pub(crate) struct Members {
    rx: watch::Receiver<InstanceMap>,
    namespace: String,
    component: String,
}

impl Members {
    pub(crate) fn new(rx: watch::Receiver<InstanceMap>, namespace: &str, component: &str) -> Self {
        Members {
            rx,
            namespace: namespace.to_string(),
            component: component.to_string(),
        }
    }

    fn contains(&self, worker: u64) -> bool {
        self.record(worker, |_| ()).is_some()
    }

    /// `f` of the worker's discovery record, when it is one of this component's instances.
    fn record<T>(&self, worker: u64, f: impl FnOnce(&InstanceRecord) -> T) -> Option<T> {
        self.rx
            .borrow()
            .get(&worker)
            .filter(|r| r.namespace == self.namespace && r.component == self.component)
            .map(f)
    }
}

/// Why a load report of a discovered worker is not believed: it must describe the pool the
/// worker announced in its model card (`total_kv_blocks`) and use no more of it than exists.
/// Anyone on NATS can publish in a worker's name; an absurd figure would steer all traffic
/// away from it. (A plausible lie is only kept out by NATS permissions.)
fn implausible_load(l: &LoadReport, announced_blocks: Option<u64>) -> Option<String> {
    if let Some(total) = announced_blocks.filter(|&t| t > 0) {
        if l.total_blocks != total {
            return Some(format!(
                "reports {} KV blocks, its card announced {total}",
                l.total_blocks
            ));
        }
    }
    (l.active_blocks > l.total_blocks).then(|| {
        format!(
            "reports {} active of {} KV blocks",
            l.active_blocks, l.total_blocks
        )
    })
}

/// Largest load figure taken from a report: far above any real pool, small enough that sums
/// and costs cannot overflow (a report near `u64::MAX` would wrap and attract all traffic).
const MAX_REPORTED: u64 = 1 << 32;

/// Hand each event of a discovered instance to the index thread, within `budget`: when the
/// index falls behind, this waits and the backlog stays in the subscription's bounded buffer.
pub(crate) async fn forward_events(
    mut sub: Subscription<RouterEvent>,
    tx: mpsc::Sender<IndexMsg>,
    members: Members,
    budget: EventBudget,
) {
    let mut last_warned: Option<Instant> = None;
    while let Some(m) = sub.next().await {
        if !members.contains(m.body.worker_id) {
            // A worker not yet in discovery is re-synced in full when it appears.
            tracing::debug!(worker = %format!("{:x}", m.body.worker_id), "KV event from an instance not in discovery; dropped");
            continue;
        }
        let cost = budget.cost(&m.body);
        if budget.available() < cost as usize
            && last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            last_warned = Some(Instant::now());
            tracing::warn!("KV events arrive faster than the index applies them; holding back");
        }
        budget.take(cost).await;
        if tx.send(IndexMsg::Event(m.body)).is_err() {
            return;
        }
    }
}

pub(crate) async fn collect_loads(
    mut sub: Subscription<LoadReport>,
    loads: Arc<Mutex<FastMap<u64, (LoadReport, Instant)>>>,
    members: Members,
) {
    let mut last_warned: Option<Instant> = None;
    while let Some(m) = sub.next().await {
        let mut l = m.body;
        let Some(announced) = members.record(l.worker_id, |r| r.card["total_kv_blocks"].as_u64())
        else {
            tracing::debug!(worker = %format!("{:x}", l.worker_id), "load report from an instance not in discovery; dropped");
            continue;
        };
        if let Some(why) = implausible_load(&l, announced) {
            if last_warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_warned = Some(Instant::now());
                tracing::warn!(worker = %format!("{:x}", l.worker_id), %why, "implausible load report; dropped");
            }
            continue;
        }
        for v in [
            &mut l.active_blocks,
            &mut l.total_blocks,
            &mut l.running,
            &mut l.waiting,
        ] {
            *v = (*v).min(MAX_REPORTED);
        }
        loads
            .lock()
            .unwrap()
            .insert(l.worker_id, (l, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(active: u64, total: u64) -> LoadReport {
        LoadReport {
            active_blocks: active,
            total_blocks: total,
            ..LoadReport::default()
        }
    }

    #[test]
    fn a_load_must_describe_the_announced_pool() {
        assert_eq!(implausible_load(&load(10, 100), Some(100)), None);
        assert_eq!(implausible_load(&load(100, 100), Some(100)), None);
        assert!(implausible_load(&load(10, 1 << 40), Some(100)).is_some());
        assert!(implausible_load(&load(u64::MAX, u64::MAX), Some(100)).is_some());
        assert!(implausible_load(&load(101, 100), Some(100)).is_some());
        // A card without a pool size: only the report's own consistency is checked.
        assert_eq!(implausible_load(&load(5, 100), None), None);
        assert!(implausible_load(&load(500, 100), Some(0)).is_some());
    }
}
