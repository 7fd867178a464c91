//! Faults end to end: a killed worker leaves discovery and traffic goes to the survivor; the
//! last worker gone gives 503; a cancelled stream frees the worker's request; SIGTERM
//! deregisters at once and drains in-flight work; a NATS restart is survived.

use std::time::{Duration, Instant};

use dynamo_e2e::{read_sse, requests, Cluster, MODEL};
use futures::StreamExt;
use serde_json::json;

fn req(max: u32, stream: bool) -> serde_json::Value {
    requests::chat("hi", max, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_leaves_and_survivor_serves() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(2, Duration::from_secs(20)).await.unwrap();

    let killed_at = Instant::now();
    c.workers[0].child.kill();
    c.wait_instances(1, Duration::from_secs(10)).await.unwrap();
    let gone_after = killed_at.elapsed();
    assert!(gone_after < Duration::from_secs(10), "took {gone_after:?}");
    for _ in 0..10 {
        let (st, _, v) = c.post("/v1/chat/completions", &req(3, false)).await;
        assert_eq!(st, 200, "{v}");
    }
    assert_eq!(c.models().await, vec![MODEL.to_string()]);

    c.workers[1].child.kill();
    c.wait_instances(0, Duration::from_secs(10)).await.unwrap();
    assert!(c.models().await.is_empty());
    let (st, _, v) = c.post("/v1/chat/completions", &req(3, false)).await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["error"]["code"], 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_stream_frees_the_worker() {
    let mut c = Cluster::start(&[]);
    // Real-time decode (~8 ms per token): 2000 tokens would take ~16 s.
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();

    let r = c.send("/v1/chat/completions", &req(2000, true), &[]).await;
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let inflight = c
        .worker_metric(0, "dynamo_component_inflight_requests")
        .await;
    assert_eq!(inflight, Some(1.0));
    drop(body); // the client goes away mid-stream

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if c.worker_metric(0, "dynamo_component_inflight_requests")
            .await
            == Some(0.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker still busy after the client left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = c.frontend_metrics().await;
    assert_eq!(
        dynamo_e2e::metric_value(&m, "dynamo_frontend_disconnected_clients"),
        Some(1.0)
    );
    assert_eq!(
        dynamo_e2e::metric_value(&m, "dynamo_frontend_inflight_requests"),
        Some(0.0)
    );
    assert!(m.contains("error_type=\"cancelled\""), "{m}");
    let served = c
        .worker_metric(0, "dynamo_component_requests_total")
        .await
        .unwrap();
    assert_eq!(served, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_at_once_and_drains() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();

    // ~150 tokens at ~8 ms each: about 1.2 s of work in flight when SIGTERM arrives.
    let http = c.http.clone();
    let url = format!("{}/v1/completions", c.url());
    let inflight = tokio::spawn(async move {
        let r = http
            .post(url)
            .json(&json!({"model": MODEL, "prompt": "Go", "max_tokens": 150, "stream": true}))
            .send()
            .await
            .unwrap();
        read_sse(r).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    c.workers[0].child.signal(libc::SIGTERM);
    // Deregistered well before the 6 s lease would expire.
    c.wait_instances(0, Duration::from_secs(3)).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    let (st, _, _) = c.post("/v1/chat/completions", &req(2, false)).await;
    assert_eq!(st, 503, "no new work goes to a draining worker");

    let (events, done) = inflight.await.unwrap();
    assert!(done, "the in-flight stream completed during the drain");
    let n: usize = events
        .iter()
        .filter(|e| {
            e["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(n > 100, "got {n} text chunks");
    let status = c.workers[0]
        .child
        .wait_timeout(Duration::from_secs(10))
        .expect("worker exits after draining");
    assert!(status.success(), "clean exit: {status:?}");
}

/// With nats-server already gone (a launch script stopping everything at once), SIGTERM still
/// ends the worker and the frontend instead of leaving them waiting for a reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_even_with_nats_gone() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    c.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.workers[0].child.signal(libc::SIGTERM);
    let fe = c.frontend.as_mut().expect("frontend running");
    fe.signal(libc::SIGTERM);
    assert!(
        fe.wait_timeout(Duration::from_secs(30)).is_some(),
        "frontend still running 30 s after SIGTERM"
    );
    assert!(
        c.workers[0]
            .child
            .wait_timeout(Duration::from_secs(30))
            .is_some(),
        "worker still running 30 s after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_is_survived() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let (st, _, _) = c.post("/v1/chat/completions", &req(2, false)).await;
    assert_eq!(st, 200);

    c.nats.restart();
    // Both processes reconnect, re-register and serve again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _, _) = c.post("/v1/chat/completions", &req(2, false)).await;
        if st == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving 30 s after the NATS restart\n{}",
            c.frontend_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c.frontend.as_mut().unwrap().is_running());
    assert!(c.workers[0].child.is_running());
    // And keeps serving.
    for _ in 0..5 {
        let (st, _, v) = c.post("/v1/chat/completions", &req(2, false)).await;
        assert_eq!(st, 200, "{v}");
    }
}
