//! The symmetry trap, measured: training an exactly cloned model keeps its copies identical;
//! dropout lets them drift apart, and the noisy variant starts and stays apart. All learn.

mod common;

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use hyperclone_cloning::{expand_folder, ExpandOptions, ProbeSpec, Variant};
use hyperclone_training::metrics::{read_metrics, SymmetryLine};
use hyperclone_training::{train, TrainConfig, TrainOptions};

type AB = Autodiff<Flex>;

/// The tiny model of [`common::config`] for 40 steps from seed 3, evaluated every 20.
fn config() -> TrainConfig {
    common::config(&[
        "schedule.warmup_steps=5",
        "run.seed=3",
        "run.max_steps=40",
        "run.eval_every=20",
    ])
}

fn options(run_dir: PathBuf, init_from: Option<PathBuf>) -> TrainOptions<Flex> {
    TrainOptions {
        run_dir,
        init_from,
        resume: true,
        stop_after: None,
        backend_name: "flex".into(),
        device_name: "cpu: test".into(),
        // The trainer does not know HyperCloning: the metric is the caller's.
        symmetry: Some(std::sync::Arc::new(|model, (width, ffn)| {
            let report = hyperclone_cloning::symmetry(model, width, ffn).ok()?;
            Some(SymmetryLine {
                mean: report.mean,
                per_layer: report.per_layer,
            })
        })),
        optimizer_state: Default::default(),
        cost_offset: Default::default(),
    }
}

/// (symmetry at step 0, symmetry at the end, val loss at step 0, val loss at the end).
fn train_clone(tmp: &Path, small: &Path, variant: Variant, dropout: f64) -> (f64, f64, f64, f64) {
    let device = Default::default();
    let name = format!("{variant}-{dropout}");
    let expanded = tmp.join(format!("expanded-{name}"));
    let opts = ExpandOptions {
        width_factor: 2,
        ffn_factor: 2,
        variant,
        snr_db: 10.0,
        seed: 5,
        ..ExpandOptions::default()
    };
    let probe = ProbeSpec {
        tokens: None,
        batch: 2,
        seq: 16,
        tolerance: 1e-5,
        skip: false,
    };
    expand_folder::<Flex>(small, &expanded, &opts, &probe, "cpu", &device).unwrap();
    let run = tmp.join(format!("large-{name}"));
    // [model] must equal the expanded architecture; only dropout is a training choice.
    let small_config = hyperclone_model::checkpoint::read_meta(small)
        .unwrap()
        .config;
    let mut large = hyperclone_cloning::expand_config(&small_config, &opts).unwrap();
    large.dropout = dropout;
    let cfg = TrainConfig {
        model: Some(large),
        ..config()
    };
    train::<AB>(&cfg, &options(run.clone(), Some(expanded)), &device).unwrap();
    let evals = read_metrics(run.join("metrics.jsonl")).unwrap().eval;
    let first = evals.first().unwrap();
    let last = evals.last().unwrap();
    (
        first.symmetry.as_ref().unwrap().mean,
        last.symmetry.as_ref().unwrap().mean,
        first.val_loss.unwrap(),
        last.val_loss.unwrap(),
    )
}

#[test]
fn exact_clones_stay_symmetric_dropout_and_noise_break_symmetry_and_all_learn() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let small_run = tmp.path().join("small");
    train::<AB>(&config(), &options(small_run.clone(), None), &device).unwrap();
    let small = small_run.join("final");

    let (s0, s1, l0, l1) = train_clone(tmp.path(), &small, Variant::Symmetric, 0.0);
    // Exact copies receive identical gradients: up to float rounding they stay identical.
    assert!((s0 - 1.0).abs() < 1e-9, "symmetric start {s0}");
    assert!(s1 > 1.0 - 1e-6, "symmetric clones drifted: {s1}");
    assert!(l1 < l0 - 0.05, "symmetric clone did not learn: {l0} → {l1}");

    // Dropout gives each copy its own mask: the copies' gradients differ and they drift apart.
    let (d0, d1, _, dl1) = train_clone(tmp.path(), &small, Variant::Symmetric, 0.2);
    assert!((d0 - 1.0).abs() < 1e-9, "dropout start {d0}");
    assert!(d1 < 1.0 - 1e-3, "dropout did not break symmetry: {d1}");
    assert!(dl1 < l0 - 0.05, "dropout clone did not learn: {l0} → {dl1}");

    // Noise starts the copies apart. (Training does not necessarily push them further apart:
    // the shared part of the gradient dilutes the noise, so the similarity can rise.)
    let (n0, n1, m0, m1) = train_clone(tmp.path(), &small, Variant::NoisySymmetric, 0.0);
    assert!(n0 < 0.99, "noisy start {n0}");
    assert!(n1 < 1.0 - 1e-3, "noisy clone became symmetric: {n1}");
    assert!(m1 < m0 - 0.05, "noisy clone did not learn: {m0} → {m1}");
    // Function-preserving: both clones start from the small model's validation loss.
    assert!((l0 - m0).abs() < 1e-4, "{l0} vs {m0}");
}
