//! The experiment file: `[experiment]`, `[data]`, `[small.*]`, `[expand]`, `[large.*]` (with the
//! cloned arm's own `[large.cloned.*]`) and the optional `[control.*]`, and the training config
//! each stage derives from it.
//!
//! Partial sections inherit: `[large.cloned.optimizer]` and `[large.cloned.schedule]` start from
//! `[large.optimizer]` / `[large.schedule]` and override only the keys they name;
//! `[control.optimizer]` and `[control.schedule]` start from the small model's sections. The
//! resolved file (every inherited key written out) is what the run records.
//!
//! # Growth chains
//!
//! Instead of one `[expand]` and the cloned arm of `[large]`, an experiment may grow the small
//! model several times: a list of `[[growth]]` tables, each with its own expansion
//! (`[growth.expand]`, the keys of `[expand]`), AdamW state (`optimizer_state`), optimiser,
//! schedule and training budget (`[growth.optimizer]`, `[growth.schedule]`, `[growth.run]`).
//! Stage *k* (1-based) expands the final weights of stage *k − 1* (the small run for the first)
//! into `expand-k/` and trains them in `large-k/`. `[large.*]` then describes only the
//! random-init baseline, whose shape is the chain's final shape; a growth stage's sections
//! start from `[large.optimizer]`, `[large.schedule]`, `[large.run]` and `[large] dropout`,
//! overriding the keys they name (the budget keys `max_steps`, `max_tokens`,
//! `max_wall_seconds` as a group: a stage naming one inherits none of them). Stage *k* draws its
//! data with the wide seed plus *k − 1*, so that no stage replays the batches of the one before.
//! A chain of one stage is the single `[expand]` + `[large.cloned]` form, with the same folders
//! (`expand/`, `large/`) and stage hashes. The control (`[control]`) still trains the small
//! model on until small run + control have spent the baseline's FLOPs.

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

/// One stage of a growth chain (`[[growth]]`): expand the previous stage's final weights, then
/// train them. Sections not given start from `[large.*]` (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowthStage {
    /// `"fresh"` (default) or `"transfer"`: start this stage with a fresh AdamW, or with the
    /// previous stage's state carried through this stage's expansion. (Plain values first: they
    /// are written before the tables in the resolved TOML.)
    #[serde(default)]
    pub optimizer_state: ClonedOptimizerState,
    /// Dropout of the grown model in training (default: `[large] dropout`).
    pub dropout: f64,
    /// The expansion of the previous stage's model (the keys of `[expand]`).
    pub expand: ExpandOptions,
    /// AdamW settings (keys not given: `[large.optimizer]`'s).
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule over this stage's steps (keys not given: `[large.schedule]`'s).
    pub schedule: ScheduleConfig,
    /// Batch, budget, evaluation, checkpoints (keys not given: `[large.run]`'s; the budget keys
    /// as a group). `seed` is this stage's data seed without `experiment.seeds` (default:
    /// `[large.run] seed` + the stage's 0-based position); with seeds it is the wide seed plus
    /// that position.
    pub run: RunConfig,
}

/// One link of the growth chain as the pipeline runs it: where it is written, how it expands
/// the previous model and how it trains. The single `[expand]` + `[large.cloned]` form is a
/// chain of one link.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowthLink {
    /// 0-based position in the chain.
    pub index: usize,
    /// Folder of its expansion: `expand` (single form, or a chain of one), else `expand-K`
    /// (K = index + 1).
    pub expand_dir: String,
    /// Folder of its training run: `large`, else `large-K`.
    pub train_dir: String,
    /// The config key errors about this link name (`large.cloned`, `growth[I]`).
    pub key: String,
    /// The expansion, with the seed as written (a replica adds its seed).
    pub expand: ExpandOptions,
    /// Where the run's AdamW state comes from.
    pub optimizer_state: ClonedOptimizerState,
    /// The model before the expansion (the small model, or the previous link's).
    pub source_model: GptConfig,
    /// The grown model (dropout included).
    pub model: GptConfig,
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
    /// The expansion (single-growth form; absent: the defaults). Not allowed with `[[growth]]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expand: Option<ExpandOptions>,
    /// The wide model's training (cloned run and baseline; with `[[growth]]`, the baseline
    /// only, at the chain's final shape).
    pub large: LargeSection,
    /// A growth chain (empty: the single `[expand]` + `[large.cloned]` form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub growth: Vec<GrowthStage>,
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

/// The budget keys of a run section: a growth stage that names one of them inherits none of
/// `[large.run]`'s (a stage given `max_steps` must not also stop at the baseline's
/// `max_tokens`).
const BUDGET_KEYS: [&str; 3] = ["max_steps", "max_tokens", "max_wall_seconds"];

/// Applies `growth[I].KEY=VALUE` to stage I of the chain.
fn override_growth_stage(
    table: &mut toml::Table,
    spec: &str,
    origin: &Path,
) -> Result<(), ConfigFileError> {
    let bad = || ConfigFileError::BadOverride(spec.to_string());
    let rest = spec.trim_start().strip_prefix("growth[").ok_or_else(bad)?;
    let (index, rest) = rest.split_once(']').ok_or_else(bad)?;
    let rest = rest.strip_prefix('.').ok_or_else(bad)?;
    let index: usize = index.trim().parse().map_err(|_| bad())?;
    let stages = table
        .get_mut("growth")
        .and_then(|g| g.as_array_mut())
        .ok_or_else(|| ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key: format!("growth[{index}]"),
            message: format!(
                "the override {spec:?} names a growth stage, but the file has no [[growth]] tables"
            ),
        })?;
    let count = stages.len();
    let stage = stages
        .get_mut(index)
        .and_then(|s| s.as_table_mut())
        .ok_or_else(|| ConfigFileError::Invalid {
            path: origin.to_path_buf(),
            key: format!("growth[{index}]"),
            message: format!(
                "the override {spec:?} names a stage the chain does not have: it has {count} \
                 stage(s), growth[0] to growth[{}]",
                count.saturating_sub(1)
            ),
        })?;
    hyperclone_training::config::apply_override(stage, rest)
}

/// Refuses the single-growth sections beside a chain and fills every `[[growth]]` stage's
/// missing keys from `[large.*]` (see the module docs), before typing.
fn inherit_growth(table: &mut toml::Table, origin: &Path) -> Result<(), ConfigFileError> {
    let invalid = |key: &str, message: String| ConfigFileError::Invalid {
        path: origin.to_path_buf(),
        key: key.to_string(),
        message,
    };
    let Some(growth) = table.get("growth") else {
        return Ok(());
    };
    let Some(stages) = growth.as_array() else {
        return Err(invalid(
            "growth",
            format!(
                "expected a list of [[growth]] tables, got {}",
                growth.type_str()
            ),
        ));
    };
    if stages.is_empty() {
        return Err(invalid(
            "growth",
            "an empty chain: give at least one [[growth]] stage, or remove the key for the \
             single [expand] + [large] form"
                .into(),
        ));
    }
    if table.contains_key("expand") {
        return Err(invalid(
            "expand",
            "[expand] and [[growth]] are both given: with a growth chain each stage has its own \
             expansion ([growth.expand])"
                .into(),
        ));
    }
    let large = table
        .get("large")
        .and_then(|l| l.as_table())
        .cloned()
        .unwrap_or_default();
    if large.contains_key("cloned") {
        return Err(invalid(
            "large.cloned",
            "[large.cloned] and [[growth]] are both given: with a growth chain each stage has its \
             own optimizer_state, [growth.optimizer] and [growth.schedule]; [large.*] is the \
             baseline's"
                .into(),
        ));
    }
    let section = |name: &str| {
        large
            .get(name)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default()
    };
    let (optimizer, schedule, run) = (section("optimizer"), section("schedule"), section("run"));
    let base_seed = run.get("seed").and_then(|v| v.as_integer()).unwrap_or(0);
    let stages = table
        .get_mut("growth")
        .and_then(|g| g.as_array_mut())
        .expect("checked above");
    for (index, stage) in stages.iter_mut().enumerate() {
        let key = format!("growth[{index}]");
        let Some(stage) = stage.as_table_mut() else {
            return Err(invalid(
                &key,
                format!("expected a [[growth]] table, got {}", stage.type_str()),
            ));
        };
        stage.entry("dropout").or_insert_with(|| {
            large
                .get("dropout")
                .cloned()
                .unwrap_or(toml::Value::Float(0.0))
        });
        for (name, base) in [("optimizer", &optimizer), ("schedule", &schedule)] {
            let entry = stage
                .entry(name)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = entry.as_table_mut() else {
                return Err(invalid(
                    &format!("{key}.{name}"),
                    format!("expected a table, got {}", entry.type_str()),
                ));
            };
            for (k, v) in base {
                t.entry(k).or_insert(v.clone());
            }
        }
        let entry = stage
            .entry("run")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(own) = entry.as_table_mut() else {
            return Err(invalid(
                &format!("{key}.run"),
                format!("expected a table, got {}", entry.type_str()),
            ));
        };
        let names_budget = BUDGET_KEYS.iter().any(|k| own.contains_key(*k));
        if !own.contains_key("seed") {
            own.insert(
                "seed".into(),
                toml::Value::Integer(base_seed.saturating_add(index as i64)),
            );
        }
        for (k, v) in &run {
            if names_budget && BUDGET_KEYS.contains(&k.as_str()) {
                continue;
            }
            own.entry(k).or_insert(v.clone());
        }
    }
    Ok(())
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
        // `growth[I].KEY=VALUE` overrides address a stage of the chain; the others go to the
        // generic override code, which knows tables only.
        let (chain_overrides, plain): (Vec<&String>, Vec<&String>) = overrides
            .iter()
            .partition(|o| o.trim_start().starts_with("growth["));
        let plain: Vec<String> = plain.into_iter().cloned().collect();
        let mut table = parse_with_overrides(text, origin, &plain)?;
        for o in chain_overrides {
            override_growth_stage(&mut table, o, origin)?;
        }
        inherit_growth(&mut table, origin)?;
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
        let links = self
            .chain()
            .map_err(|(key, e)| invalid(key, e.to_string()))?;
        let large = self
            .large_model()
            .map_err(|e| invalid("expand".into(), e.to_string()))?;
        let mut stages = vec![
            ("small".to_string(), self.small_config(&seeds)),
            (
                "large".to_string(),
                self.baseline_config(&seeds, large.clone()),
            ),
        ];
        for link in &links {
            stages.push((link.key.clone(), self.link_config(&seeds, link)));
        }
        // Refused here rather than at the expansion, after the small run has trained.
        for link in &links {
            if link.optimizer_state == ClonedOptimizerState::Transfer && link.expand.grows_depth() {
                let expand_key = if self.growth.is_empty() {
                    "expand.depth_factor".to_string()
                } else {
                    format!("{}.expand.depth_factor", link.key)
                };
                return Err(invalid(
                    format!("{}.optimizer_state", link.key),
                    format!(
                        "\"transfer\" with {expand_key} = {}: AdamW's state is carried through \
                         width growth only; use \"fresh\" for a stage that grows depth",
                        link.expand.depth_factor
                    ),
                ));
            }
        }
        // A chain's stages run in the job of the wide runs, on `[large.run]`'s backend.
        for (link, stage) in links.iter().zip(&self.growth) {
            let run = &stage.run;
            if run.seq_len > link.model.context_length {
                return Err(invalid(
                    format!("{}.run.seq_len", link.key),
                    format!(
                        "{} exceeds the grown model's context_length {}",
                        run.seq_len, link.model.context_length
                    ),
                ));
            }
            for (name, value) in [("max_steps", run.max_steps), ("max_tokens", run.max_tokens)] {
                if value == Some(0) {
                    return Err(invalid(
                        format!("{}.run.{name}", link.key),
                        "0: a growth stage must train (give it at least one step, or drop the \
                         stage from the chain)"
                            .into(),
                    ));
                }
            }
            if run.backend != self.large.run.backend || run.precision != self.large.run.precision {
                return Err(invalid(
                    format!("{}.run.backend", link.key),
                    format!(
                        "{:?} in {:?} differs from [large.run]'s {:?} in {:?}: every wide stage \
                         runs on the backend and precision of [large.run]",
                        run.backend,
                        run.precision,
                        self.large.run.backend,
                        self.large.run.precision
                    ),
                ));
            }
        }
        if self.control_enabled() {
            let control = self
                .control_config(&seeds)
                .map_err(|(key, message)| invalid(key, message))?;
            stages.push(("control".to_string(), control));
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

    /// The wide model's architecture (derived from the small one by the expansion; with a
    /// growth chain, its final shape: the baseline's).
    pub fn large_model(&self) -> Result<GptConfig, hyperclone_cloning::CloneError> {
        let links = self.chain().map_err(|(_, e)| e)?;
        let mut c = links.last().expect("a chain has a link").model.clone();
        c.dropout = self.large.dropout;
        Ok(c)
    }

    /// The `[expand]` section (its defaults when absent).
    pub fn expand_section(&self) -> ExpandOptions {
        self.expand.clone().unwrap_or_default()
    }

    /// Whether the experiment grows through a `[[growth]]` chain of more than one stage (a
    /// chain of one is the single form, with its folders).
    fn multi_stage(&self) -> bool {
        self.growth.len() > 1
    }

    /// The growth chain, in order: one link for the single `[expand]` + `[large.cloned]` form,
    /// one per `[[growth]]` table otherwise. `Err((key, error))` when an expansion does not fit
    /// the model it grows.
    pub fn chain(&self) -> Result<Vec<GrowthLink>, (String, hyperclone_cloning::CloneError)> {
        if self.growth.is_empty() {
            let expand = self.expand_section();
            let mut model =
                expand_config(&self.small.model, &expand).map_err(|e| ("expand".to_string(), e))?;
            model.dropout = self.large.dropout;
            return Ok(vec![GrowthLink {
                index: 0,
                expand_dir: "expand".into(),
                train_dir: "large".into(),
                key: "large.cloned".into(),
                expand,
                optimizer_state: self.cloned_optimizer_state(),
                source_model: self.small.model.clone(),
                model,
            }]);
        }
        let multi = self.multi_stage();
        let mut source = self.small.model.clone();
        let mut links = Vec::with_capacity(self.growth.len());
        for (index, stage) in self.growth.iter().enumerate() {
            let key = format!("growth[{index}]");
            let mut model =
                expand_config(&source, &stage.expand).map_err(|e| (format!("{key}.expand"), e))?;
            model.dropout = stage.dropout;
            let (expand_dir, train_dir) = if multi {
                (
                    format!("expand-{}", index + 1),
                    format!("large-{}", index + 1),
                )
            } else {
                ("expand".to_string(), "large".to_string())
            };
            links.push(GrowthLink {
                index,
                expand_dir,
                train_dir,
                key,
                expand: stage.expand.clone(),
                optimizer_state: stage.optimizer_state,
                source_model: std::mem::replace(&mut source, model.clone()),
                model,
            });
        }
        Ok(links)
    }

    /// The expansion settings of `link` for a replica (its own noise seed: the link's seed plus
    /// the replica's).
    pub fn link_expand_options(&self, seeds: &ReplicaSeeds, link: &GrowthLink) -> ExpandOptions {
        ExpandOptions {
            seed: match seeds.replica {
                Some(n) => link.expand.seed.wrapping_add(n),
                None => link.expand.seed,
            },
            ..link.expand.clone()
        }
    }

    /// Training config of `link`'s run: for the single form the cloned run's
    /// ([`ExperimentConfig::cloned_config`]); for a `[[growth]]` stage its own sections, on the
    /// wide seed plus its position (with replicas) or its `run.seed` (without).
    pub fn link_config(&self, seeds: &ReplicaSeeds, link: &GrowthLink) -> TrainConfig {
        let Some(stage) = self.growth.get(link.index) else {
            return self.cloned_config(seeds, link.model.clone());
        };
        TrainConfig {
            model: Some(link.model.clone()),
            data: self.data.clone(),
            optimizer: stage.optimizer.clone(),
            schedule: stage.schedule.clone(),
            run: RunConfig {
                seed: match seeds.replica {
                    Some(_) => seeds.wide + link.index as u64,
                    None => stage.run.seed,
                },
                ..stage.run.clone()
            },
        }
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
                expand: self.expand_section().seed.wrapping_add(n),
            },
            None => ReplicaSeeds {
                replica,
                small: self.small.run.seed,
                wide: self.large.run.seed,
                expand: self.expand_section().seed,
            },
        }
    }

    /// The `[expand]` settings of a replica (its own noise seed).
    pub fn expand_options(&self, seeds: &ReplicaSeeds) -> ExpandOptions {
        ExpandOptions {
            seed: seeds.expand,
            ..self.expand_section()
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
                let width: usize = exp
                    .chain()
                    .unwrap()
                    .iter()
                    .map(|l| l.expand.width_factor)
                    .product();
                assert_eq!(large.d_model, exp.small.model.d_model * width);
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
    fn transfer_through_depth_growth_is_refused_before_anything_trains() {
        let e = tiny(&[
            "large.cloned.optimizer_state=\"transfer\"",
            "expand.depth_factor=2",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("large.cloned.optimizer_state")
                && e.contains("expand.depth_factor = 2")
                && e.contains("fresh"),
            "{e}"
        );
        assert!(
            tiny(&["expand.depth_factor=2"]).is_ok(),
            "fresh state grows depth"
        );
    }

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

    /// `configs/tiny.toml` with its `[expand]` replaced by `chain` (`[[growth]]` tables).
    fn tiny_chain(chain: &str, overrides: &[&str]) -> Result<ExperimentConfig, ConfigFileError> {
        let text = std::fs::read_to_string(configs_dir().join("tiny.toml")).unwrap();
        let start = text.find("[expand]").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        let rest = format!("{}{}", &text[..start], &text[end..]);
        // A bare key (`growth = []`) belongs before the first table header.
        let text = if chain.trim_start().starts_with('[') {
            format!("{rest}\n{chain}")
        } else {
            format!("{chain}\n{rest}")
        };
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        ExperimentConfig::from_toml_str(&text, Path::new("chain.toml"), &o)
    }

    const TWO_STAGES: &str = r#"
[[growth]]
[growth.expand]
width_factor = 2
ffn_factor = 2
variant = "noisy-symmetric"
snr_db = 10.0
[growth.run]
max_steps = 20

[[growth]]
optimizer_state = "transfer"
[growth.expand]
width_factor = 2
ffn_factor = 1
seed = 5
[growth.optimizer]
lr = 5e-4
"#;

    /// A chain of two: the folders, the shapes, what each stage inherits from `[large.*]`
    /// (the budget as a group), the seeds, and the resolved file reading back the same.
    #[test]
    fn a_growth_chain_grows_stage_by_stage_and_inherits_from_large() {
        let exp = tiny_chain(TWO_STAGES, &[]).unwrap();
        let links = exp.chain().unwrap();
        let dirs: Vec<(&str, &str)> = links
            .iter()
            .map(|l| (l.expand_dir.as_str(), l.train_dir.as_str()))
            .collect();
        assert_eq!(dirs, [("expand-1", "large-1"), ("expand-2", "large-2")]);
        // 32 → 64 → 128 wide; the FFN 64 → 128 → 128 (the second stage keeps its factor 1).
        assert_eq!(links[0].source_model, exp.small.model);
        assert_eq!((links[0].model.d_model, links[0].model.d_ff), (64, 128));
        assert_eq!(links[1].source_model, links[0].model);
        assert_eq!((links[1].model.d_model, links[1].model.d_ff), (128, 128));
        // The baseline has the final shape.
        let large = exp.large_model().unwrap();
        assert_eq!(large, links[1].model);
        let seeds = exp.replica_seeds(None);
        assert_eq!(exp.baseline_config(&seeds, large).run.max_steps, Some(40));

        let first = exp.link_config(&seeds, &links[0]);
        let second = exp.link_config(&seeds, &links[1]);
        // Stage 1 names max_steps; stage 2 inherits [large.run]'s budget.
        assert_eq!(first.run.max_steps, Some(20));
        assert_eq!(second.run.max_steps, exp.large.run.max_steps);
        // Everything not named comes from [large.*].
        assert_eq!(first.run.batch_size, exp.large.run.batch_size);
        assert_eq!(first.optimizer, exp.large.optimizer);
        assert_eq!(second.optimizer.lr, 5e-4);
        assert_eq!(
            second.optimizer.weight_decay,
            exp.large.optimizer.weight_decay
        );
        assert_eq!(second.schedule, exp.large.schedule);
        assert_eq!(links[0].optimizer_state, ClonedOptimizerState::Fresh);
        assert_eq!(links[1].optimizer_state, ClonedOptimizerState::Transfer);
        // Data seeds: [large.run] seed + position without replicas, the wide seed + position
        // with; the expansion's noise adds the replica's seed.
        assert_eq!(
            (first.run.seed, second.run.seed),
            (exp.large.run.seed, exp.large.run.seed + 1)
        );
        let r = exp.replica_seeds(Some(3));
        assert_eq!(exp.link_config(&r, &links[0]).run.seed, 1003);
        assert_eq!(exp.link_config(&r, &links[1]).run.seed, 1004);
        assert_eq!(exp.link_expand_options(&r, &links[1]).seed, 8);
        assert_eq!(exp.link_expand_options(&seeds, &links[1]).seed, 5);
        // The resolved file spells the chain out and reads back the same.
        let text = exp.to_toml();
        assert!(!text.contains("[expand]"), "{text}");
        let again =
            ExperimentConfig::from_toml_str(&text, Path::new("resolved.toml"), &[]).unwrap();
        assert_eq!(again, exp);
        // A stage's key can be overridden from the command line.
        let exp = tiny_chain(TWO_STAGES, &["growth[1].run.max_steps=7"]).unwrap();
        assert_eq!(exp.growth[1].run.max_steps, Some(7));
        assert_eq!(exp.growth[0].run.max_steps, Some(20));
        // The control still spends what the baseline (of the final shape) spends beyond the
        // small run.
        let exp = tiny_chain(TWO_STAGES, &["control.enabled=true"]).unwrap();
        let control = exp.control_config(&r).unwrap();
        let per_step =
            exp.small.model.flops_per_token(control.run.seq_len) * control.tokens_per_step() as f64;
        let spent = exp.small_flops().unwrap() + control.run.max_steps.unwrap() as f64 * per_step;
        let baseline = exp.baseline_flops().unwrap();
        assert!(spent <= baseline && baseline - spent < per_step);
    }

    /// A chain of one stage is the single `[expand]` + `[large.cloned]` form: the same link,
    /// folders and training config, so the same stages.
    #[test]
    fn a_one_stage_chain_is_the_single_form() {
        let single = tiny(&[
            "large.cloned.optimizer.lr=5e-4",
            "large.cloned.optimizer_state=\"transfer\"",
        ])
        .unwrap();
        let chain = tiny_chain(
            r#"
[[growth]]
optimizer_state = "transfer"
[growth.expand]
width_factor = 2
ffn_factor = 2
variant = "noisy-symmetric"
snr_db = 10.0
seed = 0
[growth.optimizer]
lr = 5e-4
"#,
            &[],
        )
        .unwrap();
        let (a, b) = (single.chain().unwrap(), chain.chain().unwrap());
        assert_eq!((a.len(), b.len()), (1, 1));
        assert_eq!(
            GrowthLink {
                key: String::new(),
                ..a[0].clone()
            },
            GrowthLink {
                key: String::new(),
                ..b[0].clone()
            }
        );
        assert_eq!(
            (b[0].expand_dir.as_str(), b[0].train_dir.as_str()),
            ("expand", "large")
        );
        for replica in [None, Some(2)] {
            let (sa, sb) = (single.replica_seeds(replica), chain.replica_seeds(replica));
            assert_eq!(
                single.link_config(&sa, &a[0]),
                chain.link_config(&sb, &b[0])
            );
            assert_eq!(
                single.link_expand_options(&sa, &a[0]),
                chain.link_expand_options(&sb, &b[0])
            );
            assert_eq!(
                single.link_expand_options(&sa, &a[0]),
                single.expand_options(&sa)
            );
        }
        assert_eq!(single.large_model().unwrap(), chain.large_model().unwrap());
    }

    /// Malformed chains are refused at load, naming the key and the value.
    #[test]
    fn malformed_chains_are_refused_naming_the_key() {
        let err =
            |chain: &str, overrides: &[&str]| tiny_chain(chain, overrides).unwrap_err().to_string();
        let e = err("growth = []", &[]);
        assert!(e.contains("growth") && e.contains("empty chain"), "{e}");
        let e = err(TWO_STAGES, &["expand.width_factor=2"]);
        assert!(e.contains("key `expand`") || e.contains("expand"), "{e}");
        assert!(e.contains("[[growth]]"), "{e}");
        let e = err(TWO_STAGES, &["large.cloned.optimizer.lr=1e-3"]);
        assert!(
            e.contains("large.cloned") && e.contains("[[growth]]"),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[1].run.max_steps=0"]);
        assert!(
            e.contains("growth[1].run.max_steps") && e.contains('0'),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[0].run.batch_size=0"]);
        assert!(e.contains("growth[0].run.batch_size"), "{e}");
        let e = err(TWO_STAGES, &["growth[1].optimizer.lr=-1"]);
        assert!(
            e.contains("growth[1].optimizer.lr") && e.contains("-1"),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[1].expand.width_factor=0"]);
        assert!(
            e.contains("growth[1].expand") && e.contains("width_factor"),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[0].run.seq_len=4096"]);
        assert!(
            e.contains("growth[0].run.seq_len") && e.contains("4096"),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[0].run.max_stepz=3"]);
        assert!(
            e.contains("growth[0].run") && e.contains("max_stepz"),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[1].optimizer_state=\"warm\""]);
        assert!(
            e.contains("growth[1].optimizer_state") && e.contains("warm"),
            "{e}"
        );
        let e = err(TWO_STAGES, &["growth[1].run.precision=\"bf16\""]);
        assert!(e.contains("growth[1].run.backend"), "{e}");
        let e = err(TWO_STAGES, &["growth[5].run.max_steps=3"]);
        assert!(
            e.contains("growth[5]") && e.contains("growth[0] to growth[1]"),
            "{e}"
        );
        let e = err("[[growth]]\n[growth.run]\nmax_steps = 3\n", &[]);
        assert!(e.contains("growth[0]") && e.contains("expand"), "{e}");
        let e = tiny(&["growth[0].run.max_steps=3"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("growth[0]") && e.contains("no [[growth]]"),
            "{e}"
        );
    }

    #[test]
    fn replicas_have_their_own_seeds() {
        let exp = tiny(&[]).unwrap();
        let single = exp.replica_seeds(None);
        assert_eq!(
            (single.small, single.wide, single.expand),
            (
                exp.small.run.seed,
                exp.large.run.seed,
                exp.expand_section().seed
            )
        );
        let r = exp.replica_seeds(Some(2));
        let expand_seed = exp.expand_section().seed;
        assert_eq!((r.small, r.wide, r.expand), (2, 1002, expand_seed + 2));
        assert_eq!(exp.small_config(&r).run.seed, 2);
        assert_eq!(exp.expand_options(&r).seed, expand_seed + 2);
    }
}
