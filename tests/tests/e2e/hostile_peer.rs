//! A hostile NATS peer against a KV-routed frontend and its workers: garbage and forged
//! messages on the KV event, load and request subjects, and forged discovery records (a NUL in
//! a name, a subject pointing at another instance, a model card naming a local path) leave
//! the fleet serving correctly: nothing is admitted from an instance that is not in discovery,
//! implausible events and loads of real workers are refused, no path from the wire is opened,
//! and routing still follows the real cache. A duplicate request id is refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dynamo_e2e::peer::RawPeer;
use dynamo_e2e::{metric_with, requests, Cluster, MODEL};
use dynamo_protocols::kv_events::{kv_events_subject, kv_metrics_subject};
use serde_json::json;

const FORGED: u64 = 0xbad;

/// A token prompt: the 8-block shared prefix, then a tail unique to `salt`.
fn prompt(salt: u32) -> Vec<u32> {
    let mut t: Vec<u32> = (0..8 * 16).map(|i| 1000 + (i * 977) % 30_000).collect();
    t.extend((0..5).map(|i| 40_000 + salt * 8 + i));
    t
}

/// Events the frontend's router applied, by status (`ok` or `error`), over every event type.
fn applied(m: &str, status: &str) -> f64 {
    metric_with(
        m,
        "dynamo_component_kv_cache_events_applied",
        &format!("status=\"{status}\""),
    )
    .unwrap_or(0.0)
}

/// The `worker_id` label values of the frontend's per-worker series.
fn worker_ids(m: &str) -> BTreeSet<String> {
    m.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split("worker_id=\"").nth(1)?.split('"').next())
        .map(str::to_string)
        .collect()
}

/// The KV-routed frontend of two workers is fed garbage, forged events and loads (from
/// instances not in discovery, and implausible ones for the real workers) and forged
/// discovery records. Nothing forged is admitted: the malformed records are refused with a
/// warning and never listed, the forged events move no `ok` count and exactly the implausible
/// ones are counted as errors, and a poisoned load or event would send the shared prefix to
/// the other worker, yet every repeat still goes to the worker that caches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_garbage_peer_messages_leave_the_fleet_serving() {
    let mut c = Cluster::start(&[("DYN_ROUTER_MODE", "kv")]);
    c.add_mocker(&["--speedup-ratio", "100"]);
    c.add_mocker(&["--speedup-ratio", "100"]);
    c.wait_instances(2, Duration::from_secs(20)).await.unwrap();
    let ids = [c.instance_id(0), c.instance_id(1)];
    let complete = |c: &Cluster, salt: u32| {
        let body = requests::completion(prompt(salt), 2);
        let http = c.http.clone();
        let url = format!("{}/v1/completions", c.url());
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let st = r.status().as_u16();
            (st, r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    // The shared prefix lands on one worker (the owner); its stored event is applied.
    let (st, v) = complete(&c, 0).await;
    assert_eq!(st, 200, "{v}");
    let owner = c.served().await.iter().position(|&n| n == 1).unwrap();
    let (real, other) = (ids[owner], ids[1 - owner]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while applied(&c.frontend_metrics().await, "ok") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the prefix's event was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = c.frontend_metrics().await;

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
    // Forged events claiming the shared prefix: from instances not in discovery (dropped
    // unseen), and for each real worker with an event id implausibly far ahead (counted as
    // errors). Had the one for `other` been applied, both would match the prefix.
    let local = dynamo_protocols::hashing::block_hashes(&prompt(0), 16);
    let seq = dynamo_protocols::hashing::sequence_hashes(&local);
    let blocks: Vec<_> = local
        .iter()
        .zip(&seq)
        .map(|(l, s)| json!({"block_hash": s, "tokens_hash": l}))
        .collect();
    let stored = |worker: u64, id: u64| {
        json!({"worker_id": worker, "event": {"event_id": id, "dp_rank": 0, "data": {"stored": {
            "parent_hash": null, "blocks": blocks}}}})
        .to_string()
    };
    for i in 0..50 {
        peer.publish(&events, stored(FORGED + i, 0)).await;
    }
    let implausible = [real, other];
    for w in implausible {
        peer.publish(&events, stored(w, u64::MAX / 2)).await;
    }
    // Forged discovery records, written straight into the bucket's stream.
    let kv = |key: &str| format!("$KV.dynamo_discovery.{key}");
    let record = |component: &str, id: u64, subject: String, source: &str, name: &str| {
        json!({"namespace": "dynamo", "component": component, "endpoint": "generate",
               "instance_id": id, "subject": subject,
               "card": {"served_model_name": name, "source": source,
                        "kv_cache_block_size": 16, "context_length": 2048}})
        .to_string()
    };
    let malformed = [
        "instances.dynamo.backend.generate.0000000000000bad",
        "instances.dynamo.backend.generate.0000000000000bae",
    ];
    // A NUL in the component's name.
    peer.publish(
        &kv(malformed[0]),
        record(
            "back\u{0}end",
            FORGED,
            format!("dynamo_backend.generate-{FORGED:x}"),
            "/etc/passwd",
            MODEL,
        ),
    )
    .await;
    // A subject pointing at the real worker.
    peer.publish(
        &kv(malformed[1]),
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

    // The malformed records were refused with a warning each and are not listed.
    let refused: BTreeSet<String> = c
        .frontend_log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "ignoring malformed discovery record")
        .filter_map(|v| v["key"].as_str().map(str::to_string))
        .collect();
    for key in malformed {
        assert!(refused.contains(key), "no warning for {key}: {refused:?}");
    }
    let listed = c.get_json("/health").await.unwrap()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_u64().unwrap())
        .collect::<Vec<_>>();
    // (0xbaf, an instance of model "evil" that never becomes servable, is not listed either.)
    assert!(!listed.contains(&(FORGED + 2)), "{listed:?}");
    assert!(
        listed.contains(&real) && listed.contains(&other),
        "{listed:?}"
    );
    for forged in [FORGED, FORGED + 1, FORGED + 3] {
        assert!(!listed.contains(&forged), "{forged:x} listed: {listed:?}");
    }
    assert!(
        c.frontend_log()
            .contains("serves something else under this model's name"),
        "{}",
        c.frontend_log()
    );
    // The forged events: none applied, exactly the implausible ones counted as errors.
    let after = c.frontend_metrics().await;
    assert_eq!(applied(&after, "ok"), applied(&before, "ok"), "{after}");
    assert_eq!(
        applied(&after, "error"),
        applied(&before, "error") + implausible.len() as f64,
        "{after}"
    );

    // Repeats of the shared prefix while a peer keeps reporting an absurd load for the owner
    // (which, believed, would send them all to the other worker): each goes to the owner and
    // finds the prefix cached.
    let flood = {
        let (peer, loads) = (RawPeer::connect(&c.nats.url()).await, loads.clone());
        let load = json!({"worker_id": real, "dp_rank": 0, "active_blocks": u64::MAX,
                          "total_blocks": u64::MAX, "running": u64::MAX, "waiting": u64::MAX})
        .to_string();
        tokio::spawn(async move {
            loop {
                peer.publish(&loads, load.clone()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let n0 = c.served().await;
    for salt in 1..=5 {
        // Past the router's settling window, so a fresh report would be believed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (st, v) = complete(&c, salt).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(
            v["usage"]["prompt_tokens_details"]["cached_tokens"], 128,
            "repeat {salt} went to the worker holding the prefix: {v}"
        );
    }
    flood.abort();
    let n1 = c.served().await;
    assert_eq!(n1[owner] - n0[owner], 5, "{n0:?} → {n1:?}");
    assert_eq!(n1[1 - owner], n0[1 - owner], "{n0:?} → {n1:?}");

    // Only the real workers serve MODEL (the malformed records were ignored; the third is an
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
    // Per-worker series name only the real workers.
    let m = c.frontend_metrics().await;
    let want: BTreeSet<String> = ids.iter().map(|i| i.to_string()).collect();
    let seen = worker_ids(&m);
    assert!(
        !seen.is_empty() && seen.is_subset(&want),
        "{seen:?} ⊄ {want:?}"
    );
    for w in 0..2 {
        let log = c.workers[w].child.log_text();
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// At most one execution per request id: a second request carrying the id of one already
/// running on the worker is refused (it would otherwise take over the first one's cancel
/// token), and counted; the id still cancels the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_id_is_refused_not_run_twice() {
    let mut c = Cluster::start(&[]);
    // Real-time decode (~8 ms per token): the first request would run for ~40 s.
    c.add_mocker(&["--speedup-ratio", "1"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let real = c.instance_id(0);
    let subject = format!("dynamo_backend.generate-{real:x}");
    let req = json!({"model": MODEL, "token_ids": [1, 2, 3, 4],
                     "stop": {"max_tokens": 5000, "ignore_eos": true}})
    .to_string();
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
    // The first one is still running (it has seconds of work left) and is the one the id
    // cancels: the worker is idle within a second of the cancel.
    assert_eq!(
        c.worker_metric(0, "dynamo_component_inflight_requests")
            .await,
        Some(1.0)
    );
    peer.publish(&format!("{subject}.cancel"), "dup-1").await;
    let cancelled = Instant::now();
    let mut idle = false;
    while cancelled.elapsed() < Duration::from_secs(1) {
        if c.worker_metric(0, "dynamo_component_inflight_requests")
            .await
            == Some(0.0)
        {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        idle,
        "the first request was not cancelled by its id within 1 s"
    );
}

/// Readiness a load balancer can trust: an instance whose model the frontend cannot load (its
/// card names a path outside the model cache) never makes `/health` healthy nor lists a model;
/// a real worker then does, and `/health` lists only its instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_model_cannot_load_never_makes_the_frontend_ready() {
    let mut c = Cluster::start(&[]);
    let peer = RawPeer::connect(&c.nats.url()).await;
    peer.publish(
        "$KV.dynamo_discovery.instances.dynamo.backend.generate.0000000000000baf",
        json!({"namespace": "dynamo", "component": "backend", "endpoint": "generate",
               "instance_id": FORGED + 2,
               "subject": format!("dynamo_backend.generate-{:x}", FORGED + 2),
               "card": {"served_model_name": "evil", "source": "/etc/passwd",
                        "kv_cache_block_size": 16, "context_length": 2048}})
        .to_string(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let r = c.get("/health").await;
        assert_eq!(r.status(), 503, "healthy with no model ready");
        assert!(c.models().await.is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.frontend_log().contains("outside the model cache"),
        "{}",
        c.frontend_log()
    );
    c.add_mocker(&["--speedup-ratio", "1000"]);
    c.wait_instances(1, Duration::from_secs(20)).await.unwrap();
    let v = c.get_json("/health").await.unwrap();
    assert_eq!(v["status"], "healthy");
    let listed: Vec<u64> = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![c.instance_id(0)]);
    assert_eq!(c.models().await, vec![MODEL.to_string()]);
}
