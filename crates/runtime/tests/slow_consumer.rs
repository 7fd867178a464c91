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

    // Nobody reads while 500 messages arrive: most cannot be kept.
    let events = fast.events();
    for i in 0..500u64 {
        events.publish("test.slow", &i).await.expect("publish");
    }
    events.flush(Duration::from_secs(5)).await.expect("flush");
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow_consumer_drops(&slow.metrics().render()) == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no slow-consumer drop counted:\n{}",
            slow.metrics().render()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What was kept is delivered in order, and the subscription still works afterwards.
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a kept message")
        .expect("subscription open");
    assert_eq!(first.body, 0);
    let mut last = first.body;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        assert!(m.body > last, "in order");
        last = m.body;
    }
    assert!(last < 499, "some messages were dropped, not all delivered");
    events
        .publish("test.slow", &1000u64)
        .await
        .expect("publish");
    events.flush(Duration::from_secs(5)).await.expect("flush");
    let after = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("delivered after the drops")
        .expect("open");
    assert_eq!(after.body, 1000);
}
