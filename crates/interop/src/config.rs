//! Hugging Face `config.json` for GPT-2 and Llama, and its mapping to and from [`GptConfig`].
//!
//! Only the keys that change the computation are modelled; the many others in a real
//! `config.json` (token ids, dropout probabilities, generation settings) are ignored on import.

use std::path::Path;

use hyperclone_model::{GptConfig, MlpKind, NormKind, Positional};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::InteropError;

/// The Hugging Face architectures we read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HfArchitecture {
    /// `GPT2LMHeadModel` (`model_type = "gpt2"`).
    Gpt2,
    /// `LlamaForCausalLM` (`model_type = "llama"`).
    Llama,
}

impl HfArchitecture {
    /// The `architectures` entry transformers uses for this model.
    pub fn class_name(self) -> &'static str {
        match self {
            HfArchitecture::Gpt2 => "GPT2LMHeadModel",
            HfArchitecture::Llama => "LlamaForCausalLM",
        }
    }

    /// The `model_type` value.
    pub fn model_type(self) -> &'static str {
        match self {
            HfArchitecture::Gpt2 => "gpt2",
            HfArchitecture::Llama => "llama",
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_gelu_new() -> String {
    "gelu_new".to_string()
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_silu() -> String {
    "silu".to_string()
}
fn default_rms_eps() -> f64 {
    1e-6
}

/// The computation-relevant keys of a GPT-2 `config.json` (`model_type = "gpt2"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2HfConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of learned positions (the context length).
    pub n_positions: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Number of attention heads.
    pub n_head: usize,
    /// MLP width; `null` or absent means `4 * n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// MLP activation; only the tanh GELU (`gelu_new`, `gelu_pytorch_tanh`) is supported.
    #[serde(default = "default_gelu_new")]
    pub activation_function: String,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
    /// Whether the head shares the token embedding (GPT-2 always does).
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Attention scores scaled by `1/sqrt(head_dim)`; `false` is not supported.
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    /// Scores additionally divided by the layer index; `true` is not supported.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

/// RoPE settings as transformers ≥ 5 writes them (`rope_parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// Base frequency θ.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// `"default"` is plain RoPE; any scaling type is refused.
    #[serde(default)]
    pub rope_type: Option<String>,
}

/// The computation-relevant keys of a Llama `config.json` (`model_type = "llama"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaHfConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Longest sequence (our context length).
    pub max_position_embeddings: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA/MQA); absent means `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Channels per head; must equal `hidden_size / num_attention_heads` when present.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Width of the gate and up projections.
    pub intermediate_size: usize,
    /// MLP activation; only `silu` (SwiGLU) is supported.
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE θ in configs written before transformers 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE settings in configs written by transformers ≥ 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// RoPE scaling of older configs; anything but `null` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Biases on q/k/v/o.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on gate/up/down.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Whether the head shares the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// A parsed `config.json`: one struct per architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum HfConfig {
    /// `model_type = "gpt2"`.
    Gpt2(Gpt2HfConfig),
    /// `model_type = "llama"`.
    Llama(LlamaHfConfig),
}

fn unsupported(
    path: &Path,
    key: &'static str,
    value: impl std::fmt::Debug,
    reason: &'static str,
) -> InteropError {
    InteropError::UnsupportedConfig {
        path: path.to_path_buf(),
        key,
        value: format!("{value:?}"),
        reason,
    }
}

impl HfConfig {
    /// Parses a `config.json` document; `path` is only used in error messages.
    ///
    /// Unknown `model_type`s and `architectures` other than `GPT2LMHeadModel` /
    /// `LlamaForCausalLM` are refused with their names.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, InteropError> {
        let bad_json = |reason: String| InteropError::BadJson {
            path: path.to_path_buf(),
            reason,
        };
        let value: Value = serde_json::from_str(text).map_err(|e| bad_json(e.to_string()))?;
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let architectures: Vec<String> = value
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let arch = match model_type.as_str() {
            "gpt2" => HfArchitecture::Gpt2,
            "llama" => HfArchitecture::Llama,
            _ => {
                return Err(InteropError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    model_type,
                    architectures,
                })
            }
        };
        if architectures.iter().any(|a| a != arch.class_name()) {
            return Err(InteropError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                model_type,
                architectures,
            });
        }
        let parse_err = |e: serde_json::Error| bad_json(e.to_string());
        Ok(match arch {
            HfArchitecture::Gpt2 => {
                HfConfig::Gpt2(serde_json::from_value(value).map_err(parse_err)?)
            }
            HfArchitecture::Llama => {
                HfConfig::Llama(serde_json::from_value(value).map_err(parse_err)?)
            }
        })
    }

    /// Which architecture this is.
    pub fn architecture(&self) -> HfArchitecture {
        match self {
            HfConfig::Gpt2(_) => HfArchitecture::Gpt2,
            HfConfig::Llama(_) => HfArchitecture::Llama,
        }
    }

    /// Our model configuration; settings we cannot represent are refused naming the key.
    pub fn to_gpt_config(&self, path: &Path) -> Result<GptConfig, InteropError> {
        let config = match self {
            HfConfig::Gpt2(c) => {
                if !matches!(
                    c.activation_function.as_str(),
                    "gelu_new" | "gelu_pytorch_tanh"
                ) {
                    return Err(unsupported(
                        path,
                        "activation_function",
                        &c.activation_function,
                        "only the tanh GELU (gelu_new, gelu_pytorch_tanh) is supported",
                    ));
                }
                if !c.scale_attn_weights {
                    return Err(unsupported(
                        path,
                        "scale_attn_weights",
                        c.scale_attn_weights,
                        "unscaled attention is not supported",
                    ));
                }
                if c.scale_attn_by_inverse_layer_idx {
                    return Err(unsupported(
                        path,
                        "scale_attn_by_inverse_layer_idx",
                        c.scale_attn_by_inverse_layer_idx,
                        "per-layer attention scaling is not supported",
                    ));
                }
                GptConfig {
                    vocab_size: c.vocab_size,
                    context_length: c.n_positions,
                    n_layer: c.n_layer,
                    d_model: c.n_embd,
                    n_head: c.n_head,
                    n_kv_head: None,
                    d_ff: c.n_inner.unwrap_or(4 * c.n_embd),
                    positional: Positional::Learned,
                    rope_theta: 10_000.0,
                    norm: NormKind::LayerNorm,
                    norm_eps: c.layer_norm_epsilon,
                    mlp: MlpKind::Gelu,
                    bias: true,
                    tie_embeddings: c.tie_word_embeddings,
                    dropout: 0.0,
                    init_std: 0.02,
                }
            }
            HfConfig::Llama(c) => {
                if c.hidden_act != "silu" {
                    return Err(unsupported(
                        path,
                        "hidden_act",
                        &c.hidden_act,
                        "only silu (SwiGLU) is supported",
                    ));
                }
                if c.attention_bias != c.mlp_bias {
                    return Err(unsupported(
                        path,
                        "attention_bias",
                        c.attention_bias,
                        "attention_bias and mlp_bias must be equal (the model has one bias switch)",
                    ));
                }
                if c.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(unsupported(
                        path,
                        "rope_scaling",
                        c.rope_scaling.as_ref(),
                        "RoPE scaling is not supported",
                    ));
                }
                let rope = c.rope_parameters.as_ref();
                if let Some(t) = rope.and_then(|r| r.rope_type.as_deref()) {
                    if t != "default" {
                        return Err(unsupported(
                            path,
                            "rope_parameters.rope_type",
                            t,
                            "only the default RoPE is supported",
                        ));
                    }
                }
                let d = c.hidden_size;
                let nh = c.num_attention_heads;
                if let Some(hd) = c.head_dim {
                    if nh == 0 || hd * nh != d {
                        return Err(unsupported(
                            path,
                            "head_dim",
                            hd,
                            "head_dim * num_attention_heads must equal hidden_size",
                        ));
                    }
                }
                let theta = c
                    .rope_theta
                    .or_else(|| rope.and_then(|r| r.rope_theta))
                    .unwrap_or(10_000.0);
                GptConfig {
                    vocab_size: c.vocab_size,
                    context_length: c.max_position_embeddings,
                    n_layer: c.num_hidden_layers,
                    d_model: d,
                    n_head: nh,
                    n_kv_head: c.num_key_value_heads.filter(|&k| k != nh),
                    d_ff: c.intermediate_size,
                    positional: Positional::Rope,
                    rope_theta: theta,
                    norm: NormKind::RmsNorm,
                    norm_eps: c.rms_norm_eps,
                    mlp: MlpKind::SwiGlu,
                    bias: c.attention_bias,
                    tie_embeddings: c.tie_word_embeddings,
                    dropout: 0.0,
                    init_std: 0.02,
                }
            }
        };
        config
            .validate()
            .map_err(|source| InteropError::BadConfig {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(config)
    }

    /// The Hugging Face configuration of our model: GPT-2-shaped models (learned positions,
    /// LayerNorm, GELU, biases, tied head, MHA) as GPT-2; RoPE + RMSNorm + SwiGLU models without
    /// biases as Llama. Other combinations are refused, naming the settings.
    pub fn from_gpt_config(c: &GptConfig) -> Result<Self, InteropError> {
        match (c.positional, c.norm, c.mlp) {
            (Positional::Learned, NormKind::LayerNorm, MlpKind::Gelu) => {
                let mut problems = Vec::new();
                if !c.bias {
                    problems.push("bias = false (GPT-2 has biases everywhere)");
                }
                if !c.tie_embeddings {
                    problems.push("tie_embeddings = false (GPT2LMHeadModel ties its head)");
                }
                if c.kv_heads() != c.n_head {
                    problems.push("n_kv_head != n_head (GPT-2 has no grouped-query attention)");
                }
                if !problems.is_empty() {
                    return Err(InteropError::NotExportable {
                        reason: format!("a GPT-2-style model with {}", problems.join(", ")),
                    });
                }
                Ok(HfConfig::Gpt2(Gpt2HfConfig {
                    vocab_size: c.vocab_size,
                    n_positions: c.context_length,
                    n_embd: c.d_model,
                    n_layer: c.n_layer,
                    n_head: c.n_head,
                    n_inner: Some(c.d_ff),
                    activation_function: default_gelu_new(),
                    layer_norm_epsilon: c.norm_eps,
                    tie_word_embeddings: true,
                    scale_attn_weights: true,
                    scale_attn_by_inverse_layer_idx: false,
                }))
            }
            (Positional::Rope, NormKind::RmsNorm, MlpKind::SwiGlu) => {
                if c.bias {
                    return Err(InteropError::NotExportable {
                        reason: "a Llama-style model with bias = true (only bias-free Llama models are exported)".into(),
                    });
                }
                Ok(HfConfig::Llama(LlamaHfConfig {
                    vocab_size: c.vocab_size,
                    max_position_embeddings: c.context_length,
                    hidden_size: c.d_model,
                    num_hidden_layers: c.n_layer,
                    num_attention_heads: c.n_head,
                    num_key_value_heads: Some(c.kv_heads()),
                    head_dim: Some(c.head_dim()),
                    intermediate_size: c.d_ff,
                    hidden_act: default_silu(),
                    rms_norm_eps: c.norm_eps,
                    rope_theta: Some(c.rope_theta),
                    rope_parameters: Some(RopeParameters {
                        rope_theta: Some(c.rope_theta),
                        rope_type: Some("default".into()),
                    }),
                    rope_scaling: None,
                    attention_bias: false,
                    mlp_bias: false,
                    tie_word_embeddings: c.tie_embeddings,
                }))
            }
            (p, n, m) => Err(InteropError::NotExportable {
                reason: format!(
                    "positional = {p:?}, norm = {n:?}, mlp = {m:?}: only Learned/LayerNorm/Gelu (GPT-2) and Rope/RmsNorm/SwiGlu (Llama) have a Hugging Face counterpart"
                ),
            }),
        }
    }

    /// The full `config.json` document: the model keys plus `architectures`, `model_type`,
    /// `dtype` and zero dropout probabilities.
    pub fn to_json(&self) -> Value {
        let (mut value, arch) = match self {
            HfConfig::Gpt2(c) => {
                let mut v = serde_json::to_value(c).expect("plain struct serialises");
                let obj = v.as_object_mut().expect("struct is an object");
                for key in ["resid_pdrop", "embd_pdrop", "attn_pdrop"] {
                    obj.insert(key.into(), Value::from(0.0));
                }
                (v, HfArchitecture::Gpt2)
            }
            HfConfig::Llama(c) => {
                let mut v = serde_json::to_value(c).expect("plain struct serialises");
                let obj = v.as_object_mut().expect("struct is an object");
                obj.insert("attention_dropout".into(), Value::from(0.0));
                (v, HfArchitecture::Llama)
            }
        };
        let obj = value.as_object_mut().expect("struct is an object");
        obj.insert(
            "architectures".into(),
            Value::from(vec![arch.class_name().to_string()]),
        );
        obj.insert("model_type".into(), Value::from(arch.model_type()));
        obj.insert("dtype".into(), Value::from("float32"));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt_configs_round_trip_through_hf() {
        let mut llama = GptConfig::llama_small();
        llama.n_kv_head = Some(2);
        for c in [GptConfig::cpu_tiny(), llama] {
            let hf = HfConfig::from_gpt_config(&c).unwrap();
            let text = serde_json::to_string(&hf.to_json()).unwrap();
            let back = HfConfig::from_json(&text, Path::new("config.json"))
                .unwrap()
                .to_gpt_config(Path::new("config.json"))
                .unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn unknown_architectures_and_settings_are_refused_with_names() {
        let p = Path::new("x/config.json");
        let e = HfConfig::from_json(
            r#"{"model_type": "opt", "architectures": ["OPTForCausalLM"]}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"opt\"") && e.contains("OPTForCausalLM"), "{e}");
        let e = HfConfig::from_json(
            r#"{"model_type": "gpt2", "architectures": ["GPT2ForSequenceClassification"]}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("GPT2ForSequenceClassification"), "{e}");
        let gpt2 = r#"{"model_type": "gpt2", "vocab_size": 10, "n_positions": 8, "n_embd": 8,
            "n_layer": 1, "n_head": 2, "activation_function": "relu"}"#;
        let e = HfConfig::from_json(gpt2, p)
            .unwrap()
            .to_gpt_config(p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("activation_function") && e.contains("relu"),
            "{e}"
        );
        let missing = r#"{"model_type": "llama", "vocab_size": 10}"#;
        let e = HfConfig::from_json(missing, p).unwrap_err().to_string();
        assert!(e.contains("max_position_embeddings"), "{e}");
    }

    #[test]
    fn rope_theta_is_read_from_either_place() {
        let p = Path::new("config.json");
        let base = r#""model_type": "llama", "vocab_size": 10, "max_position_embeddings": 8,
            "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 16"#;
        for (extra, theta) in [
            (r#""rope_theta": 500000.0"#, 500_000.0),
            (
                r#""rope_parameters": {"rope_theta": 20000.0, "rope_type": "default"}"#,
                20_000.0,
            ),
            (r#""rms_norm_eps": 1e-6"#, 10_000.0),
        ] {
            let text = format!("{{{base}, {extra}}}");
            let c = HfConfig::from_json(&text, p)
                .unwrap()
                .to_gpt_config(p)
                .unwrap();
            assert_eq!(c.rope_theta, theta);
        }
        let scaled = format!(r#"{{{base}, "rope_scaling": {{"rope_type": "llama3"}}}}"#);
        let e = HfConfig::from_json(&scaled, p)
            .unwrap()
            .to_gpt_config(p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_scaling"), "{e}");
    }

    #[test]
    fn unexportable_combinations_are_refused() {
        let mut c = GptConfig::cpu_tiny();
        c.tie_embeddings = false;
        let e = HfConfig::from_gpt_config(&c).unwrap_err().to_string();
        assert!(e.contains("tie_embeddings"), "{e}");
        let mut c = GptConfig::llama_small();
        c.bias = true;
        let e = HfConfig::from_gpt_config(&c).unwrap_err().to_string();
        assert!(e.contains("bias"), "{e}");
        let mut c = GptConfig::cpu_tiny();
        c.mlp = MlpKind::SwiGlu;
        let e = HfConfig::from_gpt_config(&c).unwrap_err().to_string();
        assert!(e.contains("SwiGlu"), "{e}");
    }
}
