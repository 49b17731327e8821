//! Running the stages of an experiment, in order, per seed, each resumable.
//!
//! Each stage writes `stage.json` with the hash of its inputs when it starts and marks it
//! finished at the end: a finished stage is skipped, an interrupted one resumed (training resumes
//! from its checkpoints), and a stage whose inputs changed is refused. A training stage's inputs
//! are what determines its trajectory — [`hyperclone_training::trainer::trajectory_hash`], the
//! same rule `hyperclone train` applies when it resumes a run directory — plus the stage it
//! starts from; its budget is recorded beside the hash, so a longer budget with the same
//! trajectory resumes the stage instead of skipping it.

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

use crate::config::{ClonedOptimizerState, ExperimentConfig, ReplicaSeeds};
use crate::transfer::{map_optimizer_state, write_optimizer_state, TransferError};

/// A pipeline stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Train the small model.
    Small,
    /// Expand it.
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

    /// Folder name of the stage.
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
        /// The stage.
        stage: &'static str,
        /// The error.
        source: TrainError,
    },
    /// The expansion failed (nothing was written).
    #[error("stage expand: {0}")]
    Expand(#[from] hyperclone_cloning::FolderError),
    /// The small run's optimizer state could not be carried through the clone
    /// (`[large.cloned] optimizer_state = "transfer"`); nothing was written.
    #[error("stage expand: [large.cloned] optimizer_state = \"transfer\": {0}")]
    Transfer(#[from] TransferError),
    /// The expansion settings are impossible for the small model.
    #[error("[expand]: {0}")]
    Plan(#[from] hyperclone_cloning::CloneError),
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
        /// The stage.
        stage: &'static str,
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
        /// The stage asked for.
        stage: &'static str,
        /// The stage it depends on.
        needs: &'static str,
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
    /// Run only this stage (its inputs must exist).
    pub only: Option<Stage>,
    /// Backend name for the run records.
    pub backend_name: String,
    /// Device name for the run records and MFU.
    pub device_name: String,
}

/// What happened to one stage of one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutcome {
    /// The stage.
    pub stage: Stage,
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
    let trajectory = config
        .model
        .as_ref()
        .map(|m| trajectory_hash(config, m))
        .unwrap_or_default();
    hash_of(&[stage.dir_name(), &trajectory, upstream])
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
/// `Ok(false)` run or resume, `Err` inputs changed.
fn check_stage(
    stage: Stage,
    dir: &Path,
    hash: &str,
    budget: Option<u64>,
) -> Result<bool, ExperimentError> {
    match read_stage(dir) {
        Some(r) if r.hash != hash => Err(ExperimentError::StageChanged {
            stage: stage.dir_name(),
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

impl SeedPipeline<'_> {
    fn wants(&self, stage: Stage) -> bool {
        self.options.only.is_none() || self.options.only == Some(stage)
    }

    fn dir(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.dir_name())
    }

    fn outcome(&self, stage: Stage, skipped: bool) -> StageOutcome {
        StageOutcome {
            stage,
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

        // Small.
        let small_cfg = exp.small_config(&self.seeds);
        let small_hash = training_stage_hash(Stage::Small, &small_cfg, "random-init");
        if let Some(o) =
            self.train_stage::<AB>(Stage::Small, &small_cfg, &small_hash, None, device)?
        {
            outcomes.push(o);
        }

        // Expand.
        let expand_opts = exp.expand_options(&self.seeds);
        let expand_json = serde_json::to_string(&expand_opts).expect("expand serialises");
        let optimizer_state = exp.cloned_optimizer_state();
        // A fresh state keeps the hash it had before transfers existed, so that finished
        // experiments stay finished; a transfer makes another expand folder (and large run).
        let expand_hash = match optimizer_state {
            ClonedOptimizerState::Fresh => hash_of(&["expand", &small_hash, &expand_json]),
            ClonedOptimizerState::Transfer => hash_of(&[
                "expand",
                &small_hash,
                &expand_json,
                "optimizer_state=transfer",
            ]),
        };
        let expand_dir = self.dir(Stage::Expand);
        let expand_done = check_stage(Stage::Expand, &expand_dir, &expand_hash, None)?;
        if self.wants(Stage::Expand) {
            if expand_done {
                tracing::info!("stage expand: finished earlier, skipped");
            } else {
                self.needs(Stage::Expand, Stage::Small)?;
                self.expand::<AB>(&expand_opts, optimizer_state, &expand_hash, device)?;
            }
            outcomes.push(self.outcome(Stage::Expand, expand_done));
        }

        // The wide model from the expanded weights and from random init: same data order, batch,
        // budget and seed; the cloned arm may have its own optimiser and schedule.
        let large_model = exp.large_model()?;
        let cloned_cfg = exp.cloned_config(&self.seeds, large_model.clone());
        let hash = training_stage_hash(Stage::Large, &cloned_cfg, &expand_hash);
        let large_init = match optimizer_state {
            ClonedOptimizerState::Fresh => OptimizerInit::Fresh,
            ClonedOptimizerState::Transfer => OptimizerInit::Transfer,
        };
        if let Some(o) = self.train_stage::<AB>(
            Stage::Large,
            &cloned_cfg,
            &hash,
            Some((expand_dir, large_init)),
            device,
        )? {
            outcomes.push(o);
        }
        if exp.experiment.baseline {
            let cfg = exp.baseline_config(&self.seeds, large_model);
            let hash = training_stage_hash(Stage::Baseline, &cfg, "random-init");
            if let Some(o) = self.train_stage::<AB>(Stage::Baseline, &cfg, &hash, None, device)? {
                outcomes.push(o);
            }
        }

        // The small model trained on instead of grown.
        if exp.control_enabled() {
            let cfg = exp
                .control_config(&self.seeds)
                .map_err(|(key, message)| ExperimentError::Control { key, message })?;
            let hash = training_stage_hash(Stage::Control, &cfg, &small_hash);
            let from = self.dir(Stage::Small).join("final");
            if let Some(o) = self.train_stage::<AB>(
                Stage::Control,
                &cfg,
                &hash,
                Some((from, OptimizerInit::Fresh)),
                device,
            )? {
                outcomes.push(o);
            }
        }
        Ok(outcomes)
    }

    /// What the route paid before `stage` started, for the total-cost axes of its TensorBoard
    /// events: the small run (and the expansion) before the cloned run, the small run before the
    /// control, nothing before the small run and the baseline.
    fn cost_before(&self, stage: Stage) -> CostOffset {
        if !matches!(stage, Stage::Large | Stage::Control) {
            return CostOffset::default();
        }
        let small = self.dir(Stage::Small).join("metrics.jsonl");
        let Ok(metrics) = hyperclone_runfiles::read_metrics(&small) else {
            tracing::warn!(
                "{}: unreadable; the total-cost axes of stage {} start at 0",
                small.display(),
                stage.dir_name()
            );
            return CostOffset::default();
        };
        let expand_hours = if stage == Stage::Large {
            std::fs::read_to_string(
                self.dir(Stage::Expand)
                    .join(hyperclone_runfiles::EXPAND_FILE),
            )
            .ok()
            .and_then(|t| serde_json::from_str::<hyperclone_runfiles::ExpandRecord>(&t).ok())
            .and_then(|r| r.cost_hours())
            .unwrap_or(0.0)
        } else {
            0.0
        };
        CostOffset {
            flops: metrics.total_flops().unwrap_or(0.0),
            device_hours: metrics.total_device_hours().unwrap_or(0.0) + expand_hours,
        }
    }

    /// Errors unless `upstream` has finished.
    fn needs(&self, stage: Stage, upstream: Stage) -> Result<(), ExperimentError> {
        if finished(&self.dir(upstream)) {
            Ok(())
        } else {
            Err(ExperimentError::Missing {
                stage: stage.dir_name(),
                needs: upstream.dir_name(),
            })
        }
    }

    /// Trains one stage unless it is finished (or not wanted); `init_from` is a model folder
    /// made by an earlier stage, with where the run's optimizer state comes from.
    fn train_stage<AB: GptAutodiffBackend>(
        &self,
        stage: Stage,
        config: &TrainConfig,
        hash: &str,
        init_from: Option<(PathBuf, OptimizerInit)>,
        device: &AB::Device,
    ) -> Result<Option<StageOutcome>, ExperimentError> {
        let (init_from, optimizer_state) = match init_from {
            Some((dir, init)) => (Some(dir), init),
            None => (None, OptimizerInit::Fresh),
        };
        let dir = self.dir(stage);
        let budget = config.total_steps();
        let done = check_stage(stage, &dir, hash, budget)?;
        if !self.wants(stage) {
            return Ok(None);
        }
        if done {
            tracing::info!("stage {}: finished earlier, skipped", stage.dir_name());
            return Ok(Some(self.outcome(stage, true)));
        }
        match stage {
            Stage::Large => self.needs(stage, Stage::Expand)?,
            Stage::Control => self.needs(stage, Stage::Small)?,
            _ => {}
        }
        let model = config.model.as_ref().map_or(0, |m| m.param_count());
        tracing::info!(
            "stage {}: training {} ({model} parameters){}",
            stage.dir_name(),
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
            cost_offset: self.cost_before(stage),
        };
        train::<AB>(config, &options, device).map_err(|source| ExperimentError::Train {
            stage: stage.dir_name(),
            source,
        })?;
        write_stage(
            &dir,
            &StageRecord {
                finished: true,
                ..record
            },
        )?;
        Ok(Some(self.outcome(stage, false)))
    }

    fn expand<AB: GptAutodiffBackend>(
        &self,
        opts: &hyperclone_cloning::ExpandOptions,
        optimizer_state: ClonedOptimizerState,
        hash: &str,
        device: &AB::Device,
    ) -> Result<(), ExperimentError> {
        tracing::info!(
            "stage expand: HyperCloning ×{} width, ×{} FFN ({})",
            opts.width_factor,
            opts.ffn_factor,
            opts.variant
        );
        let probe = ProbeSpec {
            tokens: None,
            batch: 4,
            seq: 64,
            tolerance: hyperclone_cloning::DEFAULT_TOLERANCE_F32,
            skip: false,
        };
        let dir = self.dir(Stage::Expand);
        // A transfer needs the optimizer state, which only the step folders hold: expand the
        // small run's newest checkpoint, its last step, whose weights are those of final/ (the
        // last step is always checkpointed). The state is mapped first, so that a checkpoint
        // without one fails before anything is written.
        let small_dir = self.dir(Stage::Small);
        let (source, mapped) = match optimizer_state {
            ClonedOptimizerState::Fresh => (small_dir.join("final"), None),
            ClonedOptimizerState::Transfer => {
                let newest = complete_checkpoints(&small_dir).into_iter().next();
                let Some((step, checkpoint)) = newest else {
                    return Err(TransferError::NotACheckpoint {
                        dir: small_dir,
                        reason: "the small run has no complete checkpoint (step-NNNNNNNN/) to take the optimizer state from".into(),
                    }
                    .into());
                };
                tracing::info!(
                    "stage expand: AdamW's state of {} (step {step}) goes through the clone too",
                    checkpoint.display()
                );
                let mapped = map_optimizer_state::<AB::InnerBackend>(&checkpoint, opts, device)?;
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
        )?;
        if let Some(mapped) = &mapped {
            let t = write_optimizer_state(&dir, mapped)?;
            tracing::info!(
                "optimizer state: moments of {} parameters, bias correction continues from update {}: {}",
                t.parameters,
                t.updates,
                t.path.display()
            );
        }
        if let Some(v) = result.verification {
            tracing::info!(
                "expanded {} → {} parameters; logits check: max |Δ| {:.2e}, relative {:.2e}, KL {:.2e}",
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
