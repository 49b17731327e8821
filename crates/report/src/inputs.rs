//! Loading an experiment directory: stage run directories, `run_info.json`, `expand.json`
//! and the configs, for one seed (`<exp>/small`, ...) or several (`<exp>/seed-<N>/small`, ...).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::ReportError;
use hyperclone_runfiles::{read_metrics, ExpandRecord, Metrics, RunInfo};

/// `expand/expand.json` as the report reads it: the record, and every key of the file verbatim
/// (a key this version does not know is still shown).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpandInfo {
    /// The known fields.
    pub record: ExpandRecord,
    /// Every key of the file, including those not in [`ExpandRecord`].
    pub raw: serde_json::Map<String, serde_json::Value>,
}

/// Which stage of the experiment a run directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StageKind {
    /// The small model's training.
    Small,
    /// The large model initialised from the expanded checkpoint (the cloned run).
    Large,
    /// The large model from random initialisation.
    Baseline,
    /// The small model trained on from its final weights (the continued-small control).
    Control,
}

impl StageKind {
    /// The directory name of the stage.
    pub fn dir_name(self) -> &'static str {
        match self {
            StageKind::Small => "small",
            StageKind::Large => "large",
            StageKind::Baseline => "baseline",
            StageKind::Control => "control",
        }
    }

    /// How the stage is called in the report.
    pub fn title(self) -> &'static str {
        match self {
            StageKind::Small => "small",
            StageKind::Large => "cloned (large)",
            StageKind::Baseline => "baseline",
            StageKind::Control => "control (small, continued)",
        }
    }

    /// Every training stage, in the order of the report's tables.
    pub const ALL: [StageKind; 4] = [
        StageKind::Small,
        StageKind::Large,
        StageKind::Baseline,
        StageKind::Control,
    ];
}

/// One training stage's run directory as found on disk.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Which stage.
    pub kind: StageKind,
    /// Its run directory.
    pub dir: PathBuf,
    /// Deduplicated metrics, `None` when `metrics.jsonl` does not exist yet.
    pub metrics: Option<Metrics>,
    /// `run_info.json`, `None` when absent.
    pub run_info: Option<RunInfo>,
    /// The text of the resolved `config.toml`, `None` when absent.
    pub config_text: Option<String>,
}

/// One link of the growth chain as found on disk: its expansion and the run trained from it.
/// The single-growth layout (`expand/`, `large/`) is a chain of one link.
#[derive(Debug, Clone)]
pub struct ChainLink {
    /// 1-based position in the chain.
    pub index: usize,
    /// Folder name of the expansion (`expand`, `expand-2`).
    pub expand_dir: String,
    /// Folder name of the training run (`large`, `large-2`).
    pub train_dir: String,
    /// The expansion summary.
    pub expand: Option<ExpandInfo>,
    /// The grown model's training run.
    pub run: Option<Stage>,
}

/// The stages of one seed.
#[derive(Debug, Clone)]
pub struct SeedRun {
    /// "seed 3", or "single seed" for the single-seed layout.
    pub label: String,
    /// The seed number from the `seed-<N>` directory name (or the runs' `run_info.json`).
    pub seed: Option<u64>,
    /// The directory holding the stage directories.
    pub dir: PathBuf,
    /// The small model's training run.
    pub small: Option<Stage>,
    /// The expansion summary (of the last link of a growth chain).
    pub expand: Option<ExpandInfo>,
    /// The cloned large run (the last link of a growth chain: the final shape).
    pub large: Option<Stage>,
    /// Every link of the growth chain, in order (one for the single `expand/` + `large/`
    /// layout, none when neither exists); the last is `expand` and `large`.
    pub chain: Vec<ChainLink>,
    /// The random-init baseline run.
    pub baseline: Option<Stage>,
    /// The continued-small control run.
    pub control: Option<Stage>,
}

impl SeedRun {
    /// The stage of the given kind, if its directory exists.
    pub fn stage(&self, kind: StageKind) -> Option<&Stage> {
        match kind {
            StageKind::Small => self.small.as_ref(),
            StageKind::Large => self.large.as_ref(),
            StageKind::Baseline => self.baseline.as_ref(),
            StageKind::Control => self.control.as_ref(),
        }
    }
}

/// An experiment directory as found on disk.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The experiment directory.
    pub dir: PathBuf,
    /// Its name: `experiment.name` from `experiment.toml`, else the directory's file name.
    pub name: String,
    /// The text of `experiment.toml`, `None` when absent.
    pub experiment_toml: Option<String>,
    /// Whether the `seed-<N>/` layout is used.
    pub multi_seed: bool,
    /// One entry per seed, ascending by seed.
    pub seeds: Vec<SeedRun>,
}

const STAGE_DIRS: [&str; 5] = ["small", "expand", "large", "baseline", "control"];

/// Loads every stage of an experiment directory.
pub fn load_experiment(dir: &Path) -> Result<Experiment, ReportError> {
    let meta = std::fs::metadata(dir).map_err(|e| ReportError::io("reading", dir, e))?;
    if !meta.is_dir() {
        return Err(ReportError::NotAnExperiment {
            dir: dir.to_path_buf(),
        });
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let experiment_toml = read_optional_text(&dir.join("experiment.toml"))?;
    let resolved = experiment_toml
        .as_deref()
        .and_then(|text| text.parse::<toml::Table>().ok());
    // The experiment's own name when its resolved config gives one, else the folder's.
    let name = resolved
        .as_ref()
        .and_then(|t| Some(t.get("experiment")?.get("name")?.as_str()?.to_string()))
        .unwrap_or(name);
    // The growth chain's planned length, so that a report written while an earlier stage is
    // still training does not take that stage for the last one (the cloned run).
    let planned = resolved
        .as_ref()
        .and_then(|t| t.get("growth")?.as_array().map(|a| a.len()))
        .unwrap_or(0);

    let single = STAGE_DIRS
        .iter()
        .chain(&["expand-1", "large-1"])
        .any(|s| dir.join(s).is_dir());
    let (multi_seed, seeds) = if single {
        (
            false,
            vec![load_seed(dir, "single seed".to_string(), None, planned)?],
        )
    } else {
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| ReportError::io("listing", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ReportError::io("listing", dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            let Some(number) = name.strip_prefix("seed-") else {
                continue;
            };
            let Ok(seed) = number.parse::<u64>() else {
                continue;
            };
            if entry.path().is_dir() {
                found.push((seed, entry.path()));
            }
        }
        found.sort();
        let mut seeds = Vec::with_capacity(found.len());
        for (seed, path) in found {
            seeds.push(load_seed(
                &path,
                format!("seed {seed}"),
                Some(seed),
                planned,
            )?);
        }
        (true, seeds)
    };
    if seeds.is_empty() {
        return Err(ReportError::NotAnExperiment {
            dir: dir.to_path_buf(),
        });
    }
    Ok(Experiment {
        dir: dir.to_path_buf(),
        name,
        experiment_toml,
        multi_seed,
        seeds,
    })
}

/// The number of links of a growth chain in `dir`: the largest K of its `expand-K/` and
/// `large-K/` folders (0: the single-growth layout, or none).
fn chain_length(dir: &Path) -> Result<usize, ReportError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReportError::io("listing", dir, e))?;
    let mut longest = 0;
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let k = ["expand-", "large-"]
            .iter()
            .find_map(|prefix| name.strip_prefix(prefix)?.parse::<usize>().ok());
        if let (Some(k), true) = (k, entry.path().is_dir()) {
            longest = longest.max(k);
        }
    }
    Ok(longest)
}

fn load_expand(seed_dir: &Path, name: &str) -> Result<Option<ExpandInfo>, ReportError> {
    let path = seed_dir.join(name).join("expand.json");
    match read_optional_text(&path)? {
        Some(text) => Ok(Some(parse_expand(&text, &path)?)),
        None => Ok(None),
    }
}

/// Loads the stages of one seed; `planned` is the number of `[[growth]]` stages the resolved
/// config names (0 without one).
fn load_seed(
    dir: &Path,
    label: String,
    seed: Option<u64>,
    planned: usize,
) -> Result<SeedRun, ReportError> {
    let small = load_stage(dir, StageKind::Small)?;
    let baseline = load_stage(dir, StageKind::Baseline)?;
    let control = load_stage(dir, StageKind::Control)?;
    // A chain of one `[[growth]]` stage is written as `expand/` + `large/`.
    let planned = if planned > 1 { planned } else { 0 };
    let links = chain_length(dir)?.max(planned);
    let names: Vec<(usize, String, String)> = match links {
        0 => vec![(1, "expand".to_string(), "large".to_string())],
        n => (1..=n)
            .map(|k| (k, format!("expand-{k}"), format!("large-{k}")))
            .collect(),
    };
    let mut chain = Vec::with_capacity(names.len());
    for (index, expand_dir, train_dir) in names {
        chain.push(ChainLink {
            index,
            expand: load_expand(dir, &expand_dir)?,
            run: load_stage_dir(&dir.join(&train_dir), StageKind::Large)?,
            expand_dir,
            train_dir,
        });
    }
    // A single-growth layout that has neither folder yet has no chain. (A growth chain keeps
    // a link whose folders are missing: its cost is unknown, not zero.)
    if links == 0 {
        chain.retain(|l| l.expand.is_some() || l.run.is_some());
    }
    let last = chain.last();
    let expand = last.and_then(|l| l.expand.clone());
    let large = last.and_then(|l| l.run.clone());
    let seed = seed.or_else(|| {
        [&small, &large, &baseline]
            .iter()
            .filter_map(|s| s.as_ref()?.run_info.as_ref()?.seed)
            .next()
    });
    Ok(SeedRun {
        label,
        seed,
        dir: dir.to_path_buf(),
        small,
        expand,
        large,
        chain,
        baseline,
        control,
    })
}

fn load_stage(seed_dir: &Path, kind: StageKind) -> Result<Option<Stage>, ReportError> {
    load_stage_dir(&seed_dir.join(kind.dir_name()), kind)
}

fn load_stage_dir(dir: &Path, kind: StageKind) -> Result<Option<Stage>, ReportError> {
    let dir = dir.to_path_buf();
    if !dir.is_dir() {
        return Ok(None);
    }
    let metrics_path = dir.join("metrics.jsonl");
    let metrics = if metrics_path.is_file() {
        Some(read_metrics(&metrics_path)?)
    } else {
        None
    };
    let info_path = dir.join("run_info.json");
    let run_info =
        match read_optional_text(&info_path)? {
            Some(text) => Some(serde_json::from_str::<RunInfo>(&text).map_err(|source| {
                ReportError::Json {
                    path: info_path.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let config_text = read_optional_text(&dir.join("config.toml"))?;
    Ok(Some(Stage {
        kind,
        dir,
        metrics,
        run_info,
        config_text,
    }))
}

fn parse_expand(text: &str, path: &Path) -> Result<ExpandInfo, ReportError> {
    let json_err = |source| ReportError::Json {
        path: path.to_path_buf(),
        source,
    };
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(json_err)?;
    let record: ExpandRecord =
        serde_json::from_value(serde_json::Value::Object(raw.clone())).map_err(json_err)?;
    Ok(ExpandInfo { record, raw })
}

/// Reads a text file; `Ok(None)` when it does not exist.
fn read_optional_text(path: &Path) -> Result<Option<String>, ReportError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReportError::io("reading", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand_json_keeps_unknown_keys_and_tolerates_missing_ones() {
        let info = parse_expand(
            r#"{"width_factor":2,"variant":"symmetric","snr_db":20.0}"#,
            Path::new("expand.json"),
        )
        .unwrap();
        assert_eq!(info.record.width_factor, Some(2));
        assert_eq!(info.record.kl, None);
        assert!(info.raw.contains_key("snr_db"));
        assert_eq!(info.record.cost_hours(), None);
        let info = parse_expand(r#"{"wall_s":36.0}"#, Path::new("expand.json")).unwrap();
        assert!((info.record.cost_hours().unwrap() - 0.01).abs() < 1e-12);
    }

    #[test]
    fn bad_expand_json_names_the_file() {
        let err =
            parse_expand(r#"{"width_factor":"two"}"#, Path::new("x/expand.json")).unwrap_err();
        assert!(err.to_string().contains("x/expand.json"), "{err}");
    }

    #[test]
    fn empty_directory_is_not_an_experiment() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_experiment(dir.path()).unwrap_err();
        assert!(matches!(err, ReportError::NotAnExperiment { .. }));
    }
}
