//! A hostile NATS peer against a KV-routed frontend and its worker: garbage and forged
//! messages on the KV event, load and request subjects, and forged discovery records (a NUL in
//! a name, a subject pointing at another instance, a model card naming a local path) leave
//! both serving correctly: nothing is admitted from an instance that is not in discovery, no
//! path from the wire is opened, and the real fleet keeps answering.

use std::time::Duration;

use dynamo_e2e::peer::RawPeer;
use dynamo_e2e::{requests, Cluster, MODEL};
use dynamo_protocols::kv_events::{kv_events_subject, kv_metrics_subject};
use serde_json::json;

const FORGED: u64 = 0xbad;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_garbage_peer_messages_leave_the_fleet_serving() {
    let mut c = Cluster::start(&[("DYN_ROUTER_MODE", "kv")]);
    c.add_mocker(&["--speedup-ratio", "100"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let real = c.instance_id(0);
    let serve = |c: &Cluster| {
        let body = requests::completion("The lighthouse keeper said", 4);
        let http = c.http.clone();
        let url = format!("{}/v1/completions", c.url());
        async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(serve(&c).await, 200);

    let peer = RawPeer::connect(&c.nats.url()).await;
    let events = kv_events_subject("dynamo", "backend");
    let loads = kv_metrics_subject("dynamo", "backend");
    // Garbage on every subject.
    for s in [&events, &loads] {
        peer.publish(s, "\u{0}not json").await;
        peer.publish(s, r#"{"worker_id": "x"}"#).await;
    }
    let garbage = peer
        .request(
            &format!("dynamo_backend.generate-{real:x}"),
            "{]",
            Duration::from_secs(5),
        )
        .await
        .expect("the worker answers garbage with an error");
    assert!(String::from_utf8_lossy(&garbage).contains("cannot decode"));
    // Forged events and loads: from an instance not in discovery, and for the real worker a
    // far-future event id and a load near u64::MAX.
    let stored = |worker: u64, id: u64| {
        json!({"worker_id": worker, "event": {"event_id": id, "dp_rank": 0, "data": {"stored": {
            "parent_hash": null, "blocks": [{"block_hash": 42, "tokens_hash": 42}]}}}})
        .to_string()
    };
    for i in 0..50 {
        peer.publish(&events, stored(FORGED + i, 0)).await;
    }
    peer.publish(&events, stored(real, u64::MAX / 2)).await;
    let load = |worker: u64, v: u64| {
        json!({"worker_id": worker, "dp_rank": 0, "active_blocks": v, "total_blocks": v,
               "running": v, "waiting": v})
        .to_string()
    };
    peer.publish(&loads, load(FORGED, 7)).await;
    peer.publish(&loads, load(real, u64::MAX)).await;
    // Forged discovery records, written straight into the bucket's stream.
    let kv = |key: &str| format!("$KV.dynamo_discovery.{key}");
    let record = |component: &str, id: u64, subject: String, source: &str, name: &str| {
        json!({"namespace": "dynamo", "component": component, "endpoint": "generate",
               "instance_id": id, "subject": subject,
               "card": {"served_model_name": name, "source": source,
                        "kv_cache_block_size": 16, "context_length": 2048}})
        .to_string()
    };
    peer.publish(
        &kv("instances.dynamo.backend.generate.0000000000000bad"),
        record(
            "back\u{0}end",
            FORGED,
            format!("dynamo_backend.generate-{FORGED:x}"),
            "/etc/passwd",
            MODEL,
        ),
    )
    .await;
    peer.publish(
        &kv("instances.dynamo.backend.generate.0000000000000bae"),
        record(
            "backend",
            FORGED + 1,
            format!("dynamo_backend.generate-{real:x}"),
            "/etc/passwd",
            MODEL,
        ),
    )
    .await;
    // Well formed, but its card names a local path outside the model cache.
    peer.publish(
        &kv("instances.dynamo.backend.generate.0000000000000baf"),
        record(
            "backend",
            FORGED + 2,
            format!("dynamo_backend.generate-{:x}", FORGED + 2),
            "/etc/passwd",
            "evil",
        ),
    )
    .await;
    // Well formed, under the real model's name, but serving something else: never routed to.
    peer.publish(
        &kv("instances.dynamo.backend.generate.0000000000000bb0"),
        json!({"namespace": "dynamo", "component": "backend", "endpoint": "generate",
               "instance_id": FORGED + 3,
               "subject": format!("dynamo_backend.generate-{:x}", FORGED + 3),
               "card": {"served_model_name": MODEL, "source": MODEL, "model_id": "not the real one",
                        "kv_cache_block_size": 16, "context_length": 2048}})
        .to_string(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = c.get_json("/health").await.unwrap()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_u64().unwrap())
        .collect::<Vec<_>>();
    // (0xbaf is listed: an instance of model "evil", which never becomes servable.)
    assert!(listed.contains(&real), "{listed:?}");
    assert!(
        !listed.contains(&(FORGED + 3)),
        "an instance with another identity is not among the model's instances: {listed:?}"
    );
    assert!(
        c.frontend_log()
            .contains("serves something else under this model's name"),
        "{}",
        c.frontend_log()
    );

    // Still serving, many times (KV routing included).
    for _ in 0..5 {
        assert_eq!(serve(&c).await, 200);
    }
    // Only the real worker serves MODEL (the malformed records were ignored; the third is an
    // instance of a model whose path was refused, so it never becomes servable).
    assert_eq!(c.models().await, vec![MODEL.to_string()]);
    let (st, _, v) = c
        .post(
            "/v1/completions",
            &json!({"model": "evil", "prompt": "x", "max_tokens": 1}),
        )
        .await;
    assert_ne!(st, 200, "{v}");
    let log = c.frontend_log();
    assert!(
        log.contains("outside the model cache"),
        "the path was refused: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // No forged worker in the router's per-worker series.
    let m = c.frontend_metrics().await;
    for line in m.lines().filter(|l| l.contains("worker_id=")) {
        assert!(
            !line.contains("worker_id=\"bad\"") && !line.contains("worker_id=\"2989\""),
            "{line}"
        );
    }
    let log = c.workers[0].child.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// At most one execution per request id: a second request carrying the id of one already
/// running on the worker is refused (it would otherwise take over the first one's cancel
/// token), and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_id_is_refused_not_run_twice() {
    let mut c = Cluster::start(&[]);
    // Real-time decode: the first request runs for seconds.
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let real = c.instance_id(0);
    let subject = format!("dynamo_backend.generate-{real:x}");
    let req =
        json!({"model": MODEL, "token_ids": [1, 2, 3, 4], "stop": {"max_tokens": 500}}).to_string();
    let peer = RawPeer::connect(&c.nats_url).await;
    let id = [("x-dynamo-request-id", "dup-1")];
    peer.publish_with_headers(&subject, "_INBOX.dup-first", &id, req.clone())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = peer
        .request_with_headers(&subject, &id, req, Duration::from_secs(5))
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&second);
    assert!(text.contains("already running"), "{text}");
    let m = c.worker_metrics(0).await;
    assert!(
        m.lines()
            .any(|l| l.contains("error_type=\"duplicate_request\"") && l.ends_with(" 1")),
        "{m}"
    );
    // The first one is still the one the id cancels.
    peer.publish(&format!("{subject}.cancel"), "dup-1").await;
    let mut idle = false;
    for _ in 0..50 {
        if c.worker_metric(0, "dynamo_component_inflight_requests")
            .await
            == Some(0.0)
        {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle, "the first request was cancelled by its id");
}
