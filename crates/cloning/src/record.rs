//! The expanded model folder: `model.safetensors` + `model.json` (the model crate's format)
//! plus `expand.json`, the summary of the expansion read by the report crate and by the
//! training loop (for the factors it needs to measure symmetry).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use hyperclone_model::checkpoint::{
    save_model, write_dir_atomically, write_file_atomically, CheckpointError,
};
use hyperclone_model::Gpt;
use serde::{Deserialize, Serialize};

use crate::plan::{ExpandOptions, Variant};
use crate::verify::Verification;

/// File name of the expansion summary inside an expanded model folder.
pub const EXPAND_FILE: &str = "expand.json";

/// Contents of `expand.json`.
///
/// The verification fields are `null` when verification was skipped (`--skip-verify`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpandRecord {
    /// Wall-clock seconds of the expansion itself: load and expand (not the optional
    /// verification, see `verify_s`, nor the final write). The cost the report charges.
    pub wall_s: f64,
    /// `wall_s / 3600 × 1 device`.
    pub device_hours: f64,
    /// Parameters of the source model.
    pub source_params: u64,
    /// Parameters of the expanded model.
    pub target_params: u64,
    /// Width factor n.
    pub width_factor: u32,
    /// FFN factor m.
    pub ffn_factor: u32,
    /// The cloning variant.
    pub variant: Variant,
    /// SNR in dB of the noise (`null` for the noiseless variants).
    pub snr_db: Option<f64>,
    /// Seed of the noise.
    pub seed: u64,
    /// `max |Δlogit|` on the probe batch.
    pub max_abs_logit_diff: Option<f64>,
    /// `max |Δlogit| / max |source logit|` on the probe batch.
    pub rel_err: Option<f64>,
    /// `KL(source ‖ target)`, nats, mean over probe positions.
    pub kl: Option<f64>,
    /// The device the expansion ran on, in words.
    pub device: String,
    /// The relative tolerance the verification was held to (`null` when skipped).
    #[serde(default)]
    pub tolerance: Option<f64>,
    /// The source model folder.
    #[serde(default)]
    pub source_dir: Option<PathBuf>,
    /// Wall-clock seconds of the verification forward passes (`null` when skipped). Kept out
    /// of `wall_s`: it is an optional check, and on GPU backends it is where the wide shapes'
    /// kernels get compiled (seen through wgpu on a CPU: 24 s against 0.05 s of expansion).
    #[serde(default)]
    pub verify_s: Option<f64>,
}

impl ExpandRecord {
    /// A record from the options, parameter counts, timing and (optional) verification.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: &ExpandOptions,
        source_params: usize,
        target_params: usize,
        wall_s: f64,
        verification: Option<&Verification>,
        tolerance: Option<f64>,
        device: String,
        source_dir: Option<PathBuf>,
    ) -> Self {
        Self {
            wall_s,
            device_hours: wall_s / 3600.0,
            source_params: source_params as u64,
            target_params: target_params as u64,
            width_factor: opts.width_factor as u32,
            ffn_factor: opts.ffn_factor as u32,
            variant: opts.variant,
            snr_db: opts.variant.is_noisy().then_some(opts.snr_db),
            seed: opts.seed,
            max_abs_logit_diff: verification.map(|v| v.max_abs_logit_diff),
            rel_err: verification.map(|v| v.rel_err),
            kl: verification.map(|v| v.kl),
            device,
            tolerance: verification.and(tolerance),
            source_dir,
            verify_s: None,
        }
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
