//! The expanded model folder: `model.safetensors` + `model.json` (the model crate's format)
//! plus `expand.json`, the summary of the expansion ([`ExpandRecord`], declared once in
//! `hyperclone-runfiles` for this writer and its readers: the report, and the training loop
//! for the factors it needs to measure symmetry), and what it shares with its source
//! ([`CARRIED_ENTRIES`]: the tokenizer and the kept Hugging Face metadata).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use hyperclone_model::checkpoint::{
    save_model, write_dir_atomically, write_file_atomically, CheckpointError,
};
use hyperclone_model::Gpt;

use crate::plan::{DepthMode, ExpandOptions};
use crate::verify::Verification;

pub use hyperclone_runfiles::{ExpandRecord, EXPAND_FILE};

/// Entries of a source model folder that an expansion copies unchanged into its output: the
/// tokenizer, and the Hugging Face metadata that `hyperclone import` keeps (`hf_metadata/`: the
/// source's special token ids, generation config, tokenizer config and chat template). A wider
/// clone computes the same function over the same vocabulary, so they hold for it as they did
/// for its source, and `hyperclone export` of the expansion finds them. The folder name is
/// `hyperclone_interop::METADATA_DIR`, repeated here because cloning does not depend on
/// interop; a test of the interop crate checks that the two agree.
pub const CARRIED_ENTRIES: [&str; 2] = ["tokenizer.json", "hf_metadata"];

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
        // A `stack` is measured, not held to a tolerance.
        tolerance: verification
            .and(tolerance)
            .filter(|_| opts.is_function_preserving()),
        source_dir,
        verify_s: None,
        depth_factor: opts.grows_depth().then_some(opts.depth_factor as u32),
        depth_mode: opts
            .grows_depth()
            .then(|| opts.depth_mode.name().to_string()),
        depth_placement: (opts.grows_depth() && opts.depth_mode == DepthMode::Zero)
            .then(|| opts.depth_placement.name().to_string()),
        order: (opts.grows_depth() && (opts.width_factor > 1 || opts.ffn_factor > 1))
            .then(|| opts.order.name().to_string()),
        function_preserving: (!opts.is_function_preserving()).then_some(false),
    }
}

/// Why an expanded model folder could not be written or its record read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Writing the model files failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file or folder carried over from the source folder ([`CARRIED_ENTRIES`]) could not
    /// be copied.
    #[error("copying {from} into the expanded model folder: {source}")]
    Carry {
        /// The source file or folder.
        from: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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
    write_expanded(out, target, record, None)
}

/// [`save_expanded`], also copying the [`CARRIED_ENTRIES`] that the source folder `from` has
/// (in the same atomic write: the folder appears complete or not at all).
pub fn save_expanded_from<B: Backend>(
    out: &Path,
    target: &Gpt<B>,
    record: &ExpandRecord,
    from: &Path,
) -> Result<(), RecordError> {
    write_expanded(out, target, record, Some(from))
}

fn write_expanded<B: Backend>(
    out: &Path,
    target: &Gpt<B>,
    record: &ExpandRecord,
    from: Option<&Path>,
) -> Result<(), RecordError> {
    let json = serde_json::to_vec_pretty(record).map_err(|e| RecordError::Bad {
        path: out.join(EXPAND_FILE),
        reason: e.to_string(),
    })?;
    write_dir_atomically(out, |dir| -> Result<(), RecordError> {
        save_model(target, dir)?;
        if let Some(from) = from {
            for name in CARRIED_ENTRIES {
                let src = from.join(name);
                if src.exists() {
                    copy_entry(&src, &dir.join(name))?;
                }
            }
        }
        write_file_atomically(&dir.join(EXPAND_FILE), &json)?;
        Ok(())
    })
}

/// Copies a file, or a folder with everything in it, from `src` to `dst` (fsynced files).
fn copy_entry(src: &Path, dst: &Path) -> Result<(), RecordError> {
    let carry = |source| RecordError::Carry {
        from: src.to_path_buf(),
        source,
    };
    if src.is_dir() {
        std::fs::create_dir_all(dst).map_err(carry)?;
        let mut entries = std::fs::read_dir(src)
            .map_err(carry)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(carry)?;
        entries.sort();
        for entry in entries {
            let name = entry.file_name().expect("read_dir entries have names");
            copy_entry(&entry, &dst.join(name))?;
        }
        Ok(())
    } else {
        let bytes = std::fs::read(src).map_err(carry)?;
        Ok(write_file_atomically(dst, &bytes)?)
    }
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
