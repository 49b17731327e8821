//! AdamW's state through the clone, end to end on the CPU backend: a small model is trained a
//! few steps and checkpointed; the checkpoint is expanded (noise-free symmetric) and its
//! optimizer state carried over (`transfer_optimizer_state`); then the small model and the
//! wide one train 10 more steps on the same batches with the same learning rate. The wide
//! model must still be the small model's clone: logits within 1e-4 relative.
//!
//! The controls show that the test can fail: a fresh optimizer and the transferred moments
//! without the per-parameter factors end far outside the tolerance, and the small model itself
//! moves much more than the tolerance over the 10 steps. With gradient clipping that acts, the
//! clone holds only thanks to the norm weights: without them it fails too.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::tensor::{Int, Tensor};
use hyperclone_cloning::{expand_folder, ExpandOptions, ProbeSpec, Variant};
use hyperclone_experiment::{transfer_optimizer_state, TransferError};
use hyperclone_model::checkpoint::{load_model, save_model};
use hyperclone_model::{tokens_tensor, Gpt, GptConfig, MlpKind, NormKind, Positional, SplitMix64};
use hyperclone_training::checkpoint::{save_checkpoint, trainable, TrainState, OPTIMIZER_FILE};
use hyperclone_training::config::OptimizerConfig;
use hyperclone_training::optim::{AdamW, AdamWState, FORMAT_V2};
use hyperclone_training::Trainer;

type AB = Autodiff<Flex>;

/// Steps of the small model before the checkpoint (its moments must be warm).
const BEFORE: u64 = 5;
/// Steps of both models after the transfer.
const AFTER: u64 = 10;
/// The tolerance of the issue: relative logit error after 10 steps.
const TOLERANCE: f64 = 1e-4;
const LR: f64 = 1e-2;

fn gpt2(tied: bool) -> GptConfig {
    GptConfig {
        vocab_size: 64,
        context_length: 16,
        n_layer: 2,
        d_model: 16,
        n_head: 2,
        n_kv_head: None,
        d_ff: 32,
        positional: Positional::Learned,
        norm: NormKind::LayerNorm,
        mlp: MlpKind::Gelu,
        bias: true,
        tie_embeddings: tied,
        dropout: 0.0,
        ..GptConfig::cpu_tiny()
    }
}

fn llama(tied: bool, kv_heads: usize) -> GptConfig {
    GptConfig {
        vocab_size: 64,
        context_length: 16,
        n_layer: 2,
        d_model: 32,
        n_head: 4,
        n_kv_head: Some(kv_heads),
        d_ff: 48,
        tie_embeddings: tied,
        dropout: 0.0,
        ..GptConfig::llama_small()
    }
}

/// Batch `index`: 8 sequences of 16 tokens following `t → (5·t + 3) mod V` from random
/// starts, with one random token in four (so that the task is learnable, not trivial).
fn batch(
    index: u64,
    vocab: usize,
    device: &burn::tensor::Device<AB>,
) -> (Tensor<AB, 2, Int>, Tensor<AB, 2, Int>) {
    let (b, t) = (8, 16);
    let v = vocab as u64;
    let mut rng = SplitMix64::new(1000 + index);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for _ in 0..b {
        let mut tok = rng.next_u64() % v;
        for _ in 0..t {
            let next = if rng.next_u64().is_multiple_of(4) {
                rng.next_u64() % v
            } else {
                (5 * tok + 3) % v
            };
            inputs.push(tok as u32);
            targets.push(next as u32);
            tok = next;
        }
    }
    (
        tokens_tensor(&inputs, b, t, device),
        tokens_tensor(&targets, b, t, device),
    )
}

/// Trains `trainer` on batches `first..first + steps`; returns the losses and the gradient
/// norms (before clipping).
fn train(trainer: &mut Trainer<AB>, first: u64, steps: u64, vocab: usize) -> Vec<(f64, f64)> {
    let device = *trainer.device();
    (first..first + steps)
        .map(|i| {
            let tensors = trainer
                .step(1, LR, |_| Ok::<_, ()>(batch(i, vocab, &device)))
                .unwrap();
            tensors.read()
        })
        .collect()
}

fn logits(model: &Gpt<AB>) -> Vec<f32> {
    let vocab = model.config().vocab_size as u64;
    let mut rng = SplitMix64::new(99);
    let ids: Vec<u32> = (0..32).map(|_| (rng.next_u64() % vocab) as u32).collect();
    model
        .valid()
        .forward(tokens_tensor(&ids, 2, 16, &Default::default()))
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

/// `max |b − a| / max |a|`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    diff / scale
}

/// How the wide model's optimizer starts in one arm of a case.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Start {
    /// The transferred state, as `hyperclone train --init-from` loads it.
    Transferred,
    /// The transferred moments and update count, every factor 1.
    WithoutFactors,
    /// The transferred state without its norm weights (step and ε factors kept).
    WithoutNormWeights,
    /// A fresh AdamW.
    Fresh,
}

struct Case {
    name: &'static str,
    config: GptConfig,
    width: usize,
    ffn: usize,
    optimizer: OptimizerConfig,
}

/// The small model's checkpoint after [`BEFORE`] steps, its expansion with the optimizer
/// state carried over, and the small trainer ready to go on.
fn prepare(case: &Case, dir: &Path) -> (Trainer<AB>, std::path::PathBuf) {
    let device: burn::tensor::Device<Flex> = Default::default();
    let small = Gpt::<AB>::init(&case.config, 3, &device).unwrap();
    let mut trainer = Trainer::new(small, AdamW::new(case.optimizer.clone()), device);
    train(&mut trainer, 0, BEFORE, case.config.vocab_size);
    let state = TrainState {
        step: BEFORE,
        tokens: 0,
        wall_s: 0.0,
        device_hours: 0.0,
        flops: 0.0,
        seed: 0,
        tokenizer_hash: String::new(),
        config_hash: String::new(),
        best_val: None,
        expanded: None,
    };
    let step_dir = save_checkpoint(
        &dir.join("small"),
        trainer.model(),
        trainer.optimizer(),
        &state,
    )
    .unwrap();
    let opts = ExpandOptions {
        width_factor: case.width,
        ffn_factor: case.ffn,
        variant: Variant::Symmetric,
        ..ExpandOptions::default()
    };
    let probe = ProbeSpec {
        tokens: None,
        batch: 2,
        seq: 16,
        tolerance: 1e-5,
        skip: false,
    };
    let out = dir.join("wide");
    expand_folder::<Flex>(&step_dir, &out, &opts, &probe, "cpu", &device).unwrap();
    let t = transfer_optimizer_state::<Flex>(&step_dir, &out, &device).unwrap();
    assert_eq!((t.updates, t.source_step), (BEFORE, BEFORE));
    (trainer, out)
}

/// The wide model of `out` with its optimizer started as `start`, trained [`AFTER`] steps
/// under `optimizer`; returns its logits and its losses and gradient norms.
fn run_wide(
    out: &Path,
    optimizer: &OptimizerConfig,
    start: Start,
    vocab: usize,
) -> (Vec<f32>, Vec<(f64, f64)>) {
    let device = Default::default();
    let model = trainable(Gpt::<AB>::from_inner(
        load_model::<Flex>(out, &device).unwrap(),
    ));
    let adamw = match start {
        Start::Fresh => AdamW::new(optimizer.clone()),
        Start::Transferred | Start::WithoutFactors | Start::WithoutNormWeights => {
            let mut state = AdamWState::read(&out.join(OPTIMIZER_FILE)).unwrap();
            for p in state.params.values_mut() {
                match start {
                    Start::WithoutFactors => p.scale = None,
                    Start::WithoutNormWeights => {
                        if let Some(s) = p.scale.as_mut() {
                            s.norm.clear();
                        }
                    }
                    _ => {}
                }
            }
            AdamW::from_state(optimizer.clone(), state, &device)
        }
    };
    // A carried state covers every parameter (a fresh one has no moments yet).
    adamw.check_model(&model, start != Start::Fresh).unwrap();
    let mut trainer = Trainer::new(model, adamw, device);
    let losses = train(&mut trainer, BEFORE, AFTER, vocab);
    (logits(trainer.model()), losses)
}

fn check(case: Case) {
    let tmp = tempfile::tempdir().unwrap();
    let vocab = case.config.vocab_size;
    let (mut small, out) = prepare(&case, tmp.path());
    let before = logits(small.model());
    let small_losses = train(&mut small, BEFORE, AFTER, vocab);
    let small_logits = logits(small.model());
    let moved = rel_err(&before, &small_logits);

    let (wide, wide_losses) = run_wide(&out, &case.optimizer, Start::Transferred, vocab);
    let err = rel_err(&small_logits, &wide);
    let clip = case.optimizer.grad_clip;
    let clipped = small_losses.iter().filter(|(_, norm)| *norm > clip).count();
    let (fresh, _) = run_wide(&out, &case.optimizer, Start::Fresh, vocab);
    let (no_factors, _) = run_wide(&out, &case.optimizer, Start::WithoutFactors, vocab);
    let (err_fresh, err_no_factors) = (
        rel_err(&small_logits, &fresh),
        rel_err(&small_logits, &no_factors),
    );
    eprintln!(
        "{}: after {AFTER} steps, relative logit error {err:.3e} (tolerance {TOLERANCE:.0e}); the small model moved {moved:.3e}; fresh optimizer {err_fresh:.3e}, moments without factors {err_no_factors:.3e}",
        case.name
    );
    if clip > 0.0 {
        // Clipping acted on most steps, and without the norm weights the wide model would
        // have measured another norm, clipped by another factor and left the small one.
        let (no_weights, _) = run_wide(&out, &case.optimizer, Start::WithoutNormWeights, vocab);
        let err_no_weights = rel_err(&small_logits, &no_weights);
        eprintln!(
            "{}: the clip ({clip}) acted on {clipped} of {AFTER} steps; without the norm weights {err_no_weights:.3e}",
            case.name
        );
        assert!(
            clipped >= AFTER as usize / 2,
            "{}: clipped {clipped}",
            case.name
        );
        assert!(
            err_no_weights > 10.0 * TOLERANCE,
            "{}: without norm weights {err_no_weights:.3e}",
            case.name
        );
    }
    assert!(
        err <= TOLERANCE,
        "{}: the wide model left the small one: relative logit error {err:.3e} after {AFTER} steps",
        case.name
    );
    for (step, ((s, gs), (w, gw))) in small_losses.iter().zip(&wide_losses).enumerate() {
        assert!(
            (s - w).abs() <= TOLERANCE * s.abs(),
            "{}: step {step}: loss {s} vs {w}",
            case.name
        );
        // The norm the wide model measures (and clips by) is the small model's.
        assert!(
            (gs - gw).abs() <= TOLERANCE * gs.abs(),
            "{}: step {step}: gradient norm {gs} vs {gw}",
            case.name
        );
    }
    // The test has teeth: training moved the logits by far more than the tolerance, and the
    // wrong optimizer states end far from the small model.
    assert!(
        moved > 100.0 * TOLERANCE,
        "{}: moved {moved:.3e}",
        case.name
    );
    assert!(
        err_fresh > 10.0 * TOLERANCE,
        "{}: fresh {err_fresh:.3e}",
        case.name
    );
    assert!(
        err_no_factors > 10.0 * TOLERANCE,
        "{}: without factors {err_no_factors:.3e}",
        case.name
    );

    // The file holds the factors (v2) and the small run's step as its origin.
    let state = AdamWState::read(&out.join(OPTIMIZER_FILE)).unwrap();
    assert_eq!(state.updates, BEFORE);
    assert_eq!(state.origin.as_ref().map(|o| o.step), Some(BEFORE));
    let bytes = std::fs::read(out.join(OPTIMIZER_FILE)).unwrap();
    assert!(
        String::from_utf8_lossy(&bytes[..4096.min(bytes.len())]).contains(FORMAT_V2),
        "format tag"
    );
}

fn optimizer(decay_all: bool) -> OptimizerConfig {
    OptimizerConfig {
        lr: LR,
        weight_decay: 0.1,
        decay_all,
        grad_clip: 0.0,
        ..OptimizerConfig::default()
    }
}

#[test]
fn gpt2_style_untied_stays_the_clone_for_10_steps() {
    check(Case {
        name: "GPT-2 style (LayerNorm, GELU, learned positions, biases, untied head), n 2, m 2",
        config: gpt2(false),
        width: 2,
        ffn: 2,
        optimizer: optimizer(false),
    });
}

#[test]
fn gpt2_style_tied_stays_the_clone_for_10_steps() {
    // Tied head: ln_f carries the head's 1/n (step ÷n, gradient undivided) and wte gets
    // 1/n of both of its gradients. Decay on every parameter, norms and embeddings too.
    check(Case {
        name: "GPT-2 style, tied head, decay on all parameters, n 2, m 2",
        config: gpt2(true),
        width: 2,
        ffn: 2,
        optimizer: optimizer(true),
    });
}

#[test]
fn llama_style_gqa_untied_stays_the_clone_for_10_steps() {
    check(Case {
        name: "Llama style (RMSNorm, SwiGLU, RoPE, GQA 4/2, untied head), n 2, m 2",
        config: llama(false, 2),
        width: 2,
        ffn: 2,
        optimizer: optimizer(false),
    });
}

#[test]
fn llama_style_mqa_tied_with_odd_factors_stays_the_clone_for_10_steps() {
    // MQA: the single KV head is not duplicated, so the fused projection's sections have
    // different gradient factors (per-column ε). Factors 3 and 2: not powers of two.
    check(Case {
        name: "Llama style, MQA 4/1, tied head, n 3, m 2",
        config: llama(true, 1),
        width: 3,
        ffn: 2,
        optimizer: optimizer(true),
    });
}

/// Gradient clipping acts on the global gradient norm; the wide model's raw norm is not the
/// small model's (it sums the squared gradients of every block), so the transferred state
/// weights each parameter's squares: the wide model measures the small model's norm, clips by
/// the same factor and stays the clone while the clip acts (on most steps here).
#[test]
fn gradient_clipping_keeps_the_clone_through_the_norm_weights() {
    check(Case {
        name: "GPT-2 style, grad_clip 0.05, n 2, m 2",
        config: gpt2(false),
        width: 2,
        ffn: 2,
        optimizer: OptimizerConfig {
            grad_clip: 0.05,
            ..optimizer(false)
        },
    });
}

/// The same with MQA, a tied head and odd factors: the fused projection's norm weights differ
/// between its sections.
#[test]
fn gradient_clipping_keeps_the_clone_with_mqa_and_a_tied_head() {
    check(Case {
        name: "Llama style, MQA 4/1, tied head, grad_clip 0.05, n 3, m 2",
        config: llama(true, 1),
        width: 3,
        ffn: 2,
        optimizer: OptimizerConfig {
            grad_clip: 0.05,
            ..optimizer(true)
        },
    });
}

/// A model folder (no optimizer state) cannot be transferred from: the error names it, and
/// the expanded folder is left as it was.
#[test]
fn a_folder_without_optimizer_state_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let device = Default::default();
    let weights = tmp.path().join("final");
    std::fs::create_dir_all(&weights).unwrap();
    save_model(
        &Gpt::<Flex>::init(&gpt2(false), 1, &device).unwrap(),
        &weights,
    )
    .unwrap();
    let out = tmp.path().join("wide");
    let probe = ProbeSpec {
        tokens: None,
        batch: 1,
        seq: 8,
        tolerance: 1e-5,
        skip: true,
    };
    expand_folder::<Flex>(
        &weights,
        &out,
        &ExpandOptions::default(),
        &probe,
        "cpu",
        &device,
    )
    .unwrap();
    let e = transfer_optimizer_state::<Flex>(&weights, &out, &device).unwrap_err();
    assert!(matches!(e, TransferError::NoOptimizerState { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&weights.display().to_string()) && msg.contains("optimizer.safetensors"),
        "{msg}"
    );
    assert!(!out.join(OPTIMIZER_FILE).exists());
    // And a folder that is not an expansion cannot receive one.
    let e = transfer_optimizer_state::<Flex>(&weights, &weights, &device).unwrap_err();
    assert!(matches!(e, TransferError::NotExpanded { .. }), "{e}");
}

/// A checkpoint whose weights are not those the folder was expanded from: its moments belong
/// to other weights, and the transfer is refused, naming both folders.
#[test]
fn a_state_of_other_weights_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let case = Case {
        name: "other weights",
        config: gpt2(false),
        width: 2,
        ffn: 2,
        optimizer: optimizer(false),
    };
    // `prepare` expands the checkpoint it writes; expand another model over its output.
    let (_, out) = prepare(&case, tmp.path());
    let step_dir = tmp.path().join("small").join("step-00000005");
    let device = Default::default();
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    save_model(
        &Gpt::<Flex>::init(&case.config, 77, &device).unwrap(),
        &other,
    )
    .unwrap();
    let probe = ProbeSpec {
        tokens: None,
        batch: 1,
        seq: 8,
        tolerance: 1e-5,
        skip: true,
    };
    let opts = ExpandOptions {
        variant: Variant::Symmetric,
        ..ExpandOptions::default()
    };
    expand_folder::<Flex>(&other, &out, &opts, &probe, "cpu", &device).unwrap();
    assert!(
        !out.join(OPTIMIZER_FILE).exists(),
        "the folder was rewritten"
    );
    let e = transfer_optimizer_state::<Flex>(&step_dir, &out, &device).unwrap_err();
    assert!(matches!(e, TransferError::OtherWeights { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&other.display().to_string()) && msg.contains(&step_dir.display().to_string()),
        "{msg}"
    );
    assert!(!out.join(OPTIMIZER_FILE).exists());
}
