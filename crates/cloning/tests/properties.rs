//! Property tests over random small configurations: every architecture switch × n ∈ {2, 3, 4}
//! × m ∈ {1, 2, 3} × every variant. The expanded model must reproduce the source's logits in
//! f32 within 1e-5 relative, have the shapes and parameter count of the derived config,
//! survive save → load exactly, and be perfectly symmetric only after noiseless symmetric
//! cloning.

mod common;

use burn::backend::Flex;
use common::{all_archs, logits, random_config, random_model, tensors};
use hyperclone_cloning::plan::{parameters, rule, target_shape};
use hyperclone_cloning::{
    expand, expand_config, expand_record, factors_between, probe_tokens, save_expanded, symmetry,
    verify, ExpandOptions, Variant, DEFAULT_TOLERANCE_F32,
};
use hyperclone_model::checkpoint::{load_model, weights_to_bytes};
use hyperclone_model::{tokens_tensor, Gpt, GptConfig, SplitMix64};

type B = Flex;

#[test]
fn every_architecture_factor_and_variant_preserves_the_function() {
    let device = Default::default();
    let archs = all_archs();
    let mut triples = Vec::new();
    for variant in Variant::ALL {
        for m in [1, 2, 3] {
            for n in [2, 3, 4] {
                triples.push((n, m, variant));
            }
        }
    }
    let mut rng = SplitMix64::new(2024);
    let tmp = tempfile::tempdir().unwrap();
    let mut worst = std::collections::BTreeMap::<&str, f64>::new();
    // 576 cases: every one of the 36 (n, m, variant) triples 16 times, every one of the 96
    // architectures 6 times (37 is coprime with 96, so `c·37 mod 96` visits them all).
    for c in 0..576usize {
        let arch = archs[(c * 37 + 5) % archs.len()];
        let (n, m, variant) = triples[c % triples.len()];
        let config = random_config(arch, &mut rng);
        let case = format!("case {c}: {arch:?} n={n} m={m} {variant} {config:?}");
        let source = random_model::<B>(&config, c as u64, &device);
        let opts = ExpandOptions {
            width_factor: n,
            ffn_factor: m,
            variant,
            snr_db: 10.0,
            seed: c as u64,
            ..ExpandOptions::default()
        };
        let target = expand(&source, &opts).unwrap_or_else(|e| panic!("{case}: {e}"));

        // Config, parameter count and every shape follow the derived config.
        let derived = expand_config(&config, &opts).unwrap();
        assert_eq!(target.config(), &derived, "{case}");
        assert_eq!(
            factors_between(&config, &derived).unwrap(),
            (n, m),
            "{case}"
        );
        assert_eq!(target.num_params(), derived.param_count(), "{case}");
        assert_eq!(source.num_params(), config.param_count(), "{case}");
        assert_eq!(target.config().dropout, config.dropout, "{case}");
        assert_eq!(target.config().head_dim(), config.head_dim(), "{case}");
        let shapes = tensor_shapes(&target);
        let expected: Vec<(String, Vec<usize>)> = parameters(&config)
            .into_iter()
            .map(|(name, kind)| {
                let r = rule(kind, &config, n, m);
                (name, target_shape(kind, &config, &r))
            })
            .collect();
        assert_eq!(shapes, sorted(expected), "{case}");

        // Same logits.
        let (batch, seq) = (2, config.context_length);
        let ids = probe_tokens(config.vocab_size, batch, seq, c as u64);
        let v = verify(&source, &target, tokens_tensor(&ids, batch, seq, &device)).unwrap();
        assert!(v.within(DEFAULT_TOLERANCE_F32), "{case}: {v:?}");
        assert!(v.kl.abs() < 1e-9, "{case}: {v:?}");
        assert!(
            v.max_abs_source_logit > 0.1,
            "{case}: logits too small to test: {v:?}"
        );
        let w = worst.entry(variant.name()).or_default();
        *w = w.max(v.rel_err);

        // Round trip through the saved folder.
        let dir = tmp.path().join(format!("c{c}"));
        let record = expand_record(&opts, 0, 0, 0.0, Some(&v), Some(1e-5), "cpu".into(), None);
        save_expanded(&dir, &target, &record).unwrap();
        let loaded = load_model::<B>(&dir, &device).unwrap();
        assert_eq!(loaded.config(), target.config(), "{case}");
        assert_eq!(
            logits(&loaded, &ids, batch, seq),
            logits(&target, &ids, batch, seq),
            "{case}: saved model differs from the one in memory"
        );

        // Symmetry: exactly 1 after symmetric cloning, below 1 otherwise.
        let sym = symmetry(&target, n, m).unwrap();
        assert_eq!(sym.per_layer.len(), config.n_layer, "{case}");
        if variant == Variant::Symmetric {
            for (name, s) in &sym.per_weight {
                assert!((s - 1.0).abs() < 1e-12, "{case}: {name} symmetry {s}");
            }
        } else {
            assert!(sym.mean < 0.999, "{case}: {sym:?}");
        }
    }
    eprintln!("worst relative logit error per variant: {worst:?}");
}

fn sorted(mut v: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
    v.sort();
    v
}

/// Names and shapes of every tensor the model saves (GPT-2 names, as in the checkpoint).
fn tensor_shapes(model: &Gpt<B>) -> Vec<(String, Vec<usize>)> {
    let out = tensors(&weights_to_bytes(model).unwrap())
        .into_iter()
        .map(|(name, (shape, _))| (name, shape))
        .collect();
    sorted(out)
}

#[test]
fn symmetric_expansion_of_the_same_source_is_deterministic_and_noise_is_seeded() {
    let device = Default::default();
    let config = random_config(all_archs()[45], &mut SplitMix64::new(9));
    let source = random_model::<B>(&config, 1, &device);
    let bytes =
        |opts: &ExpandOptions| tensors(&weights_to_bytes(&expand(&source, opts).unwrap()).unwrap());
    let noisy = ExpandOptions {
        variant: Variant::NoisyDiagonal,
        seed: 7,
        ..Default::default()
    };
    assert_eq!(
        bytes(&ExpandOptions::default()),
        bytes(&ExpandOptions::default())
    );
    assert_eq!(bytes(&noisy), bytes(&noisy));
    assert_ne!(
        bytes(&noisy),
        bytes(&ExpandOptions {
            seed: 8,
            ..noisy.clone()
        })
    );
}

#[test]
fn low_snr_noise_still_cancels_within_tolerance_on_small_models() {
    // 0 dB: noise as strong as the signal. The f32 rounding error grows with the noise, so
    // this documents where the default tolerance stops holding.
    let device = Default::default();
    let config = random_config(all_archs()[20], &mut SplitMix64::new(3));
    let source = random_model::<B>(&config, 2, &device);
    let ids = probe_tokens(config.vocab_size, 2, 8, 0);
    for snr_db in [10.0, 0.0] {
        for variant in [Variant::NoisySymmetric, Variant::NoisyDiagonal] {
            let opts = ExpandOptions {
                width_factor: 4,
                ffn_factor: 3,
                variant,
                snr_db,
                seed: 1,
                ..ExpandOptions::default()
            };
            let target = expand(&source, &opts).unwrap();
            let v = verify(&source, &target, tokens_tensor(&ids, 2, 8, &device)).unwrap();
            eprintln!("{variant} snr {snr_db} dB: rel_err {:.3e}", v.rel_err);
            assert!(
                v.within(DEFAULT_TOLERANCE_F32),
                "{variant} {snr_db} dB: {v:?}"
            );
        }
    }
}

#[test]
fn presets_with_their_own_initialisation_expand_within_tolerance() {
    // Realistic scales: init_std 0.02 weights, γ = 1, zero biases (the fresh-model case).
    let device = Default::default();
    let llama = GptConfig {
        vocab_size: 512,
        context_length: 32,
        n_layer: 2,
        d_model: 64,
        d_ff: 96,
        ..GptConfig::llama_small()
    };
    for config in [GptConfig::cpu_tiny(), llama] {
        let source = Gpt::<B>::init(&config, 5, &device).unwrap();
        let ids = probe_tokens(config.vocab_size, 2, 32, 1);
        for variant in Variant::ALL {
            let opts = ExpandOptions {
                variant,
                ..Default::default()
            };
            let target = expand(&source, &opts).unwrap();
            let v = verify(&source, &target, tokens_tensor(&ids, 2, 32, &device)).unwrap();
            eprintln!("{:?} {variant}: rel_err {:.3e}", config.mlp, v.rel_err);
            assert!(v.within(DEFAULT_TOLERANCE_F32), "{variant}: {v:?}");
        }
    }
}
