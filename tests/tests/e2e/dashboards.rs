//! The observability deployment of `deploy/`, statically: the dashboards are valid Grafana JSON
//! and what `dashboards.py` writes; the compose files pass a real compose tool and their ports
//! are the binaries' defaults. The live check against a running fleet is `dashboards_live`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use dynamo_e2e::run_ok;
use dynamo_protocols::names::defaults;
use serde_json::Value;

/// Panels whose feature has not landed: (dashboard, panel title, the feature). The issue that
/// lands a feature empties its entries; the test fails when a listed panel answers, so this list
/// can only shrink.
pub(super) const PENDING: &[(&str, &str, &str)] = &[];

pub(super) const DASHBOARDS: [&str; 5] = [
    "sglang.json",
    "dynamo.json",
    "disagg-dashboard.json",
    "kvbm.json",
    "dcgm-metrics.json",
];

const SGLANG_ROWS: [&str; 5] = [
    "Request Latency",
    "Throughput & Queue",
    "Cache & PIN",
    "Memory Pressure",
    "HiCache Latency",
];

pub(super) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(super) fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub(super) fn dashboard(file: &str) -> Value {
    let rel = format!("deploy/observability/grafana_dashboards/{file}");
    serde_json::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every panel of a dashboard, rows' nested panels included.
pub(super) fn panels(d: &Value) -> Vec<&Value> {
    let mut out = vec![];
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// `uid:` values of a provisioning file.
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_string())
        .collect()
}

fn port_of(addr: &str) -> u16 {
    let a = addr.rsplit("://").next().unwrap();
    a.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[test]
fn dashboards_are_valid_grafana_json_and_generated() {
    run_ok(
        Command::new("python3")
            .arg(root().join("deploy/observability/dashboards.py"))
            .arg("--check"),
    );
    let mut uids: Vec<String> =
        yaml_values(&read("deploy/observability/grafana-datasources.yml"), "uid");
    uids.extend(yaml_values(
        &read("deploy/observability/tempo-datasource.yml"),
        "uid",
    ));
    assert!(uids.contains(&"P1809F7CD0C75ACF3".to_string()), "{uids:?}");
    let mut files: Vec<String> =
        std::fs::read_dir(root().join("deploy/observability/grafana_dashboards"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
    files.sort();
    let mut want: Vec<String> = DASHBOARDS.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(files, want);
    let mut board_uids = BTreeSet::new();
    for file in DASHBOARDS {
        let d = dashboard(file);
        let uid = d["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && board_uids.insert(uid.to_string()),
            "{file}: uid {uid:?}"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or_default();
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}/{title}: id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            if p["type"] == "row" {
                continue;
            }
            let unit = p["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or_default();
            assert!(!unit.is_empty(), "{file}/{title}: no unit");
            let ds = p["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                uids.iter().any(|u| u == ds),
                "{file}/{title}: datasource {ds:?}"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{file}/{title}: no query");
            for t in targets {
                let ds = t["datasource"]["uid"].as_str().unwrap_or_default();
                assert!(
                    uids.iter().any(|u| u == ds),
                    "{file}/{title}: target datasource {ds:?}"
                );
                assert!(
                    t["expr"].as_str().is_some_and(|e| !e.is_empty()),
                    "{file}/{title}: expr"
                );
                assert!(
                    t["legendFormat"].as_str().is_some_and(|e| !e.is_empty()),
                    "{file}/{title}: legend"
                );
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            let ds = v["datasource"]["uid"].as_str().unwrap_or_default();
            assert!(
                uids.iter().any(|u| u == ds),
                "{file}: variable datasource {ds:?}"
            );
        }
    }
    let sg = dashboard("sglang.json");
    assert_eq!(sg["title"], "SGLang Engine");
    assert_eq!(sg["uid"], "sglang-engine");
    let rows: Vec<&str> = panels(&sg)
        .into_iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(rows, SGLANG_ROWS);
    // Grafana reads the provider file from where the compose file mounts the folder.
    let provider = read("deploy/observability/grafana_dashboards/dashboards.yml");
    let path = yaml_values(&provider, "path");
    assert_eq!(path, ["/etc/grafana/provisioning/dashboards"]);
    assert!(read("deploy/docker-observability.yml")
        .contains("./observability/grafana_dashboards:/etc/grafana/provisioning/dashboards"));
    for f in PENDING {
        let d = dashboard(f.0);
        assert!(
            panels(&d).iter().any(|p| p["title"] == f.1),
            "pending {f:?} names no panel"
        );
    }
}

/// The compose tool of this machine: the `docker compose` plugin, else Debian's
/// `docker-compose` (tests/run.sh installs it).
fn compose() -> Vec<&'static str> {
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        return vec!["docker", "compose"];
    }
    let v1 = Command::new("docker-compose").arg("version").output();
    assert!(
        v1.is_ok_and(|o| o.status.success()),
        "neither `docker compose` nor docker-compose: ./tests/run.sh installs Debian's docker-compose"
    );
    vec!["docker-compose"]
}

fn compose_config(tool: &[&str], file: &Path, profile: bool) -> std::process::Output {
    let mut cmd = Command::new(tool[0]);
    cmd.args(&tool[1..]).arg("-f").arg(file);
    if profile {
        cmd.args(["--profile", "nvidia"]);
    }
    cmd.args(["config", "-q"]).output().expect("compose config")
}

/// `"host:container"` port mappings of a compose file: host ports.
fn published(text: &str) -> BTreeSet<u16> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("- \""))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect()
}

#[test]
fn compose_files_validate_and_use_the_binaries_ports() {
    let tool = compose();
    let deploy = root().join("deploy");
    for (file, profile) in [
        ("docker-compose.yml", false),
        ("docker-observability.yml", false),
        ("docker-observability.yml", true),
    ] {
        let out = compose_config(&tool, &deploy.join(file), profile);
        assert!(
            out.status.success(),
            "{tool:?} config {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The tool rejects what it does not know (so passing above means something).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    let text = read("deploy/docker-observability.yml");
    std::fs::write(
        &bad,
        text.replace("  prometheus:\n", "  prometheus:\n    bogus_option: 1\n"),
    )
    .unwrap();
    assert!(!compose_config(&tool, &bad, false).status.success());

    let core = read("deploy/docker-compose.yml");
    assert!(published(&core).contains(&port_of(defaults::NATS_SERVER)));
    assert!(
        core.contains("-js") && core.contains("8222"),
        "JetStream and monitoring"
    );
    let obs = read("deploy/docker-observability.yml");
    let ports = published(&obs);
    let script = read("launch/observability.sh");
    let otlp = port_of(defaults::OTLP_TRACES_ENDPOINT);
    assert_eq!(otlp, port_of(defaults::TRACE_LISTEN));
    assert!(read("launch/lib.sh").contains(&format!("http://localhost:{otlp}")));
    for (port, what) in [
        (otlp, "Tempo OTLP/gRPC (the binaries' OTLP default)"),
        (4318, "Tempo OTLP/HTTP"),
        (3200, "Tempo query"),
        (9090, "Prometheus"),
        (3000, "Grafana"),
        (7777, "NATS exporter"),
        (9401, "DCGM exporter"),
    ] {
        assert!(ports.contains(&port), "{what} on {port}: {ports:?}");
    }
    assert!(script.contains("PROMETHEUS_LISTEN:-127.0.0.1:9090"));
    assert!(script.contains(&format!("TRACE_LISTEN:-{}", defaults::TRACE_LISTEN)));
    // Grafana's data sources reach the services by their compose names and ports.
    assert!(read("deploy/observability/grafana-datasources.yml").contains("http://prometheus:9090"));
    assert!(read("deploy/observability/tempo-datasource.yml").contains("http://tempo:3200"));
    assert!(obs.contains("http://nats-server:8222") && core.contains("nats-server:"));
    // Scrape targets: the frontend's HTTP port, the launch scripts' worker system ports.
    let prom = read("deploy/observability/prometheus.yml");
    assert!(prom.contains(&format!("\"host.docker.internal:{}\"", defaults::HTTP_PORT)));
    assert!(prom.contains("[\"host.docker.internal:8081\", \"host.docker.internal:8082\"]"));
    let disagg = read("launch/disagg.sh");
    assert!(
        disagg.contains("PREFILL_SYSTEM_PORT:-8081") && disagg.contains("DECODE_SYSTEM_PORT:-8082")
    );
    assert!(read("launch/agg.sh").contains("DYN_SYSTEM_PORT:-8081"));
    assert!(script.contains("FRONTEND_TARGET:-127.0.0.1:8000"));
    assert!(script.contains("WORKER_TARGETS:-127.0.0.1:8081,127.0.0.1:8082"));
    run_ok(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(root().join("deploy/observability/prometheus.yml")),
    );
}
