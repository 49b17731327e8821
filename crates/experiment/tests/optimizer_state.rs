//! The trainer and an optimizer state carried through the clone (`hyperclone expand
//! --optimizer-state transfer`): `OptimizerInit::Auto` continues it (update count and
//! per-parameter factors, which the run's checkpoints keep, so that a resumed run matches the
//! uninterrupted one bit for bit), `Fresh` ignores it and trains exactly as from the weights
//! alone, `Transfer` refuses a folder without one, and a state that does not fit the model is
//! refused by name.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use hyperclone_cloning::{expand_folder, ExpandOptions, ProbeSpec};
use hyperclone_experiment::transfer_optimizer_state;
use hyperclone_training::checkpoint::{step_dir_name, OPTIMIZER_FILE};
use hyperclone_training::optim::{AdamWState, FORMAT_V1, FORMAT_V2};
use hyperclone_training::trainer::OptimizerInit;
use hyperclone_training::{train, TrainConfig, TrainError, TrainOptions};

type AB = Autodiff<Flex>;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The small model's run when `small`, else the wide run from `--init-from` (no `[model]`).
fn config(data: &Path, small: bool, extra: &[&str]) -> TrainConfig {
    let root = repo();
    let model = if small {
        r#"
        [model]
        preset = "cpu-tiny"
        vocab_size = 4096
        d_model = 32
        n_head = 2
        d_ff = 64
        context_length = 32
        "#
    } else {
        ""
    };
    let text = format!(
        r#"
        {model}
        [data]
        train = ["{root}/datasets/gutenberg/val"]
        val_fraction = 0.05
        tokenizer = {{ file = "{root}/datasets/gutenberg/tokenizer-4096.json" }}
        out = "{data}"

        [optimizer]
        lr = 3e-3

        [run]
        seed = 3
        batch_size = 4
        seq_len = 32
        max_steps = 4
        eval_every = 2
        eval_batches = 1
        checkpoint_every = 2
        keep_last = 10
        "#,
        root = root.display(),
        data = data.display()
    );
    let o: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml_str(&text, Path::new("optimizer_state.toml"), &o).unwrap()
}

fn options(run_dir: &Path, init_from: &Path, optimizer_state: OptimizerInit) -> TrainOptions<Flex> {
    TrainOptions {
        run_dir: run_dir.to_path_buf(),
        init_from: Some(init_from.to_path_buf()),
        resume: true,
        stop_after: None,
        backend_name: "flex".into(),
        device_name: "cpu: test".into(),
        symmetry: None,
        optimizer_state,
        cost_offset: Default::default(),
    }
}

fn losses(summary: &hyperclone_training::TrainSummary) -> Vec<u64> {
    // Bits, so that equality is bit-for-bit.
    summary.losses.iter().map(|(_, l)| l.to_bits()).collect()
}

fn checkpoint_file(run: &Path, step: u64, file: &str) -> PathBuf {
    run.join(step_dir_name(step)).join(file)
}

fn has_tag(path: &Path, tag: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    let header = String::from_utf8_lossy(&bytes[..bytes.len().min(1 << 16)]).to_string();
    header.contains(tag)
}

#[test]
fn transferred_state_is_continued_and_kept_and_fresh_ignores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let device = Default::default();

    // The small run: 6 steps, its last checkpoint holds the optimizer state.
    let small_run = t.join("small");
    let small_cfg = config(&data, true, &["run.max_steps=6", "run.checkpoint_every=6"]);
    let small_opts = TrainOptions {
        init_from: None,
        ..options(&small_run, &small_run, OptimizerInit::Auto)
    };
    train::<AB>(&small_cfg, &small_opts, &device).unwrap();
    let step_dir = small_run.join(step_dir_name(6));

    // Two identical expansions of it; one also receives the optimizer state.
    let probe = ProbeSpec {
        tokens: None,
        batch: 2,
        seq: 16,
        tolerance: 1e-5,
        skip: false,
    };
    let (plain, carried) = (t.join("plain"), t.join("carried"));
    for out in [&plain, &carried] {
        expand_folder::<Flex>(
            &step_dir,
            out,
            &ExpandOptions::default(),
            &probe,
            "cpu",
            &device,
        )
        .unwrap();
    }
    let transfer = transfer_optimizer_state::<Flex>(&step_dir, &carried, &device).unwrap();
    assert_eq!((transfer.updates, transfer.source_step), (6, 6));

    let wide = config(&data, false, &[]);
    let run = |name: &str, from: &Path, init: OptimizerInit| {
        let dir = t.join(name);
        let summary = train::<AB>(&wide, &options(&dir, from, init), &device);
        (dir, summary)
    };

    // Weights only: a fresh optimizer, as before transfers existed (v1 file, 4 updates).
    let (plain_run, plain_summary) = run("from-plain", &plain, OptimizerInit::Auto);
    let plain_summary = plain_summary.unwrap();
    let plain_state = checkpoint_file(&plain_run, 4, OPTIMIZER_FILE);
    assert!(has_tag(&plain_state, FORMAT_V1));
    let state = AdamWState::read(&plain_state).unwrap();
    assert_eq!(state.updates, 4);
    assert!(state.params.values().all(|p| p.scale.is_none()));

    // Fresh ignores the carried state: the same losses and byte-identical checkpoints.
    let (fresh_run, fresh_summary) = run("fresh", &carried, OptimizerInit::Fresh);
    assert_eq!(losses(&fresh_summary.unwrap()), losses(&plain_summary));
    for file in [OPTIMIZER_FILE, "model.safetensors"] {
        assert!(
            std::fs::read(checkpoint_file(&fresh_run, 4, file)).unwrap()
                == std::fs::read(checkpoint_file(&plain_run, 4, file)).unwrap(),
            "{file} differs between a fresh run and the weights-only run"
        );
    }

    // Auto continues the carried state: the update count goes on from the small run's 6, the
    // factors stay in every checkpoint, and the trajectory differs from a fresh start.
    let (auto_run, auto_summary) = run("auto", &carried, OptimizerInit::Auto);
    let auto_summary = auto_summary.unwrap();
    assert_ne!(losses(&auto_summary), losses(&plain_summary));
    let auto_state = checkpoint_file(&auto_run, 4, OPTIMIZER_FILE);
    assert!(has_tag(&auto_state, FORMAT_V2));
    let state = AdamWState::read(&auto_state).unwrap();
    assert_eq!(state.updates, 10);
    let qkv = state.params["h.0.attn.c_attn.weight"]
        .scale
        .clone()
        .unwrap();
    assert_eq!(qkv.step, 0.5);
    assert!(qkv.eps.iter().all(|&e| e == 0.5));
    let wte = state.params["wte.weight"].scale.clone().unwrap();
    assert_eq!(wte.step, 1.0);
    // cpu-tiny ties its head: ln_f takes the head's 1/n (step 1/2, gradient undivided).
    let ln_f = state.params["ln_f.weight"].scale.clone().unwrap();
    assert_eq!(ln_f.step, 0.5);
    assert!(ln_f.eps.iter().all(|&e| e == 1.0));

    // Stopped after step 2 and resumed: the factors come back from the checkpoint, and the
    // losses are the uninterrupted run's, bit for bit.
    let split = t.join("split");
    let first = train::<AB>(
        &wide,
        &TrainOptions {
            stop_after: Some(2),
            ..options(&split, &carried, OptimizerInit::Auto)
        },
        &device,
    )
    .unwrap();
    let second = train::<AB>(
        &wide,
        &options(&split, &carried, OptimizerInit::Auto),
        &device,
    )
    .unwrap();
    let mut resumed = losses(&first);
    resumed.extend(losses(&second));
    assert_eq!(resumed, losses(&auto_summary));
    assert_eq!(
        std::fs::read(checkpoint_file(&split, 4, OPTIMIZER_FILE)).unwrap(),
        std::fs::read(&auto_state).unwrap()
    );
}

#[test]
fn transfer_without_a_state_and_a_state_that_does_not_fit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let device = Default::default();
    let small_run = t.join("small");
    let small_cfg = config(&data, true, &["run.max_steps=2"]);
    let small_opts = TrainOptions {
        init_from: None,
        ..options(&small_run, &small_run, OptimizerInit::Auto)
    };
    train::<AB>(&small_cfg, &small_opts, &device).unwrap();
    let step_dir = small_run.join(step_dir_name(2));
    let expanded = t.join("expanded");
    let probe = ProbeSpec {
        tokens: None,
        batch: 1,
        seq: 8,
        tolerance: 1e-5,
        skip: true,
    };
    expand_folder::<Flex>(
        &step_dir,
        &expanded,
        &ExpandOptions::default(),
        &probe,
        "cpu",
        &device,
    )
    .unwrap();
    let wide = config(&data, false, &[]);
    let run = t.join("run");

    // Transfer asked for, but the folder holds weights only: named, and nothing left behind.
    let e = train::<AB>(
        &wide,
        &options(&run, &expanded, OptimizerInit::Transfer),
        &device,
    )
    .unwrap_err();
    assert!(matches!(e, TrainError::NoOptimizerState { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&expanded.display().to_string()) && msg.contains(OPTIMIZER_FILE),
        "{msg}"
    );
    assert!(!run.exists());

    // Transfer without --init-from at all.
    let e = train::<AB>(
        &small_cfg,
        &TrainOptions {
            init_from: None,
            ..options(&run, &expanded, OptimizerInit::Transfer)
        },
        &device,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no --init-from"), "{e}");
    assert!(!run.exists());

    // The small model's own state dropped into the wide folder: it does not fit the model.
    std::fs::copy(step_dir.join(OPTIMIZER_FILE), expanded.join(OPTIMIZER_FILE)).unwrap();
    let e = train::<AB>(
        &wide,
        &options(&run, &expanded, OptimizerInit::Auto),
        &device,
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TrainError::InitOptimizer(_)), "{msg}");
    assert!(
        msg.contains("does not fit") && msg.contains("h.0.attn.c_attn"),
        "{msg}"
    );
    assert!(!run.exists());
}
