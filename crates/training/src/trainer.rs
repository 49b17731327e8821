//! The training loop: token-budgeted, resumable bit for bit on the CPU, logging every step.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use hyperclone_data::{validation_batches, Batch, BatchSampler, PreparedData};
use hyperclone_model::checkpoint::{load_model, save_model, sha256_hex, write_dir_atomically};
use hyperclone_model::ops::cast_to;
use hyperclone_model::{tokens_tensor, Gpt, GptConfig};
use hyperclone_model::{GptAutodiffBackend, GptBackend};

use crate::checkpoint::{load_latest, prune, save_checkpoint, RunDirError, TrainState};
use crate::config::TrainConfig;
use crate::metrics::{
    peak_flops, peak_rss_bytes, EvalLine, MetricsWriter, RunInfo, SymmetryLine, TrainLine,
};
use crate::optim::{read_scalars, AdamW};
use crate::schedule::learning_rate;

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The run directory or one of its files could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Preparing or opening the data failed.
    #[error(transparent)]
    Data(#[from] hyperclone_data::PrepareError),
    /// Drawing a batch failed.
    #[error(transparent)]
    Batch(#[from] hyperclone_data::BatchError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] RunDirError),
    /// Initial weights could not be loaded.
    #[error("--init-from: {0}")]
    InitFrom(hyperclone_model::checkpoint::CheckpointError),
    /// The model configuration is invalid.
    #[error(transparent)]
    Model(#[from] hyperclone_model::ConfigError),
    /// The device failed to finish queued work.
    #[error("the device failed: {0}")]
    Device(String),
    /// Neither `[model]` nor `--init-from` says what to train.
    #[error("the config has no [model] section and no --init-from checkpoint was given")]
    NoModel,
    /// `[model]` disagrees with the architecture of the `--init-from` checkpoint.
    #[error("--init-from {path}: its architecture differs from [model] in the config: {detail}")]
    ModelMismatch {
        /// The checkpoint.
        path: PathBuf,
        /// The fields that differ.
        detail: String,
    },
    /// The run directory belongs to a different configuration.
    #[error("{run_dir} holds checkpoints of a different configuration (config hash {found}, this config {expected}); use another --run-dir or delete it")]
    ConfigChanged {
        /// The run directory.
        run_dir: PathBuf,
        /// Hash recorded in the checkpoint.
        found: String,
        /// Hash of the config given now.
        expected: String,
    },
    /// The data was tokenised with a different tokenizer than the checkpoint was trained on.
    #[error("the data in {data_dir} was made with tokenizer {data_hash}, but the checkpoint in {run_dir} was trained with tokenizer {ckpt_hash}")]
    TokenizerChanged {
        /// Prepared data folder.
        data_dir: PathBuf,
        /// Its tokenizer hash.
        data_hash: String,
        /// The run directory.
        run_dir: PathBuf,
        /// The checkpoint's tokenizer hash.
        ckpt_hash: String,
    },
    /// The loss or the gradient norm became NaN or infinite.
    #[error("loss is {loss} (gradient norm {grad_norm}) at step {step}: training stopped; the last good checkpoint in {run_dir} is intact (lower optimizer.lr, raise warm-up, or check the data)")]
    NonFiniteLoss {
        /// The step.
        step: u64,
        /// The loss value.
        loss: f64,
        /// The gradient norm (before clipping).
        grad_norm: f64,
        /// The run directory.
        run_dir: PathBuf,
    },
    /// A budget of zero steps.
    #[error("the budget allows no training step (run.max_steps / run.max_tokens)")]
    EmptyBudget,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How to start and describe a run (what the config file does not say).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The run directory (created if needed).
    pub run_dir: PathBuf,
    /// Start from these weights (a model folder) when the run directory has no checkpoint.
    pub init_from: Option<PathBuf>,
    /// Resume from the newest complete checkpoint of `run_dir` when there is one (default).
    /// When false, an existing checkpoint is an error.
    pub resume: bool,
    /// Stop (as if killed) after this step, without the end-of-run evaluation and `final/`;
    /// for tests of resume and for splitting a run. Checkpoints still follow the config.
    pub stop_after: Option<u64>,
    /// Backend name recorded in `run_info.json`.
    pub backend_name: String,
    /// Device name recorded in `run_info.json` (selects the MFU peak).
    pub device_name: String,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// Last completed optimiser step.
    pub step: u64,
    /// Training tokens consumed.
    pub tokens: u64,
    /// Final validation loss (None when stopped early by `stop_after`).
    pub final_val_loss: Option<f64>,
    /// Cumulative wall seconds.
    pub wall_s: f64,
    /// Cumulative device-hours.
    pub device_hours: f64,
    /// Per-step training losses of the steps this call ran, in order.
    pub losses: Vec<(u64, f64)>,
}

/// Hash of everything that determines the trajectory (budget, logging and checkpoint cadence
/// may change between a run and its resumption).
pub fn trajectory_hash(config: &TrainConfig, model: &GptConfig) -> String {
    let key = serde_json::json!({
        "model": model,
        "data": config.data,
        "optimizer": config.optimizer,
        "schedule": config.schedule,
        "seed": config.run.seed,
        "batch_size": config.run.batch_size,
        "seq_len": config.run.seq_len,
        "grad_accum": config.run.grad_accum,
        "precision": config.run.precision,
    });
    sha256_hex(key.to_string().as_bytes())[..16].to_string()
}

/// Mixes the run seed with a step into the seed of that step's dropout masks.
fn step_seed(seed: u64, step: u64) -> u64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 27)
}

/// One forward, backward and AdamW step (learning rate 0) on copies of `model` and a fresh
/// optimiser with the micro-batch `index`, and one evaluation forward: the kernels of every
/// shape a step uses get compiled; everything computed is dropped.
fn warm_up<AB: GptAutodiffBackend>(
    model: &Gpt<AB>,
    optimizer_config: &crate::config::OptimizerConfig,
    sampler: &BatchSampler,
    train: &hyperclone_data::TokenStream,
    val: &[Batch],
    index: u64,
    device: &AB::Device,
) -> Result<(), TrainError> {
    let batch = sampler.random_batch(train, index)?;
    let x = tokens_tensor::<AB>(&batch.inputs(), batch.batch_size, batch.seq_len, device);
    let y = tokens_tensor::<AB>(&batch.targets(), batch.batch_size, batch.seq_len, device);
    let copy = model.clone();
    let grads = copy.forward_loss(x, y).backward();
    let mut optimizer = AdamW::<AB>::new(optimizer_config.clone());
    optimizer.accumulate(&copy, &grads);
    let (stepped, _) = optimizer.step(copy, 0.0);
    drop(stepped);
    if let Some(b) = val.first() {
        evaluate(&model.valid(), std::slice::from_ref(b), device);
    }
    // Wait for the queued work so that its time is not carried into the first timed step.
    AB::sync(device).map_err(|e| TrainError::Device(format!("{e:?}")))?;
    Ok(())
}

/// Mean loss of `model` over the fixed validation batches, summed on the device and read back
/// once (one wait for the device, not one per batch).
pub fn evaluate<B: GptBackend>(model: &Gpt<B>, batches: &[Batch], device: &B::Device) -> f64 {
    let mut total: Option<Tensor<B, 1>> = None;
    for b in batches {
        let x = tokens_tensor::<B>(&b.inputs(), b.batch_size, b.seq_len, device);
        let y = tokens_tensor::<B>(&b.targets(), b.batch_size, b.seq_len, device);
        let loss = cast_to(model.forward_loss(x, y), DType::F32); // [1]
        total = Some(match total {
            Some(t) => t + loss,
            None => loss,
        });
    }
    total.map_or(0.0, |t| read_scalars(vec![t])[0]) / batches.len().max(1) as f64
}

/// Width and FFN factors recorded in `expand.json` of a model folder made by
/// `hyperclone expand`.
pub fn expansion_factors(model_dir: &Path) -> Option<(usize, usize)> {
    let text = std::fs::read_to_string(model_dir.join("expand.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let w = v.get("width_factor")?.as_u64()? as usize;
    let m = v.get("ffn_factor")?.as_u64()? as usize;
    Some((w, m))
}

fn symmetry_line<B: Backend>(
    model: &Gpt<B>,
    factors: Option<(usize, usize)>,
) -> Option<SymmetryLine> {
    let (n, m) = factors?;
    let report = hyperclone_cloning::symmetry(model, n, m).ok()?;
    Some(SymmetryLine {
        mean: report.mean,
        per_layer: report.per_layer,
    })
}

fn describe_diff(config: &GptConfig, checkpoint: &GptConfig) -> String {
    config
        .differences(checkpoint)
        .into_iter()
        .map(|(field, c, k)| format!("model.{field}: config {c}, checkpoint {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Trains according to `config`, resuming from `options.run_dir` when it holds a complete
/// checkpoint, else starting from `options.init_from` or random weights.
pub fn train<AB: GptAutodiffBackend>(
    config: &TrainConfig,
    options: &TrainOptions,
    device: &AB::Device,
) -> Result<TrainSummary, TrainError> {
    let run_dir = &options.run_dir;
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;

    // Data first: cheap to check, and a mismatch should fail before any compute.
    let data: PreparedData = hyperclone_data::ensure_prepared(&config.data)?;

    // Architecture: from [model], or from the --init-from checkpoint.
    let init_meta = match &options.init_from {
        Some(dir) => {
            Some(hyperclone_model::checkpoint::read_meta(dir).map_err(TrainError::InitFrom)?)
        }
        None => None,
    };
    let model_config = match (&config.model, &init_meta) {
        (Some(m), Some(meta)) => {
            let mut ckpt = meta.config.clone();
            // Dropout is a training choice, not part of the weights.
            ckpt.dropout = m.dropout;
            if &ckpt != m {
                return Err(TrainError::ModelMismatch {
                    path: options.init_from.clone().unwrap_or_default(),
                    detail: describe_diff(m, &ckpt),
                });
            }
            m.clone()
        }
        (Some(m), None) => m.clone(),
        (None, Some(meta)) => meta.config.clone(),
        (None, None) => return Err(TrainError::NoModel),
    };
    model_config.validate()?;
    data.check_model_vocab(model_config.vocab_size)?;
    let config_hash = trajectory_hash(config, &model_config);
    let total_steps = config.total_steps();
    if total_steps == Some(0) {
        return Err(TrainError::EmptyBudget);
    }
    let sched_total = total_steps.unwrap_or(u64::MAX / 2);

    // Resume, or initialise.
    let resumed = if options.resume {
        load_latest::<AB>(run_dir, &config.optimizer, device)?
    } else {
        None
    };
    let (model, mut optimizer, mut state, init_kind) = match resumed {
        Some(r) => {
            if r.state.config_hash != config_hash {
                return Err(TrainError::ConfigChanged {
                    run_dir: run_dir.clone(),
                    found: r.state.config_hash,
                    expected: config_hash,
                });
            }
            if r.state.tokenizer_hash != data.manifest.tokenizer_hash {
                return Err(TrainError::TokenizerChanged {
                    data_dir: data.dir.clone(),
                    data_hash: data.manifest.tokenizer_hash.clone(),
                    run_dir: run_dir.clone(),
                    ckpt_hash: r.state.tokenizer_hash,
                });
            }
            tracing::info!("resuming from {} (step {})", r.dir.display(), r.state.step);
            (r.model, r.optimizer, r.state, "resume")
        }
        None => {
            let (model, kind, width) = match &options.init_from {
                Some(dir) => {
                    let inner = load_model::<AB::InnerBackend>(dir, device)
                        .map_err(TrainError::InitFrom)?;
                    let mut model = crate::checkpoint::trainable(Gpt::<AB>::from_inner(inner));
                    model = model.with_dropout(model_config.dropout);
                    let width = expansion_factors(dir);
                    tracing::info!(
                        "initialised from {}{}",
                        dir.display(),
                        width.map_or(String::new(), |(w, m)| format!(
                            " (expanded: width ×{w}, FFN ×{m})"
                        ))
                    );
                    (
                        model,
                        if width.is_some() {
                            "expanded"
                        } else {
                            "init-from"
                        },
                        width,
                    )
                }
                None => (
                    Gpt::<AB>::init(&model_config, config.run.seed, device)?,
                    "random",
                    None,
                ),
            };
            let state = TrainState {
                step: 0,
                tokens: 0,
                wall_s: 0.0,
                device_hours: 0.0,
                flops: 0.0,
                seed: config.run.seed,
                tokenizer_hash: data.manifest.tokenizer_hash.clone(),
                config_hash: config_hash.clone(),
                best_val: None,
                expanded: width,
            };
            (
                model,
                AdamW::<AB>::new(config.optimizer.clone()),
                state,
                kind,
            )
        }
    };

    // Files of the run directory.
    let resolved = config.to_toml();
    std::fs::write(run_dir.join("config.toml"), &resolved).map_err(io_err(run_dir))?;
    let flops_per_token = model_config.flops_per_token(config.run.seq_len);
    let precision = config.run.precision;
    let peak = peak_flops(&options.device_name, precision.matmuls_in_bf16());
    // Mixed precision is a property of the forward pass, not of the weights: set it on every
    // path (fresh, --init-from, resume).
    let mut model = model.with_kernels(config.run.kernels());
    let info = RunInfo {
        backend: options.backend_name.clone(),
        device: if options.device_name.starts_with("cpu") {
            "cpu".into()
        } else {
            "gpu".into()
        },
        device_name: options.device_name.clone(),
        devices: 1,
        param_count: model_config.param_count() as u64,
        flops_per_token,
        seed: config.run.seed,
        precision: precision.as_str().into(),
        attention: config.run.attention.resolved_name().into(),
        init: init_kind.into(),
        peak_flops: peak.map(|p| p.0),
        peak_estimated: peak.is_none_or(|p| p.1),
    };
    if init_kind != "resume" {
        let info_json = serde_json::to_vec_pretty(&info).expect("RunInfo serialises");
        std::fs::write(run_dir.join("run_info.json"), info_json).map_err(io_err(run_dir))?;
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = MetricsWriter::open(&metrics_path).map_err(io_err(&metrics_path))?;

    let sampler = BatchSampler::new(config.run.batch_size, config.run.seq_len, config.run.seed)?;
    let val = validation_batches(
        &data.val,
        config.run.batch_size,
        config.run.seq_len,
        config.run.eval_batches,
    )?;
    let tokens_per_step = config.tokens_per_step();
    tracing::info!(
        "model: {} parameters, {:.3e} FLOPs/token; {} tokens/step; {} train tokens, {} validation batches; budget {}",
        model_config.param_count(),
        flops_per_token,
        tokens_per_step,
        data.train.len(),
        val.len(),
        total_steps.map_or("wall time".to_string(), |s| format!("{s} steps")),
    );

    // Warm-up, off the device-hour clock. GPU backends compile (and autotune) kernels for each
    // new shape on first use: a one-off cost (minutes through wgpu on a CPU) that would otherwise
    // be charged to whichever stage meets a shape first — the cloned large stage, never its
    // same-shaped baseline that runs after it. One training step on a throwaway copy of the
    // model and optimiser, and one evaluation batch, all discarded: the weights, the optimiser
    // state, the data stream and the dropout masks (reseeded every step) are untouched.
    let budget_left = total_steps.is_none_or(|t| state.step < t)
        && config
            .run
            .max_wall_seconds
            .is_none_or(|limit| state.wall_s < limit);
    if budget_left {
        let t0 = Instant::now();
        let first = state.step * config.run.grad_accum as u64;
        warm_up(
            &model,
            &config.optimizer,
            &sampler,
            &data.train,
            &val,
            first,
            device,
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        tracing::info!("warm-up step (kernel compilation, autotuning): {seconds:.2} s, not counted in device-hours");
        let line = serde_json::json!({ "kind": "warmup", "step": state.step, "seconds": seconds });
        metrics.write(&line).map_err(io_err(&metrics_path))?;
    }

    let segment_start = Instant::now();
    let wall_at_start = state.wall_s;
    let wall_now = |state_start: f64| state_start + segment_start.elapsed().as_secs_f64();

    let eval_and_log = |model: &Gpt<AB>,
                        state: &mut TrainState,
                        metrics: &mut MetricsWriter|
     -> Result<f64, TrainError> {
        let inner = model.valid();
        let val_loss = evaluate(&inner, &val, device);
        let symmetry = symmetry_line(&inner, state.expanded);
        let wall = wall_now(wall_at_start);
        let line = EvalLine {
            kind: "eval".into(),
            step: state.step,
            tokens: state.tokens,
            val_loss,
            val_ppl: val_loss.exp(),
            wall_s: wall,
            device_hours: wall / 3600.0,
            flops: state.flops,
            symmetry: symmetry.clone(),
        };
        metrics.write(&line).map_err(io_err(&metrics_path))?;
        if state.best_val.is_none_or(|(_, best)| val_loss < best) {
            state.best_val = Some((state.step, val_loss));
        }
        tracing::info!(
            "eval step {}: val loss {val_loss:.4} (ppl {:.1}){}",
            state.step,
            val_loss.exp(),
            symmetry.map_or(String::new(), |s| format!(", symmetry {:.4}", s.mean))
        );
        Ok(val_loss)
    };

    if state.step == 0 {
        eval_and_log(&model, &mut state, &mut metrics)?;
    }

    let progress = make_progress(total_steps, state.step);
    let mut losses = Vec::new();
    let mut final_val = None;
    let mut stopped_early = false;
    loop {
        if total_steps.is_some_and(|t| state.step >= t) {
            break;
        }
        if let Some(limit) = config.run.max_wall_seconds {
            if wall_now(wall_at_start) >= limit {
                tracing::info!("wall-time budget of {limit} s spent at step {}", state.step);
                break;
            }
        }
        let step = state.step + 1;
        let t0 = Instant::now();
        // Dropout masks come from the backend's generator, reseeded every step so that a
        // resumed run draws the same masks. The generator is process-wide: one training per
        // process at a time (the CLI's case) keeps this exact.
        AB::seed(device, step_seed(config.run.seed, step));
        let mut data_time = 0.0;
        // The losses stay on the device until the step's end: reading one back here would make
        // the host wait for the forward before it could queue the backward.
        let mut loss_sum: Option<Tensor<AB::InnerBackend, 1>> = None;
        for micro in 0..config.run.grad_accum {
            let td = Instant::now();
            let index = (step - 1) * config.run.grad_accum as u64 + micro as u64;
            let batch = sampler.random_batch(&data.train, index)?;
            let x = tokens_tensor::<AB>(&batch.inputs(), batch.batch_size, batch.seq_len, device);
            let y = tokens_tensor::<AB>(&batch.targets(), batch.batch_size, batch.seq_len, device);
            data_time += td.elapsed().as_secs_f64();
            let loss = model.forward_loss(x, y);
            let value = cast_to(loss.clone().inner(), DType::F32); // [1], summed in f32 (bf16-pure)
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + value,
                None => value,
            });
            let grads = loss.backward();
            optimizer.accumulate(&model, &grads);
        }
        let lr = learning_rate(&config.schedule, config.optimizer.lr, step, sched_total);
        let (updated, grad_norm) = optimizer.step(model, lr);
        model = updated;
        // The step's one wait for the device: its summed loss and gradient norm, read together.
        let loss_sum = loss_sum.expect("run.grad_accum >= 1 (validated)");
        let read = read_scalars(vec![loss_sum, grad_norm]);
        let (loss, grad_norm) = (read[0] / config.run.grad_accum as f64, read[1]);
        if !loss.is_finite() || !grad_norm.is_finite() {
            // The update from this step has been applied in memory only: nothing is saved.
            // A non-finite gradient norm would make the clip factor, and so every weight, NaN.
            return Err(TrainError::NonFiniteLoss {
                step,
                loss,
                grad_norm,
                run_dir: run_dir.clone(),
            });
        }
        let step_time = t0.elapsed().as_secs_f64();
        state.step = step;
        state.tokens += tokens_per_step;
        state.flops += flops_per_token * tokens_per_step as f64;
        let wall = wall_now(wall_at_start);
        let achieved = flops_per_token * tokens_per_step as f64 / step_time;
        let line = TrainLine {
            kind: "train".into(),
            step,
            tokens: state.tokens,
            loss,
            lr,
            grad_norm,
            step_time_s: step_time,
            tokens_per_s: tokens_per_step as f64 / step_time,
            wall_s: wall,
            device_hours: wall / 3600.0,
            flops: state.flops,
            tflops_per_s: achieved / 1e12,
            mfu: peak.map(|(p, _)| achieved / p),
            mfu_estimated: peak.is_none_or(|p| p.1),
            peak_memory_bytes: if info.device == "cpu" {
                peak_rss_bytes()
            } else {
                None
            },
            data_time_s: data_time,
        };
        metrics.write(&line).map_err(io_err(&metrics_path))?;
        losses.push((step, loss));
        progress.report(&line, config.run.log_every);

        let last = total_steps == Some(step)
            || config
                .run
                .max_wall_seconds
                .is_some_and(|l| wall_now(wall_at_start) >= l);
        if step.is_multiple_of(config.run.eval_every) || last {
            let v = eval_and_log(&model, &mut state, &mut metrics)?;
            if last {
                final_val = Some(v);
            }
        }
        if (config.run.checkpoint_every > 0 && step.is_multiple_of(config.run.checkpoint_every))
            || last
        {
            state.wall_s = wall_now(wall_at_start);
            state.device_hours = state.wall_s / 3600.0;
            let dir = save_checkpoint(run_dir, &model, &optimizer, &state)?;
            tracing::debug!("checkpoint {}", dir.display());
            prune(run_dir, config.run.keep_last, state.best_val.map(|b| b.0));
        }
        if options.stop_after == Some(step) && !last {
            stopped_early = true;
            break;
        }
    }
    progress.finish();
    state.wall_s = wall_now(wall_at_start);
    state.device_hours = state.wall_s / 3600.0;

    if !stopped_early {
        if final_val.is_none() {
            // Budget already spent when this call started (a finished run re-invoked).
            final_val = state
                .best_val
                .map(|_| evaluate(&model.valid(), &val, device));
        }
        let final_dir = run_dir.join("final");
        let inner = model.valid();
        write_dir_atomically::<RunDirError>(&final_dir, |tmp| Ok(save_model(&inner, tmp)?))?;
    }
    Ok(TrainSummary {
        step: state.step,
        tokens: state.tokens,
        final_val_loss: final_val,
        wall_s: state.wall_s,
        device_hours: state.device_hours,
        losses,
    })
}

/// A bar with ETA on a terminal, plain `tracing` lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

fn make_progress(total: Option<u64>, start: u64) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress { bar: None };
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(start);
    Progress { bar: Some(bar) }
}

impl Progress {
    fn report(&self, line: &TrainLine, every: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(line.step);
                bar.set_message(format!(
                    "loss {:.4} | {:.0} tok/s | lr {:.2e}",
                    line.loss, line.tokens_per_s, line.lr
                ));
            }
            None => {
                if line.step == 1 || line.step.is_multiple_of(every.max(1)) {
                    tracing::info!(
                        "step {} | loss {:.4} | lr {:.2e} | grad norm {:.3} | {:.0} tok/s | {:.1} ms/step",
                        line.step,
                        line.loss,
                        line.lr,
                        line.grad_norm,
                        line.tokens_per_s,
                        line.step_time_s * 1e3
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
