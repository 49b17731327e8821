//! The report of a HyperCloning experiment.
//!
//! [`write_report`] reads an experiment directory — `small/`, `expand/expand.json`, `large/`
//! and `baseline/` (or the same under `seed-<N>/` for several seeds) — and writes
//! `report.md`, a self-contained `report.html` and `plots/*.png` + `*.svg`: validation loss
//! against tokens, device-hours and FLOPs, the cost for the cloned run to reach the
//! baseline's val loss with the speedups large-only and total, throughput and hardware, the
//! symmetry metric, the expansion check and the configs.
//!
//! A growth chain (`expand-K/` + `large-K/` for K = 1, 2, ...) is read link by link: its last
//! link is the cloned run, the earlier ones are drawn on the cumulative cost axes and tabled
//! stage by stage, and the total cost counts all of them.
//!
//! The plots use a font embedded in this crate, so no system font is needed.

pub mod analysis;
mod doc;
pub mod error;
mod format;
mod fsutil;
pub mod inputs;
mod plot;
mod render;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use analysis::{Scaling, SeedAnalysis, TargetAggregate, TargetResult};
pub use error::ReportError;
pub use hyperclone_runfiles::{read_metrics, EvalLine, Metrics, SymmetryLine, TrainLine};
pub use render::SECTIONS;

/// The numbers of a written report, for the CLI to print.
#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    /// The experiment directory.
    pub exp_dir: PathBuf,
    /// The Markdown report written.
    pub report_md: PathBuf,
    /// The HTML report written.
    pub report_html: PathBuf,
    /// Every plot file written (PNG and SVG).
    pub plots: Vec<PathBuf>,
    /// Final val loss of the small run (mean over seeds).
    pub final_val_loss_small: Option<f64>,
    /// Final val loss of the cloned large run (mean over seeds).
    pub final_val_loss_large: Option<f64>,
    /// Final val loss of the baseline (mean over seeds).
    pub final_val_loss_baseline: Option<f64>,
    /// Final val loss of the continued-small control (mean over seeds).
    pub final_val_loss_control: Option<f64>,
    /// Growth stages of the cloned route (the longest chain over seeds; 1 for the single
    /// `expand/` + `large/` layout).
    pub growth_stages: usize,
    /// FLOPs of the whole cloned route, small run and every growth stage to its end (mean over
    /// seeds).
    pub route_flops: Option<f64>,
    /// Device-hours of the whole cloned route, every expansion included (mean over seeds).
    pub route_hours: Option<f64>,
    /// Seeds in which the cloned run reached the baseline's final val loss.
    pub final_target_reached: usize,
    /// Seeds in which that target could be formed (cloned and baseline both have evals).
    pub final_target_seeds: usize,
    /// Device-hours speedup to the baseline's final val loss, large-only (mean over seeds);
    /// `None` unless the cloned run reached it in every seed; +∞ when a seed's expanded
    /// checkpoint already met it before training.
    pub speedup_large_only: Option<f64>,
    /// Device-hours speedup to the baseline's final val loss counting the small run and the
    /// expansion (mean over seeds); `None` unless reached in every seed.
    pub speedup_total: Option<f64>,
    /// FLOPs speedup large-only, as `speedup_large_only`.
    pub flops_speedup_large_only: Option<f64>,
    /// FLOPs speedup total, as `speedup_total`.
    pub flops_speedup_total: Option<f64>,
    /// The generated verdict, paragraphs separated by blank lines.
    pub verdict: String,
    /// The small run, the control or an earlier stage of a growth chain reached the baseline's
    /// final val loss at no more cost than the baseline, in some seed: the verdict claims no
    /// speedup for growth (to the final shape).
    pub degenerate: bool,
    /// The cloned run's and the baseline's median step times differ by more than 10 % in some
    /// seed: the device-hour figures are disturbed (the FLOPs figures stand).
    pub timing_disturbed: bool,
    /// Every data-parallel run (more than one peer) and its scaling efficiency; empty when
    /// every run used one device.
    pub scaling: Vec<RunScaling>,
    /// Per-seed details.
    pub seeds: Vec<SeedAnalysis>,
    /// Every target aggregated over seeds.
    pub targets: Vec<TargetAggregate>,
}

/// A data-parallel run of the report and how it scaled.
#[derive(Debug, Clone, Serialize)]
pub struct RunScaling {
    /// The run as the report's tables name it (with the seed when there are several).
    pub run: String,
    /// Its devices, throughput, one-peer reference and efficiency.
    pub scaling: Scaling,
}

impl ReportSummary {
    /// A short plain-text table of the headline numbers: the total cost first, then the
    /// large-only figure, the control and the measurement check.
    pub fn table(&self) -> String {
        let loss = |v: Option<f64>| v.map(format::loss).unwrap_or_else(|| "n/a".into());
        let sp = |s: &Option<analysis::Spread>| {
            s.as_ref()
                .map(format::speedup_spread)
                .unwrap_or_else(|| "not reached".into())
        };
        let mut out = String::new();
        let mut line = |key: &str, value: String| out.push_str(&format!("{key:<34} {value}\n"));
        line("final val loss small", loss(self.final_val_loss_small));
        line(
            "final val loss cloned (large)",
            loss(self.final_val_loss_large),
        );
        line(
            "final val loss baseline",
            loss(self.final_val_loss_baseline),
        );
        if self.final_val_loss_control.is_some() {
            line("final val loss control", loss(self.final_val_loss_control));
        }
        if self.growth_stages > 1 {
            line(
                &format!("cloned route ({} growth stages)", self.growth_stages),
                format!(
                    "FLOPs {}, device-hours {} (whole chain, to its end)",
                    self.route_flops
                        .map(format::flops)
                        .unwrap_or_else(|| "n/a".into()),
                    self.route_hours
                        .map(format::hours)
                        .unwrap_or_else(|| "n/a".into())
                ),
            );
        }
        for t in self.targets.iter().rev() {
            let reached = if t.reached == t.seeds {
                String::new()
            } else {
                format!(" [reached in {} of {} seeds]", t.reached, t.seeds)
            };
            let what = if t.fraction == 1.0 {
                "to the baseline's final val loss".to_string()
            } else {
                format!("to its {:.0} % val loss", t.fraction * 100.0)
            };
            if self.degenerate {
                line(
                    &format!("total cost {what}"),
                    format!(
                        "FLOPs {}, device-hours {} (for this budget only: no growth speedup is \
                         claimed, {} reaches the target at no more cost){reached}",
                        sp(&t.flops_total),
                        sp(&t.hours_total),
                        if self.growth_stages > 1 {
                            "a smaller model (the small one or an earlier growth stage)"
                        } else {
                            "the small model"
                        }
                    ),
                );
            } else {
                line(
                    &format!("speedup total {what}"),
                    format!(
                        "FLOPs {}, device-hours {}{reached}",
                        sp(&t.flops_total),
                        sp(&t.hours_total)
                    ),
                );
                line(
                    "  large-only (small model exists)",
                    format!(
                        "FLOPs {}, device-hours {}",
                        sp(&t.flops_large_only),
                        sp(&t.hours_large_only)
                    ),
                );
            }
        }
        for r in &self.scaling {
            line(
                &format!("scaling efficiency, {}", r.run),
                format!(
                    "{} ({} devices{})",
                    render::efficiency_cell(&r.scaling),
                    r.scaling.devices,
                    if r.scaling.on_cpu {
                        "; CPU peers share the cores: says little about speed"
                    } else {
                        ""
                    }
                ),
            );
        }
        if self.timing_disturbed {
            line(
                "measurement check",
                "FAILED: cloned and baseline step times differ by > 10 %; device-hours disturbed"
                    .into(),
            );
        }
        line("report", self.report_md.display().to_string());
        line("html", self.report_html.display().to_string());
        out
    }
}

fn mean_of(values: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = values.collect();
    analysis::spread(&v).map(|s| s.mean)
}

/// Reads `exp_dir` and writes `report.md`, `report.html` and `plots/` into it (each file
/// atomically; re-running overwrites). Stages that have not run yet are reported as missing.
pub fn write_report(exp_dir: &Path) -> Result<ReportSummary, ReportError> {
    let exp = inputs::load_experiment(exp_dir)?;
    tracing::info!(dir = %exp_dir.display(), seeds = exp.seeds.len(), "writing report");
    let analyses: Vec<SeedAnalysis> = exp.seeds.iter().map(analysis::analyse_seed).collect();
    let aggs = analysis::aggregate_targets(&analyses);

    let plots_dir = exp_dir.join("plots");
    std::fs::create_dir_all(&plots_dir).map_err(|e| ReportError::io("creating", &plots_dir, e))?;
    let (plots, window) = render::build_plots(&exp, &analyses, &plots_dir)?;
    let verdict = render::verdict(&exp, &analyses, &aggs);
    let blocks = render::document(&exp, &analyses, &aggs, &plots, window, &verdict);

    let report_md = exp_dir.join("report.md");
    let report_html = exp_dir.join("report.html");
    fsutil::write_atomic(&report_md, doc::to_markdown(&blocks).as_bytes())?;
    let title = format!("HyperCloning report: {}", exp.name);
    fsutil::write_atomic(&report_html, doc::to_html(&title, &blocks).as_bytes())?;

    let fin = aggs.iter().find(|a| a.fraction == 1.0);
    let all_reached = fin.is_some_and(|f| f.seeds > 0 && f.reached == f.seeds);
    let headline = |pick: fn(&TargetAggregate) -> &Option<analysis::Spread>| {
        fin.filter(|_| all_reached)
            .and_then(|f| pick(f).as_ref())
            .map(|s| {
                if s.infinite > 0 {
                    f64::INFINITY
                } else {
                    s.mean
                }
            })
    };
    let summary = ReportSummary {
        exp_dir: exp_dir.to_path_buf(),
        report_md,
        report_html,
        plots: plots
            .iter()
            .flat_map(|p| [p.files.png.clone(), p.files.svg.clone()])
            .collect(),
        final_val_loss_small: mean_of(
            analyses
                .iter()
                .filter_map(|a| a.small.as_ref()?.final_val_loss),
        ),
        final_val_loss_large: mean_of(
            analyses
                .iter()
                .filter_map(|a| a.large.as_ref()?.final_val_loss),
        ),
        final_val_loss_baseline: mean_of(
            analyses
                .iter()
                .filter_map(|a| a.baseline.as_ref()?.final_val_loss),
        ),
        final_val_loss_control: mean_of(
            analyses
                .iter()
                .filter_map(|a| a.control.as_ref()?.final_val_loss),
        ),
        growth_stages: analyses.iter().map(|a| a.chain.len()).max().unwrap_or(0),
        route_flops: mean_of(analyses.iter().filter_map(|a| a.route_flops)),
        route_hours: mean_of(analyses.iter().filter_map(|a| a.route_hours)),
        final_target_reached: fin.map_or(0, |f| f.reached),
        final_target_seeds: fin.map_or(0, |f| f.seeds),
        speedup_large_only: headline(|f| &f.hours_large_only),
        speedup_total: headline(|f| &f.hours_total),
        flops_speedup_large_only: headline(|f| &f.flops_large_only),
        flops_speedup_total: headline(|f| &f.flops_total),
        verdict: verdict.text(),
        degenerate: verdict.degenerate,
        timing_disturbed: verdict.disturbed,
        scaling: render::scaling_rows(&exp, &analyses, analyses.len() > 1)
            .into_iter()
            .map(|(run, scaling)| RunScaling { run, scaling })
            .collect(),
        seeds: analyses,
        targets: aggs,
    };
    tracing::info!(report = %summary.report_md.display(), "report written");
    Ok(summary)
}
