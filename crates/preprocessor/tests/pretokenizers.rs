//! The pre-tokenizers a GGUF's `tokenizer.ggml.pre` selects, against Hugging Face
//! `tokenizers`: for Qwen2/Qwen3 (`qwen2`: digits one by one) and Llama 3 (`llama-bpe`: digits
//! in groups of up to three), a tokenizer-only GGUF and the ids `tokenizers` gives with the
//! pre-tokenizer that family's tokenizer.json declares, on the same vocabulary and merges
//! (`fixtures/pretok/generate.py` wrote both). Control tokens in the text are matched whole.

use std::path::{Path, PathBuf};

use dynamo_preprocessor::model::GgufMetadata;
use dynamo_preprocessor::tokenizer::Tokenizer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pretok")
}

#[test]
fn qwen2_and_llama3_pre_tokenizers_encode_as_hugging_face_does() {
    let text = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (pre, cases) in reference.as_object().unwrap() {
        let md = GgufMetadata::read(&fixtures().join(format!("{pre}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&md).unwrap();
        for case in cases.as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text).unwrap(), want, "{pre}: {text:?}");
            assert_eq!(tok.decode(&want, false).unwrap(), text, "{pre}: decode");
        }
    }
}
