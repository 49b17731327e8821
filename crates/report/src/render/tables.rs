//! The tables of the report.

use super::{opt, run_rows};
use crate::analysis::{
    scaling, spread, Axis, CostComparison, Race, Scaling, SeedAnalysis, StageStats,
    TargetAggregate, TargetResult,
};
use crate::doc::Block;
use crate::format as fmt;
use crate::inputs::{Experiment, StageKind};

/// The speedup (or its absence) of one comparison, as a table cell.
pub(crate) fn speedup_cell(t: &TargetResult, s: Option<f64>) -> String {
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

/// A cost cell of a route that may not have reached the target (`None`).
fn reached_cell(v: Option<f64>, f: fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "not reached".to_string())
}

/// Per seed and target: what each route spent to get there and the speedups, total first.
pub(crate) fn cost_table(
    analyses: &[SeedAnalysis],
    multi: bool,
    pick: fn(&TargetResult) -> &CostComparison,
    f: fn(f64) -> String,
    with_steps: bool,
) -> Block {
    let small = analyses
        .iter()
        .any(|a| a.targets.iter().any(|t| t.small_ran));
    let control = analyses
        .iter()
        .any(|a| a.targets.iter().any(|t| t.control_ran));
    let mut header = Vec::new();
    if multi {
        header.push("seed".to_string());
    }
    header.extend(
        [
            "target",
            "target val loss",
            "baseline",
            "cloned, total",
            "speedup total",
            "cloned, large-only",
            "speedup large-only",
        ]
        .map(String::from),
    );
    if small {
        header.push("small run alone".to_string());
    }
    if control {
        header.push("control, total".to_string());
    }
    let chained = analyses.iter().any(|a| a.chain.len() > 1);
    if chained {
        header.push("earlier growth stage, total".to_string());
    }
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
            row.push(cost_cell(t, c.cloned_total(), f));
            row.push(speedup_cell(t, c.speedup_total()));
            row.push(if t.met_at_initialisation() {
                "0 (met at initialisation)".to_string()
            } else {
                cost_cell(t, c.cloned_large_only, f)
            });
            row.push(speedup_cell(t, c.speedup_large_only()));
            if small {
                row.push(if t.small_ran {
                    reached_cell(c.small_alone, f)
                } else {
                    "n/a".to_string()
                });
            }
            if control {
                row.push(if t.control_ran {
                    reached_cell(c.control_total, f)
                } else {
                    "n/a".to_string()
                });
            }
            if chained {
                row.push(if a.chain.len() > 1 {
                    c.earlier_stage
                        .map(|(k, v)| format!("stage {k}: {}", f(v)))
                        .unwrap_or_else(|| "not reached".to_string())
                } else {
                    "n/a".to_string()
                });
            }
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

/// In words, who got to a target first: the cloned route or the continued-small control.
pub(crate) fn race_words(race: Race) -> &'static str {
    match race {
        Race::ClonedFirst => "cloned run first",
        Race::ControlFirst => "control first (or at the same cost)",
        Race::ControlNever => "cloned run; the control never reached it",
        Race::ClonedNever => "control; the cloned run never reached it",
        Race::Neither => "neither reached it",
    }
}

/// Per seed and target: the cloned route against the continued-small control, in FLOPs and
/// device-hours. `None` when no seed has a control.
pub(crate) fn race_table(analyses: &[SeedAnalysis], multi: bool) -> Option<Block> {
    if !analyses
        .iter()
        .any(|a| a.targets.iter().any(|t| t.control_ran))
    {
        return None;
    }
    let mut header = Vec::new();
    if multi {
        header.push("seed".to_string());
    }
    header.extend(
        [
            "target",
            "target val loss",
            "cloned, total FLOPs",
            "control, total FLOPs",
            "first there (FLOPs)",
            "cloned, total device-hours",
            "control, total device-hours",
            "first there (device-hours)",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    for a in analyses {
        for t in &a.targets {
            let mut row = Vec::new();
            if multi {
                row.push(a.label.clone());
            }
            row.push(t.label.clone());
            row.push(fmt::loss(t.target_loss));
            for (axis, c, f) in [
                (Axis::Flops, &t.flops, fmt::flops as fn(f64) -> String),
                (Axis::DeviceHours, &t.hours, fmt::hours),
            ] {
                row.push(reached_cell(c.cloned_total(), f));
                row.push(if t.control_ran {
                    reached_cell(c.control_total, f)
                } else {
                    "n/a (no control)".to_string()
                });
                row.push(
                    t.race(axis)
                        .map_or("n/a".to_string(), |r| race_words(r).to_string()),
                );
            }
            rows.push(row);
        }
    }
    Some(Block::Table { header, rows })
}

/// One key of a run's resolved `config.toml`, as text.
fn config_value(config: &toml::Table, path: &[&str]) -> Option<String> {
    let mut value = config.get(path[0])?;
    for key in &path[1..] {
        value = value.as_table()?.get(*key)?;
    }
    Some(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) => fmt::sig(*f, 3),
        other => other.to_string(),
    })
}

/// Each run's optimiser, schedule and budget side by side, read from its `config.toml`.
pub(crate) fn settings_table(exp: &Experiment, multi: bool) -> Option<Block> {
    let keys: [(&str, &[&str]); 12] = [
        ("peak lr", &["optimizer", "lr"]),
        ("warm-up steps", &["schedule", "warmup_steps"]),
        ("decay", &["schedule", "decay"]),
        ("min lr ratio", &["schedule", "min_lr_ratio"]),
        ("decay steps", &["schedule", "decay_steps"]),
        ("weight decay", &["optimizer", "weight_decay"]),
        ("β2", &["optimizer", "beta2"]),
        ("grad clip", &["optimizer", "grad_clip"]),
        ("batch × seq", &["run", "batch_size"]),
        ("steps", &["run", "max_steps"]),
        ("seed", &["run", "seed"]),
        ("dropout", &["model", "dropout"]),
    ];
    let mut columns: Vec<(String, toml::Table)> = Vec::new();
    for run in &exp.seeds {
        for row in run_rows(run, None) {
            let Some(text) = row.stage.config_text.as_ref() else {
                continue;
            };
            let Ok(table) = text.parse::<toml::Table>() else {
                continue;
            };
            let name = if multi {
                format!("{} ({})", row.title, run.label)
            } else {
                row.title
            };
            columns.push((name, table));
        }
        if !multi {
            break;
        }
    }
    if columns.is_empty() {
        return None;
    }
    let mut header = vec!["setting".to_string()];
    header.extend(columns.iter().map(|(name, _)| name.clone()));
    let rows = keys
        .iter()
        .map(|(title, path)| {
            let mut row = vec![title.to_string()];
            row.extend(columns.iter().map(|(_, c)| {
                if *title == "batch × seq" {
                    format!(
                        "{} × {}",
                        opt(config_value(c, &["run", "batch_size"]), |v| v),
                        opt(config_value(c, &["run", "seq_len"]), |v| v)
                    )
                } else if *title == "decay steps" {
                    config_value(c, path).unwrap_or_else(|| "the run's last step".to_string())
                } else {
                    opt(config_value(c, path), |v| v)
                }
            }));
            row
        })
        .collect();
    Some(Block::Table { header, rows })
}

pub(crate) fn aggregate_table(aggs: &[TargetAggregate]) -> Block {
    let header = [
        "target",
        "target val loss",
        "reached in",
        "FLOPs speedup total",
        "device-hours speedup total",
        "FLOPs speedup large-only",
        "device-hours speedup large-only",
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
                cell(&a.flops_total),
                cell(&a.hours_total),
                cell(&a.flops_large_only),
                cell(&a.hours_large_only),
            ]
        })
        .collect();
    Block::Table { header, rows }
}

pub(crate) fn final_losses(exp: &Experiment, analyses: &[SeedAnalysis], multi: bool) -> Vec<Block> {
    let mut blocks = Vec::new();
    // Every seed's runs in table order, and the run titles in the order they first appear.
    let per_seed: Vec<(&SeedAnalysis, Vec<super::RunRow>)> = exp
        .seeds
        .iter()
        .zip(analyses)
        .map(|(run, a)| (a, run_rows(run, Some(a))))
        .collect();
    let mut titles: Vec<&str> = Vec::new();
    for (_, rows) in &per_seed {
        for r in rows {
            if !titles.contains(&r.title.as_str()) {
                titles.push(&r.title);
            }
        }
    }
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
        for title in &titles {
            let stats: Vec<(&str, &StageStats)> = per_seed
                .iter()
                .filter_map(|(a, rows)| {
                    let row = rows.iter().find(|r| r.title == *title)?;
                    Some((a.label.as_str(), row.stats?))
                })
                .collect();
            if stats.is_empty() {
                continue;
            }
            let col = |f: fn(&StageStats) -> Option<f64>, show: fn(f64) -> String| {
                let v: Vec<f64> = stats.iter().filter_map(|(_, s)| f(s)).collect();
                opt(spread(&v).as_ref(), |s| fmt::spread(s, show))
            };
            rows.push(vec![
                title.to_string(),
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
    for (a, runs) in &per_seed {
        for r in runs {
            let Some(s) = r.stats else {
                continue;
            };
            let mut row = Vec::new();
            if multi {
                row.push(a.label.clone());
            }
            row.extend([
                r.title.clone(),
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

pub(crate) fn throughput(exp: &Experiment, analyses: &[SeedAnalysis], multi: bool) -> Block {
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
        "step time (median)",
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
        for row in run_rows(run, Some(a)) {
            let info = row.stage.run_info.clone().unwrap_or_default();
            let stats = row.stats.cloned().unwrap_or_default();
            let name = if multi {
                format!("{} ({})", row.title, a.label)
            } else {
                row.title
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
                opt(stats.median_step_time_s, |v| {
                    format!("{} ms", fmt::sig(v * 1e3, 3))
                }),
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

/// Every data-parallel run (more than one peer) of the experiment with its [`Scaling`], named
/// as the tables name it (with the seed when there are several).
pub(crate) fn scaling_rows(
    exp: &Experiment,
    analyses: &[SeedAnalysis],
    multi: bool,
) -> Vec<(String, Scaling)> {
    let mut out = Vec::new();
    for (run, a) in exp.seeds.iter().zip(analyses) {
        for row in run_rows(run, Some(a)) {
            let Some(s) = scaling(row.stage.run_info.as_ref(), row.stats) else {
                continue;
            };
            let name = if multi {
                format!("{} ({})", row.title, a.label)
            } else {
                row.title
            };
            out.push((name, s));
        }
    }
    out
}

/// The scaling efficiency of a run, as a cell: "not measured" without a reference.
pub(crate) fn efficiency_cell(s: &Scaling) -> String {
    match (s.efficiency, s.single_peer_tokens_per_s) {
        (Some(e), _) => format!("{e:.2}"),
        (None, None) => "not measured".to_string(),
        (None, Some(_)) => "n/a (no train lines)".to_string(),
    }
}

/// The data-parallel runs with their scaling efficiency, and whether any of them ran on the
/// CPU; `None` when every run used one device.
pub(crate) fn scaling_table(
    exp: &Experiment,
    analyses: &[SeedAnalysis],
    multi: bool,
) -> Option<(Block, bool)> {
    let header = [
        "run",
        "devices",
        "tokens/s (median, global)",
        "one peer alone, tokens/s (rows)",
        "scaling efficiency",
    ]
    .map(String::from)
    .to_vec();
    let runs = scaling_rows(exp, analyses, multi);
    let on_cpu = runs.iter().any(|(_, s)| s.on_cpu);
    let rows: Vec<Vec<String>> = runs
        .into_iter()
        .map(|(name, s)| {
            let reference = match s.single_peer_tokens_per_s {
                Some(r) => format!(
                    "{}{}",
                    fmt::sig(r, 4),
                    s.single_peer_rows
                        .map(|n| format!(" ({n} rows)"))
                        .unwrap_or_default()
                ),
                None => "not measured".to_string(),
            };
            vec![
                name,
                s.devices.to_string(),
                opt(s.tokens_per_s, |v| fmt::sig(v, 4)),
                reference,
                efficiency_cell(&s),
            ]
        })
        .collect();
    (!rows.is_empty()).then_some((Block::Table { header, rows }, on_cpu))
}

pub(crate) fn symmetry_table(analyses: &[SeedAnalysis], multi: bool) -> Option<Block> {
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

/// The growth chain stage by stage, per seed: what each stage cost and the route's cumulative
/// cost after it (small run, then each expansion and growth stage), with the whole route's
/// total and the baseline beside it. `None` unless some seed grows in more than one stage.
pub(crate) fn chain_table(analyses: &[SeedAnalysis], multi: bool) -> Option<Block> {
    if analyses.iter().all(|a| a.chain.len() < 2) {
        return None;
    }
    let mut header = Vec::new();
    if multi {
        header.push("seed".to_string());
    }
    header.extend(
        [
            "stage",
            "parameters",
            "steps",
            "FLOPs",
            "cumulative FLOPs",
            "device-hours",
            "cumulative device-hours",
            "final val loss",
        ]
        .map(String::from),
    );
    let mut rows = Vec::new();
    let na = || "n/a".to_string();
    for a in analyses {
        let mut push = |cells: [String; 8]| {
            let mut row = Vec::new();
            if multi {
                row.push(a.label.clone());
            }
            row.extend(cells);
            rows.push(row);
        };
        let small = a.small.as_ref();
        push([
            "small".to_string(),
            na(),
            opt(small.and_then(|s| s.steps), |v| v.to_string()),
            opt(small.and_then(|s| s.flops), fmt::flops),
            opt(small.and_then(|s| s.flops), fmt::flops),
            opt(small.and_then(|s| s.device_hours), fmt::hours),
            opt(small.and_then(|s| s.device_hours), fmt::hours),
            opt(small.and_then(|s| s.final_val_loss), fmt::loss),
        ]);
        for link in &a.chain {
            push([
                format!("{} (expansion {})", link.expand_dir, link.index),
                opt(link.params, fmt::count),
                na(),
                "0 (copies weights)".to_string(),
                opt(link.flops_before, fmt::flops),
                opt(link.expand_hours, fmt::hours),
                opt(link.hours_before, fmt::hours),
                na(),
            ]);
            let stats = link.stats.as_ref();
            push([
                format!("{} (growth stage {})", link.train_dir, link.index),
                opt(link.params, fmt::count),
                opt(stats.and_then(|s| s.steps), |v| v.to_string()),
                opt(stats.and_then(|s| s.flops), fmt::flops),
                opt(link.flops_after(), fmt::flops),
                opt(stats.and_then(|s| s.device_hours), fmt::hours),
                opt(link.hours_after(), fmt::hours),
                opt(stats.and_then(|s| s.final_val_loss), fmt::loss),
            ]);
        }
        push([
            "cloned route, total".to_string(),
            na(),
            na(),
            opt(a.route_flops, fmt::flops),
            opt(a.route_flops, fmt::flops),
            opt(a.route_hours, fmt::hours),
            opt(a.route_hours, fmt::hours),
            opt(a.large.as_ref().and_then(|s| s.final_val_loss), fmt::loss),
        ]);
        let baseline = a.baseline.as_ref();
        push([
            "baseline (final shape, random init)".to_string(),
            na(),
            opt(baseline.and_then(|s| s.steps), |v| v.to_string()),
            opt(baseline.and_then(|s| s.flops), fmt::flops),
            opt(baseline.and_then(|s| s.flops), fmt::flops),
            opt(baseline.and_then(|s| s.device_hours), fmt::hours),
            opt(baseline.and_then(|s| s.device_hours), fmt::hours),
            opt(baseline.and_then(|s| s.final_val_loss), fmt::loss),
        ]);
    }
    Some(Block::Table { header, rows })
}

pub(crate) fn expansion_table(exp: &Experiment) -> Option<Block> {
    // One column per seed, or per seed and expansion of a growth chain.
    let chained = exp.seeds.iter().any(|s| s.chain.len() > 1);
    let infos: Vec<(String, &crate::inputs::ExpandInfo)> = exp
        .seeds
        .iter()
        .flat_map(|s| {
            s.chain.iter().filter_map(move |l| {
                let label = match (chained, exp.multi_seed) {
                    (true, true) => format!("{}, {}", s.label, l.expand_dir),
                    (true, false) => l.expand_dir.clone(),
                    (false, _) => s.label.clone(),
                };
                Some((label, l.expand.as_ref()?))
            })
        })
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
        ("variant", "variant", |e| e.record.variant.clone()),
        ("width_factor", "width factor", |e| {
            e.record.width_factor.map(|v| v.to_string())
        }),
        ("ffn_factor", "FFN factor", |e| {
            e.record.ffn_factor.map(|v| v.to_string())
        }),
        ("source_params", "small model parameters", |e| {
            e.record.source_params.map(fmt::count)
        }),
        ("target_params", "expanded model parameters", |e| {
            e.record.target_params.map(fmt::count)
        }),
        (
            "max_abs_logit_diff",
            "max |logit difference| small vs expanded",
            |e| e.record.max_abs_logit_diff.map(|v| fmt::sig(v, 3)),
        ),
        ("rel_err", "relative error of the logits", |e| {
            e.record.rel_err.map(|v| fmt::sig(v, 3))
        }),
        ("kl", "KL(small ‖ expanded)", |e| {
            e.record.kl.map(|v| fmt::sig(v, 3))
        }),
        ("wall_s", "wall time", |e| {
            e.record.wall_s.map(fmt::duration)
        }),
        ("device_hours", "device-hours", |e| {
            e.record.device_hours.map(fmt::hours)
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

pub(crate) fn configs(exp: &Experiment) -> Vec<Block> {
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
        for kind in StageKind::ALL {
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
