//! AdamW's state through the clone: the moments of a trained small model, mapped by the same
//! rule table as its weights ([`crate::plan::rule`], with the factors of
//! [`crate::plan::adam_rule`]), so that the wide model continues the small model's optimizer
//! instead of starting from zero moments.
//!
//! # Why these factors
//! Under the noise-free symmetric variant every target block is `θ/D` and every block's
//! gradient is `g/G` of the source's (`D`, `G` from [`adam_rule`]). Our AdamW's update is
//! `θ ← θ·(1 − lr·wd) − lr·s·m̂/(√v̂ + ε·e)` (`hyperclone_training::optim`), with ε outside the
//! square root. Starting the target from `m/G`, `v/G²` (tiled like the weights), `e = 1/G` and
//! `s = 1/D`, its `m̂/(√v̂ + ε·e)` equals the source's, every block moves by the source's step
//! divided by `D`, and its decay `θ/D·lr·wd` is the source's divided by `D`: the wide model is
//! the clone of the small model after every step, as long as both see the same batches, the
//! same learning rates and the same update count (bias correction), without dropout (masks
//! differ between copies) and without gradient clipping (the wide model's global gradient
//! norm is not the small model's, so the clip factors differ). `crates/cloning/tests/
//! optimizer_transfer.rs` checks it after 10 steps. The other variants get the same mapping;
//! their copies then drift apart, which is what their noise is for.
//!
//! Factors compose: a state that already has factors (a wide run that was itself grown from
//! a transferred state) is divided again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use hyperclone_model::checkpoint::{read_meta, CheckpointError};
use hyperclone_model::GptConfig;
use hyperclone_training::checkpoint::{
    read_state, verify_checkpoint, RunDirError, DONE_FILE, OPTIMIZER_FILE, STATE_FILE,
};
use hyperclone_training::optim::{AdamWState, OptimError, ParamScale, ParamState, StateOrigin};

use crate::plan::{
    adam_rule, expand_config, parameters, rule, source_shape, CloneError, ExpandOptions,
    ParamKind, Rule, Variant,
};
use crate::record::{read_expand_record, RecordError};

/// AdamW's state of one parameter as tensors: what [`expand_moments`] maps.
#[derive(Debug, Clone)]
pub struct AdamMoments<B: Backend> {
    /// First moment, flattened row-major like the parameter (`[numel]`).
    pub exp_avg: Tensor<B, 1>,
    /// Second moment, flattened likewise (`[numel]`).
    pub exp_avg_sq: Tensor<B, 1>,
    /// Factor on the parameter's Adam step (1 for a run's own state).
    pub step_factor: f64,
    /// Factor on ε per column (the parameter's last axis); empty: 1 for every column.
    pub eps_factor: Vec<f64>,
}

/// Maps the AdamW state of the source parameter `name` (of kind `kind`, in a model of config
/// `source`) to the target's with width factor `n` and FFN factor `m`: the moments are tiled
/// like the weight (same grid, same section order), the first divided by `G` and the second
/// by `G²` section by section, ε's factor divided by `G` per column and the step factor by
/// `D` ([`adam_rule`]). A pure function of its tensors, on their device.
pub fn expand_moments<B: Backend>(
    name: &str,
    kind: ParamKind,
    source: &GptConfig,
    n: usize,
    m: usize,
    moments: AdamMoments<B>,
) -> Result<AdamMoments<B>, CloneError> {
    let r = rule(kind, source, n, m);
    let a = adam_rule(kind, source, n, m);
    let (rows, width) = match source_shape(kind, source, &r).as_slice() {
        [rows, width] => (*rows, *width),
        [width] => (1, *width),
        other => unreachable!("source_shape gives 1 or 2 axes, not {other:?}"),
    };
    for (label, t) in [("exp_avg", &moments.exp_avg), ("exp_avg_sq", &moments.exp_avg_sq)] {
        if t.dims()[0] != rows * width {
            return Err(CloneError::Shape {
                name: format!("{name}.{label}"),
                expected: vec![rows * width],
                found: t.dims().to_vec(),
            });
        }
    }
    let bad = |reason: String| CloneError::BadFactors {
        name: name.to_string(),
        reason,
    };
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(moments.step_factor) {
        return Err(bad(format!(
            "step factor {} is not a finite number > 0",
            moments.step_factor
        )));
    }
    if !moments.eps_factor.is_empty() && moments.eps_factor.len() != width {
        return Err(bad(format!(
            "{} eps factors for {width} columns",
            moments.eps_factor.len()
        )));
    }
    if let Some(e) = moments.eps_factor.iter().find(|&&e| !positive(e)) {
        return Err(bad(format!("eps factor {e} is not a finite number > 0")));
    }
    let g: Vec<f64> = a.grad_divisor.iter().map(|&g| g as f64).collect();
    let exp_avg = tile(moments.exp_avg.reshape([rows, width]), &r, |i| g[i]);
    let exp_avg_sq = tile(moments.exp_avg_sq.reshape([rows, width]), &r, |i| g[i] * g[i]);
    // ε per target column, in the target's column order: section by section, each section's
    // columns repeated `copies` times in place.
    let eps_factor = if moments.eps_factor.is_empty() && g.iter().all(|&x| x == 1.0) {
        Vec::new()
    } else {
        let mut out = Vec::with_capacity(r.target_width());
        let mut first = 0;
        for (sec, g) in r.output.iter().zip(&g) {
            for _ in 0..sec.copies {
                out.extend(
                    (first..first + sec.width)
                        .map(|c| moments.eps_factor.get(c).copied().unwrap_or(1.0) / g),
                );
            }
            first += sec.width;
        }
        out
    };
    let numel = exp_avg.dims().iter().product::<usize>();
    Ok(AdamMoments {
        exp_avg: exp_avg.reshape([numel]),
        exp_avg_sq: exp_avg_sq.reshape([numel]),
        step_factor: moments.step_factor / a.step_divisor as f64,
        eps_factor,
    })
}

/// Tiles `x` (`[rows, source width]`) into `[rows·input_copies, target width]` by `rule`,
/// dividing section `i` by `divisor(i)` once (before the broadcast, so that all copies are
/// bit-identical). Unlike the symmetric weight grid, nothing is divided by the input copies:
/// every block of a grid sees the same gradient.
fn tile<B: Backend>(x: Tensor<B, 2>, rule: &Rule, divisor: impl Fn(usize) -> f64) -> Tensor<B, 2> {
    let [rows, _] = x.dims();
    let n_in = rule.input_copies;
    let mut sections = Vec::with_capacity(rule.output.len());
    let mut first = 0;
    for (i, sec) in rule.output.iter().enumerate() {
        let part = if rule.output.len() == 1 {
            x.clone()
        } else {
            x.clone().narrow(1, first, sec.width)
        };
        first += sec.width;
        let d = divisor(i);
        let part = if d == 1.0 { part } else { part.div_scalar(d) };
        sections.push(
            part.reshape([1, rows, 1, sec.width])
                .expand([n_in, rows, sec.copies, sec.width])
                .reshape([n_in * rows, sec.copies * sec.width]),
        );
    }
    if sections.len() == 1 {
        sections.pop().expect("one section")
    } else {
        Tensor::cat(sections, 1)
    }
}

/// Maps a whole AdamW state (moments by parameter name) of a model of config `source` by
/// [`expand_moments`]. Every parameter of the source must have moments, and every name of
/// the state must be a parameter.
pub fn expand_adam_state<B: Backend>(
    source: &GptConfig,
    opts: &ExpandOptions,
    mut state: BTreeMap<String, AdamMoments<B>>,
) -> Result<BTreeMap<String, AdamMoments<B>>, CloneError> {
    expand_config(source, opts)?;
    let mut out = BTreeMap::new();
    for (name, kind) in parameters(source) {
        let moments = state
            .remove(&name)
            .ok_or_else(|| CloneError::MissingMoments { name: name.clone() })?;
        let mapped = expand_moments(
            &name,
            kind,
            source,
            opts.width_factor,
            opts.ffn_factor,
            moments,
        )?;
        out.insert(name, mapped);
    }
    match state.into_keys().next() {
        Some(name) => Err(CloneError::UnknownMoments { name }),
        None => Ok(out),
    }
}

/// [`expand_adam_state`] on a state as it is stored (`hyperclone_training::optim::
/// AdamWState`), one parameter at a time on `device` (peak: one parameter's source and target
/// moments besides the two host states). The update count is kept: the target's bias
/// correction continues from it. The origin is left to the caller.
pub fn expand_adamw_state<B: Backend>(
    source: &GptConfig,
    opts: &ExpandOptions,
    mut state: AdamWState,
    device: &B::Device,
) -> Result<AdamWState, CloneError> {
    expand_config(source, opts)?;
    let mut params = BTreeMap::new();
    for (name, kind) in parameters(source) {
        let p = state
            .params
            .remove(&name)
            .ok_or_else(|| CloneError::MissingMoments { name: name.clone() })?;
        let tensor = |values: Vec<f32>| {
            let len = values.len();
            Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device)
        };
        let scale = p.scale.unwrap_or(ParamScale {
            step: 1.0,
            eps: Vec::new(),
        });
        let moments = AdamMoments {
            exp_avg: tensor(p.exp_avg),
            exp_avg_sq: tensor(p.exp_avg_sq),
            step_factor: scale.step,
            eps_factor: scale.eps,
        };
        let mapped = expand_moments(
            &name,
            kind,
            source,
            opts.width_factor,
            opts.ffn_factor,
            moments,
        )?;
        let host = |t: Tensor<B, 1>, label: &str| {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| CloneError::Data {
                    name: format!("{name}.{label}"),
                    reason: format!("{e:?}"),
                })
        };
        let scale = ParamScale {
            step: mapped.step_factor,
            eps: mapped.eps_factor,
        };
        let p = ParamState {
            exp_avg: host(mapped.exp_avg, "exp_avg")?,
            exp_avg_sq: host(mapped.exp_avg_sq, "exp_avg_sq")?,
            scale: (!scale.is_identity()).then_some(scale),
        };
        params.insert(name, p);
    }
    if let Some(name) = state.params.into_keys().next() {
        return Err(CloneError::UnknownMoments { name });
    }
    Ok(AdamWState {
        updates: state.updates,
        params,
        origin: state.origin,
    })
}

// ---------------------------------------------------------------------------------------------
// Folders

/// Why an optimizer state could not be carried from a checkpoint into an expanded folder.
/// Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The source folder holds no optimizer state (a model folder such as `final/`).
    #[error("{} holds no optimizer state ({OPTIMIZER_FILE}): transferring AdamW's state needs a training checkpoint folder (runs/NAME/step-NNNNNNNN), not final/ or a model folder", .dir.display())]
    NoOptimizerState {
        /// The source folder.
        dir: PathBuf,
    },
    /// The source folder has an optimizer state but is not a complete training checkpoint.
    #[error("{} is not a complete training checkpoint: {reason}", .dir.display())]
    NotACheckpoint {
        /// The source folder.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The checkpoint failed its verification, or its `state.json` is unreadable.
    #[error(transparent)]
    Checkpoint(#[from] RunDirError),
    /// A `model.json` could not be read.
    #[error(transparent)]
    Model(#[from] CheckpointError),
    /// The optimizer state could not be read or written.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// The state does not fit the checkpoint's model, or the expansion is impossible.
    #[error("{}: {source}", .path.display())]
    Map {
        /// The optimizer state file.
        path: PathBuf,
        /// What is wrong.
        source: CloneError,
    },
    /// The target folder is not an expanded model (no `expand.json`, or no factors in it).
    #[error("{} is not the output of `hyperclone expand`: {reason}", .dir.display())]
    NotExpanded {
        /// The folder.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// `expand.json` could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The expanded folder's model is not the expansion of the checkpoint's model.
    #[error("{} does not hold the expansion of the model in {}: {detail}", .expanded.display(), .checkpoint.display())]
    ConfigMismatch {
        /// The expanded folder.
        expanded: PathBuf,
        /// The checkpoint.
        checkpoint: PathBuf,
        /// The fields that differ.
        detail: String,
    },
    /// The expanded folder was grown from other weights than the checkpoint's.
    #[error("{} was expanded from {}, whose weights (sha256 {expanded_from}) are not those of the checkpoint {} (sha256 {checkpoint_sha}): its optimizer state belongs to other weights", .expanded.display(), .source_dir.display(), .checkpoint.display())]
    OtherWeights {
        /// The expanded folder.
        expanded: PathBuf,
        /// The folder it records as its source.
        source_dir: PathBuf,
        /// The checkpoint.
        checkpoint: PathBuf,
        /// SHA-256 of the source folder's weights.
        expanded_from: String,
        /// SHA-256 of the checkpoint's weights.
        checkpoint_sha: String,
    },
}

/// A checkpoint's optimizer state mapped for an expansion, ready to be written beside the
/// expanded weights ([`write_optimizer_state`]).
#[derive(Debug, Clone)]
pub struct MappedState {
    /// The mapped state (origin set).
    pub state: AdamWState,
    /// The configuration of the model it belongs to.
    pub target: GptConfig,
    /// The checkpoint it came from.
    pub checkpoint: PathBuf,
}

/// What [`write_optimizer_state`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerTransfer {
    /// The file written (`optimizer.safetensors` in the expanded folder).
    pub path: PathBuf,
    /// The update count carried over (the bias correction continues from it).
    pub updates: u64,
    /// The checkpoint's step (the small run's schedule position).
    pub source_step: u64,
    /// Parameters whose moments were carried.
    pub parameters: usize,
}

/// Reads the AdamW state of the training checkpoint `checkpoint` (a step folder: verified
/// against its `DONE` manifest) and maps it for the expansion `opts` of its model
/// ([`expand_adamw_state`], on `device`). Nothing is written.
pub fn map_optimizer_state<B: Backend>(
    checkpoint: &Path,
    opts: &ExpandOptions,
    device: &B::Device,
) -> Result<MappedState, TransferError> {
    let path = checkpoint.join(OPTIMIZER_FILE);
    if !path.exists() {
        return Err(TransferError::NoOptimizerState {
            dir: checkpoint.to_path_buf(),
        });
    }
    for file in [STATE_FILE, DONE_FILE] {
        if !checkpoint.join(file).exists() {
            return Err(TransferError::NotACheckpoint {
                dir: checkpoint.to_path_buf(),
                reason: format!("{file} is missing"),
            });
        }
    }
    let step = read_state(checkpoint)?.step;
    verify_checkpoint(checkpoint, step)?;
    let source = read_meta(checkpoint)?.config;
    let map_err = |source| TransferError::Map {
        path: path.clone(),
        source,
    };
    let target = expand_config(&source, opts).map_err(map_err)?;
    let mut state = AdamWState::read(&path)?;
    state.origin = Some(StateOrigin {
        checkpoint: checkpoint.display().to_string(),
        step,
        width_factor: opts.width_factor,
        ffn_factor: opts.ffn_factor,
    });
    let state = expand_adamw_state::<B>(&source, opts, state, device).map_err(map_err)?;
    Ok(MappedState {
        state,
        target,
        checkpoint: checkpoint.to_path_buf(),
    })
}

/// Writes `mapped` as `optimizer.safetensors` into the expanded folder `expanded` (atomically),
/// after checking that the folder's model is the one the state was mapped for.
pub fn write_optimizer_state(
    expanded: &Path,
    mapped: &MappedState,
) -> Result<OptimizerTransfer, TransferError> {
    let mut found = read_meta(expanded)?.config;
    // Dropout is a training choice, not part of the weights.
    found.dropout = mapped.target.dropout;
    let detail: Vec<String> = mapped
        .target
        .differences(&found)
        .into_iter()
        .map(|(field, want, got)| format!("{field}: expansion {want}, folder {got}"))
        .collect();
    if !detail.is_empty() {
        return Err(TransferError::ConfigMismatch {
            expanded: expanded.to_path_buf(),
            checkpoint: mapped.checkpoint.clone(),
            detail: detail.join(", "),
        });
    }
    let path = expanded.join(OPTIMIZER_FILE);
    mapped.state.write(&path)?;
    Ok(OptimizerTransfer {
        path,
        updates: mapped.state.updates,
        source_step: mapped.state.origin.as_ref().map_or(0, |o| o.step),
        parameters: mapped.state.params.len(),
    })
}

/// Carries the AdamW state of the training checkpoint `checkpoint` into the folder `expanded`
/// written by `hyperclone expand` (or [`crate::expand_folder`]) from the same weights: the
/// expansion's factors are read from its `expand.json`, the weights are checked to be the
/// checkpoint's (by the SHA-256 in `model.json` of the source folder it records, when that
/// folder is still there), and `optimizer.safetensors` is written beside the expanded
/// weights, where `hyperclone train --init-from` finds it.
pub fn transfer_optimizer_state<B: Backend>(
    checkpoint: &Path,
    expanded: &Path,
    device: &B::Device,
) -> Result<OptimizerTransfer, TransferError> {
    let not_expanded = |reason: &str| TransferError::NotExpanded {
        dir: expanded.to_path_buf(),
        reason: reason.to_string(),
    };
    let record = read_expand_record(expanded)?.ok_or_else(|| not_expanded("no expand.json"))?;
    let (width_factor, ffn_factor) = record
        .factors()
        .ok_or_else(|| not_expanded("expand.json records no width and FFN factors"))?;
    // The mapping does not depend on the variant; it is kept for the record only.
    let variant = match record.variant.as_deref() {
        Some(v) => v.parse::<Variant>().map_err(|source| TransferError::Map {
            path: expanded.join(crate::EXPAND_FILE),
            source,
        })?,
        None => Variant::Symmetric,
    };
    let opts = ExpandOptions {
        width_factor,
        ffn_factor,
        variant,
        ..ExpandOptions::default()
    };
    let checkpoint_sha = read_meta(checkpoint)?.weights_sha256;
    match record.source_dir.as_deref().map(read_meta) {
        Some(Ok(meta)) if meta.weights_sha256 != checkpoint_sha => {
            return Err(TransferError::OtherWeights {
                expanded: expanded.to_path_buf(),
                source_dir: record.source_dir.clone().unwrap_or_default(),
                checkpoint: checkpoint.to_path_buf(),
                expanded_from: meta.weights_sha256,
                checkpoint_sha,
            })
        }
        Some(Ok(_)) => {}
        Some(Err(e)) => tracing::warn!(
            "cannot check that {} was expanded from the weights of {}: its source folder is unreadable ({e})",
            expanded.display(),
            checkpoint.display()
        ),
        None => tracing::warn!(
            "cannot check that {} was expanded from the weights of {}: expand.json records no source folder",
            expanded.display(),
            checkpoint.display()
        ),
    }
    if variant != Variant::Symmetric {
        tracing::info!(
            "the {variant} variant: the optimizer state is mapped as for symmetric cloning; the wide model follows the small one exactly only under the symmetric variant"
        );
    }
    let mapped = map_optimizer_state::<B>(checkpoint, &opts, device)?;
    write_optimizer_state(expanded, &mapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn host(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn t(v: Vec<f32>) -> Tensor<B, 1> {
        let len = v.len();
        Tensor::from_data(TensorData::new(v, [len]), &Default::default())
    }

    fn mqa() -> GptConfig {
        GptConfig {
            vocab_size: 8,
            context_length: 4,
            n_layer: 1,
            d_model: 4,
            n_head: 2,
            n_kv_head: Some(1),
            d_ff: 6,
            bias: true,
            ..GptConfig::llama_small()
        }
    }

    /// The MQA fused projection: q tiled and divided by n (m) and n² (v), the single KV head
    /// tiled along the input only and not divided; ε per column follows; the step is 1/n.
    #[test]
    fn qkv_moments_of_mqa_follow_the_sections() {
        let s = mqa(); // d 4, hd 2: q 4 columns, k 2, v 2
        let (rows, width) = (4, 8);
        let m: Vec<f32> = (0..rows * width).map(|i| i as f32).collect();
        let v: Vec<f32> = m.iter().map(|x| x * x).collect();
        let moments = AdamMoments {
            exp_avg: t(m.clone()),
            exp_avg_sq: t(v.clone()),
            step_factor: 1.0,
            eps_factor: Vec::new(),
        };
        let out = expand_moments("q", ParamKind::QkvWeight, &s, 2, 1, moments).unwrap();
        assert_eq!(out.step_factor, 0.5);
        let mut eps = vec![0.5; 8];
        eps.extend([1.0; 4]);
        assert_eq!(out.eps_factor, eps);
        let (m2, v2) = (host(out.exp_avg), host(out.exp_avg_sq));
        assert_eq!(m2.len(), 8 * 12);
        for r in 0..8 {
            let src = &m[(r % 4) * 8..(r % 4) * 8 + 8];
            let row = &m2[r * 12..r * 12 + 12];
            for c in 0..12 {
                // target column c: q copy (c / 4) column c % 4, else k | v column c - 4
                let (col, g) = if c < 8 { (c % 4, 2.0) } else { (c - 4, 1.0) };
                assert_eq!(row[c], src[col] / g, "row {r} col {c}");
                assert_eq!(v2[r * 12 + c], src[col] * src[col] / (g * g));
            }
        }
    }

    /// Factors compose with the source's own, and bad input is refused, not panicked on.
    #[test]
    fn factors_compose_and_bad_states_are_refused() {
        let s = mqa();
        let moments = |len: usize, step: f64, eps: Vec<f64>| AdamMoments {
            exp_avg: t(vec![1.0; len]),
            exp_avg_sq: t(vec![1.0; len]),
            step_factor: step,
            eps_factor: eps,
        };
        // lm_head [4, 8] untied: step 1/n, gradient undivided.
        let out = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            3,
            1,
            moments(32, 0.5, vec![0.25; 8]),
        )
        .unwrap();
        assert_eq!(out.step_factor, 0.5 / 3.0);
        assert_eq!(out.eps_factor, vec![0.25; 8]);
        let e = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            2,
            2,
            moments(31, 1.0, vec![]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("lm_head.weight.exp_avg"), "{e}");
        let e = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            2,
            2,
            moments(32, f64::NAN, vec![]),
        )
        .unwrap_err();
        assert!(matches!(e, CloneError::BadFactors { .. }), "{e}");
        let e = expand_moments(
            "lm_head.weight",
            ParamKind::LmHead,
            &s,
            2,
            2,
            moments(32, 1.0, vec![1.0; 3]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("3 eps factors for 8 columns"), "{e}");

        let mut state = BTreeMap::new();
        let e = expand_adam_state::<B>(&s, &ExpandOptions::default(), state.clone()).unwrap_err();
        assert_eq!(
            e,
            CloneError::MissingMoments {
                name: "wte.weight".into()
            }
        );
        for (name, kind) in parameters(&s) {
            let r = rule(kind, &s, 2, 2);
            let len = source_shape(kind, &s, &r).iter().product();
            state.insert(name, moments(len, 1.0, vec![]));
        }
        let full = expand_adam_state::<B>(&s, &ExpandOptions::default(), state.clone()).unwrap();
        assert_eq!(full.len(), parameters(&s).len());
        state.insert("h.9.extra".into(), moments(1, 1.0, vec![]));
        let e = expand_adam_state::<B>(&s, &ExpandOptions::default(), state).unwrap_err();
        assert!(matches!(e, CloneError::UnknownMoments { .. }), "{e}");
    }
}
