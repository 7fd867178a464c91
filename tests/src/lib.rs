//! The e2e harness: a cluster of real processes (nats-server, `dynamo-frontend`, workers)
//! started on free ports in a private directory, with readiness polling and HTTP helpers.
//! Binaries come from the workspace's target directory (`cargo build --bins` first); a missing
//! binary or nats-server is a loud failure naming the command that provides it.

pub mod nats_jwt;
pub mod peer;
pub mod requests;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dynamo_protocols::names::env;
pub use dynamo_test_support::{model_cache, wait_until, Child, NatsServer};

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --bins` (same profile) before the e2e tests",
        p.display()
    );
    p
}

pub const MODEL: &str = dynamo_protocols::names::defaults::MODEL;

/// Which worker binary a [`WorkerSpec`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerKind {
    /// `dynamo-worker`: the real engine.
    Engine,
    /// `dynamo-mocker`: the simulated engine.
    Mocker,
}

/// How to start one worker process: the binary, its flags and extra environment.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub kind: WorkerKind,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl WorkerSpec {
    pub fn new(kind: WorkerKind) -> Self {
        WorkerSpec {
            kind,
            args: vec![],
            env: vec![],
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }
}

/// Flags of a disaggregated prefill worker in the tests.
pub fn prefill_args() -> Vec<&'static str> {
    vec![
        "--threads",
        "1",
        "--enable-metrics",
        "--disaggregation-mode",
        "prefill",
        "--disaggregation-bootstrap-port",
        "0",
        "--host",
        "127.0.0.1",
    ]
}

/// Flags of a disaggregated decode worker in the tests.
pub fn decode_args() -> Vec<&'static str> {
    vec![
        "--threads",
        "1",
        "--enable-metrics",
        "--disaggregation-mode",
        "decode",
    ]
}

/// A running worker with its system status port.
pub struct Worker {
    pub child: Child,
    pub system_port: u16,
}

/// nats-server + frontend + workers.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: NatsServer,
    /// What the processes put in `NATS_SERVER` (with credentials when the server wants them).
    pub nats_url: String,
    pub frontend: Option<Child>,
    pub http_port: u16,
    pub workers: Vec<Worker>,
    pub http: reqwest::Client,
    started: usize,
}

impl Cluster {
    /// A runtime connection of the test's own to the cluster's NATS (events plane, discovery).
    pub async fn runtime(&self) -> dynamo_runtime::DistributedRuntime {
        dynamo_runtime::DistributedRuntime::connect(
            dynamo_runtime::RuntimeConfig {
                nats_url: self.nats_url.clone(),
                ..Default::default()
            },
            dynamo_runtime::HealthState::new(Instant::now(), true, vec![]),
        )
        .await
        .expect("connect to the cluster's NATS")
    }

    /// Start NATS and a frontend with extra env vars.
    pub fn start(frontend_env: &[(&str, &str)]) -> Cluster {
        Self::start_with_nats(frontend_env, &[], None)
    }

    /// [`Cluster::start`] with extra nats-server flags, and the userinfo (`user:pass`) every
    /// process puts in its `NATS_SERVER` URL.
    pub fn start_with_nats(
        frontend_env: &[(&str, &str)],
        nats_args: &[&str],
        userinfo: Option<&str>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nats = NatsServer::start_with(dir.path(), nats_args);
        let nats_url = match userinfo {
            Some(u) => format!("nats://{u}@127.0.0.1:{}", nats.port),
            None => nats.url(),
        };
        let mut cmd = Command::new(bin("dynamo-frontend"));
        cmd.env(env::NATS_SERVER, &nats_url)
            .env(env::DYN_HTTP_PORT, "0")
            .env(env::DYN_HTTP_HOST, "127.0.0.1")
            .env(env::DYN_MODEL_CACHE, model_cache())
            .env(env::DYN_LOGGING_JSONL, "true")
            .env(env::DYN_LOG, "info");
        for (k, v) in frontend_env {
            cmd.env(k, v);
        }
        let frontend = Child::spawn("frontend", cmd, dir.path()).expect("start frontend");
        let http_port = bound_port(&frontend, "frontend listening");
        Cluster {
            dir,
            nats,
            nats_url,
            frontend: Some(frontend),
            http_port,
            workers: vec![],
            http: reqwest::Client::builder().build().expect("http client"),
            started: 0,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn frontend_log(&self) -> String {
        self.frontend
            .as_ref()
            .map(|f| f.log_text())
            .unwrap_or_default()
    }

    /// Start a mocker with extra flags; waits until its /health is ready.
    pub fn add_mocker(&mut self, args: &[&str]) -> usize {
        self.spawn(WorkerSpec::new(WorkerKind::Mocker).args(args))
    }

    /// Start a real worker (`dynamo-worker`, the default model on 2 threads unless `args`
    /// say otherwise); waits until its /health is ready.
    pub fn add_worker(&mut self, args: &[&str]) -> usize {
        self.spawn(WorkerSpec::new(WorkerKind::Engine).args(args))
    }

    /// Start a disaggregated prefill worker (one thread, metrics on, its bootstrap server on
    /// a free loopback port) with extra flags.
    pub fn add_prefill(&mut self, args: &[&str]) -> usize {
        self.spawn(
            WorkerSpec::new(WorkerKind::Engine)
                .args(&prefill_args())
                .args(args),
        )
    }

    /// Start a disaggregated decode worker (one thread, metrics on) with extra flags.
    pub fn add_decode(&mut self, args: &[&str]) -> usize {
        self.spawn(
            WorkerSpec::new(WorkerKind::Engine)
                .args(&decode_args())
                .args(args),
        )
    }

    /// The instance id worker `i` registered with (from its "worker ready" log line, or the
    /// runtime's "serving" line for the mocker).
    pub fn instance_id(&self, i: usize) -> u64 {
        let log = self.workers[i].child.log_text();
        log.lines()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                if v["message"] != "worker ready" && v["message"] != "serving" {
                    return None;
                }
                u64::from_str_radix(v["instance_id"].as_str()?, 16).ok()
            })
            .unwrap_or_else(|| panic!("worker {i} logged no instance id\n{log}"))
    }

    /// Start the worker `spec` describes on this cluster's NATS, with its system status
    /// server on a free port; waits until its /health is ready and returns its index.
    pub fn spawn(&mut self, spec: WorkerSpec) -> usize {
        self.started += 1;
        let (binary, role) = match spec.kind {
            WorkerKind::Engine => ("dynamo-worker", "worker"),
            WorkerKind::Mocker => ("dynamo-mocker", "mocker"),
        };
        let mut cmd = Command::new(bin(binary));
        cmd.args(&spec.args)
            .env(env::NATS_SERVER, &self.nats_url)
            .env(env::DYN_SYSTEM_PORT, "0")
            .env(env::DYN_SYSTEM_HOST, "127.0.0.1")
            .env(env::DYN_MODEL_CACHE, model_cache())
            .env(env::DYN_LOGGING_JSONL, "true")
            .env(env::DYN_LOG, "info");
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        let child = Child::spawn(&format!("{role}-{}", self.started), cmd, self.dir.path())
            .expect("start worker process");
        let system_port = bound_port(&child, "system status server listening");
        let w = Worker { child, system_port };
        let url = format!("http://127.0.0.1:{system_port}/health");
        wait_until("worker /health ready", Duration::from_secs(120), || {
            let r = blocking_get(&url)?;
            (r.0 == 200).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", w.child.log_text()));
        self.workers.push(w);
        self.workers.len() - 1
    }

    /// Wait until the frontend lists `n` instances in /health.
    pub async fn wait_instances(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(v) = self.get_json("/health").await {
                if v["instances"].as_array().map(|a| a.len()) == Some(n) {
                    // The model must also be loaded when instances exist.
                    if n == 0 || !self.models().await.is_empty() {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "frontend did not see {n} instances within {timeout:?}\n{}",
                    self.frontend_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `path` from the frontend; the response as it comes.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .expect("request to the frontend")
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json().await.map_err(|e| e.to_string())
    }

    pub async fn models(&self) -> Vec<String> {
        self.get_json("/v1/models")
            .await
            .ok()
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    }

    /// POST JSON; returns status, headers and parsed body (or the raw text as a JSON string).
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let r = self.send(path, body, &[]).await;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, headers, v)
    }

    /// POST `body` as JSON to `path` with extra `headers`; the response as it comes (for
    /// streams, status and header checks).
    pub async fn send(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut r = self.http.post(format!("{}{path}", self.url())).json(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("request to the frontend")
    }

    /// POST raw bytes with a content type.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// A worker's /metrics text (empty when it does not answer).
    pub async fn worker_metrics(&self, worker: usize) -> String {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            self.workers[worker].system_port
        );
        match self.http.get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Scrape a worker's /metrics and read one sample (sum over label sets matching `filter`).
    pub async fn worker_metric(&self, worker: usize, name: &str) -> Option<f64> {
        let url = format!(
            "http://127.0.0.1:{}/metrics",
            self.workers[worker].system_port
        );
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        metric_value(&text, name)
    }

    /// Requests each worker's work handler has served (`dynamo_component_requests_total`),
    /// in worker order.
    pub async fn served(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.workers.len());
        for i in 0..self.workers.len() {
            let n = self
                .worker_metric(i, "dynamo_component_requests_total")
                .await;
            out.push(n.unwrap_or(0.0) as u64);
        }
        out
    }

    pub async fn frontend_metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.url()))
            .send()
            .await
            .expect("scrape");
        r.text().await.expect("text")
    }
}

/// Wait for the JSON log line with `message` and read the port of its `local` field (the
/// process bound port 0 and logged the address it got).
pub fn bound_port(child: &Child, message: &str) -> u16 {
    wait_until(message, Duration::from_secs(60), || {
        child.log_text().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v["message"] != message {
                return None;
            }
            v["local"].as_str()?.rsplit(':').next()?.parse().ok()
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.log_text()))
}

/// Sum of the samples of `name` whose labels contain `label` (e.g. `stage="decode_waiting"`).
pub fn metric_with(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, val)) = line.rsplit_once(' ') else {
            continue;
        };
        if key.split('{').next() == Some(name) && key.contains(label) {
            *found.get_or_insert(0.0) += val.parse::<f64>().ok()?;
        }
    }
    found
}

/// Sum of all samples of `name` (any labels) in a Prometheus text body.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (key, val) = line.rsplit_once(' ')?;
        let base = key.split('{').next().unwrap_or(key);
        if base == name {
            *found.get_or_insert(0.0) += val.parse::<f64>().ok()?;
        }
    }
    found
}

/// The `error.message` of an OpenAI error body ("" when there is none).
pub fn error_message(v: &serde_json::Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

/// Run `cmd` to completion and require success; its output, for more checks.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A minimal blocking GET (status, body) used for readiness polling outside async code.
pub fn blocking_get(url: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Read an SSE response to the end: the `data:` payloads (without `[DONE]`), and whether
/// `[DONE]` was seen.
pub async fn read_sse(resp: reqwest::Response) -> (Vec<serde_json::Value>, bool) {
    use futures::StreamExt;
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("body chunk")));
    }
    let mut events = vec![];
    let mut done = false;
    for block in buf.split("\n\n") {
        for line in block.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done = true;
                } else {
                    events.push(serde_json::from_str(data).expect("chunk is JSON"));
                }
            }
        }
    }
    (events, done)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let tail = |s: String| {
                s.lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let state = self.frontend.as_mut().map(|f| {
                if f.is_running() {
                    "running".to_string()
                } else {
                    format!("exited: {:?}", f.wait_timeout(Duration::ZERO))
                }
            });
            eprintln!(
                "--- frontend ({state:?}) log (tail) ---\n{}",
                tail(self.frontend_log())
            );
            for (i, w) in self.workers.iter().enumerate() {
                eprintln!(
                    "--- worker {i} log (tail) ---\n{}",
                    tail(w.child.log_text())
                );
            }
        }
    }
}

/// Environment for a process that exports its spans over OTLP to `endpoint` as `service`.
pub fn otel_env<'a>(endpoint: &'a str, service: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("OTEL_EXPORT_ENABLED", "true"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", service),
    ]
}

/// Wait (15 s at most) until trace `trace_id` holds a span of each name in `want`; its spans.
pub async fn wait_trace(
    rx: &dynamo_telemetry::receiver::Receiver,
    trace_id: &str,
    want: &[&str],
) -> Vec<dynamo_telemetry::receiver::Span> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = rx.trace(trace_id);
        if want.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} lacks some of {want:?}:\n{}\nall traces: {:?}",
            dynamo_telemetry::receiver::render(&spans),
            rx.trace_ids()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
