//! The GPT decoder, readable top to bottom: embeddings → blocks (attention, MLP) → head.
//!
//! Parameter names follow GPT-2 / Hugging Face: `wte`, `wpe`, `h.N.{ln_1, attn.c_attn,
//! attn.c_proj, ln_2, mlp.c_fc, mlp.c_gate, mlp.c_proj}`, `ln_f`, `lm_head`; norms hold
//! `weight`/`bias`. Linear weights are stored `[d_in, d_out]` (burn's layout, the same as GPT-2's
//! Conv1D), so `y = x · W + b`.
//!
//! Mixed precision ([`Kernels::compute_dtype`], set with [`Gpt::with_kernels`]; PyTorch-autocast
//! style): the parameters, the residual stream, the norms and the logits fed to the loss stay in
//! the parameters' dtype (f32); each attention and MLP sub-block and the head cast their input and weights to the compute
//! dtype (bf16) and cast their output back. Gradients flow back through the casts, so the
//! optimiser sees f32 gradients of f32 master weights.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, Linear};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::{FloatDType, Int, Tensor, TensorData, TensorPrimitive};

use crate::config::{ConfigError, GptConfig, MlpKind, NormKind, Positional};
use crate::kernels::Kernels;
use crate::ops::attention::causal_options;
use crate::ops::cross_entropy::{composed_cross_entropy, CrossEntropyKernel};
use crate::ops::layer_ops::LayerOpsKernel;
use crate::ops::{cast_to, float_tensor, GptBackend};
use crate::rng::SplitMix64;

/// `x` in the compute dtype of mixed precision, or unchanged without one.
fn to_compute<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    compute: Option<FloatDType>,
) -> Tensor<B, D> {
    match compute {
        Some(dtype) => cast_to(x, dtype.into()),
        None => x,
    }
}

/// `x · W + b` in `x`'s dtype: under mixed precision the f32 weights are cast to bf16 here, and
/// the gradient of the cast brings their gradient back to f32.
///
/// # Shapes
/// `x: [B, T, d_in]` → `[B, T, d_out]`
fn project<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let weight = cast_to(layer.weight.val(), dtype);
    let bias = layer.bias.as_ref().map(|b| cast_to(b.val(), dtype));
    burn::tensor::module::linear(x, weight, bias)
}

// ---------------------------------------------------------------------------------------------
// Norm

/// LayerNorm or RMSNorm over the last dimension, with HF parameter names `weight` and `bias`.
#[derive(Module, Debug)]
pub struct Norm<B: Backend> {
    /// Scale γ, `[d]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Shift β, `[d]` (LayerNorm with `bias = true` only).
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    kind: NormKind,
    #[module(skip)]
    eps: f64,
}

impl<B: Backend> Norm<B> {
    /// γ = 1, β = 0.
    pub fn init(config: &GptConfig, width: usize, device: &B::Device) -> Self {
        let has_bias = config.bias && config.norm == NormKind::LayerNorm;
        Self {
            weight: Param::from_tensor(Tensor::ones([width], device)),
            bias: has_bias.then(|| Param::from_tensor(Tensor::zeros([width], device))),
            kind: config.norm,
            eps: config.norm_eps,
        }
    }
}

impl<B: GptBackend> Norm<B> {
    /// Normalises over the last dimension, as one operation ([`GptBackend::fused_norm`]) or
    /// composed of burn's ops.
    ///
    /// # Shapes
    /// `[B, T, d]` → `[B, T, d]`
    pub fn forward(&self, x: Tensor<B, 3>, kernel: LayerOpsKernel) -> Tensor<B, 3> {
        if kernel == LayerOpsKernel::Fused {
            let [b, t, d] = x.dims();
            let y = B::fused_norm(
                x.reshape([b * t, d]).into_primitive().tensor(), // [B·T, d]
                self.weight.val().into_primitive().tensor(),
                self.bias
                    .as_ref()
                    .map(|b| b.val().into_primitive().tensor()),
                self.eps,
                self.kind == NormKind::LayerNorm,
            );
            return float_tensor::<B, 2>(y).reshape([b, t, d]); // [B, T, d]
        }
        match self.kind {
            NormKind::LayerNorm => {
                // burn's layer_norm op: backends may fuse it.
                let out = B::layer_norm(
                    x.into_primitive().tensor(),
                    self.weight.val().into_primitive().tensor(),
                    self.bias
                        .as_ref()
                        .map(|b| b.val().into_primitive().tensor()),
                    self.eps,
                );
                Tensor::from_primitive(TensorPrimitive::Float(out))
            }
            NormKind::RmsNorm => {
                let rms = (x.clone().square().mean_dim(2) + self.eps).sqrt(); // [B, T, 1]
                x / rms * self.weight.val().unsqueeze::<3>()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

/// Cosine and sine tables for rotary embeddings, `[T, head_dim]` each (rotate-half layout:
/// channel i and i + head_dim/2 form a pair and share a frequency).
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `0..seq_len`; frequencies `theta^(-2i/head_dim)`.
    pub fn new(seq_len: usize, head_dim: usize, theta: f64, device: &B::Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for t in 0..seq_len {
            // Computed in f64 on the host: identical tables on every backend.
            let angles: Vec<f64> = (0..half)
                .map(|i| t as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64))
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos() as f32));
                sin.extend(angles.iter().map(|a| a.sin() as f32));
            }
        }
        let shape = [seq_len, head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
        }
    }

    /// Rotates `x` by position: `x·cos + rotate_half(x)·sin`, with
    /// `rotate_half([x1, x2]) = [-x2, x1]`.
    ///
    /// # Shapes
    /// `[B, H, T, hs]` → `[B, H, T, hs]`
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, _, _, hs] = x.dims();
        let half = hs / 2;
        let x1 = x.clone().narrow(3, 0, half);
        let x2 = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        let dtype = x.dtype(); // the tables are f32; q and k may be bf16 (mixed precision)
        let cos = cast_to(self.cos.clone(), dtype).unsqueeze::<4>(); // [1, 1, T, hs]
        let sin = cast_to(self.sin.clone(), dtype).unsqueeze::<4>();
        x * cos + rotated * sin
    }
}

/// Causal self-attention with a fused `[q | k | v]` projection and grouped KV heads.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d_model, (n_head + 2·n_kv_head)·head_dim]`; output columns are q heads, then k heads,
    /// then v heads, each head's `head_dim` channels contiguous.
    pub c_attn: Linear<B>,
    /// Output projection `[d_model, d_model]`.
    pub c_proj: Linear<B>,
    #[module(skip)]
    n_head: usize,
    #[module(skip)]
    n_kv_head: usize,
    #[module(skip)]
    head_dim: usize,
}

impl<B: GptBackend> Attention<B> {
    /// Runs in `kernels.compute_dtype` (mixed precision) when given, with `kernels.attention`,
    /// and returns `x`'s dtype.
    ///
    /// # Shapes
    /// `x: [B, T, d_model]` → `[B, T, d_model]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&RopeTables<B>>,
        kernels: Kernels,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (nh, nkv, hs) = (self.n_head, self.n_kv_head, self.head_dim);
        let residual_dtype = x.dtype();
        let qkv = project(&self.c_attn, to_compute(x, kernels.compute_dtype)); // [B, T, (nh + 2·nkv)·hs]
        let q = qkv.clone().narrow(2, 0, nh * hs).reshape([b, t, nh, hs]); // [B, T, nh, hs]
        let k = qkv
            .clone()
            .narrow(2, nh * hs, nkv * hs)
            .reshape([b, t, nkv, hs]); // [B, T, nkv, hs]
        let v = qkv
            .narrow(2, (nh + nkv) * hs, nkv * hs)
            .reshape([b, t, nkv, hs]); // [B, T, nkv, hs]
        let q = q.swap_dims(1, 2); // [B, nh, T, hs]
        let k = k.swap_dims(1, 2); // [B, nkv, T, hs]
        let v = v.swap_dims(1, 2); // [B, nkv, T, hs]
        let (q, k) = match rope {
            Some(r) => (r.apply(q), r.apply(k)),
            None => (q, k),
        };
        // GQA: query head h reads KV head h / (nh / nkv), so each KV head is repeated for its
        // group of consecutive query heads.
        let (k, v) = if nkv == nh {
            (k, v)
        } else {
            let group = nh / nkv;
            let repeat = |x: Tensor<B, 4>| {
                x.unsqueeze_dim::<5>(2) // [B, nkv, 1, T, hs]
                    .expand([b, nkv, group, t, hs]) // [B, nkv, group, T, hs]
                    .reshape([b, nh, t, hs]) // [B, nh, T, hs]
            };
            (repeat(k), repeat(v))
        };
        // Fused: one autodiff op whose backward recomputes the attention matrix (ops/attention.rs);
        // composed: burn's attention, differentiated op by op, keeping its [B, nh, T, T] inputs.
        let y = if kernels.attention.is_fused() {
            let y = B::causal_attention(
                q.into_primitive().tensor(),
                k.into_primitive().tensor(),
                v.into_primitive().tensor(),
            );
            Tensor::from_primitive(TensorPrimitive::Float(y))
        } else {
            attention(q, k, v, None, None, causal_options())
        }; // [B, nh, T, hs]
        let y = y.swap_dims(1, 2).reshape([b, t, nh * hs]); // [B, T, d_model]
        cast_to(project(&self.c_proj, y), residual_dtype)
    }
}

// ---------------------------------------------------------------------------------------------
// MLP

/// √(2/π), the tanh-GELU constant.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// The tanh approximation of GELU (GPT-2's), `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`,
/// computed as the identical `x·σ(2·√(2/π)·x·(1 + 0.044715·x²))` (since
/// `(1 + tanh(u))/2 = σ(2u)`): one fused sigmoid (with its own backward) replaces tanh and the
/// cubic `powf`, the two costliest elementwise ops of a CPU training step.
pub(crate) fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let a = 2.0 * SQRT_2_OVER_PI;
    let u = (x.clone() * x.clone() * (a * 0.044_715) + a) * x.clone(); // 2·√(2/π)·(x + 0.044715·x³)
    x * sigmoid(u)
}

/// The feed-forward block: GELU (`c_fc` → gelu → `c_proj`) or SwiGLU
/// (`silu(c_gate) * c_fc` → `c_proj`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Up projection `[d_model, d_ff]`.
    pub c_fc: Linear<B>,
    /// Gate projection `[d_model, d_ff]` (SwiGLU only).
    pub c_gate: Option<Linear<B>>,
    /// Down projection `[d_ff, d_model]`.
    pub c_proj: Linear<B>,
}

impl<B: GptBackend> Mlp<B> {
    /// Runs in `kernels.compute_dtype` (mixed precision) when given, its GELU with
    /// `kernels.layer_ops`, and returns `x`'s dtype.
    ///
    /// # Shapes
    /// `[B, T, d_model]` → `[B, T, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>, kernels: Kernels) -> Tensor<B, 3> {
        let residual_dtype = x.dtype();
        let x = to_compute(x, kernels.compute_dtype);
        let hidden = match &self.c_gate {
            None if kernels.layer_ops == LayerOpsKernel::Fused => float_tensor(B::fused_gelu_tanh(
                project(&self.c_fc, x).into_primitive().tensor(),
            )),
            None => gelu_tanh(project(&self.c_fc, x)),
            Some(gate) => silu(project(gate, x.clone())) * project(&self.c_fc, x),
        }; // [B, T, d_ff]
        cast_to(project(&self.c_proj, hidden), residual_dtype)
    }
}

// ---------------------------------------------------------------------------------------------
// Block and model

/// A pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub ln_1: Norm<B>,
    /// Causal self-attention.
    pub attn: Attention<B>,
    /// Norm before the MLP.
    pub ln_2: Norm<B>,
    /// Feed-forward block.
    pub mlp: Mlp<B>,
    drop: Dropout,
}

impl<B: GptBackend> Block<B> {
    /// # Shapes
    /// `[B, T, d_model]` → `[B, T, d_model]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: Option<&RopeTables<B>>,
        kernels: Kernels,
    ) -> Tensor<B, 3> {
        let attn = self.attn.forward(
            self.ln_1.forward(x.clone(), kernels.layer_ops),
            rope,
            kernels,
        );
        let x = x + self.drop.forward(attn);
        let mlp = self
            .mlp
            .forward(self.ln_2.forward(x.clone(), kernels.layer_ops), kernels);
        x + self.drop.forward(mlp)
    }
}

impl<B: Backend> Block<B> {
    /// A randomly initialised block of `config` (as in [`Gpt::init`]: weights N(0, init_std),
    /// output projections N(0, init_std/sqrt(2·n_layer)), biases 0, norms γ=1 β=0), drawn from
    /// a host-side generator seeded with `seed` under `name` (identical on every backend).
    /// Depth growth builds its new blocks with this.
    pub fn init(config: &GptConfig, seed: u64, name: &str, device: &B::Device) -> Self {
        let proj_std = config.init_std / (2.0 * config.n_layer as f64).sqrt();
        let drop = DropoutConfig::new(config.dropout).init();
        let mut rng = Some(SplitMix64::derive(seed, name));
        Self::build(config, config.init_std, proj_std, &drop, &mut rng, device)
    }

    /// A block drawn from `rng` (zeros without one) in the order [`Gpt::init`] has always used:
    /// `c_attn`, attention `c_proj`, `c_fc`, `c_gate`, MLP `c_proj`.
    fn build(
        c: &GptConfig,
        std: f64,
        proj_std: f64,
        drop: &Dropout,
        rng: &mut Option<SplitMix64>,
        device: &B::Device,
    ) -> Self {
        let d = c.d_model;
        Block {
            ln_1: Norm::init(c, d, device),
            attn: Attention {
                c_attn: linear(d, c.qkv_dim(), c.bias, std, rng, device),
                c_proj: linear(d, d, c.bias, proj_std, rng, device),
                n_head: c.n_head,
                n_kv_head: c.kv_heads(),
                head_dim: c.head_dim(),
            },
            ln_2: Norm::init(c, d, device),
            mlp: Mlp {
                c_fc: linear(d, c.d_ff, c.bias, std, rng, device),
                c_gate: (c.mlp == MlpKind::SwiGlu)
                    .then(|| linear(d, c.d_ff, c.bias, std, rng, device)),
                c_proj: linear(c.d_ff, d, c.bias, proj_std, rng, device),
            },
            drop: drop.clone(),
        }
    }
}

/// A GPT-style decoder-only language model.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    /// Token embedding `[vocab_size, d_model]`.
    pub wte: Embedding<B>,
    /// Learned position embedding `[context_length, d_model]` (absent with RoPE).
    pub wpe: Option<Embedding<B>>,
    /// The transformer blocks.
    pub h: Vec<Block<B>>,
    /// Final norm, feeding only the head.
    pub ln_f: Norm<B>,
    /// LM head `[d_model, vocab_size]`, no bias (absent when tied to `wte`).
    pub lm_head: Option<Linear<B>>,
    drop: Dropout,
    #[module(skip)]
    config: GptConfig,
    /// Compute dtype and kernels ([`Kernels`]): run-time choices, not part of the checkpoint.
    #[module(skip)]
    kernels: Kernels,
}

/// `[rows, cols]` weights drawn from `rng` (host-side, backend-independent), or zeros when
/// there is no generator ([`Gpt::zeros`]).
fn weights<B: Backend>(
    rows: usize,
    cols: usize,
    std: f64,
    rng: &mut Option<SplitMix64>,
    device: &B::Device,
) -> Tensor<B, 2> {
    match rng {
        Some(rng) => Tensor::from_data(
            TensorData::new(rng.normal_vec(rows * cols, std), [rows, cols]),
            device,
        ),
        None => Tensor::zeros([rows, cols], device),
    }
}

/// Builds a Linear with weights drawn from `rng` (host-side, backend-independent).
fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    rng: &mut Option<SplitMix64>,
    device: &B::Device,
) -> Linear<B> {
    let weight = weights(d_in, d_out, std, rng, device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: bias.then(|| Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

fn embedding<B: Backend>(
    n: usize,
    d: usize,
    std: f64,
    rng: &mut Option<SplitMix64>,
    device: &B::Device,
) -> Embedding<B> {
    let weight = weights(n, d, std, rng, device);
    Embedding {
        weight: Param::from_tensor(weight),
    }
}

impl<B: Backend> Gpt<B> {
    /// A randomly initialised model: every weight N(0, init_std), residual output projections
    /// (`c_proj`) N(0, init_std/sqrt(2·n_layer)) (GPT-2), biases 0, norms γ=1 β=0. The numbers
    /// come from a host-side generator seeded with `seed`: identical on every backend.
    pub fn init(config: &GptConfig, seed: u64, device: &B::Device) -> Result<Self, ConfigError> {
        Self::build(config, Some(SplitMix64::derive(seed, "init")), device)
    }

    /// A model of `config` whose weight matrices and embeddings are zero (norms γ=1 β=0,
    /// biases 0): a cheap shell, with no random draws, to be filled parameter by parameter
    /// (HyperCloning's target, checkpoint loading).
    pub fn zeros(config: &GptConfig, device: &B::Device) -> Result<Self, ConfigError> {
        Self::build(config, None, device)
    }

    /// [`Gpt::init`] with weights from `rng`, or [`Gpt::zeros`] without one.
    fn build(
        config: &GptConfig,
        mut rng: Option<SplitMix64>,
        device: &B::Device,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let c = config;
        let std = c.init_std;
        let proj_std = c.init_std / (2.0 * c.n_layer as f64).sqrt();
        let d = c.d_model;
        let drop = DropoutConfig::new(c.dropout).init();
        let wte = embedding(c.vocab_size, d, std, &mut rng, device);
        let wpe = (c.positional == Positional::Learned)
            .then(|| embedding(c.context_length, d, std, &mut rng, device));
        let h = (0..c.n_layer)
            .map(|_| Block::build(c, std, proj_std, &drop, &mut rng, device))
            .collect();
        let lm_head =
            (!c.tie_embeddings).then(|| linear(d, c.vocab_size, false, std, &mut rng, device));
        Ok(Self {
            wte,
            wpe,
            h,
            ln_f: Norm::init(c, d, device),
            lm_head,
            drop,
            config: c.clone(),
            kernels: Kernels::default(),
        })
    }

    /// The same weights with another dropout probability (a training choice, not part of the
    /// checkpoint).
    pub fn with_dropout(mut self, prob: f64) -> Self {
        let drop = DropoutConfig::new(prob).init();
        for block in &mut self.h {
            block.drop = drop.clone();
        }
        self.drop = drop;
        self.config.dropout = prob;
        self
    }

    /// The same model with another stack of blocks (depth growth): `n_layer` becomes
    /// `blocks.len()`. The blocks must have been built for this model's widths (the caller
    /// checks; a mismatch fails at the first forward). Refuses an empty stack.
    pub fn with_blocks(mut self, blocks: Vec<Block<B>>) -> Result<Self, ConfigError> {
        let mut config = self.config.clone();
        config.n_layer = blocks.len();
        config.validate()?;
        self.h = blocks;
        self.config = config;
        Ok(self)
    }

    /// The same weights computing with `kernels` (compute dtype, attention, loss, norms and
    /// GELU). Mixed precision is `kernels.compute_dtype = Some(FloatDType::BF16)` with f32
    /// parameters.
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// How this model computes.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The configuration this model was built from.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Number of parameters actually held by this module (tied weights once).
    pub fn num_params(&self) -> usize {
        Module::num_params(self)
    }
}

impl<B: GptBackend> Gpt<B> {
    /// Next-token logits for every position.
    ///
    /// # Shapes
    /// `tokens: [B, T]` (T ≤ context_length) → `[B, T, vocab_size]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = self.forward_hidden(tokens);
        let residual_dtype = x.dtype();
        let x = to_compute(x, self.kernels.compute_dtype);
        let logits = match &self.lm_head {
            Some(head) => project(head, x),
            // Tied: logits = x · wteᵀ.
            None => {
                let wte = cast_to(self.wte.weight.val(), x.dtype());
                burn::tensor::module::linear(x, wte.transpose(), None)
            }
        };
        // The softmax of the loss wants the parameters' precision (as under autocast).
        cast_to(logits, residual_dtype)
    }

    /// The final normed hidden state that feeds the head.
    ///
    /// # Shapes
    /// `tokens: [B, T]` → `[B, T, d_model]`
    pub fn forward_hidden(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, t] = tokens.dims();
        assert!(
            t <= self.config.context_length,
            "sequence of {t} tokens exceeds context_length {}",
            self.config.context_length
        );
        let device = tokens.device();
        let mut x = self.wte.forward(tokens); // [B, T, d]
        if let Some(wpe) = &self.wpe {
            let pos = Tensor::<B, 1, Int>::arange(0..t as i64, &device).unsqueeze::<2>(); // [1, T]
            x = x + wpe.forward(pos); // [B, T, d] + [1, T, d]
        }
        let rope = (self.config.positional == Positional::Rope)
            .then(|| RopeTables::new(t, self.config.head_dim(), self.config.rope_theta, &device));
        let mut x = self.drop.forward(x);
        for block in &self.h {
            x = block.forward(x, rope.as_ref(), self.kernels);
        }
        self.ln_f.forward(x, self.kernels.layer_ops)
    }

    /// Mean cross-entropy of `logits` against `targets` over all B·T positions, as one
    /// operation with its own backward ([`GptBackend::cross_entropy`]).
    ///
    /// # Shapes
    /// `logits: [B, T, V]`, `targets: [B, T]` → `[1]`
    pub fn loss(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
        Self::loss_with(logits, targets, CrossEntropyKernel::Fused)
    }

    /// [`Gpt::loss`] differentiated with `kernel` (the same value either way).
    ///
    /// # Shapes
    /// `logits: [B, T, V]`, `targets: [B, T]` → `[1]`
    pub fn loss_with(
        logits: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        kernel: CrossEntropyKernel,
    ) -> Tensor<B, 1> {
        let [b, t, v] = logits.dims();
        let logits = logits.reshape([b * t, v]); // [B·T, V]
        let targets = targets.reshape([b * t]); // [B·T]
        match kernel {
            CrossEntropyKernel::Fused => Tensor::from_primitive(TensorPrimitive::Float(
                B::cross_entropy(logits.into_primitive().tensor(), targets.into_primitive()),
            )),
            CrossEntropyKernel::Composed => composed_cross_entropy(logits, targets),
        }
    }

    /// Forward pass and loss in one call.
    pub fn forward_loss(
        &self,
        inputs: Tensor<B, 2, Int>,
        targets: Tensor<B, 2, Int>,
    ) -> Tensor<B, 1> {
        Self::loss_with(self.forward(inputs), targets, self.kernels.cross_entropy)
    }
}

/// Makes an `Int` tensor `[B, T]` from row-major token ids.
pub fn tokens_tensor<B: Backend>(
    ids: &[u32],
    batch: usize,
    seq: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    assert_eq!(ids.len(), batch * seq, "token buffer is not [batch, seq]");
    let data: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    Tensor::from_data(TensorData::new(data, [batch, seq]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention::AttentionKernel;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::DType;

    type AB = Autodiff<Flex>;

    /// GPT-2-style `cpu-tiny` and its Llama-style twin (RoPE, SwiGLU, RMSNorm, untied head) with
    /// `n_kv_head` KV heads.
    fn gpt2_and_llama_tiny(n_kv_head: usize) -> [GptConfig; 2] {
        [
            GptConfig::cpu_tiny(),
            GptConfig {
                positional: Positional::Rope,
                mlp: MlpKind::SwiGlu,
                norm: NormKind::RmsNorm,
                n_kv_head: Some(n_kv_head),
                tie_embeddings: false,
                ..GptConfig::cpu_tiny()
            },
        ]
    }

    /// Every parameter's gradient (tied `wte`, biases, norms included), in visiting order.
    fn param_grads(model: &Gpt<AB>, grads: &<AB as AutodiffBackend>::Gradients) -> Vec<TensorData> {
        struct Collect<'a>(&'a <AB as AutodiffBackend>::Gradients, Vec<TensorData>);
        impl burn::module::ModuleVisitor<AB> for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AB, D>>) {
                let g = p.grad(self.0).expect("every parameter has a gradient");
                self.1.push(g.into_data());
            }
        }
        let mut collect = Collect(grads, Vec::new());
        model.visit(&mut collect);
        collect.1
    }

    /// The sigmoid form of tanh-GELU matches the textbook tanh formula (evaluated in f64) in
    /// value and in gradient, across the range a pre-activation takes.
    #[test]
    fn gelu_tanh_matches_the_tanh_formula_and_its_derivative() {
        let device = Default::default();
        let xs: Vec<f32> = (-800..=800).map(|i| i as f32 / 100.0).collect();
        let n = xs.len();
        let x = Tensor::<Autodiff<Flex>, 1>::from_data(TensorData::new(xs.clone(), [n]), &device)
            .require_grad();
        let y = gelu_tanh(x.clone());
        let grads = y.clone().sum().backward();
        let dy = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let y = y.into_data().to_vec::<f32>().unwrap();
        for (i, &xf) in xs.iter().enumerate() {
            let x = f64::from(xf);
            let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
            let th = u.tanh();
            let want = 0.5 * x * (1.0 + th);
            let dwant = 0.5 * (1.0 + th)
                + 0.5 * x * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
            assert!(
                (f64::from(y[i]) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x}) = {} vs {want}",
                y[i]
            );
            assert!(
                (f64::from(dy[i]) - dwant).abs() <= 1e-5,
                "gelu'({x}) = {} vs {dwant}",
                dy[i]
            );
        }
    }

    /// Mixed precision casts where it computes and nowhere else: logits and gradients come back
    /// in f32, close to the f32 model's (bf16 keeps 8 bits of mantissa, ≈ 0.4 % per rounding; seen
    /// here: loss 2e-5–7e-5 relative, logits 0.3–0.5 % of their scale, gradient cosine 0.99997),
    /// yet not identical to them (the casts really happen).
    #[test]
    fn mixed_bf16_tracks_f32_and_returns_f32_logits_and_gradients() {
        let device = Default::default();
        for config in gpt2_and_llama_tiny(1) {
            let f32_model = Gpt::<AB>::init(&config, 3, &device).unwrap();
            let mixed = f32_model.clone().with_kernels(Kernels {
                compute_dtype: Some(FloatDType::BF16),
                ..Kernels::default()
            });
            assert_eq!(mixed.kernels().compute_dtype, Some(FloatDType::BF16));
            let ids: Vec<u32> = (0..2 * 16)
                .map(|i| (i * 37 % config.vocab_size) as u32)
                .collect();
            let targets: Vec<u32> = ids
                .iter()
                .map(|&i| (i + 1) % config.vocab_size as u32)
                .collect();
            let run = |m: &Gpt<AB>| {
                let logits = m.forward(tokens_tensor(&ids, 2, 16, &device));
                assert_eq!(logits.dtype(), DType::F32);
                let loss = Gpt::loss(logits.clone(), tokens_tensor(&targets, 2, 16, &device));
                let grads = loss.backward();
                // Every parameter gets a finite f32 gradient.
                let all = param_grads(m, &grads);
                assert!(all.len() >= 4 * m.config().n_layer);
                for g in all {
                    assert_eq!(g.dtype, DType::F32);
                    assert!(g.to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
                }
                let grad = m.h[0].mlp.c_fc.weight.grad(&grads).unwrap();
                let loss = loss.into_scalar();
                let logits = logits.inner().into_data().to_vec::<f32>().unwrap();
                (loss, logits, grad.into_data().to_vec::<f32>().unwrap())
            };
            let (loss_a, logits_a, grad_a) = run(&f32_model);
            let (loss_b, logits_b, grad_b) = run(&mixed);
            let rel = (loss_a - loss_b).abs() / loss_a.abs();
            assert!(
                rel < 1e-3,
                "{config:?}: loss {loss_a} (f32) vs {loss_b} (bf16)"
            );
            assert_ne!(
                logits_a, logits_b,
                "bf16 compute left the logits bit-identical"
            );
            let scale = logits_a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = logits_a
                .iter()
                .zip(&logits_b)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                worst <= 0.02 * scale,
                "logits differ by {worst} (scale {scale})"
            );
            let dot: f64 = grad_a
                .iter()
                .zip(&grad_b)
                .map(|(a, b)| f64::from(a * b))
                .sum();
            let norm = |g: &[f32]| g.iter().map(|v| f64::from(v * v)).sum::<f64>().sqrt();
            let cosine = dot / (norm(&grad_a) * norm(&grad_b));
            assert!(cosine > 0.999, "gradient cosine {cosine}");
        }
    }

    /// The loss and every parameter's gradient of `a` and `b` (the same weights, different
    /// kernels) on one batch agree to float rounding, but not bit for bit: identical bits would
    /// mean the kernel under test never ran (the two backward passes round differently; seen:
    /// 1e-9 to 1e-7 apart).
    fn assert_train_alike(a: Gpt<AB>, b: Gpt<AB>, what: &str) {
        let device = Default::default();
        let vocab = a.config().vocab_size;
        let (batch, t) = (2, 24);
        let ids: Vec<u32> = (0..batch * t).map(|i| (i * 53 % vocab) as u32).collect();
        let targets: Vec<u32> = ids.iter().map(|&i| (i * 7 + 3) % vocab as u32).collect();
        let run = |m: &Gpt<AB>| {
            let loss = m.forward_loss(
                tokens_tensor(&ids, batch, t, &device),
                tokens_tensor(&targets, batch, t, &device),
            );
            let grads = loss.backward();
            let all: Vec<Vec<f32>> = param_grads(m, &grads)
                .into_iter()
                .map(|g| g.to_vec::<f32>().unwrap())
                .collect();
            (loss.into_scalar(), all)
        };
        let (loss_a, grads_a) = run(&a);
        let (loss_b, grads_b) = run(&b);
        assert!(
            (loss_a - loss_b).abs() <= 1e-6 * loss_a.abs(),
            "{what}: loss {loss_a} vs {loss_b}"
        );
        assert_eq!(grads_a.len(), grads_b.len());
        assert_ne!(
            grads_a, grads_b,
            "{what}: the kernel under test was not used"
        );
        for (i, (ga, gb)) in grads_a.iter().zip(&grads_b).enumerate() {
            let scale = ga.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = ga
                .iter()
                .zip(gb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                worst <= 1e-4 * scale.max(1e-6),
                "{what}: parameter {i}: gradients differ by {worst} (scale {scale})"
            );
        }
    }

    /// Training through the fused attention (the backend's kernel forward, the recomputing
    /// backward of `ops/attention.rs`) gives the composed attention's loss and every parameter's
    /// gradient, for GPT-2-style and Llama-style (RoPE, GQA) models.
    #[test]
    fn fused_and_composed_attention_train_alike() {
        let device = Default::default();
        for config in gpt2_and_llama_tiny(2) {
            let model = Gpt::<AB>::init(&config, 5, &device).unwrap();
            let with = |attention| Kernels {
                attention,
                ..Kernels::default()
            };
            let composed = model.clone().with_kernels(with(AttentionKernel::Composed));
            let fused = model.with_kernels(with(AttentionKernel::Fused));
            assert_eq!(fused.kernels().attention, AttentionKernel::Fused);
            assert_train_alike(composed, fused, "attention");
        }
    }

    /// Likewise the loss: `ops/cross_entropy.rs` against burn's `log_softmax` and `gather`,
    /// chosen per model ([`Kernels::cross_entropy`]).
    #[test]
    fn fused_and_composed_cross_entropy_train_alike() {
        let device = Default::default();
        for config in gpt2_and_llama_tiny(2) {
            let model = Gpt::<AB>::init(&config, 5, &device).unwrap();
            assert_eq!(model.kernels().cross_entropy, CrossEntropyKernel::Fused);
            let composed = model.clone().with_kernels(Kernels {
                cross_entropy: CrossEntropyKernel::Composed,
                ..Kernels::default()
            });
            assert_eq!(
                composed.kernels().cross_entropy,
                CrossEntropyKernel::Composed
            );
            assert_train_alike(composed, model, "cross-entropy");
        }
    }

    /// And the norms and the GELU: `ops/layer_ops.rs` against burn's ops
    /// ([`Kernels::layer_ops`]), for LayerNorm + GELU and RMSNorm + SwiGLU models.
    #[test]
    fn fused_and_composed_norms_and_gelu_train_alike() {
        let device = Default::default();
        for config in gpt2_and_llama_tiny(2) {
            let model = Gpt::<AB>::init(&config, 5, &device).unwrap();
            assert_eq!(model.kernels().layer_ops, LayerOpsKernel::Fused);
            let composed = model.clone().with_kernels(Kernels {
                layer_ops: LayerOpsKernel::Composed,
                ..Kernels::default()
            });
            assert_eq!(composed.kernels().layer_ops, LayerOpsKernel::Composed);
            assert_train_alike(composed, model, "norms and GELU");
        }
    }

    #[test]
    fn zeros_has_the_shapes_of_init_and_no_random_weights() {
        let device = Default::default();
        let config = GptConfig {
            tie_embeddings: false,
            ..GptConfig::cpu_tiny()
        };
        let init = Gpt::<Flex>::init(&config, 1, &device).unwrap();
        let zeros = Gpt::<Flex>::zeros(&config, &device).unwrap();
        assert_eq!(zeros.config(), init.config());
        assert_eq!(zeros.num_params(), init.num_params());
        let shapes = |m: &Gpt<Flex>| {
            let mut v = vec![m.wte.weight.dims().to_vec(), m.ln_f.weight.dims().to_vec()];
            for b in &m.h {
                v.push(b.attn.c_attn.weight.dims().to_vec());
                v.push(b.mlp.c_proj.weight.dims().to_vec());
            }
            v
        };
        assert_eq!(shapes(&zeros), shapes(&init));
        let sum = |t: Tensor<Flex, 2>| t.abs().sum().into_scalar();
        assert_eq!(sum(zeros.wte.weight.val()), 0.0);
        assert_eq!(sum(zeros.h[1].attn.c_attn.weight.val()), 0.0);
        assert_eq!(sum(zeros.lm_head.as_ref().unwrap().weight.val()), 0.0);
        assert!(sum(init.wte.weight.val()) > 0.0);
        // `init` draws exactly what it drew before `zeros` shared its code.
        let again = Gpt::<Flex>::init(&config, 1, &device).unwrap();
        assert_eq!(
            again.h[1].mlp.c_fc.weight.val().into_data(),
            init.h[1].mlp.c_fc.weight.val().into_data()
        );
    }
}
