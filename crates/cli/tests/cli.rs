//! End-to-end tests of the `hyperclone` binary: the whole pipeline, re-runs, real
//! interruptions (SIGKILL), generation, and error messages.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{bin, kill9, repo, run_ok, tiny_experiment, tiny_train_config, wait_for};

#[test]
fn pipeline_runs_every_stage_writes_the_report_and_skips_finished_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    let out = run_ok(bin().arg("run").arg(&cfg));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for stage in ["small", "expand", "large", "baseline", "report"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(stage) && l.ends_with("done")),
            "{stage} not done:\n{stdout}"
        );
    }
    let exp = tmp.path().join("exp");
    let md = std::fs::read_to_string(exp.join("report.md")).unwrap();
    for section in hyperclone_report::SECTIONS {
        assert!(md.contains(section), "report.md lacks section {section:?}");
    }
    let html = std::fs::read_to_string(exp.join("report.html")).unwrap();
    assert!(html.contains("data:image/png;base64,"));
    let png = std::fs::read(exp.join("plots/val_loss_vs_device_hours.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The expansion was checked and recorded.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("expand/expand.json")).unwrap())
            .unwrap();
    assert!(record["rel_err"].as_f64().unwrap() <= 1e-5, "{record}");
    // The cloned run logs the symmetry metric; with the noisy variant it starts below 1.
    let large = std::fs::read_to_string(exp.join("large/metrics.jsonl")).unwrap();
    let sym: Vec<f64> = large
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["symmetry"]["mean"].as_f64())
        .collect();
    assert!(sym.len() >= 2, "{large}");
    assert!(sym.iter().all(|&s| s < 1.0 && s > 0.0), "{sym:?}");

    // Second run: nothing to do but the report.
    let again = run_ok(bin().arg("run").arg(&cfg));
    let stdout = String::from_utf8_lossy(&again.stdout);
    for stage in ["small", "expand", "large", "baseline"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(stage) && l.contains("skipped")),
            "{stage} not skipped:\n{stdout}"
        );
    }

    // A changed input is refused, naming the stage.
    let changed = bin()
        .arg("run")
        .arg(&cfg)
        .args(["--set", "large.optimizer.lr=1e-3"])
        .output()
        .unwrap();
    assert!(!changed.status.success());
    let err = String::from_utf8_lossy(&changed.stderr);
    assert!(
        err.contains("stage large") && err.contains("different inputs"),
        "{err}"
    );

    // generate samples text from the trained large model.
    let gen = run_ok(
        bin()
            .args(["generate", "--run"])
            .arg(exp.join("large"))
            .args(["--prompt", "The", "--max-new-tokens", "12", "--seed", "3"]),
    );
    let text = String::from_utf8_lossy(&gen.stdout);
    assert!(text.starts_with("The") && text.trim().len() > 3, "{text:?}");
}

/// `[large.cloned] optimizer_state = "transfer"`: the expand stage expands the small run's last
/// checkpoint and writes its AdamW state mapped through the clone; the large stage continues it
/// (the update count goes on from the small run's, the factors stay in its checkpoints).
#[test]
fn pipeline_carries_the_optimizer_state_when_asked() {
    use hyperclone_training::checkpoint::{step_dir_name, OPTIMIZER_FILE};
    use hyperclone_training::optim::AdamWState;

    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    run_ok(bin().arg("run").arg(&cfg).args([
        "--set",
        "experiment.baseline=false",
        "--set",
        "large.cloned.optimizer_state=transfer",
    ]));
    let exp = tmp.path().join("exp");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("expand/expand.json")).unwrap())
            .unwrap();
    let source = record["source_dir"].as_str().unwrap();
    assert!(source.ends_with(&step_dir_name(40)), "{record}");
    let carried = AdamWState::read(&exp.join("expand").join(OPTIMIZER_FILE)).unwrap();
    assert_eq!(carried.updates, 40);
    assert_eq!(carried.origin.as_ref().map(|o| o.step), Some(40));
    let large = AdamWState::read(
        &exp.join("large")
            .join(step_dir_name(40))
            .join(OPTIMIZER_FILE),
    )
    .unwrap();
    assert_eq!(large.updates, 80);
    let qkv = large.params["h.0.attn.c_attn.weight"]
        .scale
        .as_ref()
        .unwrap();
    assert_eq!(qkv.step, 0.5);
}

/// The last value of `key` in a run's metrics.jsonl.
fn last_metric(run: &Path, key: &str) -> f64 {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v[key].as_f64())
        .unwrap_or_else(|| panic!("no {key} in {}", run.display()))
}

#[test]
fn run_with_seeds_repeats_every_stage_and_the_control_for_each_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    let out = run_ok(bin().arg("run").arg(&cfg).args([
        "--seeds",
        "2",
        "--set",
        "control.enabled=true",
        "--set",
        "large.cloned.optimizer.lr=1e-3",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exp = tmp.path().join("exp");
    for seed in [1u64, 2] {
        for stage in ["small", "expand", "large", "baseline", "control"] {
            assert!(
                stdout.lines().any(|l| l.starts_with(stage)
                    && l.contains(&format!("seed {seed} "))
                    && l.ends_with("done")),
                "{stage} of seed {seed} not done:\n{stdout}"
            );
        }
        let root = exp.join(format!("seed-{seed}"));
        // The small run has the replica's seed, the wide runs their own stream.
        let info = |stage: &str| -> serde_json::Value {
            serde_json::from_str(
                &std::fs::read_to_string(root.join(stage).join("run_info.json")).unwrap(),
            )
            .unwrap()
        };
        assert_eq!(info("small")["seed"], seed);
        for wide in ["large", "baseline", "control"] {
            assert_eq!(info(wide)["seed"], seed + 1000, "{wide}");
        }
        // The cloned arm has its own learning rate; the baseline keeps the shared one.
        let lr = |stage: &str| {
            let text = std::fs::read_to_string(root.join(stage).join("config.toml")).unwrap();
            text.parse::<toml::Table>().unwrap()["optimizer"]["lr"]
                .as_float()
                .unwrap()
        };
        assert_eq!((lr("large"), lr("baseline")), (1e-3, 2e-3));
        // Small run + control spent the baseline's FLOPs, to within one control step.
        let small = last_metric(&root.join("small"), "flops");
        let control = last_metric(&root.join("control"), "flops");
        let baseline = last_metric(&root.join("baseline"), "flops");
        assert!(
            small + control <= baseline,
            "{small} + {control} > {baseline}"
        );
        assert!(
            (baseline - small - control) / baseline < 0.01,
            "{small} + {control} vs {baseline}"
        );
    }
    // TensorBoard: every stage writes event files whose val losses are those of metrics.jsonl;
    // on the total-cost axis the cloned run starts where the small run (and the expansion)
    // ended, the baseline at zero.
    let root = exp.join("seed-1");
    for stage in ["small", "large", "baseline", "control"] {
        let dir = root.join(stage);
        let files = hyperclone_runfiles::tensorboard::event_files(&dir);
        assert_eq!(files.len(), 1, "{stage}: {files:?}");
        let scalars = hyperclone_runfiles::tensorboard::read_events(&files[0]).unwrap();
        let logged: Vec<f32> = hyperclone_runfiles::read_metrics(dir.join("metrics.jsonl"))
            .unwrap()
            .eval
            .iter()
            .map(|e| e.val_loss.unwrap() as f32)
            .collect();
        let events: Vec<f32> = scalars
            .iter()
            .filter(|s| s.tag == "eval/val_loss")
            .map(|s| s.value)
            .collect();
        assert_eq!(events, logged, "{stage}");
        let first_step = |tag: &str| scalars.iter().find(|s| s.tag == tag).unwrap().step;
        let (own, total) = (
            first_step("cost_device_ms/val_loss"),
            first_step("total_device_ms/val_loss"),
        );
        match stage {
            "large" | "control" => assert!(total > own, "{stage}: {own} vs {total}"),
            _ => assert_eq!(total, own, "{stage}"),
        }
    }
    let md = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(md.contains("2 seeds"), "report header");
    assert!(md.contains("n=2)"), "no spread over seeds in the report");
    assert!(md.contains("### Cloned run vs the continued-small control"));
    assert!(md.contains("control (small, continued) (seed 2)"));
    assert!(stdout.contains("final val loss control"), "{stdout}");
}

#[test]
fn pipeline_killed_during_the_large_stage_resumes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    let exp = tmp.path().join("exp");
    let mut child = bin()
        .arg("run")
        .arg(&cfg)
        .args(["--set", "large.run.checkpoint_every=5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let marker = exp.join("large/step-00000010/DONE");
    wait_for(&mut child, "a large-stage checkpoint", || marker.exists());
    kill9(&mut child);
    assert!(
        !exp.join("large/final").exists(),
        "large finished before the kill"
    );

    let out = run_ok(
        bin()
            .arg("run")
            .arg(&cfg)
            .args(["--set", "large.run.checkpoint_every=5"]),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("small") && l.contains("skipped")),
        "{stdout}"
    );
    assert!(stderr.contains("resuming from"), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("large") && l.ends_with("done")),
        "{stdout}"
    );
    assert!(exp.join("large/final/model.json").exists());
    let train = hyperclone_training::metrics::read_metrics(exp.join("large/metrics.jsonl"))
        .unwrap()
        .train;
    let steps: Vec<u64> = train.iter().map(|t| t.step).collect();
    assert_eq!(steps, (1..=40).collect::<Vec<_>>());
}

#[test]
fn a_data_parallel_stage_gets_its_scaling_efficiency_in_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    let exp = tmp.path().join("exp");
    run_ok(
        bin()
            .arg("run")
            .arg(&cfg)
            .args(["--stage", "small", "--devices", "2"]),
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(exp.join("small/run_info.json")).unwrap()).unwrap();
    let reference = info["single_peer_tokens_per_s"].as_f64().unwrap();
    assert_eq!(info["single_peer_rows"], 4, "{info}");
    let out = run_ok(bin().arg("report").arg(&exp));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("scaling efficiency, small"))
        .unwrap_or_else(|| panic!("{stdout}"));
    // The efficiency printed is the run's median tokens/s over 2 × the reference it recorded.
    let tps = hyperclone_report::analysis::median(
        hyperclone_training::metrics::read_metrics(exp.join("small/metrics.jsonl"))
            .unwrap()
            .train
            .iter()
            .filter_map(|t| t.tokens_per_s),
    )
    .unwrap();
    let expected = format!("{:.2} (2 devices", tps / (2.0 * reference));
    assert!(line.contains(&expected), "{line} vs {expected}");
    let md = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(md.contains("| scaling efficiency |"), "{md}");
}

#[test]
fn eval_scores_a_run_on_prepared_data_and_refuses_another_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(tmp.path());
    let run_dir = tmp.path().join("run");
    run_ok(
        bin()
            .args(["train", "--config"])
            .arg(&cfg)
            .arg("--run-dir")
            .arg(&run_dir),
    );
    // The same batches as the run's own evaluation (8 × 32, 4 batches of the val split) give the
    // run's final val loss. Inference may take other kernels than training's evaluation (the
    // backend's own norm), so the two agree to float rounding, not bit for bit.
    let out = run_ok(
        bin()
            .args(["eval", "--model"])
            .arg(&run_dir)
            .arg("--data")
            .arg(tmp.path().join("data"))
            .args(["--batch", "8", "--seq", "32", "--batches", "4", "--json"]),
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logged = last_metric(&run_dir, "val_loss");
    let loss = result["loss"].as_f64().unwrap();
    assert!((loss - logged).abs() <= 1e-5 * logged, "{loss} vs {logged}");
    assert_eq!(result["tokens"], 4 * 8 * 32);
    assert_eq!(result["same_tokenizer"], true);
    assert!(result["model"].as_str().unwrap().ends_with("final"));
    // The whole val split by default, in words.
    let out = run_ok(
        bin()
            .args(["eval", "--model"])
            .arg(&run_dir)
            .arg("--data")
            .arg(tmp.path().join("data")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("perplexity") && text.contains("Val split"),
        "{text}"
    );

    // Data made with another tokenizer is refused, naming it, unless asked for.
    let other = tmp.path().join("other");
    run_ok(
        bin()
            .arg("prepare")
            .arg(repo().join("datasets/gutenberg/val/austen-persuasion.txt"))
            .args(["--train-bpe", "300", "--out"])
            .arg(&other),
    );
    let refused = bin()
        .args(["eval", "--model"])
        .arg(&run_dir)
        .arg("--data")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("another tokenizer") && err.contains(&other.display().to_string()),
        "{err}"
    );
    run_ok(
        bin()
            .args(["eval", "--model"])
            .arg(&run_dir)
            .arg("--data")
            .arg(&other)
            .arg("--allow-tokenizer-mismatch"),
    );
    // A missing model folder names it.
    let missing = bin()
        .args(["eval", "--model"])
        .arg(tmp.path().join("nope"))
        .arg("--data")
        .arg(&other)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));
}

#[test]
fn sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(tmp.path());
    let run_dir = tmp.path().join("run");
    let mut child = bin()
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--set", "run.checkpoint_every=10"])
        .env("HYPERCLONE_TEST_CHECKPOINT_PAUSE_MS", "1500")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done10 = run_dir.join("step-00000010/DONE");
    let writing20 = || {
        std::fs::read_dir(&run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".step-00000020.tmp-")
            })
    };
    wait_for(&mut child, "checkpoint 10", || done10.exists());
    wait_for(&mut child, "the write of checkpoint 20", writing20);
    // The writer is inside its pause, before DONE and before the rename.
    kill9(&mut child);
    assert!(!run_dir.join("step-00000020").exists());

    let out = run_ok(
        bin()
            .args(["train", "--config"])
            .arg(&cfg)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--set", "run.checkpoint_every=10"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("step-00000010 (step 10)"), "{stderr}");
    assert!(run_dir.join("final/model.json").exists());
    // The leftover temporary folder of the killed write is cleaned up.
    assert!(!writing20(), "temporary checkpoint folder left behind");
}

#[test]
fn bad_configs_fail_with_the_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("warmup_steps = 5", "warmup_step = 5");
    std::fs::write(&cfg, text).unwrap();
    let out = bin().arg("run").arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tiny.toml") && err.contains("warmup_step"),
        "{err}"
    );

    let missing = bin()
        .args(["run", "/nonexistent/exp.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/exp.toml"));
}

/// `hyperclone bench` of cpu-tiny on flex (B = 2, T = 32, 2 steps after 1) with `extra`
/// arguments: its JSON line and all of its stdout.
fn bench_tiny(extra: &[&str]) -> (serde_json::Value, String) {
    let out = run_ok(
        bin()
            .args(["bench", "--backend", "flex", "--preset", "cpu-tiny"])
            .args([
                "--batch", "2", "--seq", "32", "--steps", "2", "--warmup", "1",
            ])
            .args(extra),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    (json, stdout)
}

/// `bench` prints one JSON line of figures per run; mixed bf16 runs on the CPU backend (as a
/// check of the numbers), pure bf16 is refused there with the reason.
#[test]
fn bench_reports_json_figures_and_refuses_bf16_pure_on_the_cpu() {
    let mut final_losses = Vec::new();
    for precision in ["f32", "bf16"] {
        let (v, _) = bench_tiny(&["--precision", precision]);
        assert_eq!(v["dtype"], precision);
        assert_eq!(v["backend"], "flex");
        assert_eq!(v["steps"], 2);
        assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
        // flex computes while it queues: the host's share is the whole step.
        let (host, step) = (
            v["host_ms"].as_f64().unwrap(),
            v["step_ms"].as_f64().unwrap(),
        );
        assert!(host > 0.0 && host <= step, "host {host} ms, step {step} ms");
        assert!(v["phases_ms"].is_null(), "{v}");
        // Random tokens over cpu-tiny's 512-word vocabulary: the loss stays near ln(512) = 6.24.
        let loss = v["final_loss"].as_f64().unwrap();
        assert!((5.5..7.0).contains(&loss), "{loss}");
        final_losses.push(loss);
    }
    // Same weights and tokens: bf16 compute shows in the loss, a little.
    assert_ne!(final_losses[0], final_losses[1]);
    assert!((final_losses[0] - final_losses[1]).abs() < 1e-2 * final_losses[0]);
    let out = bin()
        .args(["bench", "--backend", "flex", "--preset", "cpu-tiny"])
        .args(["--steps", "1", "--precision", "bf16-pure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bf16-pure") && err.contains("flex"), "{err}");
}

/// `bench --attention`, `--cross-entropy` and `--layer-ops` pick the kernels the step differentiates with, record
/// them in the JSON, and, from the same weights and tokens, end at the same loss; `--phases`
/// adds each phase's time.
#[test]
fn bench_kernel_choices_are_recorded_and_agree() {
    let mut runs = Vec::new();
    for (attention, cross_entropy, layer_ops) in [
        ("fused", "fused", "fused"),
        ("composed", "composed", "composed"),
    ] {
        let (v, stdout) = bench_tiny(&[
            "--attention",
            attention,
            "--cross-entropy",
            cross_entropy,
            "--layer-ops",
            layer_ops,
            "--phases",
        ]);
        let human = stdout
            .lines()
            .find(|l| l.starts_with("flex cpu-tiny"))
            .unwrap();
        assert_eq!(v["attention"], attention, "{v}");
        assert_eq!(v["cross_entropy"], cross_entropy, "{v}");
        assert!(
            human.contains(&format!(
                "{attention} attention, {cross_entropy} cross-entropy"
            )),
            "{human}"
        );
        for phase in ["forward", "backward", "optimizer"] {
            assert!(
                v["phases_ms"][phase].as_f64().unwrap() > 0.0,
                "{phase}: {v}"
            );
        }
        assert!(
            stdout.contains("with a sync after each phase: forward"),
            "{stdout}"
        );
        runs.push(v["final_loss"].as_f64().unwrap());
    }
    assert!(
        (runs[0] - runs[1]).abs() <= 1e-5 * runs[0],
        "fused {} vs composed {}",
        runs[0],
        runs[1]
    );
    let out = bin()
        .args(["bench", "--backend", "flex", "--preset", "cpu-tiny"])
        .args(["--steps", "1", "--cross-entropy", "sparse"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sparse") && err.contains("cross-entropy"),
        "{err}"
    );
}

/// The whole pipeline in mixed precision on the CPU: both training stages record `bf16`, the
/// expansion of a model trained in bf16 compute is still function-preserving (its weights are
/// f32), and the report says which precision each run used.
#[test]
fn pipeline_in_mixed_bf16_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_experiment(tmp.path());
    run_ok(bin().arg("run").arg(&cfg).args([
        "--set",
        "small.run.precision=bf16",
        "--set",
        "large.run.precision=bf16",
    ]));
    let exp = tmp.path().join("exp");
    for stage in ["small", "large", "baseline"] {
        let info: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(exp.join(stage).join("run_info.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(info["precision"], "bf16", "{stage}: {info}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("expand/expand.json")).unwrap())
            .unwrap();
    assert!(record["rel_err"].as_f64().unwrap() <= 1e-5, "{record}");
    let md = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(md.contains("| bf16 |"), "{md}");
}

/// A second `train` in a run directory that a running `train` holds is refused, naming the
/// holder's pid and host; once the holder is killed, its stale lock is taken over with a
/// warning and the run goes ahead.
#[test]
fn a_second_train_in_a_run_directory_is_refused_until_the_holder_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(tmp.path());
    let run_dir = tmp.path().join("run");
    let train = || {
        let mut c = bin();
        c.args(["train", "--config"])
            .arg(&cfg)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--set", "run.checkpoint_every=10"]);
        c
    };
    // The first run pauses long inside its first checkpoint write: it is still running
    // (and holding the lock) while the second one starts.
    let mut first = train()
        .env("HYPERCLONE_TEST_CHECKPOINT_PAUSE_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = first.id();
    let lock = run_dir.join("run.lock");
    wait_for(&mut first, "the first run's lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.contains(&format!("\"pid\":{pid}")))
    });
    let second = train().output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("run.lock") && err.contains(&format!("locked by pid {pid} on host")),
        "{err}"
    );
    kill9(&mut first);

    let third = run_ok(&mut train());
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(
        err.contains("stale lock") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    assert!(run_dir.join("final/model.json").exists());
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        "",
        "lock not released"
    );
}

/// `train --init-from MODEL` with a config without `[model]` and a `run.seq_len` above the
/// model's context: a clear error (exit code 1, no panic) naming the key, the value and the
/// context length, and no run directory left behind.
#[test]
fn init_from_with_a_sequence_longer_than_the_models_context_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_train_config(tmp.path());
    let run_dir = tmp.path().join("run");
    // The model: train-tiny for one step (context 32).
    run_ok(
        bin()
            .args(["train", "--config"])
            .arg(&cfg)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(["--set", "run.max_steps=1"]),
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let no_model = text[text.find("[data]").unwrap()..].replace("seq_len = 32", "seq_len = 64");
    let cfg2 = tmp.path().join("continue.toml");
    std::fs::write(&cfg2, no_model).unwrap();
    let run2 = tmp.path().join("run2");
    let out = bin()
        .args(["train", "--config"])
        .arg(&cfg2)
        .arg("--run-dir")
        .arg(&run2)
        .arg("--init-from")
        .arg(run_dir.join("final"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let first = err.lines().find(|l| l.starts_with("Error")).unwrap();
    assert!(
        first.contains("run.seq_len = 64") && first.contains("context_length 32"),
        "{err}"
    );
    assert!(!run2.exists(), "{} left behind", run2.display());
}

/// `prepare` puts the real cause of a failure on its first error line.
#[test]
fn prepare_names_the_cause_on_the_first_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["prepare", "/nonexistent/corpus", "--gpt2", "--out"])
        .arg(tmp.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err.lines().find(|l| l.starts_with("Error")).unwrap();
    assert!(
        first.contains("/nonexistent/corpus") && first.contains("does not exist"),
        "{err}"
    );
}
