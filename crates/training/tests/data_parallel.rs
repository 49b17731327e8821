//! Data-parallel training with burn-collective on the CPU: two flex peers (threads sharing the
//! one CPU device) against one device at the same global batch, resume after a lost peer, and
//! the refusals. Its own test binary: burn-collective keeps one server per backend and process,
//! so the runs here are serialised.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use common::{data_parallel_config as config, max_relative_difference, options, serial};
use hyperclone_training::metrics::read_metrics;
use hyperclone_training::{
    train, train_data_parallel, Launch, ParallelError, TrainError, TrainOptions,
};

type AB = Autodiff<Flex>;

#[test]
fn two_peers_match_one_device_at_the_same_global_batch() {
    let _serial = serial();
    let device = Default::default();
    let one = tempfile::tempdir().unwrap();
    let single = train::<AB>(&config(&[]), &options(one.path()), &device).unwrap();
    let two = tempfile::tempdir().unwrap();
    let cfg = config(&["run.devices=2"]);
    let parallel = train::<AB>(&cfg, &options(two.path()), &device).unwrap();

    assert_eq!(parallel.step, 30);
    assert_eq!(parallel.tokens, single.tokens, "same global batch");
    // Each peer averages its 4 rows, the all-reduce averages the peers: the same mean as 8
    // rows on one device, summed in another order. Measured: 1.2e-7 relative at most over the
    // 30 steps (f32 rounding); a wrong split or scale would differ by far more than 1e-5.
    let loss_diff = max_relative_difference(&parallel.losses, &single.losses);
    eprintln!("2 peers vs 1 device: max relative loss difference {loss_diff:.3e}");
    assert!(loss_diff < 1e-5, "losses differ by {loss_diff}");
    assert_ne!(
        parallel.losses, single.losses,
        "the peers did not split the batch"
    );
    let (v2, v1) = (
        parallel.final_val_loss.unwrap(),
        single.final_val_loss.unwrap(),
    );
    assert!(((v2 - v1) / v1).abs() < 1e-5, "val loss {v2} vs {v1}");

    // Rank 0 alone wrote the run files; device-hours count both devices.
    let metrics = read_metrics(two.path().join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.train.len(), 30);
    for line in &metrics.train {
        let (hours, wall) = (line.device_hours.unwrap(), line.wall_s.unwrap());
        assert!(
            (hours - 2.0 * wall / 3600.0).abs() < 1e-12,
            "{hours} vs {wall}"
        );
    }
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(two.path().join("run_info.json")).unwrap()).unwrap();
    assert_eq!(info["devices"], 2);
    // The one-peer reference of the scaling efficiency: one device, 4 of the 8 rows.
    let reference = info["single_peer_tokens_per_s"].as_f64().unwrap();
    assert!(reference.is_finite() && reference > 0.0, "{info}");
    assert_eq!(info["single_peer_rows"], 4);
    let one_info = std::fs::read_to_string(one.path().join("run_info.json")).unwrap();
    assert!(!one_info.contains("single_peer"), "{one_info}");
    assert!(two.path().join("final/model.json").exists());
    let toml = std::fs::read_to_string(two.path().join("config.toml")).unwrap();
    assert!(toml.contains("devices = 2"), "{toml}");
    assert!(!toml.contains("scaling_reference_steps"), "{toml}");
    // `devices` at its default is not written: single-device configs hash as before.
    let toml = std::fs::read_to_string(one.path().join("config.toml")).unwrap();
    assert!(!toml.contains("devices"), "{toml}");
}

#[test]
fn two_peers_are_deterministic_and_a_run_that_lost_a_peer_resumes_to_the_same_losses() {
    let _serial = serial();
    let device = Default::default();
    let cfg = config(&["run.devices=2"]);
    let full = tempfile::tempdir().unwrap();
    let uninterrupted = train::<AB>(&cfg, &options(full.path()), &device).unwrap();

    // Peer 1 dies before step 18: peer 0 stops too, in bounded time, with peer 1's error.
    let split = tempfile::tempdir().unwrap();
    let launch = Launch {
        fail_peer: Some((1, 18)),
        peer_timeout: Duration::from_secs(60),
        ..Launch::default()
    };
    let t0 = Instant::now();
    let err =
        train_data_parallel::<AB>(&cfg, &options(split.path()), &launch, &device).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::Parallel(ParallelError::Injected { rank: 1, step: 18 })
        ),
        "{err}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(50),
        "the surviving peer waited for its timeout instead of stopping with its sibling"
    );

    // Resumed from the checkpoint of step 15: the same losses, bit for bit.
    let resumed = train::<AB>(&cfg, &options(split.path()), &device).unwrap();
    assert_eq!(resumed.losses.first().unwrap().0, 16);
    assert_eq!(resumed.losses, uninterrupted.losses[15..].to_vec());
    assert_eq!(resumed.final_val_loss, uninterrupted.final_val_loss);

    // The resumed run measured its one-peer reference again and kept the rest of the file.
    let info = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("run_info.json")).unwrap()).unwrap()
    };
    let resumed_info = info(split.path());
    assert!(resumed_info["single_peer_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(resumed_info["init"], "random", "{resumed_info}");

    // A second uninterrupted 2-peer run, without the one-peer reference, repeats the first
    // exactly: measuring the reference changes nothing the run computes.
    let again = tempfile::tempdir().unwrap();
    let no_reference = config(&["run.devices=2", "run.scaling_reference_steps=0"]);
    let repeat = train::<AB>(&no_reference, &options(again.path()), &device).unwrap();
    assert_eq!(repeat.losses, uninterrupted.losses);
    assert!(info(again.path())["single_peer_tokens_per_s"].is_null());
}

#[test]
fn uneven_batches_too_many_devices_and_shared_dropout_are_refused() {
    let _serial = serial();
    let device = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let err = train::<AB>(&config(&["run.devices=3"]), &options(&run_dir), &device).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("run.batch_size = 8") && text.contains("3 data-parallel peers"),
        "{text}"
    );
    let err = train::<AB>(
        &config(&["run.devices=2", "model.dropout=0.1"]),
        &options(&run_dir),
        &device,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("model.dropout = 0.1") && text.contains("run.devices = 2"),
        "{text}"
    );
    // A backend that is not the CPU gets one device per peer: flex reports a single device, so
    // two peers on a "GPU" are more devices than exist.
    let err = train::<AB>(
        &config(&["run.devices=2"]),
        &TrainOptions {
            device_name: "a GPU".into(),
            ..options(&run_dir)
        },
        &device,
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("run.devices = 2, but the backend has 1 device(s)"),
        "{text}"
    );
    assert!(
        !run_dir.exists(),
        "a refused run left {}",
        run_dir.display()
    );
    let mut bad = config(&[]);
    bad.run.devices = 0;
    let text = bad.validate().unwrap_err().to_string();
    assert!(text.contains("run.devices"), "{text}");
}
