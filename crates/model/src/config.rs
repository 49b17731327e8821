//! The typed model configuration, its validation and the named presets.

use serde::{Deserialize, Serialize};

/// How token positions enter the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positional {
    /// A learned absolute position embedding `wpe` (GPT-2).
    Learned,
    /// Rotary position embedding on queries and keys (Llama, rotate-half layout).
    Rope,
}

/// The normalisation used before attention, before the MLP and before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps) * weight + bias` (bias only when `bias = true`).
    LayerNorm,
    /// `x / sqrt(mean(x²) + eps) * weight` (Llama).
    RmsNorm,
}

/// The feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MlpKind {
    /// `c_proj(gelu_tanh(c_fc(x)))` (GPT-2's "gelu_new").
    Gelu,
    /// `c_proj(silu(c_gate(x)) * c_fc(x))` (Llama).
    SwiGlu,
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_init_std() -> f64 {
    0.02
}

/// Shape and architecture of a GPT-style decoder.
///
/// Every switch that HyperCloning must handle is here. Build one from a preset
/// ([`GptConfig::cpu_tiny`], [`GptConfig::gpt2_124m`], …) or from TOML; call
/// [`GptConfig::validate`] before use (the model's `init` does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Number of token ids the embedding and the head cover.
    pub vocab_size: usize,
    /// Longest sequence the model accepts (size of `wpe` for learned positions).
    pub context_length: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of query heads; `head_dim = d_model / n_head` must be a whole number.
    pub n_head: usize,
    /// Number of key/value heads (grouped-query attention). Absent means `n_head` (MHA);
    /// 1 is multi-query attention. Must divide `n_head`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_head: Option<usize>,
    /// Hidden width of the MLP (for SwiGLU: of each of the gate and up projections).
    pub d_ff: usize,
    /// Learned absolute positions or rotary embeddings.
    pub positional: Positional,
    /// RoPE base frequency θ (used only with `positional = "rope"`).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// LayerNorm or RMSNorm.
    pub norm: NormKind,
    /// Epsilon added to the variance (or mean square) inside every norm.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// GELU (tanh approximation) or SwiGLU MLP.
    pub mlp: MlpKind,
    /// Biases on every linear layer (except the LM head) and β on LayerNorms.
    pub bias: bool,
    /// Share the token embedding with the LM head.
    pub tie_embeddings: bool,
    /// Dropout probability on embeddings and on each residual branch; applied in training only.
    #[serde(default)]
    pub dropout: f64,
    /// Standard deviation of the normal initialisation (residual projections get
    /// `init_std / sqrt(2·n_layer)`, as in GPT-2).
    #[serde(default = "default_init_std")]
    pub init_std: f64,
}

/// A configuration that cannot work, with the field and value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A size that must be positive is zero.
    #[error("model.{field} must be at least 1, got 0")]
    Zero {
        /// The offending field.
        field: &'static str,
    },
    /// `d_model` is not a multiple of `n_head`.
    #[error("model.d_model = {d_model} is not divisible by model.n_head = {n_head} (head_dim must be a whole number)")]
    HeadDim {
        /// Width of the residual stream.
        d_model: usize,
        /// Number of query heads.
        n_head: usize,
    },
    /// `n_kv_head` is zero, larger than `n_head`, or does not divide it.
    #[error("model.n_kv_head = {n_kv_head} must divide model.n_head = {n_head}")]
    KvHeads {
        /// Number of key/value heads.
        n_kv_head: usize,
        /// Number of query heads.
        n_head: usize,
    },
    /// RoPE rotates pairs of channels, so the head dimension must be even.
    #[error(
        "model.positional = \"rope\" needs an even head_dim, got {head_dim} (d_model / n_head)"
    )]
    OddRopeHeadDim {
        /// The head dimension.
        head_dim: usize,
    },
    /// A floating-point field is outside its valid range.
    #[error("model.{field} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What is allowed.
        expected: &'static str,
    },
}

impl GptConfig {
    /// Number of key/value heads (`n_kv_head`, defaulting to `n_head`).
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_head
    }

    /// Checks every constraint the model relies on; errors name the field and value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("context_length", self.context_length),
            ("n_layer", self.n_layer),
            ("d_model", self.d_model),
            ("n_head", self.n_head),
            ("d_ff", self.d_ff),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        if !self.d_model.is_multiple_of(self.n_head) {
            return Err(ConfigError::HeadDim {
                d_model: self.d_model,
                n_head: self.n_head,
            });
        }
        let kv = self.kv_heads();
        if kv == 0 || kv > self.n_head || !self.n_head.is_multiple_of(kv) {
            return Err(ConfigError::KvHeads {
                n_kv_head: kv,
                n_head: self.n_head,
            });
        }
        if self.positional == Positional::Rope {
            if !self.head_dim().is_multiple_of(2) {
                return Err(ConfigError::OddRopeHeadDim {
                    head_dim: self.head_dim(),
                });
            }
            if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
                return Err(ConfigError::OutOfRange {
                    field: "rope_theta",
                    value: self.rope_theta,
                    expected: "a finite number > 1",
                });
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(ConfigError::OutOfRange {
                field: "norm_eps",
                value: self.norm_eps,
                expected: "a finite number > 0",
            });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::OutOfRange {
                field: "dropout",
                value: self.dropout,
                expected: "0 <= dropout < 1",
            });
        }
        if !(self.init_std.is_finite() && self.init_std > 0.0) {
            return Err(ConfigError::OutOfRange {
                field: "init_std",
                value: self.init_std,
                expected: "a finite number > 0",
            });
        }
        Ok(())
    }

    /// The fields whose values differ from `other`'s, as `(field, self's value, other's value)`
    /// sorted by field name, values written as in JSON. `n_kv_head` is compared by its
    /// effective count ([`GptConfig::kv_heads`]), so "absent" equals "= n_head".
    pub fn differences(&self, other: &GptConfig) -> Vec<(String, String, String)> {
        let normalise = |c: &GptConfig| {
            let mut v = serde_json::to_value(GptConfig {
                n_kv_head: Some(c.kv_heads()),
                ..c.clone()
            })
            .expect("GptConfig serialises");
            std::mem::take(v.as_object_mut().expect("a JSON object"))
        };
        let (a, b) = (normalise(self), normalise(other));
        a.into_iter()
            .filter_map(|(field, va)| {
                let vb = b.get(&field).cloned().unwrap_or(serde_json::Value::Null);
                (va != vb).then(|| (field, va.to_string(), vb.to_string()))
            })
            .collect()
    }

    /// Output width of the fused `c_attn` projection: `[q | k | v]`.
    pub fn qkv_dim(&self) -> usize {
        (self.n_head + 2 * self.kv_heads()) * self.head_dim()
    }

    /// Number of trainable parameters, from the closed form (tied weights counted once).
    pub fn param_count(&self) -> usize {
        let d = self.d_model;
        let b = usize::from(self.bias);
        let norm = d + if self.norm == NormKind::LayerNorm {
            b * d
        } else {
            0
        };
        let attn = d * self.qkv_dim() + b * self.qkv_dim() + d * d + b * d;
        let n_up = if self.mlp == MlpKind::SwiGlu { 2 } else { 1 };
        let mlp = n_up * (d * self.d_ff + b * self.d_ff) + self.d_ff * d + b * d;
        let block = 2 * norm + attn + mlp;
        let wpe = if self.positional == Positional::Learned {
            self.context_length * d
        } else {
            0
        };
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + wpe + self.n_layer * block + norm + head
    }

    /// Training FLOPs per token at sequence length `seq_len`, PaLM convention (appendix B):
    /// `6·N + 12·n_layer·d_model·seq_len`, with N = [`GptConfig::param_count`] (all parameters,
    /// embeddings included, tied ones once). The first term counts the matmuls of forward and
    /// backward, the second the attention scores and their weighted sum.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        6.0 * self.param_count() as f64 + 12.0 * (self.n_layer * self.d_model * seq_len) as f64
    }

    /// Tiny GPT-2-style model for unit tests: 2 layers, d 128, 4 heads, vocab 512, context 64.
    pub fn cpu_tiny() -> Self {
        Self {
            vocab_size: 512,
            context_length: 64,
            n_layer: 2,
            d_model: 128,
            n_head: 4,
            n_kv_head: None,
            d_ff: 512,
            positional: Positional::Learned,
            rope_theta: default_rope_theta(),
            norm: NormKind::LayerNorm,
            norm_eps: default_norm_eps(),
            mlp: MlpKind::Gelu,
            bias: true,
            tie_embeddings: true,
            dropout: 0.0,
            init_std: default_init_std(),
        }
    }

    /// Small GPT-2-style model for the CPU quickstart: 4 layers, d 128, vocab 4096, context 128.
    pub fn cpu_small() -> Self {
        Self {
            vocab_size: 4096,
            context_length: 128,
            n_layer: 4,
            ..Self::cpu_tiny()
        }
    }

    /// GPT-2 small (124M) shape, vocabulary padded to 50304 (a multiple of 64, faster matmuls).
    pub fn gpt2_124m() -> Self {
        Self {
            vocab_size: 50_304,
            context_length: 1024,
            n_layer: 12,
            d_model: 768,
            n_head: 12,
            d_ff: 3072,
            ..Self::cpu_tiny()
        }
    }

    /// GPT-2 medium (350M) shape: the 2x-width target of [`GptConfig::gpt2_124m`] is 1536 wide;
    /// this is the published medium shape for comparison.
    pub fn gpt2_350m() -> Self {
        Self {
            n_layer: 24,
            d_model: 1024,
            n_head: 16,
            d_ff: 4096,
            ..Self::gpt2_124m()
        }
    }

    /// Llama-style small model: RoPE, RMSNorm, SwiGLU, GQA (8 query / 4 KV heads), no biases,
    /// untied head.
    pub fn llama_small() -> Self {
        Self {
            vocab_size: 32_000,
            context_length: 1024,
            n_layer: 8,
            d_model: 512,
            n_head: 8,
            n_kv_head: Some(4),
            d_ff: 1408,
            positional: Positional::Rope,
            rope_theta: 10_000.0,
            norm: NormKind::RmsNorm,
            norm_eps: 1e-5,
            mlp: MlpKind::SwiGlu,
            bias: false,
            tie_embeddings: false,
            dropout: 0.0,
            init_std: default_init_std(),
        }
    }

    /// Looks a preset up by name (`cpu-tiny`, `cpu-small`, `gpt2-124m`, `gpt2-350m`, `llama-small`).
    pub fn preset(name: &str) -> Option<Self> {
        Some(match name {
            "cpu-tiny" => Self::cpu_tiny(),
            "cpu-small" => Self::cpu_small(),
            "gpt2-124m" => Self::gpt2_124m(),
            "gpt2-350m" => Self::gpt2_350m(),
            "llama-small" => Self::llama_small(),
            _ => return None,
        })
    }

    /// Names accepted by [`GptConfig::preset`].
    pub const PRESETS: [&'static str; 5] = [
        "cpu-tiny",
        "cpu-small",
        "gpt2-124m",
        "gpt2-350m",
        "llama-small",
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for name in GptConfig::PRESETS {
            GptConfig::preset(name).unwrap().validate().unwrap();
        }
        assert!(GptConfig::preset("nope").is_none());
    }

    #[test]
    fn gpt2_124m_param_count_matches_published_figure() {
        // GPT-2 small has 124,439,808 parameters with vocab 50257; with 50304 the embedding
        // grows by 47 * 768.
        assert_eq!(GptConfig::gpt2_124m().param_count(), 124_439_808 + 47 * 768);
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let mut c = GptConfig::cpu_tiny();
        c.d_model = 130;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("d_model = 130") && e.contains("n_head = 4"),
            "{e}"
        );

        let mut c = GptConfig::cpu_tiny();
        c.n_kv_head = Some(3);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("n_kv_head = 3"), "{e}");

        let mut c = GptConfig::cpu_tiny();
        c.n_layer = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::Zero { field: "n_layer" }
        );

        let mut c = GptConfig::cpu_tiny();
        c.dropout = 1.0;
        assert!(c.validate().unwrap_err().to_string().contains("dropout"));

        let mut c = GptConfig::llama_small();
        c.d_model = 8 * 7;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("even head_dim"), "{e}");
    }

    #[test]
    fn differences_name_each_changed_field_once() {
        let a = GptConfig::cpu_tiny();
        assert!(a.differences(&a).is_empty());
        let explicit_mha = GptConfig {
            n_kv_head: Some(a.n_head),
            ..a.clone()
        };
        assert!(a.differences(&explicit_mha).is_empty());
        let b = GptConfig {
            n_layer: 3,
            norm: NormKind::RmsNorm,
            ..a.clone()
        };
        let d = a.differences(&b);
        let fields: Vec<&str> = d.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(fields, ["n_layer", "norm"]);
        assert_eq!((d[0].1.as_str(), d[0].2.as_str()), ("2", "3"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = r#"
            vocab_size = 10
            context_length = 8
            n_layer = 1
            d_model = 8
            n_head = 2
            d_ff = 16
            positional = "learned"
            norm = "layernorm"
            mlp = "gelu"
            bias = true
            tie_embeddings = true
            n_heads = 2
        "#;
        let e = toml::from_str::<GptConfig>(text).unwrap_err().to_string();
        assert!(e.contains("n_heads"), "{e}");
    }
}
