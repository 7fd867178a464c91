//! A dead engine is visible: when the worker's scheduler panics (test-only fault injection,
//! `--features dynamo-worker/fault-injection`, which tests/run.sh builds), the request it held
//! fails with an error (never a `length` finish; with no other worker to migrate to, a 503
//! naming the truncation), the worker leaves discovery at once and exits non-zero saying why,
//! and the frontend stops listing it.

use std::time::{Duration, Instant};

use dynamo_e2e::{requests, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_engine_fails_its_request_leaves_discovery_and_exits() {
    let mut c = Cluster::start(&[]);
    c.add_worker(&["--fault-panic-after-steps", "12"]);
    c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
    let mut body = requests::completion("Tell me a story.", 64);
    body["ignore_eos"] = serde_json::json!(true);
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 503, "a truncated generation is an error: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("without a finish reason")),
        "{v}"
    );
    // Out of discovery at once: the worker deletes its record (it says so), and the frontend
    // stops listing it within 2 s, sooner than the 6 s lease could expire on its own.
    let t = Instant::now();
    c.wait_instances(0, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.workers[0].child.log_text()));
    assert!(t.elapsed() < Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !c.workers[0]
        .child
        .log_text()
        .contains("deregistered from discovery")
    {
        assert!(
            Instant::now() < deadline,
            "the worker did not delete its discovery record:\n{}",
            c.workers[0].child.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The process exits non-zero and says why.
    let status = c.workers[0]
        .child
        .wait_timeout(Duration::from_secs(30))
        .expect("the worker exits");
    assert!(!status.success(), "{status:?}");
    let log = c.workers[0].child.log_text();
    assert!(log.contains("injected fault"), "{log}");
    assert!(log.contains("the engine died"), "{log}");
    // The frontend's /health says nothing serves.
    let r = c.get("/health").await;
    assert_eq!(r.status(), 503);
}
