//! Fixtures shared by the end-to-end training tests: the tiny model on the shipped corpus, the
//! run options of the CPU backend, and the lock that serialises the trainings of one test
//! binary.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use burn::backend::Flex;
use hyperclone_training::{TrainConfig, TrainOptions};

/// The repository's root (the shipped corpus and tokenizer live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Prepared data shared by every test of one binary (two shipped books, 5 % held out), built
/// once in a folder that lives as long as the process.
pub fn data_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// The tiny model (d 32, 2 heads, context 32) on the shipped corpus: 30 steps of batch 8,
/// evaluated every 10, checkpointed every 10 (the last 5 kept), with `overrides` applied
/// (`key=value`, as `--set` takes them).
pub fn config(overrides: &[&str]) -> TrainConfig {
    let root = repo_root();
    let text = format!(
        r#"
        [model]
        preset = "cpu-tiny"
        vocab_size = 4096
        d_model = 32
        n_head = 2
        d_ff = 64
        context_length = 32

        [data]
        train = ["{root}/datasets/gutenberg/val"]
        val_fraction = 0.05
        tokenizer = {{ file = "{root}/datasets/gutenberg/tokenizer-4096.json" }}
        out = "{data}/prepared"

        [optimizer]
        lr = 3e-3

        [schedule]
        warmup_steps = 10

        [run]
        seed = 7
        batch_size = 8
        seq_len = 32
        max_steps = 30
        eval_every = 10
        eval_batches = 2
        checkpoint_every = 10
        keep_last = 5
        "#,
        root = root.display(),
        data = data_dir().display()
    );
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml_str(&text, Path::new("test.toml"), &overrides).unwrap()
}

/// [`config`] for data-parallel runs: no dropout (its masks come from a process-wide
/// generator that peers in one process would share), two micro-batches of 8 rows per step,
/// a checkpoint every 5 steps (the last 10 kept), then `overrides`.
pub fn data_parallel_config(overrides: &[&str]) -> TrainConfig {
    let mut all = vec![
        "model.dropout=0.0",
        "run.grad_accum=2",
        "run.checkpoint_every=5",
        "run.keep_last=10",
    ];
    all.extend_from_slice(overrides);
    config(&all)
}

/// Options of a CPU (flex) run in `run_dir`, resuming what it finds there.
pub fn options(run_dir: &Path) -> TrainOptions<Flex> {
    TrainOptions {
        run_dir: run_dir.to_path_buf(),
        init_from: None,
        resume: true,
        stop_after: None,
        backend_name: "flex".into(),
        device_name: hyperclone_training::metrics::cpu_name(),
        symmetry: None,
        optimizer_state: Default::default(),
        cost_offset: Default::default(),
    }
}

/// Prepares the shared data once and serialises the tests of this binary: dropout masks come
/// from the backend's process-wide generator, which every training step reseeds, and
/// burn-collective keeps one server per backend and process, so two trainings running at once
/// in one process would disturb each other.
pub fn serial() -> MutexGuard<'static, ()> {
    static ONCE: OnceLock<()> = OnceLock::new();
    static SERIAL: Mutex<()> = Mutex::new(());
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ONCE.get_or_init(|| {
        hyperclone_data::ensure_prepared(&config(&[]).data).unwrap();
    });
    guard
}

/// Largest |a − b| / |b| over the steps of two loss curves (the same steps required).
pub fn max_relative_difference(a: &[(u64, f64)], b: &[(u64, f64)]) -> f64 {
    assert_eq!(
        a.iter().map(|l| l.0).collect::<Vec<_>>(),
        b.iter().map(|l| l.0).collect::<Vec<_>>()
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| ((x.1 - y.1) / y.1).abs())
        .fold(0.0, f64::max)
}
