//! Builds the report: the plots ([`charts`]), the tables ([`tables`]), the verdict
//! ([`verdict`]) and the document that puts them in order ([`document`]).

mod charts;
mod document;
mod tables;
mod verdict;

pub use charts::build_plots;
pub use document::{document, SECTIONS};
pub(crate) use tables::{efficiency_cell, scaling_rows};
pub use verdict::verdict;

use crate::analysis::{SeedAnalysis, StageStats};
use crate::inputs::{SeedRun, Stage, StageKind};

/// One training run of a seed as the tables list it: every stage kind in order, with the
/// earlier links of a growth chain between the small run and the cloned run.
pub(crate) struct RunRow<'a> {
    /// How the run is called in the tables.
    pub title: String,
    /// Its run directory as found.
    pub stage: &'a Stage,
    /// Its statistics, when the analysis is at hand and it has metrics.
    pub stats: Option<&'a StageStats>,
}

/// The training runs of one seed, in table order (see [`RunRow`]).
pub(crate) fn run_rows<'a>(run: &'a SeedRun, a: Option<&'a SeedAnalysis>) -> Vec<RunRow<'a>> {
    let chained = run.chain.len() > 1;
    let mut rows = Vec::new();
    for kind in StageKind::ALL {
        if kind == StageKind::Large && chained {
            let last = run.chain.len() - 1;
            for (i, link) in run.chain.iter().enumerate() {
                let Some(stage) = link.run.as_ref() else {
                    continue;
                };
                let title = if i == last {
                    format!("cloned, growth stage {} ({})", link.index, link.train_dir)
                } else {
                    format!("growth stage {} ({})", link.index, link.train_dir)
                };
                rows.push(RunRow {
                    title,
                    stage,
                    stats: a.and_then(|a| a.chain.get(i)?.stats.as_ref()),
                });
            }
            continue;
        }
        if let Some(stage) = run.stage(kind) {
            rows.push(RunRow {
                title: kind.title().to_string(),
                stage,
                stats: a.and_then(|a| stage_stats(a, kind)),
            });
        }
    }
    rows
}

pub(crate) fn stage_of(run: &SeedRun, kind: StageKind) -> Option<&Stage> {
    run.stage(kind).filter(|s| s.metrics.is_some())
}

pub(crate) fn role_label(base: &str, n_seeds: usize) -> String {
    if n_seeds > 1 {
        format!("{base} ({n_seeds} seeds)")
    } else {
        base.to_string()
    }
}

pub(crate) fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".to_string())
}

pub(crate) fn stage_stats(a: &SeedAnalysis, kind: StageKind) -> Option<&StageStats> {
    match kind {
        StageKind::Small => a.small.as_ref(),
        StageKind::Large => a.large.as_ref(),
        StageKind::Baseline => a.baseline.as_ref(),
        StageKind::Control => a.control.as_ref(),
    }
}
