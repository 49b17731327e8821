//! The verdict: what the numbers say, in words. It leads with the cost that counts — the small
//! run, the expansion and the cloned run together — and says plainly when the comparison is
//! degenerate (the small model gets to the target on its own), when the cloned run never got
//! there, and when the machine disturbed the timings.

use super::stage_stats;
use super::tables::race_words;
use crate::analysis::{
    spread, Axis, Race, SeedAnalysis, Shortcut, TargetAggregate, TargetResult, STEP_TIME_TOLERANCE,
};
use crate::format as fmt;
use crate::inputs::{Experiment, StageKind};

/// What the verdict concluded, beside its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The verdict's paragraphs.
    pub paragraphs: Vec<String>,
    /// The small run, the control or an earlier growth stage reached the baseline's final val
    /// loss at no more cost than the baseline (in some seed): no speedup is claimed for growth.
    pub degenerate: bool,
    /// The cloned run's and the baseline's median step times differ by more than
    /// [`STEP_TIME_TOLERANCE`] in some seed: the device-hour figures are disturbed.
    pub disturbed: bool,
}

impl Verdict {
    /// The paragraphs as one text, separated by blank lines.
    pub fn text(&self) -> String {
        self.paragraphs.join("\n\n")
    }
}

fn values(analyses: &[SeedAnalysis], f: impl Fn(&SeedAnalysis) -> Option<f64>) -> Vec<f64> {
    analyses.iter().filter_map(f).collect()
}

fn spread_text(v: &[f64], show: fn(f64) -> String) -> String {
    spread(v)
        .map(|s| fmt::spread(&s, show))
        .unwrap_or_else(|| "n/a".to_string())
}

fn axis_name(axis: Axis) -> &'static str {
    match axis {
        Axis::Flops => "training FLOPs",
        Axis::DeviceHours => "device-hours",
        Axis::Tokens => "tokens",
        Axis::Step => "steps",
    }
}

fn axis_format(axis: Axis) -> fn(f64) -> String {
    match axis {
        Axis::DeviceHours => fmt::hours,
        _ => fmt::flops,
    }
}

/// "the small run alone reached it with 3.600e12 training FLOPs (the baseline needed 8.300e12)".
fn shortcut_words(s: &Shortcut) -> String {
    let f = axis_format(s.axis);
    format!(
        "{} reached it with {} {} (the baseline needed {})",
        match (s.control, s.earlier_stage) {
            (true, _) => "the continued-small control (small run included)".to_string(),
            (false, Some(k)) => format!(
                "growth stage {k}, before the last growth (the small run, the stages before it \
                 and the expansions included),"
            ),
            (false, None) => "the small run alone".to_string(),
        },
        f(s.cost),
        axis_name(s.axis),
        f(s.baseline)
    )
}

/// The paragraph for a budget too short for the wide model: names every shortcut found.
fn degenerate_paragraph(finals: &[(&SeedAnalysis, &TargetResult)], target: &str) -> String {
    let multi = finals.len() > 1;
    let mut parts = Vec::new();
    let mut seeds_hit = 0;
    for (a, t) in finals {
        let shortcuts = t.shortcuts();
        if shortcuts.is_empty() {
            continue;
        }
        seeds_hit += 1;
        // One sentence per kind of shortcut, on FLOPs when it holds there (the stable axis).
        let mut words = Vec::new();
        let kinds = [(false, false), (true, false), (false, true)];
        for (control, earlier) in kinds {
            let pick = shortcuts
                .iter()
                .filter(|s| s.control == control && s.earlier_stage.is_some() == earlier)
                .min_by_key(|s| (s.axis != Axis::Flops, s.earlier_stage));
            if let Some(s) = pick {
                words.push(shortcut_words(s));
            }
        }
        let words = words.join(", and ");
        parts.push(if multi {
            format!("{}: {words}", a.label)
        } else {
            words
        });
    }
    let scope = if multi {
        format!(" (in {seeds_hit} of {} seeds)", finals.len())
    } else {
        String::new()
    };
    // Only earlier growth stages got there cheaper: the small model did not, but a grown model
    // smaller than the baseline's did.
    let only_earlier = finals
        .iter()
        .all(|(_, t)| t.shortcuts().iter().all(|s| s.earlier_stage.is_some()));
    if only_earlier {
        return format!(
            "No speedup is claimed for the last growth: the budget is too short for the final \
             shape to pay{scope}. The baseline's final val loss ({target}) was reached at no \
             more cost than the baseline needed by a stage of the chain smaller than the \
             baseline's shape: {}. That smaller grown model is the better model to train at \
             this budget, so what the route to the final shape saves against the baseline says \
             nothing about growing to it; the cost tables below still list those ratios, for \
             this budget only. Give the last stage and the baseline a longer budget until the \
             baseline beats the earlier stages.",
            parts.join("; ")
        );
    }
    format!(
        "No speedup is claimed for growth: the budget is too short for the wide model to pay{scope}. \
         The baseline's final val loss ({target}) was reached at no more cost than the baseline \
         needed without training any wide model: {}. A smaller model is the better model to train \
         at this budget, so what the cloned run saves against the baseline says nothing about \
         growing; the cost tables below still list those ratios, for this budget only. Give the \
         wide runs a longer budget (or start from a smaller small model) until the baseline beats \
         the small model and the control.",
        parts.join("; ")
    )
}

/// The verdict, generated from the numbers.
pub fn verdict(exp: &Experiment, analyses: &[SeedAnalysis], aggs: &[TargetAggregate]) -> Verdict {
    let n = analyses.len();
    let disturbed_checks: Vec<(&SeedAnalysis, f64, f64)> = analyses
        .iter()
        .filter_map(|a| {
            let c = a.step_times.as_ref()?;
            Some((a, c.cloned_s, c.baseline_s))
        })
        .collect();
    let disturbed = analyses
        .iter()
        .any(|a| a.step_times.as_ref().is_some_and(|c| c.disturbed()));
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
        return Verdict {
            paragraphs: vec![format!(
                "No verdict yet: the {} run has logged no validation loss, so there is nothing \
                 to compare.",
                if missing.is_empty() {
                    "cloned or baseline".to_string()
                } else {
                    missing.join(" and the ")
                }
            )],
            degenerate: false,
            disturbed,
        };
    };
    let finals: Vec<(&SeedAnalysis, &TargetResult)> = analyses
        .iter()
        .filter_map(|a| Some((a, a.final_target()?)))
        .collect();
    let target = fin
        .target_loss
        .as_ref()
        .map(|s| fmt::spread(s, fmt::loss))
        .unwrap_or_else(|| "n/a".into());
    // Over the seeds whose cloned run and baseline both have val losses (a seed still running
    // has none yet).
    let seeds_note = if fin.seeds > 1 {
        format!(" (mean, range and count over {} seeds)", fin.seeds)
    } else {
        String::new()
    };
    let degenerate = finals.iter().any(|(_, t)| !t.shortcuts().is_empty());
    let mut paragraphs = Vec::new();

    // 1. The headline: total cost, or why there is none.
    if degenerate {
        paragraphs.push(degenerate_paragraph(&finals, &target));
    } else if fin.reached == 0 {
        let best = values(analyses, |a| a.large.as_ref()?.best_val_loss);
        paragraphs.push(format!(
            "The cloned run never reached the baseline's final val loss of {target}: its best val \
             loss was {}. HyperCloning therefore shows no speedup to that target in this \
             experiment, total or large-only.",
            spread_text(&best, fmt::loss)
        ));
    } else {
        let scope = if fin.reached < fin.seeds {
            format!(
                "In {} of {} seeds (the others never reached it, so no figure over all seeds can \
                 be given), c",
                fin.reached, fin.seeds
            )
        } else {
            "C".to_string()
        };
        let total = |s: &Option<crate::analysis::Spread>| {
            s.as_ref()
                .map(fmt::speedup_spread)
                .unwrap_or_else(|| "n/a".into())
        };
        let stages = analyses.iter().map(|a| a.chain.len()).max().unwrap_or(1);
        let route = if stages > 1 {
            format!(
                "the small run and all {stages} growth stages of the chain, each expansion \
                 included, the last up to the target"
            )
        } else {
            "the small run, the expansion and the cloned run".to_string()
        };
        let mut text = format!(
            "{scope}ounting everything it took ({route}), HyperCloning reached the baseline's final val loss ({target}) with a total speedup \
             of {} in training FLOPs and {} in device-hours over training the wide model from \
             random init (the baseline's cost ÷ the cloned route's){seeds_note}.",
            total(&fin.flops_total),
            total(&fin.hours_total),
        );
        if fin.flops_total.as_ref().is_some_and(|s| s.mean < 1.0)
            || fin.hours_total.as_ref().is_some_and(|s| s.mean < 1.0)
        {
            text.push_str(
                " A factor below 1× means the cloned route cost more than training the \
                 baseline directly.",
            );
        }
        if disturbed {
            text.push_str(
                " The device-hour figure is disturbed by the machine (see the measurement check \
                 below); the FLOPs figure stands.",
            );
        }
        paragraphs.push(text);

        // 2. Large-only, labelled as the figure that holds when the small model exists.
        let met_everywhere = finals
            .iter()
            .filter(|(_, t)| t.cloned_reached)
            .all(|(_, t)| t.met_at_initialisation());
        let who = if stages > 1 {
            "the model before the last growth already exists and only the last growth stage is \
             paid for"
        } else {
            "the small model already exists (e.g. imported from the hub) and only the wide run \
             is paid for"
        };
        let large_only = if met_everywhere {
            let first = values(analyses, |a| a.large.as_ref()?.first_val_loss);
            format!(
                "Large-only, the figure that holds when {who}: the expanded model met the target \
                 at initialisation (val loss {} before any training), so there is no large-only \
                 factor to give.",
                spread_text(&first, fmt::loss)
            )
        } else {
            format!(
                "Large-only, the figure that holds when {who}: {} in training FLOPs, {} in \
                 device-hours.",
                total(&fin.flops_large_only),
                total(&fin.hours_large_only)
            )
        };
        paragraphs.push(large_only);
    }

    // 3. The continued-small control.
    if let Some(p) = control_paragraph(analyses, &finals) {
        paragraphs.push(p);
    }

    // 4. Equal budget: the final losses.
    let mut ends = String::new();
    let diffs = values(analyses, |a| {
        Some(a.large.as_ref()?.final_val_loss? - a.baseline.as_ref()?.final_val_loss?)
    });
    if let Some(d) = spread(&diffs) {
        ends.push_str(&format!(
            "At the end of their {} the cloned run's val loss was {} against the baseline's {} \
             (difference {}{}).",
            if analyses.iter().any(|a| a.chain.len() > 1) {
                "budgets (the last growth stage's and the baseline's)"
            } else {
                "equal budgets"
            },
            spread_text(
                &values(analyses, |a| a.large.as_ref()?.final_val_loss),
                fmt::loss
            ),
            spread_text(
                &values(analyses, |a| a.baseline.as_ref()?.final_val_loss),
                fmt::loss
            ),
            if d.mean >= 0.0 { "+" } else { "" },
            fmt::spread(&d, fmt::loss)
        ));
    }
    let earlier: Vec<String> = aggs
        .iter()
        .filter(|a| a.fraction < 1.0)
        .map(|a| {
            let pct = format!("{:.0} %", a.fraction * 100.0);
            match (&a.flops_total, &a.hours_total) {
                (Some(f), Some(h)) if a.reached == a.seeds => format!(
                    "{pct}: {} FLOPs, {} device-hours",
                    fmt::speedup_spread(f),
                    fmt::speedup_spread(h)
                ),
                _ if a.reached == 0 => format!("{pct}: not reached"),
                _ => format!("{pct}: reached in {} of {} seeds", a.reached, a.seeds),
            }
        })
        .collect();
    if !earlier.is_empty() {
        ends.push_str(&format!(
            " Total speedups to the baseline's val loss at earlier points of its budget{}: {}.",
            if degenerate {
                " (for this budget only, not a benefit of growth)"
            } else {
                ""
            },
            earlier.join("; ")
        ));
    }
    if !ends.is_empty() {
        paragraphs.push(ends.trim_start().to_string());
    }

    // 5. The measurement check.
    if !disturbed_checks.is_empty() {
        let medians: Vec<String> = disturbed_checks
            .iter()
            .map(|(a, c, b)| {
                format!(
                    "{}{} ms cloned vs {} ms baseline ({:+.0} %)",
                    if n > 1 {
                        format!("{}: ", a.label)
                    } else {
                        String::new()
                    },
                    fmt::sig(c * 1e3, 3),
                    fmt::sig(b * 1e3, 3),
                    (c / b - 1.0) * 100.0
                )
            })
            .collect();
        paragraphs.push(if disturbed {
            format!(
                "Measurement check failed: the cloned run and the baseline train the same model \
                 on the same batches, so their median step times should match, but they differ \
                 by more than {:.0} % ({}). The machine disturbed at least one of them: the \
                 device-hour figures are off by about that much. The FLOPs figures stand.",
                STEP_TIME_TOLERANCE * 100.0,
                medians.join("; ")
            )
        } else {
            format!(
                "Measurement check passed: the median step times of the same-shaped cloned run \
                 and baseline agree within {:.0} % ({}).",
                STEP_TIME_TOLERANCE * 100.0,
                medians.join("; ")
            )
        });
    }

    // 6. Seeds and missing files.
    let mut notes = Vec::new();
    if n == 1 {
        notes.push(
            "One seed: no spread can be given (`hyperclone run EXP.toml --seeds 3` runs three)."
                .to_string(),
        );
    }
    if exp.seeds.iter().any(|s| s.expand.is_none()) {
        notes.push(
            "No `expand.json` was found for some seeds: their expansion cost counts as 0."
                .to_string(),
        );
    }
    if !notes.is_empty() {
        paragraphs.push(notes.join(" "));
    }
    Verdict {
        paragraphs,
        degenerate,
        disturbed,
    }
}

/// What the continued-small control says at the baseline's final val loss and at its total
/// FLOPs; `None` when no seed has a control.
fn control_paragraph(
    analyses: &[SeedAnalysis],
    finals: &[(&SeedAnalysis, &TargetResult)],
) -> Option<String> {
    let with_control: Vec<&(&SeedAnalysis, &TargetResult)> =
        finals.iter().filter(|(_, t)| t.control_ran).collect();
    if with_control.is_empty() {
        return None;
    }
    let races: Vec<Race> = with_control
        .iter()
        .filter_map(|(_, t)| t.race(Axis::Flops))
        .collect();
    let count = |r: Race| races.iter().filter(|x| **x == r).count();
    let outcome = if races.len() == 1 {
        format!(
            "to the baseline's final val loss, in FLOPs: {}",
            race_words(races[0])
        )
    } else {
        format!(
            "to the baseline's final val loss, in FLOPs, over {} seeds: cloned run first in {}, \
             control first in {}, neither in {}",
            races.len(),
            count(Race::ClonedFirst) + count(Race::ControlNever),
            count(Race::ControlFirst) + count(Race::ClonedNever),
            count(Race::Neither)
        )
    };
    let mut text = format!(
        "The continued-small control trains the small model on, on the wide runs' batches, until \
         small run + control have spent the baseline's total FLOPs; it asks whether growing beat \
         simply training the small model further. Who got there first, {outcome}."
    );
    // The wide model is the right model at this budget when the baseline ends below the control.
    let gaps = values(analyses, |a| {
        Some(a.control.as_ref()?.final_val_loss? - a.baseline.as_ref()?.final_val_loss?)
    });
    if let Some(g) = spread(&gaps) {
        text.push_str(&format!(
            " At the baseline's total FLOPs the control's val loss was {} against the baseline's \
             {}: control minus baseline {} nats{}.",
            spread_text(
                &values(analyses, |a| a.control.as_ref()?.final_val_loss),
                fmt::loss
            ),
            spread_text(
                &values(analyses, |a| a.baseline.as_ref()?.final_val_loss),
                fmt::loss
            ),
            fmt::spread(&g, fmt::loss),
            if g.max <= 0.0 {
                " (the baseline is not lower: the small model is the better model at this budget)"
            } else if g.min > 0.0 {
                " (the wide baseline ends lower: the wide model is the right model at this budget)"
            } else {
                " (the sign differs between seeds)"
            }
        ));
    }
    Some(text)
}
