//! The tokenizer built from the default model's GGUF matches llama.cpp's token ids for the
//! reference texts in `tests/fixtures/smollm2-tokenizer.json` (provenance beside it), both
//! ways, and the incremental decoder reproduces the text token by token.

use std::path::PathBuf;
use std::sync::Arc;

use dynamo_preprocessor::detok::IncrementalDecoder;
use dynamo_preprocessor::model::{LoadedModel, ModelSource};

fn model() -> LoadedModel {
    LoadedModel::load(ModelSource::Gguf(dynamo_test_support::default_model())).unwrap()
}

fn reference() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/smollm2-tokenizer.json");
    let text =
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn gguf_tokenizer_matches_reference_ids() {
    let model = model();
    assert_eq!(model.context_length, 8192);
    let tok = Arc::new(model.tokenizer);
    let cases = reference()["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "encode {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "decode {text:?}");
        let mut dec = IncrementalDecoder::new(tok.clone(), false);
        let mut streamed = String::new();
        for id in &want {
            let piece = dec.push(*id);
            assert!(!piece.contains('\u{FFFD}'), "broken UTF-8 in {text:?}");
            streamed.push_str(&piece);
        }
        streamed.push_str(&dec.flush());
        assert_eq!(streamed, text, "incremental decode {text:?}");
    }
}

#[test]
fn chat_template_renders_smollm_prompt() {
    let model = model();
    let tmpl = model.chat_template.expect("GGUF carries a chat template");
    let msgs = vec![serde_json::json!({"role": "user", "content": "Hi"})];
    let prompt = tmpl.render(&msgs, None, true, None).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = model.tokenizer.encode(&prompt).unwrap();
    assert_eq!(ids[0], 1, "<|im_start|> is one special token");
    assert_eq!(model.tokenizer.eos_ids(), &[2]);
}
