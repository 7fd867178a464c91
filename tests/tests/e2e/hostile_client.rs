//! A hostile or careless HTTP client against the frontend: made-up model names cannot mint
//! metric series, a typo'd field is a 400 naming it, a huge token-id prompt costs about its own
//! size while parsed, and `/health` answers 503 (with the spec's body) when nothing serves.

use std::time::Duration;

use dynamo_e2e::{error_message, Cluster, MODEL};
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
    let r = c.get("/health").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy", "{body}");

    c.add_mocker(&["--speedup-ratio", "100"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let r = c.get("/health").await;
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
    // The served model's four success series (made when it became ready), and the unknown
    // model's 404 and 400: no more.
    assert!(
        reqs.len() <= 6,
        "series per made-up model name: {}",
        reqs.join("\n")
    );
    assert!(
        reqs.iter().any(|l| l.contains("model=\"unknown\"")),
        "{reqs:?}"
    );
    for name in ["made-up-", "typo-"] {
        assert!(!m.contains(name), "a {name}… model name reached /metrics");
    }

    // A typo is a 400 naming the field, not a request that runs to the full context.
    let (st, _, v) = c
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_token": 5}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains("max_token"), "{v}");
    let (st, _, v) = c
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains("prompt"), "{v}");

    // ~40 MB of token ids: parsed straight into u32s (a JSON tree would cost ~7x more).
    let pid = c.frontend.as_ref().unwrap().pid();
    let before = vm_hwm(pid);
    let ids = "12345,".repeat(7_000_000);
    let body = format!(r#"{{"model":"{MODEL}","prompt":[{}1]}}"#, ids);
    let n = body.len() as u64;
    let (st, v) = c.post_raw("/v1/completions", body.into_bytes()).await;
    assert_eq!(st, 400, "{v}");
    assert!(error_message(&v).contains("context length"), "{v}");
    let grew = vm_hwm(pid).saturating_sub(before);
    // The body itself (n) plus 4 bytes per id (28 MB) and slack; a Value per id is ~220 MB.
    assert!(
        grew < n + 7_000_000 * 4 + (64 << 20),
        "parsing a {n}-byte prompt grew the frontend's peak by {grew} bytes"
    );
}

/// Read from `s` until the server closes it or `wait` passes; what was read and whether the
/// connection was closed.
async fn read_until_closed(s: &mut tokio::net::TcpStream, wait: Duration) -> (String, bool) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&buf).into(), true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&buf).into(), false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_slow_or_idle_connections() {
    use tokio::io::AsyncWriteExt;
    let mut c = Cluster::start(&[
        ("DYN_HTTP_API_KEY", "key-one,key-two"),
        // Long enough that the idle connections below still hold their slots when the one
        // past the cap arrives, even on a loaded machine.
        ("DYN_HTTP_HEADER_TIMEOUT", "3"),
        ("DYN_HTTP_BODY_TIMEOUT", "1"),
        ("DYN_HTTP_MAX_CONNECTIONS", "8"),
    ]);
    c.add_mocker(&["--speedup-ratio", "100"]);
    // /health needs no key; /v1/models does.
    let models = format!("{}/v1/models", c.url());
    let mut ready = false;
    for _ in 0..200 {
        let r = c
            .http
            .get(&models)
            .bearer_auth("key-two")
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = r.json().await.unwrap();
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "{}", c.frontend_log());
    let r = c.http.get(&models).send().await.unwrap();
    assert_eq!(r.status(), 401, "/v1/models needs a key too");
    let h = c.get("/health").await;
    assert_eq!(h.status(), 200, "/health stays open");
    let url = format!("{}/v1/completions", c.url());
    let body = json!({"model": MODEL, "prompt": "Hi", "max_tokens": 2});
    let send = |auth: Option<&str>| {
        let mut r = c.http.post(&url).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for auth in [
        None,
        Some("Bearer nope"),
        Some("key-one"),
        Some("Bearer key-one2"),
    ] {
        let r = send(auth).await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], 401, "{v}");
    }
    for key in ["key-one", "key-two"] {
        let r = send(Some(&format!("Bearer {key}"))).await.unwrap();
        assert_eq!(r.status(), 200, "{key}");
    }
    let m = c.get("/metrics").await;
    assert_eq!(m.status(), 200, "/metrics stays open");

    let addr = c.url().trim_start_matches("http://").to_string();
    // Slowloris: headers that never finish are cut off after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed, "a connection stuck in its headers was closed");
    // A body that never arrives: 408 after the body timeout.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-one\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
        )
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut trickle, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    // The connection cap: 8 idle connections fill it; a 9th is closed at once; once the idle
    // ones time out, requests are served again.
    let mut idle = vec![];
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ninth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut ninth, Duration::from_millis(1500)).await;
    assert!(closed, "a connection past the cap was closed");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = send(Some("Bearer key-two")).await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "served again once idle connections timed out"
    );
    drop(idle);
}
