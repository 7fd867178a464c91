//! Overload and deadlines with real processes: at 10x what a worker can hold, requests past
//! the frontend's inflight limit or the worker's waiting-queue bound are refused fast (the
//! overload status, the OpenAI error body, `Retry-After`, counted as `error_type="overload"`)
//! while admitted ones complete with their latency; a request past `--request-timeout` is
//! answered 504 and stops computing on its worker.

use std::time::{Duration, Instant};

use dynamo_e2e::{error_message, metric_value, requests, Cluster};
use serde_json::json;

/// Poll a worker's metrics until no request runs or waits (10 s at most).
async fn worker_idle(c: &Cluster, w: usize) -> bool {
    for _ in 0..100 {
        let m = c.worker_metrics(w).await;
        if metric_value(&m, "sglang:num_running_reqs") == Some(0.0)
            && metric_value(&m, "sglang:num_queue_reqs") == Some(0.0)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn timed(c: &Cluster, body: &serde_json::Value) -> Outcome {
    let t = Instant::now();
    let (st, h, v) = c.post("/v1/completions", body).await;
    (st, h, v, t.elapsed())
}

type Outcome = (u16, reqwest::header::HeaderMap, serde_json::Value, Duration);

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99).div_ceil(100) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_overload_sheds_fast_and_admitted_requests_keep_their_latency() {
    let mut c = Cluster::start(&[("DYN_HTTP_MAX_INFLIGHT_REQUESTS", "8")]);
    // The worker takes 4 not yet running (a burst of 4 is all waiting for a moment) and runs
    // 2; the frontend lets 8 through: some meet the worker's queue bound, the rest the
    // frontend's limit.
    c.add_worker(&[
        "--enable-metrics",
        "--max-running-requests",
        "2",
        "--max-queued-requests",
        "4",
    ]);
    c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
    let mut body = requests::completion("Tell me about the sea.", 24);
    body["ignore_eos"] = json!(true);
    // Baseline: what the worker holds, at once.
    let base: Vec<_> = futures::future::join_all((0..4).map(|_| timed(&c, &body))).await;
    assert!(base.iter().all(|r| r.0 == 200), "{base:?}");
    let base_p99 = p99(base.iter().map(|r| r.3).collect());

    // 10x: 40 at once.
    let all: Vec<_> = futures::future::join_all((0..40).map(|_| timed(&c, &body))).await;
    let ok: Vec<_> = all.iter().filter(|r| r.0 == 200).collect();
    let shed: Vec<_> = all.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(ok.len() + shed.len(), 40, "only 200 or 503: {all:?}");
    assert!(
        ok.len() >= 4,
        "what the worker holds is served: {}",
        ok.len()
    );
    assert!(shed.len() >= 30, "the excess is shed: {}", shed.len());
    for (_, h, v, _) in &shed {
        assert_eq!(h["retry-after"], "1", "{v}");
        assert_eq!(v["error"]["type"], "Overloaded", "{v}");
        assert_eq!(v["error"]["code"], 503, "{v}");
    }
    // Fast: every refusal returns before the fastest admitted request's completion.
    let slowest_shed = shed.iter().map(|r| r.3).max().unwrap();
    let fastest_ok = ok.iter().map(|r| r.3).min().unwrap();
    assert!(
        slowest_shed < fastest_ok,
        "refusals ({slowest_shed:?}) wait no longer than a request takes ({fastest_ok:?})"
    );
    // Admitted requests keep their latency (generous for a 2-core machine with steal).
    let ok_p99 = p99(ok.iter().map(|r| r.3).collect());
    assert!(
        ok_p99 < base_p99 * 3,
        "admitted p99 {ok_p99:?} vs baseline {base_p99:?}"
    );
    // Counted as overload, every one of them.
    let m = c.frontend_metrics().await;
    let counted: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("dynamo_frontend_requests_total{")
                && l.contains("error_type=\"overload\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, shed.len(), "{m}");
    // Both bounds were met: the worker refused some (its queue), the frontend the others.
    let refused_by = |flag: &str| {
        shed.iter()
            .filter(|r| error_message(&r.2).contains(flag))
            .count()
    };
    let worker_refusals = refused_by("--max-queued-requests");
    let frontend_refusals = refused_by("--max-inflight-requests");
    assert_eq!(worker_refusals + frontend_refusals, shed.len());
    assert!(frontend_refusals > 0 && worker_refusals > 0, "{shed:?}");
    // Nothing stuck: the worker is idle again.
    assert!(worker_idle(&c, 0).await, "{}", c.worker_metrics(0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504_and_cancels_the_worker() {
    let mut c = Cluster::start(&[("DYN_HTTP_REQUEST_TIMEOUT", "2")]);
    c.add_worker(&["--enable-metrics"]);
    c.wait_instances(1, Duration::from_secs(60)).await.unwrap();
    let mut body = requests::completion("Count to a thousand.", 2000);
    body["ignore_eos"] = json!(true);
    let t = Instant::now();
    let (st, _, v) = c.post("/v1/completions", &body).await;
    assert_eq!(st, 504, "{v}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(error_message(&v).contains("--request-timeout"), "{v}");
    // Streamed: an error event ends it.
    body["stream"] = json!(true);
    let r = c.send("/v1/completions", &body, &[]).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("event: error") && text.contains("504"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    // The worker stopped both: two aborted requests, and far fewer tokens generated than
    // the 2 × 2000 the requests asked for (the timeout came after 2 s of each).
    assert!(worker_idle(&c, 0).await, "{}", c.worker_metrics(0).await);
    let wm = c.worker_metrics(0).await;
    assert_eq!(
        metric_value(&wm, "sglang:num_aborted_requests_total"),
        Some(2.0),
        "{wm}"
    );
    let generated = metric_value(&wm, "sglang:generation_tokens_total").unwrap();
    assert!(generated < 2000.0, "{generated} tokens generated");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = metric_value(&c.worker_metrics(0).await, "sglang:generation_tokens_total");
    assert_eq!(later, Some(generated), "generation went on after the abort");
    let m = c.frontend_metrics().await;
    assert!(m.contains("error_type=\"timeout\""), "{m}");
    // Each timed-out request is counted once, as a timeout: not also as a client that left.
    let timeouts: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("dynamo_frontend_requests_total{") && l.contains("error_type=\"timeout\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(timeouts, 2.0, "{m}");
    assert!(!m.contains("error_type=\"cancelled\""), "{m}");
    assert_eq!(
        metric_value(&m, "dynamo_frontend_disconnected_clients"),
        Some(0.0),
        "{m}"
    );
}
