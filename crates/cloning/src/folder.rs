//! Expansion of a model folder on disk into another: load, expand, verify, write atomically.
//! Used by the `expand` verb and by the experiment pipeline.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hyperclone_model::checkpoint::{load_model, CheckpointError};
use hyperclone_model::tokens_tensor;
use hyperclone_model::GptBackend;

use crate::{
    expand, expand_record, probe_tokens, save_expanded_from, verify, CloneError, ExpandOptions,
    ExpandRecord, RecordError, Verification, VerifyError,
};

/// Why a folder expansion failed. Nothing is written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The source model could not be loaded.
    #[error("loading the source model: {0}")]
    Load(#[from] CheckpointError),
    /// The expansion is impossible or invalid.
    #[error(transparent)]
    Clone(#[from] CloneError),
    /// The verification could not run or failed its tolerance.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The target folder could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The device failed to finish the expansion's queued work.
    #[error("the device failed during the expansion: {0}")]
    Device(String),
}

/// Where the verification's probe tokens come from and how strict it is.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// Token ids `[batch, seq]` row-major; `None`: random ids (seeded).
    pub tokens: Option<Vec<u32>>,
    /// Rows of the probe batch.
    pub batch: usize,
    /// Tokens per row (clipped to the model's context length for random probes).
    pub seq: usize,
    /// Largest accepted relative logit error.
    pub tolerance: f64,
    /// Skip the check altogether.
    pub skip: bool,
}

/// The outcome of [`expand_folder`].
#[derive(Debug, Clone)]
pub struct FolderExpansion {
    /// What was written to `expand.json`.
    pub record: ExpandRecord,
    /// The verification numbers (None when skipped).
    pub verification: Option<Verification>,
}

/// Loads the model in `from`, expands it with `opts`, verifies it on the probe and writes
/// `out` (model files + `expand.json`, and the tokenizer and Hugging Face metadata of `from`:
/// [`CARRIED_ENTRIES`](crate::record::CARRIED_ENTRIES)) atomically. `device_name` is recorded.
pub fn expand_folder<B: GptBackend>(
    from: &Path,
    out: &Path,
    opts: &ExpandOptions,
    probe: &ProbeSpec,
    device_name: &str,
    device: &B::Device,
) -> Result<FolderExpansion, FolderError> {
    let start = Instant::now();
    opts.validate()?;
    let source = load_model::<B>(from, device)?;
    let sc = source.config().clone();
    let target = expand(&source, opts)?;
    let tc = target.config().clone();
    // GPU backends queue work: wait for it so that it is timed here, not in the verification.
    B::sync(device).map_err(|e| FolderError::Device(format!("{e:?}")))?;
    let wall_s = start.elapsed().as_secs_f64();
    let verify_start = Instant::now();
    let verification = if probe.skip {
        None
    } else {
        let (ids, batch, seq) = match &probe.tokens {
            Some(ids) => (ids.clone(), probe.batch, probe.seq),
            None => {
                let seq = probe.seq.min(sc.context_length).max(1);
                (
                    probe_tokens(sc.vocab_size, probe.batch, seq, opts.seed),
                    probe.batch,
                    seq,
                )
            }
        };
        let v = verify(
            &source,
            &target,
            tokens_tensor::<B>(&ids, batch, seq, device),
        )?;
        // A `stack` is not meant to preserve the function: its change is recorded, not held
        // to the tolerance.
        if opts.is_function_preserving() {
            v.check(probe.tolerance)?;
        }
        Some(v)
    };
    drop(source);
    let verify_s = verification
        .as_ref()
        .map(|_| verify_start.elapsed().as_secs_f64());
    let mut record = expand_record(
        opts,
        sc.param_count(),
        tc.param_count(),
        wall_s,
        verification.as_ref(),
        (!probe.skip).then_some(probe.tolerance),
        device_name.to_string(),
        Some(PathBuf::from(from)),
    );
    record.verify_s = verify_s;
    save_expanded_from(out, &target, &record, from)?;
    Ok(FolderExpansion {
        record,
        verification,
    })
}
