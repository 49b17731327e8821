//! What the cloned copies do under training (autodiff on the CPU backend): the expanded model
//! learns (its loss falls), exact symmetric cloning without noise or dropout stays perfectly
//! symmetric — every copy gets the same gradient, so AdamW keeps the copies equal — while the
//! noisy variant and dropout break the symmetry.

use burn::backend::{Autodiff, Flex};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use hyperclone_cloning::{expand, symmetry, ExpandOptions, Variant};
use hyperclone_model::{tokens_tensor, Gpt, GptConfig, SplitMix64};

type AB = Autodiff<Flex>;

fn config(dropout: f64) -> GptConfig {
    GptConfig {
        vocab_size: 32,
        context_length: 16,
        n_layer: 2,
        d_model: 16,
        n_head: 2,
        d_ff: 32,
        dropout,
        ..GptConfig::cpu_tiny()
    }
}

/// A learnable stream: each sequence follows `t → (5·t + 3) mod 32` from a random start.
fn batch(seed: u64, device: &burn::tensor::Device<AB>) -> (Tensor<AB, 2, Int>, Tensor<AB, 2, Int>) {
    let (b, t) = (8, 16);
    let mut rng = SplitMix64::new(seed);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for _ in 0..b {
        let mut tok = (rng.next_u64() % 32) as u32;
        for _ in 0..t {
            let next = (5 * tok + 3) % 32;
            inputs.push(tok);
            targets.push(next);
            tok = next;
        }
    }
    (
        tokens_tensor(&inputs, b, t, device),
        tokens_tensor(&targets, b, t, device),
    )
}

/// Trains `model` for `steps` AdamW steps; returns it with the first and last loss.
fn train(mut model: Gpt<AB>, steps: usize) -> (Gpt<AB>, f32, f32) {
    let device = model.wte.weight.val().device();
    let mut optim = AdamWConfig::new().init::<AB, Gpt<AB>>();
    let (mut first, mut last) = (f32::NAN, f32::NAN);
    for step in 0..steps {
        let (x, y) = batch(step as u64, &device);
        let loss = model.forward_loss(x, y);
        let value: f32 = loss.clone().into_scalar();
        if step == 0 {
            first = value;
        }
        last = value;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    (model, first, last)
}

fn expanded(dropout: f64, variant: Variant) -> Gpt<AB> {
    let device = Default::default();
    AB::seed(&device, 11);
    let source = Gpt::<AB>::init(&config(dropout), 3, &device).unwrap();
    let opts = ExpandOptions {
        variant,
        seed: 5,
        ..Default::default()
    };
    expand(&source, &opts).unwrap()
}

#[test]
fn symmetric_clone_without_noise_or_dropout_never_breaks_symmetry_but_learns() {
    let model = expanded(0.0, Variant::Symmetric);
    assert_eq!(symmetry(&model, 2, 2).unwrap().mean, 1.0);
    let (model, first, last) = train(model, 30);
    assert!(last < first - 0.3, "loss {first} -> {last}");
    let sym = symmetry(&model, 2, 2).unwrap();
    eprintln!("symmetric, no dropout: loss {first:.3} -> {last:.3}, symmetry {sym:?}");
    for (name, s) in &sym.per_weight {
        assert!(*s > 1.0 - 1e-6, "{name}: {s}");
    }
}

#[test]
fn noise_and_dropout_break_symmetry_during_training() {
    let noisy = expanded(0.0, Variant::NoisySymmetric);
    let start = symmetry(&noisy, 2, 2).unwrap().mean;
    assert!(start < 1.0, "{start}");
    let (noisy, first, last) = train(noisy, 30);
    assert!(last < first - 0.3, "loss {first} -> {last}");
    let end = symmetry(&noisy, 2, 2).unwrap();
    eprintln!(
        "noisy-symmetric: symmetry {start:.4} -> {:.4} {:?}",
        end.mean, end.per_layer
    );
    assert!(end.mean < 1.0 - 1e-3, "{end:?}");

    let dropped = expanded(0.2, Variant::Symmetric);
    assert_eq!(symmetry(&dropped, 2, 2).unwrap().mean, 1.0);
    let (dropped, _, _) = train(dropped, 30);
    let end = symmetry(&dropped, 2, 2).unwrap();
    eprintln!(
        "symmetric + dropout 0.2: symmetry 1 -> {:.4} {:?}",
        end.mean, end.per_layer
    );
    assert!(end.mean < 1.0 - 1e-3, "{end:?}");
}
