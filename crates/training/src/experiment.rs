//! The main job: one experiment file, four stages, one report.
//!
//! ```text
//! small     train the small model from random init            → <out>/small/
//! expand    HyperClone small/final into the wide model        → <out>/expand/
//! large     train the wide model from the expanded weights    → <out>/large/
//! baseline  train the same wide model from random init        → <out>/baseline/
//! report    report.md, report.html and plots                  → <out>/
//! ```
//!
//! The large run and the baseline share the training section `[large]`: same data order, batch,
//! schedule and seed. Each stage writes `stage.json` with the hash of its inputs (its own
//! config and everything upstream) when it starts and marks it finished at the end: a finished
//! stage is skipped, an interrupted one resumed (training resumes from its checkpoints), and a
//! stage whose inputs changed is refused. With several seeds the stages live under
//! `<out>/seed-N/`.

use std::path::{Path, PathBuf};

use hyperclone_cloning::{expand_config, expand_folder, ExpandOptions, ProbeSpec};
use hyperclone_data::PrepareOptions;
use hyperclone_model::checkpoint::sha256_hex;
use hyperclone_model::GptAutodiffBackend;
use hyperclone_model::GptConfig;
use serde::{Deserialize, Serialize};

use crate::config::{
    parse_with_overrides, read_config_file, typed_from_table, ConfigFileError, OptimizerConfig,
    RunConfig, ScheduleConfig, TrainConfig,
};
use crate::trainer::{train, TrainError, TrainOptions};

/// Name, output folder and seeds of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// Human name, shown in the report.
    pub name: String,
    /// Output folder holding every stage and the report.
    pub out: PathBuf,
    /// Seeds to repeat the whole pipeline with (each in `<out>/seed-N/`). Empty: one run with
    /// the seeds written in the `[small.run]` and `[large.run]` sections, directly in `<out>`.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Train the random-init baseline (default true).
    #[serde(default = "default_true")]
    pub baseline: bool,
}

fn default_true() -> bool {
    true
}

/// The small model and how it is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallSection {
    /// Architecture of the small model (a preset plus overrides, or every field).
    pub model: GptConfig,
    /// AdamW settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Batch, budget, evaluation, checkpoints, backend.
    pub run: RunConfig,
}

/// How the wide model is trained (both from the expanded weights and from random init).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LargeSection {
    /// Dropout of the wide model in training (breaks the symmetry of exact clones).
    #[serde(default)]
    pub dropout: f64,
    /// AdamW settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Batch, budget, evaluation, checkpoints, backend.
    pub run: RunConfig,
}

/// A whole experiment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Name, output and seeds.
    pub experiment: ExperimentSection,
    /// The data all stages train and evaluate on.
    pub data: PrepareOptions,
    /// The small model's stage.
    pub small: SmallSection,
    /// The expansion.
    #[serde(default)]
    pub expand: ExpandOptions,
    /// The wide model's training (cloned run and baseline).
    pub large: LargeSection,
}

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
    /// Write the report.
    Report,
}

impl Stage {
    /// Folder name of the stage.
    pub fn dir_name(self) -> &'static str {
        match self {
            Stage::Small => "small",
            Stage::Expand => "expand",
            Stage::Large => "large",
            Stage::Baseline => "baseline",
            Stage::Report => "report",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "small" => Stage::Small,
            "expand" => Stage::Expand,
            "large" => Stage::Large,
            "baseline" => Stage::Baseline,
            "report" => Stage::Report,
            _ => {
                return Err(format!(
                    "unknown stage {s:?} (small, expand, large, baseline, report)"
                ))
            }
        })
    }
}

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The experiment file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigFileError),
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
    /// The expansion settings are impossible for the small model.
    #[error("[expand]: {0}")]
    Plan(#[from] hyperclone_cloning::CloneError),
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

impl ExperimentConfig {
    /// Reads an experiment file with `--set` overrides (`small.run.max_steps=100`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigFileError> {
        Self::from_toml_str(&read_config_file(path)?, path, overrides)
    }

    /// Like [`ExperimentConfig::load`] from a string; `origin` names it in errors.
    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        overrides: &[String],
    ) -> Result<Self, ConfigFileError> {
        let table = parse_with_overrides(text, origin, overrides)?;
        let config: ExperimentConfig = typed_from_table(table, origin)?;
        // Validate every stage's training config now, not hours later.
        for (stage, cfg) in [
            ("small", config.small_config(config.small.run.seed)),
            ("large", config.large_config(config.large.run.seed, None)),
        ] {
            cfg.validate().map_err(|e| ConfigFileError::Invalid {
                path: origin.to_path_buf(),
                key: format!("{stage}.{}", e.key),
                message: format!("{} ({})", e.message, e.value),
            })?;
        }
        let large = config.large_model().map_err(|e| ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key: "expand".into(),
            message: e.to_string(),
        })?;
        if config.large.run.seq_len > large.context_length {
            return Err(ConfigFileError::Invalid {
                path: origin.to_path_buf(),
                key: "large.run.seq_len".into(),
                message: format!(
                    "{} exceeds the model's context_length {}",
                    config.large.run.seq_len, large.context_length
                ),
            });
        }
        Ok(config)
    }

    /// The resolved experiment as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("ExperimentConfig serialises")
    }

    /// The wide model's architecture (derived from the small one by the expansion).
    pub fn large_model(&self) -> Result<GptConfig, hyperclone_cloning::CloneError> {
        let mut c = expand_config(&self.small.model, &self.expand)?;
        c.dropout = self.large.dropout;
        Ok(c)
    }

    /// Training config of the small stage with `seed`.
    pub fn small_config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            model: Some(self.small.model.clone()),
            data: self.data.clone(),
            optimizer: self.small.optimizer.clone(),
            schedule: self.small.schedule.clone(),
            run: RunConfig {
                seed,
                ..self.small.run.clone()
            },
        }
    }

    /// Training config shared by the large run and the baseline with `seed`.
    pub fn large_config(&self, seed: u64, model: Option<GptConfig>) -> TrainConfig {
        TrainConfig {
            model,
            data: self.data.clone(),
            optimizer: self.large.optimizer.clone(),
            schedule: self.large.schedule.clone(),
            run: RunConfig {
                seed,
                ..self.large.run.clone()
            },
        }
    }
}

/// What `stage.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageRecord {
    stage: Stage,
    hash: String,
    finished: bool,
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

/// What happened to each stage of one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct StageOutcome {
    /// The stage.
    pub stage: Stage,
    /// `true` when it was already finished and skipped.
    pub skipped: bool,
}

fn stage_hash(parts: &[&str]) -> String {
    sha256_hex(parts.join("\n").as_bytes())[..16].to_string()
}

fn read_stage(dir: &Path) -> Option<StageRecord> {
    let text = std::fs::read_to_string(dir.join("stage.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_stage(dir: &Path, record: &StageRecord) -> Result<(), ExperimentError> {
    std::fs::create_dir_all(dir).map_err(|source| ExperimentError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("stage.json");
    let json = serde_json::to_vec_pretty(record).expect("stage record serialises");
    hyperclone_model::checkpoint::write_file_atomically(&path, &json).map_err(|e| {
        ExperimentError::Io {
            path,
            source: std::io::Error::other(e.to_string()),
        }
    })
}

/// Decides what to do with a stage: `Ok(true)` skip (finished with the same inputs),
/// `Ok(false)` run or resume, `Err` inputs changed.
fn check_stage(stage: Stage, dir: &Path, hash: &str) -> Result<bool, ExperimentError> {
    match read_stage(dir) {
        Some(r) if r.hash != hash => Err(ExperimentError::StageChanged {
            stage: stage.dir_name(),
            dir: dir.to_path_buf(),
            found: r.hash,
            expected: hash.to_string(),
        }),
        Some(r) => Ok(r.finished),
        None => Ok(false),
    }
}

/// What a pipeline run did.
#[derive(Debug, Clone)]
pub struct ExperimentSummary {
    /// Each stage of each seed, in order.
    pub stages: Vec<StageOutcome>,
    /// The report's numbers, when the report stage ran.
    pub report: Option<hyperclone_report::ReportSummary>,
}

/// Runs the experiment's stages in order (or the one in `options.only`), then the report.
pub fn run_experiment<AB: GptAutodiffBackend>(
    exp: &ExperimentConfig,
    options: &ExperimentOptions,
    device: &AB::Device,
) -> Result<ExperimentSummary, ExperimentError> {
    let out = &exp.experiment.out;
    std::fs::create_dir_all(out).map_err(|source| ExperimentError::Io {
        path: out.clone(),
        source,
    })?;
    std::fs::write(out.join("experiment.toml"), exp.to_toml()).map_err(|source| {
        ExperimentError::Io {
            path: out.join("experiment.toml"),
            source,
        }
    })?;
    let seeds: Vec<(Option<u64>, PathBuf)> = if exp.experiment.seeds.is_empty() {
        vec![(None, out.clone())]
    } else {
        exp.experiment
            .seeds
            .iter()
            .map(|&s| (Some(s), out.join(format!("seed-{s}"))))
            .collect()
    };
    let mut outcomes = Vec::new();
    for (seed, root) in &seeds {
        if let Some(s) = seed {
            tracing::info!("=== seed {s}");
        }
        outcomes.extend(run_seed::<AB>(exp, *seed, root, options, device)?);
    }
    let report = if options.only.is_none() || options.only == Some(Stage::Report) {
        let summary = hyperclone_report::write_report(out)?;
        tracing::info!("report: {}", summary.report_md.display());
        outcomes.push(StageOutcome {
            stage: Stage::Report,
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

fn run_seed<AB: GptAutodiffBackend>(
    exp: &ExperimentConfig,
    seed: Option<u64>,
    root: &Path,
    options: &ExperimentOptions,
    device: &AB::Device,
) -> Result<Vec<StageOutcome>, ExperimentError> {
    let wants = |s: Stage| options.only.is_none() || options.only == Some(s);
    let mut outcomes = Vec::new();
    let train_options = |dir: PathBuf, init_from: Option<PathBuf>| TrainOptions {
        run_dir: dir,
        init_from,
        resume: true,
        stop_after: None,
        backend_name: options.backend_name.clone(),
        device_name: options.device_name.clone(),
        symmetry: Some(std::sync::Arc::new(|model, (width, ffn)| {
            let report = hyperclone_cloning::symmetry(model, width, ffn).ok()?;
            Some(crate::metrics::SymmetryLine {
                mean: report.mean,
                per_layer: report.per_layer,
            })
        })),
    };
    let data_json = serde_json::to_string(&exp.data).expect("data serialises");

    // Small.
    let small_cfg = exp.small_config(seed.unwrap_or(exp.small.run.seed));
    let small_dir = root.join("small");
    let small_hash = stage_hash(&["small", &small_cfg.to_toml(), &data_json]);
    let small_done = check_stage(Stage::Small, &small_dir, &small_hash)?;
    if wants(Stage::Small) {
        if small_done {
            tracing::info!("stage small: finished earlier, skipped");
        } else {
            tracing::info!("stage small: training the small model");
            let rec = StageRecord {
                stage: Stage::Small,
                hash: small_hash.clone(),
                finished: false,
            };
            write_stage(&small_dir, &rec)?;
            train::<AB>(&small_cfg, &train_options(small_dir.clone(), None), device).map_err(
                |source| ExperimentError::Train {
                    stage: "small",
                    source,
                },
            )?;
            write_stage(
                &small_dir,
                &StageRecord {
                    finished: true,
                    ..rec
                },
            )?;
        }
        outcomes.push(StageOutcome {
            stage: Stage::Small,
            skipped: small_done,
        });
    }

    // Expand.
    let expand_dir = root.join("expand");
    let expand_json = serde_json::to_string(&exp.expand).expect("expand serialises");
    let expand_hash = stage_hash(&["expand", &small_hash, &expand_json]);
    let expand_done = check_stage(Stage::Expand, &expand_dir, &expand_hash)?;
    if wants(Stage::Expand) {
        if expand_done {
            tracing::info!("stage expand: finished earlier, skipped");
        } else {
            if read_stage(&small_dir).is_none_or(|r| !r.finished) {
                return Err(ExperimentError::Missing {
                    stage: "expand",
                    needs: "small",
                });
            }
            tracing::info!(
                "stage expand: HyperCloning ×{} width, ×{} FFN ({})",
                exp.expand.width_factor,
                exp.expand.ffn_factor,
                exp.expand.variant
            );
            let probe = ProbeSpec {
                tokens: None,
                batch: 4,
                seq: 64,
                tolerance: hyperclone_cloning::DEFAULT_TOLERANCE_F32,
                skip: false,
            };
            let result = expand_folder::<AB::InnerBackend>(
                &small_dir.join("final"),
                &expand_dir,
                &exp.expand,
                &probe,
                &options.device_name,
                device,
            )?;
            if let Some(v) = result.verification {
                tracing::info!(
                    "expanded {} → {} parameters; logits check: max |Δ| {:.2e}, relative {:.2e}, KL {:.2e}",
                    result.record.source_params,
                    result.record.target_params,
                    v.max_abs_logit_diff,
                    v.rel_err,
                    v.kl
                );
            }
            write_stage(
                &expand_dir,
                &StageRecord {
                    stage: Stage::Expand,
                    hash: expand_hash.clone(),
                    finished: true,
                },
            )?;
        }
        outcomes.push(StageOutcome {
            stage: Stage::Expand,
            skipped: expand_done,
        });
    }

    // Large (from the expanded weights) and baseline (random init), same training section.
    let large_seed = seed.unwrap_or(exp.large.run.seed);
    let large_model = exp.large_model()?;
    let large_cfg = exp.large_config(large_seed, Some(large_model.clone()));
    for (stage, init_from) in [
        (Stage::Large, Some(expand_dir.clone())),
        (Stage::Baseline, None),
    ] {
        if stage == Stage::Baseline && !exp.experiment.baseline {
            continue;
        }
        if !wants(stage) {
            continue;
        }
        let dir = root.join(stage.dir_name());
        let upstream = if stage == Stage::Large {
            expand_hash.as_str()
        } else {
            "random-init"
        };
        let hash = stage_hash(&[stage.dir_name(), &large_cfg.to_toml(), upstream, &data_json]);
        let done = check_stage(stage, &dir, &hash)?;
        if done {
            tracing::info!("stage {}: finished earlier, skipped", stage.dir_name());
        } else {
            if stage == Stage::Large && read_stage(&expand_dir).is_none_or(|r| !r.finished) {
                return Err(ExperimentError::Missing {
                    stage: "large",
                    needs: "expand",
                });
            }
            tracing::info!(
                "stage {}: training the wide model ({} parameters) {}",
                stage.dir_name(),
                large_model.param_count(),
                if stage == Stage::Large {
                    "from the expanded weights"
                } else {
                    "from random init"
                }
            );
            let rec = StageRecord {
                stage,
                hash,
                finished: false,
            };
            write_stage(&dir, &rec)?;
            train::<AB>(&large_cfg, &train_options(dir.clone(), init_from), device).map_err(
                |source| ExperimentError::Train {
                    stage: stage.dir_name(),
                    source,
                },
            )?;
            write_stage(
                &dir,
                &StageRecord {
                    finished: true,
                    ..rec
                },
            )?;
        }
        outcomes.push(StageOutcome {
            stage,
            skipped: done,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    #[test]
    fn every_shipped_config_parses_and_validates() {
        let mut experiments = 0;
        for entry in std::fs::read_dir(configs_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("[experiment]") {
                let exp = ExperimentConfig::load(&path, &[]).unwrap();
                let large = exp.large_model().unwrap();
                assert_eq!(
                    large.d_model,
                    exp.small.model.d_model * exp.expand.width_factor
                );
                experiments += 1;
            } else {
                TrainConfig::load(&path, &[]).unwrap();
            }
        }
        assert!(experiments >= 4, "{experiments}");
    }

    #[test]
    fn impossible_expansion_and_bad_overrides_are_refused_at_load() {
        let path = configs_dir().join("tiny.toml");
        let e = ExperimentConfig::load(&path, &["expand.width_factor=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("width_factor"), "{e}");
        let e = ExperimentConfig::load(&path, &["large.run.seq_len=4096".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("large.run.seq_len"), "{e}");
        let e = ExperimentConfig::load(&path, &["small.run.batch_size=0".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("small.run.batch_size"), "{e}");
    }

    #[test]
    fn stage_names_round_trip() {
        for s in [
            Stage::Small,
            Stage::Expand,
            Stage::Large,
            Stage::Baseline,
            Stage::Report,
        ] {
            assert_eq!(s.dir_name().parse::<Stage>().unwrap(), s);
        }
        assert!("medium".parse::<Stage>().is_err());
    }
}
