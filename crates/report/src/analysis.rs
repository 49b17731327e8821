//! The numbers of the report: per-stage statistics, the cost for the cloned run to reach the
//! baseline's val-loss targets (linear interpolation between eval points), speedups, and the
//! aggregation over seeds.

use serde::Serialize;

use crate::inputs::{SeedRun, Stage};
use hyperclone_runfiles::{Metrics, RunInfo};

/// The budget fractions at which the baseline's val loss becomes an intermediate target, in
/// addition to its final val loss (fraction 1).
pub const TARGET_FRACTIONS: [f64; 4] = [0.25, 0.5, 0.75, 1.0];

/// The x axis a curve or a cost is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Axis {
    /// Optimiser steps.
    Step,
    /// Tokens consumed.
    Tokens,
    /// Device-hours.
    DeviceHours,
    /// Training FLOPs.
    Flops,
}

/// One eval line reduced to what the curves need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalPoint {
    /// Optimiser step.
    pub step: u64,
    /// Cumulative tokens.
    pub tokens: Option<f64>,
    /// Cumulative device-hours.
    pub device_hours: Option<f64>,
    /// Cumulative FLOPs.
    pub flops: Option<f64>,
    /// Validation loss.
    pub loss: f64,
}

impl EvalPoint {
    /// The point's coordinate on `axis`.
    pub fn x(&self, axis: Axis) -> Option<f64> {
        match axis {
            Axis::Step => Some(self.step as f64),
            Axis::Tokens => self.tokens,
            Axis::DeviceHours => self.device_hours,
            Axis::Flops => self.flops,
        }
    }
}

/// The eval lines of a run that carry a finite val loss, ascending by step.
pub fn eval_points(metrics: &Metrics) -> Vec<EvalPoint> {
    metrics
        .eval
        .iter()
        .filter_map(|e| {
            let loss = e.val_loss.filter(|l| l.is_finite())?;
            Some(EvalPoint {
                step: e.step,
                tokens: e.tokens.map(|t| t as f64),
                device_hours: e.device_hours,
                flops: e.flops,
                loss,
            })
        })
        .collect()
}

/// `(x, val_loss)` pairs on `axis`, skipping points that lack that coordinate.
pub fn curve(points: &[EvalPoint], axis: Axis) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter_map(|p| Some((p.x(axis)?, p.loss)))
        .collect()
}

/// The smallest x at which a curve (ascending in x) first reaches `loss <= target`, linearly
/// interpolated between the last point above the target and the first point at or below it.
/// `None` when the curve never reaches the target.
pub fn crossing(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut previous: Option<(f64, f64)> = None;
    for &(x, y) in curve {
        if y <= target {
            return Some(match previous {
                // Only reached when the previous point was above the target, so y0 > y.
                Some((x0, y0)) => x0 + (x - x0) * (y0 - target) / (y0 - y),
                None => x,
            });
        }
        previous = Some((x, y));
    }
    None
}

/// The cost on `axis` at which a run first reaches `target`: [`crossing`] on its curve, except
/// that a run whose step-0 evaluation already meets the target reached it at zero cost (the
/// step-0 evaluation's own time is logged, but no training was needed).
pub fn reached_at(points: &[EvalPoint], axis: Axis, target: f64) -> Option<f64> {
    match points.first() {
        Some(p) if p.step == 0 && p.loss <= target => Some(0.0),
        _ => crossing(&curve(points, axis), target),
    }
}

/// The curve's y at `x` by linear interpolation; `None` outside the curve's x range.
pub fn value_at(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let (first, last) = (curve.first()?, curve.last()?);
    if x < first.0 || x > last.0 {
        return None;
    }
    for pair in curve.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x >= x0 && x <= x1 {
            if x1 == x0 {
                return Some(y1);
            }
            return Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    Some(last.1)
}

/// The median of the finite values; `None` when there are none.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Mean and spread of one number over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    /// Number of finite values (the mean, std, min and max are over these).
    pub n: usize,
    /// Arithmetic mean of the finite values (+∞ when there are none, only infinite ones).
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator); `None` for fewer than 2 values.
    pub std: Option<f64>,
    /// Smallest finite value.
    pub min: f64,
    /// Largest finite value.
    pub max: f64,
    /// Number of +∞ values left out of the statistics (a speedup whose target was met at
    /// initialisation).
    pub infinite: usize,
}

/// Mean ± sample standard deviation of the finite values, counting +∞ values apart; `None`
/// when there is neither. NaN and −∞ are ignored.
pub fn spread(values: &[f64]) -> Option<Spread> {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let infinite = values.iter().filter(|x| **x == f64::INFINITY).count();
    if v.is_empty() {
        return (infinite > 0).then_some(Spread {
            n: 0,
            mean: f64::INFINITY,
            std: None,
            min: f64::INFINITY,
            max: f64::INFINITY,
            infinite,
        });
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = (n > 1).then(|| {
        let ss: f64 = v.iter().map(|x| (x - mean) * (x - mean)).sum();
        (ss / (n - 1) as f64).sqrt()
    });
    Some(Spread {
        n,
        mean,
        std,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        infinite,
    })
}

/// Summary statistics of one training stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageStats {
    /// Last optimiser step logged.
    pub steps: Option<u64>,
    /// Total tokens.
    pub tokens: Option<u64>,
    /// Total device-hours.
    pub device_hours: Option<f64>,
    /// Total FLOPs.
    pub flops: Option<f64>,
    /// Total wall-clock seconds.
    pub wall_s: Option<f64>,
    /// Training loss of the last step.
    pub final_train_loss: Option<f64>,
    /// Val loss of the last eval.
    pub final_val_loss: Option<f64>,
    /// Lowest val loss of any eval.
    pub best_val_loss: Option<f64>,
    /// Val loss of the first eval (step 0 when logged).
    pub first_val_loss: Option<f64>,
    /// Median tokens/s of the train lines.
    pub median_tokens_per_s: Option<f64>,
    /// Median TFLOP/s of the train lines.
    pub median_tflops_per_s: Option<f64>,
    /// Median MFU of the train lines that have one.
    pub median_mfu: Option<f64>,
    /// Whether any MFU value used an estimated device peak.
    pub mfu_estimated: bool,
    /// Largest peak memory reported.
    pub peak_memory_bytes: Option<u64>,
    /// Share of step time spent waiting for data.
    pub data_share: Option<f64>,
    /// Lines dropped as re-logged after a resume.
    pub relogged: usize,
    /// Seconds of warm-up steps, not in `device_hours`.
    pub warmup_s: Option<f64>,
    /// Median seconds per training step.
    pub median_step_time_s: Option<f64>,
}

/// Computes [`StageStats`] from a stage's metrics.
pub fn stage_stats(metrics: &Metrics) -> StageStats {
    let points = eval_points(metrics);
    let train = &metrics.train;
    let step_time: f64 = train.iter().filter_map(|r| r.step_time_s).sum();
    let data_time: f64 = train.iter().filter_map(|r| r.data_time_s).sum();
    let has_data_time = train.iter().any(|r| r.data_time_s.is_some());
    StageStats {
        steps: train.last().map(|r| r.step),
        tokens: metrics.total_tokens(),
        device_hours: metrics.total_device_hours(),
        flops: metrics.total_flops(),
        wall_s: metrics.total_wall_s(),
        final_train_loss: train.iter().rev().find_map(|r| r.loss),
        final_val_loss: points.last().map(|p| p.loss),
        best_val_loss: points.iter().map(|p| p.loss).reduce(f64::min),
        first_val_loss: points.first().map(|p| p.loss),
        median_tokens_per_s: median(train.iter().filter_map(|r| r.tokens_per_s)),
        median_tflops_per_s: median(train.iter().filter_map(|r| r.tflops_per_s)),
        median_mfu: median(train.iter().filter_map(|r| r.mfu)),
        mfu_estimated: train.iter().any(|r| r.mfu_estimated == Some(true)),
        peak_memory_bytes: train.iter().filter_map(|r| r.peak_memory_bytes).max(),
        data_share: (has_data_time && step_time > 0.0).then(|| data_time / step_time),
        relogged: metrics.relogged,
        warmup_s: metrics.warmup_s,
        median_step_time_s: median(train.iter().filter_map(|r| r.step_time_s)),
    }
}

/// How a data-parallel run (more than one peer in all) scaled, from its `run_info.json` and
/// its train lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scaling {
    /// Peers (devices) in all.
    pub devices: u64,
    /// The run's global tokens/s: the median of its train lines.
    pub tokens_per_s: Option<f64>,
    /// Tokens/s of one device running one peer's share alone (`single_peer_tokens_per_s`);
    /// `None` when the run did not measure it.
    pub single_peer_tokens_per_s: Option<f64>,
    /// Rows per micro-batch of that reference.
    pub single_peer_rows: Option<u64>,
    /// `tokens_per_s ÷ (devices × single_peer_tokens_per_s)`: 1 when N peers go N times as
    /// fast as one device on one peer's share (weak scaling); `None` when either is missing.
    pub efficiency: Option<f64>,
    /// The run was on the CPU (`device` "cpu"), where the peers share the cores.
    pub on_cpu: bool,
}

/// The [`Scaling`] of a run, `None` for a run on one device (or of unknown devices).
pub fn scaling(info: Option<&RunInfo>, stats: Option<&StageStats>) -> Option<Scaling> {
    let info = info?;
    let devices = info.devices.filter(|&d| d > 1)?;
    let tokens_per_s = stats.and_then(|s| s.median_tokens_per_s);
    let reference = info
        .single_peer_tokens_per_s
        .filter(|r| r.is_finite() && *r > 0.0);
    Some(Scaling {
        devices,
        tokens_per_s,
        single_peer_tokens_per_s: reference,
        single_peer_rows: info.single_peer_rows,
        efficiency: tokens_per_s
            .zip(reference)
            .map(|(global, one)| global / (devices as f64 * one)),
        on_cpu: info.device.as_deref() == Some("cpu"),
    })
}

/// What it cost each route to reach one target, on one cost axis.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CostComparison {
    /// Baseline cost to first reach the target (`None` when the axis is not logged).
    pub baseline: Option<f64>,
    /// Cloned run's large-stage cost to first reach it; `None` when not reached (see
    /// [`TargetResult::cloned_reached`]) or the axis is not logged.
    pub cloned_large_only: Option<f64>,
    /// Cost paid before the large stage: the small run plus the expansion.
    pub prefix: Option<f64>,
    /// The small run's own cost to first reach the target (its curve from zero); `None` when
    /// it never did, did not run, or the axis is not logged.
    pub small_alone: Option<f64>,
    /// The continued-small control's cost to first reach the target, the small run before it
    /// included; `None` when it never did, did not run, or the axis is not logged.
    pub control_total: Option<f64>,
    /// The first earlier stage of a growth chain (1-based index) to reach the target, with
    /// the route's cumulative cost there (small run, earlier stages and expansions included);
    /// `None` when none did, there is no chain, or the axis is not logged.
    pub earlier_stage: Option<(usize, f64)>,
}

impl CostComparison {
    /// Small + expansion + large cost of the cloned run.
    pub fn cloned_total(&self) -> Option<f64> {
        Some(self.cloned_large_only? + self.prefix?)
    }

    /// Baseline cost ÷ cloned large-only cost. Infinite when the expanded checkpoint already
    /// met the target before any training.
    pub fn speedup_large_only(&self) -> Option<f64> {
        ratio(self.baseline?, self.cloned_large_only?)
    }

    /// Baseline cost ÷ (small + expansion + cloned large) cost.
    pub fn speedup_total(&self) -> Option<f64> {
        ratio(self.baseline?, self.cloned_total()?)
    }
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    if denominator > 0.0 {
        Some(numerator / denominator)
    } else if numerator > 0.0 {
        Some(f64::INFINITY)
    } else {
        None
    }
}

/// Which of two routes got to a target first, on one cost axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Race {
    /// Both got there; the cloned route (small + expansion + cloned run) spent less.
    ClonedFirst,
    /// Both got there; the continued-small control spent no more than the cloned route.
    ControlFirst,
    /// Only the cloned route got there.
    ControlNever,
    /// Only the control got there.
    ClonedNever,
    /// Neither got there.
    Neither,
}

/// A cheaper way to the target than training the wide model: the sign that the budget is too
/// short for the wide model to pay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shortcut {
    /// `true`: the continued-small control; `false`: the small run on its own, or an earlier
    /// growth stage (`earlier_stage`).
    pub control: bool,
    /// `Some(k)`: growth stage k of a chain, before the last, with everything before it.
    pub earlier_stage: Option<usize>,
    /// The axis the costs are on.
    pub axis: Axis,
    /// What the shortcut spent to reach the target.
    pub cost: f64,
    /// What the baseline spent to reach it.
    pub baseline: f64,
}

/// One val-loss target taken from the baseline's curve and how both runs fared against it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetResult {
    /// Human-readable description of the target.
    pub label: String,
    /// Fraction of the baseline's budget the target was taken at (1 = its final val loss).
    pub fraction: f64,
    /// The val loss to reach.
    pub target_loss: f64,
    /// Whether the cloned run's val loss ever got to the target or below.
    pub cloned_reached: bool,
    /// The cloned run's (interpolated) step at the crossing.
    pub cloned_step: Option<f64>,
    /// The baseline's (interpolated) step at the crossing.
    pub baseline_step: Option<f64>,
    /// Costs in device-hours.
    pub hours: CostComparison,
    /// Costs in FLOPs (the expansion's own FLOPs are not counted: it is a copy of weights).
    pub flops: CostComparison,
    /// Costs in tokens (large-only; tokens of the small model are not comparable).
    pub tokens: CostComparison,
    /// Whether the small run has val losses (so `small_alone` can be measured).
    pub small_ran: bool,
    /// Whether the continued-small control has val losses.
    pub control_ran: bool,
}

impl TargetResult {
    /// The expanded checkpoint already met the target before any training of the wide model:
    /// no speedup can be stated as a factor for the large run alone.
    pub fn met_at_initialisation(&self) -> bool {
        self.cloned_step == Some(0.0)
    }

    /// The cheaper ways to this target than the baseline, in FLOPs then device-hours: the small
    /// run alone, the continued-small control, or an earlier stage of a growth chain (a model
    /// smaller than the baseline's), reaching it at no more cost than the baseline.
    pub fn shortcuts(&self) -> Vec<Shortcut> {
        let mut out = Vec::new();
        for (axis, c) in [(Axis::Flops, &self.flops), (Axis::DeviceHours, &self.hours)] {
            let Some(baseline) = c.baseline else {
                continue;
            };
            let routes = [
                (false, None, c.small_alone),
                (true, None, c.control_total),
                (
                    false,
                    c.earlier_stage.map(|(k, _)| k),
                    c.earlier_stage.map(|(_, v)| v),
                ),
            ];
            for (control, earlier_stage, cost) in routes {
                if let Some(cost) = cost.filter(|&v| v <= baseline) {
                    out.push(Shortcut {
                        control,
                        earlier_stage,
                        axis,
                        cost,
                        baseline,
                    });
                }
            }
        }
        out
    }

    /// The cloned route against the continued-small control on `axis`; `None` without a control.
    pub fn race(&self, axis: Axis) -> Option<Race> {
        if !self.control_ran {
            return None;
        }
        let c = match axis {
            Axis::Flops => &self.flops,
            Axis::DeviceHours => &self.hours,
            _ => return None,
        };
        Some(match (c.cloned_total(), c.control_total) {
            (Some(cloned), Some(control)) if cloned < control => Race::ClonedFirst,
            (Some(_), Some(_)) => Race::ControlFirst,
            (Some(_), None) => Race::ControlNever,
            (None, Some(_)) => Race::ClonedNever,
            (None, None) => Race::Neither,
        })
    }
}

/// The median step times of the two same-shaped wide runs: the cloned run and the baseline
/// train the same model on the same batches, so their step times should match. When they do
/// not, the machine disturbed one of them and device-hour comparisons between them are off
/// (the FLOPs comparisons are not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepTimeCheck {
    /// Median seconds per step of the cloned run.
    pub cloned_s: f64,
    /// Median seconds per step of the baseline.
    pub baseline_s: f64,
}

/// Largest relative difference between the cloned run's and the baseline's median step times
/// that still counts as the same machine state.
pub const STEP_TIME_TOLERANCE: f64 = 0.10;

impl StepTimeCheck {
    /// `|cloned / baseline − 1|`.
    pub fn relative_difference(&self) -> f64 {
        (self.cloned_s / self.baseline_s - 1.0).abs()
    }

    /// Whether the medians differ by more than [`STEP_TIME_TOLERANCE`].
    pub fn disturbed(&self) -> bool {
        self.relative_difference() > STEP_TIME_TOLERANCE
    }
}

/// One seed's symmetry measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SymmetryPoint {
    /// Optimiser step of the eval.
    pub step: u64,
    /// Cumulative tokens at that eval.
    pub tokens: Option<f64>,
    /// Mean over layers.
    pub mean: f64,
    /// Per-layer values.
    pub per_layer: Vec<f64>,
}

/// One link of the growth chain: its expansion, its training run and where it sits on the
/// cumulative cost axes of the cloned route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkAnalysis {
    /// 1-based position in the chain.
    pub index: usize,
    /// Folder of the expansion (`expand`, `expand-2`).
    pub expand_dir: String,
    /// Folder of the training run (`large`, `large-2`).
    pub train_dir: String,
    /// Device-hours of the expansion (`None` when its `expand.json` gives none).
    pub expand_hours: Option<f64>,
    /// Parameters of the grown model (from `expand.json`).
    pub params: Option<u64>,
    /// Statistics of the training run.
    pub stats: Option<StageStats>,
    /// FLOPs the route had paid when this link's training started: the small run and every
    /// earlier link's training (the expansions copy weights: no FLOPs). `None` when a run
    /// before it has no FLOPs logged.
    pub flops_before: Option<f64>,
    /// Device-hours the route had paid when this link's training started: the small run,
    /// every earlier link and every expansion up to this one's (a missing `expand.json`
    /// counts 0, as the verdict says).
    pub hours_before: Option<f64>,
}

impl LinkAnalysis {
    /// Cumulative FLOPs of the route at the end of this link's training.
    pub fn flops_after(&self) -> Option<f64> {
        Some(self.flops_before? + self.stats.as_ref()?.flops?)
    }

    /// Cumulative device-hours of the route at the end of this link's training.
    pub fn hours_after(&self) -> Option<f64> {
        Some(self.hours_before? + self.stats.as_ref()?.device_hours?)
    }
}

/// Everything computed for one seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedAnalysis {
    /// "seed N" or "single seed".
    pub label: String,
    /// The seed number, when known.
    pub seed: Option<u64>,
    /// Statistics of the small run.
    pub small: Option<StageStats>,
    /// Statistics of the cloned large run.
    pub large: Option<StageStats>,
    /// Statistics of the baseline run.
    pub baseline: Option<StageStats>,
    /// Statistics of the continued-small control.
    pub control: Option<StageStats>,
    /// The cloned run's and the baseline's median step times.
    pub step_times: Option<StepTimeCheck>,
    /// Device-hours of the expansion (of every expansion of a growth chain; `None` when no
    /// `expand.json` gives any).
    pub expand_hours: Option<f64>,
    /// Device-hours paid before the cloned large run (the chain's last link): small +
    /// expansions + every earlier link's training.
    pub prefix_hours: Option<f64>,
    /// FLOPs paid before the cloned large run: the small run's and every earlier link's.
    pub prefix_flops: Option<f64>,
    /// The growth chain, link by link (one link for the single-growth layout).
    pub chain: Vec<LinkAnalysis>,
    /// FLOPs of the whole cloned route: small run + every link's training, to its end.
    pub route_flops: Option<f64>,
    /// Device-hours of the whole cloned route: small run + every expansion + every link's
    /// training, to its end.
    pub route_hours: Option<f64>,
    /// The targets, in [`TARGET_FRACTIONS`] order (those that could be formed).
    pub targets: Vec<TargetResult>,
    /// The cloned run's symmetry metric over training.
    pub symmetry: Vec<SymmetryPoint>,
}

impl SeedAnalysis {
    /// The target at the baseline's final val loss, if it could be formed.
    pub fn final_target(&self) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.fraction == 1.0)
    }
}

fn stage_metrics(stage: &Option<Stage>) -> Option<&Metrics> {
    stage.as_ref()?.metrics.as_ref()
}

/// Analyses one seed's stages.
pub fn analyse_seed(run: &SeedRun) -> SeedAnalysis {
    let small_m = stage_metrics(&run.small);
    let large_m = stage_metrics(&run.large);
    let baseline_m = stage_metrics(&run.baseline);
    let control_m = stage_metrics(&run.control);
    let small = small_m.map(stage_stats);
    // The cloned route link by link: each link's training starts where the one before ended
    // (plus its expansion's hours).
    let mut chain = Vec::with_capacity(run.chain.len());
    let mut flops = small.as_ref().and_then(|s| s.flops);
    let mut hours = small.as_ref().and_then(|s| s.device_hours);
    for link in &run.chain {
        let expand_hours = link.expand.as_ref().and_then(|e| e.record.cost_hours());
        hours = hours.map(|h| h + expand_hours.unwrap_or(0.0));
        let l = LinkAnalysis {
            index: link.index,
            expand_dir: link.expand_dir.clone(),
            train_dir: link.train_dir.clone(),
            expand_hours,
            params: link.expand.as_ref().and_then(|e| e.record.target_params),
            stats: stage_metrics(&link.run).map(stage_stats),
            flops_before: flops,
            hours_before: hours,
        };
        (flops, hours) = (l.flops_after(), l.hours_after());
        chain.push(l);
    }
    let expand_hours = chain
        .iter()
        .filter_map(|l| l.expand_hours)
        .reduce(|a, b| a + b);
    let (prefix_hours, prefix_flops) = match chain.last() {
        Some(last) => (last.hours_before, last.flops_before),
        None => (
            small
                .as_ref()
                .and_then(|s| s.device_hours)
                .map(|h| h + expand_hours.unwrap_or(0.0)),
            small.as_ref().and_then(|s| s.flops),
        ),
    };
    let (route_flops, route_hours) = match chain.last() {
        Some(_) => (flops, hours),
        None => (None, None),
    };

    let small_points = small_m.map(eval_points);
    let control_points = control_m.map(eval_points);
    let earlier_points: Vec<(usize, Vec<EvalPoint>)> = run
        .chain
        .iter()
        .enumerate()
        .rev()
        .skip(1)
        .rev()
        .filter_map(|(i, link)| Some((i, eval_points(stage_metrics(&link.run)?))))
        .collect();
    let earlier: Vec<EarlierStage> = earlier_points
        .iter()
        .map(|(i, points)| EarlierStage {
            index: chain[*i].index,
            points,
            flops_before: chain[*i].flops_before,
            hours_before: chain[*i].hours_before,
        })
        .collect();
    let targets = match (large_m, baseline_m) {
        (Some(l), Some(b)) => compute_targets(
            &Curves {
                cloned: &eval_points(l),
                baseline: &eval_points(b),
                small: small_points.as_deref(),
                control: control_points.as_deref(),
                earlier: &earlier,
            },
            &Prefix {
                hours: prefix_hours,
                flops: prefix_flops,
                small_hours: small.as_ref().and_then(|s| s.device_hours),
            },
        ),
        _ => Vec::new(),
    };
    let large = large_m.map(stage_stats);
    let baseline = baseline_m.map(stage_stats);
    let step_times = match (&large, &baseline) {
        (Some(l), Some(b)) => match (l.median_step_time_s, b.median_step_time_s) {
            (Some(cloned_s), Some(baseline_s)) if baseline_s > 0.0 => Some(StepTimeCheck {
                cloned_s,
                baseline_s,
            }),
            _ => None,
        },
        _ => None,
    };
    let symmetry = large_m
        .map(|m| {
            m.eval
                .iter()
                .filter_map(|e| {
                    let s = e.symmetry.as_ref()?;
                    s.mean.is_finite().then(|| SymmetryPoint {
                        step: e.step,
                        tokens: e.tokens.map(|t| t as f64),
                        mean: s.mean,
                        per_layer: s.per_layer.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    SeedAnalysis {
        label: run.label.clone(),
        seed: run.seed,
        small,
        large,
        baseline,
        control: control_m.map(stage_stats),
        step_times,
        expand_hours,
        prefix_hours,
        prefix_flops,
        chain,
        route_flops,
        route_hours,
        targets,
        symmetry,
    }
}

/// The val-loss curves of one seed's runs.
#[derive(Debug, Clone, Copy)]
pub struct Curves<'a> {
    /// The cloned (large) run.
    pub cloned: &'a [EvalPoint],
    /// The random-init baseline.
    pub baseline: &'a [EvalPoint],
    /// The small run, when it has val losses.
    pub small: Option<&'a [EvalPoint]>,
    /// The continued-small control, when it has val losses.
    pub control: Option<&'a [EvalPoint]>,
    /// The earlier stages of a growth chain (every link before the cloned run), in order.
    pub earlier: &'a [EarlierStage<'a>],
}

/// An earlier stage of a growth chain, for [`Curves`]: its curve and where it starts on the
/// route's cumulative cost axes.
#[derive(Debug, Clone, Copy)]
pub struct EarlierStage<'a> {
    /// 1-based position in the chain.
    pub index: usize,
    /// Its val-loss curve (its own costs, from zero).
    pub points: &'a [EvalPoint],
    /// FLOPs the route had paid when it started.
    pub flops_before: Option<f64>,
    /// Device-hours the route had paid when it started (its expansion included).
    pub hours_before: Option<f64>,
}

/// What was paid before the wide runs started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prefix {
    /// Device-hours of the small run and the expansion (before the cloned run).
    pub hours: Option<f64>,
    /// FLOPs of the small run (the expansion's are not counted: it copies weights).
    pub flops: Option<f64>,
    /// Device-hours of the small run alone (before the control).
    pub small_hours: Option<f64>,
}

/// Forms the targets from the baseline's curve and measures every route against them.
pub fn compute_targets(curves: &Curves, prefix: &Prefix) -> Vec<TargetResult> {
    let (cloned, baseline) = (curves.cloned, curves.baseline);
    let Some(last) = baseline.last() else {
        return Vec::new();
    };
    // The budget axis: tokens when every baseline eval has them, else steps.
    let budget_axis = if baseline.iter().all(|p| p.tokens.is_some()) {
        Axis::Tokens
    } else {
        Axis::Step
    };
    let budget_curve = curve(baseline, budget_axis);
    let budget = last.x(budget_axis).unwrap_or(0.0);
    let axis_name = if budget_axis == Axis::Tokens {
        "tokens"
    } else {
        "steps"
    };
    let mut out = Vec::new();
    for &fraction in &TARGET_FRACTIONS {
        let (label, target) = if fraction == 1.0 {
            ("baseline's final val loss".to_string(), Some(last.loss))
        } else {
            (
                format!(
                    "baseline's val loss at {:.0} % of its {axis_name}",
                    fraction * 100.0
                ),
                value_at(&budget_curve, fraction * budget),
            )
        };
        let Some(target_loss) = target else {
            continue;
        };
        let reach =
            |points: Option<&[EvalPoint]>, axis: Axis| reached_at(points?, axis, target_loss);
        let compare = |axis: Axis, prefix: Option<f64>, small_prefix: Option<f64>| CostComparison {
            baseline: reached_at(baseline, axis, target_loss),
            cloned_large_only: reached_at(cloned, axis, target_loss),
            prefix,
            small_alone: reach(curves.small, axis),
            control_total: small_prefix.and_then(|p| Some(p + reach(curves.control, axis)?)),
            earlier_stage: curves.earlier.iter().find_map(|e| {
                let before = match axis {
                    Axis::Flops => e.flops_before,
                    Axis::DeviceHours => e.hours_before,
                    _ => None,
                }?;
                Some((e.index, before + reached_at(e.points, axis, target_loss)?))
            }),
        };
        let cloned_step = crossing(&curve(cloned, Axis::Step), target_loss);
        out.push(TargetResult {
            label,
            fraction,
            target_loss,
            cloned_reached: cloned_step.is_some(),
            cloned_step,
            baseline_step: crossing(&curve(baseline, Axis::Step), target_loss),
            hours: compare(Axis::DeviceHours, prefix.hours, prefix.small_hours),
            flops: compare(Axis::Flops, prefix.flops, prefix.flops),
            tokens: compare(Axis::Tokens, None, None),
            small_ran: curves.small.is_some_and(|c| !c.is_empty()),
            control_ran: curves.control.is_some_and(|c| !c.is_empty()),
        });
    }
    out
}

/// One target's speedups aggregated over seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetAggregate {
    /// The target's fraction of the baseline budget.
    pub fraction: f64,
    /// The target's description.
    pub label: String,
    /// Seeds where the target could be formed.
    pub seeds: usize,
    /// Seeds where the cloned run reached it.
    pub reached: usize,
    /// Target val loss over seeds.
    pub target_loss: Option<Spread>,
    /// Device-hours speedup large-only, over the seeds that reached it.
    pub hours_large_only: Option<Spread>,
    /// Device-hours speedup total, over the seeds that reached it.
    pub hours_total: Option<Spread>,
    /// FLOPs speedup large-only, over the seeds that reached it.
    pub flops_large_only: Option<Spread>,
    /// FLOPs speedup total, over the seeds that reached it.
    pub flops_total: Option<Spread>,
}

/// Aggregates every target over the seeds (matched by fraction).
pub fn aggregate_targets(seeds: &[SeedAnalysis]) -> Vec<TargetAggregate> {
    let mut out = Vec::new();
    for &fraction in &TARGET_FRACTIONS {
        let results: Vec<&TargetResult> = seeds
            .iter()
            .filter_map(|s| s.targets.iter().find(|t| t.fraction == fraction))
            .collect();
        let Some(first) = results.first() else {
            continue;
        };
        let collect = |f: &dyn Fn(&TargetResult) -> Option<f64>| -> Option<Spread> {
            let v: Vec<f64> = results.iter().filter_map(|t| f(t)).collect();
            spread(&v)
        };
        out.push(TargetAggregate {
            fraction,
            label: first.label.clone(),
            seeds: results.len(),
            reached: results.iter().filter(|t| t.cloned_reached).count(),
            target_loss: collect(&|t| Some(t.target_loss)),
            hours_large_only: collect(&|t| t.hours.speedup_large_only()),
            hours_total: collect(&|t| t.hours.speedup_total()),
            flops_large_only: collect(&|t| t.flops.speedup_large_only()),
            flops_total: collect(&|t| t.flops.speedup_total()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The targets of a cloned run against a baseline, without small run or control curves.
    fn targets_of(
        cloned: &[EvalPoint],
        baseline: &[EvalPoint],
        hours: f64,
        flops: f64,
    ) -> Vec<TargetResult> {
        compute_targets(
            &Curves {
                cloned,
                baseline,
                small: None,
                control: None,
                earlier: &[],
            },
            &Prefix {
                hours: Some(hours),
                flops: Some(flops),
                small_hours: Some(hours),
            },
        )
    }

    fn pt(step: u64, hours: f64, loss: f64) -> EvalPoint {
        EvalPoint {
            step,
            tokens: Some(step as f64 * 100.0),
            device_hours: Some(hours),
            flops: Some(hours * 1e12),
            loss,
        }
    }

    #[test]
    fn crossing_interpolates_linearly_between_eval_points() {
        let c = [(0.0, 5.0), (10.0, 4.0), (20.0, 3.0), (30.0, 2.5)];
        // 3.5 lies halfway between 4.0 (x=10) and 3.0 (x=20).
        assert!((crossing(&c, 3.5).unwrap() - 15.0).abs() < 1e-12);
        // 2.75 lies halfway between 3.0 (x=20) and 2.5 (x=30).
        assert!((crossing(&c, 2.75).unwrap() - 25.0).abs() < 1e-12);
        // Exactly on a point.
        assert_eq!(crossing(&c, 4.0), Some(10.0));
        // Already met at the first point.
        assert_eq!(crossing(&c, 6.0), Some(0.0));
    }

    #[test]
    fn crossing_takes_the_first_time_on_a_noisy_curve() {
        let c = [(0.0, 5.0), (10.0, 3.0), (20.0, 3.4), (30.0, 2.0)];
        // 3.2 is first reached between x=0 and x=10: 5 → 3 drops 2 per 10, 1.8 below 5 → 9.
        assert!((crossing(&c, 3.2).unwrap() - 9.0).abs() < 1e-12);
    }

    #[test]
    fn not_reached_gives_none_and_no_speedup() {
        let c = [(0.0, 5.0), (10.0, 4.0), (20.0, 3.0)];
        assert_eq!(crossing(&c, 2.9), None);
        assert_eq!(crossing(&[], 1.0), None);

        let baseline = [pt(0, 0.0, 10.0), pt(10, 1.0, 4.0), pt(20, 2.0, 3.0)];
        let cloned = [pt(0, 0.0, 5.0), pt(10, 1.0, 3.5), pt(20, 2.0, 3.2)];
        let targets = targets_of(&cloned, &baseline, 0.5, 1e11);
        let fin = targets.iter().find(|t| t.fraction == 1.0).unwrap();
        assert_eq!(fin.target_loss, 3.0);
        assert!(!fin.cloned_reached);
        assert_eq!(fin.hours.cloned_large_only, None);
        assert_eq!(fin.hours.speedup_large_only(), None);
        assert_eq!(fin.hours.speedup_total(), None);
        assert_eq!(fin.flops.speedup_total(), None);
        assert_eq!(fin.hours.baseline, Some(2.0));
    }

    #[test]
    fn speedups_from_targets() {
        // Baseline: 10 → 4 → 3 at hours 0, 1, 2. Cloned: 4.5 → 3.5 → 2.5.
        let baseline = [pt(0, 0.0, 10.0), pt(10, 1.0, 4.0), pt(20, 2.0, 3.0)];
        let cloned = [pt(0, 0.0, 4.5), pt(10, 1.0, 3.5), pt(20, 2.0, 2.5)];
        let targets = targets_of(&cloned, &baseline, 0.5, 0.5e12);
        let fractions: Vec<f64> = targets.iter().map(|t| t.fraction).collect();
        assert_eq!(fractions, vec![0.25, 0.5, 0.75, 1.0]);

        let fin = targets.last().unwrap();
        // Cloned reaches 3.0 halfway between 3.5 (h=1) and 2.5 (h=2): 1.5 h.
        assert!((fin.hours.cloned_large_only.unwrap() - 1.5).abs() < 1e-12);
        assert!((fin.hours.speedup_large_only().unwrap() - 2.0 / 1.5).abs() < 1e-12);
        assert!((fin.hours.speedup_total().unwrap() - 2.0 / 2.0).abs() < 1e-12);
        assert!((fin.flops.speedup_total().unwrap() - 2.0 / 2.0).abs() < 1e-12);
        assert!((fin.cloned_step.unwrap() - 15.0).abs() < 1e-12);

        // 50 % of the baseline's tokens is step 10, where its loss is 4.0; the cloned run
        // starts at 4.5 and crosses 4.0 halfway between h=0 and h=1, at 0.5 h.
        let half = &targets[1];
        assert_eq!(half.target_loss, 4.0);
        assert!((half.hours.cloned_large_only.unwrap() - 0.5).abs() < 1e-12);
        assert!((half.hours.speedup_large_only().unwrap() - 2.0).abs() < 1e-12);
        assert!((half.hours.speedup_total().unwrap() - 1.0).abs() < 1e-12);

        // 25 %: baseline loss at step 5 = 7.0, which the expanded checkpoint already beats at
        // step 0: large-only speedup is infinite, total is finite.
        let quarter = &targets[0];
        assert_eq!(quarter.target_loss, 7.0);
        assert_eq!(quarter.hours.cloned_large_only, Some(0.0));
        assert_eq!(quarter.hours.speedup_large_only(), Some(f64::INFINITY));
        // Baseline reaches 7.0 at 0.5 h; total cloned cost is the prefix 0.5 h.
        assert!((quarter.hours.speedup_total().unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn value_at_interpolates_and_refuses_outside_range() {
        let c = [(10.0, 4.0), (20.0, 2.0)];
        assert_eq!(value_at(&c, 15.0), Some(3.0));
        assert_eq!(value_at(&c, 10.0), Some(4.0));
        assert_eq!(value_at(&c, 20.0), Some(2.0));
        assert_eq!(value_at(&c, 5.0), None);
        assert_eq!(value_at(&c, 25.0), None);
    }

    #[test]
    fn median_and_spread() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median([f64::NAN]), None);
        let s = spread(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.n, 4);
        assert!((s.mean - 2.5).abs() < 1e-12);
        // Sample variance: ((1.5² + 0.5²) · 2) / 3 = 5/3.
        assert!((s.std.unwrap() - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1.0, 4.0));
        assert_eq!(spread(&[2.0]).unwrap().std, None);
        assert!(spread(&[]).is_none());
        let s = spread(&[2.0, f64::INFINITY, 4.0]).unwrap();
        assert_eq!((s.n, s.mean, s.infinite), (2, 3.0, 1));
        let s = spread(&[f64::INFINITY]).unwrap();
        assert_eq!((s.n, s.mean, s.infinite), (0, f64::INFINITY, 1));
    }

    fn seed_with(label: &str, speed: f64, reach: bool) -> SeedAnalysis {
        // Baseline reaches 3.0 at 2 h. The cloned run reaches it at 2/speed h, or bottoms out
        // at 3.1 when `reach` is false.
        let baseline = [pt(0, 0.0, 10.0), pt(10, 1.0, 4.0), pt(20, 2.0, 3.0)];
        let t = 2.0 / speed;
        let end = if reach { 3.0 } else { 3.1 };
        let cloned = [pt(0, 0.0, 4.0), pt(10, t, end), pt(20, 2.0 * t, end)];
        SeedAnalysis {
            label: label.to_string(),
            seed: None,
            small: None,
            large: None,
            baseline: None,
            control: None,
            step_times: None,
            expand_hours: None,
            prefix_hours: Some(0.0),
            prefix_flops: Some(0.0),
            chain: Vec::new(),
            route_flops: None,
            route_hours: None,
            targets: targets_of(&cloned, &baseline, 0.0, 0.0),
            symmetry: Vec::new(),
        }
    }

    #[test]
    fn multi_seed_aggregation_counts_reached_and_averages_speedups() {
        let seeds = [
            seed_with("a", 2.0, true),
            seed_with("b", 4.0, true),
            seed_with("c", 3.0, false),
        ];
        let agg = aggregate_targets(&seeds);
        let fin = agg.iter().find(|a| a.fraction == 1.0).unwrap();
        assert_eq!(fin.seeds, 3);
        assert_eq!(fin.reached, 2);
        let s = fin.hours_large_only.as_ref().unwrap();
        assert_eq!(s.n, 2);
        assert!((s.mean - 3.0).abs() < 1e-9, "{s:?}");
        assert!((s.std.unwrap() - 2f64.sqrt()).abs() < 1e-9);
        let all = aggregate_targets(&seeds[..2]);
        assert_eq!(all.last().unwrap().reached, 2);
    }

    #[test]
    fn a_small_run_or_control_that_reaches_the_target_cheaper_is_a_shortcut() {
        // Baseline: 10 → 4 → 3 at 0, 1, 2 h (FLOPs = hours · 1e12). Cloned: from 4.5.
        let baseline = [pt(0, 0.0, 10.0), pt(10, 1.0, 4.0), pt(20, 2.0, 3.0)];
        let cloned = [pt(0, 0.0, 4.5), pt(10, 1.0, 3.5), pt(20, 2.0, 2.5)];
        // The small run ends at 2.9 after 1.5 h: it reaches 3.0 on its own, cheaper.
        let small = [pt(0, 0.0, 8.0), pt(10, 1.0, 3.4), pt(15, 1.5, 2.9)];
        // The control continues from 2.9 and goes lower.
        let control = [pt(0, 0.0, 2.9), pt(10, 0.5, 2.7)];
        let curves = Curves {
            cloned: &cloned,
            baseline: &baseline,
            small: Some(&small),
            control: Some(&control),
            earlier: &[],
        };
        let prefix = Prefix {
            hours: Some(1.6),
            flops: Some(1.5e12),
            small_hours: Some(1.5),
        };
        let targets = compute_targets(&curves, &prefix);
        let fin = targets.last().unwrap();
        assert!(fin.small_ran && fin.control_ran);
        // The small run crosses 3.0 between 3.4 (1 h) and 2.9 (1.5 h): at 1.4 h.
        assert!((fin.hours.small_alone.unwrap() - 1.4).abs() < 1e-12);
        // The control met it at its start: the small run's 1.5 h.
        assert_eq!(fin.hours.control_total, Some(1.5));
        let shortcuts = fin.shortcuts();
        assert_eq!(shortcuts.len(), 4, "{shortcuts:?}");
        assert!(shortcuts
            .iter()
            .any(|s| !s.control && s.axis == Axis::Flops && (s.cost - 1.4e12).abs() < 1.0));
        // Cloned total: 1.6 + 1.5 = 3.1 h, after the control's 1.5 h.
        assert_eq!(fin.race(Axis::DeviceHours), Some(Race::ControlFirst));

        // A small run that stops above the target and a control that never gets there: no
        // shortcut, and the cloned route wins the race.
        let small = [pt(0, 0.0, 8.0), pt(10, 1.0, 3.4)];
        let control = [pt(0, 0.0, 3.4), pt(10, 1.0, 3.2)];
        let curves = Curves {
            small: Some(&small),
            control: Some(&control),
            ..curves
        };
        let targets = compute_targets(&curves, &prefix);
        let fin = targets.last().unwrap();
        assert!(fin.shortcuts().is_empty());
        assert_eq!(fin.race(Axis::Flops), Some(Race::ControlNever));
        assert!(!fin.met_at_initialisation());
        // Without a control there is no race.
        let targets = targets_of(&cloned, &baseline, 0.5, 0.5e12);
        assert_eq!(targets.last().unwrap().race(Axis::Flops), None);
        // The 25 % target (7.0) was met by the expanded checkpoint before training.
        assert!(targets[0].met_at_initialisation());
    }

    #[test]
    fn step_times_that_differ_by_more_than_ten_percent_are_disturbed() {
        let same = StepTimeCheck {
            cloned_s: 0.105,
            baseline_s: 0.100,
        };
        assert!(!same.disturbed());
        let off = StepTimeCheck {
            cloned_s: 0.125,
            baseline_s: 0.100,
        };
        assert!(off.disturbed());
        assert!((off.relative_difference() - 0.25).abs() < 1e-12);
        let faster = StepTimeCheck {
            cloned_s: 0.080,
            baseline_s: 0.100,
        };
        assert!(faster.disturbed());
    }

    #[test]
    fn scaling_efficiency_is_global_throughput_over_peers_times_one_peer_alone() {
        let info = RunInfo {
            device: Some("cpu".into()),
            devices: Some(2),
            single_peer_tokens_per_s: Some(1000.0),
            single_peer_rows: Some(4),
            ..RunInfo::default()
        };
        let stats = StageStats {
            median_tokens_per_s: Some(1500.0),
            ..StageStats::default()
        };
        let s = scaling(Some(&info), Some(&stats)).unwrap();
        assert_eq!(s.efficiency, Some(1500.0 / (2.0 * 1000.0)));
        assert!(s.on_cpu);
        // Without the reference: no number.
        let old = RunInfo {
            single_peer_tokens_per_s: None,
            ..info.clone()
        };
        let s = scaling(Some(&old), Some(&stats)).unwrap();
        assert_eq!((s.efficiency, s.tokens_per_s), (None, Some(1500.0)));
        // One device, or no run_info.json: nothing to say.
        let single = RunInfo {
            devices: Some(1),
            ..info
        };
        assert_eq!(scaling(Some(&single), Some(&stats)), None);
        assert_eq!(scaling(None, Some(&stats)), None);
    }
}
