//! Model hyper-parameters of the supported families (Llama, Mistral, Qwen2, Qwen3), read from
//! GGUF metadata (`<arch>.*` keys) or a Hugging Face `config.json`, what distinguishes the
//! families in the forward pass (Q/K/V bias, per-head Q/K RMSNorm, RoPE pairing), and the
//! RoPE frequency table they imply (theta, linear and llama3 scaling).

use serde::Deserialize;

/// How RoPE pairs dimensions: GGUF Llama weights are permuted for adjacent pairs
/// `(x[2i], x[2i+1])`; Hugging Face weights rotate halves `(x[i], x[i + d/2])`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Interleaved,
    Halves,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.x wavelength-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: f32,
    },
}

/// The architectures the engine runs (`general.architecture` in GGUF, the lower-cased
/// `…ForCausalLM` name of `config.json`).
pub const SUPPORTED_ARCHITECTURES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

/// Shape and numerics of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    /// Q, K and V projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// Each Q and K head is RMS-normalized (its own weight over `head_dim`) after the
    /// projection and before RoPE (Qwen3).
    pub qk_norm: bool,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    pub context_length: usize,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} attention heads cannot be grouped over {} KV heads",
                self.heads, self.kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2)
            || self.hidden == 0
            || self.layers == 0
            || self.vocab == 0
        {
            return Err("degenerate model shape".into());
        }
        if !SUPPORTED_ARCHITECTURES.contains(&self.architecture.as_str()) {
            return Err(format!(
                "architecture {:?} is not supported (supported: {})",
                self.architecture,
                SUPPORTED_ARCHITECTURES.join(", ")
            ));
        }
        Ok(())
    }

    /// The family traits of `architecture` (already lower case): (Q/K/V bias, Q/K norm).
    pub fn family_traits(architecture: &str) -> (bool, bool) {
        match architecture {
            "qwen2" => (true, false),
            "qwen3" => (false, true),
            _ => (false, false),
        }
    }

    /// Inverse frequency of each rotated pair.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f32 / d as f32);
                match self.rope_scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    } => {
                        let low_wl = original_max_position / low_freq_factor;
                        let high_wl = original_max_position / high_freq_factor;
                        let wl = 2.0 * std::f32::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let s = (original_max_position / wl - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - s) * f / factor + s * f
                        }
                    }
                }
            })
            .collect()
    }
}

/// The fields of a Hugging Face `config.json` the engine uses.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub vocab_size: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f32,
    #[serde(default)]
    pub rope_theta: Option<f32>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5 writes theta and scaling here instead (`rope_theta`, `rope_type`, …).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Q/K/V (and output) projection bias: Qwen3 and some Llama variants say so; Qwen2 has
    /// Q/K/V bias without saying it.
    #[serde(default)]
    pub attention_bias: Option<bool>,
}

fn default_eps() -> f32 {
    1e-5
}
/// RoPE theta when a config names none.
const DEFAULT_THETA: f32 = 10_000.0;

impl HfConfig {
    pub fn to_model_config(&self) -> ModelConfig {
        let arch = self
            .architectures
            .first()
            .map(|a| a.trim_end_matches("ForCausalLM").to_ascii_lowercase())
            .unwrap_or_else(|| "llama".into());
        let eos = token_ids(self.eos_token_id.as_ref());
        let (bias, qk_norm) = ModelConfig::family_traits(&arch);
        ModelConfig {
            qkv_bias: bias || self.attention_bias == Some(true),
            qk_norm,
            architecture: arch,
            hidden: self.hidden_size,
            intermediate: self.intermediate_size,
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            vocab: self.vocab_size,
            rms_eps: self.rms_norm_eps,
            rope_theta: self
                .rope_theta
                .or_else(|| {
                    let p = self.rope_parameters.as_ref()?;
                    p.get("rope_theta")?.as_f64().map(|x| x as f32)
                })
                .unwrap_or(DEFAULT_THETA),
            rope_scaling: parse_hf_scaling(
                self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()),
            ),
            rope_style: RopeStyle::Halves,
            context_length: self.max_position_embeddings.unwrap_or(2048),
            eos_token_ids: eos,
            bos_token_id: self.bos_token_id,
        }
    }
}

/// A token id or a list of them (`eos_token_id` in `config.json` / `generation_config.json`).
pub fn token_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

fn parse_hf_scaling(v: Option<&serde_json::Value>) -> RopeScaling {
    let Some(v) = v else { return RopeScaling::None };
    let get = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("");
    match kind {
        "linear" => RopeScaling::Linear {
            factor: get("factor").unwrap_or(1.0),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: get("factor").unwrap_or(8.0),
            low_freq_factor: get("low_freq_factor").unwrap_or(1.0),
            high_freq_factor: get("high_freq_factor").unwrap_or(4.0),
            original_max_position: get("original_max_position_embeddings").unwrap_or(8192.0),
        },
        _ => RopeScaling::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen_configs_and_an_unsupported_architecture() {
        let qwen3: HfConfig = serde_json::from_str(
            r#"{"architectures":["Qwen3ForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,
            "vocab_size":100,"rope_theta":1000000.0,"attention_bias":false,
            "tie_word_embeddings":true,"eos_token_id":151645}"#,
        )
        .unwrap();
        let m = qwen3.to_model_config();
        m.check().unwrap();
        assert_eq!(
            (m.architecture.as_str(), m.qkv_bias, m.qk_norm),
            ("qwen3", false, true)
        );
        assert_eq!(m.head_dim, 32, "explicit, not hidden / heads");
        assert_eq!(m.rope_theta, 1e6);
        let qwen2: HfConfig = serde_json::from_str(
            r#"{"architectures":["Qwen2ForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "vocab_size":100}"#,
        )
        .unwrap();
        let m = qwen2.to_model_config();
        assert_eq!((m.qkv_bias, m.qk_norm), (true, false));
        let mut gemma = m.clone();
        gemma.architecture = "gemma2".into();
        let e = gemma.check().unwrap_err();
        assert!(
            e.contains("\"gemma2\"") && e.contains("llama, mistral, qwen2, qwen3"),
            "{e}"
        );
    }

    #[test]
    fn hf_config_with_llama3_scaling() {
        let cfg: HfConfig = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
            "rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192},
            "eos_token_id":[1,2]}"#,
        )
        .unwrap();
        let m = cfg.to_model_config();
        m.check().unwrap();
        assert_eq!(m.head_dim, 16);
        assert_eq!(m.eos_token_ids, vec![1, 2]);
        let f = m.inv_freq();
        assert_eq!(f[0], 1.0, "high frequencies are not scaled");
        let unscaled = 1.0 / 500000f32.powf(14.0 / 16.0);
        assert!(
            (f[7] - unscaled / 8.0).abs() < 1e-12,
            "low frequencies divided by factor"
        );
    }
}
