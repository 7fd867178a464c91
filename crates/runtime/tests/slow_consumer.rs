//! A subscription that falls behind, against a real nats-server: the client drops what does
//! not fit (async-nats's slow-consumer behaviour); the runtime says so at warn and counts it in
//! `dynamo_transport_nats_errors_total{kind="slow_consumer"}`, and the subscription keeps
//! delivering what it kept.

use std::time::{Duration, Instant};

use dynamo_runtime::{DistributedRuntime, HealthState, RuntimeConfig};
use dynamo_test_support::NatsServer;

fn slow_consumer_drops(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("dynamo_transport_nats_errors_total{")
                && l.contains("kind=\"slow_consumer\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_falls_behind_is_counted_and_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let connect = |capacity: usize| {
        DistributedRuntime::connect(
            RuntimeConfig {
                nats_url: nats.url(),
                subscription_capacity: capacity,
                ..RuntimeConfig::default()
            },
            HealthState::new(Instant::now(), true, vec![]),
        )
    };
    let slow = connect(16).await.expect("connect");
    let fast = connect(64 * 1024).await.expect("connect");
    let mut sub = slow
        .events()
        .subscribe::<u64>("test.slow")
        .await
        .expect("subscribe");
    slow.events()
        .flush(Duration::from_secs(5))
        .await
        .expect("flush");
    assert_eq!(slow_consumer_drops(&slow.metrics().render()), 0.0);

    // Nobody reads while batches of 500 messages arrive: most cannot be kept. (More than one
    // batch only where the machine is so loaded that the first did not overflow.)
    let events = fast.events();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0u64;
    while slow_consumer_drops(&slow.metrics().render()) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no slow-consumer drop counted:\n{}",
            slow.metrics().render()
        );
        for _ in 0..500 {
            events.publish("test.slow", &sent).await.expect("publish");
            sent += 1;
        }
        events.flush(Duration::from_secs(5)).await.expect("flush");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What was kept is delivered in order, and the subscription still works afterwards.
    let mut got = 0;
    let mut last = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        assert!(last < Some(m.body), "in order: {last:?} then {}", m.body);
        last = Some(m.body);
        got += 1;
    }
    assert!(got > 0 && got < sent, "kept {got} of {sent}");
    let marker = u64::MAX;
    events.publish("test.slow", &marker).await.expect("publish");
    events.flush(Duration::from_secs(5)).await.expect("flush");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("delivered after the drops")
            .expect("open");
        if m.body == marker {
            break;
        }
    }
}
