//! Where tests find the default model: the model cache (`DYN_MODEL_CACHE`, else
//! `~/.cache/dynamo/models`, the binaries' default) that `./tests/run.sh` fills.

use std::path::PathBuf;

/// The model cache the tests and the binaries they start use.
pub fn model_cache() -> PathBuf {
    std::env::var_os("DYN_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dynamo/models")
        })
}

/// The default model's GGUF in the cache (the file `dynamo_preprocessor::model::default_model_path`
/// names); a loud failure naming the command that fetches it.
pub fn default_model() -> PathBuf {
    let p = model_cache().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: ./tests/run.sh fetches it",
        p.display()
    );
    p
}
