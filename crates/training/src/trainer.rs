//! The training loop: token-budgeted, resumable bit for bit on the CPU, logging every step.
//!
//! Two layers. [`Trainer`] is a model, its optimiser and the device: it starts fresh or from a
//! run directory's newest checkpoint ([`Trainer::init_or_resume`]), takes a training
//! [`step`](Trainer::step), [`evaluates`](Trainer::evaluate) and writes
//! [`checkpoints`](Trainer::checkpoint); `hyperclone bench` times its step. [`train`] runs a
//! whole run around it: inputs checked, run directory files, warm-up, the loop with its budget,
//! evaluations, checkpoints and `metrics.jsonl`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use hyperclone_data::{validation_batches, Batch, BatchSampler, PreparedData};
use hyperclone_model::checkpoint::{load_model, save_model, sha256_hex, write_dir_atomically};
use hyperclone_model::ops::cast_to;
use hyperclone_model::{tokens_tensor, Gpt, GptConfig};
use hyperclone_model::{GptAutodiffBackend, GptBackend};

use crate::checkpoint::{
    complete_checkpoints, load_latest, load_latest_before, prune, save_checkpoint, Resumed,
    RunDirError, TrainState, OPTIMIZER_FILE,
};
use crate::config::{OptimizerConfig, TrainConfig};
use crate::lock::{LockError, RunLock};
use crate::metrics::{peak_flops, peak_rss_bytes};
use crate::optim::{read_scalars, AdamW, AdamWState, OptimError};
use crate::parallel::{digest16, weights_checksum, Abort, Launch, ParallelError, Peer};
use crate::progress::make_progress;
use crate::scaling::{record_run_info, reference_for_run, SinglePeerReference};
use crate::schedule::learning_rate;
use hyperclone_runfiles::{
    CostOffset, EvalLine, Line, RunInfo, RunLog, SymmetryLine, TrainLine, WarmupLine,
};

/// Why training stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// `metrics.jsonl` could not be opened or appended to.
    #[error(transparent)]
    RunFile(#[from] hyperclone_runfiles::RunFileError),
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
    #[error("loss is {loss} (gradient norm {grad_norm}) at step {step}: training stopped, nothing of this step was saved; {} (lower optimizer.lr, raise warm-up, or check the data)", describe_newest(.run_dir, .newest_checkpoint.as_deref()))]
    NonFiniteLoss {
        /// The step.
        step: u64,
        /// The loss value.
        loss: f64,
        /// The gradient norm (before clipping).
        grad_norm: f64,
        /// The run directory.
        run_dir: PathBuf,
        /// The newest complete checkpoint of the run directory when training stopped.
        newest_checkpoint: Option<PathBuf>,
    },
    /// A budget of zero steps.
    #[error("the budget allows no training step (run.max_steps / run.max_tokens)")]
    EmptyBudget,
    /// The sequence length exceeds the context length of the model (checked here when the
    /// architecture comes from the `--init-from` checkpoint rather than `[model]`).
    #[error("run.seq_len = {seq_len} exceeds the model's context_length {context_length} ({source_of_model}): set run.seq_len to at most {context_length}")]
    SeqLenTooLong {
        /// `run.seq_len`.
        seq_len: usize,
        /// The model's context length.
        context_length: usize,
        /// Where the architecture comes from.
        source_of_model: String,
    },
    /// Resuming is off (`--resume never`) but the run directory holds a checkpoint.
    #[error("{} already holds checkpoint {} and resuming is off (--resume never); nothing was changed: use another run directory, or --resume auto to continue this run", .run_dir.display(), .checkpoint.display())]
    CheckpointExists {
        /// The run directory.
        run_dir: PathBuf,
        /// Its newest complete checkpoint.
        checkpoint: PathBuf,
    },
    /// The run directory is locked by another training.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// [`OptimizerInit::Transfer`] was asked for, but the `--init-from` folder holds no
    /// optimizer state (or no `--init-from` folder was given).
    #[error("optimizer state \"transfer\": {}; write one with `hyperclone expand --from runs/SMALL/step-NNNNNNNN --optimizer-state transfer`, or start with a fresh optimizer state", describe_no_state(.init_from.as_deref()))]
    NoOptimizerState {
        /// The `--init-from` folder, if any.
        init_from: Option<PathBuf>,
    },
    /// The optimizer state of the `--init-from` folder could not be read or does not fit
    /// its model.
    #[error("--init-from optimizer state: {0}")]
    InitOptimizer(OptimError),
    /// Data-parallel training could not start, or a peer failed ([`crate::parallel`]).
    #[error(transparent)]
    Parallel(#[from] ParallelError),
}

/// The end of a [`TrainError::NonFiniteLoss`] message: what is left on disk.
fn describe_newest(run_dir: &Path, newest: Option<&Path>) -> String {
    match newest {
        Some(dir) => format!(
            "the checkpoints are as they were, the newest {}",
            dir.display()
        ),
        None => format!(
            "no checkpoint had been written to {} yet",
            run_dir.display()
        ),
    }
}

/// The middle of a [`TrainError::NoOptimizerState`] message.
fn describe_no_state(init_from: Option<&Path>) -> String {
    match init_from {
        Some(dir) => format!("{} holds no {OPTIMIZER_FILE}", dir.display()),
        None => "there is no --init-from folder to take it from".to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Measures how alike the cloned copies of a model expanded by (width factor, FFN factor) still
/// are (the caller's choice of metric: the CLI and the experiment pass HyperCloning's
/// `symmetry`, which the training crate does not depend on). `None` when it cannot be measured.
pub type SymmetryFn<B> = Arc<dyn Fn(&Gpt<B>, (usize, usize)) -> Option<SymmetryLine> + Send + Sync>;

/// Where the optimizer state of a run that starts from an `--init-from` folder comes from. A
/// resumed run always continues its own checkpoint's state; a run from random weights starts
/// fresh.
///
/// A transferred state (`optimizer.safetensors` written into an expanded folder by `hyperclone
/// expand --optimizer-state transfer`) brings the small run's moments, its update count (the
/// bias correction continues from it) and per-parameter factors on the Adam step and on ε,
/// which stay with the run through its checkpoints. The run's step, data position and
/// learning-rate schedule are its own and start at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerInit {
    /// The transferred state when the folder holds one (`optimizer.safetensors` beside
    /// `expand.json`), else fresh.
    #[default]
    Auto,
    /// The folder's `optimizer.safetensors`; a folder without one is an error
    /// ([`TrainError::NoOptimizerState`]).
    Transfer,
    /// Fresh state (zero moments, update count 0), whatever the folder holds.
    Fresh,
}

/// How to start and describe a run (what the config file does not say). `B` is the backend the
/// model is evaluated on: the inner backend of the training backend.
#[derive(Clone)]
pub struct TrainOptions<B: Backend> {
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
    /// The symmetry metric logged at every evaluation of a run that started from an expanded
    /// model (`expand.json` in `init_from`); `None`: no symmetry metric.
    pub symmetry: Option<SymmetryFn<B>>,
    /// Where the optimizer state comes from when the run starts from `init_from`.
    pub optimizer_state: OptimizerInit,
    /// What the route paid before this run (the small run before a cloned run or a control),
    /// for TensorBoard's total-cost axes; zero for a run on its own.
    pub cost_offset: CostOffset,
}

impl<B: Backend> std::fmt::Debug for TrainOptions<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("run_dir", &self.run_dir)
            .field("init_from", &self.init_from)
            .field("resume", &self.resume)
            .field("stop_after", &self.stop_after)
            .field("backend_name", &self.backend_name)
            .field("device_name", &self.device_name)
            .field("symmetry", &self.symmetry.as_ref().map(|_| "fn"))
            .field("optimizer_state", &self.optimizer_state)
            .field("cost_offset", &self.cost_offset)
            .finish()
    }
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

/// Hash of everything that determines the trajectory: logging, evaluation and checkpoint
/// cadence may change between a run and its resumption, and so may the budget as long as the
/// learning-rate schedule does not depend on it (a decay that ends at the last step does: a
/// longer budget would change the learning rate of steps already taken). The experiment
/// pipeline identifies its training stages by the same hash.
pub fn trajectory_hash(config: &TrainConfig, model: &GptConfig) -> String {
    let decay_end = match config.schedule.decay {
        crate::config::Decay::Constant => None,
        _ => config.schedule.decay_steps.or(config.total_steps()),
    };
    let key = serde_json::json!({
        "model": model,
        "data": config.data,
        "optimizer": config.optimizer,
        "schedule": config.schedule,
        "decay_end": decay_end,
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
    let text = std::fs::read_to_string(model_dir.join(hyperclone_runfiles::EXPAND_FILE)).ok()?;
    serde_json::from_str::<hyperclone_runfiles::ExpandRecord>(&text)
        .ok()?
        .factors()
}

fn describe_diff(config: &GptConfig, checkpoint: &GptConfig) -> String {
    config
        .differences(checkpoint)
        .into_iter()
        .map(|(field, c, k)| format!("model.{field}: config {c}, checkpoint {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The loss and the gradient norm of a step, still on the device: reading them back is the
/// step's one wait for the device ([`StepTensors::read`]).
pub struct StepTensors<B: Backend> {
    /// Sum of the micro-batches' losses, f32, `[1]`.
    pub loss_sum: Tensor<B, 1>,
    /// Global gradient norm before clipping, f32, `[1]`.
    pub grad_norm: Tensor<B, 1>,
    /// Micro-batches summed in `loss_sum`.
    pub micro_batches: usize,
}

impl<B: Backend> StepTensors<B> {
    /// (mean loss, gradient norm), read back together.
    pub fn read(self) -> (f64, f64) {
        let read = read_scalars(vec![self.loss_sum, self.grad_norm]);
        (read[0] / self.micro_batches.max(1) as f64, read[1])
    }
}

/// How a [`Trainer`] got its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// From a checkpoint of the run directory.
    Resume,
    /// Random weights.
    Random,
    /// An `--init-from` model folder made by `hyperclone expand`.
    Expanded,
    /// Another `--init-from` model folder.
    InitFrom,
}

impl InitKind {
    /// The name recorded in `run_info.json` (`init`).
    pub fn as_str(self) -> &'static str {
        match self {
            InitKind::Resume => "resume",
            InitKind::Random => "random",
            InitKind::Expanded => "expanded",
            InitKind::InitFrom => "init-from",
        }
    }
}

/// A model, its AdamW state and the device they live on: one training step, evaluation and
/// checkpoints. `train` runs a whole run with it; `hyperclone bench` times its step.
pub struct Trainer<AB: GptAutodiffBackend> {
    /// Always `Some` between calls: [`AdamW::step`] takes the model by value and returns the
    /// updated one (a clone kept here would hold every weight twice during the update).
    model: Option<Gpt<AB>>,
    optimizer: AdamW<AB>,
    device: AB::Device,
}

/// A trainer started by [`Trainer::init_or_resume`], with the run state it starts at.
pub struct Started<AB: GptAutodiffBackend> {
    /// Model and optimiser.
    pub trainer: Trainer<AB>,
    /// Step, tokens, time and hashes (step 0 unless resumed).
    pub state: TrainState,
    /// Where the weights came from.
    pub init: InitKind,
    /// The checkpoint resumed from.
    pub resumed_from: Option<PathBuf>,
}

impl<AB: GptAutodiffBackend> Trainer<AB> {
    /// A trainer of `model` with `optimizer` on `device`.
    pub fn new(model: Gpt<AB>, optimizer: AdamW<AB>, device: AB::Device) -> Self {
        Self {
            model: Some(model),
            optimizer,
            device,
        }
    }

    /// The trainer of a run: the newest complete checkpoint of `options.run_dir` when
    /// `options.resume` and there is one (its config and tokenizer hashes must match
    /// `config_hash` and the data's), else the weights of `options.init_from`, else random
    /// weights of `model_config`. The model computes with `config.run.kernels()`.
    pub fn init_or_resume(
        config: &TrainConfig,
        model_config: &GptConfig,
        config_hash: &str,
        data: &PreparedData,
        options: &TrainOptions<AB::InnerBackend>,
        device: &AB::Device,
    ) -> Result<Started<AB>, TrainError> {
        Self::init_or_resume_as(
            config,
            model_config,
            config_hash,
            data,
            options,
            device,
            true,
        )
    }

    /// [`Trainer::init_or_resume`]; only a `leader` (the single device, or rank 0 of a
    /// data-parallel run) writes into the run directory.
    fn init_or_resume_as(
        config: &TrainConfig,
        model_config: &GptConfig,
        config_hash: &str,
        data: &PreparedData,
        options: &TrainOptions<AB::InnerBackend>,
        device: &AB::Device,
        leader: bool,
    ) -> Result<Started<AB>, TrainError> {
        let run_dir = &options.run_dir;
        let resumed = if options.resume {
            load_latest::<AB>(run_dir, &config.optimizer, device)?
        } else {
            None
        };
        if let Some(r) = resumed {
            return Self::resume(r, config, config_hash, data, run_dir, device);
        }
        // An imported model's special token ids, generation and tokenizer configs stay with
        // the run (and its final/), so that `hyperclone export` of the run writes them back.
        if leader {
            crate::checkpoint::carry_hf_metadata(options.init_from.as_deref(), run_dir)?;
        }
        let (model, init, width) = match &options.init_from {
            Some(dir) => {
                let inner =
                    load_model::<AB::InnerBackend>(dir, device).map_err(TrainError::InitFrom)?;
                let model = crate::checkpoint::trainable(Gpt::<AB>::from_inner(inner))
                    .with_dropout(model_config.dropout);
                let width = expansion_factors(dir);
                tracing::info!(
                    "initialised from {}{}",
                    dir.display(),
                    width.map_or(String::new(), |(w, m)| format!(
                        " (expanded: width ×{w}, FFN ×{m})"
                    ))
                );
                let init = if width.is_some() {
                    InitKind::Expanded
                } else {
                    InitKind::InitFrom
                };
                (model, init, width)
            }
            None => (
                Gpt::<AB>::init(model_config, config.run.seed, device)?,
                InitKind::Random,
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
            config_hash: config_hash.to_string(),
            best_val: None,
            expanded: width,
        };
        let optimizer = Self::initial_optimizer(config, options, &model, device)?;
        // Mixed precision and the kernels are properties of the forward pass, not of the
        // weights: set them on every path (fresh, --init-from, resume).
        let model = model.with_kernels(config.run.kernels());
        Ok(Started {
            trainer: Trainer::new(model, optimizer, device.clone()),
            state,
            init,
            resumed_from: None,
        })
    }

    /// The optimizer state of a run that starts from `options.init_from` (or random weights),
    /// as `options.optimizer_state` says; a transferred state must cover every parameter of
    /// `model`.
    fn initial_optimizer(
        config: &TrainConfig,
        options: &TrainOptions<AB::InnerBackend>,
        model: &Gpt<AB>,
        device: &AB::Device,
    ) -> Result<AdamW<AB>, TrainError> {
        let fresh = || Ok(AdamW::<AB>::new(config.optimizer.clone()));
        let wanted = options.optimizer_state;
        let dir = match (&options.init_from, wanted) {
            (_, OptimizerInit::Fresh) => return fresh(),
            (None, OptimizerInit::Transfer) => {
                return Err(TrainError::NoOptimizerState { init_from: None })
            }
            (None, _) => return fresh(),
            (Some(dir), _) => dir,
        };
        let path = dir.join(OPTIMIZER_FILE);
        if !path.exists() {
            return match wanted {
                OptimizerInit::Transfer => Err(TrainError::NoOptimizerState {
                    init_from: Some(dir.clone()),
                }),
                _ => fresh(),
            };
        }
        // Auto takes only a state that `expand` carried through the clone: the optimizer
        // file of a step folder given as --init-from keeps being ignored, as before.
        let expanded = dir.join(hyperclone_runfiles::EXPAND_FILE).exists();
        if wanted == OptimizerInit::Auto && !expanded {
            return fresh();
        }
        let state = AdamWState::read(&path).map_err(TrainError::InitOptimizer)?;
        let origin = state.origin.clone();
        let optimizer = AdamW::<AB>::from_state(config.optimizer.clone(), state, device);
        optimizer
            .check_model(model, true)
            .map_err(|reason| TrainError::InitOptimizer(OptimError::Mismatch { path, reason }))?;
        tracing::info!(
            "optimizer state from {} (bias correction continues from update {}{}): moments and per-parameter factors carried through the clone",
            dir.display(),
            optimizer.updates(),
            origin.map_or(String::new(), |o| format!(
                ", checkpoint {} at step {}",
                o.checkpoint, o.step
            ))
        );
        Ok(optimizer)
    }

    /// The trainer of the loaded checkpoint `r`, whose config and tokenizer hashes must match
    /// `config_hash` and the data's.
    fn resume(
        r: Resumed<AB>,
        config: &TrainConfig,
        config_hash: &str,
        data: &PreparedData,
        run_dir: &Path,
        device: &AB::Device,
    ) -> Result<Started<AB>, TrainError> {
        if r.state.config_hash != config_hash {
            return Err(TrainError::ConfigChanged {
                run_dir: run_dir.to_path_buf(),
                found: r.state.config_hash,
                expected: config_hash.to_string(),
            });
        }
        if r.state.tokenizer_hash != data.manifest.tokenizer_hash {
            return Err(TrainError::TokenizerChanged {
                data_dir: data.dir.clone(),
                data_hash: data.manifest.tokenizer_hash.clone(),
                run_dir: run_dir.to_path_buf(),
                ckpt_hash: r.state.tokenizer_hash,
            });
        }
        tracing::info!("resuming from {} (step {})", r.dir.display(), r.state.step);
        Ok(Started {
            trainer: Trainer::new(
                r.model.with_kernels(config.run.kernels()),
                r.optimizer,
                device.clone(),
            ),
            state: r.state,
            init: InitKind::Resume,
            resumed_from: Some(r.dir),
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Gpt<AB> {
        self.model
            .as_ref()
            .expect("the model is put back by every update")
    }

    /// The optimiser state.
    pub fn optimizer(&self) -> &AdamW<AB> {
        &self.optimizer
    }

    /// The device the model lives on.
    pub fn device(&self) -> &AB::Device {
        &self.device
    }

    /// Loss of one micro-batch, with its autodiff graph (nothing waits for the device).
    ///
    /// # Shapes
    /// `inputs, targets: [B, T]` → `[1]`
    pub fn forward_loss(
        &self,
        inputs: Tensor<AB, 2, Int>,
        targets: Tensor<AB, 2, Int>,
    ) -> Tensor<AB, 1> {
        self.model().forward_loss(inputs, targets)
    }

    /// Backward pass of a micro-batch's loss; its gradients are added to the optimiser's.
    pub fn backward(&mut self, loss: Tensor<AB, 1>) {
        let grads = loss.backward();
        let model = self
            .model
            .as_ref()
            .expect("the model is put back by every update");
        self.optimizer.accumulate(model, &grads);
    }

    /// One AdamW update with learning rate `lr` from the accumulated gradients; returns the
    /// pre-clip gradient norm (`[1]`, f32, on the device).
    pub fn update(&mut self, lr: f64) -> Tensor<AB::InnerBackend, 1> {
        let model = self
            .model
            .take()
            .expect("the model is put back by every update");
        let (model, grad_norm) = self.optimizer.step(model, lr);
        self.model = Some(model);
        grad_norm
    }

    /// One optimiser step over `micro_batches` micro-batches, `batch(i)` giving the inputs
    /// and targets of the i-th: forward, backward and gradient accumulation for each, then the
    /// update with learning rate `lr`. Nothing waits for the device: the loss and gradient
    /// norm come back as tensors, to be read together at the step's end (a loss read after
    /// the forward would make the host wait before it could queue the backward).
    pub fn step<E>(
        &mut self,
        micro_batches: usize,
        lr: f64,
        batch: impl FnMut(usize) -> Result<(Tensor<AB, 2, Int>, Tensor<AB, 2, Int>), E>,
    ) -> Result<StepTensors<AB::InnerBackend>, E> {
        self.step_reduced(micro_batches, lr, batch, |_, loss_sum| Ok(loss_sum))
    }

    /// [`Trainer::step`] with `reduce` between the last backward and the update: it gets the
    /// optimiser, whose accumulated gradients it may replace ([`AdamW::reduce_accumulated`]),
    /// and the summed loss, and returns the loss to report. Data-parallel peers average both
    /// over the peers here, so that the clip and AdamW see the gradient of the global batch.
    pub fn step_reduced<E>(
        &mut self,
        micro_batches: usize,
        lr: f64,
        mut batch: impl FnMut(usize) -> Result<(Tensor<AB, 2, Int>, Tensor<AB, 2, Int>), E>,
        reduce: impl FnOnce(
            &mut AdamW<AB>,
            Tensor<AB::InnerBackend, 1>,
        ) -> Result<Tensor<AB::InnerBackend, 1>, E>,
    ) -> Result<StepTensors<AB::InnerBackend>, E> {
        let mut loss_sum: Option<Tensor<AB::InnerBackend, 1>> = None;
        for micro in 0..micro_batches {
            let (x, y) = batch(micro)?;
            let loss = self.forward_loss(x, y);
            let value = cast_to(loss.clone().inner(), DType::F32); // [1], summed in f32 (bf16-pure)
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + value,
                None => value,
            });
            self.backward(loss);
        }
        let loss_sum = loss_sum.unwrap_or_else(|| Tensor::zeros([1], &self.device));
        let loss_sum = reduce(&mut self.optimizer, loss_sum)?;
        let grad_norm = self.update(lr);
        Ok(StepTensors {
            loss_sum,
            grad_norm,
            micro_batches,
        })
    }

    /// Mean validation loss of the model over `batches` ([`evaluate`]).
    pub fn evaluate(&self, batches: &[Batch]) -> f64 {
        evaluate(&self.model().valid(), batches, &self.device)
    }

    /// Writes the step folder of `state` into `run_dir` ([`save_checkpoint`]).
    pub fn checkpoint(&self, run_dir: &Path, state: &TrainState) -> Result<PathBuf, RunDirError> {
        save_checkpoint(run_dir, self.model(), &self.optimizer, state)
    }

    /// Writes the weights alone to `run_dir/final` (for `--init-from`, `expand`, `generate`),
    /// with the run's Hugging Face metadata when it started from an imported model.
    pub fn save_final(&self, run_dir: &Path) -> Result<PathBuf, RunDirError> {
        let final_dir = run_dir.join("final");
        let inner = self.model().valid();
        write_dir_atomically::<RunDirError>(&final_dir, |tmp| {
            save_model(&inner, tmp)?;
            crate::checkpoint::copy_hf_metadata(run_dir, tmp)
        })?;
        Ok(final_dir)
    }

    /// Waits for the device to finish the queued work.
    pub fn sync(&self) -> Result<(), TrainError> {
        AB::sync(&self.device).map_err(|e| TrainError::Device(format!("{e:?}")))
    }

    /// One forward, backward and AdamW step (learning rate 0) on copies of the model and a
    /// fresh optimiser with the micro-batch `(inputs, targets)`, and one evaluation forward on
    /// `val`: the kernels of every shape a step uses get compiled; everything computed is
    /// dropped, the weights and optimiser state are untouched.
    pub fn warm_up(
        &self,
        optimizer: &OptimizerConfig,
        inputs: Tensor<AB, 2, Int>,
        targets: Tensor<AB, 2, Int>,
        val: Option<&Batch>,
    ) -> Result<(), TrainError> {
        let mut scratch = Trainer::new(
            self.model().clone(),
            AdamW::<AB>::new(optimizer.clone()),
            self.device.clone(),
        );
        let loss = scratch.forward_loss(inputs, targets);
        scratch.backward(loss);
        drop(scratch.update(0.0));
        drop(scratch);
        if let Some(b) = val {
            self.evaluate(std::slice::from_ref(b));
        }
        // Wait for the queued work so that its time is not carried into the first timed step.
        self.sync()
    }
}

/// What `train` checks and derives before it touches the run directory.
struct RunInputs {
    data: PreparedData,
    model_config: GptConfig,
    config_hash: String,
    total_steps: Option<u64>,
}

impl RunInputs {
    fn resolve<B: Backend>(
        config: &TrainConfig,
        options: &TrainOptions<B>,
    ) -> Result<Self, TrainError> {
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
        // `[model]` was checked against run.seq_len with the config; an architecture from the
        // checkpoint is checked here, before a forward pass would meet the overlong sequence.
        if config.run.seq_len > model_config.context_length {
            return Err(TrainError::SeqLenTooLong {
                seq_len: config.run.seq_len,
                context_length: model_config.context_length,
                source_of_model: match (&config.model, &options.init_from) {
                    (None, Some(dir)) => format!("the --init-from model {}", dir.display()),
                    _ => "[model]".to_string(),
                },
            });
        }
        data.check_model_vocab(model_config.vocab_size)?;
        let config_hash = trajectory_hash(config, &model_config);
        let total_steps = config.total_steps();
        if total_steps == Some(0) {
            return Err(TrainError::EmptyBudget);
        }
        Ok(Self {
            data,
            model_config,
            config_hash,
            total_steps,
        })
    }
}

/// Wall seconds of the run: those recorded at the checkpoint it started from plus the time
/// since this segment started.
struct Clock {
    start: Instant,
    wall_at_start: f64,
    /// Seconds of this segment kept off the clock (measurements only some runs make).
    excluded: f64,
    /// Devices this segment occupies (every data-parallel peer's device).
    devices: f64,
    /// Device-hours recorded at the checkpoint the segment started from.
    hours_at_start: f64,
    /// Whether the run so far used `devices` devices throughout (its device-hours are
    /// `wall × devices`): then that product is reported, bit for bit as before on one device.
    same_devices: bool,
}

impl Clock {
    fn new(state: &TrainState, devices: usize) -> Self {
        let devices = devices as f64;
        Self {
            start: Instant::now(),
            wall_at_start: state.wall_s,
            excluded: 0.0,
            devices,
            hours_at_start: state.device_hours,
            same_devices: state.device_hours == state.wall_s * devices / 3600.0,
        }
    }

    /// Device-hours at wall second `wall`: every device counts for the whole wall time. A run
    /// resumed with another number of devices adds this segment's share to what it had.
    fn device_hours(&self, wall: f64) -> f64 {
        if self.same_devices {
            wall * self.devices / 3600.0
        } else {
            self.hours_at_start + (wall - self.wall_at_start) * self.devices / 3600.0
        }
    }

    fn now(&self) -> f64 {
        self.wall_at_start + self.start.elapsed().as_secs_f64() - self.excluded
    }

    /// Keeps `seconds` that just passed off the clock.
    fn exclude(&mut self, seconds: f64) {
        self.excluded += seconds;
    }
}

/// A run in progress: the trainer, its state and everything the loop writes to.
struct Session<'a, AB: GptAutodiffBackend> {
    config: &'a TrainConfig,
    options: &'a TrainOptions<AB::InnerBackend>,
    trainer: Trainer<AB>,
    state: TrainState,
    data: PreparedData,
    sampler: BatchSampler,
    val: Vec<Batch>,
    /// `None` on data-parallel peers other than rank 0, which write nothing.
    metrics: Option<RunLog>,
    total_steps: Option<u64>,
    /// The schedule's length: `total_steps`, or practically endless under a wall-time budget.
    sched_total: u64,
    flops_per_token: f64,
    tokens_per_step: u64,
    peak: Option<(f64, bool)>,
    on_cpu: bool,
    clock: Clock,
    config_hash: String,
    /// The checkpoint this session resumed from, until the session writes one of its own:
    /// a non-finite loss in between may come from a damaged checkpoint.
    resumed_from: Option<(u64, PathBuf)>,
    /// Whether the session already fell back to an older checkpoint (it does so once).
    fell_back: bool,
    /// This session's place in a data-parallel run; `None` on a single device.
    peer: Option<Peer<AB::InnerBackend>>,
    /// Held for the whole run (by the single device, or rank 0's session in its process).
    _lock: Option<RunLock>,
}

/// A finished step: its metrics line (written) and its loss.
struct StepReport {
    line: TrainLine,
    loss: f64,
}

/// What one step of the loop came to.
enum StepOutcome {
    /// The step's metrics line (written).
    Done(Box<StepReport>),
    /// The loss or the gradient norm was NaN or infinite; nothing was saved from this step.
    NonFinite {
        step: u64,
        loss: f64,
        grad_norm: f64,
    },
}

impl<'a, AB: GptAutodiffBackend> Session<'a, AB> {
    /// Starts (or resumes) the run: trainer, run files, warm-up and the step-0 evaluation.
    fn start(
        config: &'a TrainConfig,
        options: &'a TrainOptions<AB::InnerBackend>,
        inputs: RunInputs,
        lock: Option<RunLock>,
        device: &AB::Device,
        peer: Option<Peer<AB::InnerBackend>>,
        reference: Option<SinglePeerReference>,
    ) -> Result<Self, TrainError> {
        let run_dir = &options.run_dir;
        let leader = peer.as_ref().is_none_or(|p| p.rank == 0);
        let world = peer.as_ref().map_or(1, |p| p.world);
        let RunInputs {
            data,
            model_config,
            config_hash,
            total_steps,
        } = inputs;
        let Started {
            trainer,
            state,
            init,
            resumed_from,
        } = Trainer::<AB>::init_or_resume_as(
            config,
            &model_config,
            &config_hash,
            &data,
            options,
            device,
            leader,
        )?;
        if let Some(peer) = &peer {
            agree_at_start(peer, config, &model_config, &data, &trainer, &state)?;
        }

        // Files of the run directory.
        if leader {
            let resolved = config.to_toml();
            std::fs::write(run_dir.join("config.toml"), &resolved).map_err(io_err(run_dir))?;
        }
        let flops_per_token = model_config.flops_per_token(config.run.seq_len);
        let precision = config.run.precision;
        let peak = peak_flops(&options.device_name, precision.matmuls_in_bf16());
        let on_cpu = options.device_name.starts_with("cpu");
        let info = RunInfo {
            backend: Some(options.backend_name.clone()),
            device: Some(if on_cpu { "cpu".into() } else { "gpu".into() }),
            device_name: Some(options.device_name.clone()),
            devices: Some(world as u64),
            param_count: Some(model_config.param_count() as u64),
            flops_per_token: Some(flops_per_token),
            seed: Some(config.run.seed),
            precision: Some(precision.as_str().into()),
            attention: Some(config.run.attention.resolved_name().into()),
            init: Some(init.as_str().into()),
            peak_flops: peak.map(|p| p.0),
            peak_estimated: Some(peak.is_none_or(|p| p.1)),
            single_peer_tokens_per_s: reference.map(|r| r.tokens_per_s),
            single_peer_rows: reference.map(|r| r.rows as u64),
        };
        if leader {
            record_run_info(run_dir, &info, init == InitKind::Resume)?;
        }
        let mut metrics = if leader {
            Some(RunLog::open(
                run_dir,
                config.run.tensorboard,
                options.cost_offset,
            )?)
        } else {
            None
        };

        let sampler =
            BatchSampler::new(config.run.batch_size, config.run.seq_len, config.run.seed)?;
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

        // Warm-up, off the device-hour clock. GPU backends compile (and autotune) kernels for
        // each new shape on first use: a one-off cost (minutes through wgpu on a CPU) that would
        // otherwise be charged to whichever stage meets a shape first — the cloned large stage,
        // never its same-shaped baseline that runs after it. One training step on a throwaway
        // copy of the model and optimiser, and one evaluation batch, all discarded: the
        // weights, the optimiser state, the data stream and the dropout masks (reseeded every
        // step) are untouched.
        let budget_left = total_steps.is_none_or(|t| state.step < t)
            && config
                .run
                .max_wall_seconds
                .is_none_or(|limit| state.wall_s < limit);
        if budget_left {
            let t0 = Instant::now();
            let first = state.step * config.run.grad_accum as u64;
            let batch = peer_rows(sampler.random_batch(&data.train, first)?, peer.as_ref());
            let x = tokens_tensor::<AB>(&batch.inputs(), batch.batch_size, batch.seq_len, device);
            let y = tokens_tensor::<AB>(&batch.targets(), batch.batch_size, batch.seq_len, device);
            trainer.warm_up(&config.optimizer, x, y, val.first())?;
            let seconds = t0.elapsed().as_secs_f64();
            tracing::info!("warm-up step (kernel compilation, autotuning): {seconds:.2} s, not counted in device-hours");
            if let Some(metrics) = &mut metrics {
                metrics.write(&Line::Warmup(WarmupLine {
                    step: state.step,
                    seconds,
                }))?;
            }
        }

        let clock = Clock::new(&state, world);
        let state_step = state.step;
        let mut session = Self {
            config,
            options,
            trainer,
            state,
            data,
            sampler,
            val,
            metrics,
            total_steps,
            sched_total: total_steps.unwrap_or(u64::MAX / 2),
            flops_per_token,
            tokens_per_step,
            peak,
            on_cpu,
            clock,
            resumed_from: resumed_from.map(|dir| (state_step, dir)),
            config_hash,
            fell_back: false,
            peer,
            _lock: lock,
        };
        if session.state.step == 0 && leader {
            session.evaluate_and_log()?;
        }
        Ok(session)
    }

    /// Evaluates, logs the line (with the symmetry metric of an expanded run) and tracks the
    /// best validation loss.
    fn evaluate_and_log(&mut self) -> Result<f64, TrainError> {
        let inner = self.trainer.model().valid();
        let val_loss = evaluate(&inner, &self.val, self.trainer.device());
        // The symmetry metric is a measurement only the cloned run makes: its time is kept off
        // the device-hour clock, or the cloned run would pay for it and its baseline would not.
        let measured = Instant::now();
        let symmetry = match (&self.options.symmetry, self.state.expanded) {
            (Some(measure), Some(factors)) => measure(&inner, factors),
            _ => None,
        };
        self.clock.exclude(measured.elapsed().as_secs_f64());
        let wall = self.clock.now();
        let line = EvalLine {
            step: self.state.step,
            tokens: Some(self.state.tokens),
            val_loss: Some(val_loss),
            val_ppl: Some(val_loss.exp()),
            wall_s: Some(wall),
            device_hours: Some(self.clock.device_hours(wall)),
            flops: Some(self.state.flops),
            symmetry: symmetry.clone(),
        };
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&Line::Eval(line))?;
        }
        if self.state.best_val.is_none_or(|(_, best)| val_loss < best) {
            self.state.best_val = Some((self.state.step, val_loss));
        }
        tracing::info!(
            "eval step {}: val loss {val_loss:.4} (ppl {:.1}){}",
            self.state.step,
            val_loss.exp(),
            symmetry.map_or(String::new(), |s| format!(", symmetry {:.4}", s.mean))
        );
        Ok(val_loss)
    }

    /// Whether the budget (steps or wall time) is spent.
    fn budget_spent(&self) -> Result<bool, TrainError> {
        if self.total_steps.is_some_and(|t| self.state.step >= t) {
            return Ok(true);
        }
        if let Some(limit) = self.config.run.max_wall_seconds {
            if self.out_of_time()? {
                tracing::info!(
                    "wall-time budget of {limit} s spent at step {}",
                    self.state.step
                );
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the wall-time budget is spent; data-parallel peers decide together (their
    /// clocks differ a little), so that all of them stop at the same step.
    fn out_of_time(&self) -> Result<bool, TrainError> {
        let Some(limit) = self.config.run.max_wall_seconds else {
            return Ok(false);
        };
        let mine = self.clock.now() >= limit;
        Ok(match &self.peer {
            Some(peer) => peer.any("the wall-time budget decision", mine)?,
            None => mine,
        })
    }

    /// Whether this session writes the run files: the single device, or data-parallel rank 0.
    fn leader(&self) -> bool {
        self.peer.as_ref().is_none_or(|p| p.rank == 0)
    }

    /// Devices of the run (data-parallel peers in all).
    fn world(&self) -> usize {
        self.peer.as_ref().map_or(1, |p| p.world)
    }

    /// Runs step `state.step + 1` and writes its metrics line.
    fn train_step(&mut self) -> Result<StepOutcome, TrainError> {
        let config = self.config;
        let device = self.trainer.device().clone();
        let step = self.state.step + 1;
        if let Some(peer) = &self.peer {
            peer.check_injected(step)?;
        }
        let t0 = Instant::now();
        // Dropout masks come from the backend's generator, reseeded every step so that a
        // resumed run draws the same masks. The generator is process-wide: one training per
        // process at a time (the CLI's case) keeps this exact.
        AB::seed(&device, step_seed(config.run.seed, step));
        let mut data_time = 0.0;
        let lr = learning_rate(
            &config.schedule,
            config.optimizer.lr,
            step,
            self.sched_total,
        );
        let grad_accum = config.run.grad_accum;
        let (sampler, train, peer) = (&self.sampler, &self.data.train, self.peer.as_ref());
        let batch = |micro: usize| {
            let td = Instant::now();
            let index = (step - 1) * grad_accum as u64 + micro as u64;
            // A data-parallel peer takes its rows of the batch one device would take.
            let batch = peer_rows(sampler.random_batch(train, index)?, peer);
            let x = tokens_tensor::<AB>(&batch.inputs(), batch.batch_size, batch.seq_len, &device);
            let y = tokens_tensor::<AB>(&batch.targets(), batch.batch_size, batch.seq_len, &device);
            data_time += td.elapsed().as_secs_f64();
            Ok::<_, TrainError>((x, y))
        };
        let tensors = match peer {
            None => self.trainer.step(grad_accum, lr, batch)?,
            // The gradient of the global batch is the mean of the peers' gradients (equal
            // shares), and so is its loss: averaged before the clip and AdamW, every peer
            // makes the same update.
            Some(peer) => {
                self.trainer
                    .step_reduced(grad_accum, lr, batch, |optimizer, loss_sum| {
                        optimizer.reduce_accumulated(|g| peer.gradient_mean(g))?;
                        Ok(peer.mean("the loss all-reduce", loss_sum)?)
                    })?
            }
        };
        // The step's one wait for the device: its summed loss and gradient norm, read together.
        let (loss, grad_norm) = tensors.read();
        if !loss.is_finite() || !grad_norm.is_finite() {
            // The update from this step has been applied in memory only: nothing is saved.
            // A non-finite gradient norm would make the clip factor, and so every weight, NaN.
            return Ok(StepOutcome::NonFinite {
                step,
                loss,
                grad_norm,
            });
        }
        let step_time = t0.elapsed().as_secs_f64();
        let state = &mut self.state;
        state.step = step;
        state.tokens += self.tokens_per_step;
        state.flops += self.flops_per_token * self.tokens_per_step as f64;
        let wall = self.clock.now();
        let achieved = self.flops_per_token * self.tokens_per_step as f64 / step_time;
        let line = TrainLine {
            step,
            tokens: Some(state.tokens),
            loss: Some(loss),
            lr: Some(lr),
            grad_norm: Some(grad_norm),
            step_time_s: Some(step_time),
            tokens_per_s: Some(self.tokens_per_step as f64 / step_time),
            wall_s: Some(wall),
            device_hours: Some(self.clock.device_hours(wall)),
            flops: Some(state.flops),
            tflops_per_s: Some(achieved / 1e12),
            mfu: self.peak.map(|(p, _)| achieved / p),
            mfu_estimated: Some(self.peak.is_none_or(|p| p.1)),
            peak_memory_bytes: if self.on_cpu { peak_rss_bytes() } else { None },
            data_time_s: Some(data_time),
        };
        if let Some(metrics) = &mut self.metrics {
            metrics.write(&Line::Train(line.clone()))?;
        }
        Ok(StepOutcome::Done(Box::new(StepReport { line, loss })))
    }

    /// Writes the checkpoint of the current step and prunes old ones.
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        self.state.wall_s = self.clock.now();
        self.state.device_hours = self.clock.device_hours(self.state.wall_s);
        if let Some(peer) = &self.peer {
            // Identical updates keep the weights identical; a checksum per peer proves it
            // before rank 0 writes the step for all of them.
            let checksum = weights_checksum(&self.trainer.model().valid());
            if let Err(detail) = peer.agree("the weights checksum", checksum)? {
                return Err(ParallelError::Diverged {
                    step: self.state.step,
                    detail,
                }
                .into());
            }
            if peer.rank != 0 {
                self.resumed_from = None;
                return Ok(());
            }
        }
        let run_dir = &self.options.run_dir;
        let dir = self.trainer.checkpoint(run_dir, &self.state)?;
        tracing::debug!("checkpoint {}", dir.display());
        self.resumed_from = None;
        prune(
            run_dir,
            self.config.run.keep_last,
            self.state.best_val.map(|b| b.0),
        );
        Ok(())
    }

    /// After a non-finite loss at `step`: when this session resumed from a checkpoint and has
    /// not written one since, that checkpoint may be damaged in a way its checksums cannot show
    /// (written from bad memory, say). Falls back to the previous complete checkpoint, once,
    /// and says so; `false` when there is nothing to fall back to.
    fn fall_back(&mut self, step: u64, loss: f64) -> Result<bool, TrainError> {
        if self.fell_back {
            return Ok(false);
        }
        let Some((resumed_step, resumed_dir)) = self.resumed_from.take() else {
            return Ok(false);
        };
        let run_dir = &self.options.run_dir;
        let device = self.trainer.device().clone();
        let older = match load_latest_before::<AB>(
            run_dir,
            &self.config.optimizer,
            &device,
            Some(resumed_step),
        ) {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::warn!(
                    "loss is {loss} at step {step}, {} step(s) after resuming from {}, and there is no older checkpoint to fall back to",
                    step - resumed_step,
                    resumed_dir.display()
                );
                return Ok(false);
            }
            Err(e) => {
                tracing::warn!(
                    "loss is {loss} at step {step}, {} step(s) after resuming from {}; no older checkpoint loads: {e}",
                    step - resumed_step,
                    resumed_dir.display()
                );
                return Ok(false);
            }
        };
        tracing::warn!(
            "FALLING BACK: loss is {loss} at step {step}, {} step(s) after resuming from {}, which may be damaged; resuming from the previous complete checkpoint {} instead (once)",
            step - resumed_step,
            resumed_dir.display(),
            older.dir.display()
        );
        let started = Trainer::<AB>::resume(
            older,
            self.config,
            &self.config_hash,
            &self.data,
            run_dir,
            &device,
        )?;
        self.trainer = started.trainer;
        self.state = started.state;
        self.clock = Clock::new(&self.state, self.world());
        self.resumed_from = started.resumed_from.map(|dir| (self.state.step, dir));
        self.fell_back = true;
        Ok(true)
    }

    /// Trains until the budget is spent (or `stop_after`), then evaluates and writes `final/`.
    fn run(mut self) -> Result<TrainSummary, TrainError> {
        let config = self.config;
        let leader = self.leader();
        let progress = make_progress(self.total_steps.filter(|_| leader), self.state.step);
        let mut losses = Vec::new();
        let mut final_val = None;
        let mut stopped_early = false;
        // The budget is judged once per step, right after it (`last` below), and that step is
        // then evaluated and checkpointed: a wall-clock check at the top of the loop as well
        // would see the time spent on the evaluation and checkpoint of a step that was not the
        // last, end the run without a checkpoint at its final step, and let a re-run resume
        // from an earlier one and train again. Here it only catches a run that was already
        // finished when this call started.
        let mut finished = self.budget_spent()?;
        while !finished {
            let line = match self.train_step()? {
                StepOutcome::Done(line) => line,
                StepOutcome::NonFinite {
                    step,
                    loss,
                    grad_norm,
                } => {
                    if self.fall_back(step, loss)? {
                        continue;
                    }
                    let run_dir = self.options.run_dir.clone();
                    return Err(TrainError::NonFiniteLoss {
                        step,
                        loss,
                        grad_norm,
                        newest_checkpoint: complete_checkpoints(&run_dir)
                            .into_iter()
                            .next()
                            .map(|c| c.1),
                        run_dir,
                    });
                }
            };
            let StepReport { line, loss } = *line;
            let step = line.step;
            losses.push((step, loss));
            if leader {
                progress.report(&line, config.run.log_every);
            }

            let out_of_time = self.out_of_time()?;
            if out_of_time {
                tracing::info!("wall-time budget spent at step {step}");
            }
            let last = self.total_steps == Some(step) || out_of_time;
            if (step.is_multiple_of(config.run.eval_every) || last) && leader {
                let v = self.evaluate_and_log()?;
                if last {
                    final_val = Some(v);
                }
            }
            if (config.run.checkpoint_every > 0 && step.is_multiple_of(config.run.checkpoint_every))
                || last
            {
                self.checkpoint()?;
            }
            if self.options.stop_after == Some(step) && !last {
                stopped_early = true;
                break;
            }
            finished = last;
        }
        progress.finish();
        self.state.wall_s = self.clock.now();
        self.state.device_hours = self.clock.device_hours(self.state.wall_s);

        if !stopped_early && leader {
            if final_val.is_none() {
                // Budget already spent when this call started (a finished run re-invoked).
                final_val = self
                    .state
                    .best_val
                    .map(|_| self.trainer.evaluate(&self.val));
            }
            self.trainer.save_final(&self.options.run_dir)?;
        }
        if let Some(peer) = &self.peer {
            peer.finish()?;
        }
        Ok(TrainSummary {
            step: self.state.step,
            tokens: self.state.tokens,
            final_val_loss: final_val,
            wall_s: self.state.wall_s,
            device_hours: self.state.device_hours,
            losses,
        })
    }
}

/// Trains according to `config`, resuming from `options.run_dir` when it holds a complete
/// checkpoint, else starting from `options.init_from` or random weights.
///
/// The run directory is locked for the whole run ([`RunLock`]). Everything that can be checked
/// without it (data, architecture, budget) is checked before it is created, and a run that
/// fails before its first step removes the directory if it created it.
pub fn train<AB: GptAutodiffBackend>(
    config: &TrainConfig,
    options: &TrainOptions<AB::InnerBackend>,
    device: &AB::Device,
) -> Result<TrainSummary, TrainError> {
    if config.run.devices > 1 {
        return train_data_parallel::<AB>(config, options, &Launch::default(), device);
    }
    let run_dir = &options.run_dir;
    let inputs = RunInputs::resolve(config, options)?;
    if !options.resume {
        refuse_checkpoints(run_dir)?;
    }
    // The highest folder of `run_dir` that does not exist yet: what this call creates.
    let created = run_dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .last()
        .map(Path::to_path_buf);
    std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
    let started = RunLock::acquire(run_dir)
        .map_err(TrainError::from)
        .and_then(|lock| {
            // Again under the lock: another process may have written one meanwhile.
            if !options.resume {
                refuse_checkpoints(run_dir)?;
            }
            Session::<AB>::start(config, options, inputs, Some(lock), device, None, None)
        });
    match started {
        Ok(session) => session.run(),
        Err(e) => {
            if let Some(dir) = created {
                if let Err(rm) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!("could not remove {}: {rm}", dir.display());
                }
            }
            Err(e)
        }
    }
}

/// [`TrainError::CheckpointExists`] when `run_dir` holds a complete checkpoint.
fn refuse_checkpoints(run_dir: &Path) -> Result<(), TrainError> {
    match complete_checkpoints(run_dir).into_iter().next() {
        Some((_, checkpoint)) => Err(TrainError::CheckpointExists {
            run_dir: run_dir.to_path_buf(),
            checkpoint,
        }),
        None => Ok(()),
    }
}

/// Trains like [`train`] with `config.run.devices` data-parallel peers in this process (one
/// thread each) and, with `launch.nodes > 1`, as one node of a run across processes or
/// machines joined through burn-collective's orchestrator ([`crate::parallel`]).
///
/// The peers of a GPU backend take the devices `device`, `device + 1`, …; on the CPU
/// (`options.device_name` "cpu…") they share the one CPU device. Every node resolves the same
/// inputs and must see the same run directory (a shared file system) to resume; node 0's
/// first peer holds the run directory's lock and writes every file. One data-parallel run per
/// process at a time (burn-collective keeps one server per backend).
pub fn train_data_parallel<AB: GptAutodiffBackend>(
    config: &TrainConfig,
    options: &TrainOptions<AB::InnerBackend>,
    launch: &Launch,
    device: &AB::Device,
) -> Result<TrainSummary, TrainError> {
    let devices = config.run.devices;
    let collective = launch.collective_config(devices)?;
    if devices == 1 && launch.nodes == 1 {
        return train::<AB>(config, options, device);
    }
    let world = devices * launch.nodes as usize;
    if !config.run.batch_size.is_multiple_of(world) {
        return Err(ParallelError::BatchNotDivisible {
            batch_size: config.run.batch_size,
            world,
        }
        .into());
    }
    let peer_devices = peer_devices::<AB>(device, devices, &options.device_name)?;
    let inputs = RunInputs::resolve(config, options)?;
    if devices > 1 && inputs.model_config.dropout > 0.0 {
        return Err(ParallelError::SharedDropout {
            dropout: inputs.model_config.dropout,
            devices,
        }
        .into());
    }
    let run_dir = &options.run_dir;
    let writer_node = launch.node_rank == 0;
    let mut lock = None;
    if writer_node {
        if !options.resume {
            refuse_checkpoints(run_dir)?;
        }
        std::fs::create_dir_all(run_dir).map_err(io_err(run_dir))?;
        lock = Some(RunLock::acquire(run_dir)?);
        if !options.resume {
            refuse_checkpoints(run_dir)?;
        }
        if launch.nodes > 1 {
            start_orchestrator(launch)?;
        }
    }
    if launch.nodes > 1 {
        tracing::warn!(
            "data-parallel across {} processes: with burn-collective 0.21 the second all-reduce between processes never returns (its SyncService::sync clears a copy of its synced-node list), so this run is expected to stop at --peer-timeout; see README, \"Several devices and machines\"",
            launch.nodes
        );
    }
    // The reference of the report's scaling efficiency, on the first device before the peers
    // start (node 0 only: it writes run_info.json).
    let reference = if writer_node {
        reference_for_run::<AB>(
            config,
            &inputs.model_config,
            &inputs.data,
            world,
            &peer_devices[0],
        )
    } else {
        None
    };
    tracing::info!(
        "data-parallel: {devices} peer(s) on node {} of {}, {world} in all; {} rows of each micro-batch per peer",
        launch.node_rank,
        launch.nodes,
        config.run.batch_size / world
    );
    let mut inputs = Some(inputs);
    let abort = Abort::new();
    let local_devices = &peer_devices.clone();
    let results: Vec<Result<TrainSummary, TrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = peer_devices
            .into_iter()
            .enumerate()
            .map(|(local, peer_device)| {
                let rank = launch.node_rank as usize * devices + local;
                let lock = if local == 0 { lock.take() } else { None };
                let inputs = if local == 0 { inputs.take() } else { None };
                let reference = if local == 0 { reference } else { None };
                let (abort, collective) = (abort.clone(), collective.clone());
                scope.spawn(move || {
                    let run = std::panic::AssertUnwindSafe(|| {
                        let mut peer = Peer::<AB::InnerBackend>::register(
                            rank,
                            world,
                            peer_device.clone(),
                            collective,
                            launch,
                            abort.clone(),
                        )?;
                        let all_reduce = peer.use_device_sum(launch, local_devices.clone());
                        if local == 0 {
                            tracing::info!(
                                "data-parallel: the gradients are summed by {all_reduce}"
                            );
                        }
                        let inputs = match inputs {
                            Some(inputs) => inputs,
                            None => RunInputs::resolve(config, options)?,
                        };
                        Session::<AB>::start(
                            config,
                            options,
                            inputs,
                            lock,
                            &peer_device,
                            Some(peer),
                            reference,
                        )?
                        .run()
                    });
                    let result = std::panic::catch_unwind(run).unwrap_or_else(|panic| {
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "(no message)".into());
                        Err(ParallelError::Panicked { rank, message }.into())
                    });
                    if let Err(e) = &result {
                        tracing::error!("data-parallel peer {rank}: {e}");
                        abort.fail(rank);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a peer thread catches its panics"))
            .collect()
    });
    if results.iter().any(Result::is_err) {
        // Helper threads of the stopped peers may still wait inside burn-collective: a reset
        // answers them, and a later run in this process starts clean.
        crate::parallel::reset::<AB::InnerBackend>();
        return Err(root_cause(results));
    }
    results.into_iter().next().expect("at least one peer")
}

/// The error to report from failed peers: the first that is not a consequence of another
/// peer's failure (stopped for a sibling, or waiting for it in vain), else the first.
fn root_cause<T>(results: Vec<Result<T, TrainError>>) -> TrainError {
    let mut errors: Vec<TrainError> = results.into_iter().filter_map(Result::err).collect();
    let secondary = |e: &TrainError| {
        matches!(
            e,
            TrainError::Parallel(ParallelError::PeerFailed { .. } | ParallelError::Timeout { .. })
        )
    };
    let first = errors.iter().position(|e| !secondary(e)).unwrap_or(0);
    errors.swap_remove(first)
}

/// The devices of `devices` peers starting at `device`: consecutive devices of its kind on a
/// GPU backend ([`ParallelError::TooManyDevices`] beyond those that exist), the one device
/// shared on the CPU (`device_name` "cpu…"), where the peers are threads.
fn peer_devices<AB: GptAutodiffBackend>(
    device: &AB::Device,
    devices: usize,
    device_name: &str,
) -> Result<Vec<AB::Device>, ParallelError> {
    if device_name.starts_with("cpu") {
        return Ok(vec![device.clone(); devices]);
    }
    let id = burn::tensor::backend::DeviceOps::id(device);
    let available = AB::device_count(id.type_id);
    let first = id.index_id as usize;
    if first + devices > available {
        return Err(ParallelError::TooManyDevices {
            asked: devices,
            available: available.saturating_sub(first),
            device: format!("{device:?}"),
        });
    }
    Ok((0..devices)
        .map(|i| {
            let mut peer = id;
            peer.index_id = (first + i) as u16;
            <AB::Device as burn::tensor::backend::Device>::from_id(peer)
        })
        .collect())
}

/// Starts burn-collective's global orchestrator on the coordinator's port, on a thread of its
/// own for the rest of the process; a port already taken is an error now rather than a hang.
fn start_orchestrator(launch: &Launch) -> Result<(), ParallelError> {
    let (_, port) = launch.coordinator_host_port()?;
    let taken = |e: std::io::Error| ParallelError::Collective {
        rank: 0,
        operation: "starting the orchestrator",
        detail: format!("port {port}: {e}"),
    };
    drop(std::net::TcpListener::bind(("0.0.0.0", port)).map_err(taken)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(taken)?;
    std::thread::Builder::new()
        .name("collective-orchestrator".into())
        .spawn(move || runtime.block_on(burn_collective::start_global_orchestrator(port)))
        .map_err(taken)?;
    tracing::info!("orchestrator listening on port {port}");
    Ok(())
}

/// The rows of `batch` that data-parallel `peer` computes: an equal, contiguous share
/// (`[B/N, T+1]` of `[B, T+1]`); the whole batch without a peer.
fn peer_rows<B: Backend>(batch: Batch, peer: Option<&Peer<B>>) -> Batch {
    let Some(peer) = peer else {
        return batch;
    };
    let rows = batch.batch_size / peer.world;
    let width = batch.seq_len + 1;
    let start = peer.rank * rows * width;
    Batch {
        batch_size: rows,
        seq_len: batch.seq_len,
        tokens: batch.tokens[start..start + rows * width].to_vec(),
    }
}

/// The start of a data-parallel run: every peer must hold the same configuration (config,
/// model, data, devices per node) and the same starting point (step and weights).
fn agree_at_start<AB: GptAutodiffBackend>(
    peer: &Peer<AB::InnerBackend>,
    config: &TrainConfig,
    model: &GptConfig,
    data: &PreparedData,
    trainer: &Trainer<AB>,
    state: &TrainState,
) -> Result<(), TrainError> {
    let key = serde_json::json!({
        "config": config.to_toml(),
        "devices": config.run.devices,
        "model": model,
        "tokenizer": data.manifest.tokenizer_hash,
        "train_tokens": data.train.len(),
        "val_tokens": data.val.len(),
    });
    let config_hash = digest16(key.to_string().as_bytes());
    if let Err(detail) = peer.agree("the config hash exchange", config_hash)? {
        return Err(ParallelError::ConfigMismatch { detail }.into());
    }
    let mut start = weights_checksum(&trainer.model().valid()).to_vec();
    start.extend_from_slice(&state.step.to_le_bytes());
    if let Err(detail) = peer.agree("the start checksum", digest16(&start))? {
        return Err(ParallelError::StartMismatch { detail }.into());
    }
    Ok(())
}

/// What [`time_data_parallel_steps`] times: a model, its kernels and a global batch.
#[derive(Debug, Clone)]
pub struct DataParallelBench {
    /// The architecture (random weights, seed 0).
    pub model: GptConfig,
    /// Compute dtype and kernels.
    pub kernels: hyperclone_model::Kernels,
    /// Rows of the global batch (split evenly over the peers).
    pub batch: usize,
    /// Tokens per row.
    pub seq: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
}

/// Wall seconds of each timed training step of `devices` data-parallel peers in this process
/// (as rank 0 sees them: forward, backward, the gradient and loss all-reduce and AdamW, with
/// the device synced at the end of each step), on the devices [`train_data_parallel`] would
/// take. The batch is random tokens, the same every step; AdamW at its defaults, lr 1e-4.
/// For `hyperclone bench --devices N`.
pub fn time_data_parallel_steps<AB: GptAutodiffBackend>(
    bench: &DataParallelBench,
    devices: usize,
    device: &AB::Device,
    device_name: &str,
) -> Result<Vec<f64>, TrainError> {
    if !bench.batch.is_multiple_of(devices) {
        return Err(ParallelError::BatchNotDivisible {
            batch_size: bench.batch,
            world: devices,
        }
        .into());
    }
    let launch = Launch::default();
    let collective = launch.collective_config(devices)?;
    let peer_devices = peer_devices::<AB>(device, devices, device_name)?;
    let (rows, width) = (bench.batch / devices, bench.seq + 1);
    let mut rng = hyperclone_model::SplitMix64::new(1);
    let ids: Vec<u32> = (0..bench.batch * width)
        .map(|_| (rng.next_u64() % bench.model.vocab_size as u64) as u32)
        .collect();
    let abort = Abort::new();
    let local_devices = &peer_devices.clone();
    let results: Vec<Result<Vec<f64>, TrainError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = peer_devices
            .into_iter()
            .enumerate()
            .map(|(rank, dev)| {
                let (abort, collective, ids) = (abort.clone(), collective.clone(), &ids);
                let launch = &launch;
                scope.spawn(move || {
                    let result = (|| {
                        let peer = if devices > 1 {
                            let mut peer = Peer::<AB::InnerBackend>::register(
                                rank,
                                devices,
                                dev.clone(),
                                collective,
                                launch,
                                abort.clone(),
                            )?;
                            peer.use_device_sum(launch, local_devices.clone());
                            Some(peer)
                        } else {
                            None
                        };
                        let model =
                            Gpt::<AB>::init(&bench.model, 0, &dev)?.with_kernels(bench.kernels);
                        let mut trainer =
                            Trainer::new(model, AdamW::<AB>::new(Default::default()), dev.clone());
                        let mine = Batch {
                            batch_size: rows,
                            seq_len: bench.seq,
                            tokens: ids[rank * rows * width..(rank + 1) * rows * width].to_vec(),
                        };
                        let tokens = || {
                            Ok::<_, TrainError>((
                                tokens_tensor::<AB>(&mine.inputs(), rows, bench.seq, &dev),
                                tokens_tensor::<AB>(&mine.targets(), rows, bench.seq, &dev),
                            ))
                        };
                        let mut times = Vec::with_capacity(bench.steps);
                        for i in 0..bench.warmup + bench.steps {
                            let t0 = Instant::now();
                            let step = match &peer {
                                None => trainer.step(1, 1e-4, |_| tokens())?,
                                Some(peer) => trainer.step_reduced(
                                    1,
                                    1e-4,
                                    |_| tokens(),
                                    |optimizer, loss| {
                                        optimizer.reduce_accumulated(|g| peer.gradient_mean(g))?;
                                        Ok(peer.mean("the loss all-reduce", loss)?)
                                    },
                                )?,
                            };
                            drop(step);
                            trainer.sync()?;
                            if i >= bench.warmup {
                                times.push(t0.elapsed().as_secs_f64());
                            }
                        }
                        if let Some(peer) = &peer {
                            peer.finish()?;
                        }
                        Ok(times)
                    })();
                    if result.is_err() {
                        abort.fail(rank);
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a bench peer panicked"))
            .collect()
    });
    if results.iter().any(Result::is_err) {
        crate::parallel::reset::<AB::InnerBackend>();
        return Err(root_cause(results));
    }
    results.into_iter().next().expect("at least one peer")
}
