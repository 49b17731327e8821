//! Shared helpers of the end-to-end tests: a seeded generator of small configurations that
//! covers every architecture switch, and a mapper that fills every parameter with noise (so
//! that biases and norm parameters are not the trivial 0 and 1 of a fresh init).

#![allow(dead_code)]

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use hyperclone_model::{Gpt, GptConfig, MlpKind, NormKind, Positional, SplitMix64};

/// Attention layout of a generated config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attn {
    /// As many KV heads as query heads.
    Mha,
    /// Fewer KV heads than query heads, more than one.
    Gqa,
    /// One KV head shared by several query heads.
    Mqa,
}

/// One combination of the architecture switches.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    pub rope: bool,
    pub rms: bool,
    pub swiglu: bool,
    pub bias: bool,
    pub tied: bool,
    pub attn: Attn,
}

/// All 96 combinations of the switches.
pub fn all_archs() -> Vec<Arch> {
    let mut out = Vec::new();
    for c in 0..96usize {
        out.push(Arch {
            rope: c & 1 != 0,
            rms: c & 2 != 0,
            swiglu: c & 4 != 0,
            bias: c & 8 != 0,
            tied: c & 16 != 0,
            attn: [Attn::Mha, Attn::Gqa, Attn::Mqa][c / 32],
        });
    }
    out
}

fn pick(rng: &mut SplitMix64, choices: &[usize]) -> usize {
    choices[(rng.next_u64() % choices.len() as u64) as usize]
}

/// A small random config with the given switches.
pub fn random_config(arch: Arch, rng: &mut SplitMix64) -> GptConfig {
    // head_dim ≥ 4: a LayerNorm over 1 to 3 channels is so ill-conditioned that the f32
    // rounding of any two summation orders differs by more than 1e-5 (measured: up to 1e-3
    // at d_model = 2 even for the bit-exact symmetric variant).
    let head_dim = if arch.rope {
        pick(rng, &[4, 6, 8])
    } else {
        pick(rng, &[4, 5, 8])
    };
    let (n_head, n_kv_head) = match arch.attn {
        Attn::Mha => {
            let h = pick(rng, &[1, 2, 3]);
            (
                h,
                if rng.next_u64().is_multiple_of(2) {
                    None
                } else {
                    Some(h)
                },
            )
        }
        Attn::Gqa => {
            let (h, k) = [(4, 2), (6, 2), (6, 3)][pick(rng, &[0, 1, 2])];
            (h, Some(k))
        }
        Attn::Mqa => (pick(rng, &[2, 3, 4]), Some(1)),
    };
    GptConfig {
        vocab_size: pick(rng, &[11, 23, 40]),
        context_length: pick(rng, &[8, 12]),
        n_layer: pick(rng, &[1, 2]),
        d_model: n_head * head_dim,
        n_head,
        n_kv_head,
        d_ff: pick(rng, &[3, 8, 13]),
        positional: if arch.rope {
            Positional::Rope
        } else {
            Positional::Learned
        },
        rope_theta: 10_000.0,
        norm: if arch.rms {
            NormKind::RmsNorm
        } else {
            NormKind::LayerNorm
        },
        norm_eps: 1e-5,
        mlp: if arch.swiglu {
            MlpKind::SwiGlu
        } else {
            MlpKind::Gelu
        },
        bias: arch.bias,
        tie_embeddings: arch.tied,
        dropout: [0.0, 0.1][pick(rng, &[0, 1])],
        init_std: 0.02,
    }
}

/// Replaces every float parameter with N(0, std²) noise from a seeded host generator.
pub struct Randomize {
    pub rng: SplitMix64,
    pub std: f64,
}

impl<B: Backend> ModuleMapper<B> for Randomize {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let shape = tensor.shape();
        let n = shape.num_elements();
        let data = TensorData::new(self.rng.normal_vec(n, self.std), shape);
        let value = Tensor::from_data(data, &tensor.device());
        Param::from_mapped_value(id, value, mapper)
    }
}

/// A model of `config` with every parameter random (std 0.5), biases and norms included.
pub fn random_model<B: Backend>(config: &GptConfig, seed: u64, device: &B::Device) -> Gpt<B> {
    let model = Gpt::<B>::init(config, seed, device).unwrap();
    model.map(&mut Randomize {
        rng: SplitMix64::derive(seed, "test-params"),
        std: 0.5,
    })
}

/// Every tensor of a safetensors buffer by name: shape and raw bytes (the header's key order
/// is not stable across runs, so buffers are compared through this).
pub fn tensors(bytes: &[u8]) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<u8>)> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data = &bytes[8 + header_len..];
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let off = v["data_offsets"].as_array().unwrap();
            let (a, b) = (
                off[0].as_u64().unwrap() as usize,
                off[1].as_u64().unwrap() as usize,
            );
            (k, (shape, data[a..b].to_vec()))
        })
        .collect()
}

/// Logits of `model` on `ids` (`[batch, seq]`) as a host vector.
pub fn logits<B: hyperclone_model::GptBackend>(
    model: &Gpt<B>,
    ids: &[u32],
    batch: usize,
    seq: usize,
) -> Vec<f32> {
    let device = model.wte.weight.val().device();
    model
        .forward(hyperclone_model::tokens_tensor(ids, batch, seq, &device))
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()
}
