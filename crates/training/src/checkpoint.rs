//! Training checkpoints in a run directory, litgpt/llm.c style:
//!
//! ```text
//! runs/NAME/
//!   config.toml  run_info.json  metrics.jsonl
//!   step-00000500/  model.safetensors  model.json  optimizer.safetensors  state.json  DONE
//!   step-00001000/  …
//!   final/          model.safetensors  model.json   (weights only, for --init-from / generate)
//! ```
//!
//! A step folder is written under a temporary name and renamed when complete; `DONE` is its
//! last file, and only folders with `DONE` count. `DONE` is the folder's manifest
//! ([`CheckpointManifest`]): its step and the SHA-256 of every other file. Loading verifies
//! every file against it and that `state.json` and `DONE` name the folder's own step; a
//! damaged newest checkpoint is skipped for the previous complete one, with a loud warning.
//! Folders written before the manifest (`DONE` holding the step alone) still load, with a
//! warning that only their weights are verified.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use hyperclone_model::checkpoint::{
    load_model, save_model, write_dir_atomically, write_file_atomically, CheckpointError,
    META_FILE, WEIGHTS_FILE,
};
use hyperclone_model::Gpt;
use serde::{Deserialize, Serialize};

use crate::config::OptimizerConfig;
use crate::optim::{AdamW, OptimError};

/// Completeness marker, written last inside a step folder.
pub const DONE_FILE: &str = "DONE";
/// Training state file inside a step folder.
pub const STATE_FILE: &str = "state.json";
/// Optimizer state file inside a step folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The files of a step folder besides `DONE`, each checksummed in its manifest.
pub const CHECKPOINT_FILES: [&str; 4] = [WEIGHTS_FILE, META_FILE, OPTIMIZER_FILE, STATE_FILE];

/// Contents of `DONE`: the step of the folder and the SHA-256 of each of its
/// [`CHECKPOINT_FILES`], written last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointManifest {
    /// The step the folder holds.
    pub step: u64,
    /// Lower-case hex SHA-256 by file name.
    pub sha256: BTreeMap<String, String>,
}

/// Everything besides weights and optimizer moments that a resumed run needs to continue
/// exactly: batches and dropout masks are pure functions of (seed, step), so the step is the
/// data position and the RNG state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Cumulative wall seconds at the checkpoint.
    pub wall_s: f64,
    /// Cumulative device-hours at the checkpoint.
    pub device_hours: f64,
    /// Cumulative training FLOPs.
    pub flops: f64,
    /// Run seed (batches and dropout derive from it and the step).
    pub seed: u64,
    /// SHA-256 of the tokenizer the data was made with.
    pub tokenizer_hash: String,
    /// Hash of the resolved training config (a changed config refuses to resume).
    pub config_hash: String,
    /// Best validation loss so far and its step.
    pub best_val: Option<(u64, f64)>,
    /// Width and FFN factors of the expansion this run started from (for the symmetry
    /// metric).
    pub expanded: Option<(usize, usize)>,
}

/// Why a checkpoint could not be written or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    /// Model weights or metadata.
    #[error(transparent)]
    Model(#[from] CheckpointError),
    /// Optimizer state.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// `state.json` is unreadable.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file of a step folder does not match the checksum its `DONE` manifest records.
    #[error(
        "{path} is corrupted: sha256 {found} does not match {expected} recorded in {DONE_FILE}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Recorded checksum.
        expected: String,
        /// Checksum of the bytes on disk.
        found: String,
    },
    /// `DONE` is neither a manifest nor a bare step, or lacks a file of the folder.
    #[error("{path}: {reason}")]
    Manifest {
        /// The `DONE` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `state.json` or `DONE` records another step than the folder's name.
    #[error("{dir}: {file} records step {found}, but the folder is step {expected}")]
    StepMismatch {
        /// The step folder.
        dir: PathBuf,
        /// `state.json` or `DONE`.
        file: &'static str,
        /// The step of the folder's name.
        expected: u64,
        /// The step the file records.
        found: u64,
    },
    /// A file could not be read to checksum it, or the kept Hugging Face metadata
    /// ([`HF_METADATA_DIR`]) could not be copied or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder holds step folders but none is complete and valid.
    #[error("{dir}: no valid checkpoint: {details}")]
    NoValidCheckpoint {
        /// The run directory.
        dir: PathBuf,
        /// Why each candidate was refused.
        details: String,
    },
}

/// Name of the folder for `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete step folders of a run directory, newest first.
pub fn complete_checkpoints(run_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
            let path = e.path();
            path.join(DONE_FILE).exists().then_some((step, path))
        })
        .collect();
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    found
}

/// The step of a folder named by [`step_dir_name`].
fn folder_step(dir: &Path) -> Option<u64> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("step-")?
        .parse()
        .ok()
}

/// Lower-case hex SHA-256 of the file at `path`, read in 1 MiB pieces.
pub fn sha256_file(path: &Path) -> Result<String, RunDirError> {
    use sha2::{Digest, Sha256};
    let io = |source| RunDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The manifest of the step folder `dir` (step `step`) for its files as they are on disk.
pub fn manifest_of(dir: &Path, step: u64) -> Result<CheckpointManifest, RunDirError> {
    let mut sha256 = BTreeMap::new();
    for file in CHECKPOINT_FILES {
        sha256.insert(file.to_string(), sha256_file(&dir.join(file))?);
    }
    Ok(CheckpointManifest { step, sha256 })
}

/// Reads `DONE` of a step folder: `Some` manifest, or `None` for a folder written before
/// manifests (its `DONE` holds the step alone; checked against `expected_step`).
fn read_manifest(
    dir: &Path,
    expected_step: u64,
) -> Result<Option<CheckpointManifest>, RunDirError> {
    let path = dir.join(DONE_FILE);
    let text = fs::read_to_string(&path).map_err(|source| RunDirError::Io {
        path: path.clone(),
        source,
    })?;
    let found = match serde_json::from_str::<CheckpointManifest>(&text) {
        Ok(manifest) => {
            if manifest.step != expected_step {
                return Err(RunDirError::StepMismatch {
                    dir: dir.to_path_buf(),
                    file: DONE_FILE,
                    expected: expected_step,
                    found: manifest.step,
                });
            }
            return Ok(Some(manifest));
        }
        Err(e) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| RunDirError::Manifest {
                path: path.clone(),
                reason: format!("neither a checkpoint manifest ({e}) nor a step number"),
            })?,
    };
    if found != expected_step {
        return Err(RunDirError::StepMismatch {
            dir: dir.to_path_buf(),
            file: DONE_FILE,
            expected: expected_step,
            found,
        });
    }
    Ok(None)
}

/// Checks every file of the step folder `dir` against its `DONE` manifest. A folder written
/// before manifests passes with a warning (only its weights carry a checksum, in
/// `model.json`).
pub fn verify_checkpoint(dir: &Path, step: u64) -> Result<(), RunDirError> {
    let Some(manifest) = read_manifest(dir, step)? else {
        tracing::warn!(
            "{} was written before checkpoint manifests: its {OPTIMIZER_FILE} and {STATE_FILE} carry no checksum and are not verified",
            dir.display()
        );
        return Ok(());
    };
    for file in CHECKPOINT_FILES {
        let path = dir.join(file);
        let Some(expected) = manifest.sha256.get(file) else {
            return Err(RunDirError::Manifest {
                path: dir.join(DONE_FILE),
                reason: format!("the manifest lacks {file}"),
            });
        };
        let found = sha256_file(&path)?;
        if &found != expected {
            return Err(RunDirError::Checksum {
                path,
                expected: expected.clone(),
                found,
            });
        }
    }
    Ok(())
}

/// Writes a complete step folder atomically (temp folder, `DONE` last, rename). When the
/// environment variable `HYPERCLONE_TEST_CHECKPOINT_PAUSE_MS` is set, the writer sleeps that
/// long before `DONE`, so that tests can kill the process in the middle of a write.
pub fn save_checkpoint<AB: AutodiffBackend>(
    run_dir: &Path,
    model: &Gpt<AB>,
    optimizer: &AdamW<AB>,
    state: &TrainState,
) -> Result<PathBuf, RunDirError> {
    let dest = run_dir.join(step_dir_name(state.step));
    let inner = model.clone().valid();
    write_dir_atomically::<RunDirError>(&dest, |tmp| {
        save_model(&inner, tmp)?;
        optimizer.save(&tmp.join(OPTIMIZER_FILE))?;
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        write_file_atomically(&tmp.join(STATE_FILE), &json)?;
        if let Some(ms) = std::env::var("HYPERCLONE_TEST_CHECKPOINT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        // The manifest is made from the files as written, read back from disk.
        let manifest = manifest_of(tmp, state.step)?;
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        write_file_atomically(&tmp.join(DONE_FILE), &json)?;
        Ok(())
    })?;
    Ok(dest)
}

/// Reads `state.json` of a step folder.
pub fn read_state(dir: &Path) -> Result<TrainState, RunDirError> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| RunDirError::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| RunDirError::State {
        path,
        reason: e.to_string(),
    })
}

/// A checkpoint loaded for resuming.
pub struct Resumed<AB: AutodiffBackend> {
    /// The model, on the autodiff backend.
    pub model: Gpt<AB>,
    /// The optimizer state.
    pub optimizer: AdamW<AB>,
    /// Step, tokens, time and hashes.
    pub state: TrainState,
    /// The folder it came from.
    pub dir: PathBuf,
}

struct RequireGrad;

impl<AB: AutodiffBackend> burn::module::ModuleMapper<AB> for RequireGrad {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<AB, D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        burn::module::Param::from_mapped_value(id, tensor.require_grad(), mapper)
    }
}

/// Marks every parameter as trainable. Weights loaded from disk onto the inner backend and
/// lifted with `from_inner` do not track gradients until this is applied.
pub fn trainable<AB: AutodiffBackend>(model: Gpt<AB>) -> Gpt<AB> {
    model.map(&mut RequireGrad)
}

/// Loads one step folder (named `step-N`), verifying every file against its manifest and that
/// `state.json` holds step N.
pub fn load_checkpoint<AB: AutodiffBackend>(
    dir: &Path,
    optimizer: OptimizerConfig,
    device: &burn::tensor::Device<AB::InnerBackend>,
) -> Result<Resumed<AB>, RunDirError> {
    let step = folder_step(dir).ok_or_else(|| RunDirError::Manifest {
        path: dir.to_path_buf(),
        reason: "not a step folder (step-NNNNNNNN)".into(),
    })?;
    verify_checkpoint(dir, step)?;
    let state = read_state(dir)?;
    if state.step != step {
        return Err(RunDirError::StepMismatch {
            dir: dir.to_path_buf(),
            file: STATE_FILE,
            expected: step,
            found: state.step,
        });
    }
    let model = trainable(Gpt::<AB>::from_inner(load_model::<AB::InnerBackend>(
        dir, device,
    )?));
    let optimizer_path = dir.join(OPTIMIZER_FILE);
    let optimizer = AdamW::<AB>::load(optimizer, &optimizer_path, device)?;
    // A state that does not fit the weights would fail in the middle of the first update.
    optimizer
        .check_model(&model, false)
        .map_err(|reason| OptimError::Mismatch {
            path: optimizer_path,
            reason,
        })?;
    Ok(Resumed {
        model,
        optimizer,
        state,
        dir: dir.to_path_buf(),
    })
}

/// Loads the newest complete checkpoint that passes verification, warning about each newer
/// one that does not. `Ok(None)` when the run directory has no complete checkpoint.
pub fn load_latest<AB: AutodiffBackend>(
    run_dir: &Path,
    optimizer: &OptimizerConfig,
    device: &burn::tensor::Device<AB::InnerBackend>,
) -> Result<Option<Resumed<AB>>, RunDirError> {
    load_latest_before::<AB>(run_dir, optimizer, device, None)
}

/// [`load_latest`] among the checkpoints of steps below `before` (all with `None`).
pub fn load_latest_before<AB: AutodiffBackend>(
    run_dir: &Path,
    optimizer: &OptimizerConfig,
    device: &burn::tensor::Device<AB::InnerBackend>,
    before: Option<u64>,
) -> Result<Option<Resumed<AB>>, RunDirError> {
    let candidates: Vec<(u64, PathBuf)> = complete_checkpoints(run_dir)
        .into_iter()
        .filter(|(step, _)| before.is_none_or(|b| *step < b))
        .collect();
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut refused = Vec::new();
    for (_, dir) in candidates {
        match load_checkpoint::<AB>(&dir, optimizer.clone(), device) {
            Ok(r) => {
                if !refused.is_empty() {
                    tracing::warn!(
                        "resuming from {} because newer checkpoints are damaged: {}",
                        dir.display(),
                        refused.join("; ")
                    );
                }
                return Ok(Some(r));
            }
            Err(e) => {
                tracing::warn!("SKIPPING damaged checkpoint {}: {e}", dir.display());
                refused.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    Err(RunDirError::NoValidCheckpoint {
        dir: run_dir.to_path_buf(),
        details: refused.join("; "),
    })
}

/// Deletes all but the `keep_last` newest complete checkpoints, sparing `best_step`. Leftover
/// temporary folders of interrupted writes are removed too.
pub fn prune(run_dir: &Path, keep_last: usize, best_step: Option<u64>) {
    for (i, (step, dir)) in complete_checkpoints(run_dir).into_iter().enumerate() {
        if i >= keep_last.max(1) && Some(step) != best_step {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!("could not remove old checkpoint {}: {e}", dir.display());
            }
        }
    }
    for entry in fs::read_dir(run_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") && name.contains(".tmp-") {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Folder of a model folder holding the Hugging Face metadata that `hyperclone import` keeps
/// (the source's special token ids, generation config, tokenizer config and chat template):
/// `hyperclone_interop::METADATA_DIR`, repeated because training does not depend on interop
/// (a CLI test checks that the two agree).
pub const HF_METADATA_DIR: &str = "hf_metadata";

/// Makes `run_dir/hf_metadata/` a copy of `init_from/hf_metadata/`, or removes a stale one when
/// the run starts from a model without it (or from random weights): a run trained from an
/// imported model keeps how its source generates and chats, so that [`copy_hf_metadata`] puts
/// it into `final/` and `hyperclone export --from RUN_DIR` writes it back. Called when a run
/// starts, not when it resumes, so a resume without `--init-from` keeps it.
pub fn carry_hf_metadata(init_from: Option<&Path>, run_dir: &Path) -> Result<(), RunDirError> {
    let dest = run_dir.join(HF_METADATA_DIR);
    match init_from.map(|dir| dir.join(HF_METADATA_DIR)) {
        Some(src) if src.is_dir() => {
            write_dir_atomically::<RunDirError>(&dest, |tmp| copy_files(&src, tmp))
        }
        _ if dest.exists() => fs::remove_dir_all(&dest).map_err(|source| RunDirError::Io {
            path: dest.clone(),
            source,
        }),
        _ => Ok(()),
    }
}

/// Copies `run_dir/hf_metadata/`, when there is one, into the model folder `model_dir` being
/// written (see [`carry_hf_metadata`]).
pub fn copy_hf_metadata(run_dir: &Path, model_dir: &Path) -> Result<(), RunDirError> {
    let src = run_dir.join(HF_METADATA_DIR);
    if !src.is_dir() {
        return Ok(());
    }
    let dest = model_dir.join(HF_METADATA_DIR);
    fs::create_dir_all(&dest).map_err(|source| RunDirError::Io {
        path: dest.clone(),
        source,
    })?;
    copy_files(&src, &dest)
}

/// Copies the files of the flat folder `src` (what `hyperclone import` writes there has no
/// subfolders) into `dest`, each written atomically.
fn copy_files(src: &Path, dest: &Path) -> Result<(), RunDirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| RunDirError::Io { path, source }
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(src).map_err(io(src))? {
        let path = entry.map_err(io(src))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let bytes = fs::read(&path).map_err(io(&path))?;
        let name = path.file_name().expect("read_dir entries have names");
        write_file_atomically(&dest.join(name), &bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_metadata_follows_the_init_model_into_the_run_and_its_final_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let (model, run, fin) = (
            tmp.path().join("model"),
            tmp.path().join("run"),
            tmp.path().join("final"),
        );
        let meta = model.join(HF_METADATA_DIR);
        fs::create_dir_all(&meta).unwrap();
        fs::create_dir_all(&run).unwrap();
        fs::create_dir_all(&fin).unwrap();
        fs::write(meta.join("token_ids.json"), b"{\"eos_token_id\": 2}\n").unwrap();
        fs::write(
            meta.join("tokenizer_config.json"),
            b"{\"chat_template\": \"{{ x }}\"}",
        )
        .unwrap();

        carry_hf_metadata(Some(&model), &run).unwrap();
        copy_hf_metadata(&run, &fin).unwrap();
        for dir in [&run, &fin] {
            for name in ["token_ids.json", "tokenizer_config.json"] {
                assert_eq!(
                    fs::read(dir.join(HF_METADATA_DIR).join(name)).unwrap(),
                    fs::read(meta.join(name)).unwrap(),
                    "{}",
                    dir.display()
                );
            }
        }
        // A fresh start from a model without metadata drops the stale copy; nothing to copy.
        carry_hf_metadata(Some(&fin.join("nothing")), &run).unwrap();
        assert!(!run.join(HF_METADATA_DIR).exists());
        carry_hf_metadata(None, &run).unwrap();
        let other = tmp.path().join("other");
        fs::create_dir_all(&other).unwrap();
        copy_hf_metadata(&run, &other).unwrap();
        assert!(!other.join(HF_METADATA_DIR).exists());
    }
}
