//! `launch/observability.sh` (Debian's Prometheus with the project's scrape config,
//! dynamo-trace on OTLP) watching a live mixed fleet (KV-routed frontend, an aggregated worker
//! on a small pool, a disaggregated pair) answers every expression of every dashboard but the
//! DCGM one, every variable query, and every headless curl command of
//! docs/observability/README.md; panels of features not landed yet stay listed as pending.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use dynamo_e2e::requests::{self, pinned};
use dynamo_e2e::{bin, otel_env, peer, run_ok, Child, Cluster, MODEL};
use serde_json::{json, Value};

use super::dashboards::{dashboard, panels, read, root, DASHBOARDS, PENDING};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `launch/observability.sh`, stopped with SIGTERM (as Ctrl-C would) when dropped.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        self.0.signal(libc::SIGTERM);
        self.0.wait_timeout(Duration::from_secs(15));
    }
}

/// Wait (30 s at most) until the instant query `q` answers with at least `n` series.
async fn seen(http: &reqwest::Client, prom: u16, q: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = query(http, prom, q).await;
        if got.as_ref().is_ok_and(|r| r.len() >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never answered {q} with {n} series: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Instant query; the result vector, or why there is none.
async fn query(http: &reqwest::Client, prom: u16, q: &str) -> Result<Vec<Value>, String> {
    let r = http
        .get(format!("http://127.0.0.1:{prom}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let j: Value = r.json().await.map_err(|e| e.to_string())?;
    if j["status"] != "success" {
        return Err(format!("{}: {}", j["errorType"], j["error"]));
    }
    Ok(j["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// At least one series with a finite value (an empty result or all-NaN quantiles is no data).
fn has_data(result: &[Value]) -> bool {
    result.iter().any(|s| sample(s).is_some_and(f64::is_finite))
}

/// The value of one series of an instant-query result.
fn sample(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// A label pair a series must carry.
type Label = (&'static str, &'static str);

/// Panels whose workload the test drives on purpose: each of their expressions must answer
/// with a value above 0 (a counter that never moved, or a gauge at rest, answers 0), in a
/// series carrying the label pair when one is given.
const DRIVEN: &[(&str, &str, Option<Label>)] = &[
    ("sglang.json", "Retractions", None),
    ("sglang.json", "Request Rate", None),
    ("sglang.json", "Cache Hit Rate", None),
    ("dynamo.json", "Component Errors", None),
    ("dynamo.json", "Cached Prompt Tokens (avg)", None),
    ("dynamo.json", "Predicted vs Actual Hit Rate", None),
    // The 404 of an unknown model is counted under `model="unknown"`: seen with All models.
    (
        "dynamo.json",
        "Request Rate by Status [All models]",
        Some(("error_type", "not_found")),
    ),
    ("kvbm.json", "Device Hit Rate", None),
    ("kvbm.json", "Host Hit Rate", None),
    ("kvbm.json", "Evictions & Load-backs (tokens/s)", None),
    ("sglang.json", "Eviction & Load-back Rate (tokens/s)", None),
    ("disagg-dashboard.json", "Transfer Speed", None),
    ("disagg-dashboard.json", "Transfer Latency", None),
    ("disagg-dashboard.json", "Transfer Size", None),
    ("disagg-dashboard.json", "Stage Latency (p90)", None),
];

/// Suffix of a driven panel's name evaluated with the model variable at All.
const ALL_MODELS: &str = " [All models]";

/// Whether `result` answers the query of panel `panel` of `file`: data, and for a driven
/// panel a positive value (in the wanted series).
fn answers(file: &str, panel: &str, result: &[Value]) -> bool {
    let Some((_, _, label)) = DRIVEN.iter().find(|d| d.0 == file && d.1 == panel) else {
        return has_data(result);
    };
    result.iter().any(|s| {
        label.is_none_or(|(k, v)| s["metric"][k] == v)
            && sample(s).is_some_and(|v| v.is_finite() && v > 0.0)
    })
}

/// One query of a dashboard: (file, panel, expression with variables substituted).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut out = vec![];
    for file in DASHBOARDS.iter().filter(|f| **f != "dcgm-metrics.json") {
        let d = dashboard(file);
        // `model` set to the served model, or to All (the dashboards' default, `.*`).
        let subst = |e: &str, model: &str| {
            // Grafana's $__rate_interval is a few scrape intervals; longer here so the
            // whole workload, slow on two cores, is inside every window.
            let mut e = e.replace("$__rate_interval", "2m");
            for v in d["templating"]["list"].as_array().unwrap() {
                let name = v["name"].as_str().unwrap();
                let value = if name == "model" { model } else { ".*" };
                e = e.replace(&format!("${name}"), value);
            }
            assert!(!e.contains('$'), "{file}: unsubstituted variable in {e}");
            e
        };
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap();
            let all = format!("{title}{ALL_MODELS}");
            let with_all = DRIVEN.iter().any(|d| d.0 == *file && d.1 == all);
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap();
                out.push((file.to_string(), title.to_string(), subst(expr, MODEL)));
                if with_all {
                    out.push((file.to_string(), all.clone(), subst(expr, ".*")));
                }
            }
        }
        // Variables: label_values(metric, label) lists the label's values of a live series.
        for v in d["templating"]["list"].as_array().unwrap() {
            let q = v["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{file}: variable query {q}"));
            let (metric, label) = inner.rsplit_once(',').unwrap();
            out.push((
                file.to_string(),
                format!("variable ${}", v["name"].as_str().unwrap()),
                format!("count by ({}) ({})", label.trim(), metric.trim()),
            ));
        }
    }
    out
}

/// The commands of the headless section of docs/observability/README.md.
fn headless_commands() -> (Vec<String>, Vec<String>) {
    let doc = read("docs/observability/README.md");
    let section = doc
        .split("\n## Headless access")
        .nth(1)
        .expect("docs/observability/README.md has a `## Headless access` section");
    let block = section
        .split("```bash\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a bash block in the headless section");
    let lines: Vec<String> = block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(String::from)
        .collect();
    let (curls, setup): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|l| l.starts_with("curl "));
    (setup, curls)
}

/// Run the headless section's commands against this Prometheus; Grafana and Tempo commands
/// only where something answers on their ports.
fn run_headless(prom: u16) {
    let (setup, curls) = headless_commands();
    assert!(curls.len() >= 4, "{curls:?}");
    let up = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let mut skipped = vec![];
    for c in &curls {
        if (c.contains("localhost:3000") && !up(3000))
            || (c.contains("localhost:3200") && !up(3200))
        {
            skipped.push(c.clone());
            continue;
        }
        assert!(
            c.contains("localhost:9090") || c.contains(":3000") || c.contains(":3200"),
            "{c}"
        );
        let script = format!(
            "set -eo pipefail\n{}\n{}",
            setup.join("\n"),
            c.replace("localhost:9090", &format!("127.0.0.1:{prom}"))
        );
        let out = run_ok(Command::new("bash").arg("-c").arg(&script));
        let text = String::from_utf8_lossy(&out.stdout).replace([' ', '\n'], "");
        if c.contains(":9090") {
            assert!(text.contains("\"status\":\"success\""), "{c}: {text}");
            assert!(!text.contains("\"result\":[]"), "{c}: no data: {text}");
        }
    }
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} headless commands: no Grafana on :3000 / Tempo on :3200 here: {skipped:#?}",
            skipped.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observability_sh_answers_every_dashboard_query_from_a_live_fleet() {
    let (prom, otlp) = (free_port(), free_port());
    let otlp_url = format!("http://127.0.0.1:{otlp}");
    let mut fe_env = otel_env(&otlp_url, "dynamo-frontend");
    fe_env.push(("DYN_ROUTER_MODE", "kv"));
    let mut c = Cluster::start(&fe_env);
    let agg = c.add_worker(&[
        "--threads",
        "2",
        "--enable-metrics",
        "--max-total-tokens",
        "512",
        "--enable-hierarchical-cache",
    ]);
    c.add_prefill(&[]);
    let dec = c.add_decode(&[]);
    let ports: Vec<String> = c
        .workers
        .iter()
        .map(|w| format!("127.0.0.1:{}", w.system_port))
        .collect();

    let mut cmd = Command::new("bash");
    cmd.arg(root().join("launch/observability.sh"))
        .env("DYN_BIN_DIR", bin("dynamo-trace").parent().unwrap())
        .env("PROMETHEUS_LISTEN", format!("127.0.0.1:{prom}"))
        .env("TRACE_LISTEN", format!("127.0.0.1:{otlp}"))
        .env("FRONTEND_TARGET", format!("127.0.0.1:{}", c.http_port))
        .env("WORKER_TARGETS", ports.join(","))
        .env("PROMETHEUS_DATA", c.dir.path().join("prometheus"));
    let mut script = Script(Child::spawn("observability-sh", cmd, c.dir.path()).unwrap());
    c.wait_instances(3, Duration::from_secs(60)).await.unwrap();
    let (agg_id, dec_id) = (c.instance_id(agg), c.instance_id(dec));

    // Prometheus answers and every target of the rewritten config is up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(&c.http, prom, "up == 1").await.unwrap_or_default();
        let jobs: BTreeMap<String, usize> = up.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s["metric"]["job"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            m
        });
        if jobs.get("dynamo-frontend") == Some(&1) && jobs.get("dynamo-backend") == Some(&3) {
            break;
        }
        assert!(
            Instant::now() < deadline && script.0.is_running(),
            "targets up: {jobs:?}\n{}",
            script.0.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Prometheus holds every per-model and per-endpoint series at 0 before the workload (the
    // frontend makes them when the model is ready, the workers when they register), so the
    // workload's requests are increases that rate() sees.
    seen(
        &c.http,
        prom,
        &format!("dynamo_frontend_time_to_first_token_seconds_count{{model=\"{MODEL}\"}} == 0"),
        1,
    )
    .await;
    seen(
        &c.http,
        prom,
        "dynamo_component_errors_total{error_type=\"deserialization\"} == 0",
        3,
    )
    .await;

    // The workload. A traced request first, found later in dynamo-trace's output.
    let r = c
        .send(
            "/v1/completions",
            &requests::completion("Hello", 2),
            &[("x-request-id", "dashboards-trace-1")],
        )
        .await;
    assert_eq!(r.status(), 200);
    // Prefix hits on the aggregated worker, then the KV router's own choices.
    let prefix = "You are a careful assistant. Answer in one short sentence, plainly, without \
        lists, and never repeat the question. Facts: rivers flow downhill; the sea is salty. ";
    for q in ["Why is the sea salty?", "Why do rivers flow?"] {
        let body = pinned(requests::completion(format!("{prefix}{q}"), 4), agg_id);
        assert_eq!(c.post("/v1/completions", &body).await.0, 200);
    }
    for q in ["What is a river?", "What is the sea?"] {
        let body = requests::completion(format!("{prefix}{q}"), 4);
        assert_eq!(c.post("/v1/completions", &body).await.0, 200);
    }
    // Disaggregated: two turns of one conversation through the pair.
    for q in ["Name a colour.", "Name another colour."] {
        let body = pinned(requests::chat(&format!("{prefix}{q}"), 4, false), dec_id);
        assert_eq!(c.post("/v1/chat/completions", &body).await.0, 200);
    }
    // A cancelled stream (aborted), an unknown model (a frontend error), a garbage message on
    // the worker's subject (a component error).
    let r = c
        .send("/v1/completions", &json!({"model": MODEL, "prompt": "Count slowly:",
            "max_tokens": 200, "ignore_eos": true, "stream": true, "nvext": {"backend_instance_id": agg_id}}), &[])
        .await;
    let mut body = r.bytes_stream();
    futures::StreamExt::next(&mut body).await.unwrap().unwrap();
    drop(body);
    let mut unknown = requests::completion("Hi", 2);
    unknown["model"] = json!("no-such-model");
    assert_eq!(c.post("/v1/completions", &unknown).await.0, 404);
    // Scraped before the second 404 (sent last), which is then an increase.
    seen(
        &c.http,
        prom,
        "dynamo_frontend_requests_total{error_type=\"not_found\"}",
        1,
    )
    .await;
    let nats = peer::RawPeer::connect(&c.nats.url()).await;
    let subject = format!("dynamo_backend.generate-{agg_id:x}");
    let reply = nats
        .request(&subject, "not a request", Duration::from_secs(10))
        .await
        .expect("the worker answers garbage");
    assert!(String::from_utf8_lossy(&reply).contains("cannot decode"));
    // A burst that needs ~3x the aggregated worker's 512-token pool: retractions.
    let burst = futures::future::join_all(
        ["tides", "comets", "coral", "bees", "clouds", "salt"].map(|t| {
            let mut b = pinned(
                requests::completion(format!("Write a long essay about {t}."), 160),
                agg_id,
            );
            b["ignore_eos"] = json!(true);
            let c = &c;
            async move { c.post("/v1/completions", &b).await.0 }
        }),
    )
    .await;
    assert!(burst.iter().all(|s| *s == 200), "{burst:?}");
    // The burst is slow on two cores: fresh samples for the frontend's per-request families.
    for q in ["Name a fruit.", "Name a tree."] {
        assert_eq!(
            c.post("/v1/chat/completions", &requests::chat(q, 4, false))
                .await
                .0,
            200
        );
    }
    // The second 404: the error series Prometheus has seen grows.
    assert_eq!(c.post("/v1/completions", &unknown).await.0, 404);
    // The aggregated worker's last admitted request hits its cache, so the cache hit rate
    // gauge (the rate of the last interval that admitted requests) is above 0; the burst
    // evicted its prefix from the pool, so it is loaded back from the host tier.
    let body = pinned(
        requests::completion(format!("{prefix}Why is the sea salty?"), 4),
        agg_id,
    );
    assert_eq!(c.post("/v1/completions", &body).await.0, 200);

    // A request that pins its prompt (the PIN panel's pinned series), seen above 0.
    let mut body = pinned(
        requests::completion(format!("{prefix}What is a pin?"), 2),
        agg_id,
    );
    body["nvext"]["cache_control"] = json!({"type": "ephemeral", "ttl": "10m"});
    assert_eq!(c.post("/v1/completions", &body).await.0, 200);
    seen(&c.http, prom, "sglang:pinned_tokens > 0", 1).await;

    // Every expression, evaluated until it has data (two scrapes after the workload at most a
    // few intervals later), then the pending ones must still have none.
    let queries = dashboard_queries();
    for d in DRIVEN {
        assert!(
            queries.iter().any(|q| q.0 == d.0 && q.1 == d.1),
            "driven panel {d:?} names no panel"
        );
    }
    let pending = |f: &str, p: &str| PENDING.iter().any(|(pf, pp, _)| *pf == f && *pp == p);
    let mut waiting: Vec<&(String, String, String)> =
        queries.iter().filter(|(f, p, _)| !pending(f, p)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = BTreeMap::new();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = vec![];
        for q in waiting {
            match query(&c.http, prom, &q.2).await {
                Ok(r) if answers(&q.0, &q.1, &r) => {}
                Ok(r) => {
                    last.insert(q.2.clone(), format!("no data (or not above 0): {r:?}"));
                    still.push(q)
                }
                Err(e) => {
                    last.insert(q.2.clone(), e);
                    still.push(q)
                }
            }
        }
        waiting = still;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let missing: Vec<String> = waiting
        .iter()
        .map(|(f, p, e)| format!("{f} / {p}: {e}\n    {}", last[e]))
        .collect();
    if !missing.is_empty() {
        // What Prometheus holds for the frontend, to tell a scrape problem from a metric one.
        let mut raw = String::new();
        for q in [
            "up{job=\"dynamo-frontend\"}[3m]",
            "dynamo_frontend_time_to_first_token_seconds_count[3m]",
        ] {
            raw.push_str(&format!("{q}: {:?}\n", query(&c.http, prom, q).await));
        }
        panic!(
            "dashboard queries without data:\n{}\n{raw}",
            missing.join("\n")
        );
    }
    for (f, p, e) in queries.iter().filter(|(f, p, _)| pending(f, p)) {
        let r = query(&c.http, prom, e)
            .await
            .unwrap_or_else(|err| panic!("{f} / {p}: {e}: {err}"));
        assert!(
            !has_data(&r),
            "{f} / {p} answers now: remove it from PENDING"
        );
    }
    run_headless(prom);

    // The traced request in dynamo-trace's output (printed by the script).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !script
        .0
        .log_text()
        .contains("x_request_id=dashboards-trace-1")
    {
        assert!(
            Instant::now() < deadline,
            "trace not printed:\n{}",
            script.0.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = script.0.log_text();
    assert!(log.contains("http-request [dynamo-frontend]"), "{log}");

    // SIGTERM stops Prometheus and dynamo-trace.
    script.0.signal(libc::SIGTERM);
    assert!(
        script.0.wait_timeout(Duration::from_secs(20)).is_some(),
        "script did not exit"
    );
    for p in [prom, otlp] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
            "port {p} still open"
        );
    }
}
