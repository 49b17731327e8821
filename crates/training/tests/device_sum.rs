//! The device all-reduce hook of data-parallel training (`register_device_sum`), which an
//! `nccl` build fills with NCCL's sum on CUDA. Here a stand-in for flex, summing through the
//! host with a barrier, shows that the trainer hands it exactly the gradients (a 2-peer run
//! equals one device), calls it once per peer and step, and that `all_reduce = Collective`
//! bypasses it. Its own test binary: the hook is registered for the whole process.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use common::{data_parallel_config as config, max_relative_difference, options, serial};
use hyperclone_training::metrics::read_metrics;
use hyperclone_training::{
    register_device_sum, train, train_data_parallel, AllReduceChoice, Launch,
};

type AB = Autodiff<Flex>;

/// Calls of [`host_sum`] so far.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// A device sum for 2 peers through the host: each adds its values into a shared buffer,
/// waits for the other, and reads the total back.
fn host_sum(tensor: Tensor<Flex, 1>, devices: &[burn::tensor::Device<Flex>]) -> Tensor<Flex, 1> {
    static TOTAL: Mutex<Vec<f32>> = Mutex::new(Vec::new());
    static BARRIER: Barrier = Barrier::new(2);
    assert_eq!(
        devices.len(),
        2,
        "the devices of both peers of this process"
    );
    CALLS.fetch_add(1, Ordering::SeqCst);
    let device = tensor.device();
    let mine: Vec<f32> = tensor.into_data().convert::<f32>().into_vec().unwrap();
    {
        let mut total = TOTAL.lock().unwrap();
        if total.len() != mine.len() {
            *total = vec![0.0; mine.len()];
        }
        for (t, m) in total.iter_mut().zip(&mine) {
            *t += m;
        }
    }
    BARRIER.wait(); // both have added
    let sum = TOTAL.lock().unwrap().clone();
    // The last one out clears the buffer for the next call.
    if BARRIER.wait().is_leader() {
        TOTAL.lock().unwrap().clear();
    }
    BARRIER.wait(); // cleared before either adds again
    let len = sum.len();
    Tensor::from_data(TensorData::new(sum, [len]), &device)
}

/// (step, gradient norm) of the train lines of a run.
fn grad_norms(run_dir: &std::path::Path) -> Vec<(u64, f64)> {
    let metrics = read_metrics(run_dir.join("metrics.jsonl")).unwrap();
    metrics
        .train
        .iter()
        .map(|l| (l.step, l.grad_norm.unwrap()))
        .collect()
}

#[test]
fn a_registered_device_sum_carries_the_gradients_of_two_peers() {
    let _serial = serial();
    let device = Default::default();
    let one = tempfile::tempdir().unwrap();
    let single = train::<AB>(&config(&[]), &options(one.path()), &device).unwrap();

    register_device_sum::<Flex>("host stand-in", host_sum);
    let cfg = config(&["run.devices=2"]);
    let two = tempfile::tempdir().unwrap();
    let calls_before = CALLS.load(Ordering::SeqCst);
    let parallel = train::<AB>(&cfg, &options(two.path()), &device).unwrap();
    // One gradient all-reduce per peer and step (the loss and checksums stay on
    // burn-collective).
    assert_eq!(CALLS.load(Ordering::SeqCst) - calls_before, 2 * 30);
    let diff = max_relative_difference(&parallel.losses, &single.losses);
    eprintln!("device sum, 2 peers vs 1 device: max relative loss difference {diff:.3e}");
    // The same bound as burn-collective's sum in data_parallel.rs: f32 rounding of another
    // summation order, far below what a peer training on its own half of the batch changes.
    assert!(diff < 1e-5, "losses differ by {diff}");
    // AdamW hardly sees the gradient's scale, so the losses alone would not catch a sum left
    // undivided: the logged gradient norm (of the reduced gradient) does.
    let norm_diff = max_relative_difference(&grad_norms(two.path()), &grad_norms(one.path()));
    eprintln!("gradient norms: max relative difference {norm_diff:.3e}");
    assert!(norm_diff < 1e-4, "gradient norms differ by {norm_diff}");

    // `Collective` leaves the hook alone and gives the same run through burn-collective.
    let bypass = tempfile::tempdir().unwrap();
    let launch = Launch {
        all_reduce: AllReduceChoice::Collective,
        ..Launch::default()
    };
    let calls_before = CALLS.load(Ordering::SeqCst);
    let collective =
        train_data_parallel::<AB>(&cfg, &options(bypass.path()), &launch, &device).unwrap();
    assert_eq!(CALLS.load(Ordering::SeqCst), calls_before);
    let diff = max_relative_difference(&collective.losses, &parallel.losses);
    assert!(diff < 1e-5, "losses differ by {diff}");
}
