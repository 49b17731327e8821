//! Builds the report: the plots ([`charts`]), the tables ([`tables`]), the verdict
//! ([`verdict`]) and the document that puts them in order ([`document`]).

mod charts;
mod document;
mod tables;
mod verdict;

pub use charts::build_plots;
pub use document::{document, SECTIONS};
pub use verdict::verdict;

use crate::analysis::{SeedAnalysis, StageStats};
use crate::inputs::{SeedRun, Stage, StageKind};

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
