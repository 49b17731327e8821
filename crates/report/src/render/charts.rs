//! The plots: validation loss on the three cost axes, training loss, symmetry.

use std::path::Path;

use super::{role_label, stage_of};
use crate::analysis::{curve, eval_points, spread, Axis, SeedAnalysis};
use crate::error::ReportError;
use crate::inputs::{Experiment, StageKind};
use crate::plot::{render, ChartSpec, Dash, HLine, PlotFiles, Series};

const BASELINE: (u8, u8, u8) = (31, 119, 180);
const LARGE: (u8, u8, u8) = (255, 127, 14);
const TOTAL: (u8, u8, u8) = (214, 39, 40);
const SMALL: (u8, u8, u8) = (44, 160, 44);
const CONTROL: (u8, u8, u8) = (148, 103, 189);
const TARGET: (u8, u8, u8) = (110, 110, 110);
const LAYER: (u8, u8, u8) = (175, 175, 215);
/// Earlier links of a growth chain (drawn cumulatively, before the last link's total curve).
const CHAIN: (u8, u8, u8) = (140, 86, 75);

/// The plots of the report, in the order they appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    /// Val loss vs device-hours (the main plot).
    ValLossHours,
    /// Val loss vs FLOPs.
    ValLossFlops,
    /// Val loss vs tokens.
    ValLossTokens,
    /// Training loss vs tokens.
    TrainLoss,
    /// Symmetry metric of the cloned run.
    Symmetry,
}

impl PlotKind {
    /// File stem under `plots/`.
    pub fn stem(self) -> &'static str {
        match self {
            PlotKind::ValLossHours => "val_loss_vs_device_hours",
            PlotKind::ValLossFlops => "val_loss_vs_flops",
            PlotKind::ValLossTokens => "val_loss_vs_tokens",
            PlotKind::TrainLoss => "train_loss_vs_tokens",
            PlotKind::Symmetry => "symmetry",
        }
    }

    pub(crate) fn caption(self) -> &'static str {
        match self {
            PlotKind::ValLossHours => "Validation loss vs device-hours",
            PlotKind::ValLossFlops => "Validation loss vs training FLOPs",
            PlotKind::ValLossTokens => "Validation loss vs tokens",
            PlotKind::TrainLoss => "Training loss vs tokens (moving average)",
            PlotKind::Symmetry => {
                "Symmetry of the cloned run (mean cosine similarity between cloned sub-blocks)"
            }
        }
    }
}

/// One plot written to disk.
#[derive(Debug, Clone)]
pub struct Plot {
    /// Which plot.
    pub kind: PlotKind,
    /// Its files.
    pub files: PlotFiles,
}

fn val_chart(exp: &Experiment, analyses: &[SeedAnalysis], axis: Axis) -> ChartSpec {
    let n = exp.seeds.len();
    let (x_label, title, log_x, focus) = match axis {
        Axis::DeviceHours => (
            "device-hours",
            "Validation loss vs device-hours",
            false,
            0.05,
        ),
        Axis::Flops => (
            "training FLOPs",
            "Validation loss vs training FLOPs",
            false,
            0.05,
        ),
        _ => (
            "tokens (log scale)",
            "Validation loss vs tokens",
            true,
            0.25,
        ),
    };
    let shifted = matches!(axis, Axis::DeviceHours | Axis::Flops);
    let mut series = Vec::new();
    for (i, (run, a)) in exp.seeds.iter().zip(analyses).enumerate() {
        let first = i == 0;
        let points_of = |kind| {
            stage_of(run, kind)
                .and_then(|s| s.metrics.as_ref())
                .map(|m| curve(&eval_points(m), axis))
                .unwrap_or_default()
        };
        let label = |text: &str| first.then(|| role_label(text, n));
        let small = points_of(StageKind::Small);
        if !small.is_empty() {
            series.push(Series {
                label: label("small model"),
                color: SMALL,
                dash: Dash::Solid,
                width: 2,
                markers: true,
                points: small,
            });
        }
        let baseline = points_of(StageKind::Baseline);
        if !baseline.is_empty() {
            series.push(Series {
                label: label("baseline (random init)"),
                color: BASELINE,
                dash: Dash::Solid,
                width: 3,
                markers: true,
                points: baseline,
            });
        }
        // The earlier links of a growth chain, on the cumulative cost of the route: each starts
        // where the one before ended (plus its expansion).
        let chained = a.chain.len() > 1;
        if shifted && chained {
            for (link, stage) in a.chain.iter().zip(&run.chain).rev().skip(1).rev() {
                let before = match axis {
                    Axis::DeviceHours => link.hours_before,
                    _ => link.flops_before,
                };
                let points = stage
                    .run
                    .as_ref()
                    .and_then(|s| s.metrics.as_ref())
                    .map(|m| curve(&eval_points(m), axis))
                    .unwrap_or_default();
                let (Some(before), false) = (before, points.is_empty()) else {
                    continue;
                };
                series.push(Series {
                    label: label(&format!(
                        "growth stage {} ({}), cumulative",
                        link.index, link.train_dir
                    )),
                    color: CHAIN,
                    dash: Dash::Dashed,
                    width: 2,
                    markers: true,
                    points: points.iter().map(|&(x, y)| (x + before, y)).collect(),
                });
            }
        }
        let large = points_of(StageKind::Large);
        if !large.is_empty() {
            let prefix = match axis {
                Axis::DeviceHours => a.prefix_hours,
                Axis::Flops => a.prefix_flops,
                _ => None,
            };
            if let (true, Some(prefix)) = (shifted, prefix) {
                series.push(Series {
                    label: label(if chained {
                        "cloned, last growth stage, total (+ small run + earlier stages + \
                         expansions)"
                    } else {
                        "cloned, total (+ small run + expansion)"
                    }),
                    color: TOTAL,
                    dash: Dash::Dashed,
                    width: 3,
                    markers: true,
                    points: large.iter().map(|&(x, y)| (x + prefix, y)).collect(),
                });
            }
            series.push(Series {
                label: label(if shifted {
                    "cloned, large-only (from zero)"
                } else {
                    "cloned (large)"
                }),
                color: LARGE,
                dash: Dash::Solid,
                width: 3,
                markers: true,
                points: large,
            });
        }
        // The control continues the small run, so it is drawn from where the small run ended.
        let control = points_of(StageKind::Control);
        let small_end = a.small.as_ref().and_then(|s| match axis {
            Axis::DeviceHours => s.device_hours,
            Axis::Flops => s.flops,
            Axis::Tokens => s.tokens.map(|t| t as f64),
            Axis::Step => s.steps.map(|t| t as f64),
        });
        if let (false, Some(offset)) = (control.is_empty(), small_end) {
            series.push(Series {
                label: label("control: small model continued"),
                color: CONTROL,
                dash: Dash::Dashed,
                width: 2,
                markers: true,
                points: control.iter().map(|&(x, y)| (x + offset, y)).collect(),
            });
        }
    }
    let finals: Vec<f64> = analyses
        .iter()
        .filter_map(|a| a.final_target().map(|t| t.target_loss))
        .collect();
    let hlines = spread(&finals)
        .map(|s| HLine {
            y: s.mean,
            label: if n > 1 {
                "baseline's final val loss (mean)".to_string()
            } else {
                "baseline's final val loss".to_string()
            },
            color: TARGET,
        })
        .into_iter()
        .collect();
    ChartSpec {
        title: title.to_string(),
        x_label: x_label.to_string(),
        y_label: "validation loss (nats/token)".to_string(),
        log_x,
        y_focus: Some(focus),
        series,
        hlines,
    }
}

/// A centred moving average over up to `2·half + 1` points; the window shrinks near both ends
/// so that the first and last points are not pulled towards their neighbours on one side.
fn moving_average(points: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    let n = points.len();
    (0..n)
        .map(|i| {
            let h = half.min(i).min(n - 1 - i);
            let window = &points[i - h..=i + h];
            let mean = window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64;
            (points[i].0, mean)
        })
        .collect()
}

/// Keeps at most about `max` evenly spaced points (always the last one), so that plots of
/// long runs stay small.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = points.last().copied();
    let mut out: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    if out.last().copied() != last {
        out.extend(last);
    }
    out
}

fn train_chart(exp: &Experiment) -> (ChartSpec, usize) {
    let n = exp.seeds.len();
    let mut series = Vec::new();
    let mut window_used = 1;
    for (i, run) in exp.seeds.iter().enumerate() {
        for (kind, color, text) in [
            (StageKind::Small, SMALL, "small model"),
            (StageKind::Baseline, BASELINE, "baseline (random init)"),
            (StageKind::Large, LARGE, "cloned (large)"),
            (StageKind::Control, CONTROL, "control (small, continued)"),
        ] {
            let Some(m) = stage_of(run, kind).and_then(|s| s.metrics.as_ref()) else {
                continue;
            };
            // The control continues the small run: its tokens follow the small run's.
            let offset = match kind {
                StageKind::Control => stage_of(run, StageKind::Small)
                    .and_then(|s| s.metrics.as_ref()?.total_tokens())
                    .unwrap_or(0) as f64,
                _ => 0.0,
            };
            let raw: Vec<(f64, f64)> = m
                .train
                .iter()
                .filter_map(|r| Some((r.tokens? as f64 + offset, r.loss?)))
                .filter(|p| p.1.is_finite())
                .collect();
            if raw.is_empty() {
                continue;
            }
            let half = raw.len() / 100;
            window_used = window_used.max(2 * half + 1);
            series.push(Series {
                label: (i == 0).then(|| role_label(text, n)),
                color,
                dash: Dash::Solid,
                width: 2,
                markers: false,
                points: thin(moving_average(&raw, half), 2000),
            });
        }
    }
    (
        ChartSpec {
            title: "Training loss vs tokens".to_string(),
            x_label: "tokens (log scale)".to_string(),
            y_label: "training loss (moving average)".to_string(),
            log_x: true,
            y_focus: Some(0.25),
            series,
            hlines: Vec::new(),
        },
        window_used,
    )
}

fn symmetry_chart(exp: &Experiment, analyses: &[SeedAnalysis]) -> ChartSpec {
    let n = exp.seeds.len();
    let use_tokens = analyses
        .iter()
        .all(|a| a.symmetry.iter().all(|p| p.tokens.is_some()));
    let mut series = Vec::new();
    for (i, a) in analyses.iter().enumerate() {
        let x = |p: &crate::analysis::SymmetryPoint| {
            if use_tokens {
                p.tokens.unwrap_or(0.0)
            } else {
                p.step as f64
            }
        };
        let layers = a
            .symmetry
            .iter()
            .map(|p| p.per_layer.len())
            .max()
            .unwrap_or(0);
        for layer in 0..layers {
            series.push(Series {
                label: (i == 0 && layer == 0).then(|| "per layer".to_string()),
                color: LAYER,
                dash: Dash::Solid,
                width: 1,
                markers: false,
                points: a
                    .symmetry
                    .iter()
                    .filter_map(|p| Some((x(p), *p.per_layer.get(layer)?)))
                    .collect(),
            });
        }
        series.push(Series {
            label: (i == 0).then(|| role_label("mean over layers", n)),
            color: LARGE,
            dash: Dash::Solid,
            width: 3,
            markers: true,
            points: a.symmetry.iter().map(|p| (x(p), p.mean)).collect(),
        });
    }
    ChartSpec {
        title: "Symmetry of the cloned run".to_string(),
        x_label: if use_tokens { "tokens" } else { "step" }.to_string(),
        y_label: "cosine similarity between clones".to_string(),
        log_x: false,
        y_focus: None,
        series,
        hlines: Vec::new(),
    }
}

/// Draws every plot that has data into `plots_dir`.
pub fn build_plots(
    exp: &Experiment,
    analyses: &[SeedAnalysis],
    plots_dir: &Path,
) -> Result<(Vec<Plot>, usize), ReportError> {
    let mut plots = Vec::new();
    let mut add = |kind: PlotKind, spec: ChartSpec| -> Result<(), ReportError> {
        if spec.series.iter().any(|s| !s.points.is_empty()) {
            tracing::debug!(plot = kind.stem(), "drawing plot");
            let files = render(&spec, plots_dir, kind.stem())?;
            plots.push(Plot { kind, files });
        }
        Ok(())
    };
    add(
        PlotKind::ValLossHours,
        val_chart(exp, analyses, Axis::DeviceHours),
    )?;
    add(
        PlotKind::ValLossFlops,
        val_chart(exp, analyses, Axis::Flops),
    )?;
    add(
        PlotKind::ValLossTokens,
        val_chart(exp, analyses, Axis::Tokens),
    )?;
    let (train, window) = train_chart(exp);
    add(PlotKind::TrainLoss, train)?;
    add(PlotKind::Symmetry, symmetry_chart(exp, analyses))?;
    Ok((plots, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_is_centred_and_shrinks_at_the_ends() {
        let pts = [(1.0, 1.0), (2.0, 3.0), (3.0, 8.0), (4.0, 7.0), (5.0, 9.0)];
        let avg = moving_average(&pts, 1);
        assert_eq!(
            avg,
            vec![(1.0, 1.0), (2.0, 4.0), (3.0, 6.0), (4.0, 8.0), (5.0, 9.0)]
        );
        assert_eq!(moving_average(&pts, 0), pts.to_vec());
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn thinning_keeps_the_ends() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 0.0)).collect();
        let t = thin(pts.clone(), 4);
        assert_eq!(
            t.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![0.0, 3.0, 6.0, 9.0]
        );
        assert_eq!(thin(pts.clone(), 20), pts);
    }
}
