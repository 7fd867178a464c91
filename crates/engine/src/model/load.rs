//! Weight loading through candle-core: GGUF files (Q4_1 and Q8_0 kept as loaded, Q4_0 repacked
//! exactly into Q4_1, every other format — K-quants, F16, BF16, F32 — dequantized to f32) and
//! Hugging Face safetensors directories (F32/F16/BF16), for the Llama, Mistral, Qwen2 (Q/K/V
//! bias) and Qwen3 (per-head Q/K norm) families. Q/K/V and gate/up projections are stacked so
//! each layer runs four matmuls.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::config::{HfConfig, ModelConfig, RopeScaling, RopeStyle};
use crate::kernels::{Linear, Weight, QK};
use crate::EngineError;

/// One transformer block's weights.
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// Q, K and V stacked: `(heads + 2·kv_heads) · head_dim` rows.
    pub qkv: Linear,
    /// Their bias, stacked the same way (Qwen2).
    pub qkv_bias: Option<Vec<f32>>,
    /// Per-head RMSNorm weights of Q and K, `head_dim` each (Qwen3).
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    pub o: Linear,
    pub ffn_norm: Vec<f32>,
    /// Gate and up stacked: `2 · intermediate` rows.
    pub gate_up: Linear,
    pub down: Linear,
}

/// All weights of a model plus what was loaded, for the startup log.
pub struct Weights {
    pub cfg: ModelConfig,
    pub embed: Linear,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    pub inv_freq: Vec<f32>,
    pub summary: WeightSummary,
}

/// Parameter count and tensor formats, as loaded and as used.
#[derive(Debug, Clone, Default)]
pub struct WeightSummary {
    pub params: u64,
    /// File format → tensor count.
    pub file_formats: BTreeMap<String, usize>,
    /// Bytes of weights read per decoded token.
    pub bytes_per_token: u64,
}

impl WeightSummary {
    /// e.g. `Q4_1×210, Q8_0×1, F32×61`.
    pub fn formats(&self) -> String {
        self.file_formats
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Load a `.gguf` file or a Hugging Face directory.
pub fn load(path: &Path) -> Result<Weights, EngineError> {
    if path.is_dir() {
        load_safetensors(path)
    } else {
        load_gguf(path)
    }
}

struct Gguf {
    path: PathBuf,
    file: File,
    content: gguf_file::Content,
    summary: WeightSummary,
}

impl Gguf {
    fn meta_u64(&self, key: &str) -> Option<u64> {
        let v = self.content.metadata.get(key)?;
        v.to_u64()
            .ok()
            .or_else(|| v.to_i32().ok().map(|x| x as u64))
            .or_else(|| v.to_i64().ok().map(|x| x as u64))
    }
    fn meta_f32(&self, key: &str) -> Option<f32> {
        let v = self.content.metadata.get(key)?;
        v.to_f32()
            .ok()
            .or_else(|| v.to_f64().ok().map(|x| x as f32))
    }
    fn need(&self, key: &str) -> Result<usize, EngineError> {
        self.meta_u64(key)
            .map(|v| v as usize)
            .ok_or_else(|| err(&self.path, format!("missing metadata {key}")))
    }
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }
    fn qtensor(&mut self, name: &str) -> Result<QTensor, EngineError> {
        let t = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| err(&self.path, format!("tensor {name}: {e}")))?;
        *self
            .summary
            .file_formats
            .entry(format!("{:?}", t.dtype()))
            .or_default() += 1;
        self.summary.params += t.shape().elem_count() as u64;
        Ok(t)
    }
    fn vector(&mut self, name: &str) -> Result<Vec<f32>, EngineError> {
        let t = self.qtensor(name)?;
        let path = self.path.clone();
        t.dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(&path, e))
    }
    fn linear(&mut self, name: &str) -> Result<Linear, EngineError> {
        let t = self.qtensor(name)?;
        linear_from_qtensor(&t).map_err(|e| err(&self.path, format!("{name}: {e}")))
    }
}

/// A GGUF weight matrix as the kernels take it: Q8_0 blocks as stored, Q4_1 repacked in pairs
/// of blocks (`kernels::q4_1`), Q4_0 converted to Q4_1 first, anything else dequantized to f32.
fn linear_from_qtensor(t: &QTensor) -> Result<Linear, String> {
    let dims = t.shape().dims().to_vec();
    let [n, k] = dims[..] else {
        return Err(format!("not a matrix: {dims:?}"));
    };
    let data = t.data().map_err(|e| e.to_string())?;
    let w = match t.dtype() {
        GgmlDType::Q4_1 => return Linear::q4_1(n, k, &data),
        GgmlDType::Q4_0 => return Linear::q4_1(n, k, &q4_0_to_q4_1(&data)),
        GgmlDType::Q8_0 => Weight::Q8_0(data.into_owned()),
        _ => Weight::F32(
            t.dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| e.to_string())?,
        ),
    };
    Linear::new(n, k, w)
}

/// Q4_0 (`d·(q−8)`) is Q4_1 with min `−8d`, exactly representable in f16.
fn q4_0_to_q4_1(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 18 * 20);
    for blk in data.chunks_exact(18) {
        let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]]));
        let m = half::f16::from_f32(-8.0 * d.to_f32());
        out.extend_from_slice(&blk[..2]);
        out.extend(m.to_bits().to_le_bytes());
        out.extend_from_slice(&blk[2..18]);
    }
    out
}

fn load_gguf(path: &Path) -> Result<Weights, EngineError> {
    let mut file = File::open(path).map_err(|e| err(path, e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| err(path, e))?;
    let mut g = Gguf {
        path: path.to_path_buf(),
        file,
        content,
        summary: WeightSummary::default(),
    };
    let arch = g
        .content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "llama".into());
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.need(&key("embedding_length"))?;
    let heads = g.need(&key("attention.head_count"))?;
    let embed = g.linear("token_embd.weight")?;
    let scaling = match g
        .content
        .metadata
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.to_string().ok().cloned())
        .as_deref()
    {
        Some("linear") => RopeScaling::Linear {
            factor: g.meta_f32(&key("rope.scaling.factor")).unwrap_or(1.0),
        },
        _ => RopeScaling::None,
    };
    let mut eos = vec![];
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(v) = g.meta_u64(k) {
            if !eos.contains(&(v as u32)) {
                eos.push(v as u32);
            }
        }
    }
    let (qkv_bias, qk_norm) = ModelConfig::family_traits(&arch);
    let cfg = ModelConfig {
        qkv_bias,
        qk_norm,
        architecture: arch.clone(),
        hidden,
        intermediate: g.need(&key("feed_forward_length"))?,
        layers: g.need(&key("block_count"))?,
        heads,
        kv_heads: g
            .meta_u64(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads),
        head_dim: g
            .meta_u64(&key("attention.key_length"))
            .or_else(|| g.meta_u64(&key("rope.dimension_count")))
            .map(|v| v as usize)
            .unwrap_or(hidden / heads.max(1)),
        vocab: embed.n,
        rms_eps: g
            .meta_f32(&key("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5),
        rope_theta: g.meta_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
        rope_scaling: scaling,
        // llama.cpp's converter permutes Llama-family Q/K rows for adjacent-pair RoPE; Qwen
        // weights keep Hugging Face's half-split pairing.
        rope_style: if arch.starts_with("qwen") {
            RopeStyle::Halves
        } else {
            RopeStyle::Interleaved
        },
        context_length: g.meta_u64(&key("context_length")).unwrap_or(2048) as usize,
        eos_token_ids: eos,
        bos_token_id: g.meta_u64("tokenizer.ggml.bos_token_id").map(|v| v as u32),
    };
    cfg.check().map_err(|e| err(path, e))?;
    let mut inv_freq = cfg.inv_freq();
    if g.has("rope_freqs.weight") {
        let factors = g.vector("rope_freqs.weight")?;
        for (f, s) in inv_freq.iter_mut().zip(factors) {
            *f /= s;
        }
    }
    let mut layers = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = |s: &str| format!("blk.{i}.{s}.weight");
        let qkv = vec![
            g.linear(&p("attn_q"))?,
            g.linear(&p("attn_k"))?,
            g.linear(&p("attn_v"))?,
        ];
        let gate_up = vec![g.linear(&p("ffn_gate"))?, g.linear(&p("ffn_up"))?];
        let qkv_bias = if cfg.qkv_bias {
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            let mut v = g.vector(&b("attn_q"))?;
            v.extend(g.vector(&b("attn_k"))?);
            v.extend(g.vector(&b("attn_v"))?);
            Some(v)
        } else {
            None
        };
        let qk_norm = if cfg.qk_norm {
            Some((g.vector(&p("attn_q_norm"))?, g.vector(&p("attn_k_norm"))?))
        } else {
            None
        };
        layers.push(LayerWeights {
            qkv_bias,
            qk_norm,
            attn_norm: g.vector(&p("attn_norm"))?,
            qkv: Linear::concat(qkv).map_err(|e| err(path, e))?,
            o: g.linear(&p("attn_output"))?,
            ffn_norm: g.vector(&p("ffn_norm"))?,
            gate_up: Linear::concat(gate_up).map_err(|e| err(path, e))?,
            down: g.linear(&p("ffn_down"))?,
        });
    }
    let norm = g.vector("output_norm.weight")?;
    let lm_head = if g.has("output.weight") {
        Some(g.linear("output.weight")?)
    } else {
        None
    };
    finish(cfg, embed, layers, norm, lm_head, inv_freq, g.summary)
}

fn finish(
    cfg: ModelConfig,
    embed: Linear,
    layers: Vec<LayerWeights>,
    norm: Vec<f32>,
    lm_head: Option<Linear>,
    inv_freq: Vec<f32>,
    mut summary: WeightSummary,
) -> Result<Weights, EngineError> {
    let bad = |what: &str| EngineError::WrongShape {
        tensor: what.to_string(),
    };
    let (h, kvd) = (cfg.hidden, cfg.kv_heads * cfg.head_dim);
    for l in &layers {
        if l.qkv.k != h || l.qkv.n != cfg.heads * cfg.head_dim + 2 * kvd {
            return Err(bad("attention q/k/v"));
        }
        if l.gate_up.n != 2 * cfg.intermediate || l.down.k != cfg.intermediate || l.down.n != h {
            return Err(bad("feed-forward"));
        }
        if l.o.k != cfg.heads * cfg.head_dim || l.o.n != h || l.attn_norm.len() != h {
            return Err(bad("attention output"));
        }
        if !h.is_multiple_of(QK) || !cfg.intermediate.is_multiple_of(QK) {
            return Err(bad("hidden size (must be a multiple of 32)"));
        }
        if l.qkv_bias.as_ref().is_some_and(|b| b.len() != l.qkv.n) {
            return Err(bad("attention q/k/v bias"));
        }
        if l.qk_norm
            .as_ref()
            .is_some_and(|(q, k)| q.len() != cfg.head_dim || k.len() != cfg.head_dim)
        {
            return Err(bad("attention q/k norm"));
        }
    }
    if embed.k != h || norm.len() != h {
        return Err(bad("embedding"));
    }
    let head = lm_head.as_ref().unwrap_or(&embed);
    summary.bytes_per_token = (layers
        .iter()
        .map(|l| l.qkv.bytes() + l.o.bytes() + l.gate_up.bytes() + l.down.bytes())
        .sum::<usize>()
        + head.bytes()) as u64;
    Ok(Weights {
        cfg,
        embed,
        layers,
        norm,
        lm_head,
        inv_freq,
        summary,
    })
}

fn load_safetensors(dir: &Path) -> Result<Weights, EngineError> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&cfg_path, e))?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| err(&cfg_path, e))?;
    let mut cfg = hf.to_model_config();
    if let Ok(gen) = std::fs::read_to_string(dir.join("generation_config.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&gen) {
            let ids = super::config::token_ids(v.get("eos_token_id"));
            for id in ids {
                if !cfg.eos_token_ids.contains(&id) {
                    cfg.eos_token_ids.push(id);
                }
            }
        }
    }
    cfg.check().map_err(|e| err(dir, e))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(dir, "no .safetensors files"));
    }
    let mut tensors = std::collections::HashMap::new();
    for f in &files {
        tensors.extend(candle_core::safetensors::load(f, &Device::Cpu).map_err(|e| err(f, e))?);
    }
    let mut summary = WeightSummary::default();
    let mut take = |name: &str| -> Result<(Vec<usize>, Vec<f32>), EngineError> {
        let t: Tensor = tensors
            .remove(name)
            .ok_or_else(|| err(dir, format!("missing tensor {name}")))?;
        *summary
            .file_formats
            .entry(format!("{:?}", t.dtype()))
            .or_default() += 1;
        summary.params += t.elem_count() as u64;
        let dims = t.dims().to_vec();
        let v = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(dir, format!("{name}: {e}")))?;
        Ok((dims, v))
    };
    let mut lin = |name: &str| -> Result<Linear, EngineError> {
        let (dims, v) = take(name)?;
        let [n, k] = dims[..] else {
            return Err(err(dir, format!("{name} is not a matrix")));
        };
        Linear::new(n, k, Weight::F32(v)).map_err(|e| err(dir, e))
    };
    let embed = lin("model.embed_tokens.weight")?;
    let mut layers = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        let qkv = vec![
            lin(&p("self_attn.q_proj"))?,
            lin(&p("self_attn.k_proj"))?,
            lin(&p("self_attn.v_proj"))?,
        ];
        let o = lin(&p("self_attn.o_proj"))?;
        let gate_up = vec![lin(&p("mlp.gate_proj"))?, lin(&p("mlp.up_proj"))?];
        let down = lin(&p("mlp.down_proj"))?;
        layers.push((qkv, o, gate_up, down));
    }
    let lm_head = if hf.tie_word_embeddings == Some(true) {
        None
    } else {
        lin("lm_head.weight").ok()
    };
    let mut extras = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let qkv_bias = if cfg.qkv_bias {
            let b = |s: &str| format!("model.layers.{i}.self_attn.{s}.bias");
            let mut v = take(&b("q_proj"))?.1;
            v.extend(take(&b("k_proj"))?.1);
            v.extend(take(&b("v_proj"))?.1);
            Some(v)
        } else {
            None
        };
        let qk_norm = if cfg.qk_norm {
            let n = |s: &str| format!("model.layers.{i}.self_attn.{s}.weight");
            Some((take(&n("q_norm"))?.1, take(&n("k_norm"))?.1))
        } else {
            None
        };
        extras.push((qkv_bias, qk_norm));
    }
    let mut built = Vec::with_capacity(cfg.layers);
    for (i, ((qkv, o, gate_up, down), (qkv_bias, qk_norm))) in
        layers.into_iter().zip(extras).enumerate()
    {
        let p = |s: &str| format!("model.layers.{i}.{s}.weight");
        built.push(LayerWeights {
            qkv_bias,
            qk_norm,
            attn_norm: take(&p("input_layernorm"))?.1,
            qkv: Linear::concat(qkv).map_err(|e| err(dir, e))?,
            o,
            ffn_norm: take(&p("post_attention_layernorm"))?.1,
            gate_up: Linear::concat(gate_up).map_err(|e| err(dir, e))?,
            down,
        });
    }
    let norm = take("model.norm.weight")?.1;
    let inv_freq = cfg.inv_freq();
    finish(cfg, embed, built, norm, lm_head, inv_freq, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every GGUF tensor format the loader accepts gives the matrix candle dequantizes (exactly:
    /// the repack and the dequantization are lossless).
    #[test]
    fn every_gguf_format_loads_as_candle_dequantizes_it() {
        let (n, k) = (4, 256);
        let v: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        let src = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        for dt in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
            GgmlDType::F16,
            GgmlDType::F32,
        ] {
            let q = QTensor::quantize(&src, dt).unwrap();
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let lin = linear_from_qtensor(&q).unwrap();
            assert_eq!((lin.n, lin.k), (n, k), "{dt:?}");
            assert_eq!(lin.to_f32(), want, "{dt:?}");
        }
    }
}
