//! AdamW's state from a training checkpoint into an expanded model folder: reads the small
//! run's `optimizer.safetensors` (the training crate's format), maps every parameter's moments
//! and factors by the cloning crate's pure rule ([`hyperclone_cloning::expand_moments`], factors
//! from [`hyperclone_cloning::plan::adam_rule`]) and writes the result beside the expanded
//! weights, where `hyperclone train --init-from` (and the pipeline's `large` stage with
//! `[large.cloned] optimizer_state = "transfer"`) continues from it.
//!
//! It lives here, above both crates, because the mapping is cloning's and the file format and
//! checkpoint layout are training's; neither of those crates depends on the other.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use hyperclone_cloning::{
    expand_adam_state_each, expand_config, read_expand_record, AdamMoments, CloneError,
    ExpandOptions, RecordError, Variant,
};
use hyperclone_model::checkpoint::{read_meta, CheckpointError};
use hyperclone_model::GptConfig;
use hyperclone_training::checkpoint::{
    read_state, verify_checkpoint, RunDirError, DONE_FILE, OPTIMIZER_FILE, STATE_FILE,
};
use hyperclone_training::optim::{AdamWState, OptimError, ParamScale, ParamState, StateOrigin};

/// [`hyperclone_cloning::expand_adam_state`] on a state as it is stored (`hyperclone_training::optim::
/// AdamWState`), one parameter at a time on `device` (peak: one parameter's source and target
/// moments besides the two host states). The update count is kept: the target's bias
/// correction continues from it. The origin is left to the caller.
pub fn expand_adamw_state<B: Backend>(
    source: &GptConfig,
    opts: &ExpandOptions,
    mut state: AdamWState,
    device: &B::Device,
) -> Result<AdamWState, CloneError> {
    let mut params = BTreeMap::new();
    let take = |name: &str| {
        let Some(p) = state.params.remove(name) else {
            return Ok(None);
        };
        let tensor = |values: Vec<f32>| {
            let len = values.len();
            Tensor::<B, 1>::from_data(TensorData::new(values, [len]), device)
        };
        let scale = p.scale.unwrap_or(ParamScale {
            step: 1.0,
            eps: Vec::new(),
            norm: Vec::new(),
        });
        Ok(Some(AdamMoments {
            exp_avg: tensor(p.exp_avg),
            exp_avg_sq: tensor(p.exp_avg_sq),
            step_factor: scale.step,
            eps_factor: scale.eps,
            norm_factor: scale.norm,
        }))
    };
    let put = |name: String, mapped: AdamMoments<B>| {
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
            norm: mapped.norm_factor,
        };
        let p = ParamState {
            exp_avg: host(mapped.exp_avg, "exp_avg")?,
            exp_avg_sq: host(mapped.exp_avg_sq, "exp_avg_sq")?,
            scale: (!scale.is_identity()).then_some(scale),
        };
        params.insert(name, p);
        Ok(())
    };
    expand_adam_state_each(source, opts, take, put)?;
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
/// written by `hyperclone expand` (or [`hyperclone_cloning::expand_folder`]) from the same weights: the
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
            path: expanded.join(hyperclone_cloning::EXPAND_FILE),
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
