//! Faults end to end: a killed worker leaves discovery and traffic goes to the survivor; the
//! last worker gone gives 503; a cancelled stream frees the worker's request; SIGTERM
//! deregisters at once and drains in-flight work; a NATS restart is survived; a worker that
//! does not acknowledge in time loses the request to the next one and never runs it.

use std::time::{Duration, Instant};

use dynamo_e2e::{metric_value, metric_with, read_sse, requests, Cluster, MODEL};
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
            .json(
                &json!({"model": MODEL, "prompt": "Go", "max_tokens": 150, "stream": true,
                          "ignore_eos": true, "stream_options": {"include_usage": true}}),
            )
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
    // All of it: every token generated and counted, and the worker's own finish reason (a
    // truncated stream is an error event, never a `length` finish).
    let finish = events
        .iter()
        .rev()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("length"), "{events:?}");
    let usage = events
        .iter()
        .rev()
        .find_map(|e| e["usage"].is_object().then(|| e["usage"].clone()))
        .expect("usage chunk");
    assert_eq!(usage["completion_tokens"], 150, "{usage}");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert!(text.split_whitespace().count() > 20, "{text:?}");
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

/// Wait (20 s at most) until the frontend lists exactly the instances `ids`.
async fn listed_again(c: &Cluster, ids: &[u64]) {
    let mut want = ids.to_vec();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut listed = c
            .get_json("/health")
            .await
            .ok()
            .and_then(|v| {
                v["instances"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|i| i["instance_id"].as_u64())
                        .collect::<Vec<_>>()
                })
            })
            .unwrap_or_default();
        listed.sort();
        if listed == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instances {want:x?} not listed again after the restart: {listed:x?}\n{}",
            c.frontend_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// NATS restarts (its in-memory discovery bucket is wiped); after the 6 s lease has passed the
/// same instance is listed again, `/health` is ready, and requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_is_survived() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let id = c.instance_id(0);
    let (st, _, _) = c.post("/v1/chat/completions", &req(2, false)).await;
    assert_eq!(st, 200);

    c.nats.restart();
    // Past the lease: a record that was not re-registered would have expired by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    listed_again(&c, &[id]).await;
    assert!(c.frontend.as_mut().unwrap().is_running());
    assert!(c.workers[0].child.is_running());
    for _ in 0..5 {
        let (st, _, v) = c.post("/v1/chat/completions", &req(2, false)).await;
        assert_eq!(st, 200, "{v}");
    }
}

/// A token prompt: an 8-block prefix of `group`, then a 5-token tail unique to `salt`.
fn kv_prompt(group: u32, salt: u32) -> Vec<u32> {
    let mut t: Vec<u32> = (0..8 * 16)
        .map(|i| 1000 + (group * 977 + i * 13) % 30_000)
        .collect();
    t.extend((0..5).map(|i| 40_000 + salt * 8 + i));
    t
}

/// The KV router across a NATS restart, with two workers so that routing shows what it
/// knows: a prefix cached on one worker before the restart is still predicted there after it
/// (kept or re-synced), and new KV events are applied again (their subscription is back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_is_survived_with_kv_routing() {
    let mut c = Cluster::start(&[("DYN_ROUTER_MODE", "kv")]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(2, Duration::from_secs(20)).await.unwrap();
    let ids = [c.instance_id(0), c.instance_id(1)];
    let stored_ok = async |c: &Cluster| {
        metric_with(
            &c.frontend_metrics().await,
            "dynamo_component_kv_cache_events_applied",
            "event_type=\"stored\",status=\"ok\"",
        )
        .unwrap_or(0.0)
    };
    let wait_stored = async |c: &Cluster, n: f64| {
        let deadline = Instant::now() + Duration::from_secs(15);
        while stored_ok(c).await < n {
            assert!(
                Instant::now() < deadline,
                "stored events not applied (want {n}):\n{}",
                c.frontend_metrics().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let complete = async |c: &Cluster, tokens: Vec<u32>| {
        let (st, _, v) = c
            .post("/v1/completions", &requests::completion(tokens, 2))
            .await;
        assert_eq!(st, 200, "{v}");
        v
    };
    let hit_sum = async |c: &Cluster| {
        metric_value(&c.frontend_metrics().await, "dynamo_router_kv_hit_rate_sum").unwrap_or(0.0)
    };
    complete(&c, kv_prompt(1, 0)).await;
    wait_stored(&c, 1.0).await;
    let owner = c.served().await.iter().position(|&n| n == 1).unwrap();

    c.nats.restart();
    tokio::time::sleep(Duration::from_secs(8)).await;
    listed_again(&c, &ids).await;

    // The prefix from before the restart: predicted on its owner, 8 of 9 blocks each time.
    let (n0, h0) = (c.served().await, hit_sum(&c).await);
    for salt in 1..=4 {
        let v = complete(&c, kv_prompt(1, salt)).await;
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"], 128,
            "repeat {salt}: {v}"
        );
    }
    let (n1, h1) = (c.served().await, hit_sum(&c).await);
    assert_eq!(n1[owner] - n0[owner], 4, "{n0:?} → {n1:?}");
    assert!(
        (h1 - h0 - 4.0 * 8.0 / 9.0).abs() < 1e-6,
        "predicted hit rates after the restart: {}",
        h1 - h0
    );
    // Events are applied again: a new prefix is stored, then followed by its repeats.
    let before = stored_ok(&c).await;
    complete(&c, kv_prompt(2, 0)).await;
    wait_stored(&c, before + 1.0).await;
    let (n2, h2) = (c.served().await, hit_sum(&c).await);
    let second = (0..2).find(|&i| n2[i] > n1[i]).unwrap();
    for salt in 1..=3 {
        let v = complete(&c, kv_prompt(2, salt)).await;
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"], 128,
            "repeat {salt} of the new prefix: {v}"
        );
    }
    let n3 = c.served().await;
    assert_eq!(n3[second] - n2[second], 3, "{n2:?} → {n3:?}");
    let h3 = hit_sum(&c).await;
    assert!((h3 - h2 - 3.0 * 8.0 / 9.0).abs() < 1e-6, "{}", h3 - h2);
    assert!(c.frontend.as_mut().unwrap().is_running());
}

/// NATS restarts while a stream is in flight: the stream does not hang. It completes (every
/// token, then `[DONE]`) or ends with an error event, within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_never_hangs() {
    let mut c = Cluster::start(&[]);
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let mut body = req(300, true);
    body["stream_options"] = json!({"include_usage": true});
    let r = c.send("/v1/chat/completions", &body, &[]).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    c.nats.restart();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => buf.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => break,
            }
        }
        buf
    })
    .await
    .expect("the stream ended within 30 s of the restart");
    if rest.contains("[DONE]") {
        assert!(rest.contains("\"completion_tokens\":300"), "{rest}");
    } else {
        assert!(
            rest.contains("event: error"),
            "ended without [DONE] or an error: {rest}"
        );
    }
}

/// A worker that does not acknowledge in time (here: stopped with SIGSTOP, still in discovery)
/// is given up on after the ack timeout (5 s): the caller tells it to cancel the request and
/// sends it to the next worker, so the client gets its whole answer; and when the stopped
/// worker resumes, it finds the request already cancelled and never runs it (a request runs at
/// most once), instead of spending seconds generating tokens nobody reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ack_moves_the_request_and_the_slow_worker_never_runs_it() {
    let mut c = Cluster::start(&[]);
    // Real-time decode (~8 ms per token): 400 tokens take about 3 s.
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.wait_instances(2, Duration::from_secs(20)).await.unwrap();
    let duration_sum = "dynamo_component_request_duration_seconds_sum";
    let busy_before = dynamo_e2e::metric_value(&c.worker_metrics(0).await, duration_sum);

    c.workers[0].child.signal(libc::SIGSTOP);
    // Round-robin: one of two concurrent requests goes to the stopped worker first.
    let t0 = Instant::now();
    let one = || async {
        let (st, _, v) = c
            .post("/v1/completions", &requests::completion("Hi", 400))
            .await;
        (st, v, t0.elapsed())
    };
    let (a, b) = tokio::join!(one(), one());
    c.workers[0].child.signal(libc::SIGCONT);
    for (st, v, _) in [&a, &b] {
        assert_eq!(*st, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 400, "{v}");
    }
    let slowest = a.2.max(b.2);
    assert!(
        slowest >= Duration::from_secs(5),
        "one request waited out the ack timeout of the stopped worker ({slowest:?})"
    );

    // The resumed worker receives the request and its cancellation; it must not run it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = c.worker_metrics(0).await;
        let received = dynamo_e2e::metric_value(&m, "dynamo_component_requests_total");
        let inflight = dynamo_e2e::metric_value(&m, "dynamo_component_inflight_requests");
        if received >= Some(1.0) && inflight == Some(0.0) {
            let busy = dynamo_e2e::metric_value(&m, duration_sum).unwrap_or(0.0)
                - busy_before.unwrap_or(0.0);
            assert!(
                busy < 1.5,
                "the stopped worker spent {busy:.2} s on a request already served elsewhere"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
