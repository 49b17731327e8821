//! End-to-end: `hyperclone run` on a tiny two-stage growth chain (`[[growth]]`): small → ×2
//! width → ×2 width again, against a baseline of the final shape. It is killed (SIGKILL) in the
//! middle of the second growth stage; the rerun skips every finished stage and resumes that one
//! at its newest checkpoint; the report's chain figures are the sums of the stages' metrics.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{bin, json, kill9, local_config_text, run_ok, wait_for, write_config};

/// The growth chain that replaces `configs/tiny.toml`'s `[expand]`: stage 1 (d32 → d64) and
/// stage 2 (d64 → d128, FFN kept) each continue the AdamW state of the stage before through
/// their clone; stage 2 has its own learning rate and a checkpoint every 5 steps (for the kill).
const CHAIN: &str = r#"
[[growth]]
optimizer_state = "transfer"
[growth.expand]
width_factor = 2
ffn_factor = 2
variant = "noisy-symmetric"
snr_db = 10.0
[growth.run]
max_steps = 15

[[growth]]
optimizer_state = "transfer"
[growth.expand]
width_factor = 2
ffn_factor = 1
seed = 1
[growth.optimizer]
lr = 1e-3
[growth.run]
max_steps = 20
checkpoint_every = 5
"#;

/// `configs/tiny.toml` grown through [`CHAIN`], trained on one small book (5 % held out), with
/// every output inside `dir` and a shorter small run.
fn tiny_chain_experiment(dir: &Path) -> PathBuf {
    let text = local_config_text("tiny.toml", dir);
    let start = text.find("[expand]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let text = format!("{}{}\n{CHAIN}", &text[..start], &text[end..]).replace(
        "max_steps = 40\neval_every = 10",
        "max_steps = 20\neval_every = 10",
    );
    write_config(dir, "chain.toml", &text)
}

/// The line of `stdout` for a stage (`large-2 ...`), which must exist.
fn stage_line<'a>(stdout: &'a str, stage: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_else(|| panic!("no line for {stage}:\n{stdout}"))
}

#[test]
fn a_two_stage_chain_resumes_per_stage_and_reports_the_whole_route() {
    use hyperclone_training::checkpoint::{step_dir_name, OPTIMIZER_FILE};
    use hyperclone_training::optim::AdamWState;

    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_chain_experiment(tmp.path());
    let exp = tmp.path().join("exp");

    // Killed in the middle of the second growth stage.
    let mut child = bin()
        .arg("run")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = exp.join("large-2").join(step_dir_name(10)).join("DONE");
    wait_for(&mut child, "a checkpoint of growth stage 2", || {
        marker.exists()
    });
    kill9(&mut child);
    assert!(
        !exp.join("large-2/final").exists(),
        "large-2 finished before the kill"
    );
    assert!(exp.join("large-1/final/model.json").exists());
    assert!(!exp.join("baseline").exists());

    // The rerun skips the finished stages and resumes large-2 from its checkpoint.
    let out = run_ok(bin().arg("run").arg(&cfg));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for stage in ["small", "expand-1", "large-1", "expand-2"] {
        assert!(
            stage_line(&stdout, stage).contains("skipped"),
            "{stage}:\n{stdout}"
        );
    }
    for stage in ["large-2", "baseline", "report"] {
        assert!(
            stage_line(&stdout, stage).ends_with("done"),
            "{stage}:\n{stdout}"
        );
    }
    assert!(stderr.contains("resuming from"), "{stderr}");
    let metrics = |stage: &str| {
        hyperclone_runfiles::read_metrics(exp.join(stage).join("metrics.jsonl")).unwrap()
    };
    let steps: Vec<u64> = metrics("large-2").train.iter().map(|t| t.step).collect();
    assert_eq!(steps, (1..=20).collect::<Vec<_>>());

    // Each stage grew the one before: d32 → d64 → d128, from large-1's last checkpoint for the
    // transfer, whose AdamW state went through the clone and on.
    let source = json(&exp.join("expand-2/expand.json"));
    let source_dir = source["source_dir"].as_str().unwrap();
    assert!(
        source_dir.contains("large-1") && source_dir.ends_with(&step_dir_name(15)),
        "{source}"
    );
    let width =
        |stage: &str| json(&exp.join(stage).join("final/model.json"))["config"]["d_model"].clone();
    assert_eq!(
        (
            width("small"),
            width("large-1"),
            width("large-2"),
            width("baseline")
        ),
        (32.into(), 64.into(), 128.into(), 128.into())
    );
    // The update count runs on through both clones (small 20 + large-1 15 + large-2 20), and
    // the factors compose: the attention projection's step factor halves at each ×2 width.
    let carried = AdamWState::read(&exp.join("expand-2").join(OPTIMIZER_FILE)).unwrap();
    assert_eq!(carried.updates, 35);
    let state_at = |stage: &str, step: u64| {
        AdamWState::read(
            &exp.join(stage)
                .join(step_dir_name(step))
                .join(OPTIMIZER_FILE),
        )
        .unwrap()
    };
    let last = state_at("large-2", 20);
    assert_eq!(last.updates, 55);
    let qkv = |s: &AdamWState| {
        s.params["h.0.attn.c_attn.weight"]
            .scale
            .as_ref()
            .unwrap()
            .step
    };
    assert_eq!(qkv(&state_at("large-1", 15)), 0.5);
    assert_eq!(qkv(&last), 0.25);
    // Each growth stage draws its own data stream: the wide seed plus its position.
    let seed = |stage: &str| json(&exp.join(stage).join("run_info.json"))["seed"].clone();
    assert_eq!(
        (seed("large-1"), seed("large-2"), seed("baseline")),
        (2.into(), 3.into(), 2.into())
    );

    // The report's chain figures are the stages' own: the route's FLOPs are the sum of the
    // small run's and both growth stages' (the expansions copy weights), its device-hours add
    // both expansions'; what large-2 starts from is the small run plus large-1.
    let summary = hyperclone_report::write_report(&exp).unwrap();
    let flops = |stage: &str| metrics(stage).total_flops().unwrap();
    let hours = |stage: &str| metrics(stage).total_device_hours().unwrap();
    let expand_hours = |stage: &str| {
        serde_json::from_value::<hyperclone_runfiles::ExpandRecord>(json(
            &exp.join(stage).join("expand.json"),
        ))
        .unwrap()
        .cost_hours()
        .unwrap()
    };
    let rel = |a: f64, b: f64| ((a - b) / b).abs();
    let a = &summary.seeds[0];
    assert_eq!(summary.growth_stages, 2);
    let route_flops = flops("small") + flops("large-1") + flops("large-2");
    assert!(
        rel(a.route_flops.unwrap(), route_flops) < 1e-12,
        "{:?} vs {route_flops}",
        a.route_flops
    );
    assert!(rel(a.prefix_flops.unwrap(), flops("small") + flops("large-1")) < 1e-12);
    let route_hours = hours("small")
        + expand_hours("expand-1")
        + hours("large-1")
        + expand_hours("expand-2")
        + hours("large-2");
    assert!(rel(a.route_hours.unwrap(), route_hours) < 1e-9);
    // The total cost to a target counts the prefix; the large-only cost is large-2's alone.
    for t in &a.targets {
        if let (Some(total), Some(own)) = (t.flops.cloned_total(), t.flops.cloned_large_only) {
            assert!(rel(total - own, a.prefix_flops.unwrap()) < 1e-12, "{t:?}");
        }
    }
    // The TensorBoard total-cost axis of large-2 starts where large-1 ended on the route.
    let files = hyperclone_runfiles::tensorboard::event_files(&exp.join("large-2"));
    let scalars = hyperclone_runfiles::tensorboard::read_events(&files[0]).unwrap();
    let first_step = |tag: &str| scalars.iter().find(|s| s.tag == tag).unwrap().step;
    assert!(first_step("total_device_ms/val_loss") > first_step("cost_device_ms/val_loss"));

    let md = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(md.contains("| large-2 (growth stage 2) |"), "{md}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cloned route (2 growth stages)"));
}
