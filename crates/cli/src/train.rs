//! `hyperclone train` and `hyperclone generate`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hyperclone_model::checkpoint::load_model;
use hyperclone_model::GptAutodiffBackend;
use hyperclone_model::{generate, SampleOptions};
use hyperclone_training::checkpoint::complete_checkpoints;
use hyperclone_training::trainer::OptimizerInit;
use hyperclone_training::{
    train_data_parallel, AllReduceChoice, BackendKind, Launch, Precision, TrainConfig,
    TrainOptions, TrainSummary,
};

use crate::backend::{run_job, Env, Job};

/// Resume policy of `train`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeMode {
    /// Continue the newest complete checkpoint in the run directory, else start fresh.
    Auto,
    /// Refuse to run if the run directory already holds a checkpoint.
    Never,
}

/// Train a model from a TOML config.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Experiment config (TOML with [model], [data], [optimizer], [schedule], [run]).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Override a config value, type-checked: `--set optimizer.lr=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Run directory (default: runs/<config file name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Start from these weights (a model folder, e.g. the output of `hyperclone expand`) when
    /// the run directory has no checkpoint yet.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// `auto`: resume the newest complete checkpoint when there is one.
    #[arg(long, value_enum, default_value_t = ResumeMode::Auto)]
    pub resume: ResumeMode,
    /// Stop after this step as if interrupted (for splitting runs and testing resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// AdamW's state of a run started from --init-from: `auto` continues the state that
    /// `hyperclone expand --optimizer-state transfer` wrote into the folder when there is one,
    /// `transfer` requires it, `fresh` ignores it.
    #[arg(long, value_enum, default_value_t = OptimizerStateArg::Auto)]
    pub optimizer_state: OptimizerStateArg,
    #[command(flatten)]
    pub parallel: ParallelArgs,
}

/// Data-parallel training: peers on this machine and, across machines, the torchrun-like
/// launch of one process per node.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ParallelArgs {
    /// Data-parallel peers on this machine, one per device (sets run.devices; CPU peers share
    /// the one CPU device). run.batch_size is the global micro-batch: each peer computes
    /// batch_size / (devices × nodes) rows of it.
    #[arg(long, value_name = "N")]
    pub devices: Option<usize>,
    /// Machines (processes) in the run, each started with the same config and --devices.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nodes: u32,
    /// This process's index among the nodes (0 starts the orchestrator and writes the run).
    #[arg(long, default_value_t = 0, value_name = "I")]
    pub node_rank: u32,
    /// HOST:PORT of node 0, where it starts burn-collective's orchestrator (with --nodes > 1).
    #[arg(long, value_name = "HOST:PORT")]
    pub coordinator: Option<String>,
    /// The address at which the other nodes reach this node.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub node_host: String,
    /// This node's tensor-service port (default: the coordinator's port + 1 + node rank).
    #[arg(long, value_name = "PORT")]
    pub node_port: Option<u16>,
    /// Seconds a peer waits for the others at one collective operation before it stops with
    /// an error (a dead or hung peer); must cover rank 0's evaluations and checkpoints.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    pub peer_timeout: f64,
    /// What sums the gradients of the peers on this machine: `auto` takes NCCL in a build with
    /// the `nccl` feature on CUDA with one node, else burn-collective; `collective` always
    /// burn-collective.
    #[arg(long, value_enum, default_value_t = AllReduceArg::Auto)]
    pub all_reduce: AllReduceArg,
}

/// `--all-reduce` (see [`AllReduceChoice`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AllReduceArg {
    /// NCCL where this binary has it (CUDA, one node), else burn-collective.
    #[default]
    Auto,
    /// burn-collective always.
    Collective,
}

impl ParallelArgs {
    /// The `--set run.devices=N` that `--devices N` stands for, if given.
    pub fn devices_override(&self) -> Option<String> {
        self.devices.map(|n| format!("run.devices={n}"))
    }

    /// The launch these arguments describe.
    pub fn launch(&self) -> Result<Launch> {
        if !(self.peer_timeout.is_finite() && self.peer_timeout > 0.0) {
            bail!(
                "--peer-timeout {}: must be a positive number of seconds",
                self.peer_timeout
            );
        }
        Ok(Launch {
            nodes: self.nodes,
            node_rank: self.node_rank,
            coordinator: self.coordinator.clone(),
            node_host: self.node_host.clone(),
            data_port: self.node_port,
            peer_timeout: std::time::Duration::from_secs_f64(self.peer_timeout),
            fail_peer: None,
            all_reduce: match self.all_reduce {
                AllReduceArg::Auto => AllReduceChoice::Auto,
                AllReduceArg::Collective => AllReduceChoice::Collective,
            },
        })
    }
}

/// `--optimizer-state` of `train` (see [`OptimizerInit`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerStateArg {
    /// The transferred state when the --init-from folder holds one.
    Auto,
    /// The transferred state; an error without one.
    Transfer,
    /// A fresh optimizer.
    Fresh,
}

impl From<OptimizerStateArg> for OptimizerInit {
    fn from(a: OptimizerStateArg) -> Self {
        match a {
            OptimizerStateArg::Auto => OptimizerInit::Auto,
            OptimizerStateArg::Transfer => OptimizerInit::Transfer,
            OptimizerStateArg::Fresh => OptimizerInit::Fresh,
        }
    }
}

/// Where and how `train` runs (the backend-independent part of its [`TrainOptions`]).
#[derive(Debug, Clone)]
pub struct TrainPlan {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Initial weights when the run directory has no checkpoint.
    pub init_from: Option<PathBuf>,
    /// Resume from the newest complete checkpoint (else an existing one is an error).
    pub resume: bool,
    /// Stop after this step as if interrupted.
    pub stop_after: Option<u64>,
    /// Where the optimizer state of a run from `init_from` comes from.
    pub optimizer_state: OptimizerInit,
    /// This process's part in a data-parallel run across nodes (default: alone).
    pub launch: Launch,
}

struct TrainJob {
    config: TrainConfig,
    plan: TrainPlan,
}

impl Job for TrainJob {
    type Output = TrainSummary;
    fn run<AB: GptAutodiffBackend>(self, device: &AB::Device, env: Env) -> Result<TrainSummary> {
        let TrainPlan {
            run_dir,
            init_from,
            resume,
            stop_after,
            optimizer_state,
            launch,
        } = self.plan;
        let options = TrainOptions::<AB::InnerBackend> {
            run_dir,
            init_from,
            resume,
            stop_after,
            backend_name: env.backend_name.to_string(),
            device_name: env.device_name,
            symmetry: Some(hyperclone_experiment::symmetry_metric()),
            optimizer_state,
            cost_offset: Default::default(),
        };
        tracing::info!(
            "training on {} ({}) into {}",
            options.backend_name,
            options.device_name,
            options.run_dir.display()
        );
        Ok(train_data_parallel::<AB>(
            &self.config,
            &options,
            &launch,
            device,
        )?)
    }
}

/// Runs a training job described by a config and a plan.
pub fn run_training(config: TrainConfig, plan: TrainPlan) -> Result<TrainSummary> {
    let (backend, precision) = (config.run.backend, config.run.precision);
    run_job(backend, precision, TrainJob { config, plan })
}

/// `hyperclone train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let mut overrides = args.overrides.clone();
    overrides.extend(args.parallel.devices_override());
    let config = TrainConfig::load(&args.config, &overrides)?;
    let run_dir = args.run_dir.clone().unwrap_or_else(|| {
        let stem = args
            .config
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "run".into());
        PathBuf::from("runs").join(stem)
    });
    let plan = TrainPlan {
        run_dir,
        init_from: args.init_from,
        resume: args.resume == ResumeMode::Auto,
        stop_after: args.stop_after,
        optimizer_state: args.optimizer_state.into(),
        launch: args.parallel.launch()?,
    };
    let summary = run_training(config, plan.clone())?;
    println!(
        "step {} | tokens {} | final val loss {} | wall {:.1} s | {:.5} device-hours | run dir {}",
        summary.step,
        summary.tokens,
        summary
            .final_val_loss
            .map_or("-".to_string(), |v| format!("{v:.4}")),
        summary.wall_s,
        summary.device_hours,
        plan.run_dir.display()
    );
    Ok(())
}

/// Sample text from a trained model.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A run directory (uses `final/`, else the newest complete checkpoint) or a model folder.
    #[arg(long)]
    pub run: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Tokens to sample.
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// tokenizer.json to use (default: the one of the run's prepared data).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Backend.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: CliBackend,
}

/// Backend choice on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CliBackend {
    /// cuda, then wgpu, then flex: the best compiled in.
    Auto,
    /// CPU.
    Flex,
    /// NVIDIA GPU.
    Cuda,
    /// wgpu.
    Wgpu,
}

impl From<CliBackend> for BackendKind {
    fn from(b: CliBackend) -> Self {
        match b {
            CliBackend::Auto => BackendKind::Auto,
            CliBackend::Flex => BackendKind::Flex,
            CliBackend::Cuda => BackendKind::Cuda,
            CliBackend::Wgpu => BackendKind::Wgpu,
        }
    }
}

/// The model folder inside a run directory: `final/`, else the newest complete checkpoint,
/// else the folder itself.
pub fn model_dir_of(run: &Path) -> PathBuf {
    if run.join("final").join("model.json").exists() {
        return run.join("final");
    }
    if let Some((_, dir)) = complete_checkpoints(run).into_iter().next() {
        return dir;
    }
    run.to_path_buf()
}

/// The tokenizer of a run: `<data.out>/tokenizer.json` of its `config.toml`.
fn tokenizer_of(run: &Path) -> Result<PathBuf> {
    let config_path = run.join("config.toml");
    let config = TrainConfig::load(&config_path, &[]).with_context(|| {
        format!(
            "finding the tokenizer of {} (or pass --tokenizer)",
            run.display()
        )
    })?;
    Ok(config.data.out.join("tokenizer.json"))
}

struct GenerateJob {
    model_dir: PathBuf,
    prompt_ids: Vec<u32>,
    options: SampleOptions,
}

impl Job for GenerateJob {
    type Output = Vec<u32>;
    fn run<AB: GptAutodiffBackend>(self, device: &AB::Device, _env: Env) -> Result<Vec<u32>> {
        let model = load_model::<AB::InnerBackend>(&self.model_dir, device)?;
        Ok(generate(&model, &self.prompt_ids, &self.options))
    }
}

/// `hyperclone generate`.
pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let model_dir = model_dir_of(&args.run);
    let tokenizer_path = match &args.tokenizer {
        Some(t) => t.clone(),
        None => tokenizer_of(&args.run)?,
    };
    let tokenizer = hyperclone_data::Tokenizer::from_file(&tokenizer_path)?;
    let prompt_ids = tokenizer.encode(&args.prompt)?;
    if prompt_ids.is_empty() && !args.prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let options = SampleOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: (args.top_k > 0).then_some(args.top_k),
        seed: args.seed,
    };
    let prompt_len = prompt_ids.len();
    let ids = run_job(
        args.backend.into(),
        Precision::F32,
        GenerateJob {
            model_dir,
            prompt_ids,
            options,
        },
    )?;
    let start = if prompt_len == 0 { 1 } else { prompt_len };
    let text = tokenizer.decode(&ids[start.min(ids.len())..])?;
    println!("{}{}", args.prompt, text);
    Ok(())
}
