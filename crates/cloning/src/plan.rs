//! What an expansion does, before any tensor is touched: the options, the derived target
//! configuration, and — in [`rule`] — the growth rule of every parameter, in one table.
//!
//! # Layout conventions
//! burn's `Linear` stores its weight as `[d_in, d_out]` (`y = x·W + b`), so the spec's
//! "output side" is axis 1 here and its "input side" axis 0. Every hidden vector of the
//! target is the n-fold stack `[x; x; …; x]` of the source's `x`: hidden index `r·d + a` of
//! the target holds index `a` of the source, for copy `r`.
//!
//! A [`Rule`] describes a parameter as a grid of blocks: `input_copies` copies along axis 0
//! (each block divided by `input_copies` under the symmetric variant: the general rule divides
//! by the INPUT factor only) and, along axis 1, a list of [`Section`]s, each tiled in place
//! `copies` times. Vectors (norm γ/β, biases) are one-row matrices with `input_copies = 1`:
//! tiled, never divided. Embeddings are matrices whose input (a token or position one-hot) is
//! not a hidden vector: `input_copies = 1`, so they are tiled without division.

use hyperclone_model::{ConfigError, GptConfig, MlpKind, NormKind, Positional};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Options

/// How the cloned blocks of a weight grid are filled (all variants preserve the function).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Every block `W/n_in` (the paper's default).
    #[default]
    Symmetric,
    /// Every block `W/n_in`, plus noise in cancelling +/− pairs along the input copies.
    NoisySymmetric,
    /// Output copy `j` reads input copy `j mod n_in` with the full `W`; other blocks are zero.
    Diagonal,
    /// The diagonal grid plus noise in cancelling +/− pairs along the input copies.
    NoisyDiagonal,
}

impl Variant {
    /// Every variant, in the order of the spec.
    pub const ALL: [Variant; 4] = [
        Variant::Symmetric,
        Variant::NoisySymmetric,
        Variant::Diagonal,
        Variant::NoisyDiagonal,
    ];

    /// The name used in TOML, JSON and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Symmetric => "symmetric",
            Variant::NoisySymmetric => "noisy-symmetric",
            Variant::Diagonal => "diagonal",
            Variant::NoisyDiagonal => "noisy-diagonal",
        }
    }

    /// Whether the variant adds noise (and so uses `snr_db` and `seed`).
    pub fn is_noisy(self) -> bool {
        matches!(self, Variant::NoisySymmetric | Variant::NoisyDiagonal)
    }

    /// Whether the base grid is diagonal (full `W` on one input copy) rather than `W/n_in`.
    pub fn is_diagonal(self) -> bool {
        matches!(self, Variant::Diagonal | Variant::NoisyDiagonal)
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Variant {
    type Err = CloneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| CloneError::UnknownVariant {
                value: s.to_string(),
            })
    }
}

/// How depth growth fills the new layers (`[expand] depth_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DepthMode {
    /// New blocks whose residual contributions are exactly zero at the start (attention and
    /// MLP output projections and their biases zero, the rest freshly initialised so that the
    /// gradient of those projections is not zero): function-preserving.
    #[default]
    Zero,
    /// G_stack: the whole block stack copied `depth_factor` times (`[b0..bL, b0..bL, …]`). Not
    /// function-preserving: `expand` reports the logit change and KL instead of refusing.
    Stack,
}

/// Where `zero` depth growth puts its new blocks (`[expand] depth_placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DepthPlacement {
    /// `depth_factor − 1` new blocks after every source block: `[b0, z, b1, z, …]`.
    #[default]
    Interleave,
    /// All new blocks stacked on top of the source's: `[b0, …, bL−1, z, …, z]`.
    Top,
}

/// Which growth comes first when both width and depth grow (`[expand] order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GrowthOrder {
    /// Widen the source, then add layers at the target's width: new `zero` blocks are drawn
    /// at full width (no cloned symmetry in them).
    #[default]
    WidthFirst,
    /// Add layers to the source, then widen everything: new `zero` blocks are drawn at the
    /// source's width and cloned like the others.
    DepthFirst,
}

macro_rules! kebab_names {
    ($ty:ident, $label:literal, $expected:literal, [$($variant:ident => $name:literal),+]) => {
        impl $ty {
            /// The name used in TOML, JSON and on the command line.
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
        impl std::str::FromStr for $ty {
            type Err = CloneError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(CloneError::UnknownChoice {
                        field: $label,
                        value: s.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }
    };
}
kebab_names!(DepthMode, "depth_mode", "\"zero\" or \"stack\"", [Zero => "zero", Stack => "stack"]);
kebab_names!(DepthPlacement, "depth_placement", "\"interleave\" or \"top\"", [Interleave => "interleave", Top => "top"]);
kebab_names!(GrowthOrder, "order", "\"width-first\" or \"depth-first\"", [WidthFirst => "width-first", DepthFirst => "depth-first"]);

fn default_factor() -> usize {
    2
}
fn default_depth_factor() -> usize {
    1
}
fn is_one(x: &usize) -> bool {
    *x == 1
}
fn is_default<T: Default + PartialEq>(x: &T) -> bool {
    *x == T::default()
}
fn default_snr_db() -> f64 {
    10.0
}

/// Settings of one expansion: the `[expand]` section of an experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpandOptions {
    /// Width factor n (integer ≥ 1): `d_model`, `n_head` (and the KV heads, except MQA) are
    /// multiplied by n; `head_dim` stays fixed. Default 2.
    #[serde(default = "default_factor")]
    pub width_factor: usize,
    /// FFN factor m (integer ≥ 1), independent of n: `d_ff` is multiplied by m. Default 2.
    #[serde(default = "default_factor")]
    pub ffn_factor: usize,
    /// How the cloned blocks are filled. Default `"symmetric"`.
    #[serde(default)]
    pub variant: Variant,
    /// Signal-to-noise ratio in dB of the noisy variants: `mean(η²) = mean(block²) /
    /// 10^(snr_db/10)` (the paper uses 10 dB). Ignored by the noiseless variants. Default 10.
    #[serde(default = "default_snr_db")]
    pub snr_db: f64,
    /// Seed of the noise (with `hyperclone_model::SplitMix64`: identical on every backend),
    /// and of the new blocks of `zero` depth growth. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Depth factor K (integer ≥ 1): `n_layer` is multiplied by K. Default 1 (width only).
    /// The depth fields are left out of a serialised `[expand]` at their defaults, so that
    /// width-only experiments keep their stage hashes.
    #[serde(default = "default_depth_factor", skip_serializing_if = "is_one")]
    pub depth_factor: usize,
    /// How the new layers are filled: `"zero"` (function-preserving, default) or `"stack"`
    /// (G_stack, not function-preserving).
    #[serde(default, skip_serializing_if = "is_default")]
    pub depth_mode: DepthMode,
    /// Where `zero` growth puts the new blocks: `"interleave"` (default) or `"top"`.
    /// Ignored by `stack`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub depth_placement: DepthPlacement,
    /// With both width and depth growth, which comes first: `"width-first"` (default) or
    /// `"depth-first"`. The function check runs once, at the end.
    #[serde(default, skip_serializing_if = "is_default")]
    pub order: GrowthOrder,
}

impl Default for ExpandOptions {
    fn default() -> Self {
        Self {
            width_factor: default_factor(),
            ffn_factor: default_factor(),
            variant: Variant::default(),
            snr_db: default_snr_db(),
            seed: 0,
            depth_factor: default_depth_factor(),
            depth_mode: DepthMode::default(),
            depth_placement: DepthPlacement::default(),
            order: GrowthOrder::default(),
        }
    }
}

impl ExpandOptions {
    /// Checks the factors and the SNR; errors name the field and value.
    pub fn validate(&self) -> Result<(), CloneError> {
        if self.width_factor == 0 {
            return Err(CloneError::ZeroFactor {
                field: "width_factor",
            });
        }
        if self.ffn_factor == 0 {
            return Err(CloneError::ZeroFactor {
                field: "ffn_factor",
            });
        }
        if self.depth_factor == 0 {
            return Err(CloneError::ZeroFactor {
                field: "depth_factor",
            });
        }
        if self.variant.is_noisy() && !self.snr_db.is_finite() {
            return Err(CloneError::BadSnr { value: self.snr_db });
        }
        Ok(())
    }

    /// Whether the expansion grows depth.
    pub fn grows_depth(&self) -> bool {
        self.depth_factor > 1
    }

    /// Whether the expanded model computes the source's function (every variant of width
    /// growth, and `zero` depth growth: a `stack` does not), and so is held to the logit check.
    pub fn is_function_preserving(&self) -> bool {
        !(self.grows_depth() && self.depth_mode == DepthMode::Stack)
    }

    /// The same options without depth growth: the width part of the expansion.
    pub fn width_only(&self) -> Self {
        Self {
            depth_factor: 1,
            ..self.clone()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Why an expansion was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CloneError {
    /// A factor is zero.
    #[error("expand.{field} must be an integer >= 1, got 0")]
    ZeroFactor {
        /// `width_factor`, `ffn_factor` or `depth_factor`.
        field: &'static str,
    },
    /// The SNR of a noisy variant is not a finite number.
    #[error("expand.snr_db = {value} must be a finite number of decibels")]
    BadSnr {
        /// The value given.
        value: f64,
    },
    /// The variant name is not one of the four.
    #[error("expand.variant = {value:?} is unknown; expected one of \"symmetric\", \"noisy-symmetric\", \"diagonal\", \"noisy-diagonal\"")]
    UnknownVariant {
        /// The value given.
        value: String,
    },
    /// A named choice (`depth_mode`, `depth_placement`, `order`) has an unknown value.
    #[error("expand.{field} = {value:?} is unknown; expected one of {expected}")]
    UnknownChoice {
        /// The field.
        field: &'static str,
        /// The value given.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// The source configuration itself is invalid.
    #[error("source model: {0}")]
    Source(ConfigError),
    /// The derived target configuration is invalid (a factor overflowed a size, …).
    #[error("derived target model: {0}")]
    Target(ConfigError),
    /// A requested target size is not an integer multiple of the source size.
    #[error("target {field} = {target} is not an integer multiple of source {field} = {source_value}: HyperCloning grows widths by integer factors only")]
    NonIntegerFactor {
        /// The config field (`d_model`, `d_ff`).
        field: &'static str,
        /// The source's value.
        source_value: usize,
        /// The target's value.
        target: usize,
    },
    /// The requested target changes something expansion keeps (layers, vocabulary, head_dim…).
    #[error("target {field} = {target} differs from source {field} = {source_value}: width expansion keeps it unchanged")]
    Unchanged {
        /// The config field.
        field: String,
        /// The source's value (as text).
        source_value: String,
        /// The target's value (as text).
        target: String,
    },
    /// The target's query-head count does not follow the width factor (head_dim is fixed).
    #[error("target n_head = {target} must be n_head x width_factor = {source_heads} x {factor}: heads are duplicated and head_dim stays fixed")]
    Heads {
        /// The source's query heads.
        source_heads: usize,
        /// The width factor.
        factor: usize,
        /// The target's query heads.
        target: usize,
    },
    /// An MQA source (one KV head shared by all query heads) asked for another KV head count.
    #[error("the source uses multi-query attention (1 KV head for {source_heads} query heads) and the target asks for {target} KV heads: an MQA model is expanded by duplicating its query heads and keeping its single KV head (every query copy reads the same keys and values), so the target must keep n_kv_head = 1")]
    MqaKvHeads {
        /// The source's query heads.
        source_heads: usize,
        /// The target's KV heads.
        target: usize,
    },
    /// GQA/MHA: the target's KV heads must grow with the width factor so that each query head
    /// copy keeps reading the copy of its own KV head.
    #[error("target n_kv_head = {target} must be n_kv_head x width_factor = {source_kv} x {factor}: KV heads are duplicated with the query heads so that the query-to-KV group map survives")]
    KvHeads {
        /// The source's KV heads.
        source_kv: usize,
        /// The width factor.
        factor: usize,
        /// The target's KV heads.
        target: usize,
    },
    /// A model's width is not divisible by the factor it is said to have been expanded with.
    #[error("model {field} = {value} is not divisible by the factor {factor}: it cannot be an expansion by that factor")]
    NotAnExpansion {
        /// The config field.
        field: &'static str,
        /// Its value.
        value: usize,
        /// The factor.
        factor: usize,
    },
    /// A tensor does not have the shape the model's configuration implies.
    #[error("parameter {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The parameter's checkpoint name.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found.
        found: Vec<usize>,
    },
    /// A tensor could not be read back to the host.
    #[error("parameter {name}: {reason}")]
    Data {
        /// The parameter's checkpoint name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// AdamW's state is only mapped through width growth: the new blocks of depth growth have
    /// no moments to map and no exactness to keep.
    #[error("expand.depth_factor = {depth_factor}: carrying the optimizer state through depth growth is not supported; use optimizer_state = \"fresh\" (or grow width only when transferring)")]
    DepthTransfer {
        /// The depth factor asked for.
        depth_factor: usize,
    },
    /// The optimizer state to expand lacks the moments of a parameter of the source model.
    #[error("the optimizer state has no moments for parameter {name}: it is not the state of a model of this architecture (or of a run that has taken no step)")]
    MissingMoments {
        /// The parameter's checkpoint name.
        name: String,
    },
    /// The optimizer state to expand holds moments for a name the source model does not have.
    #[error("the optimizer state holds moments for {name}, which is not a parameter of the source model")]
    UnknownMoments {
        /// The name found in the state.
        name: String,
    },
    /// A factor of the optimizer state to expand is not a finite positive number, or its
    /// per-column ε factors do not match the parameter's columns.
    #[error("optimizer state of {name}: {reason}")]
    BadFactors {
        /// The parameter's checkpoint name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Configurations

/// Whether `c` is multi-query attention: one KV head shared by several query heads.
pub fn is_mqa(c: &GptConfig) -> bool {
    c.kv_heads() == 1 && c.n_head > 1
}

fn mul(a: usize, b: usize) -> Result<usize, CloneError> {
    a.checked_mul(b)
        .ok_or(CloneError::Target(ConfigError::OutOfRange {
            field: "d_model",
            value: f64::INFINITY,
            expected: "a size that fits in usize",
        }))
}

/// The configuration of the expanded model: `d_model·n`, `n_head·n`, KV heads `·n` (MQA keeps
/// one), `d_ff·m`, `n_layer·K` (the depth factor); everything else (vocabulary, context,
/// positions, norm, eps, MLP kind, biases, tying, dropout, init_std, RoPE θ) is copied.
/// Validated.
pub fn expand_config(source: &GptConfig, opts: &ExpandOptions) -> Result<GptConfig, CloneError> {
    opts.validate()?;
    source.validate().map_err(CloneError::Source)?;
    let (n, m) = (opts.width_factor, opts.ffn_factor);
    let n_kv_head = match source.n_kv_head {
        None => None,
        Some(_) if is_mqa(source) => Some(1),
        Some(kv) => Some(mul(kv, n)?),
    };
    let target = GptConfig {
        d_model: mul(source.d_model, n)?,
        n_head: mul(source.n_head, n)?,
        n_kv_head,
        d_ff: mul(source.d_ff, m)?,
        n_layer: mul(source.n_layer, opts.depth_factor)?,
        ..source.clone()
    };
    target.validate().map_err(CloneError::Target)?;
    debug_assert_eq!(target.head_dim(), source.head_dim());
    Ok(target)
}

/// The configuration a model of config `target` was expanded from with factors `n` and `m`
/// (the inverse of [`expand_config`]); used to split an expanded model into its copies.
pub fn source_config_of(target: &GptConfig, n: usize, m: usize) -> Result<GptConfig, CloneError> {
    for (field, factor) in [("width_factor", n), ("ffn_factor", m)] {
        if factor == 0 {
            return Err(CloneError::ZeroFactor { field });
        }
    }
    let div = |field: &'static str, value: usize, factor: usize| {
        if value.is_multiple_of(factor) {
            Ok(value / factor)
        } else {
            Err(CloneError::NotAnExpansion {
                field,
                value,
                factor,
            })
        }
    };
    let n_kv_head = match target.n_kv_head {
        None => None,
        Some(_) if is_mqa(target) => Some(1),
        Some(kv) => Some(div("n_kv_head", kv, n)?),
    };
    let source = GptConfig {
        d_model: div("d_model", target.d_model, n)?,
        n_head: div("n_head", target.n_head, n)?,
        n_kv_head,
        d_ff: div("d_ff", target.d_ff, m)?,
        ..target.clone()
    };
    source.validate().map_err(CloneError::Source)?;
    Ok(source)
}

/// The factors `(n, m)` that turn `source` into `target`, or why no expansion does: widths
/// must be integer multiples, heads must follow the width factor with head_dim fixed, KV heads
/// must follow it too (MQA keeps one), and every other field must be equal.
pub fn factors_between(
    source: &GptConfig,
    target: &GptConfig,
) -> Result<(usize, usize), CloneError> {
    source.validate().map_err(CloneError::Source)?;
    target.validate().map_err(CloneError::Target)?;
    let whole = |field: &'static str, s: usize, t: usize| {
        if t.is_multiple_of(s) && t >= s {
            Ok(t / s)
        } else {
            Err(CloneError::NonIntegerFactor {
                field,
                source_value: s,
                target: t,
            })
        }
    };
    let n = whole("d_model", source.d_model, target.d_model)?;
    let m = whole("d_ff", source.d_ff, target.d_ff)?;
    if target.n_head != source.n_head * n {
        return Err(CloneError::Heads {
            source_heads: source.n_head,
            factor: n,
            target: target.n_head,
        });
    }
    if is_mqa(source) {
        if target.kv_heads() != 1 {
            return Err(CloneError::MqaKvHeads {
                source_heads: source.n_head,
                target: target.kv_heads(),
            });
        }
    } else if target.kv_heads() != source.kv_heads() * n {
        return Err(CloneError::KvHeads {
            source_kv: source.kv_heads(),
            factor: n,
            target: target.kv_heads(),
        });
    }
    let opts = ExpandOptions {
        width_factor: n,
        ffn_factor: m,
        ..ExpandOptions::default()
    };
    let derived = expand_config(source, &opts)?;
    // Widths and head counts were checked above; any other difference is a field that
    // expansion keeps, and the message names it.
    if let Some((field, source_value, target)) = derived.differences(target).into_iter().next() {
        return Err(CloneError::Unchanged {
            field,
            source_value,
            target,
        });
    }
    Ok((n, m))
}

// ---------------------------------------------------------------------------------------------
// The rule table

/// One parameter of the decoder, by role (see `hyperclone_model::gpt` for the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `wte.weight`, `[V, d]`.
    TokenEmbedding,
    /// `wpe.weight`, `[ctx, d]` (learned positions only).
    PositionEmbedding,
    /// `h.N.ln_1` / `h.N.ln_2` γ, `[d]`.
    NormWeight,
    /// `h.N.ln_1` / `h.N.ln_2` β, `[d]` (LayerNorm with biases).
    NormBias,
    /// `ln_f` γ, `[d]`.
    FinalNormWeight,
    /// `ln_f` β, `[d]`.
    FinalNormBias,
    /// `h.N.attn.c_attn.weight`, `[d, (H + 2K)·hd]`, fused `[q | k | v]`.
    QkvWeight,
    /// `h.N.attn.c_attn.bias`, `[(H + 2K)·hd]`.
    QkvBias,
    /// `h.N.attn.c_proj.weight`, `[d, d]`.
    AttnOutWeight,
    /// `h.N.attn.c_proj.bias`, `[d]`.
    AttnOutBias,
    /// `h.N.mlp.c_fc.weight` and `h.N.mlp.c_gate.weight`, `[d, F]`.
    MlpUpWeight,
    /// `h.N.mlp.c_fc.bias` and `h.N.mlp.c_gate.bias`, `[F]`.
    MlpUpBias,
    /// `h.N.mlp.c_proj.weight`, `[F, d]`.
    MlpDownWeight,
    /// `h.N.mlp.c_proj.bias`, `[d]`.
    MlpDownBias,
    /// `lm_head.weight`, `[d, V]` (untied only).
    LmHead,
}

/// A run of output columns (axis 1) tiled in place: `[s]` → `[s, s, …]` (`copies` times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Width of the section in the source.
    pub width: usize,
    /// How many copies the target holds, side by side.
    pub copies: usize,
}

/// How one parameter grows; see the module documentation for the grid it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Copies along the input axis (axis 0); each symmetric block is divided by this number.
    /// Only matrices fed by a hidden vector have more than one; noise needs at least two.
    pub input_copies: usize,
    /// The output axis (axis 1, or the only axis of a vector), section by section.
    pub output: Vec<Section>,
    /// The whole result is divided by this (the tied-head fold on the final norm), else 1.
    pub divide_by: usize,
}

impl Rule {
    fn grid(input_copies: usize, output: Vec<Section>) -> Self {
        Self {
            input_copies,
            output,
            divide_by: 1,
        }
    }

    /// Source width of the output axis.
    pub fn source_width(&self) -> usize {
        self.output.iter().map(|s| s.width).sum()
    }

    /// Target width of the output axis.
    pub fn target_width(&self) -> usize {
        self.output.iter().map(|s| s.width * s.copies).sum()
    }
}

/// THE TABLE: how each parameter of a source of config `s` grows with width factor `n` and FFN
/// factor `m` (the spec's table, row by row).
pub fn rule(kind: ParamKind, s: &GptConfig, n: usize, m: usize) -> Rule {
    use ParamKind::*;
    let sec = |width, copies| Section { width, copies };
    let (d, hd, f, v) = (s.d_model, s.head_dim(), s.d_ff, s.vocab_size);
    // MQA keeps its single KV head: only its input side is tiled.
    let kv_copies = if is_mqa(s) { 1 } else { n };
    let q = sec(s.n_head * hd, n); // destination head r·H + h = source head h
    let kv = sec(s.kv_heads() * hd, kv_copies); // destination KV head r·K + g = source g
    let hidden = vec![sec(d, n)];
    match kind {
        // embeddings (V × d, ctx × d): repeat along d, no division
        // (AdamW, `adam_rule`: lr ×1, gradient and moments ÷n)
        TokenEmbedding | PositionEmbedding => Rule::grid(1, hidden),
        // LayerNorm γ, β / RMSNorm γ: repeat n times, eps unchanged (AdamW: lr ×1, ÷n)
        NormWeight | NormBias => Rule::grid(1, hidden),
        // final norm: repeat; tied head: fold the head's 1/n into γ and β (AdamW: untied
        // lr ×1, ÷n; tied lr ×1/n, gradient undivided)
        FinalNormWeight | FinalNormBias => Rule {
            divide_by: if s.tie_embeddings { n } else { 1 },
            ..Rule::grid(1, hidden)
        },
        // fused Q, K, V: duplicate heads per section, each block W/n (input factor)
        // (AdamW: weight lr ×1/n, bias ×1; q ÷n, k and v ÷ their copies, MQA ÷1)
        QkvWeight => Rule::grid(n, vec![q, kv, kv]),
        QkvBias => Rule::grid(1, vec![q, kv, kv]),
        // attention output projection: n × n grid of W/n (AdamW: lr ×1/n, ÷n; bias ×1, ÷n)
        AttnOutWeight => Rule::grid(n, hidden),
        AttnOutBias => Rule::grid(1, hidden),
        // MLP up / gate (d → F): m output copies × n input copies, each W/n
        // (AdamW: lr ×1/n, ÷m; bias ×1, ÷m)
        MlpUpWeight => Rule::grid(n, vec![sec(f, m)]),
        MlpUpBias => Rule::grid(1, vec![sec(f, m)]),
        // MLP down (F → d): n output copies × m input copies, each W/m
        // (AdamW: lr ×1/m, ÷n; bias ×1, ÷n)
        MlpDownWeight => Rule::grid(m, hidden),
        MlpDownBias => Rule::grid(1, hidden),
        // untied LM head (d → V): [W/n, …, W/n] along the input (AdamW: lr ×1/n, ÷1)
        LmHead => Rule::grid(n, vec![sec(v, 1)]),
    }
}

/// How AdamW follows one parameter through the clone: what [`adam_rule`] returns.
///
/// Under the noise-free symmetric variant, every block of the target is the source parameter
/// divided by `step_divisor`, and the gradient reaching every block of output section `i` is
/// the source's gradient divided by `grad_divisor[i]` (proof in `docs/hypercloning.md`,
/// "AdamW's state through the clone"). Our AdamW's update is
/// `θ ← θ·(1 − lr·wd) − lr·m̂/(√v̂ + ε)`, so the target stays the clone of the source step after
/// step when its state starts as `m/G`, `v/G²` (tiled like the weights), its ε is `ε/G`
/// (then `m̂/(√v̂ + ε)` is unchanged) and its Adam step is multiplied by `1/step_divisor`. The
/// decoupled decay needs no factor: it is proportional to the block, already `θ/step_divisor`.
/// Gradient clipping compares the global norm: section `i` has `input_copies · copies` blocks
/// with gradient `g/G`, so its squares are weighted by `G²/(input_copies · copies)` in the
/// wide model's norm, which is then the small model's (same clip factor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdamRule {
    /// Every target block is `θ / step_divisor` (`input_copies · divide_by` of the weight
    /// rule): the parameter's Adam step is multiplied by `1 / step_divisor`.
    pub step_divisor: usize,
    /// One per output section of the weight rule, in order: the gradient of every block of
    /// the section is the source's divided by this (how many copies of the section's output
    /// the loss sees, `copies / divide_by`). The first moment is divided by it, the second
    /// by its square, and ε by it.
    pub grad_divisor: Vec<usize>,
}

/// THE OPTIMIZER TABLE, row by row beside [`rule`]: how AdamW's state and step follow each
/// parameter (see [`AdamRule`]). `k` is `n`, or 1 for the single KV head of multi-query
/// attention (then its norm weight is `1/n`, not 1).
///
/// | parameter | lr ×1/… (`step_divisor`) | gradient ÷ `G` (m ÷G, v ÷G², ε ÷G) | norm weight `G²/blocks` |
/// |---|---|---|---|
/// | `wte`, `wpe` (tied or not) | 1 | n | n |
/// | block norms γ, β | 1 | n | n |
/// | `ln_f` γ, β, untied head | 1 | n | n |
/// | `ln_f` γ, β, tied head (γ/n fold) | n | 1 | 1/n |
/// | `c_attn` weight | n | q: n, k and v: k | q: 1, k and v: 1 (MQA 1/n) |
/// | `c_attn` bias | 1 | q: n, k and v: k | q: n, k and v: k |
/// | `attn.c_proj` weight / bias | n / 1 | n | 1 / n |
/// | `c_fc`, `c_gate` weight / bias | n / 1 | m | m/n / m |
/// | `mlp.c_proj` weight / bias | m / 1 | n | n/m / n |
/// | untied `lm_head` | n | 1 | 1/n |
pub fn adam_rule(kind: ParamKind, s: &GptConfig, n: usize, m: usize) -> AdamRule {
    use ParamKind::*;
    let kv = if is_mqa(s) { 1 } else { n };
    let (step_divisor, grad_divisor) = match kind {
        // Tables whose rows are tiled undivided; each copy of the output gets 1/n of the
        // gradient. With a tied head, `wte` also gets the head's gradient: the head reads
        // the stacked [h/n; …] (the ln_f fold), so that part is 1/n of the source's as well.
        TokenEmbedding | PositionEmbedding => (1, vec![n]),
        NormWeight | NormBias => (1, vec![n]),
        // Tied head: γ/n, β/n feed the head, whose logits sum the n copies: every copy's
        // gradient is the source's whole gradient, and each copy is θ/n.
        FinalNormWeight | FinalNormBias if s.tie_embeddings => (n, vec![1]),
        FinalNormWeight | FinalNormBias => (1, vec![n]),
        // Blocks W/n read the stacked input; q heads are duplicated n times, the KV heads k.
        QkvWeight => (n, vec![n, kv, kv]),
        QkvBias => (1, vec![n, kv, kv]),
        AttnOutWeight => (n, vec![n]),
        AttnOutBias => (1, vec![n]),
        MlpUpWeight => (n, vec![m]),
        MlpUpBias => (1, vec![m]),
        // Blocks W/m read the m-fold inner activation.
        MlpDownWeight => (m, vec![n]),
        MlpDownBias => (1, vec![n]),
        // One output copy (the logits themselves), n input blocks W/n.
        LmHead => (n, vec![1]),
    };
    AdamRule {
        step_divisor,
        grad_divisor,
    }
}

/// Every parameter of a model of config `c`, with its checkpoint name and kind, in model order.
pub fn parameters(c: &GptConfig) -> Vec<(String, ParamKind)> {
    use ParamKind::*;
    let mut out = vec![("wte.weight".to_string(), TokenEmbedding)];
    if c.positional == Positional::Learned {
        out.push(("wpe.weight".to_string(), PositionEmbedding));
    }
    let norm_bias = c.bias && c.norm == NormKind::LayerNorm;
    for l in 0..c.n_layer {
        let p = |name: &str| format!("h.{l}.{name}");
        let mut push = |name: &str, kind| out.push((p(name), kind));
        push("ln_1.weight", NormWeight);
        if norm_bias {
            push("ln_1.bias", NormBias);
        }
        push("attn.c_attn.weight", QkvWeight);
        if c.bias {
            push("attn.c_attn.bias", QkvBias);
        }
        push("attn.c_proj.weight", AttnOutWeight);
        if c.bias {
            push("attn.c_proj.bias", AttnOutBias);
        }
        push("ln_2.weight", NormWeight);
        if norm_bias {
            push("ln_2.bias", NormBias);
        }
        push("mlp.c_fc.weight", MlpUpWeight);
        if c.bias {
            push("mlp.c_fc.bias", MlpUpBias);
        }
        if c.mlp == MlpKind::SwiGlu {
            push("mlp.c_gate.weight", MlpUpWeight);
            if c.bias {
                push("mlp.c_gate.bias", MlpUpBias);
            }
        }
        push("mlp.c_proj.weight", MlpDownWeight);
        if c.bias {
            push("mlp.c_proj.bias", MlpDownBias);
        }
    }
    out.push(("ln_f.weight".to_string(), FinalNormWeight));
    if norm_bias {
        out.push(("ln_f.bias".to_string(), FinalNormBias));
    }
    if !c.tie_embeddings {
        out.push(("lm_head.weight".to_string(), LmHead));
    }
    out
}

/// Source shape of a parameter: `[d_in, width]` for matrices, `[width]` for vectors.
pub fn source_shape(kind: ParamKind, s: &GptConfig, rule: &Rule) -> Vec<usize> {
    use ParamKind::*;
    let rows = match kind {
        TokenEmbedding => s.vocab_size,
        PositionEmbedding => s.context_length,
        QkvWeight | AttnOutWeight | MlpUpWeight | LmHead => s.d_model,
        MlpDownWeight => s.d_ff,
        _ => return vec![rule.source_width()],
    };
    vec![rows, rule.source_width()]
}

/// Target shape of a parameter (rows of embeddings are not grown; hidden rows are).
pub fn target_shape(kind: ParamKind, s: &GptConfig, rule: &Rule) -> Vec<usize> {
    let src = source_shape(kind, s, rule);
    match src.as_slice() {
        [rows, _] => vec![rows * rule.input_copies, rule.target_width()],
        _ => vec![rule.target_width()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gqa() -> GptConfig {
        GptConfig {
            vocab_size: 64,
            context_length: 16,
            n_layer: 2,
            d_model: 32,
            n_head: 4,
            n_kv_head: Some(2),
            d_ff: 48,
            ..GptConfig::llama_small()
        }
    }

    #[test]
    fn config_grows_widths_and_heads_and_keeps_the_rest() {
        let s = GptConfig::gpt2_124m();
        let t = expand_config(&s, &ExpandOptions::default()).unwrap();
        assert_eq!((t.d_model, t.n_head, t.d_ff), (1536, 24, 6144));
        assert_eq!(t.head_dim(), s.head_dim());
        assert_eq!((t.n_layer, t.vocab_size, t.n_kv_head), (12, 50_304, None));
        let t = expand_config(
            &gqa(),
            &ExpandOptions {
                width_factor: 3,
                ffn_factor: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((t.n_head, t.kv_heads(), t.d_ff), (12, 6, 48));
        let mqa = GptConfig {
            n_kv_head: Some(1),
            ..gqa()
        };
        let t = expand_config(&mqa, &ExpandOptions::default()).unwrap();
        assert_eq!((t.n_head, t.kv_heads()), (8, 1));
        assert_eq!(source_config_of(&t, 2, 2).unwrap(), mqa);
    }

    #[test]
    fn impossible_expansions_are_refused_with_the_reason() {
        let s = gqa();
        let zero = ExpandOptions {
            width_factor: 0,
            ..Default::default()
        };
        let e = expand_config(&s, &zero).unwrap_err().to_string();
        assert!(e.contains("width_factor") && e.contains(">= 1"), "{e}");
        let nan = ExpandOptions {
            variant: Variant::NoisySymmetric,
            snr_db: f64::NAN,
            ..Default::default()
        };
        assert!(matches!(
            expand_config(&s, &nan),
            Err(CloneError::BadSnr { .. })
        ));

        let t = |f: &dyn Fn(&mut GptConfig)| {
            let mut t = expand_config(&s, &ExpandOptions::default()).unwrap();
            f(&mut t);
            factors_between(&s, &t)
        };
        assert_eq!(t(&|_| {}).unwrap(), (2, 2));
        let e = t(&|c| {
            c.d_model = 48;
            c.n_head = 6;
            c.n_kv_head = Some(3);
        })
        .unwrap_err();
        assert!(
            matches!(
                e,
                CloneError::NonIntegerFactor {
                    field: "d_model",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("integer"), "{e}");
        let e = t(&|c| c.n_head = 4).unwrap_err();
        assert!(matches!(e, CloneError::Heads { .. }), "{e}");
        let e = t(&|c| c.n_kv_head = Some(2)).unwrap_err();
        assert!(matches!(e, CloneError::KvHeads { .. }), "{e}");
        let e = t(&|c| c.n_layer = 3).unwrap_err().to_string();
        assert!(e.contains("n_layer") && e.contains("unchanged"), "{e}");

        let mqa = GptConfig {
            n_kv_head: Some(1),
            ..gqa()
        };
        let mut target = expand_config(&mqa, &ExpandOptions::default()).unwrap();
        target.n_kv_head = Some(2);
        let e = factors_between(&mqa, &target).unwrap_err();
        assert!(matches!(e, CloneError::MqaKvHeads { .. }), "{e}");
        assert!(e.to_string().contains("multi-query"), "{e}");

        assert!("sideways".parse::<Variant>().is_err());
        assert_eq!(
            "noisy-diagonal".parse::<Variant>().unwrap(),
            Variant::NoisyDiagonal
        );
    }

    #[test]
    fn rule_shapes_match_the_derived_config_parameter_count() {
        for tie in [false, true] {
            let s = GptConfig {
                tie_embeddings: tie,
                bias: true,
                ..gqa()
            };
            for (n, m) in [(2, 1), (3, 2), (4, 3)] {
                let opts = ExpandOptions {
                    width_factor: n,
                    ffn_factor: m,
                    ..Default::default()
                };
                let t = expand_config(&s, &opts).unwrap();
                let (mut src, mut tgt) = (0, 0);
                for (_, kind) in parameters(&s) {
                    let r = rule(kind, &s, n, m);
                    src += source_shape(kind, &s, &r).iter().product::<usize>();
                    tgt += target_shape(kind, &s, &r).iter().product::<usize>();
                }
                assert_eq!(src, s.param_count());
                assert_eq!(tgt, t.param_count());
                assert_eq!(parameters(&s).len(), parameters(&t).len());
            }
        }
    }

    /// The optimizer table agrees with the weight table everywhere: the step divisor is the
    /// block's division (`input_copies · divide_by`) and each section's gradient divisor is
    /// its output copies over `divide_by` (the derivation in `docs/hypercloning.md`).
    #[test]
    fn adam_rule_follows_the_weight_rule() {
        for kv in [None, Some(2), Some(1)] {
            for tie in [false, true] {
                let s = GptConfig {
                    tie_embeddings: tie,
                    bias: true,
                    n_kv_head: kv,
                    ..gqa()
                };
                for (n, m) in [(1, 1), (2, 1), (3, 2), (4, 3)] {
                    for (name, kind) in parameters(&s) {
                        let r = rule(kind, &s, n, m);
                        let a = adam_rule(kind, &s, n, m);
                        assert_eq!(a.step_divisor, r.input_copies * r.divide_by, "{name}");
                        let copies: Vec<usize> = r.output.iter().map(|x| x.copies).collect();
                        let from_grad: Vec<usize> =
                            a.grad_divisor.iter().map(|g| g * r.divide_by).collect();
                        assert_eq!(from_grad, copies, "{name} (n {n}, m {m}, tied {tie})");
                    }
                }
            }
        }
        let mqa = GptConfig {
            n_kv_head: Some(1),
            ..gqa()
        };
        assert_eq!(
            adam_rule(ParamKind::QkvWeight, &mqa, 3, 2).grad_divisor,
            vec![3, 1, 1]
        );
        let tied = GptConfig {
            tie_embeddings: true,
            ..gqa()
        };
        let a = adam_rule(ParamKind::FinalNormWeight, &tied, 2, 2);
        assert_eq!((a.step_divisor, a.grad_divisor), (2, vec![1]));
    }

    #[test]
    fn options_parse_from_toml_with_defaults_and_refuse_unknown_keys() {
        let o: ExpandOptions = serde_json::from_str(r#"{"variant":"noisy-symmetric"}"#).unwrap();
        assert_eq!(o.width_factor, 2);
        assert_eq!(o.variant, Variant::NoisySymmetric);
        assert_eq!(o.snr_db, 10.0);
        let e = serde_json::from_str::<ExpandOptions>(r#"{"width":2}"#).unwrap_err();
        assert!(e.to_string().contains("width"), "{e}");
    }
}
