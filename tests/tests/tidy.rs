//! Tidy checks run as ordinary tests: module docs, file size, no debugging leftovers, the
//! dependency directions of ARCHITECTURE.md, and user-visible names checked against
//! `../shared/spec`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

fn all_rust() -> Vec<PathBuf> {
    let mut v = vec![];
    for d in ["crates", "components", "tests"] {
        rust_files(&root().join(d), &mut v);
    }
    assert!(v.len() > 20, "found the sources");
    v
}

#[test]
fn every_file_has_a_module_doc_and_fits_one_sitting() {
    const MAX_LINES: usize = 600;
    let mut bad = vec![];
    for f in all_rust() {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.starts_with("//!") {
            bad.push(format!(
                "{}: does not open with a //! module doc",
                f.display()
            ));
        }
        let n = text.lines().count();
        if n > MAX_LINES {
            bad.push(format!(
                "{}: {n} lines (max {MAX_LINES}); split it",
                f.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn no_debugging_leftovers() {
    let banned = [
        concat!("dbg", "!("),
        concat!("todo", "!("),
        concat!("unimplemented", "!("),
    ];
    let mut bad = vec![];
    for f in all_rust() {
        let text = std::fs::read_to_string(&f).unwrap();
        for b in banned {
            if text.contains(b) {
                bad.push(format!("{}: contains {b}", f.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Workspace crates each package may depend on (ARCHITECTURE.md's table; the mocker binary,
/// like the worker, may use `llm` for model-card loading).
const ALLOWED: &[(&str, &[&str])] = &[
    ("crates/telemetry", &[]),
    ("crates/protocols", &[]),
    ("crates/runtime", &["dynamo-telemetry"]),
    ("crates/mocker", &["dynamo-telemetry", "dynamo-protocols"]),
    (
        "crates/llm",
        &["dynamo-runtime", "dynamo-telemetry", "dynamo-protocols"],
    ),
    ("crates/test-support", &[]),
    ("components/trace", &["dynamo-telemetry"]),
    (
        "components/frontend",
        &[
            "dynamo-llm",
            "dynamo-runtime",
            "dynamo-telemetry",
            "dynamo-protocols",
        ],
    ),
    (
        "components/mocker",
        &[
            "dynamo-mocker",
            "dynamo-runtime",
            "dynamo-protocols",
            "dynamo-telemetry",
            "dynamo-llm",
        ],
    ),
    ("crates/engine", &["dynamo-telemetry", "dynamo-protocols"]),
    (
        "components/worker",
        &[
            "dynamo-engine",
            "dynamo-runtime",
            "dynamo-protocols",
            "dynamo-telemetry",
            "dynamo-llm",
        ],
    ),
    (
        "tests",
        &[
            "dynamo-test-support",
            "dynamo-protocols",
            "dynamo-engine",
            "dynamo-llm",
            "dynamo-runtime",
            "dynamo-telemetry",
        ],
    ),
];

#[test]
fn dependency_directions_follow_the_architecture() {
    let mut bad = vec![];
    for (dir, allowed) in ALLOWED {
        let toml = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).unwrap();
        for line in toml.lines() {
            let name = line.split(['=', ' ', '.']).next().unwrap_or("");
            if name.starts_with("dynamo-") && !allowed.contains(&name) {
                bad.push(format!("{dir} depends on {name}"));
            }
        }
    }
    assert!(bad.is_empty(), "forbidden edges:\n{}", bad.join("\n"));
}

#[test]
fn user_visible_names_match_the_spec() {
    let spec = root().join("../shared/spec");
    let metrics_spec = std::fs::read_to_string(spec.join("dynamo-metrics.md"))
        .expect("../shared/spec/dynamo-metrics.md beside the checkout");
    let mut all_spec =
        std::fs::read_to_string(root().join("../shared/ARCHITECTURE.md")).unwrap_or_default();
    for e in std::fs::read_dir(&spec).unwrap().flatten() {
        all_spec.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    // Metric families may be listed in the spec with a shared prefix, e.g. `…_model_max_num_seqs`
    // after `dynamo_frontend_model_total_kv_blocks`; check the distinctive suffix then.
    for name in dynamo_protocols::names::ALL_METRICS {
        let short = name
            .strip_prefix("dynamo_frontend_")
            .or_else(|| name.strip_prefix("dynamo_component_"))
            .or_else(|| name.strip_prefix("dynamo_router_"))
            .unwrap();
        assert!(
            metrics_spec.contains(name) || metrics_spec.contains(&format!("_{short}`")),
            "metric {name} is not in the spec"
        );
    }
    for var in dynamo_protocols::names::ALL_ENV {
        assert!(all_spec.contains(var), "env var {var} is not in the spec");
    }
    // And the binaries' --help shows the env vars they honour.
    let help = |bin: &str| {
        let exe = std::env::current_exe().unwrap();
        let p = exe.parent().unwrap().parent().unwrap().join(bin);
        let out = std::process::Command::new(&p)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let fe = help("dynamo-frontend");
    for v in [
        "DYN_HTTP_PORT",
        "NATS_SERVER",
        "DYN_ROUTER_MODE",
        "DYN_LOG",
        "DYN_LOGGING_JSONL",
        "DYN_HTTP_BODY_LIMIT_MB",
        "OTEL_EXPORT_ENABLED",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ] {
        assert!(fe.contains(v), "dynamo-frontend --help lacks {v}");
    }
    assert!(
        !fe.contains("DYN_SYSTEM_PORT"),
        "the frontend has no system port flag"
    );
    let mk = help("dynamo-mocker");
    for v in [
        "DYN_SYSTEM_PORT",
        "NATS_SERVER",
        "DYN_SYSTEM_STARTING_HEALTH_STATUS",
        "--speedup-ratio",
        "--max-num-seqs",
    ] {
        assert!(mk.contains(v), "dynamo-mocker --help lacks {v}");
    }
    let wk = help("dynamo-worker");
    for v in [
        "DYN_SYSTEM_PORT",
        "NATS_SERVER",
        "DYN_LOGGING_JSONL",
        "--page-size",
        "--max-running-requests",
        "--max-total-tokens",
        "--chunked-prefill-size",
        "--context-length",
        "--threads",
        "--device",
    ] {
        assert!(wk.contains(v), "dynamo-worker --help lacks {v}");
    }
}
