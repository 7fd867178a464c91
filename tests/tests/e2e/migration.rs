//! Request migration with real workers killed with SIGKILL mid-generation: a greedy request
//! continues on a survivor and the client gets exactly the text an undisturbed run gives,
//! streamed or unary, with usage counting the prompt and every token once and
//! `dynamo_frontend_model_migration_total` counting the move; with no survivor left, a clean
//! error ends the stream.

use std::time::Duration;

use dynamo_e2e::requests::{self, pinned};
use dynamo_e2e::Cluster;
use futures::StreamExt;
use serde_json::json;

const MAX: u32 = 128;

/// Read an SSE response; `kill` runs once the first `after` data events have arrived. Returns
/// the data events and whether `[DONE]` came.
async fn read_killing(
    r: reqwest::Response,
    after: usize,
    mut kill: impl FnMut(),
) -> (Vec<serde_json::Value>, bool, String) {
    let mut body = r.bytes_stream();
    let mut buf = String::new();
    let mut killed = false;
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("body chunk")));
        if !killed && buf.matches("data: ").count() >= after {
            kill();
            killed = true;
        }
    }
    assert!(killed, "the generation ended before the kill: {buf}");
    let mut events = vec![];
    let mut done = false;
    for line in buf.lines() {
        match line.strip_prefix("data: ") {
            Some("[DONE]") => done = true,
            Some(d) if d.starts_with('{') && !buf.contains("event: error") => {
                events.push(serde_json::from_str(d).expect("chunk is JSON"))
            }
            _ => {}
        }
    }
    (events, done, buf)
}

/// Wait until worker `w` holds a request (its runtime's inflight gauge), 10 s at most.
async fn busy(c: &Cluster, w: usize) {
    for _ in 0..200 {
        if c.worker_metric(w, "dynamo_component_inflight_requests")
            .await
            == Some(1.0)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("worker {w} never took the request");
}

fn body(stream: bool) -> serde_json::Value {
    let mut b = requests::greedy_completion("Write a short story about a lighthouse keeper.", MAX);
    b["ignore_eos"] = json!(true);
    b["stream"] = json!(stream);
    if stream {
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

/// The text and usage of an SSE completion stream, and whether it ended with `[DONE]`.
fn stream_text(events: &[serde_json::Value]) -> (String, Option<serde_json::Value>) {
    let text = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    let usage = events.iter().rev().find_map(|e| {
        let u = &e["usage"];
        u.is_object().then(|| u.clone())
    });
    (text, usage)
}

fn migrations(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("dynamo_frontend_model_migration_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_mid_stream_is_replaced_without_a_seam() {
    let mut c = Cluster::start(&[]);
    let a = c.add_worker(&["--threads", "1"]);
    let b = c.add_worker(&["--threads", "1"]);
    c.wait_instances(2, Duration::from_secs(60)).await.unwrap();
    let (a_id, b_id) = (c.instance_id(a), c.instance_id(b));

    // The undisturbed run, on b.
    let (st, _, want) = c.post("/v1/completions", &pinned(body(false), b_id)).await;
    assert_eq!(st, 200, "{want}");
    let want_text = want["choices"][0]["text"].as_str().unwrap().to_string();
    let prompt_tokens = want["usage"]["prompt_tokens"].as_u64().unwrap();

    // Streamed on a; a is killed after the first chunks arrive.
    let r = c
        .send("/v1/completions", &pinned(body(true), a_id), &[])
        .await;
    assert_eq!(r.status(), 200);
    let worker_a = &c.workers[a].child;
    let (events, done, _) = read_killing(r, 4, || worker_a.signal(libc::SIGKILL)).await;
    assert!(done, "the stream ended with [DONE]: {events:?}");
    let (text, usage) = stream_text(&events);
    assert_eq!(text, want_text, "streamed text after migration");
    let usage = usage.expect("usage chunk");
    assert_eq!(usage["prompt_tokens"], prompt_tokens, "{usage}");
    assert_eq!(usage["completion_tokens"], MAX, "{usage}");
    let finish = events
        .iter()
        .rev()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("length"));
    assert_eq!(migrations(&c.frontend_metrics().await), 1.0);

    // Unary on b, killed mid-generation; a third worker takes over.
    let d = c.add_worker(&["--threads", "1"]);
    let d_id = c.instance_id(d);
    let req = pinned(body(false), b_id);
    let fut = {
        let http = c.http.clone();
        let url = format!("{}/v1/completions", c.url());
        tokio::spawn(async move {
            let r = http.post(url).json(&req).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    busy(&c, b).await;
    c.workers[b].child.signal(libc::SIGKILL);
    let (st, got) = fut.await.unwrap();
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["choices"][0]["text"].as_str().unwrap(), want_text);
    assert_eq!(got["usage"]["prompt_tokens"], prompt_tokens, "{got}");
    assert_eq!(got["usage"]["completion_tokens"], MAX, "{got}");
    assert_eq!(migrations(&c.frontend_metrics().await), 2.0);

    // No survivor: the stream ends with an error event, not [DONE] and not a `length` finish.
    let r = c
        .send("/v1/completions", &pinned(body(true), d_id), &[])
        .await;
    let worker_d = &c.workers[d].child;
    let (_, _, text) = read_killing(r, 4, || worker_d.signal(libc::SIGKILL)).await;
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(!text.contains("\"finish_reason\":\"length\""), "{text}");
}
