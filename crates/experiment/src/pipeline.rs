//! Running the stages of an experiment, in order, per seed, each resumable.
//!
//! Each stage writes `stage.json` with the hash of its inputs when it starts and marks it
//! finished at the end: a finished stage is skipped, an interrupted one resumed (training resumes
//! from its checkpoints), and a stage whose inputs changed is refused. A training stage's inputs
//! are what determines its trajectory — [`hyperclone_training::trainer::trajectory_hash`], the
//! same rule `hyperclone train` applies when it resumes a run directory — plus the stage it
//! starts from; its budget is recorded beside the hash, so a longer budget with the same
//! trajectory resumes the stage instead of skipping it.
//!
//! A growth chain (`[[growth]]`, see [`crate::config`]) runs its links in order, each an expand
//! stage (`expand-K/`) and a training stage (`large-K/`) of kinds [`Stage::Expand`] and
//! [`Stage::Large`]; link K's hashes chain on link K − 1's, so a change anywhere refuses every
//! stage after it, and a rerun after an interruption skips the finished links and resumes the
//! interrupted one from its newest checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::backend::Backend;

use hyperclone_cloning::{expand_folder, ProbeSpec};
use hyperclone_model::checkpoint::sha256_hex;
use hyperclone_model::GptAutodiffBackend;
use hyperclone_training::checkpoint::complete_checkpoints;
use hyperclone_training::metrics::SymmetryLine;
use hyperclone_training::trainer::{
    train, trajectory_hash, OptimizerInit, TrainError, TrainOptions,
};
use hyperclone_training::TrainConfig;
use hyperclone_training::{CostOffset, SymmetryFn};
use serde::{Deserialize, Serialize};

use crate::config::{ClonedOptimizerState, ExperimentConfig, GrowthLink, ReplicaSeeds};
use crate::transfer::{map_optimizer_state, write_optimizer_state, TransferError};

/// A pipeline stage (its kind: the stages of a growth chain are `Expand` and `Large` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Train the small model.
    Small,
    /// Expand it (or, in a growth chain, the previous stage's model).
    Expand,
    /// Train the expanded model.
    Large,
    /// Train the random-init baseline.
    Baseline,
    /// Keep training the small model (the continued-small control).
    Control,
    /// Write the report.
    Report,
}

impl Stage {
    /// Every stage, in the order the pipeline runs them.
    pub const ALL: [Stage; 6] = [
        Stage::Small,
        Stage::Expand,
        Stage::Large,
        Stage::Baseline,
        Stage::Control,
        Stage::Report,
    ];

    /// Folder name of the stage (a growth chain's links add `-K`: `expand-2`, `large-2`).
    pub fn dir_name(self) -> &'static str {
        match self {
            Stage::Small => "small",
            Stage::Expand => "expand",
            Stage::Large => "large",
            Stage::Baseline => "baseline",
            Stage::Control => "control",
            Stage::Report => "report",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.dir_name() == s)
            .ok_or_else(|| {
                format!("unknown stage {s:?} (small, expand, large, baseline, control, report)")
            })
    }
}

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// A training stage failed.
    #[error("stage {stage}: {source}")]
    Train {
        /// The stage's folder name (`large`, `large-2`, ...).
        stage: String,
        /// The error (boxed: it is large).
        source: Box<TrainError>,
    },
    /// An expansion failed (nothing was written).
    #[error("stage {stage}: {source}")]
    Expand {
        /// The stage's folder name (`expand`, `expand-2`, ...).
        stage: String,
        /// The error (boxed: it is large).
        source: Box<hyperclone_cloning::FolderError>,
    },
    /// The previous stage's optimizer state could not be carried through the clone
    /// (`optimizer_state = "transfer"`); nothing was written.
    #[error("stage {stage}: [{key}] optimizer_state = \"transfer\": {source}")]
    Transfer {
        /// The stage's folder name.
        stage: String,
        /// The config section asking for the transfer (`large.cloned`, `growth[1]`).
        key: String,
        /// The error (boxed: it is large).
        source: Box<TransferError>,
    },
    /// The expansion settings are impossible for the small model.
    #[error("[expand]: {0}")]
    Plan(#[from] hyperclone_cloning::CloneError),
    /// A growth stage's expansion does not fit the model it grows.
    #[error("key `{key}`: {source}")]
    Chain {
        /// The config key at fault (`growth[1].expand`).
        key: String,
        /// The error.
        source: hyperclone_cloning::CloneError,
    },
    /// The control's budget cannot be formed.
    #[error("stage control: key `{key}`: {message}")]
    Control {
        /// The config key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A stage folder holds results of different inputs.
    #[error("stage {stage} in {dir} was made from different inputs (hash {found}, now {expected}): the config or an earlier stage changed. Delete {dir} (and the stages after it) or choose another experiment.out")]
    StageChanged {
        /// The stage's folder name.
        stage: String,
        /// Its folder.
        dir: PathBuf,
        /// Hash recorded.
        found: String,
        /// Hash of the current inputs.
        expected: String,
    },
    /// `--stage X` needs an earlier stage that has not finished.
    #[error("stage {stage} needs stage {needs} to have finished first (run without --stage, or --stage {needs})")]
    Missing {
        /// The stage asked for (its folder name).
        stage: String,
        /// The stage it depends on (its folder name).
        needs: String,
    },
    /// A file of the experiment folder could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The report could not be written.
    #[error("report: {0}")]
    Report(#[from] hyperclone_report::ReportError),
}

/// HyperCloning's symmetry metric (`hyperclone_cloning::symmetry`) in the form the trainer logs
/// at each evaluation of a run started from an expanded model. The training crate does not know
/// HyperCloning; the pipeline and `hyperclone train` hand it this.
pub fn symmetry_metric<B: Backend>() -> SymmetryFn<B> {
    Arc::new(|model, (width, ffn)| {
        let report = hyperclone_cloning::symmetry(model, width, ffn).ok()?;
        Some(SymmetryLine {
            mean: report.mean,
            per_layer: report.per_layer,
        })
    })
}

/// What `stage.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    stage: Stage,
    /// Hash of the stage's inputs.
    hash: String,
    /// The stage ran to its end.
    finished: bool,
    /// The step budget it ran (training stages); a longer one resumes a finished stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<u64>,
}

/// Where and how the pipeline runs.
#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    /// Run only this stage (its inputs must exist). In a growth chain, `Expand` and `Large`
    /// select every link's expand or training stage, in order, each needing the one before.
    pub only: Option<Stage>,
    /// Backend name for the run records.
    pub backend_name: String,
    /// Device name for the run records and MFU.
    pub device_name: String,
}

/// What happened to one stage of one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutcome {
    /// The stage's kind.
    pub stage: Stage,
    /// Its folder name: the kind's, or a growth chain link's (`expand-2`, `large-2`).
    pub name: String,
    /// The replica's seed (`None` for an experiment without `seeds`).
    pub seed: Option<u64>,
    /// `true` when it was already finished and skipped.
    pub skipped: bool,
}

/// What a pipeline run did.
#[derive(Debug, Clone)]
pub struct ExperimentSummary {
    /// Each stage of each seed, in order.
    pub stages: Vec<StageOutcome>,
    /// The report's numbers, when the report stage ran.
    pub report: Option<hyperclone_report::ReportSummary>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ExperimentError + '_ {
    move |source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hash_of(parts: &[&str]) -> String {
    sha256_hex(parts.join("\n").as_bytes())[..16].to_string()
}

/// The identity of a training stage: its name, what its trajectory depends on, and the stage it
/// starts from.
fn training_stage_hash(stage: Stage, config: &TrainConfig, upstream: &str) -> String {
    named_training_stage_hash(stage.dir_name(), config, upstream)
}

/// [`training_stage_hash`] of a stage named by its folder (a growth link's `large-2`).
fn named_training_stage_hash(name: &str, config: &TrainConfig, upstream: &str) -> String {
    let trajectory = config
        .model
        .as_ref()
        .map(|m| trajectory_hash(config, m))
        .unwrap_or_default();
    hash_of(&[name, &trajectory, upstream])
}

/// The identity of a growth link's expand stage: its folder name, the stage it expands, the
/// expansion, and whether the optimizer state goes through it. A fresh state keeps the hash it
/// had before transfers existed, so that finished experiments stay finished; a transfer makes
/// another expand folder (and training run).
fn expand_stage_hash(
    name: &str,
    upstream: &str,
    opts: &hyperclone_cloning::ExpandOptions,
    optimizer_state: ClonedOptimizerState,
) -> String {
    let json = serde_json::to_string(opts).expect("expand serialises");
    match optimizer_state {
        ClonedOptimizerState::Fresh => hash_of(&[name, upstream, &json]),
        ClonedOptimizerState::Transfer => {
            hash_of(&[name, upstream, &json, "optimizer_state=transfer"])
        }
    }
}

/// What one link of the growth chain runs, and the hashes of its two stages.
struct LinkPlan {
    /// The expansion (with the replica's noise seed).
    opts: hyperclone_cloning::ExpandOptions,
    /// Hash of the expand stage.
    expand_hash: String,
    /// Training config of the grown run.
    config: TrainConfig,
    /// Hash of the training stage.
    train_hash: String,
}

impl LinkPlan {
    /// The plan of `link` for a replica, after the stage whose hash is `upstream_hash` (the
    /// small run's, or the previous link's training stage's).
    fn new(
        exp: &ExperimentConfig,
        seeds: &ReplicaSeeds,
        link: &GrowthLink,
        upstream_hash: &str,
    ) -> Self {
        let opts = exp.link_expand_options(seeds, link);
        let expand_hash =
            expand_stage_hash(&link.expand_dir, upstream_hash, &opts, link.optimizer_state);
        let config = exp.link_config(seeds, link);
        let train_hash = named_training_stage_hash(&link.train_dir, &config, &expand_hash);
        LinkPlan {
            opts,
            expand_hash,
            config,
            train_hash,
        }
    }
}

/// The folder name of a stage folder (what errors call the stage).
fn stage_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn read_stage(dir: &Path) -> Option<StageRecord> {
    let text = std::fs::read_to_string(dir.join("stage.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_stage(dir: &Path, record: &StageRecord) -> Result<(), ExperimentError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join("stage.json");
    let json = serde_json::to_vec_pretty(record).expect("stage record serialises");
    hyperclone_model::checkpoint::write_file_atomically(&path, &json).map_err(|e| {
        ExperimentError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })
}

fn finished(dir: &Path) -> bool {
    read_stage(dir).is_some_and(|r| r.finished)
}

/// Decides what to do with a stage: `Ok(true)` skip (finished with the same inputs and budget),
/// `Ok(false)` run or resume, `Err` inputs changed (naming the stage by its folder).
fn check_stage(
    _stage: Stage,
    dir: &Path,
    hash: &str,
    budget: Option<u64>,
) -> Result<bool, ExperimentError> {
    match read_stage(dir) {
        Some(r) if r.hash != hash => Err(ExperimentError::StageChanged {
            stage: stage_name(dir),
            dir: dir.to_path_buf(),
            found: r.hash,
            expected: hash.to_string(),
        }),
        Some(r) => Ok(r.finished && r.budget == budget),
        None => Ok(false),
    }
}

/// Runs the experiment's stages in order (or the one in `options.only`), then the report.
pub fn run_experiment<AB: GptAutodiffBackend>(
    exp: &ExperimentConfig,
    options: &ExperimentOptions,
    device: &AB::Device,
) -> Result<ExperimentSummary, ExperimentError> {
    let out = &exp.experiment.out;
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    let resolved = out.join("experiment.toml");
    std::fs::write(&resolved, exp.to_toml()).map_err(io_error(&resolved))?;
    let replicas: Vec<(Option<u64>, PathBuf)> = if exp.experiment.seeds.is_empty() {
        vec![(None, out.clone())]
    } else {
        exp.experiment
            .seeds
            .iter()
            .map(|&s| (Some(s), out.join(format!("seed-{s}"))))
            .collect()
    };
    let mut outcomes = Vec::new();
    for (replica, root) in &replicas {
        if let Some(s) = replica {
            tracing::info!("=== seed {s}");
        }
        let pipeline = SeedPipeline {
            exp,
            seeds: exp.replica_seeds(*replica),
            root,
            options,
        };
        outcomes.extend(pipeline.run::<AB>(device)?);
    }
    let report = if options.only.is_none() || options.only == Some(Stage::Report) {
        let summary = hyperclone_report::write_report(out)?;
        tracing::info!("report: {}", summary.report_md.display());
        outcomes.push(StageOutcome {
            stage: Stage::Report,
            name: Stage::Report.dir_name().to_string(),
            seed: None,
            skipped: false,
        });
        Some(summary)
    } else {
        None
    };
    Ok(ExperimentSummary {
        stages: outcomes,
        report,
    })
}

/// The stages of one replica.
struct SeedPipeline<'a> {
    exp: &'a ExperimentConfig,
    seeds: ReplicaSeeds,
    root: &'a Path,
    options: &'a ExperimentOptions,
}

/// How a training stage starts from an earlier stage's folder.
struct InitFrom {
    /// The model folder the weights (and a transferred optimizer state) come from.
    dir: PathBuf,
    /// Where the optimizer state comes from.
    optimizer_state: OptimizerInit,
    /// The stage that must have finished first (its folder name).
    needs: String,
}

/// What a training stage paid for before it started, by folder: training runs whose metrics
/// count, and expansions whose `expand.json` hours count.
#[derive(Debug, Clone, Default)]
struct Before {
    runs: Vec<String>,
    expansions: Vec<String>,
}

impl SeedPipeline<'_> {
    fn wants(&self, stage: Stage) -> bool {
        self.options.only.is_none() || self.options.only == Some(stage)
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn outcome(&self, stage: Stage, name: &str, skipped: bool) -> StageOutcome {
        StageOutcome {
            stage,
            name: name.to_string(),
            seed: self.seeds.replica,
            skipped,
        }
    }

    fn run<AB: GptAutodiffBackend>(
        &self,
        device: &AB::Device,
    ) -> Result<Vec<StageOutcome>, ExperimentError> {
        let exp = self.exp;
        let mut outcomes = Vec::new();
        let small_name = Stage::Small.dir_name();

        // Small.
        let small_cfg = exp.small_config(&self.seeds);
        let small_hash = training_stage_hash(Stage::Small, &small_cfg, "random-init");
        if let Some(o) = self.train_stage::<AB>(
            Stage::Small,
            small_name,
            &small_cfg,
            &small_hash,
            None,
            Before::default(),
            device,
        )? {
            outcomes.push(o);
        }

        // The growth chain: each link expands the model its predecessor trained (the small one
        // first) and trains it. The single [expand] + [large.cloned] form is a chain of one,
        // in `expand/` and `large/`.
        let links = exp.chain().map_err(|(key, source)| {
            if exp.growth.is_empty() {
                ExperimentError::Plan(source)
            } else {
                ExperimentError::Chain { key, source }
            }
        })?;
        let (mut upstream_name, mut upstream_hash) = (small_name.to_string(), small_hash.clone());
        let mut before = Before {
            runs: vec![small_name.to_string()],
            expansions: Vec::new(),
        };
        for link in &links {
            let LinkPlan {
                opts,
                expand_hash,
                config: cfg,
                train_hash: hash,
            } = LinkPlan::new(exp, &self.seeds, link, &upstream_hash);
            let expand_dir = self.dir(&link.expand_dir);
            let expand_done = check_stage(Stage::Expand, &expand_dir, &expand_hash, None)?;
            if self.wants(Stage::Expand) {
                if expand_done {
                    tracing::info!("stage {}: finished earlier, skipped", link.expand_dir);
                } else {
                    self.needs(&link.expand_dir, &upstream_name)?;
                    self.expand::<AB>(link, &opts, &upstream_name, &expand_hash, device)?;
                }
                outcomes.push(self.outcome(Stage::Expand, &link.expand_dir, expand_done));
            }
            before.expansions.push(link.expand_dir.clone());

            // The grown model from the expanded weights, with the link's own optimiser,
            // schedule and budget (the single form: the baseline's data order, batch, budget
            // and seed, and the cloned arm's optimiser and schedule).
            let init = InitFrom {
                dir: expand_dir,
                optimizer_state: match link.optimizer_state {
                    ClonedOptimizerState::Fresh => OptimizerInit::Fresh,
                    ClonedOptimizerState::Transfer => OptimizerInit::Transfer,
                },
                needs: link.expand_dir.clone(),
            };
            if let Some(o) = self.train_stage::<AB>(
                Stage::Large,
                &link.train_dir,
                &cfg,
                &hash,
                Some(init),
                before.clone(),
                device,
            )? {
                outcomes.push(o);
            }
            before.runs.push(link.train_dir.clone());
            (upstream_name, upstream_hash) = (link.train_dir.clone(), hash);
        }

        // The random-init baseline, at the final shape.
        if exp.experiment.baseline {
            let large_model = exp.large_model()?;
            let cfg = exp.baseline_config(&self.seeds, large_model);
            let hash = training_stage_hash(Stage::Baseline, &cfg, "random-init");
            if let Some(o) = self.train_stage::<AB>(
                Stage::Baseline,
                Stage::Baseline.dir_name(),
                &cfg,
                &hash,
                None,
                Before::default(),
                device,
            )? {
                outcomes.push(o);
            }
        }

        // The small model trained on instead of grown.
        if exp.control_enabled() {
            let cfg = exp
                .control_config(&self.seeds)
                .map_err(|(key, message)| ExperimentError::Control { key, message })?;
            let hash = training_stage_hash(Stage::Control, &cfg, &small_hash);
            let init = InitFrom {
                dir: self.dir(small_name).join("final"),
                optimizer_state: OptimizerInit::Fresh,
                needs: small_name.to_string(),
            };
            if let Some(o) = self.train_stage::<AB>(
                Stage::Control,
                Stage::Control.dir_name(),
                &cfg,
                &hash,
                Some(init),
                Before {
                    runs: vec![small_name.to_string()],
                    expansions: Vec::new(),
                },
                device,
            )? {
                outcomes.push(o);
            }
        }
        Ok(outcomes)
    }

    /// What the route paid before a stage started, for the total-cost axes of its TensorBoard
    /// events: the small run (and every earlier link of the growth chain with its expansion)
    /// before a grown run, the small run before the control, nothing before the small run and
    /// the baseline.
    fn cost_before(&self, stage: &str, before: &Before) -> CostOffset {
        let mut offset = CostOffset::default();
        for run in &before.runs {
            let path = self.dir(run).join("metrics.jsonl");
            match hyperclone_runfiles::read_metrics(&path) {
                Ok(metrics) => {
                    offset.flops += metrics.total_flops().unwrap_or(0.0);
                    offset.device_hours += metrics.total_device_hours().unwrap_or(0.0);
                }
                Err(_) => tracing::warn!(
                    "{}: unreadable; the total-cost axes of stage {stage} leave it out",
                    path.display()
                ),
            }
        }
        for expansion in &before.expansions {
            offset.device_hours +=
                std::fs::read_to_string(self.dir(expansion).join(hyperclone_runfiles::EXPAND_FILE))
                    .ok()
                    .and_then(|t| {
                        serde_json::from_str::<hyperclone_runfiles::ExpandRecord>(&t).ok()
                    })
                    .and_then(|r| r.cost_hours())
                    .unwrap_or(0.0);
        }
        offset
    }

    /// Errors unless the stage in folder `upstream` has finished.
    fn needs(&self, stage: &str, upstream: &str) -> Result<(), ExperimentError> {
        if finished(&self.dir(upstream)) {
            Ok(())
        } else {
            Err(ExperimentError::Missing {
                stage: stage.to_string(),
                needs: upstream.to_string(),
            })
        }
    }

    /// Trains one stage (in folder `name`) unless it is finished (or not wanted); `init_from`
    /// is a model folder made by an earlier stage, with where the run's optimizer state comes
    /// from; `before` what the route paid before it (for the total-cost axes).
    #[allow(clippy::too_many_arguments)]
    fn train_stage<AB: GptAutodiffBackend>(
        &self,
        stage: Stage,
        name: &str,
        config: &TrainConfig,
        hash: &str,
        init_from: Option<InitFrom>,
        before: Before,
        device: &AB::Device,
    ) -> Result<Option<StageOutcome>, ExperimentError> {
        let dir = self.dir(name);
        let budget = config.total_steps();
        let done = check_stage(stage, &dir, hash, budget)?;
        if !self.wants(stage) {
            return Ok(None);
        }
        if done {
            tracing::info!("stage {name}: finished earlier, skipped");
            return Ok(Some(self.outcome(stage, name, true)));
        }
        let (init_from, optimizer_state) = match init_from {
            Some(init) => {
                self.needs(name, &init.needs)?;
                (Some(init.dir), init.optimizer_state)
            }
            None => (None, OptimizerInit::Fresh),
        };
        let model = config.model.as_ref().map_or(0, |m| m.param_count());
        tracing::info!(
            "stage {name}: training {} ({model} parameters){}",
            match stage {
                Stage::Small | Stage::Control => "the small model",
                _ => "the wide model",
            },
            match stage {
                Stage::Large => " from the expanded weights",
                Stage::Control => " on from its final weights (continued-small control)",
                _ => " from random init",
            }
        );
        let record = StageRecord {
            stage,
            hash: hash.to_string(),
            finished: false,
            budget,
        };
        write_stage(&dir, &record)?;
        let options = TrainOptions {
            run_dir: dir.clone(),
            init_from,
            resume: true,
            stop_after: None,
            backend_name: self.options.backend_name.clone(),
            device_name: self.options.device_name.clone(),
            symmetry: Some(symmetry_metric()),
            optimizer_state,
            cost_offset: self.cost_before(name, &before),
        };
        train::<AB>(config, &options, device).map_err(|source| ExperimentError::Train {
            stage: name.to_string(),
            source: Box::new(source),
        })?;
        write_stage(
            &dir,
            &StageRecord {
                finished: true,
                ..record
            },
        )?;
        Ok(Some(self.outcome(stage, name, false)))
    }

    /// Expands the model that the stage in folder `upstream` trained into `link`'s expand
    /// folder.
    fn expand<AB: GptAutodiffBackend>(
        &self,
        link: &GrowthLink,
        opts: &hyperclone_cloning::ExpandOptions,
        upstream: &str,
        hash: &str,
        device: &AB::Device,
    ) -> Result<(), ExperimentError> {
        let name = link.expand_dir.as_str();
        let depth = if opts.grows_depth() {
            format!(", ×{} depth ({})", opts.depth_factor, opts.depth_mode)
        } else {
            String::new()
        };
        tracing::info!(
            "stage {name}: HyperCloning {upstream} ×{} width, ×{} FFN ({}){depth}",
            opts.width_factor,
            opts.ffn_factor,
            opts.variant
        );
        let transfer_error = |source: TransferError| ExperimentError::Transfer {
            stage: name.to_string(),
            key: link.key.clone(),
            source: Box::new(source),
        };
        let probe = ProbeSpec {
            tokens: None,
            batch: 4,
            seq: 64,
            tolerance: hyperclone_cloning::DEFAULT_TOLERANCE_F32,
            skip: false,
        };
        let dir = self.dir(name);
        // A transfer needs the optimizer state, which only the step folders hold: expand the
        // upstream run's newest checkpoint, its last step, whose weights are those of final/
        // (the last step is always checkpointed). The state is mapped first, so that a
        // checkpoint without one fails before anything is written.
        let upstream_dir = self.dir(upstream);
        let (source, mapped) = match link.optimizer_state {
            ClonedOptimizerState::Fresh => (upstream_dir.join("final"), None),
            ClonedOptimizerState::Transfer => {
                let newest = complete_checkpoints(&upstream_dir).into_iter().next();
                let Some((step, checkpoint)) = newest else {
                    return Err(transfer_error(TransferError::NotACheckpoint {
                        dir: upstream_dir,
                        reason: format!("the {upstream} run has no complete checkpoint (step-NNNNNNNN/) to take the optimizer state from"),
                    }));
                };
                tracing::info!(
                    "stage {name}: AdamW's state of {} (step {step}) goes through the clone too",
                    checkpoint.display()
                );
                let mapped = map_optimizer_state::<AB::InnerBackend>(&checkpoint, opts, device)
                    .map_err(transfer_error)?;
                (checkpoint, Some(mapped))
            }
        };
        let result = expand_folder::<AB::InnerBackend>(
            &source,
            &dir,
            opts,
            &probe,
            &self.options.device_name,
            device,
        )
        .map_err(|source| ExperimentError::Expand {
            stage: name.to_string(),
            source: Box::new(source),
        })?;
        if let Some(mapped) = &mapped {
            let t = write_optimizer_state(&dir, mapped).map_err(transfer_error)?;
            tracing::info!(
                "optimizer state: moments of {} parameters, bias correction continues from update {}: {}",
                t.parameters,
                t.updates,
                t.path.display()
            );
        }
        if let Some(v) = result.verification {
            let what = if opts.is_function_preserving() {
                "logits check"
            } else {
                "function changed (stack: measured, not checked)"
            };
            tracing::info!(
                "expanded {} → {} parameters; {what}: max |Δ| {:.2e}, relative {:.2e}, KL {:.2e}",
                result.record.source_params.unwrap_or_default(),
                result.record.target_params.unwrap_or_default(),
                v.max_abs_logit_diff,
                v.rel_err,
                v.kl
            );
        }
        write_stage(
            &dir,
            &StageRecord {
                stage: Stage::Expand,
                hash: hash.to_string(),
                finished: true,
                budget: None,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_names_round_trip() {
        for s in Stage::ALL {
            assert_eq!(s.dir_name().parse::<Stage>().unwrap(), s);
        }
        let e = "medium".parse::<Stage>().unwrap_err();
        assert!(e.contains("control"), "{e}");
    }

    #[test]
    fn a_finished_stage_is_skipped_only_with_the_same_inputs_and_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("small");
        assert!(!check_stage(Stage::Small, &dir, "h1", Some(10)).unwrap());
        let record = StageRecord {
            stage: Stage::Small,
            hash: "h1".into(),
            finished: false,
            budget: Some(10),
        };
        write_stage(&dir, &record).unwrap();
        // Interrupted: resume.
        assert!(!check_stage(Stage::Small, &dir, "h1", Some(10)).unwrap());
        write_stage(
            &dir,
            &StageRecord {
                finished: true,
                ..record
            },
        )
        .unwrap();
        assert!(check_stage(Stage::Small, &dir, "h1", Some(10)).unwrap());
        // A longer budget on the same trajectory resumes the finished stage.
        assert!(!check_stage(Stage::Small, &dir, "h1", Some(20)).unwrap());
        // Other inputs: refused, naming the folder.
        let e = check_stage(Stage::Small, &dir, "h2", Some(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different inputs") && e.contains("small"), "{e}");
    }

    #[test]
    fn the_stage_rule_is_the_trainers_rule() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/tiny.toml");
        let exp = ExperimentConfig::load(&path, &[]).unwrap();
        let seeds = exp.replica_seeds(None);
        let base = exp.small_config(&seeds);
        let hash = |c: &TrainConfig| training_stage_hash(Stage::Small, c, "random-init");
        // What `train --resume` accepts (logging, eval and checkpoint cadence), `run` accepts.
        let mut cadence = base.clone();
        cadence.run.eval_every += 1;
        cadence.run.log_every += 1;
        cadence.run.checkpoint_every += 1;
        cadence.run.keep_last += 1;
        assert_eq!(hash(&cadence), hash(&base));
        // What changes the trajectory, both refuse.
        let mut lr = base.clone();
        lr.optimizer.lr *= 2.0;
        assert_ne!(hash(&lr), hash(&base));
        let model = base.model.clone().unwrap();
        assert_ne!(trajectory_hash(&lr, &model), trajectory_hash(&base, &model));
        // The same config from another stage's start is another stage.
        assert_ne!(training_stage_hash(Stage::Small, &base, "x"), hash(&base));
    }

    /// Every stage hash of one replica, by folder, as `run` forms them.
    fn stage_hashes(exp: &ExperimentConfig, replica: Option<u64>) -> Vec<(String, String)> {
        let seeds = exp.replica_seeds(replica);
        let small = training_stage_hash(Stage::Small, &exp.small_config(&seeds), "random-init");
        let mut out = vec![("small".to_string(), small.clone())];
        let mut upstream = small.clone();
        for link in exp.chain().unwrap() {
            let plan = LinkPlan::new(exp, &seeds, &link, &upstream);
            out.push((link.expand_dir.clone(), plan.expand_hash));
            out.push((link.train_dir.clone(), plan.train_hash.clone()));
            upstream = plan.train_hash;
        }
        let baseline = exp.baseline_config(&seeds, exp.large_model().unwrap());
        out.push((
            "baseline".into(),
            training_stage_hash(Stage::Baseline, &baseline, "random-init"),
        ));
        if exp.control_enabled() {
            let control = exp.control_config(&seeds).unwrap();
            out.push((
                "control".into(),
                training_stage_hash(Stage::Control, &control, &small),
            ));
        }
        out
    }

    fn growth_benchmark() -> (PathBuf, String) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/growth-benchmark.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    /// The growth chain's generalisation keeps every stage of the committed growth benchmark
    /// (seed 1, `runs/growth-benchmark/seed-1/*/stage.json`) finished: the hashes of all five
    /// stages, not only the small run's.
    #[test]
    fn every_growth_benchmark_stage_keeps_its_hash() {
        let (path, _) = growth_benchmark();
        let exp = ExperimentConfig::load(&path, &[]).unwrap();
        let hashes = stage_hashes(&exp, Some(1));
        let expected = [
            ("small", "d6e6aa6787555c26"),
            ("expand", "ad2bd52b61efe00c"),
            ("large", "185c0b05b301971a"),
            ("baseline", "ec45d30ddba302c1"),
            ("control", "20cd5e030b40bbae"),
        ];
        let got: Vec<(&str, &str)> = hashes
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    /// The growth benchmark written as a chain of one `[[growth]]` stage runs the same stages:
    /// same folders, same hashes (so it would find the single form's finished stages).
    #[test]
    fn a_one_stage_chain_runs_the_single_forms_stages() {
        let (path, text) = growth_benchmark();
        let start = text.find("[expand]").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        let expand = &text[start + "[expand]".len()..end];
        let cloned = "[large.cloned.optimizer]\nlr = 1.2e-2\n";
        assert!(text.contains(cloned));
        let chain_text = format!(
            "{}{}\n[[growth]]\n[growth.expand]{expand}\n[growth.optimizer]\nlr = 1.2e-2\n",
            &text[..start],
            &text[end..].replace(cloned, "")
        );
        let single = ExperimentConfig::load(&path, &[]).unwrap();
        let chain = ExperimentConfig::from_toml_str(&chain_text, &path, &[]).unwrap();
        assert_eq!(chain.growth.len(), 1);
        for replica in [Some(1), Some(2), None] {
            assert_eq!(
                stage_hashes(&chain, replica),
                stage_hashes(&single, replica)
            );
        }
        // A second stage makes other folders, whose hashes chain on the stage before.
        let two = ExperimentConfig::from_toml_str(
            &format!("{chain_text}\n[[growth]]\n[growth.expand]\nwidth_factor = 2\n"),
            &path,
            &[],
        )
        .unwrap();
        let hashes = stage_hashes(&two, Some(1));
        let names: Vec<&str> = hashes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["small", "expand-1", "large-1", "expand-2", "large-2", "baseline", "control"]
        );
        assert_eq!(hashes[0], stage_hashes(&single, Some(1))[0]);
        let mut changed = two.clone();
        changed.growth[0].optimizer.lr = 1e-3;
        let after = stage_hashes(&changed, Some(1));
        assert_eq!(
            after[1], hashes[1],
            "expand-1 does not depend on stage 1's training"
        );
        for i in 2..5 {
            assert_ne!(after[i], hashes[i], "{}", hashes[i].0);
        }
    }

    /// The committed growth benchmark's finished stages stay finished across upgrades: a new
    /// config key with a default (as `data.parquet_column` was) must not change the hash of a
    /// config that does not use it, or `run` refuses every existing experiment folder as "made
    /// from different inputs". The value is seed 1's small stage in
    /// `runs/growth-benchmark/seed-1/small/stage.json`, the run behind
    /// `benches/results/growth-benchmark/`. Change it only with a change that really alters the
    /// trajectory (or an edit of that config), and say so.
    #[test]
    fn the_growth_benchmark_stage_hash_is_stable() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/growth-benchmark.toml");
        let exp = ExperimentConfig::load(&path, &[]).unwrap();
        let small = exp.small_config(&exp.replica_seeds(Some(1)));
        assert_eq!(
            training_stage_hash(Stage::Small, &small, "random-init"),
            "d6e6aa6787555c26"
        );
    }
}
