//! A hostile or careless HTTP client against the frontend: made-up model names cannot mint
//! metric series, a typo'd field is a 400 naming it, a huge token-id prompt costs about its own
//! size while parsed, and `/health` answers 503 (with the spec's body) when nothing serves.

use std::time::Duration;

use dynamo_e2e::{Cluster, MODEL};
use serde_json::json;

/// Peak resident memory of a process, in bytes.
fn vm_hwm(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn series(metrics: &str, name: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_cost_bounded_memory_and_series() {
    let mut c = Cluster::start(&[("DYN_HTTP_BODY_LIMIT_MB", "64")]);
    // Nothing serves yet: /health says so with a status a load balancer acts on.
    let r = c
        .http
        .get(format!("{}/health", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy", "{body}");

    c.add_mocker(&["--speedup-ratio", "100"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let r = c
        .http
        .get(format!("{}/health", c.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A flood of made-up model names: one shared label, not a series per name.
    for i in 0..200 {
        let body = json!({"model": format!("made-up-{i}"), "prompt": "x", "max_tokens": 1});
        assert_eq!(c.post("/v1/completions", &body).await.0, 404);
        let body = json!({"model": format!("typo-{i}"), "prompt": "x", "max_tokens": 0});
        assert_eq!(c.post("/v1/completions", &body).await.0, 400);
    }
    let ok = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2});
    assert_eq!(c.post("/v1/completions", &ok).await.0, 200);
    let m = c.frontend_metrics().await;
    let reqs = series(&m, "dynamo_frontend_requests_total");
    assert!(
        reqs.len() <= 4,
        "series per made-up model name: {}",
        reqs.join("\n")
    );
    assert!(
        reqs.iter().any(|l| l.contains("model=\"unknown\"")),
        "{reqs:?}"
    );
    assert!(!m.contains("made-up-"), "a made-up name reached /metrics");

    // A typo is a 400 naming the field, not a request that runs to the full context.
    let (st, _, v) = c
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_token": 5}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_token"),
        "{v}"
    );
    let (st, _, v) = c
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("prompt"),
        "{v}"
    );

    // ~40 MB of token ids: parsed straight into u32s (a JSON tree would cost ~7x more).
    let pid = c.frontend.as_ref().unwrap().pid();
    let before = vm_hwm(pid);
    let ids = "12345,".repeat(7_000_000);
    let body = format!(r#"{{"model":"{MODEL}","prompt":[{}1]}}"#, ids);
    let n = body.len() as u64;
    let (st, v) = c.post_raw("/v1/completions", body.into_bytes()).await;
    assert_eq!(st, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("context length"),
        "{v}"
    );
    let grew = vm_hwm(pid).saturating_sub(before);
    // The body itself (n) plus 4 bytes per id (28 MB) and slack; a Value per id is ~220 MB.
    assert!(
        grew < n + 7_000_000 * 4 + (64 << 20),
        "parsing a {n}-byte prompt grew the frontend's peak by {grew} bytes"
    );
}
