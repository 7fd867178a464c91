//! Tidy checks run as ordinary tests: module docs and file size, no debugging leftovers, the
//! dependency table of `docs/architecture.md` against every manifest (normal and dev
//! dependencies apart), NATS only in the runtime, no environment reads in library sources,
//! `unsafe` only in allowlisted files, and the names users see against the project's own
//! reference pages in `docs/` and the binaries' `--help`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use dynamo_protocols::names::{self, env};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
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

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn every_file_has_a_module_doc_and_fits_one_sitting() {
    const MAX_LINES: usize = 600;
    let mut bad = vec![];
    for f in all_rust() {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.starts_with("//!") {
            bad.push(format!("{}: does not open with a //! module doc", rel(&f)));
        }
        let n = text.lines().count();
        if n > MAX_LINES {
            bad.push(format!(
                "{}: {n} lines (max {MAX_LINES}); split it",
                rel(&f)
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
                bad.push(format!("{}: contains {b}", rel(&f)));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A row of the architecture page's package table.
#[derive(Debug)]
struct Allowed {
    package: String,
    deps: BTreeSet<String>,
    dev_extra: BTreeSet<String>,
}

fn backticked(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Path → allowed edges, from `docs/architecture.md`.
fn architecture_table() -> BTreeMap<String, Allowed> {
    let mut rows = BTreeMap::new();
    for line in read("docs/architecture.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 7 || !cells[1].starts_with('`') || !cells[2].starts_with('`') {
            continue;
        }
        rows.insert(
            cells[1].trim_matches('`').to_string(),
            Allowed {
                package: cells[2].trim_matches('`').to_string(),
                deps: backticked(cells[4]),
                dev_extra: backticked(cells[5]),
            },
        );
    }
    assert!(rows.len() >= 10, "read the package table: {rows:?}");
    rows
}

/// The workspace packages a manifest names, per section (`dependencies`, `dev-dependencies`,
/// `build-dependencies`).
fn manifest_deps(toml: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        let name = line.split(['=', ' ', '.']).next().unwrap_or("");
        if section.ends_with("dependencies") && !name.is_empty() {
            out.entry(section.clone())
                .or_default()
                .insert(name.to_string());
        }
    }
    out
}

fn workspace_members() -> Vec<String> {
    let toml = read("Cargo.toml");
    let start = toml.find("members = [").expect("workspace members");
    let end = start + toml[start..].find(']').unwrap();
    toml[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn dependency_directions_follow_the_architecture() {
    let table = architecture_table();
    let mut bad = vec![];
    for member in workspace_members() {
        let Some(allowed) = table.get(&member) else {
            bad.push(format!(
                "{member} is not in docs/architecture.md's package table"
            ));
            continue;
        };
        let toml = read(&format!("{member}/Cargo.toml"));
        assert!(
            toml.contains(&format!("name = \"{}\"", allowed.package)),
            "{member} is not package {}",
            allowed.package
        );
        for (section, names) in manifest_deps(&toml) {
            for name in names.iter().filter(|n| n.starts_with("dynamo-")) {
                let ok = allowed.deps.contains(name)
                    || (section == "dev-dependencies" && allowed.dev_extra.contains(name));
                if !ok {
                    bad.push(format!("{member} [{section}] names {name}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "edges docs/architecture.md does not allow:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_runtime_talks_to_nats() {
    let mut bad = vec![];
    for member in workspace_members() {
        let deps = manifest_deps(&read(&format!("{member}/Cargo.toml")));
        // The e2e harness holds the raw peer of hostile-peer tests (tests/src/peer.rs).
        if member != "crates/runtime"
            && member != "tests"
            && deps.values().any(|d| d.contains("async-nats"))
        {
            bad.push(member);
        }
    }
    for f in all_rust() {
        let text = std::fs::read_to_string(&f).unwrap();
        let r = rel(&f);
        if !r.starts_with("crates/runtime/")
            && r != "tests/src/peer.rs"
            && text.contains(concat!("async_", "nats"))
        {
            bad.push(r);
        }
    }
    assert!(bad.is_empty(), "NATS outside the runtime: {bad:?}");
}

/// Library sources that may read the environment, and why.
const ENV_ALLOWED: &[&str] = &[
    // Test-only helpers: a test picks its nats-server binary with NATS_SERVER_BIN, and finds
    // the model cache through DYN_MODEL_CACHE / HOME as the binaries do.
    "crates/test-support/src/nats.rs",
    "crates/test-support/src/model.rs",
];

#[test]
fn libraries_never_read_the_environment() {
    let mut bad = vec![];
    for f in all_rust() {
        let r = rel(&f);
        let lib_src = r.starts_with("crates/") && r.split('/').nth(2) == Some("src");
        if !lib_src || ENV_ALLOWED.contains(&r.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for needle in [concat!("env::", "var("), concat!("env::", "var_os(")] {
            if text.contains(needle) {
                bad.push(format!("{r}: {needle}"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "libraries read the environment:\n{}",
        bad.join("\n")
    );
}

/// Files that may opt out of the workspace's `unsafe_code = "deny"`, each with the reason it
/// cannot do without: a file here that no longer needs `unsafe` fails the test until it is
/// removed.
const UNSAFE_ALLOWED: &[&str] = &[
    // AVX2 intrinsics of the matrix kernels.
    "crates/engine/src/kernels/avx2.rs",
    // The compute pool hands borrowed slices to its threads for one call.
    "crates/engine/src/kernels/pool.rs",
    // `_mm_prefetch` of the index's hash table.
    "crates/kv-router/src/indexer/table.rs",
    // `libc::kill` to signal a child process in tests.
    "crates/test-support/src/process.rs",
    // CUDA kernel launches (the driver cannot check arguments against a kernel's signature)
    // and cudarc's probes for the driver and NVRTC libraries.
    "crates/engine/src/executor/device/cuda.rs",
];

#[test]
fn unsafe_only_in_allowlisted_files() {
    let mut bad = vec![];
    let mut seen = BTreeSet::new();
    for f in all_rust() {
        let r = rel(&f);
        let text = std::fs::read_to_string(&f).unwrap();
        let uses = text
            .lines()
            .map(str::trim_start)
            .filter(|l| !l.starts_with("//"))
            .any(|l| l.contains(concat!("unsafe", " ")) || l.contains(concat!("unsafe", "_code")));
        if uses {
            seen.insert(r.clone());
            if !UNSAFE_ALLOWED.contains(&r.as_str()) {
                bad.push(format!("{r} uses unsafe"));
            }
        }
    }
    for f in UNSAFE_ALLOWED {
        if !seen.contains(*f) {
            bad.push(format!(
                "{f} no longer uses unsafe: take it off the allowlist"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// `--help` of one of the workspace's binaries.
fn help(bin: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(bin);
    let out = std::process::Command::new(&p)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn user_visible_names_match_the_docs() {
    let metrics = read("docs/observability/metrics.md");
    for name in names::ALL_METRICS {
        assert!(
            metrics.contains(&format!("`{name}`")),
            "metric {name} is not in docs/observability/metrics.md"
        );
    }
    let config = read("docs/configuration.md");
    for var in names::ALL_ENV {
        assert!(
            config.contains(&format!("`{var}`")),
            "env var {var} is not in docs/configuration.md"
        );
    }
    let tracing = read("docs/observability/tracing.md");
    for span in names::ALL_SPANS {
        assert!(
            tracing.contains(&format!("`{span}`")),
            "span {span} is not in docs/observability/tracing.md"
        );
    }
    // The binaries' --help shows the env vars they honour.
    let fe = help("dynamo-frontend");
    for v in [
        env::DYN_HTTP_PORT,
        env::DYN_HTTP_HOST,
        env::NATS_SERVER,
        env::DYN_ROUTER_MODE,
        env::DYN_LOG,
        env::DYN_LOGGING_JSONL,
        env::DYN_HTTP_BODY_LIMIT_MB,
        env::DYN_NAMESPACE,
        env::DYN_MODEL_CACHE,
        env::DYN_GRACEFUL_SHUTDOWN_TIMEOUT,
        env::OTEL_EXPORT_ENABLED,
        env::OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        env::OTEL_SERVICE_NAME,
    ] {
        assert!(fe.contains(v), "dynamo-frontend --help lacks {v}");
    }
    assert!(
        !fe.contains(env::DYN_SYSTEM_PORT),
        "the frontend has no system port flag"
    );
    let workers = [
        env::DYN_SYSTEM_PORT,
        env::DYN_SYSTEM_HOST,
        env::DYN_SYSTEM_USE_ENDPOINT_HEALTH_STATUS,
        env::DYN_SYSTEM_STARTING_HEALTH_STATUS,
        env::NATS_SERVER,
        env::DYN_NAMESPACE,
        env::DYN_MODEL_CACHE,
        env::DYN_LOGGING_JSONL,
    ];
    let mk = help("dynamo-mocker");
    for v in workers.iter().chain(&["--speedup-ratio", "--max-num-seqs"]) {
        assert!(mk.contains(v), "dynamo-mocker --help lacks {v}");
    }
    let wk = help("dynamo-worker");
    let worker_flags = [
        "--page-size",
        "--max-running-requests",
        "--max-total-tokens",
        "--chunked-prefill-size",
        "--context-length",
        "--threads",
        "--device",
        "--kernels",
        env::DYN_ENGINE_KERNELS,
    ];
    for v in workers.iter().chain(&worker_flags) {
        assert!(wk.contains(v), "dynamo-worker --help lacks {v}");
    }
    // Every flag has help text: no `--flag <VALUE>` line without a description.
    for (bin, text) in [
        ("dynamo-frontend", &fe),
        ("dynamo-mocker", &mk),
        ("dynamo-worker", &wk),
    ] {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if t.starts_with("--") && !t.starts_with("--help") && !t.starts_with("--version") {
                // Long help puts the description on the next line; `[default: …]` or
                // `[env: …]` there means there is none.
                let next = lines.get(i + 1).map_or("", |n| n.trim());
                let described = t
                    .split_once("  ")
                    .is_some_and(|(_, d)| !d.trim().is_empty())
                    || (!next.is_empty() && !next.starts_with('[') && !next.starts_with('-'));
                assert!(described, "{bin} --help: {t:?} has no description");
            }
        }
    }
}
