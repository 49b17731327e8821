//! Builds the report: the plots and the document (sections, tables, verdict).

use std::path::Path;

use crate::analysis::{
    curve, eval_points, spread, Axis, CostComparison, SeedAnalysis, StageStats, TargetAggregate,
    TargetResult,
};
use crate::doc::Block;
use crate::error::ReportError;
use crate::format as fmt;
use crate::inputs::{Experiment, SeedRun, Stage, StageKind};
use crate::plot::{render, ChartSpec, Dash, HLine, PlotFiles, Series};

/// Section headings of `report.md`, in order (level 2).
pub const SECTIONS: [&str; 10] = [
    "Verdict",
    "Validation loss",
    "Training loss",
    "Cost to reach the baseline's val loss",
    "Final losses",
    "Throughput and hardware",
    "Symmetry of the cloned run",
    "Expansion check",
    "Seeds",
    "Configs",
];

const BASELINE: (u8, u8, u8) = (31, 119, 180);
const LARGE: (u8, u8, u8) = (255, 127, 14);
const TOTAL: (u8, u8, u8) = (214, 39, 40);
const SMALL: (u8, u8, u8) = (44, 160, 44);
const TARGET: (u8, u8, u8) = (110, 110, 110);
const LAYER: (u8, u8, u8) = (175, 175, 215);

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

    fn caption(self) -> &'static str {
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

fn stage_of(run: &SeedRun, kind: StageKind) -> Option<&Stage> {
    run.stage(kind).filter(|s| s.metrics.is_some())
}

fn role_label(base: &str, n_seeds: usize) -> String {
    if n_seeds > 1 {
        format!("{base} ({n_seeds} seeds)")
    } else {
        base.to_string()
    }
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
        let large = points_of(StageKind::Large);
        if !large.is_empty() {
            let prefix = match axis {
                Axis::DeviceHours => a.prefix_hours,
                Axis::Flops => a.prefix_flops,
                _ => None,
            };
            if let (true, Some(prefix)) = (shifted, prefix) {
                series.push(Series {
                    label: label("cloned, total (+ small run + expansion)"),
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
        ] {
            let Some(m) = stage_of(run, kind).and_then(|s| s.metrics.as_ref()) else {
                continue;
            };
            let raw: Vec<(f64, f64)> = m
                .train
                .iter()
                .filter_map(|r| Some((r.tokens? as f64, r.loss?)))
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

fn image(plots: &[Plot], kind: PlotKind) -> Option<Block> {
    let p = plots.iter().find(|p| p.kind == kind)?;
    Some(Block::Image {
        alt: kind.caption().to_string(),
        png: format!("plots/{}.png", kind.stem()),
        svg: format!("plots/{}.svg", kind.stem()),
        png_bytes: p.files.png_bytes.clone(),
    })
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "n/a".to_string())
}

/// The speedup (or its absence) of one comparison, as a table cell.
fn speedup_cell(t: &TargetResult, s: Option<f64>) -> String {
    if !t.cloned_reached {
        "none: not reached".to_string()
    } else {
        opt(s, fmt::speedup)
    }
}

fn cost_cell(t: &TargetResult, v: Option<f64>, f: fn(f64) -> String) -> String {
    if !t.cloned_reached {
        "not reached".to_string()
    } else {
        opt(v, f)
    }
}

fn cost_table(
    analyses: &[SeedAnalysis],
    multi: bool,
    pick: fn(&TargetResult) -> &CostComparison,
    f: fn(f64) -> String,
    with_steps: bool,
) -> Block {
    let mut header = Vec::new();
    if multi {
        header.push("seed".to_string());
    }
    header.extend(
        [
            "target",
            "target val loss",
            "baseline",
            "cloned, large-only",
            "cloned, total",
            "speedup large-only",
            "speedup total",
        ]
        .map(String::from),
    );
    if with_steps {
        header.push("step reached (cloned / baseline)".to_string());
    }
    let mut rows = Vec::new();
    for a in analyses {
        for t in &a.targets {
            let c = pick(t);
            let mut row = Vec::new();
            if multi {
                row.push(a.label.clone());
            }
            row.push(t.label.clone());
            row.push(fmt::loss(t.target_loss));
            row.push(opt(c.baseline, f));
            row.push(cost_cell(t, c.cloned_large_only, f));
            row.push(cost_cell(t, c.cloned_total(), f));
            row.push(speedup_cell(t, c.speedup_large_only()));
            row.push(speedup_cell(t, c.speedup_total()));
            if with_steps {
                row.push(format!(
                    "{} / {}",
                    t.cloned_step
                        .map(|s| format!("{s:.0}"))
                        .unwrap_or_else(|| "not reached".to_string()),
                    opt(t.baseline_step, |s| format!("{s:.0}"))
                ));
            }
            rows.push(row);
        }
    }
    Block::Table { header, rows }
}

fn aggregate_table(aggs: &[TargetAggregate]) -> Block {
    let header = [
        "target",
        "target val loss",
        "reached in",
        "device-hours speedup large-only",
        "device-hours speedup total",
        "FLOPs speedup large-only",
        "FLOPs speedup total",
    ]
    .map(String::from)
    .to_vec();
    let cell = |s: &Option<crate::analysis::Spread>| {
        s.as_ref()
            .map(fmt::speedup_spread)
            .unwrap_or_else(|| "none: not reached".to_string())
    };
    let rows = aggs
        .iter()
        .map(|a| {
            vec![
                a.label.clone(),
                opt(a.target_loss.as_ref(), |s| fmt::spread(s, fmt::loss)),
                format!("{} of {} seeds", a.reached, a.seeds),
                cell(&a.hours_large_only),
                cell(&a.hours_total),
                cell(&a.flops_large_only),
                cell(&a.flops_total),
            ]
        })
        .collect();
    Block::Table { header, rows }
}

fn stage_stats(a: &SeedAnalysis, kind: StageKind) -> Option<&StageStats> {
    match kind {
        StageKind::Small => a.small.as_ref(),
        StageKind::Large => a.large.as_ref(),
        StageKind::Baseline => a.baseline.as_ref(),
    }
}

const STAGES: [StageKind; 3] = [StageKind::Small, StageKind::Large, StageKind::Baseline];

fn final_losses(analyses: &[SeedAnalysis], multi: bool) -> Vec<Block> {
    let mut blocks = Vec::new();
    if multi {
        let header = [
            "run",
            "final val loss",
            "best val loss",
            "final train loss",
            "device-hours",
            "per seed: final val loss",
        ]
        .map(String::from)
        .to_vec();
        let mut rows = Vec::new();
        for kind in STAGES {
            let stats: Vec<(&str, &StageStats)> = analyses
                .iter()
                .filter_map(|a| Some((a.label.as_str(), stage_stats(a, kind)?)))
                .collect();
            if stats.is_empty() {
                continue;
            }
            let col = |f: fn(&StageStats) -> Option<f64>, show: fn(f64) -> String| {
                let v: Vec<f64> = stats.iter().filter_map(|(_, s)| f(s)).collect();
                opt(spread(&v).as_ref(), |s| fmt::spread(s, show))
            };
            rows.push(vec![
                kind.title().to_string(),
                col(|s| s.final_val_loss, fmt::loss),
                col(|s| s.best_val_loss, fmt::loss),
                col(|s| s.final_train_loss, fmt::loss),
                col(|s| s.device_hours, fmt::hours),
                stats
                    .iter()
                    .map(|(l, s)| format!("{l}: {}", fmt::loss_opt(s.final_val_loss)))
                    .collect::<Vec<_>>()
                    .join("; "),
            ]);
        }
        blocks.push(Block::Table { header, rows });
    }
    let mut header = Vec::new();
    if multi {
        header.push("seed".to_string());
    }
    header.extend(
        [
            "run",
            "first val loss",
            "final val loss",
            "best val loss",
            "final train loss",
            "steps",
            "tokens",
            "device-hours",
            "FLOPs",
            "wall time",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    for a in analyses {
        for kind in STAGES {
            let Some(s) = stage_stats(a, kind) else {
                continue;
            };
            let mut row = Vec::new();
            if multi {
                row.push(a.label.clone());
            }
            row.extend([
                kind.title().to_string(),
                fmt::loss_opt(s.first_val_loss),
                fmt::loss_opt(s.final_val_loss),
                fmt::loss_opt(s.best_val_loss),
                fmt::loss_opt(s.final_train_loss),
                opt(s.steps, |v| v.to_string()),
                opt(s.tokens, fmt::count),
                opt(s.device_hours, fmt::hours),
                opt(s.flops, fmt::flops),
                opt(s.wall_s, fmt::duration),
            ]);
            rows.push(row);
        }
    }
    if rows.is_empty() {
        blocks.push(Block::Paragraph(
            "No stage has logged any metrics yet.".to_string(),
        ));
    } else {
        blocks.push(Block::Table { header, rows });
    }
    blocks
}

fn throughput(exp: &Experiment, analyses: &[SeedAnalysis], multi: bool) -> Block {
    let header = [
        "run",
        "backend",
        "device",
        "devices",
        "precision",
        "attention",
        "parameters",
        "init",
        "tokens/s (median)",
        "TFLOP/s (median)",
        "MFU (median)",
        "peak memory",
        "data wait",
        "warm-up (not charged)",
        "re-logged lines dropped",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    for (run, a) in exp.seeds.iter().zip(analyses) {
        for kind in STAGES {
            let Some(stage) = run.stage(kind) else {
                continue;
            };
            let info = stage.run_info.clone().unwrap_or_default();
            let stats = stage_stats(a, kind).cloned().unwrap_or_default();
            let name = if multi {
                format!("{} ({})", kind.title(), a.label)
            } else {
                kind.title().to_string()
            };
            let device = match (&info.device_name, &info.device) {
                (Some(n), Some(d)) if n != d => format!("{n} ({d})"),
                (Some(n), _) => n.clone(),
                (None, Some(d)) => d.clone(),
                (None, None) => "n/a".to_string(),
            };
            let mfu = opt(stats.median_mfu, |m| {
                if stats.mfu_estimated {
                    format!("{} (estimated peak)", fmt::percent(m))
                } else {
                    fmt::percent(m)
                }
            });
            rows.push(vec![
                name,
                opt(info.backend, |s| s),
                device,
                opt(info.devices, |d| d.to_string()),
                opt(info.precision, |s| s),
                opt(info.attention, |s| s),
                opt(info.param_count, fmt::count),
                opt(info.init, |s| s),
                opt(stats.median_tokens_per_s, |v| fmt::sig(v, 4)),
                opt(stats.median_tflops_per_s, |v| fmt::sig(v, 3)),
                mfu,
                opt(stats.peak_memory_bytes, fmt::bytes),
                opt(stats.data_share, fmt::percent),
                opt(stats.warmup_s, |s| format!("{s:.2} s")),
                stats.relogged.to_string(),
            ]);
        }
    }
    Block::Table { header, rows }
}

fn symmetry_table(analyses: &[SeedAnalysis], multi: bool) -> Option<Block> {
    let mut header = Vec::new();
    if multi {
        header.push("seed".to_string());
    }
    header.extend(
        [
            "first (step)",
            "last (step)",
            "change",
            "per layer, first → last",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    for a in analyses {
        let (Some(first), Some(last)) = (a.symmetry.first(), a.symmetry.last()) else {
            continue;
        };
        let mut row = Vec::new();
        if multi {
            row.push(a.label.clone());
        }
        let layers = first
            .per_layer
            .iter()
            .zip(&last.per_layer)
            .enumerate()
            .map(|(i, (f, l))| format!("L{i}: {f:.3} → {l:.3}"))
            .collect::<Vec<_>>()
            .join(", ");
        row.extend([
            format!("{:.4} ({})", first.mean, first.step),
            format!("{:.4} ({})", last.mean, last.step),
            format!("{:+.4}", last.mean - first.mean),
            if layers.is_empty() {
                "n/a".to_string()
            } else {
                layers
            },
        ]);
        rows.push(row);
    }
    (!rows.is_empty()).then_some(Block::Table { header, rows })
}

fn expansion_table(exp: &Experiment) -> Option<Block> {
    let infos: Vec<(&str, &crate::inputs::ExpandInfo)> = exp
        .seeds
        .iter()
        .filter_map(|s| Some((s.label.as_str(), s.expand.as_ref()?)))
        .collect();
    if infos.is_empty() {
        return None;
    }
    let mut header = vec!["quantity".to_string()];
    header.extend(infos.iter().map(|(l, _)| {
        if infos.len() > 1 || exp.multi_seed {
            l.to_string()
        } else {
            "value".to_string()
        }
    }));
    type Getter = fn(&crate::inputs::ExpandInfo) -> Option<String>;
    let known: [(&str, &str, Getter); 10] = [
        ("variant", "variant", |e| e.variant.clone()),
        ("width_factor", "width factor", |e| {
            e.width_factor.map(|v| v.to_string())
        }),
        ("ffn_factor", "FFN factor", |e| {
            e.ffn_factor.map(|v| v.to_string())
        }),
        ("source_params", "small model parameters", |e| {
            e.source_params.map(fmt::count)
        }),
        ("target_params", "expanded model parameters", |e| {
            e.target_params.map(fmt::count)
        }),
        (
            "max_abs_logit_diff",
            "max |logit difference| small vs expanded",
            |e| e.max_abs_logit_diff.map(|v| fmt::sig(v, 3)),
        ),
        ("rel_err", "relative error of the logits", |e| {
            e.rel_err.map(|v| fmt::sig(v, 3))
        }),
        ("kl", "KL(small ‖ expanded)", |e| {
            e.kl.map(|v| fmt::sig(v, 3))
        }),
        ("wall_s", "wall time", |e| e.wall_s.map(fmt::duration)),
        ("device_hours", "device-hours", |e| {
            e.device_hours.map(fmt::hours)
        }),
    ];
    let mut rows = Vec::new();
    for (key, title, get) in &known {
        let cells: Vec<String> = infos
            .iter()
            .map(|(_, e)| get(e).unwrap_or_default())
            .collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let mut row = vec![format!("{title} (`{key}`)")];
        row.extend(
            cells
                .into_iter()
                .map(|c| if c.is_empty() { "n/a".into() } else { c }),
        );
        rows.push(row);
    }
    // Any other key the expansion wrote (e.g. an SNR setting), verbatim.
    let mut extra_keys: Vec<&String> = infos
        .iter()
        .flat_map(|(_, e)| e.raw.keys())
        .filter(|k| !known.iter().any(|(kk, _, _)| kk == k))
        .collect();
    extra_keys.sort();
    extra_keys.dedup();
    for key in extra_keys {
        let mut row = vec![format!("`{key}`")];
        row.extend(infos.iter().map(|(_, e)| {
            e.raw
                .get(key)
                .map(|v| match v {
                    serde_json::Value::Number(n) => n
                        .as_f64()
                        .map(|f| {
                            if n.is_f64() {
                                fmt::sig(f, 4)
                            } else {
                                n.to_string()
                            }
                        })
                        .unwrap_or_else(|| n.to_string()),
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "n/a".to_string(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "n/a".to_string())
        }));
        rows.push(row);
    }
    Some(Block::Table { header, rows })
}

/// The verdict paragraph(s), generated from the numbers.
pub fn verdict(exp: &Experiment, analyses: &[SeedAnalysis], aggs: &[TargetAggregate]) -> String {
    let n = analyses.len();
    let Some(fin) = aggs.iter().find(|a| a.fraction == 1.0) else {
        let missing: Vec<&str> = [StageKind::Large, StageKind::Baseline]
            .into_iter()
            .filter(|k| {
                analyses
                    .iter()
                    .all(|a| stage_stats(a, *k).is_none_or(|s| s.final_val_loss.is_none()))
            })
            .map(|k| k.title())
            .collect();
        return format!(
            "No verdict yet: the {} run has logged no validation loss, so there is nothing to compare.",
            if missing.is_empty() {
                "cloned or baseline".to_string()
            } else {
                missing.join(" and the ")
            }
        );
    };
    let seeds_note = if n > 1 {
        format!(" (mean ± std over {n} seeds)")
    } else {
        String::new()
    };
    let target = opt(fin.target_loss.as_ref(), |s| fmt::spread(s, fmt::loss));
    let mut text = String::new();
    if fin.reached == 0 {
        let best: Vec<f64> = analyses
            .iter()
            .filter_map(|a| a.large.as_ref()?.best_val_loss)
            .collect();
        text.push_str(&format!(
            "The cloned run never reached the baseline's final val loss of {target}: its best val \
             loss was {}. HyperCloning therefore shows no speedup to that target in this \
             experiment, large-only or total.",
            opt(spread(&best).as_ref(), |s| fmt::spread(s, fmt::loss))
        ));
    } else {
        let scope = if fin.reached < fin.seeds {
            format!(
                "In {} of {} seeds (the others never reached it, so no mean speedup over all \
                 seeds can be given) ",
                fin.reached, fin.seeds
            )
        } else {
            String::new()
        };
        let hours_lo = fin.hours_large_only.as_ref().map(fmt::speedup_spread);
        let hours_total = fin.hours_total.as_ref().map(fmt::speedup_spread);
        let flops_lo = fin.flops_large_only.as_ref().map(fmt::speedup_spread);
        let flops_total = fin.flops_total.as_ref().map(fmt::speedup_spread);
        let prefix: Vec<f64> = analyses.iter().filter_map(|a| a.prefix_hours).collect();
        text.push_str(&format!(
            "{scope}HyperCloning reached the baseline's final val loss ({target}) {} faster in \
             device-hours counting the large run only, and {} counting the small run and the \
             expansion as well ({} device-hours before the large run){seeds_note}.",
            hours_lo.unwrap_or_else(|| "n/a".into()),
            hours_total.clone().unwrap_or_else(|| "n/a".into()),
            opt(spread(&prefix).as_ref(), |s| fmt::spread(s, fmt::hours)),
        ));
        if flops_lo.is_some() || flops_total.is_some() {
            text.push_str(&format!(
                " In training FLOPs: {} large-only, {} total.",
                flops_lo.unwrap_or_else(|| "n/a".into()),
                flops_total.unwrap_or_else(|| "n/a".into())
            ));
        }
        if let Some(total) = &fin.hours_total {
            if total.mean < 1.0 {
                text.push_str(
                    " Counting the small run, the cloned route cost more device time than \
                     training the baseline directly.",
                );
            }
        }
    }
    // Equal-budget comparison at the end of the large runs.
    let diffs: Vec<f64> = analyses
        .iter()
        .filter_map(|a| {
            Some(a.large.as_ref()?.final_val_loss? - a.baseline.as_ref()?.final_val_loss?)
        })
        .collect();
    if let Some(d) = spread(&diffs) {
        let large: Vec<f64> = analyses
            .iter()
            .filter_map(|a| a.large.as_ref()?.final_val_loss)
            .collect();
        let base: Vec<f64> = analyses
            .iter()
            .filter_map(|a| a.baseline.as_ref()?.final_val_loss)
            .collect();
        text.push_str(&format!(
            " At the end of their training the cloned run's val loss was {} against the \
             baseline's {} (difference {}{}).",
            opt(spread(&large).as_ref(), |s| fmt::spread(s, fmt::loss)),
            opt(spread(&base).as_ref(), |s| fmt::spread(s, fmt::loss)),
            if d.mean >= 0.0 { "+" } else { "" },
            fmt::spread(&d, fmt::loss)
        ));
    }
    let earlier: Vec<String> = aggs
        .iter()
        .filter(|a| a.fraction < 1.0)
        .map(|a| {
            let pct = format!("{:.0} %", a.fraction * 100.0);
            match &a.hours_total {
                Some(s) if a.reached == a.seeds => format!("{pct}: {}", fmt::speedup_spread(s)),
                _ if a.reached == 0 => format!("{pct}: not reached"),
                _ => format!("{pct}: reached in {} of {} seeds", a.reached, a.seeds),
            }
        })
        .collect();
    if !earlier.is_empty() {
        text.push_str(&format!(
            " Total device-hours speedup to the baseline's val loss at earlier points of its \
             budget: {}.",
            earlier.join(", ")
        ));
    }
    if exp.seeds.iter().any(|s| s.expand.is_none()) {
        text.push_str(
            " (No `expand.json` was found for some seeds: their expansion cost counts as 0.)",
        );
    }
    text
}

fn configs(exp: &Experiment) -> Vec<Block> {
    let mut blocks = Vec::new();
    match &exp.experiment_toml {
        Some(text) => blocks.push(Block::Code {
            summary: "experiment.toml (resolved experiment config)".to_string(),
            lang: "toml".to_string(),
            text: text.clone(),
            link: Some("experiment.toml".to_string()),
        }),
        None => blocks.push(Block::Paragraph(
            "No `experiment.toml` was found in the experiment directory.".to_string(),
        )),
    }
    for run in &exp.seeds {
        for kind in STAGES {
            let Some(stage) = run.stage(kind) else {
                continue;
            };
            let Some(text) = &stage.config_text else {
                continue;
            };
            let rel = if exp.multi_seed {
                format!(
                    "{}/{}/config.toml",
                    run.dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    kind.dir_name()
                )
            } else {
                format!("{}/config.toml", kind.dir_name())
            };
            blocks.push(Block::Code {
                summary: format!("{rel} ({} run config)", kind.title()),
                lang: "toml".to_string(),
                text: text.clone(),
                link: Some(rel),
            });
        }
    }
    blocks
}

/// Builds every block of the report.
pub fn document(
    exp: &Experiment,
    analyses: &[SeedAnalysis],
    aggs: &[TargetAggregate],
    plots: &[Plot],
    train_window: usize,
    verdict_text: &str,
) -> Vec<Block> {
    let multi = analyses.len() > 1;
    let mut b = vec![Block::Heading(
        1,
        format!("HyperCloning report: {}", exp.name),
    )];
    let stages_present: Vec<&str> = STAGES
        .iter()
        .filter(|k| exp.seeds.iter().any(|s| stage_of(s, **k).is_some()))
        .map(|k| k.dir_name())
        .collect();
    b.push(Block::Paragraph(format!(
        "Generated by `hyperclone report` from `{}`. Stages with metrics: {}. {}.",
        exp.dir.display(),
        if stages_present.is_empty() {
            "none".to_string()
        } else {
            stages_present.join(", ")
        },
        if multi {
            format!("{} seeds", analyses.len())
        } else {
            "One seed".to_string()
        }
    )));

    b.push(Block::Heading(2, SECTIONS[0].to_string()));
    b.push(Block::Paragraph(verdict_text.to_string()));

    b.push(Block::Heading(2, SECTIONS[1].to_string()));
    b.push(Block::Paragraph(
        "The cloned run is drawn twice on the cost axes: from zero (large-only: the cost of \
         training the expanded model) and shifted right by what it took to get there (total: \
         the small run's device-hours or FLOPs plus the expansion). The small model's own \
         curve is shown for context. The grey dashed line is the baseline's final val loss."
            .to_string(),
    ));
    let mut any_val = false;
    for kind in [
        PlotKind::ValLossHours,
        PlotKind::ValLossFlops,
        PlotKind::ValLossTokens,
    ] {
        if let Some(img) = image(plots, kind) {
            b.push(img);
            any_val = true;
        }
    }
    if !any_val {
        b.push(Block::Paragraph(
            "No validation loss has been logged yet.".to_string(),
        ));
    }

    b.push(Block::Heading(2, SECTIONS[2].to_string()));
    match image(plots, PlotKind::TrainLoss) {
        Some(img) => {
            b.push(Block::Paragraph(format!(
                "Training loss of each run, centred moving average over up to {train_window} \
                 logged steps (fewer near the ends)."
            )));
            b.push(img);
        }
        None => b.push(Block::Paragraph(
            "No training loss has been logged yet.".to_string(),
        )),
    }

    b.push(Block::Heading(2, SECTIONS[3].to_string()));
    if analyses.iter().all(|a| a.targets.is_empty()) {
        b.push(Block::Paragraph(
            "Not available: both the cloned (large) run and the baseline need validation \
             losses."
                .to_string(),
        ));
    } else {
        b.push(Block::Paragraph(
            "Targets are the baseline's final val loss and its val loss at 25, 50 and 75 % of \
             its budget. Each run's cost is where its val-loss curve first reaches the target, \
             interpolated linearly between eval points. Speedup large-only = baseline cost ÷ \
             cloned large-run cost; total = baseline cost ÷ (small run + expansion + cloned \
             large run). \"not reached\" means the cloned run's val loss never got down to the \
             target: no speedup is claimed for it."
                .to_string(),
        ));
        b.push(Block::Heading(3, "Device-hours".to_string()));
        b.push(cost_table(analyses, multi, |t| &t.hours, fmt::hours, true));
        b.push(Block::Heading(3, "FLOPs".to_string()));
        b.push(cost_table(analyses, multi, |t| &t.flops, fmt::flops, false));
        if multi {
            b.push(Block::Heading(3, "Over seeds".to_string()));
            b.push(aggregate_table(aggs));
        }
    }

    b.push(Block::Heading(2, SECTIONS[4].to_string()));
    b.extend(final_losses(analyses, multi));

    b.push(Block::Heading(2, SECTIONS[5].to_string()));
    b.push(Block::Paragraph(
        "Medians over each run's train lines; hardware and backend from `run_info.json`. The \
         warm-up is the discarded first step each training call makes (kernel compilation and \
         autotuning on GPU backends), kept out of every device-hour figure."
            .to_string(),
    ));
    b.push(throughput(exp, analyses, multi));

    b.push(Block::Heading(2, SECTIONS[6].to_string()));
    match (
        image(plots, PlotKind::Symmetry),
        symmetry_table(analyses, multi),
    ) {
        (Some(img), Some(table)) => {
            b.push(Block::Paragraph(
                "Mean cosine similarity between the cloned sub-blocks of the large model \
                 (1.0 right after symmetric cloning); a falling value means training is \
                 breaking the symmetry between clones."
                    .to_string(),
            ));
            b.push(img);
            b.push(table);
        }
        _ => b.push(Block::Paragraph(
            "No symmetry metric was logged by the cloned run.".to_string(),
        )),
    }

    b.push(Block::Heading(2, SECTIONS[7].to_string()));
    match expansion_table(exp) {
        Some(t) => {
            b.push(Block::Paragraph(
                "From `expand/expand.json`: how closely the expanded model reproduces the small \
                 model's outputs before any training."
                    .to_string(),
            ));
            b.push(t);
        }
        None => b.push(Block::Paragraph("No `expand.json` was found.".to_string())),
    }

    b.push(Block::Heading(2, SECTIONS[8].to_string()));
    if multi {
        let header = [
            "seed",
            "final val loss small",
            "final val loss cloned",
            "final val loss baseline",
            "device-hours speedup large-only",
            "device-hours speedup total",
        ]
        .map(String::from)
        .to_vec();
        let rows = analyses
            .iter()
            .map(|a| {
                let fin = a.final_target();
                let sp = |f: fn(&TargetResult) -> Option<f64>| match fin {
                    Some(t) => speedup_cell(t, f(t)),
                    None => "n/a".to_string(),
                };
                vec![
                    a.label.clone(),
                    fmt::loss_opt(a.small.as_ref().and_then(|s| s.final_val_loss)),
                    fmt::loss_opt(a.large.as_ref().and_then(|s| s.final_val_loss)),
                    fmt::loss_opt(a.baseline.as_ref().and_then(|s| s.final_val_loss)),
                    sp(|t| t.hours.speedup_large_only()),
                    sp(|t| t.hours.speedup_total()),
                ]
            })
            .collect();
        b.push(Block::Paragraph(
            "Per seed, against that seed's baseline; means and spreads are in the tables above."
                .to_string(),
        ));
        b.push(Block::Table { header, rows });
    } else {
        b.push(Block::Paragraph(format!(
            "One seed{}; no spread can be given. Run several seeds (the `seed-<N>/` layout) to \
             see the variation between runs.",
            analyses
                .first()
                .and_then(|a| a.seed)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        )));
    }

    b.push(Block::Heading(2, SECTIONS[9].to_string()));
    b.extend(configs(exp));

    b.push(Block::Heading(2, "Method notes".to_string()));
    b.push(Block::List(vec![
        "Metrics lines re-logged after a resume are deduplicated by (kind, step); the last \
         occurrence wins."
            .to_string(),
        "Device-hours, FLOPs and tokens are the cumulative counters logged by each run; the \
         small run's cost is its final counter value, the expansion's cost comes from \
         `expand.json` (its FLOPs are not counted: it copies weights)."
            .to_string(),
        "Crossings are interpolated linearly between eval points, so their precision is \
         limited by the eval interval."
            .to_string(),
        "An infinite large-only speedup means the expanded checkpoint already met the target \
         at step 0, before any large-model training."
            .to_string(),
    ]));
    b
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
