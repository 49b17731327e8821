//! End-to-end: synthetic experiment directories whose val-loss curves follow a formula, so the
//! speedups the report computes can be checked against their analytic values.
//!
//! Model of the curves (n = tokens seen by the run):
//!   baseline  L_b(n) = A + B / sqrt(n + N0)
//!   cloned    L_c(n) = A + B / sqrt(n + N0 + S)   (as if it had already seen S tokens)
//! Both large runs cost `R_LARGE` device-hours per token and `6·P_LARGE` FLOPs per token.
//! The baseline's final val loss (n = N) is reached by the cloned run at n = N − S, so
//!   speedup large-only = N / (N − S)
//!   speedup total      = N·R_LARGE / ((N − S)·R_LARGE + small_hours + expand_hours)
//! and the baseline's val loss at a fraction q of its tokens is reached at n = qN − S.

use std::path::Path;

use serde_json::json;

const A: f64 = 2.0;
const B: f64 = 400.0;
const N0: f64 = 1_000.0;
const TOKENS_PER_STEP: u64 = 1_000;
const LARGE_STEPS: u64 = 400;
const EVAL_EVERY: u64 = 10;
const SMALL_STEPS: u64 = 200;
const R_LARGE: f64 = 1e-6; // device-hours per token
const R_SMALL: f64 = 0.25e-6;
const P_LARGE: f64 = 4.0e6;
const P_SMALL: f64 = 1.0e6;
const EXPAND_HOURS: f64 = 0.002;

fn n_total() -> f64 {
    (LARGE_STEPS * TOKENS_PER_STEP) as f64
}

fn loss_at(n: f64, shift: f64) -> f64 {
    A + B / (n + N0 + shift).sqrt()
}

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// One training run's metrics. `loss(n)` gives the val loss; `interrupt` re-logs a stretch of
/// steps as a resumed run would, with wrong values first (a dedupe bug would keep those).
fn run_lines(
    steps: u64,
    hours_per_token: f64,
    params: f64,
    loss: &dyn Fn(f64) -> f64,
    symmetry: bool,
    interrupt: Option<(u64, u64)>,
) -> Vec<serde_json::Value> {
    let train = |step: u64, bad: bool| {
        let n = (step * TOKENS_PER_STEP) as f64;
        json!({
            "kind": "train", "step": step, "tokens": step * TOKENS_PER_STEP,
            "loss": loss(n) + 0.05 + if bad { 5.0 } else { 0.0 },
            "lr": 1e-3, "grad_norm": 1.0, "step_time_s": 0.5,
            "tokens_per_s": if bad { 1.0 } else { 2000.0 },
            "wall_s": n * hours_per_token * 3600.0,
            "device_hours": n * hours_per_token, "flops": 6.0 * params * n,
            "tflops_per_s": 0.1, "mfu": 0.3, "mfu_estimated": false,
            "peak_memory_bytes": 1u64 << 30, "data_time_s": 0.01,
            "an_unknown_field": "ignored"
        })
    };
    let eval = |step: u64, bad: bool| {
        let n = (step * TOKENS_PER_STEP) as f64;
        let frac = n / n_total();
        let sym = symmetry.then(|| {
            let mean = 1.0 - 0.3 * frac;
            json!({"mean": mean, "per_layer": [mean + 0.01, mean - 0.01]})
        });
        json!({
            "kind": "eval", "step": step, "tokens": step * TOKENS_PER_STEP,
            "val_loss": loss(n) + if bad { 3.0 } else { 0.0 },
            "val_ppl": loss(n).exp(), "wall_s": n * hours_per_token * 3600.0,
            "device_hours": n * hours_per_token, "flops": 6.0 * params * n,
            "symmetry": sym
        })
    };
    let mut lines = vec![eval(0, false)];
    let emit = |lines: &mut Vec<serde_json::Value>, from: u64, to: u64, bad: bool| {
        for step in from..=to {
            lines.push(train(step, bad));
            if step % EVAL_EVERY == 0 {
                lines.push(eval(step, bad));
            }
        }
    };
    match interrupt {
        Some((from, to)) => {
            emit(&mut lines, 1, from - 1, false);
            // The killed process had logged from..=to with values the resumed run replaces.
            emit(&mut lines, from, to, true);
            emit(&mut lines, from, steps, false);
        }
        None => emit(&mut lines, 1, steps, false),
    }
    lines
}

fn write_stage(
    dir: &Path,
    name: &str,
    lines: &[serde_json::Value],
    params: f64,
    init: &str,
    seed: u64,
) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    write_lines(&d.join("metrics.jsonl"), lines);
    std::fs::write(
        d.join("run_info.json"),
        json!({"backend": "flex", "device": "cpu", "device_name": "Test CPU | 2 cores",
               "devices": 1, "param_count": params as u64, "flops_per_token": 6.0 * params,
               "seed": seed, "precision": "f32", "attention": "fused", "init": init})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("config.toml"),
        format!("[run]\nname = \"{name}\"\nseed = {seed}\n"),
    )
    .unwrap();
}

/// Writes the four stages of one seed into `dir`; `shift` is S (tokens), `plateau` makes the
/// cloned run stop improving at that loss.
fn write_seed(dir: &Path, shift: f64, plateau: Option<f64>, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let start = loss_at(0.0, shift);
    // The small model ends where the expanded model starts (function preservation).
    let small_end = (SMALL_STEPS * TOKENS_PER_STEP) as f64;
    let small_a = start - 300.0 / (small_end + N0).sqrt();
    let small = run_lines(
        SMALL_STEPS,
        R_SMALL,
        P_SMALL,
        &|n| small_a + 300.0 / (n + N0).sqrt(),
        false,
        None,
    );
    write_stage(dir, "small", &small, P_SMALL, "random", seed);
    std::fs::create_dir_all(dir.join("expand")).unwrap();
    std::fs::write(
        dir.join("expand/expand.json"),
        json!({"wall_s": EXPAND_HOURS * 3600.0, "device_hours": EXPAND_HOURS,
               "source_params": P_SMALL as u64, "target_params": P_LARGE as u64,
               "width_factor": 2, "ffn_factor": 2, "variant": "symmetric",
               "max_abs_logit_diff": 1.5e-5, "rel_err": 2e-7, "kl": 1e-10, "snr_db": 30.0})
        .to_string(),
    )
    .unwrap();
    let cloned_loss = move |n: f64| {
        let l = loss_at(n, shift);
        plateau.map_or(l, |p| l.max(p))
    };
    let large = run_lines(
        LARGE_STEPS,
        R_LARGE,
        P_LARGE,
        &cloned_loss,
        true,
        Some((151, 187)),
    );
    write_stage(dir, "large", &large, P_LARGE, "expanded", seed);
    let baseline = run_lines(
        LARGE_STEPS,
        R_LARGE,
        P_LARGE,
        &|n| loss_at(n, 0.0),
        false,
        None,
    );
    write_stage(dir, "baseline", &baseline, P_LARGE, "random", seed);
}

const EXPERIMENT_TOML: &str =
    "[experiment]\nname = \"synthetic\"\n# a `tick` and <angle> brackets\n";

fn small_hours() -> f64 {
    (SMALL_STEPS * TOKENS_PER_STEP) as f64 * R_SMALL
}

/// Analytic large-only and total device-hours speedups to the target at fraction `q`.
fn analytic(q: f64, shift: f64) -> (f64, f64) {
    let base = q * n_total();
    let cloned = base - shift;
    (
        base / cloned,
        base * R_LARGE / (cloned * R_LARGE + small_hours() + EXPAND_HOURS),
    )
}

/// Largest error, in tokens, of a crossing found by linear interpolation between eval points
/// spaced `delta` apart on the convex curve f(x) = B/sqrt(x) (x = n + N0 + S): the chord lies
/// above the curve by at most delta²/8·f''(x* − delta), and it falls with a slope at least
/// |f'(x* + delta)|, so the interpolated crossing is late by at most the ratio of the two.
fn interpolation_bound(true_crossing_n: f64, shift: f64) -> f64 {
    let delta = (EVAL_EVERY * TOKENS_PER_STEP) as f64;
    let x = true_crossing_n + N0 + shift;
    let f2 = |x: f64| 0.75 * B * x.powf(-2.5);
    let f1 = |x: f64| 0.5 * B * x.powf(-1.5);
    delta * delta / 8.0 * f2(x - delta) / f1(x + delta)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn single_seed_report_has_every_section_and_the_analytic_speedups() {
    let tmp = tempfile::tempdir().unwrap();
    // REPORT_E2E_OUT=<dir> keeps the experiments of this file's tests there, to look at.
    let exp = match std::env::var_os("REPORT_E2E_OUT") {
        Some(dir) => Path::new(&dir).join("exp"),
        None => tmp.path().join("exp"),
    };
    // S = 10 % of the budget keeps the 25 % target's crossing (at 15 % of the tokens) six
    // eval intervals from the start, where the interpolation bound is still under 1 %.
    let shift = 0.1 * n_total();
    write_seed(&exp, shift, None, 7);
    std::fs::write(exp.join("experiment.toml"), EXPERIMENT_TOML).unwrap();

    let summary = hyperclone_report::write_report(&exp).unwrap();
    let md = read(&exp.join("report.md"));
    let html = read(&exp.join("report.html"));

    // Every section heading.
    assert!(
        // The experiment's name from experiment.toml, not the folder's.
        md.starts_with("# HyperCloning report: synthetic\n"),
        "{}",
        &md[..80]
    );
    for heading in [
        "## Verdict",
        "## Validation loss",
        "## Training loss",
        "## Cost to reach the baseline's val loss",
        "### Device-hours",
        "### FLOPs",
        "## Final losses",
        "## Throughput and hardware",
        "## Symmetry of the cloned run",
        "## Expansion check",
        "## Seeds",
        "## Configs",
    ] {
        assert!(md.contains(&format!("\n{heading}\n")), "missing {heading}");
        let h = heading.trim_start_matches('#').trim();
        assert!(
            html.contains(&format!(">{}<", h.replace('\'', "&#39;"))),
            "html missing {h}"
        );
    }
    // The configs are embedded verbatim (Markdown) and escaped (HTML).
    assert!(md.contains(EXPERIMENT_TOML));
    assert!(html.contains("&lt;angle&gt;"));
    assert!(md.contains("[run]\nname = \"large\"\nseed = 7\n"));
    // The expansion check and an unknown expand.json key, hardware with a `|` in its name.
    assert!(md.contains("symmetric") && md.contains("snr_db"));
    assert!(md.contains("Test CPU \\| 2 cores"));
    assert!(
        md.contains("| f32 | fused |"),
        "the throughput table names the attention"
    );

    // Plots: every PNG starts with the PNG magic, every SVG is an SVG document, and each is
    // linked from report.md.
    let pngs: Vec<_> = summary
        .plots
        .iter()
        .filter(|p| p.extension().unwrap() == "png")
        .collect();
    let svgs: Vec<_> = summary
        .plots
        .iter()
        .filter(|p| p.extension().unwrap() == "svg")
        .collect();
    assert_eq!(pngs.len(), 5, "{:?}", summary.plots);
    assert_eq!(svgs.len(), 5);
    for p in &pngs {
        let bytes = std::fs::read(p).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", p.display());
        let rel = format!("plots/{}", p.file_name().unwrap().to_string_lossy());
        assert!(md.contains(&format!("]({rel})")), "md does not link {rel}");
    }
    for p in &svgs {
        let text = read(p);
        let t = text.trim_start();
        assert!(
            t.starts_with("<svg") || t.starts_with("<?xml"),
            "{}",
            p.display()
        );
        assert!(text.trim_end().ends_with("</svg>"));
        assert!(
            text.contains("<text"),
            "SVG without any text: {}",
            p.display()
        );
    }

    // The HTML is self-contained: every src is a data URI, no links, scripts or style sheets
    // from elsewhere, one embedded image per plot.
    assert!(!html.contains("src=\"http"));
    assert!(!html.contains("href="));
    assert!(!html.contains("<link") && !html.contains("<script") && !html.contains("url("));
    assert!(!html.contains("@import") && !html.contains("plots/"));
    let srcs: Vec<&str> = html.split("src=\"").skip(1).collect();
    assert_eq!(srcs.len(), 5);
    assert!(srcs.iter().all(|s| s.starts_with("data:image/png;base64,")));

    // Speedups against the formula. The interpolated crossing can only be late (the chord of
    // a convex curve lies above it), by at most `interpolation_bound` tokens, so the measured
    // speedup lies in [analytic at (cloned tokens + bound), analytic].
    let check = |q: f64, large_only: f64, total: f64| {
        let (lo, tot) = analytic(q, shift);
        let n_star = q * n_total() - shift;
        let late = interpolation_bound(n_star, shift);
        let lo_min = q * n_total() / (n_star + late);
        let tot_min =
            q * n_total() * R_LARGE / ((n_star + late) * R_LARGE + small_hours() + EXPAND_HOURS);
        let eps = 1e-9;
        assert!(
            large_only <= lo + eps && large_only >= lo_min - eps,
            "q={q}: large-only {large_only} not in [{lo_min}, {lo}]"
        );
        assert!(
            total <= tot + eps && total >= tot_min - eps,
            "q={q}: total {total} not in [{tot_min}, {tot}]"
        );
        // The bound itself is small: under 1 % of the speedup here.
        assert!(
            (lo - lo_min) / lo < 0.01,
            "q={q}: bound too loose to be a test"
        );
    };
    assert_eq!(summary.final_target_reached, 1);
    check(
        1.0,
        summary.speedup_large_only.unwrap(),
        summary.speedup_total.unwrap(),
    );
    let seed = &summary.seeds[0];
    for t in &seed.targets {
        check(
            t.fraction,
            t.hours.speedup_large_only().unwrap(),
            t.hours.speedup_total().unwrap(),
        );
        // FLOPs are proportional to tokens in both large runs: same large-only speedup.
        let f = t.flops.speedup_large_only().unwrap();
        assert!((f - t.hours.speedup_large_only().unwrap()).abs() < 1e-9);
    }
    assert_eq!(seed.targets.len(), 4);
    // The re-logged stretch (steps 151..=187 logged twice, wrong values first) was deduped.
    assert_eq!(seed.large.as_ref().unwrap().relogged, 37 + 3);
    assert_eq!(
        seed.large.as_ref().unwrap().median_tokens_per_s,
        Some(2000.0)
    );

    // Final losses match the formula; the verdict states the measured speedups.
    let fin_base = loss_at(n_total(), 0.0);
    assert!((summary.final_val_loss_baseline.unwrap() - fin_base).abs() < 1e-12);
    assert!((summary.final_val_loss_large.unwrap() - loss_at(n_total(), shift)).abs() < 1e-12);
    let lo_text = format!("{:.2}×", summary.speedup_large_only.unwrap());
    assert!(summary.verdict.contains(&lo_text), "{}", summary.verdict);
    assert!(md.contains(&summary.verdict.replace('*', "\\*")));
    assert!(seed.targets.iter().all(|t| t.cloned_reached));
    assert!(!md.contains("| none: not reached"));
    // Total first: the verdict leads with the cost of the whole route.
    assert!(
        summary.verdict.starts_with("Counting everything it took"),
        "{}",
        summary.verdict
    );
    assert!(
        summary.verdict.contains("Large-only"),
        "{}",
        summary.verdict
    );
    assert!(!summary.degenerate && !summary.timing_disturbed);
    // The symmetry table shows first and last values.
    assert!(
        md.contains("1.0000 (0)") && md.contains("0.7000 (400)"),
        "symmetry table"
    );

    // Re-running overwrites in place and leaves no temporary file behind.
    let again = hyperclone_report::write_report(&exp).unwrap();
    assert_eq!(again.speedup_total, summary.speedup_total);
    assert_eq!(read(&exp.join("report.md")), md);
    for dir in [exp.clone(), exp.join("plots")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp"), "temporary file left: {name}");
        }
    }
    assert!(!summary.table().is_empty());
}

#[test]
fn a_cloned_run_that_never_reaches_the_target_gets_no_speedup() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = match std::env::var_os("REPORT_E2E_OUT") {
        Some(dir) => Path::new(&dir).join("plateau"),
        None => tmp.path().join("plateau"),
    };
    let shift = 0.2 * n_total();
    // The cloned run stops improving above the baseline's final loss but below its 50 % loss.
    let fin = loss_at(n_total(), 0.0);
    let half = loss_at(0.5 * n_total(), 0.0);
    write_seed(&exp, shift, Some((fin + half) / 2.0), 1);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    assert_eq!(summary.final_target_reached, 0);
    assert_eq!(summary.speedup_large_only, None);
    assert_eq!(summary.speedup_total, None);
    assert!(
        summary.verdict.contains("never reached"),
        "{}",
        summary.verdict
    );
    let md = read(&exp.join("report.md"));
    assert!(md.contains("| baseline's final val loss |"));
    assert!(md.contains("not reached"));
    // The 50 % target is still reached, at the analytic cost.
    let t = &summary.seeds[0].targets[1];
    assert_eq!(t.fraction, 0.5);
    assert!(t.cloned_reached);
    assert!(!summary.seeds[0].targets[3].cloned_reached);
    let (lo, _) = analytic(0.5, shift);
    assert!(t.hours.speedup_large_only().unwrap() <= lo + 1e-9);
}

#[test]
fn several_seeds_are_aggregated_with_a_spread() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = match std::env::var_os("REPORT_E2E_OUT") {
        Some(dir) => Path::new(&dir).join("multi"),
        None => tmp.path().join("multi"),
    };
    let shifts = [0.1 * n_total(), 0.3 * n_total()];
    write_seed(&exp.join("seed-1"), shifts[0], None, 1);
    write_seed(&exp.join("seed-2"), shifts[1], None, 2);
    std::fs::write(exp.join("experiment.toml"), EXPERIMENT_TOML).unwrap();
    let summary = hyperclone_report::write_report(&exp).unwrap();
    assert_eq!(summary.seeds.len(), 2);
    assert_eq!(summary.seeds[0].seed, Some(1));
    assert_eq!(summary.final_target_seeds, 2);
    // The headline is the mean of the per-seed speedups, each within its interpolation bound
    // of the analytic value (< 0.1 % here, see the single-seed test).
    let expected = (analytic(1.0, shifts[0]).0 + analytic(1.0, shifts[1]).0) / 2.0;
    let got = summary.speedup_large_only.unwrap();
    assert!(
        (got - expected).abs() / expected < 1e-3,
        "{got} vs {expected}"
    );
    let fin = summary.targets.iter().find(|t| t.fraction == 1.0).unwrap();
    let s = fin.hours_large_only.as_ref().unwrap();
    assert_eq!(s.n, 2);
    let per_seed: Vec<f64> = summary
        .seeds
        .iter()
        .map(|a| {
            a.final_target()
                .unwrap()
                .hours
                .speedup_large_only()
                .unwrap()
        })
        .collect();
    let sd = (per_seed[0] - per_seed[1]).abs() / 2f64.sqrt();
    assert!((s.std.unwrap() - sd).abs() < 1e-9);
    let md = read(&exp.join("report.md"));
    assert!(md.contains("### Over seeds"));
    assert!(md.contains("2 of 2 seeds"));
    // Speedups as mean with range and count.
    let s = fin.flops_total.as_ref().unwrap();
    assert!(
        md.contains(&format!("({:.2}–{:.2}×, n=2)", s.min, s.max)),
        "no range in the report"
    );
    assert!(md.contains("seed-2/large/config.toml"));
    assert!(
        summary.verdict.contains("over 2 seeds"),
        "{}",
        summary.verdict
    );
}

#[test]
fn partial_experiment_reports_what_exists() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("partial");
    let small = run_lines(
        SMALL_STEPS,
        R_SMALL,
        P_SMALL,
        &|n| loss_at(n, 0.0) + 1.0,
        false,
        None,
    );
    std::fs::create_dir_all(&exp).unwrap();
    write_stage(&exp, "small", &small, P_SMALL, "random", 3);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    assert_eq!(summary.speedup_large_only, None);
    assert!(summary.final_val_loss_small.is_some());
    assert!(
        summary.verdict.starts_with("No verdict yet"),
        "{}",
        summary.verdict
    );
    let md = read(&exp.join("report.md"));
    assert!(md.contains("## Cost to reach the baseline's val loss\n\nNot available"));
}

#[test]
fn corrupt_metrics_line_is_reported_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("bad");
    write_seed(&exp, 0.2 * n_total(), None, 1);
    let path = exp.join("baseline/metrics.jsonl");
    let mut text = read(&path);
    text.insert_str(0, "{\"kind\":\"train\",\"step\":\n");
    std::fs::write(&path, text).unwrap();
    let err = hyperclone_report::write_report(&exp).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("baseline/metrics.jsonl line 1"), "{msg}");
}

/// Sets `step_time_s` on every train line of a metrics file.
fn set_step_time(path: &Path, seconds: f64) {
    let lines: Vec<serde_json::Value> = read(path)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["kind"] == "train" {
                v["step_time_s"] = json!(seconds);
            }
            v
        })
        .collect();
    write_lines(path, &lines);
}

/// The continued-small control of a seed written by `write_seed` with `shift`: it continues the
/// small model's curve (or follows `loss` when given) until small + control have spent the
/// baseline's FLOPs.
fn write_control(dir: &Path, shift: f64, loss: Option<&dyn Fn(f64) -> f64>) {
    let small_end = (SMALL_STEPS * TOKENS_PER_STEP) as f64;
    let small_a = loss_at(0.0, shift) - 300.0 / (small_end + N0).sqrt();
    let continued = move |n: f64| small_a + 300.0 / (n + small_end + N0).sqrt();
    let steps = ((P_LARGE * n_total() - P_SMALL * small_end) / P_SMALL) as u64 / TOKENS_PER_STEP;
    let lines = run_lines(
        steps,
        R_SMALL,
        P_SMALL,
        loss.unwrap_or(&continued),
        false,
        None,
    );
    write_stage(dir, "control", &lines, P_SMALL, "init-from", 7);
}

fn report_dir(tmp: &Path, name: &str) -> std::path::PathBuf {
    match std::env::var_os("REPORT_E2E_OUT") {
        Some(dir) => Path::new(&dir).join(name),
        None => tmp.join(name),
    }
}

#[test]
fn a_target_met_at_initialisation_is_no_factor_and_no_growth_speedup() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "met-at-init");
    // The expanded model starts below the baseline's final val loss: the small model alone
    // was already as good as the baseline at the end of its budget.
    write_seed(&exp, 10.0 * n_total(), None, 1);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let fin = summary.seeds[0].final_target().unwrap();
    assert!(fin.met_at_initialisation());
    assert_eq!(fin.hours.cloned_large_only, Some(0.0));
    assert_eq!(fin.flops.cloned_large_only, Some(0.0));
    assert_eq!(fin.hours.speedup_large_only(), Some(f64::INFINITY));
    // The small run reached the target on its own, cheaper than the baseline: degenerate.
    assert!(fin.hours.small_alone.unwrap() < fin.hours.baseline.unwrap());
    assert!(summary.degenerate);
    let v = &summary.verdict;
    assert!(v.starts_with("No speedup is claimed for growth"), "{v}");
    assert!(v.contains("the small run alone reached it"), "{v}");
    assert!(!v.contains('∞'), "{v}");
    // No large-only factor anywhere: both cost tables say what happened instead.
    let md = read(&exp.join("report.md"));
    let device_hours = &md[md.find("### Device-hours").unwrap()..md.find("### FLOPs").unwrap()];
    let flops = &md[md.find("### FLOPs").unwrap()..md.find("## Final losses").unwrap()];
    for table in [device_hours, flops] {
        assert!(table.contains("0 (met at initialisation)"), "{table}");
        assert!(
            table.contains("met at initialisation (no factor)"),
            "{table}"
        );
        assert!(!table.contains('∞'));
    }
    assert!(summary.table().contains("no growth speedup is claimed"));
}

#[test]
fn a_control_that_gets_there_cheaper_than_the_baseline_makes_the_budget_degenerate() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "control-first");
    let shift = 0.1 * n_total();
    write_seed(&exp, shift, None, 1);
    // A control that falls to the baseline's final loss within its first tenth.
    let fin = loss_at(n_total(), 0.0);
    let start = loss_at(0.0, shift);
    let quick = move |n: f64| (start - (start - fin + 0.1) * n / 1.4e5).max(fin - 0.1);
    write_control(&exp, shift, Some(&quick));
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let t = summary.seeds[0].final_target().unwrap();
    assert!(t.control_ran);
    let control = t.flops.control_total.unwrap();
    assert!(control < t.flops.baseline.unwrap());
    assert_eq!(
        t.race(hyperclone_report::analysis::Axis::Flops),
        Some(hyperclone_report::analysis::Race::ControlFirst)
    );
    assert!(summary.degenerate);
    let v = &summary.verdict;
    assert!(v.starts_with("No speedup is claimed for growth"), "{v}");
    assert!(v.contains("the continued-small control"), "{v}");
    let md = read(&exp.join("report.md"));
    assert!(md.contains("### Cloned run vs the continued-small control"));
    assert!(md.contains("control first"));
}

#[test]
fn the_control_stage_is_drawn_tabled_and_judged() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "control");
    let shift = 0.1 * n_total();
    write_seed(&exp, shift, None, 1);
    // The small model continued never reaches the baseline's final loss.
    write_control(&exp, shift, None);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let a = &summary.seeds[0];
    let t = a.final_target().unwrap();
    assert!(t.control_ran && t.small_ran);
    assert_eq!(t.flops.control_total, None);
    assert_eq!(
        t.race(hyperclone_report::analysis::Axis::Flops),
        Some(hyperclone_report::analysis::Race::ControlNever)
    );
    assert!(!summary.degenerate);
    // The control spent the baseline's FLOPs, small run included.
    let spent =
        a.small.as_ref().unwrap().flops.unwrap() + a.control.as_ref().unwrap().flops.unwrap();
    let baseline = a.baseline.as_ref().unwrap().flops.unwrap();
    assert!(
        (spent - baseline).abs() / baseline < 0.01,
        "{spent} vs {baseline}"
    );
    let v = &summary.verdict;
    assert!(v.contains("continued-small control"), "{v}");
    assert!(v.contains("the control never reached it"), "{v}");
    assert!(v.contains("control minus baseline"), "{v}");
    let md = read(&exp.join("report.md"));
    assert!(
        md.contains("| control (small, continued) |"),
        "final losses table"
    );
    assert!(md.contains("cloned run; the control never reached it"));
    // Drawn on the cost plots (the legend names it).
    let svg = read(&exp.join("plots/val_loss_vs_flops.svg"));
    assert!(svg.contains("control: small model continued"));
    // The summary printed by `hyperclone run` shows it too, the total first.
    let table = summary.table();
    assert!(table.contains("final val loss control"), "{table}");
    let total = table
        .find("speedup total to the baseline's final val loss")
        .unwrap();
    let large_only = table.find("large-only (small model exists)").unwrap();
    assert!(total < large_only, "{table}");
}

#[test]
fn step_times_that_disagree_flag_the_device_hours() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "disturbed");
    write_seed(&exp, 0.1 * n_total(), None, 1);
    set_step_time(&exp.join("baseline/metrics.jsonl"), 0.6);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    assert!(summary.timing_disturbed);
    let check = summary.seeds[0].step_times.as_ref().unwrap();
    assert_eq!((check.cloned_s, check.baseline_s), (0.5, 0.6));
    let v = &summary.verdict;
    assert!(v.contains("Measurement check failed"), "{v}");
    assert!(v.contains("500 ms cloned vs 600 ms baseline"), "{v}");
    assert!(v.contains("The FLOPs figures stand"), "{v}");
    assert!(summary.table().contains("measurement check"));

    // Within 10 %: passed, and said so.
    set_step_time(&exp.join("baseline/metrics.jsonl"), 0.52);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    assert!(!summary.timing_disturbed);
    assert!(summary.verdict.contains("Measurement check passed"));
}

// A growth chain of two stages: small → expand-1 → large-1 (a middle shape, P_MID parameters,
// R_MID device-hours per token, MID_STEPS steps) → expand-2 → large-2 (the final shape: the
// cloned run of the single layout, as if it had seen S tokens) against the baseline.
const P_MID: f64 = 2.0e6;
const R_MID: f64 = 0.5e-6;
const MID_STEPS: u64 = 100;

/// Writes one seed of a two-stage chain; returns (small + large-1 FLOPs, small + large-1 +
/// both expansions device-hours): what the route paid before large-2.
fn write_chain_seed(dir: &Path, shift: f64, seed: u64) -> (f64, f64) {
    write_chain_seed_with(dir, shift, seed, 2.8)
}

/// [`write_chain_seed`] with large-1's curve `mid_floor + 300 / sqrt(n + 4·N0)`.
fn write_chain_seed_with(dir: &Path, shift: f64, seed: u64, mid_floor: f64) -> (f64, f64) {
    std::fs::create_dir_all(dir).unwrap();
    let small = run_lines(
        SMALL_STEPS,
        R_SMALL,
        P_SMALL,
        &|n| 3.0 + 300.0 / (n + N0).sqrt(),
        false,
        None,
    );
    write_stage(dir, "small", &small, P_SMALL, "random", seed);
    let mid = run_lines(
        MID_STEPS,
        R_MID,
        P_MID,
        &|n| mid_floor + 300.0 / (n + 4.0 * N0).sqrt(),
        false,
        None,
    );
    write_stage(dir, "large-1", &mid, P_MID, "expanded", seed);
    for (k, (from, to)) in [(1, (P_SMALL, P_MID)), (2, (P_MID, P_LARGE))] {
        let d = dir.join(format!("expand-{k}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("expand.json"),
            json!({"wall_s": EXPAND_HOURS * 3600.0, "device_hours": EXPAND_HOURS,
                   "source_params": from as u64, "target_params": to as u64,
                   "width_factor": 2, "ffn_factor": 2, "variant": "symmetric"})
            .to_string(),
        )
        .unwrap();
    }
    let last = run_lines(
        LARGE_STEPS,
        R_LARGE,
        P_LARGE,
        &|n| loss_at(n, shift),
        true,
        None,
    );
    write_stage(dir, "large-2", &last, P_LARGE, "expanded", seed);
    let baseline = run_lines(
        LARGE_STEPS,
        R_LARGE,
        P_LARGE,
        &|n| loss_at(n, 0.0),
        false,
        None,
    );
    write_stage(dir, "baseline", &baseline, P_LARGE, "random", seed);
    let tokens = |steps: u64| (steps * TOKENS_PER_STEP) as f64;
    (
        6.0 * P_SMALL * tokens(SMALL_STEPS) + 6.0 * P_MID * tokens(MID_STEPS),
        small_hours() + R_MID * tokens(MID_STEPS) + 2.0 * EXPAND_HOURS,
    )
}

/// The report of a two-stage chain: the last stage is the cloned run, everything before it
/// (small run, both expansions, the first growth stage) is the prefix of the total cost, the
/// route's cumulative cost is tabled stage by stage and drawn on the cost axes.
#[test]
fn a_growth_chain_is_costed_drawn_and_tabled_as_a_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "chain");
    // S a multiple of the eval spacing: the last stage reaches the baseline's final val loss
    // exactly at an eval point, N − S tokens in.
    let shift = 0.25 * n_total();
    let (prefix_flops, prefix_hours) = write_chain_seed(&exp, shift, 3);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let a = &summary.seeds[0];

    // The chain, link by link, with its cumulative costs.
    assert_eq!(summary.growth_stages, 2);
    let names: Vec<(&str, &str)> = a
        .chain
        .iter()
        .map(|l| (l.expand_dir.as_str(), l.train_dir.as_str()))
        .collect();
    assert_eq!(names, [("expand-1", "large-1"), ("expand-2", "large-2")]);
    let tokens = |steps: u64| (steps * TOKENS_PER_STEP) as f64;
    let small_flops = 6.0 * P_SMALL * tokens(SMALL_STEPS);
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    assert!(rel(a.chain[0].flops_before.unwrap(), small_flops) < 1e-12);
    assert!(rel(a.chain[1].flops_before.unwrap(), prefix_flops) < 1e-12);
    assert!(rel(a.prefix_flops.unwrap(), prefix_flops) < 1e-12);
    assert!(rel(a.prefix_hours.unwrap(), prefix_hours) < 1e-12);
    assert!(rel(a.expand_hours.unwrap(), 2.0 * EXPAND_HOURS) < 1e-12);
    // The whole route: the sum of every stage's own FLOPs from its metrics.
    let route_flops = prefix_flops + 6.0 * P_LARGE * n_total();
    assert!(rel(a.route_flops.unwrap(), route_flops) < 1e-12);
    assert!(rel(summary.route_flops.unwrap(), route_flops) < 1e-12);
    let route_hours = prefix_hours + R_LARGE * n_total();
    assert!(rel(a.route_hours.unwrap(), route_hours) < 1e-12);

    // The verdict's total counts the whole chain: baseline N tokens ÷ (prefix + the last
    // stage's N − S tokens), on both axes.
    let fin = a.final_target().unwrap();
    assert!(fin.cloned_reached);
    let n_star = n_total() - shift;
    let flops_total = fin.flops.cloned_total().unwrap();
    assert!(
        rel(flops_total, prefix_flops + 6.0 * P_LARGE * n_star) < 1e-9,
        "{flops_total}"
    );
    let expected = 6.0 * P_LARGE * n_total() / (prefix_flops + 6.0 * P_LARGE * n_star);
    assert!(rel(summary.flops_speedup_total.unwrap(), expected) < 1e-9);
    let expected = R_LARGE * n_total() / (prefix_hours + R_LARGE * n_star);
    assert!(rel(summary.speedup_total.unwrap(), expected) < 1e-9);
    // Large-only is the last stage alone.
    assert!(
        rel(
            summary.flops_speedup_large_only.unwrap(),
            n_total() / n_star
        ) < 1e-9
    );

    // The report: the chain table with a row per stage, every expansion checked, the chain
    // drawn on the cost axes, the verdict naming both stages.
    let md = read(&exp.join("report.md"));
    assert!(md.contains("### The growth chain, stage by stage"), "{md}");
    for row in [
        "| small |",
        "| expand-1 (expansion 1) |",
        "| large-1 (growth stage 1) |",
        "| expand-2 (expansion 2) |",
        "| large-2 (growth stage 2) |",
        "| cloned route, total |",
        "| baseline (final shape, random init) |",
    ] {
        assert!(md.contains(row), "missing row {row}");
    }
    assert!(
        md.contains("all 2 growth stages of the chain"),
        "{}",
        summary.verdict
    );
    // The per-run tables (final losses, throughput, settings) list every growth stage.
    for title in [
        "growth stage 1 (large-1)",
        "cloned, growth stage 2 (large-2)",
    ] {
        assert_eq!(
            md.matches(&format!("| {title} |")).count(),
            3,
            "{title}: a settings column, a final-losses and a throughput row"
        );
    }
    assert!(
        md.contains(
            "| setting | small | growth stage 1 (large-1) | cloned, growth stage 2 (large-2) | \
             baseline |"
        ),
        "settings columns"
    );
    assert!(md.contains("| quantity | expand-1 | expand-2 |"), "{md}");
    let svg = read(&exp.join("plots/val_loss_vs_flops.svg"));
    assert!(
        svg.contains("growth stage 1 (large-1), cumulative"),
        "no chain curve"
    );
    assert!(summary.table().contains("cloned route (2 growth stages)"));
}

/// A report written while the first growth stage of a two-stage chain has finished and the
/// second has not started: the resolved `experiment.toml` names two stages, so the first is not
/// taken for the cloned run; there is no verdict yet, and the chain so far is still tabled.
#[test]
fn a_chain_that_is_still_growing_has_no_verdict_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "chain-partial");
    write_chain_seed(&exp, 0.25 * n_total(), 3);
    std::fs::remove_dir_all(exp.join("expand-2")).unwrap();
    std::fs::remove_dir_all(exp.join("large-2")).unwrap();
    std::fs::write(
        exp.join("experiment.toml"),
        "[experiment]\nname = \"growing\"\n\n[[growth]]\n[growth.expand]\n\n[[growth]]\n[growth.expand]\n",
    )
    .unwrap();
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let a = &summary.seeds[0];
    assert_eq!(summary.growth_stages, 2);
    assert!(a.large.is_none() && a.targets.is_empty(), "{a:?}");
    assert_eq!(summary.final_target_seeds, 0);
    assert!(
        summary.verdict.starts_with("No verdict yet"),
        "{}",
        summary.verdict
    );
    // What large-2 will start from is known; the route's total is not.
    assert!(a.chain[1].flops_before.is_some() && a.route_flops.is_none());
    let md = read(&exp.join("report.md"));
    assert!(md.contains("| large-1 (growth stage 1) |"), "{md}");
}

/// An earlier growth stage that reaches the baseline's final val loss at less cost than the
/// baseline makes the budget degenerate for the last growth: no speedup is claimed for growing
/// to the final shape, and the verdict names the stage and its cumulative cost.
#[test]
fn an_earlier_growth_stage_that_gets_there_cheaper_claims_no_speedup_for_the_last_growth() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "chain-shortcut");
    // large-1 falls to 1.0 + 300 / sqrt(n + 4000): below the baseline's final 2.63 early on.
    write_chain_seed_with(&exp, 0.25 * n_total(), 3, 1.0);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    assert!(summary.degenerate, "{}", summary.verdict);
    assert!(
        summary
            .verdict
            .starts_with("No speedup is claimed for the last growth"),
        "{}",
        summary.verdict
    );
    assert!(summary
        .verdict
        .contains("growth stage 1, before the last growth"));
    let a = &summary.seeds[0];
    let fin = a.final_target().unwrap();
    let (stage, cost) = fin.flops.earlier_stage.unwrap();
    assert_eq!(stage, 1);
    // The route's cost there: the small run, then large-1 up to its crossing (interpolated
    // between its eval points, so between the two around the exact one).
    let target = fin.target_loss;
    let n_cross = (300.0 / (target - 1.0)).powi(2) - 4.0 * N0;
    let before = a.chain[0].flops_before.unwrap();
    let step_tokens = (EVAL_EVERY * TOKENS_PER_STEP) as f64;
    assert!(
        cost >= before + 6.0 * P_MID * n_cross
            && cost <= before + 6.0 * P_MID * (n_cross + step_tokens),
        "{cost} vs {}",
        before + 6.0 * P_MID * n_cross
    );
    let shortcuts = fin.shortcuts();
    assert!(
        shortcuts.iter().all(|s| s.earlier_stage == Some(1)),
        "{shortcuts:?}"
    );
    assert_eq!(shortcuts.len(), 2, "FLOPs and device-hours");
    assert!(summary.table().contains("an earlier growth stage"));
    let md = read(&exp.join("report.md"));
    assert!(md.contains("| earlier growth stage, total |"), "{md}");
    assert!(md.contains("| stage 1: "), "{md}");
}

/// Rewrites `dir/name/run_info.json` as a data-parallel run's: `devices` peers, with or
/// without the one-peer reference the training measures.
fn make_data_parallel(dir: &Path, name: &str, devices: u64, reference: Option<(f64, u64)>) {
    let path = dir.join(name).join("run_info.json");
    let mut info: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
    info["devices"] = json!(devices);
    if let Some((tokens_per_s, rows)) = reference {
        info["single_peer_tokens_per_s"] = json!(tokens_per_s);
        info["single_peer_rows"] = json!(rows);
    }
    std::fs::write(&path, info.to_string()).unwrap();
}

/// The cells of the Markdown table row that starts with `first`.
fn md_row(md: &str, first: &str) -> Vec<String> {
    let prefix = format!("| {first} |");
    let line = md
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row {prefix}:\n{md}"));
    line.trim_matches('|')
        .split(" | ")
        .map(|c| c.trim().to_string())
        .collect()
}

#[test]
fn data_parallel_runs_show_their_scaling_efficiency_or_say_it_was_not_measured() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = report_dir(tmp.path(), "data-parallel");
    write_seed(&exp, 0.1 * n_total(), None, 3);
    // The baseline ran on 2 peers and measured its reference; the cloned run on 2 peers of an
    // older version, without one. The small run stays on one device.
    let (reference, rows) = (1250.0, 4);
    make_data_parallel(&exp, "baseline", 2, Some((reference, rows)));
    make_data_parallel(&exp, "large", 2, None);
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let md = read(&exp.join("report.md"));
    // The scaling table follows the throughput table and its paragraph.
    let scaling_md = &md[md
        .find("Data-parallel runs:")
        .expect("no scaling paragraph")..];

    // From the files: the baseline's median global tokens/s over its train lines.
    let baseline_tps: Vec<f64> = read(&exp.join("baseline/metrics.jsonl"))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["tokens_per_s"].as_f64().unwrap())
        .collect();
    assert!(baseline_tps.iter().all(|&t| t == baseline_tps[0]));
    let expected = baseline_tps[0] / (2.0 * reference);

    assert_eq!(summary.scaling.len(), 2, "{:?}", summary.scaling);
    let baseline = summary
        .scaling
        .iter()
        .find(|r| r.run == "baseline")
        .unwrap();
    assert_eq!(baseline.scaling.devices, 2);
    assert!((baseline.scaling.efficiency.unwrap() - expected).abs() < 1e-12);
    assert!(baseline.scaling.on_cpu);
    let cloned = summary
        .scaling
        .iter()
        .find(|r| r.run == "cloned (large)")
        .unwrap();
    assert_eq!(cloned.scaling.efficiency, None);

    let row = md_row(scaling_md, "baseline");
    assert_eq!(row[1], "2", "{row:?}");
    assert_eq!(row[3], format!("{reference} ({rows} rows)"), "{row:?}");
    assert_eq!(row[4], format!("{expected:.2}"), "{row:?}");
    // The cloned run without a reference: no number, "not measured".
    let row = md_row(scaling_md, "cloned (large)");
    let row: Vec<&String> = row
        .iter()
        .filter(|c| c.as_str() == "not measured")
        .collect();
    assert_eq!(row.len(), 2, "{md}");
    assert!(
        scaling_md.contains("one device running one peer's share alone"),
        "the reference is not described"
    );
    assert!(md.contains("say little about speed"), "no CPU remark");
    let table = summary.table();
    assert!(
        table.contains("scaling efficiency, baseline") && table.contains("not measured"),
        "{table}"
    );

    // An experiment on one device throughout says nothing about scaling.
    let single = tmp.path().join("single");
    write_seed(&single, 0.1 * n_total(), None, 3);
    let summary = hyperclone_report::write_report(&single).unwrap();
    assert!(summary.scaling.is_empty());
    let md = read(&single.join("report.md"));
    assert!(!md.contains("scaling efficiency"), "{md}");
    assert!(!summary.table().contains("scaling efficiency"));
}
