//! The expanded model folder: `model.safetensors` + `model.json` (the model crate's format)
//! plus `expand.json`, the summary of the expansion ([`ExpandRecord`], declared once in
//! `hyperclone-runfiles` for this writer and its readers: the report, and the training loop
//! for the factors it needs to measure symmetry).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use hyperclone_model::checkpoint::{
    save_model, write_dir_atomically, write_file_atomically, CheckpointError,
};
use hyperclone_model::Gpt;

use crate::plan::ExpandOptions;
use crate::verify::Verification;

pub use hyperclone_runfiles::{ExpandRecord, EXPAND_FILE};

/// The `expand.json` record of an expansion: its options, parameter counts, timing and
/// (optional) verification. `verify_s` is left for the caller, who times the check.
#[allow(clippy::too_many_arguments)]
pub fn expand_record(
    opts: &ExpandOptions,
    source_params: usize,
    target_params: usize,
    wall_s: f64,
    verification: Option<&Verification>,
    tolerance: Option<f64>,
    device: String,
    source_dir: Option<PathBuf>,
) -> ExpandRecord {
    ExpandRecord {
        wall_s: Some(wall_s),
        device_hours: Some(wall_s / 3600.0),
        source_params: Some(source_params as u64),
        target_params: Some(target_params as u64),
        width_factor: Some(opts.width_factor as u32),
        ffn_factor: Some(opts.ffn_factor as u32),
        variant: Some(opts.variant.name().to_string()),
        snr_db: opts.variant.is_noisy().then_some(opts.snr_db),
        seed: Some(opts.seed),
        max_abs_logit_diff: verification.map(|v| v.max_abs_logit_diff),
        rel_err: verification.map(|v| v.rel_err),
        kl: verification.map(|v| v.kl),
        device: Some(device),
        tolerance: verification.and(tolerance),
        source_dir,
        verify_s: None,
    }
}

/// Why an expanded model folder could not be written or its record read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Writing the model files failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// `expand.json` exists but could not be read or parsed.
    #[error("{path}: {reason}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Writes the folder `out` atomically: the model files, then `expand.json`. An existing folder
/// is replaced; on failure nothing is left behind.
pub fn save_expanded<B: Backend>(
    out: &Path,
    target: &Gpt<B>,
    record: &ExpandRecord,
) -> Result<(), RecordError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| RecordError::Bad {
        path: out.join(EXPAND_FILE),
        reason: e.to_string(),
    })?;
    write_dir_atomically(out, |dir| -> Result<(), RecordError> {
        save_model(target, dir)?;
        write_file_atomically(&dir.join(EXPAND_FILE), &json)?;
        Ok(())
    })
}

/// Reads `dir/expand.json`; `Ok(None)` when the folder has none (not an expanded model).
pub fn read_expand_record(dir: &Path) -> Result<Option<ExpandRecord>, RecordError> {
    let path = dir.join(EXPAND_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(RecordError::Bad {
                path,
                reason: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RecordError::Bad {
            path,
            reason: e.to_string(),
        })
}
