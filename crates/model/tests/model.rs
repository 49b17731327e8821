//! End-to-end checks of the GPT model on the CPU backend (flex).

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::{Tensor, TensorData};
use hyperclone_model::{tokens_tensor, Gpt, GptConfig, MlpKind, NormKind, Positional};

type B = Flex;
type AB = Autodiff<Flex>;

fn small(
    positional: Positional,
    norm: NormKind,
    mlp: MlpKind,
    tied: bool,
    bias: bool,
    kv: usize,
) -> GptConfig {
    GptConfig {
        vocab_size: 37,
        context_length: 12,
        n_layer: 2,
        d_model: 24,
        n_head: 4,
        n_kv_head: Some(kv),
        d_ff: 40,
        positional,
        rope_theta: 10_000.0,
        norm,
        norm_eps: 1e-5,
        mlp,
        bias,
        tie_embeddings: tied,
        dropout: 0.0,
        init_std: 0.2, // large, so that every part of the network visibly moves the logits
    }
}

fn all_configs() -> Vec<GptConfig> {
    let mut out = Vec::new();
    for positional in [Positional::Learned, Positional::Rope] {
        for norm in [NormKind::LayerNorm, NormKind::RmsNorm] {
            for mlp in [MlpKind::Gelu, MlpKind::SwiGlu] {
                for tied in [false, true] {
                    for bias in [false, true] {
                        for kv in [4, 2, 1] {
                            out.push(small(positional, norm, mlp, tied, bias, kv));
                        }
                    }
                }
            }
        }
    }
    out
}

fn to_vec(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec().unwrap()
}

fn random_tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = hyperclone_model::SplitMix64::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

#[test]
fn every_architecture_has_right_shapes_causality_and_param_count() {
    let device = Default::default();
    let configs = all_configs();
    assert_eq!(configs.len(), 96);
    for config in configs {
        let model = Gpt::<B>::init(&config, 1, &device).unwrap();
        assert_eq!(
            model.num_params(),
            config.param_count(),
            "param count for {config:?}"
        );

        let (b, t, v) = (2, 10, config.vocab_size);
        let ids = random_tokens(b * t, v, 5);
        let logits = model.forward(tokens_tensor(&ids, b, t, &device));
        assert_eq!(logits.dims(), [b, t, v], "{config:?}");
        let before = to_vec(logits);

        // Change the token at position 6 of every row: logits before 6 must not move, and
        // the logits at 6 must (else the test proves nothing).
        let changed_pos = 6;
        let mut ids2 = ids.clone();
        for row in 0..b {
            let i = row * t + changed_pos;
            ids2[i] = (ids2[i] + 1) % v as u32;
        }
        let after = to_vec(model.forward(tokens_tensor(&ids2, b, t, &device)));
        for row in 0..b {
            for pos in 0..t {
                let s = (row * t + pos) * v;
                let diff = before[s..s + v]
                    .iter()
                    .zip(&after[s..s + v])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                if pos < changed_pos {
                    assert_eq!(diff, 0.0, "position {pos} saw the future: {config:?}");
                } else if pos == changed_pos {
                    assert!(diff > 1e-4, "position {pos} ignored its token: {config:?}");
                }
            }
        }
    }
}

/// Copies the GQA model's KV heads so each query head has its own copy: the MHA model must
/// then compute the same logits.
#[test]
fn gqa_equals_mha_with_repeated_kv_heads() {
    let device = Default::default();
    for positional in [Positional::Learned, Positional::Rope] {
        let gqa_cfg = small(
            positional,
            NormKind::RmsNorm,
            MlpKind::SwiGlu,
            false,
            true,
            2,
        );
        let mha_cfg = GptConfig {
            n_kv_head: Some(4),
            ..gqa_cfg.clone()
        };
        let gqa = Gpt::<B>::init(&gqa_cfg, 3, &device).unwrap();
        let mut mha = Gpt::<B>::init(&mha_cfg, 99, &device).unwrap();
        let (nh, nkv, hs) = (4usize, 2usize, gqa_cfg.head_dim());
        let group = nh / nkv;
        // Every parameter except c_attn has the same shape: copy through a record.
        let mut record = gqa.clone().into_record();
        for (layer, block) in record.h.iter_mut().enumerate() {
            let w = gqa.h[layer].attn.c_attn.weight.val(); // [d, (nh + 2·nkv)·hs]
            let bias = gqa.h[layer].attn.c_attn.bias.as_ref().unwrap().val(); // [(nh+2nkv)·hs]
            let d = w.dims()[0];
            let widen = |start: usize| -> Vec<usize> {
                // Columns of MHA k (or v) head h come from GQA kv head h / group.
                (0..nh)
                    .flat_map(|h| (0..hs).map(move |c| start + (h / group) * hs + c))
                    .collect()
            };
            let mut cols: Vec<usize> = (0..nh * hs).collect();
            cols.extend(widen(nh * hs));
            cols.extend(widen((nh + nkv) * hs));
            let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(
                TensorData::new(cols.iter().map(|&c| c as i64).collect(), [cols.len()]),
                &device,
            );
            let new_w = w.select(1, idx.clone());
            assert_eq!(new_w.dims(), [d, 3 * nh * hs]);
            block.attn.c_attn.weight = Param::from_tensor(new_w);
            block.attn.c_attn.bias = Some(Param::from_tensor(bias.select(0, idx)));
        }
        mha = mha.load_record(record);
        let ids = random_tokens(2 * 9, 37, 8);
        let a = to_vec(gqa.forward(tokens_tensor(&ids, 2, 9, &device)));
        let b = to_vec(mha.forward(tokens_tensor(&ids, 2, 9, &device)));
        let max = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-5, "{positional:?}: max |Δ| {max}");
    }
}

#[test]
fn same_seed_same_weights_different_seed_different_weights() {
    let device = Default::default();
    let c = GptConfig::cpu_tiny();
    let w = |seed| {
        Gpt::<B>::init(&c, seed, &device).unwrap().h[1]
            .mlp
            .c_fc
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap()
    };
    assert_eq!(w(4), w(4));
    assert_ne!(w(4), w(5));
}

#[test]
fn tiny_model_overfits_one_batch() {
    let device = Default::default();
    for config in [
        GptConfig::cpu_tiny(),
        GptConfig {
            vocab_size: 512,
            context_length: 64,
            ..GptConfig::llama_small()
        },
    ] {
        let config = GptConfig {
            n_layer: 2,
            d_model: 64,
            n_head: 4,
            n_kv_head: config.n_kv_head.map(|_| 2),
            d_ff: 128,
            ..config
        };
        let mut model = Gpt::<AB>::init(&config, 0, &device).unwrap();
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let (b, t) = (4, 32);
        let ids = random_tokens(b * (t + 1), config.vocab_size, 11);
        let inputs: Vec<u32> = (0..b)
            .flat_map(|r| ids[r * (t + 1)..r * (t + 1) + t].to_vec())
            .collect();
        let targets: Vec<u32> = (0..b)
            .flat_map(|r| ids[r * (t + 1) + 1..(r + 1) * (t + 1)].to_vec())
            .collect();
        let x = tokens_tensor::<AB>(&inputs, b, t, &device);
        let y = tokens_tensor::<AB>(&targets, b, t, &device);
        let mut first = None;
        let mut last = f32::MAX;
        for _ in 0..150 {
            let loss = model.forward_loss(x.clone(), y.clone());
            let value = loss.clone().into_scalar();
            first.get_or_insert(value);
            last = value;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, grads);
        }
        let first = first.unwrap();
        // Random tokens start near ln(512) ≈ 6.24; memorising 128 targets must reach < 10 %.
        assert!(first > 5.5, "initial loss {first}");
        assert!(
            last < 0.1 * first,
            "{:?}: loss {first} → {last}",
            config.mlp
        );
    }
}
