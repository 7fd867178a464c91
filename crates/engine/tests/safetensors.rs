//! The Hugging Face path: the default GGUF model is written out as a safetensors directory
//! (dequantized, Q/K rows put back in Hugging Face order, BF16 / F16 / F32 tensors, a
//! `config.json`), loaded back through the safetensors loader, and must predict what the GGUF
//! model predicts.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use dynamo_engine::kernels::{ComputePool, Linear};
use dynamo_engine::kv::KvCache;
use dynamo_engine::model::{load, Logits, Model, Scratch, SeqInput, Weights};

fn gguf_path() -> PathBuf {
    dynamo_test_support::default_model()
}

/// GGUF stores Q and K rows permuted for adjacent-pair RoPE; Hugging Face rotates halves.
fn unpermute(w: &[f32], heads: usize, hd: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for p in 0..2 {
                let src = (h * hd + 2 * i + p) * k;
                let dst = (h * hd + p * (hd / 2) + i) * k;
                out[dst..dst + k].copy_from_slice(&w[src..src + k]);
            }
        }
    }
    out
}

fn tensor(v: Vec<f32>, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn export(w: &Weights, dir: &std::path::Path) {
    let c = &w.cfg;
    let (hd, h) = (c.head_dim, c.hidden);
    let mut t = HashMap::new();
    let mat = |l: &Linear, r0: usize, r1: usize| l.to_f32()[r0 * l.k..r1 * l.k].to_vec();
    t.insert(
        "model.embed_tokens.weight".to_string(),
        tensor(w.embed.to_f32(), &[c.vocab, h], DType::BF16),
    );
    t.insert(
        "model.norm.weight".into(),
        tensor(w.norm.clone(), &[h], DType::F32),
    );
    for (i, l) in w.layers.iter().enumerate() {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let (qn, kvn) = (c.heads * hd, c.kv_heads * hd);
        let q = unpermute(&mat(&l.qkv, 0, qn), c.heads, hd, h);
        let k = unpermute(&mat(&l.qkv, qn, qn + kvn), c.kv_heads, hd, h);
        let v = mat(&l.qkv, qn + kvn, qn + 2 * kvn);
        t.insert(p("self_attn.q_proj"), tensor(q, &[qn, h], DType::F16));
        t.insert(p("self_attn.k_proj"), tensor(k, &[kvn, h], DType::F16));
        t.insert(p("self_attn.v_proj"), tensor(v, &[kvn, h], DType::F32));
        t.insert(
            p("self_attn.o_proj"),
            tensor(l.o.to_f32(), &[h, qn], DType::BF16),
        );
        let gi = c.intermediate;
        t.insert(
            p("mlp.gate_proj"),
            tensor(mat(&l.gate_up, 0, gi), &[gi, h], DType::F32),
        );
        t.insert(
            p("mlp.up_proj"),
            tensor(mat(&l.gate_up, gi, 2 * gi), &[gi, h], DType::F32),
        );
        t.insert(
            p("mlp.down_proj"),
            tensor(l.down.to_f32(), &[h, gi], DType::F32),
        );
        t.insert(
            p("input_layernorm"),
            tensor(l.attn_norm.clone(), &[h], DType::F32),
        );
        t.insert(
            p("post_attention_layernorm"),
            tensor(l.ffn_norm.clone(), &[h], DType::F32),
        );
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads, "vocab_size": c.vocab, "rms_norm_eps": c.rms_eps,
        "rope_theta": c.rope_theta, "max_position_embeddings": c.context_length,
        "tie_word_embeddings": true, "eos_token_id": 2, "bos_token_id": 1
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

fn greedy(model: &Model, prompt: &[u32], steps: usize, pool: &ComputePool) -> Vec<u32> {
    let c = &model.w.cfg;
    let mut kv = KvCache::new(c.layers, 8, 16, c.kv_heads * c.head_dim);
    let pages: Vec<u32> = (0..8).collect();
    let mut s = Scratch::default();
    let mut toks = prompt.to_vec();
    let mut start = 0;
    for _ in 0..steps {
        let inp = [SeqInput {
            tokens: &toks[start..],
            start,
            pages: &pages,
            logits: Logits::Last,
        }];
        let logits = model.forward(&mut kv, &inp, &mut s, pool);
        start = toks.len();
        toks.push(dynamo_engine::sampling::argmax(&logits));
    }
    toks[prompt.len()..].to_vec()
}

#[test]
fn safetensors_directory_predicts_like_the_gguf() {
    let gguf = load(&gguf_path()).expect("default model cached (tests/run.sh fetches it)");
    let dir = tempfile_dir();
    export(&gguf, &dir);
    let hf = load(&dir).unwrap();
    assert_eq!(hf.cfg.rope_style, dynamo_engine::model::RopeStyle::Halves);
    assert!(
        hf.summary.file_formats.contains_key("BF16") && hf.summary.file_formats.contains_key("F16")
    );
    let pool = ComputePool::new(2).unwrap();
    // "The capital of France is": llama.cpp continues " Paris.\n\n" (ids 7042, 30, 198, 198)
    // with top-2 gaps above 1.1 at each of these steps.
    let prompt = [504, 3575, 282, 4649, 314];
    let a = greedy(&Model { w: gguf }, &prompt, 4, &pool);
    let b = greedy(&Model { w: hf }, &prompt, 4, &pool);
    assert_eq!(a, vec![7042, 30, 198, 198]);
    assert_eq!(b, a, "safetensors and GGUF disagree");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("dynamo-engine-st-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
