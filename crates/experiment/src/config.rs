//! The experiment file: `[experiment]`, `[data]`, `[small.*]`, `[expand]`, `[large.*]` (with the
//! cloned arm's own `[large.cloned.*]`) and the optional `[control.*]`, and the training config
//! each stage derives from it.
//!
//! Partial sections inherit: `[large.cloned.optimizer]` and `[large.cloned.schedule]` start from
//! `[large.optimizer]` / `[large.schedule]` and override only the keys they name;
//! `[control.optimizer]` and `[control.schedule]` start from the small model's sections. The
//! resolved file (every inherited key written out) is what the run records.

use std::path::{Path, PathBuf};

use hyperclone_cloning::{expand_config, ExpandOptions};
use hyperclone_data::PrepareOptions;
use hyperclone_model::GptConfig;
use hyperclone_training::config::{
    parse_with_overrides, read_config_file, typed_from_table, ConfigFileError, OptimizerConfig,
    RunConfig, ScheduleConfig, TrainConfig,
};
use serde::{Deserialize, Serialize};

/// Offset between a replica's seed and the seed of its wide runs (cloned, baseline, control), so
/// that the wide runs draw a data stream of their own rather than replaying the small run's
/// batches in the same order.
pub const WIDE_SEED_OFFSET: u64 = 1000;

/// Name, output folder and seeds of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// Human name, shown in the report.
    pub name: String,
    /// Output folder holding every stage and the report.
    pub out: PathBuf,
    /// Replicas of the whole pipeline, one per seed, each in `<out>/seed-N/` (`hyperclone run
    /// --seeds 3` sets `[1, 2, 3]`). For seed N the small run uses seed N, the wide runs
    /// (cloned, baseline, control) seed N + 1000 ([`WIDE_SEED_OFFSET`]) and the expansion's
    /// noise `expand.seed + N`. Empty: one run with the seeds written in `[small.run]`,
    /// `[large.run]` and `[expand]`, directly in `<out>`.
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

/// Where the cloned run's AdamW state comes from (`[large.cloned] optimizer_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClonedOptimizerState {
    /// A fresh AdamW (zero moments, update count 0), as before transfers existed.
    #[default]
    Fresh,
    /// The small run's AdamW state at its last checkpoint, mapped through the clone
    /// (`crate::transfer`): moments, update count and per-parameter factors. The expand stage
    /// then expands that checkpoint (the same weights as `small/final`) and writes the mapped
    /// state beside the wide weights; the large stage continues it.
    Transfer,
}

impl ClonedOptimizerState {
    /// The value as written in the experiment file.
    pub fn name(self) -> &'static str {
        match self {
            ClonedOptimizerState::Fresh => "fresh",
            ClonedOptimizerState::Transfer => "transfer",
        }
    }
}

/// The cloned arm's own optimiser and schedule (`[large.cloned.optimizer]`,
/// `[large.cloned.schedule]`): a model that starts trained may want a lower peak learning rate
/// or a shorter warm-up than one that starts from random weights. Keys not given are taken from
/// `[large.optimizer]` / `[large.schedule]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClonedArm {
    /// `"fresh"` (default) or `"transfer"`: start the cloned run with a fresh AdamW, or with
    /// the small run's state carried through the clone ([`ClonedOptimizerState`]). (First: a
    /// plain value is written before the tables in the resolved TOML.)
    #[serde(default)]
    pub optimizer_state: ClonedOptimizerState,
    /// AdamW settings of the cloned run.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule of the cloned run.
    pub schedule: ScheduleConfig,
}

/// How the wide model is trained: the baseline's settings, which the cloned run shares unless
/// `[large.cloned]` overrides them. Batch, data order, budget and seed are always shared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LargeSection {
    /// Dropout of the wide model in training (breaks the symmetry of exact clones).
    #[serde(default)]
    pub dropout: f64,
    /// AdamW settings (baseline; cloned run too unless `[large.cloned.optimizer]` is given).
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule (baseline; cloned run too unless `[large.cloned.schedule]`).
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Batch, budget, evaluation, checkpoints, backend (both arms).
    pub run: RunConfig,
    /// The cloned arm's own optimiser and schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloned: Option<ClonedArm>,
}

/// The continued-small control (`[control]`): the small model keeps training from its final
/// weights instead of being grown, on the wide runs' data order, batch and sequence length, until
/// small run + control have spent the baseline's total training FLOPs. It answers the question
/// the baseline cannot: would simply training the small model further have done as well?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Train the control (default true when the section is present).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// AdamW settings; keys not given are taken from `[small.optimizer]`.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule over the control's own steps; keys not given are taken from
    /// `[small.schedule]`.
    pub schedule: ScheduleConfig,
    /// Evaluate every this many steps. Default: `large.run.eval_every` scaled by the ratio of
    /// the wide to the small model's FLOPs per token, so that the control evaluates about as
    /// often per FLOP as the baseline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<u64>,
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
    /// The continued-small control (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSection>,
}

/// The seeds of one replica of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSeeds {
    /// The replica's seed (`None`: the single run of an experiment without `seeds`).
    pub replica: Option<u64>,
    /// Seed of the small run.
    pub small: u64,
    /// Seed of the wide runs (cloned, baseline) and of the control.
    pub wide: u64,
    /// Seed of the expansion's noise.
    pub expand: u64,
}

/// Fills the keys missing from the table at `target` with those of the table at `base` (both
/// dotted paths), when `target`'s parent exists. Inheritance happens on the TOML, before
/// typing, so that "not given" and "given with the default value" stay distinct.
fn inherit(table: &mut toml::Table, target: &[&str], base: &[&str]) {
    fn get<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Table> {
        let (first, rest) = path.split_first()?;
        let inner = table.get(*first)?.as_table()?;
        if rest.is_empty() {
            Some(inner)
        } else {
            get(inner, rest)
        }
    }
    let (last, parent_path) = target.split_last().expect("non-empty path");
    if get(table, parent_path).is_none() {
        return;
    }
    let base = get(table, base).cloned().unwrap_or_default();
    let mut parent = table;
    for part in parent_path {
        parent = parent
            .get_mut(*part)
            .and_then(|v| v.as_table_mut())
            .expect("checked above");
    }
    let entry = parent
        .entry(last.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(t) = entry.as_table_mut() {
        for (k, v) in base {
            t.entry(k).or_insert(v);
        }
    }
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
        let mut table = parse_with_overrides(text, origin, overrides)?;
        inherit(
            &mut table,
            &["large", "cloned", "optimizer"],
            &["large", "optimizer"],
        );
        inherit(
            &mut table,
            &["large", "cloned", "schedule"],
            &["large", "schedule"],
        );
        inherit(
            &mut table,
            &["control", "optimizer"],
            &["small", "optimizer"],
        );
        inherit(&mut table, &["control", "schedule"], &["small", "schedule"]);
        let config: ExperimentConfig = typed_from_table(table, origin)?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks every stage's training config now, not hours later.
    fn validate(&self, origin: &Path) -> Result<(), ConfigFileError> {
        let invalid = |key: String, message: String| ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key,
            message,
        };
        let seeds = self.replica_seeds(None);
        let large = self
            .large_model()
            .map_err(|e| invalid("expand".into(), e.to_string()))?;
        let mut stages = vec![
            ("small", self.small_config(&seeds)),
            ("large", self.baseline_config(&seeds, large.clone())),
            ("large.cloned", self.cloned_config(&seeds, large.clone())),
        ];
        if self.control_enabled() {
            let control = self
                .control_config(&seeds)
                .map_err(|(key, message)| invalid(key, message))?;
            stages.push(("control", control));
        }
        for (stage, cfg) in stages {
            cfg.validate().map_err(|e| {
                invalid(
                    format!("{stage}.{}", e.key),
                    format!("{} ({})", e.message, e.value),
                )
            })?;
        }
        if self.large.run.seq_len > large.context_length {
            return Err(invalid(
                "large.run.seq_len".into(),
                format!(
                    "{} exceeds the model's context_length {}",
                    self.large.run.seq_len, large.context_length
                ),
            ));
        }
        if self.experiment.seeds.contains(&0) {
            return Err(invalid(
                "experiment.seeds".into(),
                "seeds must be at least 1 (seed-0 would read as a missing seed)".into(),
            ));
        }
        let mut sorted = self.experiment.seeds.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.experiment.seeds.len() {
            return Err(invalid(
                "experiment.seeds".into(),
                format!(
                    "{:?} names a seed twice (each seed is one replica folder)",
                    self.experiment.seeds
                ),
            ));
        }
        Ok(())
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

    /// Whether the continued-small control runs.
    pub fn control_enabled(&self) -> bool {
        self.control.as_ref().is_some_and(|c| c.enabled)
    }

    /// The seeds of the replica `replica` (`None`: the single run without `experiment.seeds`).
    pub fn replica_seeds(&self, replica: Option<u64>) -> ReplicaSeeds {
        match replica {
            Some(n) => ReplicaSeeds {
                replica,
                small: n,
                wide: n + WIDE_SEED_OFFSET,
                expand: self.expand.seed.wrapping_add(n),
            },
            None => ReplicaSeeds {
                replica,
                small: self.small.run.seed,
                wide: self.large.run.seed,
                expand: self.expand.seed,
            },
        }
    }

    /// The expansion settings of a replica (its own noise seed).
    pub fn expand_options(&self, seeds: &ReplicaSeeds) -> ExpandOptions {
        ExpandOptions {
            seed: seeds.expand,
            ..self.expand.clone()
        }
    }

    /// Training config of the small stage.
    pub fn small_config(&self, seeds: &ReplicaSeeds) -> TrainConfig {
        TrainConfig {
            model: Some(self.small.model.clone()),
            data: self.data.clone(),
            optimizer: self.small.optimizer.clone(),
            schedule: self.small.schedule.clone(),
            run: RunConfig {
                seed: seeds.small,
                ..self.small.run.clone()
            },
        }
    }

    /// Training config of the random-init baseline.
    pub fn baseline_config(&self, seeds: &ReplicaSeeds, model: GptConfig) -> TrainConfig {
        TrainConfig {
            model: Some(model),
            data: self.data.clone(),
            optimizer: self.large.optimizer.clone(),
            schedule: self.large.schedule.clone(),
            run: RunConfig {
                seed: seeds.wide,
                ..self.large.run.clone()
            },
        }
    }

    /// Training config of the cloned run: the baseline's, with `[large.cloned]`'s optimiser
    /// and schedule when given.
    pub fn cloned_config(&self, seeds: &ReplicaSeeds, model: GptConfig) -> TrainConfig {
        let mut c = self.baseline_config(seeds, model);
        if let Some(arm) = &self.large.cloned {
            c.optimizer = arm.optimizer.clone();
            c.schedule = arm.schedule.clone();
        }
        c
    }

    /// Where the cloned run's AdamW state comes from (`[large.cloned] optimizer_state`;
    /// fresh without a `[large.cloned]` section).
    pub fn cloned_optimizer_state(&self) -> ClonedOptimizerState {
        self.large
            .cloned
            .as_ref()
            .map_or(ClonedOptimizerState::Fresh, |arm| arm.optimizer_state)
    }

    /// Training FLOPs of the small run's whole budget.
    pub fn small_flops(&self) -> Option<f64> {
        let c = self.small_config(&self.replica_seeds(None));
        Some(
            c.total_steps()? as f64
                * c.tokens_per_step() as f64
                * self.small.model.flops_per_token(c.run.seq_len),
        )
    }

    /// Training FLOPs of the baseline's whole budget.
    pub fn baseline_flops(&self) -> Option<f64> {
        let large = self.large_model().ok()?;
        let c = self.baseline_config(&self.replica_seeds(None), large.clone());
        Some(
            c.total_steps()? as f64
                * c.tokens_per_step() as f64
                * large.flops_per_token(c.run.seq_len),
        )
    }

    /// Training config of the continued-small control: the small model from its final weights,
    /// on the wide runs' data order (their seed, batch and sequence length), for as many steps
    /// as bring small run + control to the baseline's total FLOPs. `Err((key, message))` when
    /// that budget cannot be computed or is empty.
    pub fn control_config(&self, seeds: &ReplicaSeeds) -> Result<TrainConfig, (String, String)> {
        let Some(control) = &self.control else {
            return Err(("control".into(), "no [control] section".into()));
        };
        let (Some(small_flops), Some(baseline_flops)) = (self.small_flops(), self.baseline_flops())
        else {
            return Err((
                "control".into(),
                "the control's budget is the baseline's FLOPs minus the small run's: both \
                 need run.max_steps or run.max_tokens, not only run.max_wall_seconds"
                    .into(),
            ));
        };
        let run = &self.large.run;
        let tokens_per_step = (run.batch_size * run.seq_len * run.grad_accum) as f64;
        let small_per_token = self.small.model.flops_per_token(run.seq_len);
        let steps = ((baseline_flops - small_flops) / (small_per_token * tokens_per_step)).floor();
        if steps < 1.0 {
            return Err((
                "control".into(),
                format!(
                    "the small run's budget ({small_flops:.3e} FLOPs) already reaches the \
                     baseline's ({baseline_flops:.3e}): there is nothing left for the control \
                     (and the small model is not cheaper than the baseline)"
                ),
            ));
        }
        let steps = steps as u64;
        // Scale the eval and checkpoint cadence by the FLOPs ratio: as often per FLOP as the
        // baseline.
        let large_per_token = self
            .large_model()
            .map(|m| m.flops_per_token(run.seq_len))
            .unwrap_or(small_per_token);
        let scale =
            |every: u64| ((every as f64 * large_per_token / small_per_token).round() as u64).max(1);
        Ok(TrainConfig {
            model: Some(self.small.model.clone()),
            data: self.data.clone(),
            optimizer: control.optimizer.clone(),
            schedule: control.schedule.clone(),
            run: RunConfig {
                seed: seeds.wide,
                max_steps: Some(steps),
                max_tokens: None,
                max_wall_seconds: None,
                eval_every: control.eval_every.unwrap_or_else(|| scale(run.eval_every)),
                checkpoint_every: if run.checkpoint_every == 0 {
                    0
                } else {
                    scale(run.checkpoint_every)
                },
                log_every: scale(run.log_every),
                ..run.clone()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")
    }

    fn tiny(overrides: &[&str]) -> Result<ExperimentConfig, ConfigFileError> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::load(&configs_dir().join("tiny.toml"), &o)
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
                // The resolved file reads back to the same experiment.
                let again = ExperimentConfig::from_toml_str(&exp.to_toml(), &path, &[]).unwrap();
                assert_eq!(again, exp, "{}", path.display());
                experiments += 1;
            } else {
                TrainConfig::load(&path, &[]).unwrap();
            }
        }
        assert!(experiments >= 4, "{experiments}");
    }

    #[test]
    fn impossible_expansion_and_bad_overrides_are_refused_at_load() {
        let e = tiny(&["expand.width_factor=0"]).unwrap_err().to_string();
        assert!(e.contains("width_factor"), "{e}");
        let e = tiny(&["large.run.seq_len=4096"]).unwrap_err().to_string();
        assert!(e.contains("large.run.seq_len"), "{e}");
        let e = tiny(&["small.run.batch_size=0"]).unwrap_err().to_string();
        assert!(e.contains("small.run.batch_size"), "{e}");
        let e = tiny(&["large.cloned.optimizer.lr=-1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("large.cloned.optimizer.lr"), "{e}");
        let e = tiny(&["experiment.seeds=[1, 1]"]).unwrap_err().to_string();
        assert!(e.contains("experiment.seeds"), "{e}");
        let e = tiny(&["experiment.seeds=[0]"]).unwrap_err().to_string();
        assert!(e.contains("experiment.seeds"), "{e}");
    }

    /// `[large.cloned] optimizer_state`: fresh unless asked, "transfer" read and kept by the
    /// resolved file, anything else refused naming the key and the value.
    #[test]
    fn the_cloned_optimizer_state_is_fresh_by_default_and_validated() {
        let exp = tiny(&[]).unwrap();
        assert_eq!(exp.cloned_optimizer_state(), ClonedOptimizerState::Fresh);
        let exp = tiny(&["large.cloned.optimizer.lr=5e-4"]).unwrap();
        assert_eq!(exp.cloned_optimizer_state(), ClonedOptimizerState::Fresh);
        let exp = tiny(&["large.cloned.optimizer_state=\"transfer\""]).unwrap();
        assert_eq!(exp.cloned_optimizer_state(), ClonedOptimizerState::Transfer);
        // The section appears for the key alone and inherits the baseline's optimiser.
        assert_eq!(
            exp.large.cloned.as_ref().unwrap().optimizer,
            exp.large.optimizer
        );
        let again =
            ExperimentConfig::from_toml_str(&exp.to_toml(), Path::new("resolved.toml"), &[])
                .unwrap();
        assert_eq!(again, exp);
        let e = tiny(&["large.cloned.optimizer_state=\"warm\""])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("large.cloned.optimizer_state")
                && e.contains("warm")
                && e.contains("transfer")
                && e.contains("fresh"),
            "{e}"
        );
    }

    #[test]
    fn the_cloned_arm_inherits_what_it_does_not_override() {
        let exp = tiny(&[]).unwrap();
        assert_eq!(exp.large.cloned, None);
        let seeds = exp.replica_seeds(None);
        let large = exp.large_model().unwrap();
        assert_eq!(
            exp.cloned_config(&seeds, large.clone()),
            exp.baseline_config(&seeds, large.clone())
        );

        let exp = tiny(&[
            "large.cloned.optimizer.lr=5e-4",
            "large.cloned.schedule.warmup_steps=0",
        ])
        .unwrap();
        let cloned = exp.cloned_config(&seeds, large.clone());
        let baseline = exp.baseline_config(&seeds, large);
        assert_eq!(cloned.optimizer.lr, 5e-4);
        assert_eq!(baseline.optimizer.lr, 2e-3);
        assert_eq!(cloned.schedule.warmup_steps, 0);
        assert_eq!(baseline.schedule.warmup_steps, 5);
        // Everything not named is the baseline's.
        assert_eq!(
            cloned.optimizer.weight_decay,
            baseline.optimizer.weight_decay
        );
        assert_eq!(cloned.schedule.decay, baseline.schedule.decay);
        assert_eq!(cloned.run, baseline.run);
        // The resolved file spells the inherited keys out and reads back the same.
        let again =
            ExperimentConfig::from_toml_str(&exp.to_toml(), Path::new("resolved.toml"), &[])
                .unwrap();
        assert_eq!(again, exp);
    }

    #[test]
    fn the_control_spends_what_the_baseline_spends_beyond_the_small_run() {
        let exp = tiny(&["control.enabled=true"]).unwrap();
        assert!(exp.control_enabled());
        let seeds = exp.replica_seeds(Some(3));
        let control = exp.control_config(&seeds).unwrap();
        // The small model, on the wide runs' seed, batch and sequence length.
        assert_eq!(control.model.as_ref(), Some(&exp.small.model));
        assert_eq!(control.run.seed, 3 + WIDE_SEED_OFFSET);
        assert_eq!(control.run.batch_size, exp.large.run.batch_size);
        assert_eq!(control.run.seq_len, exp.large.run.seq_len);
        // Its optimiser is the small run's unless overridden.
        assert_eq!(control.optimizer, exp.small.optimizer);
        // small + control = baseline FLOPs, to within one control step.
        let per_step =
            exp.small.model.flops_per_token(control.run.seq_len) * control.tokens_per_step() as f64;
        let spent = exp.small_flops().unwrap() + control.run.max_steps.unwrap() as f64 * per_step;
        let baseline = exp.baseline_flops().unwrap();
        assert!(
            spent <= baseline && baseline - spent < per_step,
            "{spent} vs {baseline}"
        );

        // A small run that costs as much as the baseline leaves the control nothing.
        let e = tiny(&["control.enabled=true", "small.run.max_steps=100000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("control") && e.contains("nothing left"), "{e}");
        // Off unless asked for.
        assert!(!tiny(&[]).unwrap().control_enabled());
    }

    #[test]
    fn replicas_have_their_own_seeds() {
        let exp = tiny(&[]).unwrap();
        let single = exp.replica_seeds(None);
        assert_eq!(
            (single.small, single.wide, single.expand),
            (exp.small.run.seed, exp.large.run.seed, exp.expand.seed)
        );
        let r = exp.replica_seeds(Some(2));
        assert_eq!((r.small, r.wide, r.expand), (2, 1002, exp.expand.seed + 2));
        assert_eq!(exp.small_config(&r).run.seed, 2);
        assert_eq!(exp.expand_options(&r).seed, exp.expand.seed + 2);
    }
}
