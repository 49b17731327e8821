//! Expansion of a model folder on disk into another: load, expand, verify, write atomically.
//! Used by the `expand` verb and by the experiment pipeline.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hyperclone_model::checkpoint::{load_model, CheckpointError};
use hyperclone_model::tokens_tensor;
use hyperclone_model::GptBackend;

use burn::tensor::Tensor;

use crate::verify::compare_logits;
use crate::{
    expand, expand_record, probe_tokens, save_expanded_from, CloneError, ExpandOptions,
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
///
/// The check is [`verify`](crate::verify::verify)'s, split so that the command never holds
/// more than the source and the target: the source's probe logits are computed before the
/// expansion, the source is dropped right after it, then the target runs the probe and the
/// logits are compared ([`compare_logits`]); the target is then written tensor by tensor. The
/// peak is the expansion's own (source + target), not source + target + the target's forward
/// pass (benches/results/expand-gpt2-124m-cpu.md). `wall_s` in the record is loading plus
/// expanding; `verify_s` is both forward passes and the comparison.
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
    let probe_batch = if probe.skip {
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
        check_probe(&ids, batch, seq, sc.vocab_size, sc.context_length)?;
        Some(tokens_tensor::<B>(&ids, batch, seq, device))
    };
    let source_forward = Instant::now();
    let source_logits = match &probe_batch {
        Some(tokens) => Some(host_logits(
            source.forward(tokens.clone()),
            "source logits",
        )?),
        None => None,
    };
    let source_forward_s = source_forward.elapsed().as_secs_f64();
    let target = expand(&source, opts)?;
    drop(source);
    let tc = target.config().clone();
    // GPU backends queue work: wait for it so that it is timed here, not in the verification.
    B::sync(device).map_err(|e| FolderError::Device(format!("{e:?}")))?;
    let wall_s = start.elapsed().as_secs_f64() - source_forward_s;
    let verify_start = Instant::now();
    let verification = match (probe_batch, source_logits) {
        (Some(tokens), Some(source_logits)) => {
            if tc.vocab_size != sc.vocab_size {
                return Err(VerifyError::Vocab {
                    source_vocab: sc.vocab_size,
                    target_vocab: tc.vocab_size,
                }
                .into());
            }
            if tokens.dims()[1] > tc.context_length {
                return Err(VerifyError::TooLong {
                    seq: tokens.dims()[1],
                    context: tc.context_length,
                }
                .into());
            }
            let target_logits = host_logits(target.forward(tokens), "target logits")?;
            let v = compare_logits(&source_logits, &target_logits, sc.vocab_size);
            // A `stack` is not meant to preserve the function: its change is recorded, not
            // held to the tolerance.
            if opts.is_function_preserving() {
                v.check(probe.tolerance)?;
            }
            Some(v)
        }
        _ => None,
    };
    let verify_s = verification
        .as_ref()
        .map(|_| verify_start.elapsed().as_secs_f64() + source_forward_s);
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

/// The checks [`verify`](crate::verify::verify) makes of a probe batch before running it: not empty, within the
/// context, every id in the vocabulary.
fn check_probe(
    ids: &[u32],
    batch: usize,
    seq: usize,
    vocab: usize,
    context: usize,
) -> Result<(), VerifyError> {
    if batch == 0 || seq == 0 {
        return Err(VerifyError::Empty { batch, seq });
    }
    if seq > context {
        return Err(VerifyError::TooLong { seq, context });
    }
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(&token) => Err(VerifyError::Token {
            token: i64::from(token),
            vocab,
        }),
        None => Ok(()),
    }
}

/// Logits `[B, T, vocab]` as f32 on the host, row-major.
fn host_logits<B: GptBackend>(
    logits: Tensor<B, 3>,
    what: &'static str,
) -> Result<Vec<f32>, VerifyError> {
    logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| VerifyError::Data {
            what,
            reason: format!("{e:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{verify, Variant};
    use burn::backend::Flex;
    use hyperclone_model::checkpoint::save_model;
    use hyperclone_model::{Gpt, GptConfig};

    type B = Flex;

    fn probe(tokens: Option<Vec<u32>>) -> ProbeSpec {
        ProbeSpec {
            tokens,
            batch: 2,
            seq: 16,
            tolerance: 1e-4,
            skip: false,
        }
    }

    /// The split check (source logits before the expansion, target logits after the source is
    /// dropped) measures exactly what `verify` measures on both models at once.
    #[test]
    fn folder_verification_equals_verify_on_both_models() {
        let device = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("small");
        std::fs::create_dir_all(&from).unwrap();
        let source = Gpt::<B>::init(&GptConfig::cpu_tiny(), 7, &device).unwrap();
        save_model(&source, &from).unwrap();
        for variant in [Variant::Symmetric, Variant::NoisySymmetric] {
            let opts = ExpandOptions {
                variant,
                seed: 3,
                ..ExpandOptions::default()
            };
            let out = tmp.path().join(format!("wide-{variant}"));
            let done =
                expand_folder::<B>(&from, &out, &opts, &probe(None), "cpu", &device).unwrap();
            let ids = probe_tokens(GptConfig::cpu_tiny().vocab_size, 2, 16, opts.seed);
            let target = expand(&source, &opts).unwrap();
            let want = verify(&source, &target, tokens_tensor::<B>(&ids, 2, 16, &device)).unwrap();
            assert_eq!(done.verification, Some(want), "{variant}");
            assert_eq!(done.record.rel_err, Some(want.rel_err));
            assert!(out.join(crate::record::EXPAND_FILE).exists());
        }
    }

    /// Probe batches `verify` refuses are refused before anything is expanded or written.
    #[test]
    fn bad_probes_are_refused_and_nothing_is_written() {
        let device = Default::default();
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("small");
        std::fs::create_dir_all(&from).unwrap();
        let config = GptConfig::cpu_tiny();
        save_model(&Gpt::<B>::init(&config, 7, &device).unwrap(), &from).unwrap();
        let out = tmp.path().join("wide");
        let opts = ExpandOptions::default();
        let mut ids = vec![1u32; 32];
        ids[5] = config.vocab_size as u32;
        let e =
            expand_folder::<B>(&from, &out, &opts, &probe(Some(ids)), "cpu", &device).unwrap_err();
        assert!(
            matches!(e, FolderError::Verify(VerifyError::Token { token, vocab })
                if token == config.vocab_size as i64 && vocab == config.vocab_size),
            "{e}"
        );
        let long = ProbeSpec {
            tokens: Some(vec![1; config.context_length + 1]),
            batch: 1,
            seq: config.context_length + 1,
            ..probe(None)
        };
        let e = expand_folder::<B>(&from, &out, &opts, &long, "cpu", &device).unwrap_err();
        assert!(
            matches!(e, FolderError::Verify(VerifyError::TooLong { .. })),
            "{e}"
        );
        let empty = ProbeSpec {
            tokens: Some(Vec::new()),
            batch: 0,
            seq: 16,
            ..probe(None)
        };
        let e = expand_folder::<B>(&from, &out, &opts, &empty, "cpu", &device).unwrap_err();
        assert!(
            matches!(e, FolderError::Verify(VerifyError::Empty { .. })),
            "{e}"
        );
        assert!(!out.exists());
    }
}
