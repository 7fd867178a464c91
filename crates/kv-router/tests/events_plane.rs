//! The router and the workers' publisher over a real nats-server, in process: two
//! publishers (standing for workers) store the same prefix; a router started afterwards
//! learns it by re-sync, follows live events without asking again, and drops a worker's
//! blocks when discovery no longer lists it. Discovery itself is a hand-fed watch channel
//! here (the lease expiry of a killed process is the e2e suite's `faults` tests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_kv_router::publisher::{run_publisher, PublisherConfig};
use dynamo_kv_router::{hash_blocks, KvRouter, KvRouterConfig, RouterMetrics};
use dynamo_protocols::hashing::sequence_hashes;
use dynamo_protocols::kv_events::{stored_blocks, KvCacheStoreData};
use dynamo_protocols::{KvCacheEvent, KvCacheEventData, LoadReport};
use dynamo_runtime::{
    CancellationToken, DistributedRuntime, HealthState, InstanceMap, InstanceRecord,
    MetricsRegistry, RuntimeConfig,
};
use dynamo_test_support::NatsServer;
use tokio::sync::{mpsc, watch};

const BLOCK: usize = 16;

async fn connect(nats: &NatsServer) -> DistributedRuntime {
    DistributedRuntime::connect(
        RuntimeConfig {
            nats_url: nats.url(),
            ..RuntimeConfig::default()
        },
        HealthState::new(Instant::now(), true, vec![]),
    )
    .await
    .expect("connect to the test's nats-server")
}

fn record(id: u64) -> InstanceRecord {
    InstanceRecord {
        namespace: "dynamo".into(),
        component: "backend".into(),
        endpoint: "generate".into(),
        instance_id: id,
        subject: format!("worker-{id:x}"),
        card: serde_json::json!({"kv_cache_block_size": BLOCK}),
        system_port: None,
    }
}

fn instances(ids: &[u64]) -> InstanceMap {
    Arc::new(ids.iter().map(|&id| (id, record(id))).collect())
}

/// A worker's side: its events go in through `tx`, the publisher puts them on NATS.
struct FakeWorker {
    tx: mpsc::UnboundedSender<KvCacheEvent>,
    next_event: u64,
}

impl FakeWorker {
    fn start(drt: &DistributedRuntime, id: u64, stop: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let cfg = PublisherConfig {
            namespace: "dynamo".into(),
            component: "backend".into(),
            instance_id: id,
            load_interval: Duration::from_millis(200),
        };
        tokio::spawn(run_publisher(
            drt.events(),
            cfg,
            rx,
            LoadReport::default,
            stop,
        ));
        FakeWorker { tx, next_event: 0 }
    }

    /// Store the blocks of `tokens` (a fresh sequence from the root).
    fn store(&mut self, tokens: &[u32]) {
        let local = hash_blocks(tokens, BLOCK);
        let seq = sequence_hashes(&local);
        let ev = KvCacheEvent {
            event_id: self.next_event,
            data: KvCacheEventData::Stored(KvCacheStoreData {
                parent_hash: None,
                blocks: stored_blocks(&local, &seq),
                medium: None,
            }),
            dp_rank: 0,
        };
        self.next_event += 1;
        self.tx.send(ev).unwrap();
    }
}

fn prompt(group: u32, blocks: u32) -> Vec<u32> {
    (0..blocks * BLOCK as u32)
        .map(|i| 1000 + (group * 977 + i) % 30_000)
        .collect()
}

fn overlaps(r: &KvRouter, tokens: &[u32]) -> HashMap<u64, u32> {
    r.find_matches(&hash_blocks(tokens, BLOCK))
        .scores
        .into_iter()
        .map(|((w, _), n)| (w, n))
        .collect()
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_router_resyncs_follows_live_events_and_drops_departed_workers() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let workers_rt = connect(&nats).await;
    let stop = CancellationToken::new();
    let (a, b) = (0xa1u64, 0xb2u64);
    let mut wa = FakeWorker::start(&workers_rt, a, stop.clone());
    let mut wb = FakeWorker::start(&workers_rt, b, stop.clone());
    let p = prompt(7, 8);
    wa.store(&p);
    wb.store(&p);
    // Both publishers have taken their event before the router exists (they answer
    // re-sync queries from it), so only a re-sync can tell the router about them.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let router_rt = connect(&nats).await;
    let (disc_tx, disc_rx) = watch::channel(instances(&[a, b]));
    let reg = MetricsRegistry::new(Instant::now());
    let r = KvRouter::start(
        router_rt.events(),
        "dynamo",
        "backend",
        disc_rx,
        KvRouterConfig::default(),
        RouterMetrics::new(&reg, "test"),
    )
    .await;
    wait_for("the re-sync of both workers", || {
        let o = overlaps(&r, &p);
        o.get(&a) == Some(&8) && o.get(&b) == Some(&8)
    })
    .await;

    // Live events keep it current.
    let q = prompt(8, 3);
    wa.store(&q);
    wait_for("the new blocks", || overlaps(&r, &q).get(&a) == Some(&3)).await;
    assert_eq!(r.index_size().await.unwrap(), 11, "8 shared + 3 new blocks");

    // Discovery drops worker a: its blocks leave the index, b's stay.
    disc_tx.send(instances(&[b])).unwrap();
    wait_for("worker a to leave the index", || {
        let o = overlaps(&r, &p);
        o.len() == 1 && o.get(&b) == Some(&8)
    })
    .await;
    assert!(overlaps(&r, &q).is_empty());
    assert_eq!(r.index_size().await.unwrap(), 8);
    stop.cancel();
}
