//! The one-peer reference of a data-parallel run, and where `run_info.json` records it.
//!
//! The report's scaling efficiency of a run with N peers in all is its global tokens/s ÷
//! (N × the tokens/s of one device running one peer's share alone). That reference is measured
//! here, before the peers start, on the first device of node 0: the run's model configuration
//! and kernels with random weights, AdamW, `run.batch_size / N` rows of the run's own batches
//! (the first rows of its first micro-batches, read, not consumed), `run.seq_len` and
//! `run.grad_accum`; no communication. It is weak scaling's reference (each peer's share, not
//! the whole global batch on one device, which is what `hyperclone bench --devices N` compares
//! against). Everything it computes is thrown away: the run's weights, optimiser state, batch
//! stream and losses are untouched, and its time is not charged to the run.

use std::path::Path;
use std::time::Instant;

use hyperclone_data::{Batch, BatchSampler, PreparedData};
use hyperclone_model::checkpoint::write_file_atomically;
use hyperclone_model::{tokens_tensor, Gpt, GptAutodiffBackend, GptConfig};
use hyperclone_runfiles::RunInfo;

use crate::checkpoint::RunDirError;
use crate::config::{TrainConfig, SCALING_REFERENCE_WARMUP};
use crate::optim::AdamW;
use crate::trainer::{TrainError, Trainer};

/// One device running one data-parallel peer's share of the batch alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SinglePeerReference {
    /// Tokens per second: rows × `run.seq_len` × `run.grad_accum` ÷ the median timed step.
    pub tokens_per_s: f64,
    /// Median wall seconds of a timed step (forward, backward and AdamW over every micro-batch,
    /// the loss and gradient norm read back, as in a training step).
    pub step_time_s: f64,
    /// Rows per micro-batch (`run.batch_size` ÷ peers).
    pub rows: usize,
    /// Timed steps (after [`SCALING_REFERENCE_WARMUP`] untimed ones).
    pub steps: usize,
}

/// Measures the one-peer reference of a run with `world` peers in all on `device`
/// (`run.scaling_reference_steps` timed steps); `None` when that is 0.
pub fn measure_single_peer<AB: GptAutodiffBackend>(
    config: &TrainConfig,
    model_config: &GptConfig,
    data: &PreparedData,
    world: usize,
    device: &AB::Device,
) -> Result<Option<SinglePeerReference>, TrainError> {
    let steps = config.run.scaling_reference_steps;
    if steps == 0 {
        return Ok(None);
    }
    let (seq_len, grad_accum) = (config.run.seq_len, config.run.grad_accum);
    let rows = config.run.batch_size / world;
    let width = seq_len + 1;
    let sampler = BatchSampler::new(config.run.batch_size, seq_len, config.run.seed)?;
    // A throwaway model: random weights from the run's seed (its own generator, so no other
    // stream moves), the run's kernels, a fresh AdamW.
    let model =
        Gpt::<AB>::init(model_config, config.run.seed, device)?.with_kernels(config.run.kernels());
    let mut trainer = Trainer::new(
        model,
        AdamW::<AB>::new(config.optimizer.clone()),
        device.clone(),
    );
    let mut times = Vec::with_capacity(steps);
    for step in 0..SCALING_REFERENCE_WARMUP + steps {
        let t0 = Instant::now();
        let batch = |micro: usize| {
            // Rank 0's rows of the micro-batch one device would draw: `[rows, T+1]` of
            // `[B, T+1]`. The sampler is a pure function of the index: nothing is consumed.
            let index = (step * grad_accum + micro) as u64;
            let full = sampler.random_batch(&data.train, index)?;
            let mine = Batch {
                batch_size: rows,
                seq_len,
                tokens: full.tokens[..rows * width].to_vec(),
            };
            let x = tokens_tensor::<AB>(&mine.inputs(), rows, seq_len, device);
            let y = tokens_tensor::<AB>(&mine.targets(), rows, seq_len, device);
            Ok::<_, TrainError>((x, y))
        };
        let tensors = trainer.step(grad_accum, config.optimizer.lr, batch)?;
        // The step's wait for the device, as in training: its loss and gradient norm.
        let _loss_and_norm = tensors.read();
        if step >= SCALING_REFERENCE_WARMUP {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let step_time_s = times[times.len() / 2];
    Ok(Some(SinglePeerReference {
        tokens_per_s: (rows * seq_len * grad_accum) as f64 / step_time_s,
        step_time_s,
        rows,
        steps,
    }))
}

/// [`measure_single_peer`] for a starting run: logged, and a failure is a warning (the run
/// goes on; the report then says "not measured").
pub(crate) fn reference_for_run<AB: GptAutodiffBackend>(
    config: &TrainConfig,
    model_config: &GptConfig,
    data: &PreparedData,
    world: usize,
    device: &AB::Device,
) -> Option<SinglePeerReference> {
    let t0 = Instant::now();
    match measure_single_peer::<AB>(config, model_config, data, world, device) {
        Ok(Some(r)) => {
            tracing::info!(
                "one-peer reference (for the scaling efficiency): one device alone on one peer's share, {} rows × {} tokens × {} micro-batch(es): median {:.2} ms/step over {} steps, {:.0} tokens/s ({:.1} s, not charged)",
                r.rows,
                config.run.seq_len,
                config.run.grad_accum,
                r.step_time_s * 1e3,
                r.steps,
                r.tokens_per_s,
                t0.elapsed().as_secs_f64()
            );
            Some(r)
        }
        Ok(None) => {
            tracing::info!(
                "one-peer reference skipped (run.scaling_reference_steps = 0): the report will say the scaling efficiency was not measured"
            );
            None
        }
        Err(e) => {
            tracing::warn!("the one-peer reference could not be measured ({e}); training goes on, and the report will say the scaling efficiency was not measured");
            None
        }
    }
}

/// Writes `info` as `run_dir/run_info.json` (atomically). A resumed run keeps the file it
/// finds (written when the run started) and only records its newest one-peer reference and
/// number of devices in it; without a reference it leaves the file alone. A file that is
/// missing or unreadable is replaced by `info`.
pub(crate) fn record_run_info(
    run_dir: &Path,
    info: &RunInfo,
    resumed: bool,
) -> Result<(), TrainError> {
    let path = run_dir.join("run_info.json");
    let recorded = if !resumed {
        info.clone()
    } else if info.single_peer_tokens_per_s.is_none() {
        return Ok(());
    } else {
        let found = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RunInfo>(&bytes).ok());
        match found {
            Some(found) => RunInfo {
                devices: info.devices,
                single_peer_tokens_per_s: info.single_peer_tokens_per_s,
                single_peer_rows: info.single_peer_rows,
                ..found
            },
            None => info.clone(),
        }
    };
    let json = serde_json::to_vec_pretty(&recorded).expect("RunInfo serialises");
    write_file_atomically(&path, &json).map_err(|e| TrainError::Checkpoint(RunDirError::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(devices: u64, reference: Option<f64>, init: &str) -> RunInfo {
        RunInfo {
            backend: Some("flex".into()),
            devices: Some(devices),
            init: Some(init.into()),
            single_peer_tokens_per_s: reference,
            single_peer_rows: reference.map(|_| 4),
            ..RunInfo::default()
        }
    }

    fn read(dir: &Path) -> RunInfo {
        serde_json::from_slice(&std::fs::read(dir.join("run_info.json")).unwrap()).unwrap()
    }

    #[test]
    fn a_resumed_run_records_its_newest_reference_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        record_run_info(dir.path(), &info(2, Some(100.0), "random"), false).unwrap();
        assert_eq!(read(dir.path()), info(2, Some(100.0), "random"));
        // Resumed on 4 devices with a new reference: init stays "random".
        record_run_info(dir.path(), &info(4, Some(250.0), "resume"), true).unwrap();
        assert_eq!(read(dir.path()), info(4, Some(250.0), "random"));
        // Resumed without a reference (skipped or failed): the file is left as it was.
        record_run_info(dir.path(), &info(1, None, "resume"), true).unwrap();
        assert_eq!(read(dir.path()), info(4, Some(250.0), "random"));
        // A resumed run that finds no file writes its own.
        let empty = tempfile::tempdir().unwrap();
        record_run_info(empty.path(), &info(2, Some(1.0), "resume"), true).unwrap();
        assert_eq!(read(empty.path()), info(2, Some(1.0), "resume"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left behind");
    }
}
