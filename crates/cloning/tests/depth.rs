//! Depth growth over random small configurations of every architecture switch (GPT-2 and
//! Llama style: RoPE, RMSNorm, SwiGLU, biases, tying, MHA/GQA/MQA): `zero` growth alone and with
//! width growth, in both orders and both placements, reproduces the source's logits within
//! 1e-5 relative; `stack` repeats the blocks exactly and is reported, not refused; the new
//! blocks learn; every grown model survives save → load exactly.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use common::{all_archs, logits, random_config, random_model, tensors};
use hyperclone_cloning::{
    depth_layout, expand, expand_config, expand_record, probe_tokens, save_expanded, verify,
    BlockOrigin, DepthMode, DepthPlacement, ExpandOptions, GrowthOrder, Variant,
    DEFAULT_TOLERANCE_F32,
};
use hyperclone_model::checkpoint::{load_model, weights_to_bytes};
use hyperclone_model::{tokens_tensor, Gpt, SplitMix64};

type B = Flex;

/// The saved tensors of `model` by name (shape and bytes).
fn saved(model: &Gpt<B>) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    tensors(&weights_to_bytes(model).unwrap())
}

#[test]
fn zero_depth_growth_alone_and_with_width_preserves_the_function_on_every_architecture() {
    let device = Default::default();
    let archs = all_archs();
    let mut rng = SplitMix64::new(77);
    let tmp = tempfile::tempdir().unwrap();
    let mut worst = 0f64;
    // 192 cases: every architecture twice, cycling through factors, placements, orders and
    // variants.
    for c in 0..192usize {
        let arch = archs[(c * 37 + 11) % archs.len()];
        let config = random_config(arch, &mut rng);
        let (n, m) = [(1, 1), (2, 2), (2, 1), (3, 2)][c % 4];
        let k = [2, 3][(c / 4) % 2];
        let placement = [DepthPlacement::Interleave, DepthPlacement::Top][(c / 8) % 2];
        let order = [GrowthOrder::WidthFirst, GrowthOrder::DepthFirst][(c / 16) % 2];
        let variant = Variant::ALL[(c / 32) % 4];
        let opts = ExpandOptions {
            width_factor: n,
            ffn_factor: m,
            variant,
            seed: c as u64,
            depth_factor: k,
            depth_mode: DepthMode::Zero,
            depth_placement: placement,
            order,
            ..ExpandOptions::default()
        };
        let case = format!("case {c}: {arch:?} n={n} m={m} K={k} {placement} {order} {variant}");
        let source = random_model::<B>(&config, c as u64, &device);
        let target = expand(&source, &opts).unwrap_or_else(|e| panic!("{case}: {e}"));

        let derived = expand_config(&config, &opts).unwrap();
        assert_eq!(derived.n_layer, config.n_layer * k, "{case}");
        assert_eq!(target.config(), &derived, "{case}");
        assert_eq!(target.h.len(), derived.n_layer, "{case}");
        assert_eq!(target.num_params(), derived.param_count(), "{case}");

        let (batch, seq) = (2, config.context_length);
        let ids = probe_tokens(config.vocab_size, batch, seq, c as u64);
        let v = verify(&source, &target, tokens_tensor(&ids, batch, seq, &device)).unwrap();
        assert!(v.within(DEFAULT_TOLERANCE_F32), "{case}: {v:?}");
        assert!(v.max_abs_source_logit > 0.1, "{case}: {v:?}");
        worst = worst.max(v.rel_err);

        // The new blocks are where the layout says, with zero output projections and random
        // (non-zero) input projections.
        for (l, origin) in depth_layout(config.n_layer, &opts).iter().enumerate() {
            let block = &target.h[l];
            let max_abs = |t: Tensor<B, 2>| t.abs().max().into_scalar();
            if *origin == BlockOrigin::New {
                assert_eq!(
                    max_abs(block.attn.c_proj.weight.val()),
                    0.0,
                    "{case}: h.{l}"
                );
                assert_eq!(max_abs(block.mlp.c_proj.weight.val()), 0.0, "{case}: h.{l}");
                assert!(
                    max_abs(block.attn.c_attn.weight.val()) > 0.0,
                    "{case}: h.{l}"
                );
                assert!(max_abs(block.mlp.c_fc.weight.val()) > 0.0, "{case}: h.{l}");
            } else {
                assert!(
                    max_abs(block.attn.c_proj.weight.val()) > 0.0,
                    "{case}: h.{l}"
                );
            }
        }

        // Round trip through the saved folder.
        let dir = tmp.path().join(format!("c{c}"));
        let record = expand_record(&opts, 0, 0, 0.0, Some(&v), Some(1e-5), "cpu".into(), None);
        assert_eq!(record.depth_factor, Some(k as u32), "{case}");
        assert_eq!(record.function_preserving, None, "{case}");
        save_expanded(&dir, &target, &record).unwrap();
        let loaded = load_model::<B>(&dir, &device).unwrap();
        assert_eq!(loaded.config(), target.config(), "{case}");
        assert_eq!(
            logits(&loaded, &ids, batch, seq),
            logits(&target, &ids, batch, seq),
            "{case}: saved model differs from the one in memory"
        );
    }
    eprintln!("worst relative logit error of zero depth growth: {worst:.3e}");
}

#[test]
fn new_blocks_are_seeded_and_independent_of_the_order_of_other_blocks() {
    let device = Default::default();
    let config = random_config(all_archs()[45], &mut SplitMix64::new(9));
    let source = random_model::<B>(&config, 1, &device);
    let opts = ExpandOptions {
        depth_factor: 2,
        seed: 7,
        ..ExpandOptions::default()
    };
    let a = saved(&expand(&source, &opts).unwrap());
    assert_eq!(a, saved(&expand(&source, &opts).unwrap()), "same seed");
    let other = saved(
        &expand(
            &source,
            &ExpandOptions {
                seed: 8,
                ..opts.clone()
            },
        )
        .unwrap(),
    );
    assert_ne!(a, other, "another seed draws other new blocks");
    // The source's blocks are the same under either seed (the noise-free variant).
    let first = "h.0.attn.c_attn.weight";
    assert_eq!(a[first], other[first]);
}

#[test]
fn stack_repeats_the_blocks_and_changes_the_function_which_is_measured() {
    let device = Default::default();
    for (i, arch) in [all_archs()[0], all_archs()[31], all_archs()[95]]
        .into_iter()
        .enumerate()
    {
        let config = random_config(arch, &mut SplitMix64::new(i as u64));
        let source = random_model::<B>(&config, i as u64, &device);
        for (n, order) in [
            (1, GrowthOrder::WidthFirst),
            (2, GrowthOrder::WidthFirst),
            (2, GrowthOrder::DepthFirst),
        ] {
            let opts = ExpandOptions {
                width_factor: n,
                ffn_factor: n,
                depth_factor: 2,
                depth_mode: DepthMode::Stack,
                order,
                ..ExpandOptions::default()
            };
            let case = format!("{arch:?} n={n} {order}");
            assert!(!opts.is_function_preserving());
            let target = expand(&source, &opts).unwrap();
            let l = config.n_layer;
            assert_eq!(target.h.len(), 2 * l, "{case}");
            // Block l + r·L holds exactly block l's values (symmetric cloning commutes with
            // the stacking).
            let saved = saved(&target);
            for (name, value) in &saved {
                if let Some(rest) = name.strip_prefix("h.") {
                    let (index, field) = rest.split_once('.').unwrap();
                    let index: usize = index.parse().unwrap();
                    let original = format!("h.{}.{field}", index % l);
                    assert_eq!(value, &saved[&original], "{case}: {name} vs {original}");
                }
            }
            // Each copy is a separate parameter (an optimizer keyed by id must see 2L blocks).
            let ids: std::collections::BTreeSet<_> = target
                .h
                .iter()
                .map(|b| b.attn.c_attn.weight.id.to_string())
                .collect();
            assert_eq!(ids.len(), 2 * l, "{case}");
            let ids = probe_tokens(config.vocab_size, 2, config.context_length, 3);
            let v = verify(
                &source,
                &target,
                tokens_tensor(&ids, 2, config.context_length, &device),
            )
            .unwrap();
            assert!(v.kl > 1e-6 && v.rel_err > 1e-3, "{case}: {v:?}");
            let record = expand_record(&opts, 0, 0, 0.0, Some(&v), Some(1e-5), "cpu".into(), None);
            assert_eq!(record.function_preserving, Some(false));
            assert_eq!(record.tolerance, None, "a stack is not held to a tolerance");
            assert_eq!(record.kl, Some(v.kl));
        }
    }
}

#[test]
fn new_zero_blocks_learn_their_output_projections_first() {
    type A = Autodiff<Flex>;
    let device = Default::default();
    let config = random_config(all_archs()[7], &mut SplitMix64::new(4));
    let source = random_model::<A>(&config, 4, &device);
    let opts = ExpandOptions {
        depth_factor: 2,
        depth_placement: DepthPlacement::Top,
        ..ExpandOptions::default()
    };
    let target = expand(&source, &opts).unwrap();
    let new = &target.h[config.n_layer];
    let seq = config.context_length;
    let ids = probe_tokens(config.vocab_size, 2, seq + 1, 5);
    let (x, y): (Vec<u32>, Vec<u32>) = (0..2)
        .flat_map(|r| (0..seq).map(move |t| (r, t)))
        .map(|(r, t)| (ids[r * (seq + 1) + t], ids[r * (seq + 1) + t + 1]))
        .unzip();
    let loss = Gpt::loss(
        target.forward(tokens_tensor(&x, 2, seq, &device)),
        tokens_tensor(&y, 2, seq, &device),
    );
    let grads = loss.backward();
    let norm = |t: Option<Tensor<Flex, 2>>| t.unwrap().abs().max().into_scalar();
    // The zero projections get a gradient (their input activations are not zero)…
    assert!(norm(new.attn.c_proj.weight.grad(&grads)) > 0.0);
    assert!(norm(new.mlp.c_proj.weight.grad(&grads)) > 0.0);
    // …while what lies behind them gets none until they have moved.
    assert_eq!(norm(new.attn.c_attn.weight.grad(&grads)), 0.0);
    assert_eq!(norm(new.mlp.c_fc.weight.grad(&grads)), 0.0);
    // The source's blocks train as before.
    assert!(norm(target.h[0].attn.c_attn.weight.grad(&grads)) > 0.0);
}

#[test]
fn bad_depth_options_are_refused_with_the_key() {
    let e = ExpandOptions {
        depth_factor: 0,
        ..ExpandOptions::default()
    }
    .validate()
    .unwrap_err()
    .to_string();
    assert!(e.contains("depth_factor"), "{e}");
    let e = "sideways".parse::<DepthMode>().unwrap_err().to_string();
    assert!(
        e.contains("depth_mode") && e.contains("sideways") && e.contains("stack"),
        "{e}"
    );
    let e = "middle".parse::<DepthPlacement>().unwrap_err().to_string();
    assert!(
        e.contains("depth_placement") && e.contains("interleave"),
        "{e}"
    );
    let e = "both".parse::<GrowthOrder>().unwrap_err().to_string();
    assert!(e.contains("order") && e.contains("depth-first"), "{e}");
    let json_err = serde_json::from_str::<ExpandOptions>(r#"{"depth_mode": "sideways"}"#)
        .unwrap_err()
        .to_string();
    assert!(json_err.contains("sideways"), "{json_err}");
}

#[test]
fn width_only_options_serialise_as_before() {
    // Experiment stage hashes hash the serialised `[expand]`: the depth keys must not appear
    // at their defaults.
    let text = serde_json::to_string(&ExpandOptions::default()).unwrap();
    assert!(!text.contains("depth") && !text.contains("order"), "{text}");
    let deep = ExpandOptions {
        depth_factor: 2,
        ..ExpandOptions::default()
    };
    let text = serde_json::to_string(&deep).unwrap();
    assert!(text.contains(r#""depth_factor":2"#), "{text}");
    assert_eq!(serde_json::from_str::<ExpandOptions>(&text).unwrap(), deep);
}

#[test]
fn the_optimizer_state_is_not_carried_through_depth_growth() {
    let config = random_config(all_archs()[3], &mut SplitMix64::new(1));
    let opts = ExpandOptions {
        depth_factor: 2,
        ..ExpandOptions::default()
    };
    let e = hyperclone_cloning::expand_adam_state::<B>(&config, &opts, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("depth_factor = 2") && e.contains("fresh"), "{e}");
}
