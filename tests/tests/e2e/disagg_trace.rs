//! Disaggregated tracing and the launch script. One request through a prefill and a decode
//! worker is one trace: both routing spans (`phase` Prefill and Decode) under the frontend's
//! `http-request`, each worker's `handle_payload` under its routing span, and both engines'
//! request spans (`prefill Req …`, `decode Req …`) under the one `Bootstrap Room 0x…` span
//! the prefill engine opened. `launch/disagg.sh --enable-otel` itself serves a request whose
//! spans reach an OTLP receiver from all three services and the engines, and SIGTERM stops
//! what it started and nothing else.

use std::process::Command;
use std::time::{Duration, Instant};

use dynamo_e2e::{
    bin, decode_args, otel_env, prefill_args, requests, wait_trace, Child, Cluster, NatsServer,
    WorkerKind, WorkerSpec,
};
use dynamo_telemetry::receiver::{render, Receiver, Span};

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_frontend_prefill_and_decode() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (ep, engine_ep) = (rx.endpoint(), rx.host_port());
    let mut c = Cluster::start(&otel_env(&ep, "dynamo-frontend"));
    let trace_args = ["--enable-trace", "--otlp-traces-endpoint", &engine_ep];
    c.spawn(
        WorkerSpec::new(WorkerKind::Engine)
            .args(&prefill_args())
            .args(&trace_args)
            .env(&otel_env(&ep, "dynamo-worker-prefill")),
    );
    c.spawn(
        WorkerSpec::new(WorkerKind::Engine)
            .args(&decode_args())
            .args(&trace_args)
            .env(&otel_env(&ep, "dynamo-worker-decode")),
    );
    c.wait_instances(2, Duration::from_secs(30)).await.unwrap();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp = format!("00-{trace}-00f067aa0ba902b7-01");
    let body = requests::completion("The capital of France is", 4);
    let r = c
        .send("/v1/completions", &body, &[("traceparent", &tp)])
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let prefill_req = format!("prefill Req {}", &trace[..8]);
    let decode_req = format!("decode Req {}", &trace[..8]);
    wait_trace(
        &rx,
        trace,
        &[
            "http-request",
            "kv_router.route_request",
            "handle_payload",
            &prefill_req,
            &decode_req,
        ],
    )
    .await;
    // One tree: every span hangs under another span of this trace, but the frontend's
    // `http-request`, which hangs under the client's span. (A hop that lost the context would
    // start a root or point at a span that is not in the trace.) Children are exported before
    // their parents, so wait for the tree to close.
    let client_span = "00f067aa0ba902b7";
    let deadline = Instant::now() + Duration::from_secs(15);
    let spans = loop {
        let spans = rx.trace(trace);
        let ids: std::collections::HashSet<&str> =
            spans.iter().map(|s| s.span_id.as_str()).collect();
        let dangling: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id != client_span && !ids.contains(s.parent_span_id.as_str()))
            .collect();
        if dangling.is_empty() {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans outside the request's tree: {:?}\n{}",
            dangling.iter().map(|s| &s.name).collect::<Vec<_>>(),
            render(&spans)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{}", render(&spans));
    let roots = spans
        .iter()
        .filter(|s| s.parent_span_id == client_span)
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>();
    assert_eq!(roots, ["http-request"], "{}", render(&spans));
    let services: std::collections::BTreeSet<&str> =
        spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "dynamo-frontend",
            "dynamo-worker-decode",
            "dynamo-worker-prefill",
            "sglang"
        ]
    );
    let http = named(&spans, "http-request")[0];
    let routes = named(&spans, "kv_router.route_request");
    assert_eq!(routes.len(), 2, "{}", render(&spans));
    let route = |phase: &str| {
        *routes
            .iter()
            .find(|s| s.attr_str("phase") == Some(phase))
            .unwrap_or_else(|| panic!("no {phase} routing span"))
    };
    let (rp, rd) = (route("Prefill"), route("Decode"));
    assert!(routes.iter().all(|s| s.parent_span_id == http.span_id));
    let handles = named(&spans, "handle_payload");
    let handle = |component: &str| {
        *handles
            .iter()
            .find(|s| s.attr_str("component") == Some(component))
            .unwrap_or_else(|| panic!("no handle_payload of {component}"))
    };
    let (hp, hd) = (handle("prefill"), handle("backend"));
    assert_eq!(hp.parent_span_id, rp.span_id);
    assert_eq!(hd.parent_span_id, rd.span_id);
    assert_eq!(hp.service, "dynamo-worker-prefill");
    assert_eq!(hd.service, "dynamo-worker-decode");
    let rooms: Vec<_> = spans
        .iter()
        .filter(|s| s.name.starts_with("Bootstrap Room "))
        .collect();
    assert_eq!(rooms.len(), 1, "one room span shared by both sides");
    let room = rooms[0];
    assert_ne!(room.name, "Bootstrap Room 0x0");
    assert_eq!(
        room.attr_str("bootstrap_room"),
        room.name.strip_prefix("Bootstrap Room ")
    );
    assert_eq!(room.parent_span_id, hp.span_id);
    for name in [&prefill_req, &decode_req] {
        let s = named(&spans, name);
        assert_eq!(s.len(), 1, "{name}");
        assert_eq!(s[0].parent_span_id, room.span_id, "{name} under the room");
        assert_eq!(s[0].service, "sglang");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// `/proc/<pid>/stat`: (command name, state, parent pid).
fn stat(pid: u32) -> Option<(String, char, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (name, rest) = s.split_once(" (")?.1.rsplit_once(") ")?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((name.to_string(), state, f.next()?.parse().ok()?))
}

/// The running children of `parent`: (pid, command name).
fn children_of(parent: u32) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (name, state, ppid) = stat(pid)?;
            (ppid == parent && state != 'Z').then_some((pid, name))
        })
        .collect()
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, state, _)| state != 'Z')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagg_sh_with_otel_serves_and_exports_from_every_service() {
    let rx = Receiver::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let (http, prefill, decode, boot) = (ports[0], ports[1], ports[2], ports[3]);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("bash");
    cmd.arg(root.join("launch/disagg.sh"))
        .arg("--enable-otel")
        .env("DYN_BIN_DIR", bin("dynamo-worker").parent().unwrap())
        .env("NATS_SERVER", nats.url())
        .env("DYN_HTTP_PORT", http.to_string())
        .env("PREFILL_SYSTEM_PORT", prefill.to_string())
        .env("DECODE_SYSTEM_PORT", decode.to_string())
        .env("DISAGG_BOOTSTRAP_PORT", boot.to_string())
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", rx.endpoint())
        .env("DYN_MODEL_CACHE", dynamo_e2e::model_cache())
        .env("DYN_LOG_DIR", dir.path());
    let mut script = Child::spawn("disagg-sh", cmd, dir.path()).unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http}/v1/completions");
    let deadline = Instant::now() + Duration::from_secs(120);
    let body = loop {
        let r = client
            .post(&url)
            .json(&{
                // Greedy past EOS: exactly four tokens whatever the model prefers.
                let mut b = requests::greedy_completion("Hello", 4);
                b["ignore_eos"] = serde_json::json!(true);
                b
            })
            .send()
            .await;
        if let Ok(r) = r {
            if r.status() == 200 {
                break r.text().await.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline && script.is_running(),
            "disagg.sh did not serve:\n{}",
            script.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(body.contains("\"completion_tokens\":4"), "{body}");
    let log = script.log_text();
    assert!(
        log.contains(&format!("prefill http://127.0.0.1:{prefill}/metrics")),
        "{log}"
    );
    let want = [
        "dynamo-frontend",
        "dynamo-worker-prefill",
        "dynamo-worker-decode",
        "sglang",
    ];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen: std::collections::BTreeSet<String> =
            rx.spans().into_iter().map(|s| s.service).collect();
        if want.iter().all(|w| seen.contains(*w)) {
            break;
        }
        assert!(Instant::now() < deadline, "services seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM stops the frontend and both workers (the script's children, each serving its
    // ports until then); the nats-server it did not start stays.
    for p in [http, prefill, decode, boot] {
        assert!(answers(p), "port {p} not served before SIGTERM");
    }
    let children = children_of(script.pid());
    let mut names: Vec<String> = children.iter().map(|(_, n)| n.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        ["dynamo-frontend", "dynamo-worker", "dynamo-worker"],
        "{children:?}"
    );
    script.signal(libc::SIGTERM);
    assert!(
        script.wait_timeout(Duration::from_secs(30)).is_some(),
        "disagg.sh did not exit"
    );
    for (pid, name) in &children {
        assert!(!alive(*pid), "{name} ({pid}) still running after SIGTERM");
    }
    for p in [http, prefill, decode, boot] {
        assert!(!answers(p), "port {p} still served after SIGTERM");
    }
    let nats_port: u16 = nats.url().rsplit(':').next().unwrap().parse().unwrap();
    assert!(answers(nats_port), "the test's nats-server was stopped");
}
