//! Models as the frontend and workers see them: where a model comes from (a GGUF file, a
//! Hugging Face directory, or the default name resolved through the model cache), what is
//! loaded from it for preprocessing (tokenizer, chat template, context length, EOS ids), and
//! the lighter [`ModelInfo`] (name and context length only) for processes that never tokenize.
//! Fetching the default model when it is not cached is the binaries' job (`dynamo-common`).

pub mod default;
pub mod gguf;

use std::path::{Path, PathBuf};

use crate::template::{ChatTemplate, TemplateError};
use crate::tokenizer::{Tokenizer, TokenizerError};

pub use default::{
    default_model_path, DEFAULT_MODEL_FILE, DEFAULT_MODEL_HF_ID, DEFAULT_MODEL_NAME,
};
pub use gguf::GgufMetadata;

/// Why a model could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {0:?} not found: give a .gguf file, a Hugging Face directory (config.json + tokenizer.json) or `SmolLM2-135M-Instruct`")]
    NotFound(String),
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("bad GGUF file {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("bad model config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("default model {name} is not in the model cache ({path}); fetch it first")]
    NotCached { name: String, path: PathBuf },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// A located model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// The model cache used when none is configured: `$HOME/.cache/dynamo/models`.
pub fn default_cache_dir(home: Option<std::ffi::OsString>) -> PathBuf {
    home.map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".cache/dynamo/models")
}

/// Whether `spec` names the default model.
pub fn is_default_name(spec: &str) -> bool {
    spec == DEFAULT_MODEL_NAME || spec == DEFAULT_MODEL_HF_ID
}

/// Find a model: an existing path, or the default name if it is in `cache_dir`
/// ([`ModelError::NotCached`] when it is not, so the caller can fetch it and ask again).
pub fn resolve(spec: &str, cache_dir: &Path) -> Result<ModelSource, ModelError> {
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(ModelSource::Gguf(p.to_path_buf()));
    }
    if p.is_dir() {
        if p.join("tokenizer.json").is_file() {
            return Ok(ModelSource::HfDir(p.to_path_buf()));
        }
        return Err(ModelError::NotFound(format!(
            "{spec} (directory without tokenizer.json)"
        )));
    }
    if is_default_name(spec) {
        let cached = default_model_path(cache_dir);
        if cached.is_file() {
            return Ok(ModelSource::Gguf(cached));
        }
        return Err(ModelError::NotCached {
            name: DEFAULT_MODEL_NAME.to_string(),
            path: cached,
        });
    }
    Err(ModelError::NotFound(spec.to_string()))
}

/// Everything preprocessing needs from a model.
pub struct LoadedModel {
    pub source: ModelSource,
    /// A display name (from the file's metadata or directory name).
    pub name: String,
    pub context_length: u32,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
}

/// What a process that never tokenizes needs from a model: its display name and context
/// length, read from GGUF metadata or `config.json` without building a tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// A display name (from the file's metadata or the directory name).
    pub name: String,
    pub context_length: u32,
}

/// Context length when the model does not state one.
const FALLBACK_CONTEXT: u32 = 2048;

impl ModelInfo {
    pub fn read(source: &ModelSource) -> Result<Self, ModelError> {
        match source {
            ModelSource::Gguf(path) => Ok(Self::from_gguf(path, &GgufMetadata::read(path)?)),
            ModelSource::HfDir(dir) => Ok(Self::from_hf_config(
                dir,
                &read_json(&dir.join("config.json"))?,
            )),
        }
    }

    fn from_gguf(path: &Path, md: &GgufMetadata) -> Self {
        ModelInfo {
            name: md
                .get("general.name")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| file_stem(path)),
            context_length: md.context_length().map_or(FALLBACK_CONTEXT, |n| n as u32),
        }
    }

    fn from_hf_config(dir: &Path, cfg: &serde_json::Value) -> Self {
        ModelInfo {
            name: file_stem(dir),
            context_length: cfg
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map_or(FALLBACK_CONTEXT, |n| n as u32),
        }
    }
}

impl LoadedModel {
    pub fn load(source: ModelSource) -> Result<Self, ModelError> {
        match &source {
            ModelSource::Gguf(path) => {
                let md = GgufMetadata::read(path)?;
                let tokenizer = Tokenizer::from_gguf(&md)?;
                let ModelInfo {
                    name,
                    context_length,
                } = ModelInfo::from_gguf(path, &md);
                let chat_template = md
                    .get("tokenizer.chat_template")
                    .and_then(|v| v.as_str())
                    .map(|t| ChatTemplate::new(t, tokenizer.bos_text(), tokenizer.eos_text()))
                    .transpose()?;
                Ok(LoadedModel {
                    source,
                    name,
                    context_length,
                    tokenizer,
                    chat_template,
                })
            }
            ModelSource::HfDir(dir) => {
                let cfg = read_json(&dir.join("config.json"))?;
                let tok_cfg = read_json(&dir.join("tokenizer_config.json")).ok();
                let tokenizer = Tokenizer::from_hf_dir(dir, &cfg, tok_cfg.as_ref())?;
                let ModelInfo {
                    name,
                    context_length,
                } = ModelInfo::from_hf_config(dir, &cfg);
                let template = tok_cfg
                    .as_ref()
                    .and_then(|c| c.get("chat_template"))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
                    .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
                let chat_template = template
                    .map(|t| ChatTemplate::new(&t, tokenizer.bos_text(), tokenizer.eos_text()))
                    .transpose()?;
                Ok(LoadedModel {
                    name,
                    source,
                    context_length,
                    tokenizer,
                    chat_template,
                })
            }
        }
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| p.display().to_string())
}

fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
