//! The training configuration: one TOML file with `[model]`, `[data]`, `[optimizer]`,
//! `[schedule]` and `[run]` sections, unknown keys refused, any value overridable from the
//! command line with `--set section.key=value` (type-checked like the file).

use std::path::{Path, PathBuf};

use hyperclone_data::PrepareOptions;
use hyperclone_model::{AttentionKernel, CrossEntropyKernel, GptConfig, Kernels, LayerOpsKernel};
use serde::{Deserialize, Serialize};

/// Why a configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A key is unknown, missing or has the wrong type.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file (or `--set` for overrides).
        path: PathBuf,
        /// Dotted key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A `--set` override is not of the form `section.key=value`.
    #[error("--set {0:?}: expected section.key=value")]
    BadOverride(String),
    /// The model section names an unknown preset.
    #[error("{path}: key `model.preset`: unknown preset {name:?} (known: {known})")]
    UnknownPreset {
        /// The file.
        path: PathBuf,
        /// The preset asked for.
        name: String,
        /// The known names.
        known: String,
    },
}

fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.95
}
fn d_eps() -> f64 {
    1e-8
}
fn d_wd() -> f64 {
    0.1
}
fn d_lr() -> f64 {
    6e-4
}
fn d_clip() -> f64 {
    1.0
}
fn d_min_lr_ratio() -> f64 {
    0.1
}
fn is_one(n: &usize) -> bool {
    *n == 1
}

fn d_one() -> usize {
    1
}

/// Untimed steps before the timed steps of the one-peer reference
/// ([`RunConfig::scaling_reference_steps`]): the first compiles (and on GPUs autotunes) the
/// kernels of its shapes.
pub const SCALING_REFERENCE_WARMUP: usize = 3;

fn d_scaling_reference_steps() -> usize {
    10
}
fn is_default_scaling_reference_steps(n: &usize) -> bool {
    *n == d_scaling_reference_steps()
}
fn d_eval_every() -> u64 {
    100
}
fn d_eval_batches() -> usize {
    8
}
fn d_keep_last() -> usize {
    2
}
fn d_log_every() -> u64 {
    10
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// First-moment decay β1.
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    /// Second-moment decay β2.
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    /// Denominator epsilon.
    #[serde(default = "d_eps")]
    pub eps: f64,
    /// Decoupled weight decay (applied to matrices; see `decay_all`).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Also decay norms, biases and embeddings (off by default, as in GPT-2/nanoGPT).
    #[serde(default)]
    pub decay_all: bool,
    /// Global gradient-norm clip; 0 disables clipping.
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: d_lr(),
            beta1: d_beta1(),
            beta2: d_beta2(),
            eps: d_eps(),
            weight_decay: d_wd(),
            decay_all: false,
            grad_clip: d_clip(),
        }
    }
}

/// Shape of the learning-rate decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// Cosine from the peak to `min_lr_ratio · lr` at `decay_steps`, then constant.
    Cosine,
    /// Straight line from the peak to `min_lr_ratio · lr` at `decay_steps`, then constant
    /// (the paper's schedule with `min_lr_ratio = 0.1`).
    Linear,
    /// No decay: the peak after warm-up.
    Constant,
}

/// Learning-rate schedule: linear warm-up, then decay to a floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Decay shape after warm-up.
    #[serde(default = "default_decay")]
    pub decay: Decay,
    /// Floor as a fraction of the peak learning rate.
    #[serde(default = "d_min_lr_ratio")]
    pub min_lr_ratio: f64,
    /// Step at which the floor is reached (default: the last step of the run, counted from
    /// the schedule's start: `start_step + max_steps`).
    #[serde(default)]
    pub decay_steps: Option<u64>,
    /// Where this run enters the schedule: the run continues a schedule that already took
    /// `start_step` steps, so its step `t` gets the schedule's lr at `start_step + t` (warm-up
    /// over if `start_step ≥ warmup_steps`). A wide run grown from a small run's checkpoint at
    /// step k continues the small run's schedule position with `start_step = k`. Default 0
    /// (left out of the file at 0, so older runs keep their hashes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_step: u64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

fn default_decay() -> Decay {
    Decay::Cosine
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            warmup_steps: 0,
            decay: Decay::Cosine,
            min_lr_ratio: d_min_lr_ratio(),
            decay_steps: None,
            start_step: 0,
        }
    }
}

/// Numeric precision of the model's weights and compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    /// f32 everywhere (TF32 tensor cores on CUDA matmuls).
    #[serde(rename = "f32")]
    F32,
    /// Mixed precision, much as PyTorch's autocast: f32 weights, optimiser state, residual
    /// stream, norms and loss; bf16 matmuls, attention and MLP activations. flex and cuda (on the
    /// CPU it is slower than f32: a way to check the GPU's numbers, not to train).
    #[serde(rename = "bf16")]
    Bf16,
    /// bf16 weights, optimiser state and compute (CUDA only): the least memory and the most
    /// speed, but small updates round away once the learning rate has decayed.
    #[serde(rename = "bf16-pure")]
    Bf16Pure,
}

impl Precision {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Bf16Pure => "bf16-pure",
        }
    }

    /// Whether the matmuls run in bf16 (selects the card's bf16 peak for MFU).
    pub fn matmuls_in_bf16(self) -> bool {
        self != Precision::F32
    }

    /// The compute dtype to give the model of an f32 backend ([`Precision::Bf16`] only).
    pub fn compute_dtype(self) -> Option<burn::tensor::FloatDType> {
        (self == Precision::Bf16).then_some(burn::tensor::FloatDType::BF16)
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "bf16-pure" => Ok(Precision::Bf16Pure),
            _ => Err(format!("unknown precision {s:?} (f32, bf16, bf16-pure)")),
        }
    }
}

/// Which burn backend runs the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The best backend compiled in: cuda, then wgpu, then flex.
    Auto,
    /// burn's pure-Rust CPU backend.
    Flex,
    /// NVIDIA GPUs (build with `--features cuda`).
    Cuda,
    /// Vulkan/Metal/WebGPU through wgpu (build with `--features wgpu`).
    Wgpu,
}

/// Batch, budget, evaluation, checkpointing and hardware of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of weights, batches and dropout.
    #[serde(default)]
    pub seed: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence (≤ the model's context_length).
    pub seq_len: usize,
    /// Micro-batches per optimiser step.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Data-parallel peers on this machine (one per device; CPU peers share the one CPU
    /// device): each computes `batch_size / devices` rows of every micro-batch, so the global
    /// batch, the data and the loss curve (to float rounding) are those of one device. Not part
    /// of the trajectory hash, and left out when serialised at its default 1, so that configs
    /// and stage hashes of single-device runs are unchanged.
    #[serde(default = "d_one", skip_serializing_if = "is_one")]
    pub devices: usize,
    /// Timed steps of the one-peer reference a data-parallel run (more than one peer in all)
    /// measures before its peers start: one device trains one peer's share of the batch alone
    /// (`batch_size / peers` rows, `seq_len`, `grad_accum`; no communication) on a throwaway
    /// copy of the model, [`SCALING_REFERENCE_WARMUP`] untimed steps and then this many timed
    /// ones. `run_info.json` records the median as `single_peer_tokens_per_s`, and the report
    /// divides the run's global tokens/s by peers × that figure (the scaling efficiency). The
    /// run's weights, data and losses are untouched, and the time is not charged. 0 skips it
    /// (the report then says "not measured"). Default 10 (five gave unstable medians on a
    /// loaded CPU), left out when serialised at its default so that configs and stage hashes
    /// stay as they were.
    #[serde(
        default = "d_scaling_reference_steps",
        skip_serializing_if = "is_default_scaling_reference_steps"
    )]
    pub scaling_reference_steps: usize,
    /// Budget in optimiser steps.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Budget in training tokens (rounded up to whole steps).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Budget in wall-clock seconds (the run checkpoints and stops when it is spent).
    #[serde(default)]
    pub max_wall_seconds: Option<f64>,
    /// Evaluate on the validation windows every this many steps (and at the end).
    #[serde(default = "d_eval_every")]
    pub eval_every: u64,
    /// Number of validation batches per evaluation.
    #[serde(default = "d_eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every this many steps (and at the end); 0 means only at the end.
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Keep this many most recent checkpoints (the best one is kept too).
    #[serde(default = "d_keep_last")]
    pub keep_last: usize,
    /// Print a progress line every this many steps when not on a terminal.
    #[serde(default = "d_log_every")]
    pub log_every: u64,
    /// Backend to run on.
    #[serde(default = "default_backend")]
    pub backend: BackendKind,
    /// Weight and compute precision.
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// How training differentiates attention: `fused` (the backend's attention kernel, flash
    /// attention on GPUs, with a backward that recomputes the attention matrix), `composed`
    /// (burn's op-by-op autodiff; more memory, kept for comparison) or `auto` (the faster one
    /// on the backend: fused everywhere so far, see [`AttentionKernel::resolve`]). Each computes the same function; losses differ
    /// only by float rounding.
    #[serde(default)]
    pub attention: AttentionKernel,
    /// How training differentiates the loss: `fused` (one operation whose backward is a single
    /// pass over the logits) or `composed` (burn's `log_softmax` and `gather`, op by op; kept
    /// for comparison). The same function; losses differ only by float rounding.
    #[serde(default)]
    pub cross_entropy: CrossEntropyKernel,
    /// How training differentiates the norms (LayerNorm, RMSNorm) and the GELU: `fused` (one
    /// operation each, keeping only its input and row statistics, with a one-pass backward) or
    /// `composed` (burn's ops, each recorded; kept for comparison). The same functions; losses
    /// differ only by float rounding.
    #[serde(default)]
    pub layer_ops: LayerOpsKernel,
    /// Also write the run's scalars as TensorBoard event files beside `metrics.jsonl`
    /// (`tensorboard --logdir runs/EXP`; default true).
    #[serde(default = "default_true")]
    pub tensorboard: bool,
}

fn default_true() -> bool {
    true
}

impl RunConfig {
    /// The model's compute dtype and kernels for this run (`precision`, `attention`,
    /// `cross_entropy`, `layer_ops`), as the one value the model carries.
    pub fn kernels(&self) -> Kernels {
        Kernels {
            compute_dtype: self.precision.compute_dtype(),
            attention: self.attention.resolve(),
            cross_entropy: self.cross_entropy,
            layer_ops: self.layer_ops,
        }
    }
}

fn default_backend() -> BackendKind {
    BackendKind::Auto
}
fn default_precision() -> Precision {
    Precision::F32
}

/// A whole training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The architecture (a preset name plus overrides, or every field). May be omitted when
    /// the run starts from `--init-from`, whose checkpoint fixes the architecture.
    #[serde(default)]
    pub model: Option<GptConfig>,
    /// Where the tokens come from (prepared once, then reused).
    pub data: PrepareOptions,
    /// AdamW settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Batch, budget, evaluation and checkpoints.
    pub run: RunConfig,
}

/// Why a configuration cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {message}")]
pub struct InvalidValue {
    /// Dotted key.
    pub key: &'static str,
    /// The value given.
    pub value: String,
    /// What is allowed.
    pub message: &'static str,
}

impl TrainConfig {
    /// Tokens consumed by one optimiser step.
    pub fn tokens_per_step(&self) -> u64 {
        (self.run.batch_size * self.run.seq_len * self.run.grad_accum) as u64
    }

    /// Number of optimiser steps the budget allows (`max_steps`, else `max_tokens` rounded
    /// up); `None` when only a wall-time budget is given.
    pub fn total_steps(&self) -> Option<u64> {
        match (self.run.max_steps, self.run.max_tokens) {
            (Some(s), Some(t)) => Some(s.min(t.div_ceil(self.tokens_per_step()))),
            (Some(s), None) => Some(s),
            (None, Some(t)) => Some(t.div_ceil(self.tokens_per_step())),
            (None, None) => None,
        }
    }

    /// Checks the values that serde's types cannot.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |key, value: String, message| {
            Err(InvalidValue {
                key,
                value,
                message,
            })
        };
        let r = &self.run;
        if r.batch_size == 0 {
            return bad("run.batch_size", "0".into(), "must be at least 1");
        }
        if r.seq_len == 0 {
            return bad("run.seq_len", "0".into(), "must be at least 1");
        }
        if r.grad_accum == 0 {
            return bad("run.grad_accum", "0".into(), "must be at least 1");
        }
        if r.devices == 0 {
            return bad("run.devices", "0".into(), "must be at least 1");
        }
        if r.eval_every == 0 {
            return bad("run.eval_every", "0".into(), "must be at least 1");
        }
        if r.max_steps.is_none() && r.max_tokens.is_none() && r.max_wall_seconds.is_none() {
            return bad(
                "run.max_steps",
                "(none)".into(),
                "give a budget: run.max_steps, run.max_tokens or run.max_wall_seconds",
            );
        }
        if let Some(model) = &self.model {
            if r.seq_len > model.context_length {
                return bad(
                    "run.seq_len",
                    r.seq_len.to_string(),
                    "must not exceed model.context_length",
                );
            }
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(
                "optimizer.lr",
                o.lr.to_string(),
                "must be a positive number",
            );
        }
        if !(0.0..1.0).contains(&o.beta1) {
            return bad("optimizer.beta1", o.beta1.to_string(), "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&o.beta2) {
            return bad("optimizer.beta2", o.beta2.to_string(), "must be in [0, 1)");
        }
        if o.eps.is_nan() || o.eps <= 0.0 {
            return bad("optimizer.eps", o.eps.to_string(), "must be positive");
        }
        if o.weight_decay.is_nan() || o.weight_decay < 0.0 {
            return bad(
                "optimizer.weight_decay",
                o.weight_decay.to_string(),
                "must be >= 0",
            );
        }
        if o.grad_clip.is_nan() || o.grad_clip < 0.0 {
            return bad(
                "optimizer.grad_clip",
                o.grad_clip.to_string(),
                "must be >= 0",
            );
        }
        let s = &self.schedule;
        if !(0.0..=1.0).contains(&s.min_lr_ratio) {
            return bad(
                "schedule.min_lr_ratio",
                s.min_lr_ratio.to_string(),
                "must be in [0, 1]",
            );
        }
        Ok(())
    }

    /// Reads a TOML file, applies `--set` overrides, resolves the model preset and validates.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigFileError> {
        Self::from_toml_str(&read_config_file(path)?, path, overrides)
    }

    /// Like [`TrainConfig::load`] from a string; `origin` names it in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigFileError> {
        let table = parse_with_overrides(text, origin, overrides)?;
        let config: TrainConfig = typed_from_table(table, origin)?;
        config.validate().map_err(|e| ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key: e.key.to_string(),
            message: format!("{} ({})", e.message, e.value),
        })?;
        if let Some(model) = &config.model {
            model.validate().map_err(|e| ConfigFileError::Invalid {
                path: origin.to_path_buf(),
                key: "model".into(),
                message: e.to_string(),
            })?;
        }
        Ok(config)
    }

    /// The resolved configuration as TOML (what the run directory keeps).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("TrainConfig serialises to TOML")
    }
}

/// Reads a config file's text; the error names the file.
pub fn read_config_file(path: &Path) -> Result<String, ConfigFileError> {
    std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses TOML text and applies `--set` overrides (presets are expanded later, by
/// [`typed_from_table`], so that an override of a single model field applies on top of them).
pub fn parse_with_overrides(
    text: &str,
    origin: &Path,
    overrides: &[String],
) -> Result<toml::Table, ConfigFileError> {
    let mut table: toml::Table =
        text.parse()
            .map_err(|e: toml::de::Error| ConfigFileError::Syntax {
                path: origin.to_path_buf(),
                message: e.to_string(),
            })?;
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    Ok(table)
}

/// Deserialises a table into `T` with the dotted key of any error, after expanding model
/// presets found at any `model` key.
pub fn typed_from_table<T: serde::de::DeserializeOwned>(
    mut table: toml::Table,
    origin: &Path,
) -> Result<T, ConfigFileError> {
    expand_presets(&mut table, origin)?;
    let value = toml::Value::Table(table);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key,
            message: e.into_inner().to_string(),
        }
    })
}

/// Replaces every table under a key named `model` that has `preset = "name"` with the preset's
/// fields overlaid by the table's other keys.
fn expand_presets(table: &mut toml::Table, origin: &Path) -> Result<(), ConfigFileError> {
    for (key, value) in table.iter_mut() {
        if let toml::Value::Table(inner) = value {
            if key == "model" || key.ends_with("_model") {
                if let Some(preset) = inner.remove("preset") {
                    let name = preset.as_str().unwrap_or_default().to_string();
                    let base =
                        GptConfig::preset(&name).ok_or_else(|| ConfigFileError::UnknownPreset {
                            path: origin.to_path_buf(),
                            name: name.clone(),
                            known: GptConfig::PRESETS.join(", "),
                        })?;
                    let mut merged = toml::Table::try_from(&base).expect("GptConfig → TOML");
                    for (k, v) in std::mem::take(inner) {
                        merged.insert(k, v);
                    }
                    *inner = merged;
                }
            } else {
                expand_presets(inner, origin)?;
            }
        }
    }
    Ok(())
}

/// Applies one `section.key=value` override. The value is read as a TOML literal
/// (`3e-4`, `true`, `"text"`, `[1, 2]`); anything that is not one is taken as a string.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), ConfigFileError> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| ConfigFileError::BadOverride(spec.to_string()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(ConfigFileError::BadOverride(spec.to_string()));
    }
    let value = format!("v = {}", raw.trim())
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cursor = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cursor
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(ConfigFileError::BadOverride(spec.to_string())),
        };
    }
    cursor.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [model]
        preset = "cpu-tiny"
        dropout = 0.1

        [data]
        train = ["datasets/gutenberg/train"]
        val = ["datasets/gutenberg/val"]
        tokenizer = { file = "datasets/gutenberg/tokenizer-4096.json" }
        out = "runs/data"

        [run]
        batch_size = 4
        seq_len = 32
        max_steps = 10
    "#;

    fn load(text: &str, overrides: &[&str]) -> Result<TrainConfig, ConfigFileError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::from_toml_str(text, Path::new("exp.toml"), &o)
    }

    #[test]
    fn preset_with_overrides_and_defaults() {
        let c = load(BASE, &[]).unwrap();
        let m = c.model.unwrap();
        assert_eq!(m.d_model, 128);
        assert_eq!(m.dropout, 0.1);
        assert_eq!(c.optimizer, OptimizerConfig::default());
        assert_eq!(c.run.grad_accum, 1);
    }

    #[test]
    fn set_overrides_are_type_checked() {
        let c = load(BASE, &["optimizer.lr=3e-4", "model.n_layer=3"]).unwrap();
        assert_eq!(c.optimizer.lr, 3e-4);
        assert_eq!(c.model.unwrap().n_layer, 3);
        let e = load(BASE, &["optimizer.lr=fast"]).unwrap_err().to_string();
        assert!(e.contains("optimizer.lr") && e.contains("exp.toml"), "{e}");
        let e = load(BASE, &["nonsense"]).unwrap_err().to_string();
        assert!(e.contains("section.key=value"), "{e}");
    }

    #[test]
    fn typos_and_bad_values_name_the_key() {
        let e = load(&BASE.replace("batch_size", "batchsize"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batchsize"), "{e}");
        let e = load(&BASE.replace("dropout = 0.1", "dropuot = 0.1"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dropuot"), "{e}");
        let e = load(&BASE.replace("cpu-tiny", "cpu-huge"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu-huge") && e.contains("cpu-tiny"), "{e}");
        let e = load(BASE, &["run.seq_len=1000"]).unwrap_err().to_string();
        assert!(
            e.contains("run.seq_len") && e.contains("context_length"),
            "{e}"
        );
        let e = load(BASE, &["model.n_head=5"]).unwrap_err().to_string();
        assert!(e.contains("n_head = 5"), "{e}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = load(BASE, &[]).unwrap();
        let again = load(&c.to_toml(), &[]).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn attention_kernel_defaults_to_auto_and_parses_with_a_clear_error() {
        assert_eq!(
            load(BASE, &[]).unwrap().run.attention,
            AttentionKernel::Auto
        );
        for (name, want) in [
            ("auto", AttentionKernel::Auto),
            ("fused", AttentionKernel::Fused),
            ("composed", AttentionKernel::Composed),
        ] {
            let c = load(BASE, &[format!("run.attention={name}").as_str()]).unwrap();
            assert_eq!(c.run.attention, want);
            assert_eq!(load(&c.to_toml(), &[]).unwrap().run.attention, want);
        }
        // Not part of the trajectory: a run may resume with the other kernel.
        let model = GptConfig::cpu_tiny();
        let fused = load(BASE, &["run.attention=fused"]).unwrap();
        let composed = load(BASE, &["run.attention=composed"]).unwrap();
        assert_eq!(
            crate::trainer::trajectory_hash(&fused, &model),
            crate::trainer::trajectory_hash(&composed, &model)
        );
        let e = load(BASE, &["run.attention=flash"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("attention") && e.contains("flash"), "{e}");
    }

    /// The four run-time keys become the one `Kernels` value the model carries, `auto`
    /// resolved.
    #[test]
    fn run_keys_make_the_models_kernels() {
        let base = load(BASE, &[]).unwrap();
        assert_eq!(
            base.run.kernels(),
            Kernels {
                compute_dtype: None,
                attention: AttentionKernel::Fused,
                cross_entropy: CrossEntropyKernel::Fused,
                layer_ops: LayerOpsKernel::Fused,
            }
        );
        let c = load(
            BASE,
            &[
                "run.precision=bf16",
                "run.attention=composed",
                "run.cross_entropy=composed",
                "run.layer_ops=composed",
            ],
        )
        .unwrap();
        assert_eq!(
            c.run.kernels(),
            Kernels {
                compute_dtype: Some(burn::tensor::FloatDType::BF16),
                attention: AttentionKernel::Composed,
                cross_entropy: CrossEntropyKernel::Composed,
                layer_ops: LayerOpsKernel::Composed,
            }
        );
    }

    #[test]
    fn fused_or_composed_kernels_default_to_fused_and_parse_with_a_clear_error() {
        let base = load(BASE, &[]).unwrap();
        assert_eq!(base.run.cross_entropy, CrossEntropyKernel::Fused);
        assert_eq!(base.run.layer_ops, LayerOpsKernel::Fused);
        let model = GptConfig::cpu_tiny();
        for key in ["cross_entropy", "layer_ops"] {
            let read = |c: &TrainConfig| match key {
                "cross_entropy" => c.run.cross_entropy.as_str(),
                _ => c.run.layer_ops.as_str(),
            };
            for name in ["fused", "composed"] {
                let c = load(BASE, &[format!("run.{key}={name}").as_str()]).unwrap();
                assert_eq!(read(&c), name);
                assert_eq!(read(&load(&c.to_toml(), &[]).unwrap()), name);
                // Not part of the trajectory: a run may resume with the other kernel.
                assert_eq!(
                    crate::trainer::trajectory_hash(&c, &model),
                    crate::trainer::trajectory_hash(&base, &model)
                );
            }
            let e = load(BASE, &[format!("run.{key}=sparse").as_str()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("sparse"), "{e}");
        }
    }

    #[test]
    fn precisions_parse_from_toml_and_the_command_line_alike() {
        for (name, want) in [
            ("f32", Precision::F32),
            ("bf16", Precision::Bf16),
            ("bf16-pure", Precision::Bf16Pure),
        ] {
            let c = load(BASE, &[format!("run.precision={name}").as_str()]).unwrap();
            assert_eq!(c.run.precision, want);
            assert_eq!(want.as_str(), name);
            assert_eq!(name.parse::<Precision>(), Ok(want));
            assert_eq!(load(&c.to_toml(), &[]).unwrap().run.precision, want);
        }
        // Only mixed bf16 asks the model for a compute dtype; both bf16 kinds use the bf16 peak.
        assert_eq!(
            Precision::Bf16.compute_dtype(),
            Some(burn::tensor::FloatDType::BF16)
        );
        assert_eq!(Precision::Bf16Pure.compute_dtype(), None);
        assert!(Precision::Bf16Pure.matmuls_in_bf16() && !Precision::F32.matmuls_in_bf16());
        let e = load(BASE, &["run.precision=fp16"]).unwrap_err().to_string();
        assert!(e.contains("precision") && e.contains("fp16"), "{e}");
        assert!("fp16"
            .parse::<Precision>()
            .unwrap_err()
            .contains("bf16-pure"));
    }

    #[test]
    fn budget_in_tokens_rounds_up_to_steps() {
        let c = load(BASE, &["run.max_tokens=1000"]).unwrap();
        // 4 · 32 = 128 tokens per step → 8 steps (1000/128 = 7.8); max_steps 10 is larger.
        assert_eq!(c.total_steps(), Some(8));
    }
}
